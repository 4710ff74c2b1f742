//! Every door continues a caller's trace. With an OpenTelemetry layer
//! installed (spans kept in memory here), a request carrying a W3C
//! `traceparent` over native gRPC, gRPC-Web, REST, SSE or the WebSocket
//! upgrade gets a server span that is a child of the caller's span, named
//! and attributed after OpenTelemetry's conventions; a native gRPC stream's
//! status, sent in trailers after its messages, is recorded on the span.
//!
//! A test binary of its own: the layer is process-wide, and the edge tests
//! run with tracing off.

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "edge/support.rs"]
mod support;

use std::sync::OnceLock;
use std::time::Duration;

use futures::StreamExt;
use opentelemetry::trace::{SpanKind, TracerProvider as _};
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use switchboard_proto::v1::{GetConversationRequest, SendMessageRequest, StreamReplyRequest};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tracing_subscriber::layer::SubscriberExt;

use support::{Backend, TestApp, spawn_app};

/// The spans every test's requests end in.
fn exporter() -> &'static InMemorySpanExporter {
    static EXPORTER: OnceLock<InMemorySpanExporter> = OnceLock::new();
    EXPORTER.get_or_init(|| {
        let exporter = InMemorySpanExporter::default();
        let provider = SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .build();
        let layer = tracing_opentelemetry::layer().with_tracer(provider.tracer("test"));
        tracing::subscriber::set_global_default(tracing_subscriber::registry().with(layer))
            .expect("no other subscriber");
        switchboard_core::telemetry::enable();
        exporter
    })
}

/// A caller's `traceparent` in a trace of its own, numbered `n`.
fn traceparent(n: u8) -> (String, String, String) {
    let trace_id = format!("{n:02x}{}", "bf92f3577b34da6a3ce929d0e0e473");
    let span_id = format!("{n:02x}f067aa0ba902b7");
    (format!("00-{trace_id}-{span_id}-01"), trace_id, span_id)
}

/// The server span of the trace `trace_id`, waiting for it to end (a
/// stream's span ends after its last byte).
async fn server_span(trace_id: &str) -> SpanData {
    for _ in 0..100 {
        let spans = exporter().get_finished_spans().unwrap();
        if let Some(span) = spans.into_iter().find(|span| {
            span.span_context.trace_id().to_string() == trace_id
                && span.span_kind == SpanKind::Server
        }) {
            return span;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("no server span in trace {trace_id}");
}

fn attribute(span: &SpanData, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key.as_str() == key)
        .map(|kv| kv.value.to_string())
}

/// The checks every server span passes: the caller's child, named `name`.
fn assert_continues(span: &SpanData, parent: &str, name: &str) {
    assert_eq!(span.parent_span_id.to_string(), parent, "{span:?}");
    assert_eq!(span.name, name, "{span:?}");
    assert!(
        attribute(span, "user.id").is_some() || name.contains("/v1/ws"),
        "{span:?}"
    );
}

async fn app_and_conversation() -> (TestApp, String) {
    exporter();
    let app = spawn_app(Backend::Sqlite).await;
    let created = app
        .post_json("/v1/conversations", serde_json::json!({"title": "traced"}))
        .await;
    let id = created["id"].as_str().unwrap().to_owned();
    (app, id)
}

#[tokio::test]
async fn native_grpc_continues_the_callers_trace_and_records_the_trailers_status() {
    let (app, conversation_id) = app_and_conversation().await;

    let (header, trace_id, parent) = traceparent(1);
    let mut request = tonic::Request::new(GetConversationRequest {
        id: conversation_id.clone(),
    });
    request
        .metadata_mut()
        .insert("traceparent", header.parse().unwrap());
    app.grpc().await.get_conversation(request).await.unwrap();
    let span = server_span(&trace_id).await;
    assert_continues(&span, &parent, "switchboard.v1.ChatService/GetConversation");
    assert_eq!(attribute(&span, "rpc.system").as_deref(), Some("grpc"));
    assert_eq!(
        attribute(&span, "rpc.service").as_deref(),
        Some("switchboard.v1.ChatService")
    );
    assert_eq!(
        attribute(&span, "rpc.method").as_deref(),
        Some("GetConversation")
    );
    assert_eq!(
        attribute(&span, "switchboard.transport").as_deref(),
        Some("grpc")
    );

    // A stream: its status comes in the trailers, after the messages.
    let sent = app
        .grpc()
        .await
        .send_message(SendMessageRequest {
            conversation_id: conversation_id.clone(),
            content: "hello".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let (header, trace_id, parent) = traceparent(2);
    let mut request = tonic::Request::new(StreamReplyRequest {
        conversation_id,
        message_id: sent.reply.unwrap().id,
        after_seq: 0,
    });
    request
        .metadata_mut()
        .insert("traceparent", header.parse().unwrap());
    let mut stream = app
        .grpc()
        .await
        .stream_reply(request)
        .await
        .unwrap()
        .into_inner();
    let mut messages = 0;
    while let Some(event) = stream.next().await {
        event.unwrap();
        messages += 1;
    }
    assert!(messages > 1);
    let span = server_span(&trace_id).await;
    assert_continues(&span, &parent, "switchboard.v1.ChatService/StreamReply");
    assert_eq!(
        attribute(&span, "rpc.grpc.status_code").as_deref(),
        Some("0"),
        "the status from the trailers: {span:?}"
    );
    app.stop().await;
}

#[tokio::test]
async fn grpc_web_rest_and_sse_continue_the_callers_trace() {
    let (app, conversation_id) = app_and_conversation().await;

    let (header, trace_id, parent) = traceparent(3);
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        "authorization",
        format!("Bearer {}", app.owner.access_token)
            .parse()
            .unwrap(),
    );
    headers.insert("traceparent", header.parse().unwrap());
    let traced = reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .unwrap();
    let _: switchboard_proto::v1::Conversation = app
        .grpc_web_with(
            &traced,
            "/switchboard.v1.ChatService/GetConversation",
            &GetConversationRequest {
                id: conversation_id.clone(),
            },
        )
        .await
        .unwrap();
    let span = server_span(&trace_id).await;
    assert_continues(&span, &parent, "switchboard.v1.ChatService/GetConversation");
    assert_eq!(
        attribute(&span, "switchboard.transport").as_deref(),
        Some("grpc-web")
    );

    let (header, trace_id, parent) = traceparent(4);
    let response = app
        .http
        .get(app.url(&format!("/v1/conversations/{conversation_id}")))
        .header("traceparent", header)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let span = server_span(&trace_id).await;
    assert_continues(&span, &parent, "GET /v1/conversations/{id}");
    assert_eq!(
        attribute(&span, "http.route").as_deref(),
        Some("/v1/conversations/{id}")
    );
    assert_eq!(
        attribute(&span, "http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        attribute(&span, "switchboard.rpc").as_deref(),
        Some("/switchboard.v1.ChatService/GetConversation")
    );

    let sent = app
        .post_json(
            &format!("/v1/conversations/{conversation_id}/messages"),
            serde_json::json!({"content": "hello"}),
        )
        .await;
    let reply_id = sent["reply"]["id"].as_str().unwrap();
    let (header, trace_id, parent) = traceparent(5);
    let body = app
        .http
        .get(app.url(&format!(
            "/v1/conversations/{conversation_id}/messages/{reply_id}:stream"
        )))
        .header("accept", "text/event-stream")
        .header("traceparent", header)
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(body.contains("\"done\""), "{body}");
    let span = server_span(&trace_id).await;
    assert_continues(
        &span,
        &parent,
        "GET /v1/conversations/{conversation_id}/messages/{message_id}:stream",
    );
    app.stop().await;
}

#[tokio::test]
async fn the_websocket_upgrade_continues_the_callers_trace() {
    let (app, _) = app_and_conversation().await;
    let (header, trace_id, parent) = traceparent(6);
    let mut request = format!("ws://{}/v1/ws", app.address)
        .into_client_request()
        .unwrap();
    request
        .headers_mut()
        .insert("traceparent", header.parse().unwrap());
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("switchboard.v1, bearer.{}", app.owner.access_token)
            .parse()
            .unwrap(),
    );
    let (socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    drop(socket);
    let span = server_span(&trace_id).await;
    assert_continues(&span, &parent, "GET /v1/ws");
    assert_eq!(
        attribute(&span, "http.response.status_code").as_deref(),
        Some("101")
    );
    app.stop().await;
}
