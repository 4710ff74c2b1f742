//! The plumbing every test shares: the generated router over the echo
//! service, one call to send a request in-process, and the reply read whole.

use axum::body::Body;
use http::{HeaderMap, Request, StatusCode};
use http_body_util::BodyExt;
use serde_json::Value;
use switchboard_rest::policy::Caller;
use tower::ServiceExt;

/// The generated REST routes of `conformance.v1.Library` over the echo
/// service, served in-process: no socket.
pub(crate) struct TestApp {
    router: axum::Router,
}

/// A reply, read to its end.
pub(crate) struct Reply {
    /// The HTTP status.
    pub(crate) status: StatusCode,
    /// The response headers.
    pub(crate) headers: HeaderMap,
    /// The body as text.
    pub(crate) text: String,
}

impl Reply {
    /// The body as JSON, after checking the status is `expected`.
    #[track_caller]
    pub(crate) fn expect(&self, expected: u16) -> Value {
        assert_eq!(self.status.as_u16(), expected, "{}", self.text);
        serde_json::from_str(&self.text).unwrap_or_else(|error| panic!("{error}: {}", self.text))
    }

    /// The `message` of a google.rpc.Status body, after checking the status.
    #[track_caller]
    pub(crate) fn error(&self, expected: u16) -> String {
        let json = self.expect(expected);
        json["message"]
            .as_str()
            .expect("a google.rpc.Status body")
            .to_owned()
    }
}

impl TestApp {
    /// A fresh router over the echo service.
    pub(crate) fn new() -> Self {
        Self {
            router: switchboard_rest_conformance::rest_router().into_axum(),
        }
    }

    /// `GET uri`.
    pub(crate) async fn get(&self, uri: &str) -> Reply {
        self.call("GET", uri, "").await
    }

    /// Sends `method uri` with a JSON `body` (empty for none).
    pub(crate) async fn call(&self, method: &str, uri: &str, body: &str) -> Reply {
        self.call_with(method, uri, body, &[]).await
    }

    /// Sends `method uri` with a JSON `body` (empty for none) and `headers`,
    /// as a caller that holds every permission.
    pub(crate) async fn call_with(
        &self,
        method: &str,
        uri: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        self.call_as(Some(Caller::trusted()), method, uri, body, headers)
            .await
    }

    /// Sends `method uri` with a JSON `body` and `headers` as `caller`
    /// (`None`: a request the edge never authenticated).
    pub(crate) async fn call_as(
        &self,
        caller: Option<Caller>,
        method: &str,
        uri: &str,
        body: &str,
        headers: &[(&str, &str)],
    ) -> Reply {
        let mut request = Request::builder().method(method).uri(uri);
        let labelled = headers
            .iter()
            .any(|(name, _)| name.eq_ignore_ascii_case("content-type"));
        if !body.is_empty() && !labelled {
            request = request.header("content-type", "application/json");
        }
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let mut request = request
            .body(Body::from(body.to_owned()))
            .expect("a valid request");
        if let Some(caller) = caller {
            request.extensions_mut().insert(caller);
        }
        let response = self
            .router
            .clone()
            .oneshot(request)
            .await
            .expect("the router is infallible");
        let (parts, body) = response.into_parts();
        let bytes = body
            .collect()
            .await
            .expect("the body is readable")
            .to_bytes();
        Reply {
            status: parts.status,
            headers: parts.headers,
            text: String::from_utf8(bytes.to_vec()).expect("the body is UTF-8"),
        }
    }
}

/// The JSON of the n-th book the echo service streams from `shelves/s1`.
pub(crate) fn book(n: u32) -> String {
    format!(
        r#"{{"name":"shelves/s1/books/{n}","title":"Book {n}","genre":"GENRE_UNSPECIFIED","tags":[],"pageCount":"0","inPrint":false,"rating":0.0,"isbn":""}}"#
    )
}
