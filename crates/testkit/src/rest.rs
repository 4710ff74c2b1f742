//! A REST client of one running server (a child process, reached by its
//! base URL), signed in with a password: for tests of the binary, which
//! have no in-process server to call.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::ndjson::NdJson;

/// Waits until `base` answers `/readyz` with a success, checking every
/// 50 ms.
///
/// # Panics
///
/// When it is not ready within 30 seconds.
pub async fn wait_ready(http: &reqwest::Client, base: &str) {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let ready = http.get(format!("{base}/readyz")).send().await;
        if matches!(&ready, Ok(r) if r.status().is_success()) {
            return;
        }
        assert!(Instant::now() < deadline, "{base} never became ready");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// POSTs `body` to `url` (with `token` as a bearer token, if any) and
/// returns the answer's JSON, whatever its status.
///
/// # Panics
///
/// When the request cannot be sent or the answer is not JSON.
pub async fn post_json(
    http: &reqwest::Client,
    url: String,
    token: Option<&str>,
    body: Value,
) -> Value {
    let mut request = http.post(url).json(&body);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the request is sent");
    response.json().await.expect("a JSON answer")
}

/// A REST client of one server instance, signed in: every call sends its
/// access token.
#[derive(Debug, Clone)]
pub struct RestClient {
    /// The HTTP client (without default credentials).
    pub http: reqwest::Client,
    /// `http://host:port` of the instance.
    pub base: String,
    /// The access token every call sends.
    pub token: String,
}

impl RestClient {
    /// Waits until `base` is ready, then signs in as `email` with
    /// `password`.
    ///
    /// # Panics
    ///
    /// When the server is not ready in time or the sign-in fails.
    pub async fn sign_in(base: String, email: &str, password: &str) -> RestClient {
        let http = reqwest::Client::new();
        wait_ready(&http, &base).await;
        let login: Value = http
            .post(format!("{base}/v1/auth:login"))
            .json(&json!({"email": email, "password": password}))
            .send()
            .await
            .expect("the sign-in is sent")
            .json()
            .await
            .expect("a JSON answer to the sign-in");
        let token = login["accessToken"]
            .as_str()
            .unwrap_or_else(|| panic!("signed in as {email}: {login}"))
            .to_owned();
        RestClient { http, base, token }
    }

    /// `method path` with a JSON `body`; the answer's JSON.
    ///
    /// # Panics
    ///
    /// When the call fails or is answered with anything but a success.
    pub async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut request = self
            .http
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(&self.token);
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the call is sent");
        let status = response.status();
        let answer: Value = response.json().await.expect("a JSON answer");
        assert!(status.is_success(), "{path}: {status} {answer}");
        answer
    }

    /// POSTs `body` to `path` and returns the response, whatever its status.
    ///
    /// # Errors
    ///
    /// When the request cannot be sent or is not answered.
    pub async fn post(&self, path: &str, body: Value) -> reqwest::Result<reqwest::Response> {
        self.http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
    }

    /// The events of a stream at `path` (a StreamReply binding), as NDJSON
    /// lines.
    ///
    /// # Panics
    ///
    /// When the stream is not opened with a success.
    pub async fn stream(&self, path: &str) -> NdJson {
        let response = self
            .http
            .get(format!("{}{path}", self.base))
            .bearer_auth(&self.token)
            .header("accept", "application/x-ndjson")
            .send()
            .await
            .expect("the stream is requested");
        assert!(
            response.status().is_success(),
            "{path}: {}",
            response.status()
        );
        NdJson::new(response)
    }
}
