//! [`OpenAiEngine`] against an axum server speaking OpenAI's streamed chat
//! completions.

use std::sync::Arc;

use futures::{StreamExt, TryStreamExt};
use serde_json::json;
use switchboard_core::chat::{EngineEvent, ReplyEngine, ResilienceConfig, Role, Usage};
use switchboard_core::error::{Error, Result};
use switchboard_engines::{OpenAiEngine, OpenAiEngineConfig, ResilientEngine};

use crate::engine_servers::{
    OpenAiAnswer, TRACEPARENT, dead_url, request, spawn_openai_engine, sse_reply, traced_request,
};

fn engine_at(base_url: &str) -> OpenAiEngine {
    let mut config = OpenAiEngineConfig::new(base_url, "test-model");
    config.api_key = Some("sk-test".into());
    config.system_prompt = Some("Be brief.".into());
    OpenAiEngine::new(config).unwrap()
}

fn hi() -> switchboard_core::chat::EngineRequest {
    request(&[(Role::User, "hi")])
}

fn text_of(items: &[Result<EngineEvent>]) -> String {
    items
        .iter()
        .filter_map(|item| match item {
            Ok(EngineEvent::Delta(text)) => Some(text.as_str()),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn streams_text_and_usage_across_split_lines_and_characters() {
    // Pieces of 7 bytes cut lines, JSON and multi-byte characters apart.
    let body = sse_reply(&["Hé", "llo ", "wörld 👋"], Some((12, 3)), true);
    let server = spawn_openai_engine(vec![OpenAiAnswer::Stream { body, piece: 7 }]).await;

    let events: Vec<EngineEvent> = engine_at(&server.base_url)
        .generate(traced_request(&[(Role::User, "hi")]))
        .try_collect()
        .await
        .unwrap();

    assert_eq!(
        events,
        [
            EngineEvent::Delta("Hé".into()),
            EngineEvent::Delta("llo ".into()),
            EngineEvent::Delta("wörld 👋".into()),
            EngineEvent::Usage(Usage {
                prompt_tokens: 12,
                completion_tokens: 3
            }),
        ]
    );
    let sent = server.bodies.lock().unwrap()[0].clone();
    assert_eq!(
        sent,
        json!({
            "model": "test-model",
            "messages": [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": "hi"},
            ],
            "stream": true,
            "stream_options": {"include_usage": true},
        })
    );
    assert_eq!(server.seen.authorization(), [Some("Bearer sk-test".into())]);
    assert_eq!(
        server.seen.traceparent(),
        [Some(TRACEPARENT.into())],
        "the engine joins the trace"
    );
}

#[tokio::test]
async fn rate_limits_are_unavailable_and_retried_before_the_first_token() {
    let too_many = OpenAiAnswer::Status {
        status: 429,
        body: json!({"error": {"message": "Rate limit reached, slow down", "type": "requests"}})
            .to_string(),
    };
    let body = sse_reply(&["fine"], Some((1, 1)), true);
    let answers = vec![
        too_many.clone(),
        too_many,
        OpenAiAnswer::Stream { body, piece: 64 },
    ];
    let server = spawn_openai_engine(answers).await;
    let engine = Arc::new(engine_at(&server.base_url));

    let items: Vec<_> = engine.generate(hi()).collect().await;
    assert!(
        matches!(&items[..], [Err(Error::Unavailable(m))] if m.contains("429 Too Many Requests") && m.ends_with("slow down")),
        "{items:?}"
    );

    let config = ResilienceConfig {
        backoff_base_ms: 10,
        ..ResilienceConfig::default()
    };
    let items: Vec<_> = ResilientEngine::new(engine, config)
        .generate(hi())
        .collect()
        .await;
    assert_eq!(text_of(&items), "fine");
    assert!(items.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(server.seen.calls(), 3);
}

#[tokio::test]
async fn bad_requests_are_permanent_and_quote_the_server() {
    let message = "This model's maximum context length is 8192 tokens.";
    let refusal = OpenAiAnswer::Status {
        status: 400,
        body: json!({"error": {"message": message, "type": "invalid_request_error"}}).to_string(),
    };
    let server = spawn_openai_engine(vec![refusal]).await;
    let engine = ResilientEngine::new(
        Arc::new(engine_at(&server.base_url)),
        ResilienceConfig::default(),
    );

    let items: Vec<_> = engine.generate(hi()).collect().await;

    assert!(
        matches!(&items[..], [Err(Error::FailedPrecondition(m))] if m.contains("400 Bad Request") && m.ends_with(message)),
        "{items:?}"
    );
    assert_eq!(server.seen.calls(), 1, "a permanent error is not retried");
}

#[tokio::test]
async fn an_unreachable_server_is_unavailable() {
    let items: Vec<_> = engine_at(&format!("{}/v1", dead_url().await))
        .generate(hi())
        .collect()
        .await;

    assert!(
        matches!(&items[..], [Err(Error::Unavailable(m))] if m.contains("could not be reached")),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_connection_dropped_mid_stream_is_an_error_item() {
    let body = sse_reply(&["Hel", "lo"], None, false);
    let server = spawn_openai_engine(vec![OpenAiAnswer::StreamThenDrop { body }]).await;

    let items: Vec<_> = engine_at(&server.base_url).generate(hi()).collect().await;

    assert_eq!(text_of(&items), "Hello");
    assert!(
        matches!(items.last(), Some(Err(Error::Unavailable(m))) if m.contains("stream broke")),
        "{items:?}"
    );
}

#[tokio::test]
async fn a_stream_without_done_or_with_an_error_object_fails() {
    let unfinished = sse_reply(&["Hel"], None, false);
    let overloaded = format!(
        "{}data: {}\n\n",
        sse_reply(&["Hel"], None, false),
        json!({"error": {"message": "The server is overloaded", "type": "server_error"}})
    );
    let answers = vec![
        OpenAiAnswer::Stream {
            body: unfinished,
            piece: 64,
        },
        OpenAiAnswer::Stream {
            body: overloaded,
            piece: 64,
        },
    ];
    let server = spawn_openai_engine(answers).await;
    let engine = engine_at(&server.base_url);

    let items: Vec<_> = engine.generate(hi()).collect().await;
    assert!(
        matches!(items.last(), Some(Err(Error::Unavailable(m))) if m.ends_with("before [DONE]")),
        "{items:?}"
    );

    let items: Vec<_> = engine.generate(hi()).collect().await;
    assert!(
        matches!(items.last(), Some(Err(Error::Unavailable(m))) if m.ends_with("mid-reply: The server is overloaded")),
        "{items:?}"
    );
}

#[tokio::test]
async fn the_context_budget_drops_the_oldest_turns() {
    let body = sse_reply(&["ok"], None, true);
    let server = spawn_openai_engine(vec![OpenAiAnswer::Stream { body, piece: 64 }]).await;
    let mut config = OpenAiEngineConfig::new(&server.base_url, "test-model");
    config.system_prompt = Some("Be brief.".into()); // 9 characters
    config.context_budget_chars = 9 + 3 * 10; // and three turns of 10
    let turns = [
        (Role::User, "question 1"),
        (Role::Assistant, "answer №1."),
        (Role::User, "question 2"),
        (Role::Assistant, "answer №2."),
        (Role::User, "question 3"),
    ];

    let engine = OpenAiEngine::new(config).unwrap();
    let _: Vec<_> = engine.generate(request(&turns)).collect().await;

    let sent = server.bodies.lock().unwrap()[0]["messages"].clone();
    let contents: Vec<&str> = sent
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["content"].as_str().unwrap())
        .collect();
    assert_eq!(
        contents,
        ["Be brief.", "question 2", "answer №2.", "question 3"]
    );
}

#[tokio::test]
async fn dropping_the_stream_closes_the_request() {
    let server = spawn_openai_engine(vec![OpenAiAnswer::Endless]).await;
    let mut events = engine_at(&server.base_url).generate(hi());
    assert!(matches!(
        events.next().await,
        Some(Ok(EngineEvent::Delta(_)))
    ));
    assert!(matches!(
        events.next().await,
        Some(Ok(EngineEvent::Delta(_)))
    ));

    drop(events);

    server.seen.wait_closed_early().await;
}

#[tokio::test]
async fn a_stalled_stream_trips_the_idle_timeout() {
    let body = sse_reply(&["Hel"], None, false);
    let server = spawn_openai_engine(vec![OpenAiAnswer::StreamThenStall { body }]).await;
    let config = ResilienceConfig {
        call_timeout_ms: 300,
        ..ResilienceConfig::default()
    };
    let engine = ResilientEngine::new(Arc::new(engine_at(&server.base_url)), config);

    let items: Vec<_> = engine.generate(hi()).collect().await;

    assert_eq!(text_of(&items), "Hel");
    assert!(
        matches!(items.last(), Some(Err(Error::Unavailable(m))) if m.ends_with("(openai) stopped answering for 300 ms")),
        "{items:?}"
    );
    assert_eq!(server.seen.calls(), 1, "text was sent: no retry");
    server.seen.wait_closed_early().await;
}
