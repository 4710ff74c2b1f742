//! One chat turn is one trace across two processes. A real OTLP receiver
//! (the OTLP protocol from `opentelemetry-proto`, its gRPC service served by
//! tonic and its HTTP/protobuf endpoint by axum) collects the spans of a
//! `switchboard serve --no-workers` instance, exporting over gRPC, and of a
//! `switchboard worker`, exporting over HTTP/protobuf, sharing PostgreSQL
//! and Redis. A REST client sends a message with its own `traceparent`; the
//! SendMessage span continues it, the job span in the worker is its child,
//! and the reply's generation, its statements and the engine call hang
//! below that, all in the caller's trace, with the reply's and the job's
//! ids as attributes. The API's JSON log lines of the request carry the
//! same trace and span ids.
//!
//! `cargo test -p switchboard --test traces -- --nocapture` prints the
//! span tree.

mod support;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, KeyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::Span;
use prost::Message as _;
use serde_json::json;
use support::{Cluster, EMAIL, PASSWORD};
use switchboard_testkit::process::free_port;
use switchboard_testkit::rest::RestClient;

/// The caller's trace and span.
const TRACE_ID: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN_ID: &str = "00f067aa0ba902b7";

/// A span as received, with the `service.name` of the process that sent it.
#[derive(Debug, Clone)]
struct Received {
    service: String,
    span: Span,
}

impl Received {
    fn id(&self) -> String {
        hex(&self.span.span_id)
    }

    fn parent(&self) -> String {
        hex(&self.span.parent_span_id)
    }

    fn attribute(&self, key: &str) -> Option<String> {
        attribute(&self.span.attributes, key)
    }
}

/// Every span the receiver was sent, over either protocol.
#[derive(Debug, Clone, Default)]
struct Receiver(Arc<Mutex<Vec<Received>>>);

impl Receiver {
    fn keep(&self, request: ExportTraceServiceRequest) {
        let mut kept = self.0.lock().unwrap();
        for resource_spans in request.resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|resource| attribute(&resource.attributes, "service.name"))
                .unwrap_or_default();
            for scope_spans in resource_spans.scope_spans {
                for span in scope_spans.spans {
                    kept.push(Received {
                        service: service.clone(),
                        span,
                    });
                }
            }
        }
    }

    fn in_trace(&self, trace_id: &str) -> Vec<Received> {
        let kept = self.0.lock().unwrap();
        kept.iter()
            .filter(|received| hex(&received.span.trace_id) == trace_id)
            .cloned()
            .collect()
    }

    /// Serves OTLP/gRPC on one port and OTLP/HTTP (`POST /v1/traces`) on
    /// another.
    async fn serve(&self) -> (u16, u16) {
        let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let grpc_port = grpc.local_addr().unwrap().port();
        let service = TraceServiceServer::new(self.clone());
        tokio::spawn(async move {
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming(tokio_stream_of(grpc))
                .await
                .unwrap();
        });
        let http = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let http_port = http.local_addr().unwrap().port();
        let receiver = self.clone();
        let app = axum::Router::new().route(
            "/v1/traces",
            axum::routing::post(move |headers: axum::http::HeaderMap, body: Bytes| {
                let receiver = receiver.clone();
                async move {
                    assert_eq!(
                        headers["content-type"], "application/x-protobuf",
                        "OTLP/HTTP sends protobuf"
                    );
                    let request = ExportTraceServiceRequest::decode(body).unwrap();
                    receiver.keep(request);
                    (
                        [("content-type", "application/x-protobuf")],
                        ExportTraceServiceResponse::default().encode_to_vec(),
                    )
                }
            }),
        );
        tokio::spawn(async move { axum::serve(http, app).await.unwrap() });
        (grpc_port, http_port)
    }
}

#[tonic::async_trait]
impl TraceService for Receiver {
    async fn export(
        &self,
        request: tonic::Request<ExportTraceServiceRequest>,
    ) -> Result<tonic::Response<ExportTraceServiceResponse>, tonic::Status> {
        self.keep(request.into_inner());
        Ok(tonic::Response::new(ExportTraceServiceResponse::default()))
    }
}

/// The connections a listener accepts, as tonic's incoming stream.
fn tokio_stream_of(
    listener: tokio::net::TcpListener,
) -> impl futures::Stream<Item = std::io::Result<tokio::net::TcpStream>> {
    futures::stream::unfold(listener, |listener| async move {
        let accepted = listener.accept().await.map(|(stream, _)| stream);
        Some((accepted, listener))
    })
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("{byte:02x}")).collect()
}

fn attribute(attributes: &[KeyValue], key: &str) -> Option<String> {
    let value = attributes.iter().find(|kv| kv.key == key)?.value.as_ref()?;
    match value {
        AnyValue {
            value: Some(any_value::Value::StringValue(text)),
        } => Some(text.clone()),
        AnyValue {
            value: Some(any_value::Value::IntValue(n)),
        } => Some(n.to_string()),
        AnyValue {
            value: Some(any_value::Value::BoolValue(b)),
        } => Some(b.to_string()),
        _ => None,
    }
}

/// Prints the tree of `spans` below `parent`.
fn print_tree(spans: &[Received], parent: &str, depth: usize) {
    for span in spans.iter().filter(|span| span.parent() == parent) {
        println!(
            "{:indent$}{} [{}] {}",
            "",
            span.span.name,
            span.service,
            span.id(),
            indent = depth * 2
        );
        print_tree(spans, &span.id(), depth + 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_chat_turn_is_one_trace_across_the_api_and_the_worker() {
    let receiver = Receiver::default();
    let (grpc_port, http_port) = receiver.serve().await;
    let mut cluster = Cluster::new(false).await;
    cluster.run(&["migrate"]);
    cluster.run(&["user", "create", "--email", EMAIL, "--role", "admin"]);
    let api_port = free_port();
    let listen = format!("127.0.0.1:{api_port}");
    let grpc_endpoint = format!("http://127.0.0.1:{grpc_port}");
    let http_endpoint = format!("http://127.0.0.1:{http_port}");
    let logs = tempfile::tempdir().unwrap();
    let api_log = logs.path().join("api.log");
    cluster.spawn_logged(
        "api",
        &["serve", "--no-workers", "--listen", &listen],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &grpc_endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
            ("OTEL_SERVICE_NAME", "switchboard-api"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("SWITCHBOARD_LOG_FORMAT", "json"),
            ("SWITCHBOARD_LOG_LEVEL", "info"),
        ],
        std::fs::File::create(&api_log).unwrap(),
    );
    cluster.spawn_with(
        "worker",
        &["worker"],
        &[
            ("OTEL_EXPORTER_OTLP_ENDPOINT", &http_endpoint),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "http/protobuf"),
            ("OTEL_SERVICE_NAME", "switchboard-worker"),
            ("OTEL_BSP_SCHEDULE_DELAY", "100"),
            ("SWITCHBOARD_ENGINE__TOKEN_DELAY_MS", "0"),
        ],
    );
    let client = RestClient::sign_in(format!("http://127.0.0.1:{api_port}"), EMAIL, PASSWORD).await;
    let conversation = client
        .call(
            reqwest::Method::POST,
            "/v1/conversations",
            Some(json!({"title": "traced"})),
        )
        .await;
    let cid = conversation["id"].as_str().unwrap();
    let response = client
        .http
        .post(format!("{}/v1/conversations/{cid}/messages", client.base))
        .bearer_auth(&client.token)
        .header("traceparent", format!("00-{TRACE_ID}-{CALLER_SPAN_ID}-01"))
        .header("tracestate", "vendor=opaque")
        .json(&json!({"content": "follow me"}))
        .send()
        .await
        .unwrap();
    assert!(response.status().is_success(), "{}", response.status());
    let sent: serde_json::Value = response.json().await.unwrap();
    let reply_id = sent["reply"]["id"].as_str().unwrap().to_owned();
    let job_id = sent["jobId"].as_str().unwrap().to_owned();
    let mut stream = client
        .stream(&format!(
            "/v1/conversations/{cid}/messages/{reply_id}:stream"
        ))
        .await;
    let done = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(line) = stream.next().await {
            if line["result"].get("done").is_some() || line["result"].get("error").is_some() {
                return line;
            }
        }
        panic!("the stream ended without done");
    })
    .await
    .expect("the reply is done within 30 s");
    assert!(done["result"].get("done").is_some(), "{done}");

    // The batches leave every 100 ms; wait for the last spans to arrive.
    let wanted = [
        "process generate_reply",
        "generate_reply",
        "chat dev",
        "finish_reply",
    ];
    let deadline = Instant::now() + Duration::from_secs(20);
    let spans = loop {
        let spans = receiver.in_trace(TRACE_ID);
        let names: Vec<&str> = spans.iter().map(|span| span.span.name.as_str()).collect();
        if wanted.iter().all(|name| names.contains(name)) {
            break spans;
        }
        assert!(
            Instant::now() < deadline,
            "spans of the trace after 20 s: {names:?}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    println!("the trace {TRACE_ID}, below the caller's span {CALLER_SPAN_ID}:");
    print_tree(&spans, CALLER_SPAN_ID, 1);

    let by_name: HashMap<&str, &Received> = spans
        .iter()
        .map(|span| (span.span.name.as_str(), span))
        .collect();
    let send = spans
        .iter()
        .find(|span| {
            span.attribute("switchboard.rpc").as_deref()
                == Some("/switchboard.v1.ChatService/SendMessage")
        })
        .expect("the SendMessage server span");
    assert_eq!(send.service, "switchboard-api");
    assert_eq!(
        send.parent(),
        CALLER_SPAN_ID,
        "a child of the caller's span"
    );
    assert_eq!(
        send.span.trace_state, "vendor=opaque",
        "the tracestate is kept"
    );
    assert_eq!(
        send.span.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Server as i32
    );
    assert_eq!(
        send.span.name,
        "POST /v1/conversations/{conversation_id}/messages"
    );
    assert_eq!(
        send.attribute("http.request.method").as_deref(),
        Some("POST")
    );
    assert_eq!(
        send.attribute("http.response.status_code").as_deref(),
        Some("200")
    );
    assert_eq!(
        send.attribute("switchboard.transport").as_deref(),
        Some("rest")
    );
    assert_eq!(
        send.attribute("switchboard.reply_id"),
        Some(reply_id.clone())
    );
    assert_eq!(send.attribute("switchboard.job.id"), Some(job_id.clone()));
    assert!(send.attribute("user.id").is_some(), "the caller is named");

    let insert = by_name["insert_turn"];
    assert_eq!(insert.parent(), send.id());
    assert_eq!(
        insert.attribute("db.system.name").as_deref(),
        Some("postgresql")
    );

    let job = by_name["process generate_reply"];
    assert_eq!(
        job.service, "switchboard-worker",
        "the job ran in the worker"
    );
    assert_eq!(
        job.parent(),
        send.id(),
        "the job continues SendMessage's span"
    );
    assert_eq!(
        job.span.kind,
        opentelemetry_proto::tonic::trace::v1::span::SpanKind::Consumer as i32
    );
    assert_eq!(job.attribute("messaging.message.id"), Some(job_id.clone()));
    assert_eq!(
        job.attribute("switchboard.job.outcome").as_deref(),
        Some("succeeded")
    );

    let generate = by_name["generate_reply"];
    assert_eq!(generate.parent(), job.id());
    assert_eq!(
        generate.attribute("switchboard.reply_id"),
        Some(reply_id.clone())
    );
    assert_eq!(
        generate.attribute("switchboard.reply.outcome").as_deref(),
        Some("completed")
    );
    for name in ["claim_reply", "chat dev", "finish_reply"] {
        let span = by_name
            .get(name)
            .unwrap_or_else(|| panic!("no {name} span"));
        assert_eq!(
            span.parent(),
            generate.id(),
            "{name} is part of the reply's generation"
        );
        assert_eq!(span.service, "switchboard-worker");
    }
    let engine = by_name["chat dev"];
    assert_eq!(
        engine.attribute("gen_ai.operation.name").as_deref(),
        Some("chat")
    );
    assert!(
        engine
            .attribute("gen_ai.usage.output_tokens")
            .is_some_and(|n| n.parse::<u32>().unwrap() > 0),
        "the engine's usage is recorded"
    );
    // The API's log lines of the request carry its trace and span.
    let log = std::fs::read_to_string(&api_log).unwrap();
    let access = log
        .lines()
        .filter_map(|line| serde_json::from_str::<serde_json::Value>(line).ok())
        .find(|line| {
            line["log.logger"] == "switchboard::access"
                && line["switchboard.rpc"] == "/switchboard.v1.ChatService/SendMessage"
        })
        .unwrap_or_else(|| panic!("no access line of SendMessage in {log}"));
    assert_eq!(access["trace.id"], TRACE_ID, "{access}");
    assert_eq!(access["span.id"], send.id().as_str(), "{access}");
    assert_eq!(access["service.name"], "switchboard-api");

    let services: std::collections::HashSet<&str> =
        spans.iter().map(|span| span.service.as_str()).collect();
    assert_eq!(services.len(), 2, "one trace, two processes: {services:?}");
}
