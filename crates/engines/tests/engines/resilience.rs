//! [`ResilientEngine`] around a [`GrpcEngine`] talking to a real tonic
//! server: retries, timeouts, the concurrency limit and the circuit breaker,
//! on the real clock with short limits.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use switchboard_core::chat::{BreakerState, EngineEvent, ReplyEngine, ResilienceConfig, Role};
use switchboard_core::error::{Error, Result};
use switchboard_engines::{GrpcEngine, GrpcEngineConfig, ResilientEngine};

use crate::engine_servers::{GrpcScript, TestGrpcEngine, request, spawn_grpc_engine};

/// Limits small enough for tests to hit in well under a second.
fn quick() -> ResilienceConfig {
    ResilienceConfig {
        max_concurrent_calls: 4,
        queue_timeout_ms: 100,
        call_timeout_ms: 300,
        reply_deadline_ms: 5_000,
        max_retries: 2,
        backoff_base_ms: 10,
        backoff_max_ms: 50,
        failure_threshold: 3,
        open_for_ms: 300,
    }
}

async fn resilient(
    script: GrpcScript,
    config: ResilienceConfig,
) -> (ResilientEngine, TestGrpcEngine) {
    let server = spawn_grpc_engine(script).await;
    let engine = GrpcEngine::new(GrpcEngineConfig {
        endpoint: server.url.clone(),
        ..Default::default()
    })
    .unwrap();
    (ResilientEngine::new(Arc::new(engine), config), server)
}

async fn reply(engine: &ResilientEngine) -> Vec<Result<EngineEvent>> {
    engine
        .generate(request(&[(Role::User, "hi")]))
        .collect()
        .await
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

fn failure(items: &[Result<EngineEvent>]) -> &Error {
    match items.last() {
        Some(Err(err)) => err,
        other => panic!("the reply did not fail: {other:?}"),
    }
}

#[tokio::test]
async fn retries_an_unavailable_engine_until_it_answers() {
    let script = GrpcScript {
        unavailable_first: 2,
        ..GrpcScript::default()
    };
    let (engine, server) = resilient(script, quick()).await;

    let items = reply(&engine).await;

    assert_eq!(text_of(&items), "Hello, world");
    assert!(items.iter().all(Result::is_ok), "{items:?}");
    assert_eq!(server.seen.calls(), 3);
    assert_eq!(engine.breaker().state(), BreakerState::Closed);
}

#[tokio::test]
async fn gives_up_after_the_last_retry() {
    let script = GrpcScript {
        unavailable_first: 100,
        ..GrpcScript::default()
    };
    let (engine, server) = resilient(script, quick()).await;

    let items = reply(&engine).await;

    assert!(
        matches!(&items[..], [Err(Error::Unavailable(m))] if m.contains("warming up")),
        "{items:?}"
    );
    assert_eq!(server.seen.calls(), 3, "one call and two retries");
}

#[tokio::test]
async fn never_retries_once_text_was_sent() {
    let script = GrpcScript {
        fail_after: Some(2),
        ..GrpcScript::default()
    };
    let (engine, server) = resilient(script, quick()).await;

    let items = reply(&engine).await;

    assert_eq!(text_of(&items), "Hello,");
    assert!(matches!(failure(&items), Error::Unavailable(m) if m.contains("engine crashed")));
    assert_eq!(server.seen.calls(), 1);
}

#[tokio::test]
async fn permanent_errors_are_not_retried_and_do_not_open_the_circuit() {
    let (engine, server) = resilient(
        GrpcScript {
            refuse: true,
            ..GrpcScript::default()
        },
        quick(),
    )
    .await;

    for _ in 0..4 {
        let items = reply(&engine).await;
        assert!(
            matches!(&items[..], [Err(Error::FailedPrecondition(_))]),
            "{items:?}"
        );
    }

    assert_eq!(server.seen.calls(), 4);
    assert_eq!(engine.breaker().state(), BreakerState::Closed);
}

#[tokio::test]
async fn a_silent_engine_times_out_before_its_first_event() {
    let script = GrpcScript {
        stall_after: Some(0),
        ..GrpcScript::default()
    };
    let (engine, server) = resilient(
        script,
        ResilienceConfig {
            max_retries: 0,
            ..quick()
        },
    )
    .await;
    let started = Instant::now();

    let items = reply(&engine).await;

    let err = failure(&items).to_string();
    assert!(
        err.ends_with("the chatbot engine (grpc) did not answer within 300 ms"),
        "{err}"
    );
    assert!(started.elapsed() < Duration::from_secs(2));
    server.seen.wait_closed_early().await;
}

#[tokio::test]
async fn an_engine_that_goes_quiet_mid_reply_times_out() {
    let (engine, server) = resilient(
        GrpcScript {
            stall_after: Some(1),
            ..GrpcScript::default()
        },
        quick(),
    )
    .await;

    let items = reply(&engine).await;

    assert_eq!(text_of(&items), "Hello");
    assert!(
        failure(&items)
            .to_string()
            .ends_with("(grpc) stopped answering for 300 ms")
    );
    assert_eq!(server.seen.calls(), 1, "text was sent: no retry");
}

#[tokio::test]
async fn the_reply_deadline_bounds_a_slow_engine() {
    let script = GrpcScript {
        tokens: vec!["tok "; 100],
        token_delay: Duration::from_millis(50),
        ..GrpcScript::default()
    };
    let (engine, _server) = resilient(
        script,
        ResilienceConfig {
            reply_deadline_ms: 400,
            ..quick()
        },
    )
    .await;

    let items = reply(&engine).await;

    let deltas = items.iter().filter(|item| item.is_ok()).count();
    assert!((2..100).contains(&deltas), "{deltas} deltas");
    assert!(
        failure(&items)
            .to_string()
            .ends_with("did not finish the reply within 400 ms")
    );
}

#[tokio::test]
async fn the_circuit_opens_refuses_fast_and_closes_after_a_probe() {
    let script = GrpcScript {
        unavailable_first: 3,
        ..GrpcScript::default()
    };
    let (engine, server) = resilient(
        script,
        ResilienceConfig {
            max_retries: 0,
            ..quick()
        },
    )
    .await;
    let mut states = engine.breaker().subscribe();

    for _ in 0..3 {
        assert!(
            matches!(failure(&reply(&engine).await), Error::Unavailable(m) if m.contains("warming up"))
        );
    }
    assert!(matches!(
        engine.breaker().state(),
        BreakerState::Open { .. }
    ));
    assert!(matches!(
        *states.borrow_and_update(),
        BreakerState::Open { .. }
    ));

    let started = Instant::now();
    let refused = failure(&reply(&engine).await).to_string();
    assert!(
        refused.contains("(circuit open); try again in 1 s"),
        "{refused}"
    );
    assert!(engine.breaker().check().is_err());
    assert!(
        started.elapsed() < Duration::from_millis(50),
        "refused at once"
    );
    assert_eq!(
        server.seen.calls(),
        3,
        "an open circuit does not call the engine"
    );

    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(engine.breaker().state(), BreakerState::HalfOpen);
    assert_eq!(text_of(&reply(&engine).await), "Hello, world");
    assert_eq!(engine.breaker().state(), BreakerState::Closed);
    assert_eq!(*states.borrow_and_update(), BreakerState::Closed);
    assert_eq!(server.seen.calls(), 4);
}

#[tokio::test]
async fn a_busy_engine_refuses_replies_past_the_queue_timeout() {
    let script = GrpcScript {
        stall_after: Some(1),
        ..GrpcScript::default()
    };
    let (engine, server) = resilient(
        script,
        ResilienceConfig {
            max_concurrent_calls: 1,
            ..quick()
        },
    )
    .await;
    let mut first = engine.generate(request(&[(Role::User, "hi")]));
    assert!(matches!(first.next().await, Some(Ok(_))));

    let items = reply(&engine).await;

    assert!(
        failure(&items)
            .to_string()
            .contains("(grpc) is busy: 1 replies are under way")
    );
    assert_eq!(
        server.seen.calls(),
        1,
        "the waiting reply never reached the engine"
    );
    drop(first);
    server.seen.wait_closed_early().await;
}
