//! The plumbing every test shares: the generated router over the echo
//! service, a request built in one line, and the reply read whole.

use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use tower::ServiceExt;

/// The generated REST routes of `conformance.v1.Library`, served in-process.
pub struct TestApp {
    router: axum::Router,
}

/// A reply, read to its end.
pub struct Reply {
    /// The HTTP status.
    pub status: StatusCode,
    /// The response headers.
    pub headers: HeaderMap,
    /// The body as text.
    pub text: String,
}

impl Reply {
    /// The body as JSON.
    pub fn json(&self) -> Value {
        serde_json::from_str(&self.text).unwrap_or_else(|error| panic!("{error}: {}", self.text))
    }

    /// The body as JSON, after checking the status is `expected`.
    #[track_caller]
    pub fn expect(&self, expected: u16) -> Value {
        assert_eq!(self.status.as_u16(), expected, "{}", self.text);
        self.json()
    }

    /// The `message` of a google.rpc.Status body, after checking the status.
    #[track_caller]
    pub fn error(&self, expected: u16) -> String {
        let json = self.expect(expected);
        json["message"].as_str().expect("a google.rpc.Status body").to_owned()
    }
}

impl TestApp {
    /// A fresh router over the echo service.
    pub fn new() -> Self {
        Self { router: switchboard_rest_conformance::rest_router().into_axum() }
    }

    /// Sends `method uri` with `body` (empty for none) and reads the reply.
    pub async fn call(&self, method: &str, uri: &str, body: &str) -> Reply {
        self.send(request(method, uri, body).body(Body::from(body.to_owned())).unwrap()).await
    }

    /// `GET uri`.
    pub async fn get(&self, uri: &str) -> Reply {
        self.call("GET", uri, "").await
    }

    /// Sends a request built by the caller (for headers).
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let (parts, body) = response.into_parts();
        let bytes = body.collect().await.unwrap().to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            text: String::from_utf8(bytes.to_vec()).unwrap(),
        }
    }
}

/// A request builder with the method, URI and, for a body, its content type.
pub fn request(method: &str, uri: &str, body: &str) -> http::request::Builder {
    let builder = Request::builder().method(method).uri(uri);
    if body.is_empty() { builder } else { builder.header("content-type", "application/json") }
}
