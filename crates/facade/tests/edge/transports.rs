//! One API, three transports: what is written through one reads back the
//! same through the others, errors agree, replies stream live everywhere.

use futures::StreamExt;
use serde_json::{Value, json};
use switchboard_proto::v1::{
    Conversation, CreateConversationRequest, GetConversationRequest, ReplyEvent,
    SendMessageRequest, StreamReplyRequest, reply_event,
};

use crate::support::{TestApp, on_both_databases};

on_both_databases!(
    a_conversation_reads_back_identically_on_every_transport,
    invalid_input_is_refused_alike_on_every_transport,
    an_unknown_conversation_is_not_found_on_every_transport,
    replies_stream_token_by_token_over_grpc_sse_and_ndjson,
    health_readiness_and_docs_are_served,
);

async fn create_over_rest(app: &TestApp, title: &str) -> Value {
    app.post_json("/v1/conversations", json!({ "title": title }))
        .await
}

async fn a_conversation_reads_back_identically_on_every_transport(app: &TestApp) {
    let created = create_over_rest(app, "Trip to Hanoi").await;
    let id = created["id"].as_str().unwrap().to_owned();

    let over_grpc = app
        .grpc()
        .await
        .send_compressed(tonic::codec::CompressionEncoding::Gzip)
        .accept_compressed(tonic::codec::CompressionEncoding::Gzip)
        .get_conversation(GetConversationRequest { id: id.clone() })
        .await
        .unwrap()
        .into_inner();
    let over_grpc_web: Conversation = app
        .grpc_web(
            "/switchboard.v1.ChatService/GetConversation",
            &GetConversationRequest { id: id.clone() },
        )
        .await
        .unwrap();
    let over_rest: Value = app.get_json(&format!("/v1/conversations/{id}")).await;

    assert_eq!(over_grpc, over_grpc_web);
    assert_eq!(serde_json::to_value(&over_grpc).unwrap(), created);
    assert_eq!(over_rest, created);
    assert_eq!(created["title"], "Trip to Hanoi");

    // A resource read back and sent again, output-only fields and all, is an update of its title.
    let mut edited = created.clone();
    edited["title"] = "Trip to Hue".into();
    let patched = app
        .http
        .patch(app.url(&format!("/v1/conversations/{id}")))
        .json(&edited)
        .send()
        .await
        .unwrap();
    assert_eq!(patched.status(), 200);
    let patched: Value = patched.json().await.unwrap();
    assert_eq!(patched["title"], "Trip to Hue");
    assert_eq!(patched["createdAt"], created["createdAt"]);
    assert!(
        created["createdAt"].as_str().unwrap().ends_with('Z'),
        "{created}"
    );
}

async fn invalid_input_is_refused_alike_on_every_transport(app: &TestApp) {
    let long_title = "x".repeat(201);
    let rest = app
        .http
        .post(app.url("/v1/conversations"))
        .json(&json!({ "title": long_title }))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 400);
    let rest: Value = rest.json().await.unwrap();

    let request = CreateConversationRequest {
        conversation: Some(Conversation {
            title: long_title.clone(),
            ..Default::default()
        }),
    };
    let grpc = app
        .grpc()
        .await
        .create_conversation(request.clone())
        .await
        .unwrap_err();
    let grpc_web = app
        .grpc_web::<_, Conversation>("/switchboard.v1.ChatService/CreateConversation", &request)
        .await
        .unwrap_err();

    assert_eq!(grpc.code(), tonic::Code::InvalidArgument);
    assert_eq!(rest["code"], 3);
    assert_eq!(rest["message"], grpc.message());
    assert_eq!(grpc_web.0, "3");
    assert!(
        grpc.message()
            .starts_with("conversation.title: must be at most 200 characters"),
        "{}",
        grpc.message()
    );
    assert_eq!(
        rest["details"][0]["fieldViolations"][0]["field"],
        "conversation.title"
    );

    let listed = app.get_json("/v1/conversations").await;
    assert_eq!(
        listed["conversations"],
        json!([]),
        "nothing is written by a refused request"
    );
}

async fn an_unknown_conversation_is_not_found_on_every_transport(app: &TestApp) {
    let id = "01890000-0000-7000-8000-000000000000".to_owned();
    let rest = app
        .http
        .get(app.url(&format!("/v1/conversations/{id}")))
        .send()
        .await
        .unwrap();
    assert_eq!(rest.status(), 404);
    assert_eq!(rest.json::<Value>().await.unwrap()["code"], 5);
    let grpc = app
        .grpc()
        .await
        .get_conversation(GetConversationRequest { id: id.clone() })
        .await
        .unwrap_err();
    assert_eq!(grpc.code(), tonic::Code::NotFound);
    let grpc_web = app
        .grpc_web::<_, Conversation>(
            "/switchboard.v1.ChatService/GetConversation",
            &GetConversationRequest { id },
        )
        .await
        .unwrap_err();
    assert_eq!(grpc_web.0, "5");
}

/// The events in the `data:` lines of a Server-Sent Events body.
fn sse_data(body: &str) -> Vec<ReplyEvent> {
    body.lines()
        .filter_map(|line| line.strip_prefix("data: "))
        .map(|data| serde_json::from_str(data).unwrap())
        .collect()
}

/// The text of a reply's deltas, and whether the stream ended with `done`.
fn collect(events: &[ReplyEvent]) -> (String, bool) {
    let mut text = String::new();
    let mut done = false;
    for event in events {
        match &event.kind {
            Some(reply_event::Kind::Delta(delta)) => text.push_str(delta),
            Some(reply_event::Kind::Done(_)) => done = true,
            Some(reply_event::Kind::Usage(usage)) => assert!(usage.completion_tokens > 0),
            other => panic!("unexpected event {other:?}"),
        }
    }
    (text, done)
}

async fn replies_stream_token_by_token_over_grpc_sse_and_ndjson(app: &TestApp) {
    let conversation = create_over_rest(app, "chat").await;
    let conversation_id = conversation["id"].as_str().unwrap().to_owned();
    let sent = app
        .grpc()
        .await
        .send_message(SendMessageRequest {
            conversation_id: conversation_id.clone(),
            content: "Hello there".into(),
        })
        .await
        .unwrap()
        .into_inner();
    let reply_id = sent.reply.unwrap().id;

    // gRPC: the first token arrives while the reply is still being written.
    let mut stream = app
        .grpc()
        .await
        .stream_reply(StreamReplyRequest {
            conversation_id: conversation_id.clone(),
            message_id: reply_id.clone(),
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    let first = stream.next().await.unwrap().unwrap();
    assert_eq!(first.seq, 1);
    let messages: Value = app
        .get_json(&format!("/v1/conversations/{conversation_id}/messages"))
        .await;
    assert_ne!(
        messages["messages"][1]["status"], "MESSAGE_STATUS_COMPLETE",
        "the reply is still streaming"
    );
    let mut events = vec![first];
    while let Some(event) = stream.next().await {
        events.push(event.unwrap());
    }
    let (text, done) = collect(&events);
    assert!(done);
    assert!(events.len() > 3, "several deltas, got {}", events.len());
    assert!(text.contains("Hello there"), "{text}");

    // SSE: the same events, as `data:` lines.
    let path = format!("/v1/conversations/{conversation_id}/messages/{reply_id}:stream");
    let sse = app
        .http
        .get(app.url(&path))
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap();
    assert_eq!(sse.headers()["content-type"], "text/event-stream");
    let body = sse.text().await.unwrap();
    assert_eq!(sse_data(&body), events);
    let ids: Vec<&str> = body
        .lines()
        .filter_map(|line| line.strip_prefix("id: "))
        .collect();
    let seqs: Vec<String> = events.iter().map(|event| event.seq.to_string()).collect();
    assert_eq!(ids, seqs, "each event's SSE id is its seq");

    // An EventSource that reconnects sends Last-Event-ID: it gets the rest…
    let resumed = app
        .http
        .get(app.url(&path))
        .header("last-event-id", "5")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(sse_data(&resumed), events[5..]);
    // …and once it has everything, 204, which tells it to stop reconnecting.
    let last = events.last().unwrap().seq.to_string();
    let finished = app
        .http
        .get(app.url(&path))
        .header("last-event-id", last)
        .send()
        .await
        .unwrap();
    assert_eq!(finished.status(), 204);

    // NDJSON, resumed after the third event: exactly the rest.
    let ndjson = app
        .http
        .get(app.url(&format!("{path}?afterSeq=3")))
        .header("accept", "application/x-ndjson")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let rest: Vec<ReplyEvent> = ndjson
        .lines()
        .map(|line| {
            serde_json::from_value(serde_json::from_str::<Value>(line).unwrap()["result"].take())
                .unwrap()
        })
        .collect();
    assert_eq!(rest, events[3..]);
}

async fn health_readiness_and_docs_are_served(app: &TestApp) {
    for path in ["/healthz", "/readyz"] {
        assert_eq!(
            app.http.get(app.url(path)).send().await.unwrap().status(),
            200,
            "{path}"
        );
    }
    let channel = tonic::transport::Endpoint::from_shared(app.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    for service in ["", "switchboard.v1.ChatService"] {
        let status = health
            .check(tonic_health::pb::HealthCheckRequest {
                service: service.into(),
            })
            .await
            .unwrap()
            .into_inner()
            .status;
        assert_eq!(
            status,
            tonic_health::pb::health_check_response::ServingStatus::Serving as i32
        );
    }
    let openapi = app.get_json("/openapi.json").await;
    assert_eq!(
        openapi,
        serde_json::from_str::<Value>(switchboard_proto::OPENAPI_JSON).unwrap()
    );
    let docs = app.get_text("/docs/").await;
    assert!(docs.contains("swagger-ui"), "{docs}");

    let preflight = app
        .http
        .request(
            reqwest::Method::OPTIONS,
            app.url("/switchboard.v1.ChatService/GetConversation"),
        )
        .header("origin", "http://localhost:3000")
        .header("access-control-request-method", "POST")
        .header("access-control-request-headers", "content-type,x-grpc-web")
        .send()
        .await
        .unwrap();
    assert_eq!(
        preflight.headers()["access-control-allow-origin"],
        "http://localhost:3000"
    );
    create_over_rest(app, "counted").await;
    let metrics = app.get_text("/metrics").await;
    for series in [
        r#"transport="rest",rpc="/switchboard.v1.ChatService/CreateConversation",status="200""#,
        r#"transport="grpc",rpc="/grpc.health.v1.Health/Check",status="200",grpc_status="0""#,
    ] {
        assert!(
            metrics.lines().any(
                |line| line.starts_with("switchboard_requests_total{") && line.contains(series)
            ),
            "no {series} in\n{metrics}"
        );
    }
    assert!(metrics.contains("switchboard_request_duration_seconds_bucket"));

    let unknown = app.http.get(app.url("/v2/nothing")).send().await.unwrap();
    assert_eq!(unknown.status(), 404);
    assert_eq!(unknown.json::<Value>().await.unwrap()["code"], 5);
}
