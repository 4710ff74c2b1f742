//! [`GrpcEngine`] against a tonic server implementing the engine contract.

use std::collections::HashMap;

use futures::{StreamExt, TryStreamExt};
use switchboard_core::chat::{EngineEvent, ReplyEngine, Role, Usage};
use switchboard_core::error::Error;
use switchboard_engines::pb;
use switchboard_engines::{GrpcEngine, GrpcEngineConfig};

use crate::engine_servers::{
    GrpcScript, TRACEPARENT, dead_url, request, spawn_grpc_engine, traced_request,
};

fn engine_at(url: &str) -> GrpcEngine {
    GrpcEngine::new(GrpcEngineConfig {
        endpoint: url.to_owned(),
        bearer_token: Some("engine-secret".into()),
        metadata: HashMap::from([("persona".into(), "helpful".into())]),
    })
    .unwrap()
}

#[tokio::test]
async fn streams_the_reply_and_its_usage() {
    let server = spawn_grpc_engine(GrpcScript::default()).await;
    let turns = [
        (Role::User, "hi"),
        (Role::Assistant, "hello"),
        (Role::User, "how are you?"),
    ];

    let events: Vec<EngineEvent> = engine_at(&server.url)
        .generate(traced_request(&turns))
        .try_collect()
        .await
        .unwrap();

    let usage = Usage {
        prompt_tokens: 7,
        completion_tokens: 3,
    };
    assert_eq!(
        events,
        [
            EngineEvent::Delta("Hello".into()),
            EngineEvent::Delta(",".into()),
            EngineEvent::Delta(" world".into()),
            EngineEvent::Usage(usage),
        ]
    );
    let sent = server.requests.lock().unwrap()[0].clone();
    assert_eq!(
        (sent.conversation_id.as_str(), sent.reply_id.as_str()),
        ("conv-1", "reply-1")
    );
    let roles: Vec<pb::Role> = sent.history.iter().map(|turn| turn.role()).collect();
    assert_eq!(roles, [pb::Role::User, pb::Role::Assistant, pb::Role::User]);
    assert_eq!(sent.history[2].content, "how are you?");
    assert_eq!(sent.metadata["persona"], "helpful");
    assert_eq!(
        server.seen.authorization(),
        [Some("Bearer engine-secret".into())]
    );
    assert_eq!(
        server.seen.traceparent(),
        [Some(TRACEPARENT.into())],
        "the engine joins the trace"
    );
}

#[tokio::test]
async fn an_unreachable_engine_is_unavailable() {
    let items: Vec<_> = engine_at(&dead_url().await)
        .generate(request(&[(Role::User, "hi")]))
        .collect()
        .await;

    assert_eq!(items.len(), 1);
    assert!(
        matches!(&items[0], Err(Error::Unavailable(m)) if m.contains("gRPC chatbot engine")),
        "{items:?}"
    );
}

#[tokio::test]
async fn refusals_are_permanent_errors_quoting_the_engine() {
    let server = spawn_grpc_engine(GrpcScript {
        refuse: true,
        ..GrpcScript::default()
    })
    .await;

    let items: Vec<_> = engine_at(&server.url)
        .generate(request(&[(Role::User, "hi")]))
        .collect()
        .await;

    assert!(
        matches!(&items[..], [Err(Error::FailedPrecondition(m))] if m.ends_with("prompt too long")),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_failure_mid_stream_ends_the_stream_with_an_error_item() {
    let script = GrpcScript {
        fail_after: Some(2),
        ..GrpcScript::default()
    };
    let server = spawn_grpc_engine(script).await;

    let items: Vec<_> = engine_at(&server.url)
        .generate(request(&[(Role::User, "hi")]))
        .collect()
        .await;

    assert_eq!(items.len(), 3, "{items:?}");
    assert!(matches!(&items[1], Ok(EngineEvent::Delta(t)) if t == ","));
    assert!(matches!(&items[2], Err(Error::Unavailable(m)) if m.contains("engine crashed")));
}

#[tokio::test]
async fn dropping_the_stream_cancels_the_call_on_the_engine() {
    let script = GrpcScript {
        stall_after: Some(1),
        ..GrpcScript::default()
    };
    let server = spawn_grpc_engine(script).await;
    let mut events = engine_at(&server.url).generate(request(&[(Role::User, "hi")]));
    assert!(matches!(
        events.next().await,
        Some(Ok(EngineEvent::Delta(_)))
    ));

    drop(events);

    server.seen.wait_closed_early().await;
}
