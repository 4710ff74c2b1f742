//! The chat scenarios, each written once and run on SQLite and PostgreSQL.

use std::collections::HashSet;

use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;
use switchboard_core::Error;

use switchboard_core::chat::{
    ATTEMPT_SEQ_SPAN, ConversationPatch, DEFAULT_TITLE, DevEngine, GENERATE_REPLY, GenerateOutcome,
    MessageStatus, ReplyEventKind, ReplyJobHandler,
};
use switchboard_core::identity::Principal;
use switchboard_core::jobs::{JobState, Jobs, RetryPolicy};
use switchboard_core::on_database;
use switchboard_workers::{SqlTransport, Worker, WorkerConfig};

use crate::support::{ManualApp, TestApp, TestDb, on_both_databases, seqs, text_of};

on_both_databases!(
    conversations_page_newest_first_without_duplicates,
    malformed_page_tokens_are_invalid_arguments,
    another_users_conversation_is_not_found,
    ids_that_are_not_ids_are_not_found_on_every_database,
    update_trims_the_title_and_keeps_the_rest,
    delete_removes_the_conversation_and_its_messages,
    send_message_stores_both_rows_and_the_reply_completes,
    subscribing_from_zero_gets_every_delta_then_done,
    resuming_after_eviction_replays_the_same_events,
    resuming_mid_stream_gets_exactly_the_rest,
    a_failing_engine_stores_failed_and_ends_with_error,
    cancelling_a_pending_reply_ends_it_with_no_text,
    a_waiting_subscriber_is_told_when_its_reply_is_deleted,
    shutdown_ends_the_streams_of_replies_it_stops,
    a_reply_abandoned_by_a_killed_worker_is_finished_once_by_the_next,
    failed_attempts_are_retried_then_dead_lettered_and_an_operator_retry_succeeds,
    cancelling_a_streaming_reply_stops_the_engine_and_keeps_the_text,
    ratings_are_validated_and_stored,
    cancelling_a_reply_waiting_for_its_retry_ends_it_after_a_reset,
    an_api_instance_without_workers_or_bus_delivers_replies_once_stored,
    two_processes_with_workers_and_no_bus_deliver_each_others_replies,
    an_open_circuit_refuses_messages_fast_and_a_probe_closes_it,
    two_generators_on_one_job_complete_it_once,
    services_start_is_ready_and_migrations_are_idempotent,
);

async fn conversations_page_newest_first_without_duplicates(db: TestDb) {
    let app = TestApp::start(db).await;
    for i in 0..5 {
        app.chat
            .create_conversation(&app.me, &format!("c{i}"))
            .await
            .unwrap();
    }
    let (mut titles, mut token, mut pages) = (Vec::new(), String::new(), 0);
    loop {
        let page = app
            .chat
            .list_conversations(&app.me, 2, &token)
            .await
            .unwrap();
        titles.extend(page.items.into_iter().map(|c| c.title));
        pages += 1;
        let Some(next) = page.next_page_token else {
            break;
        };
        token = next;
    }
    assert_eq!(
        (pages, titles),
        (
            3,
            vec!["c4", "c3", "c2", "c1", "c0"]
                .into_iter()
                .map(String::from)
                .collect()
        )
    );
}

async fn malformed_page_tokens_are_invalid_arguments(db: TestDb) {
    let app = TestApp::start(db).await;
    let c = app.chat.create_conversation(&app.me, "").await.unwrap();
    assert_eq!(c.title, DEFAULT_TITLE);
    let err = app
        .chat
        .list_conversations(&app.me, 0, "not-a-token")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { ref field, .. } if field == "page_token"),
        "{err}"
    );
    let err = app
        .chat
        .list_messages(&app.me, &c.id, 0, "%%")
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { ref field, .. } if field == "page_token"),
        "{err}"
    );
}

async fn ids_that_are_not_ids_are_not_found_on_every_database(db: TestDb) {
    let app = TestApp::start(db).await;
    let c = app.chat.create_conversation(&app.me, "mine").await.unwrap();
    let not_found = |r: Result<(), Error>| matches!(r, Err(Error::NotFound { .. }));
    // PostgreSQL refuses a NUL in text with an error; it must still be a 404.
    for id in ["x\0y", "not-an-id", ""] {
        assert!(
            not_found(app.chat.get_conversation(&app.me, id).await.map(drop)),
            "{id:?}"
        );
        assert!(
            not_found(app.chat.delete_conversation(&app.me, id).await),
            "{id:?}"
        );
        assert!(
            not_found(app.chat.send_message(&app.me, id, "hi").await.map(drop)),
            "{id:?}"
        );
        assert!(
            not_found(
                app.chat
                    .subscribe_reply(&app.me, &c.id, id, 0)
                    .await
                    .map(drop)
            ),
            "{id:?}"
        );
    }
}

async fn another_users_conversation_is_not_found(db: TestDb) {
    let app = TestApp::start(db).await;
    let c = app.chat.create_conversation(&app.me, "mine").await.unwrap();
    let bob = Principal::user("bob");
    let not_found = |r: Result<_, Error>| matches!(r, Err(Error::NotFound { .. }));
    assert!(not_found(
        app.chat.get_conversation(&bob, &c.id).await.map(drop)
    ));
    assert!(not_found(
        app.chat
            .update_conversation(
                &bob,
                &c.id,
                ConversationPatch {
                    title: Some("x".into())
                }
            )
            .await
            .map(drop)
    ));
    assert!(not_found(app.chat.delete_conversation(&bob, &c.id).await));
    assert!(not_found(
        app.chat.list_messages(&bob, &c.id, 0, "").await.map(drop)
    ));
    assert!(not_found(
        app.chat.send_message(&bob, &c.id, "hi").await.map(drop)
    ));
    assert!(
        app.chat
            .list_conversations(&bob, 0, "")
            .await
            .unwrap()
            .items
            .is_empty()
    );
    assert_eq!(app.chat.get_conversation(&app.me, &c.id).await.unwrap(), c);
}

async fn update_trims_the_title_and_keeps_the_rest(db: TestDb) {
    let app = TestApp::start(db).await;
    let c = app.chat.create_conversation(&app.me, "old").await.unwrap();
    let patch = |t: &str| ConversationPatch {
        title: Some(t.into()),
    };
    let updated = app
        .chat
        .update_conversation(&app.me, &c.id, patch("  new  "))
        .await
        .unwrap();
    assert_eq!(
        (updated.title.as_str(), updated.created_at),
        ("new", c.created_at)
    );
    assert!(updated.updated_at >= c.updated_at);
    assert_eq!(
        app.chat.get_conversation(&app.me, &c.id).await.unwrap(),
        updated
    );
    let unchanged = app
        .chat
        .update_conversation(&app.me, &c.id, ConversationPatch::default())
        .await
        .unwrap();
    assert_eq!(unchanged, updated);
    let err = app
        .chat
        .update_conversation(&app.me, &c.id, patch(" "))
        .await
        .unwrap_err();
    assert!(
        matches!(err, Error::InvalidArgument { ref field, .. } if field == "title"),
        "{err}"
    );
}

async fn delete_removes_the_conversation_and_its_messages(db: TestDb) {
    let app = TestApp::start(db).await;
    let sent = app.send("hello").await;
    app.settle().await;
    let id = &sent.message.conversation_id;
    app.chat.delete_conversation(&app.me, id).await.unwrap();
    assert!(matches!(
        app.chat.get_conversation(&app.me, id).await,
        Err(Error::NotFound { .. })
    ));
    let sql = "SELECT COUNT(*) FROM messages WHERE conversation_id = $1";
    let left: i64 = on_database!(&app.db, pool => sqlx::query_scalar(sql).bind(id).fetch_one(pool).await.unwrap());
    assert_eq!(left, 0);
}

async fn send_message_stores_both_rows_and_the_reply_completes(db: TestDb) {
    let app = TestApp::start(db).await;
    let sent = app.send("What is the time?").await;
    assert_eq!(
        (sent.message.status, sent.reply.status),
        (MessageStatus::Complete, MessageStatus::Pending)
    );
    app.settle().await;
    let page = app
        .chat
        .list_messages(&app.me, &sent.message.conversation_id, 0, "")
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    assert_eq!(page.items[0], sent.message);
    assert_eq!(
        (page.items[1].id.as_str(), page.items[1].status),
        (sent.reply.id.as_str(), MessageStatus::Complete)
    );
    assert_eq!(
        page.items[1].content,
        DevEngine::reply_text("What is the time?")
    );
}

async fn subscribing_from_zero_gets_every_delta_then_done(db: TestDb) {
    let app = TestApp::start(db).await;
    let sent = app.send("hi there").await;
    let events = app.events(&sent, 0).await;
    let expected = DevEngine::tokens(&DevEngine::reply_text("hi there"));
    // The pieces, the usage, then done.
    assert_eq!(
        seqs(&events),
        (1..=expected.len() as u32 + 2).collect::<Vec<_>>()
    );
    assert_eq!(text_of(&events), expected.concat());
    let ReplyEventKind::Usage(usage) = &events[events.len() - 2].kind else {
        panic!("usage comes before done: {events:?}");
    };
    assert_eq!(usage.completion_tokens, expected.len() as u32);
    let ReplyEventKind::Done(done) = &events.last().unwrap().kind else {
        panic!("{events:?}")
    };
    assert_eq!(
        (done.status, done.content.as_str()),
        (MessageStatus::Complete, expected.concat().as_str())
    );
}

async fn resuming_after_eviction_replays_the_same_events(db: TestDb) {
    let app = TestApp::start(db).await;
    let sent = app.send("remember me").await;
    let live = app.events(&sent, 0).await;
    app.settle().await;
    app.hub.evict_finished();
    assert_eq!(app.hub.live_logs(), 0);
    assert_eq!(app.events(&sent, 0).await, live);
    assert_eq!(app.events(&sent, 3).await, live[3..]);
    assert!(app.events(&sent, 1000).await.is_empty());
}

async fn resuming_mid_stream_gets_exactly_the_rest(db: TestDb) {
    let app = TestApp::start(db).await;
    let sent = app.send("[dev:stall] wait").await;
    let mut first = app
        .chat
        .subscribe_reply(&app.me, &sent.reply.conversation_id, &sent.reply.id, 0)
        .await
        .unwrap();
    let head: Vec<_> = (&mut first).take(2).collect().await;
    let mut resumed = app
        .chat
        .subscribe_reply(&app.me, &sent.reply.conversation_id, &sent.reply.id, 1)
        .await
        .unwrap();
    assert_eq!(resumed.next().await.as_ref(), Some(&head[1]));
    let cancelled = app
        .chat
        .cancel_reply(&app.me, &sent.reply.conversation_id, &sent.reply.id)
        .await
        .unwrap();
    assert_eq!(
        (cancelled.status, cancelled.content.as_str()),
        (MessageStatus::Cancelled, text_of(&head).as_str())
    );
    let tail: Vec<_> = resumed.collect().await;
    assert!(
        matches!(&tail[..], [e] if e.seq == 3 && matches!(&e.kind, ReplyEventKind::Error { code, .. } if code == "CANCELLED"))
    );
    app.hub.evict_finished();
    assert_eq!(
        app.events(&sent, 1).await,
        [vec![head[1].clone()], tail].concat()
    );
}

async fn a_failing_engine_stores_failed_and_ends_with_error(db: TestDb) {
    let app = TestApp::start(db).await;
    let sent = app.send("please [dev:fail]").await;
    let live = app.events(&sent, 0).await;
    assert_eq!(seqs(&live), [1, 2, 3]);
    assert!(matches!(&live[2].kind, ReplyEventKind::Error { code, .. } if code == "UNAVAILABLE"));
    app.settle().await;
    let page = app
        .chat
        .list_messages(&app.me, &sent.reply.conversation_id, 0, "")
        .await
        .unwrap();
    assert_eq!(
        (page.items[1].status, page.items[1].content.clone()),
        (MessageStatus::Failed, text_of(&live))
    );
    app.hub.evict_finished();
    assert_eq!(app.events(&sent, 0).await, live);
}

async fn a_waiting_subscriber_is_told_when_its_reply_is_deleted(db: TestDb) {
    let app = ManualApp::start(db).await;
    let sent = app.send("about to vanish").await;
    let (conversation, reply) = (&sent.reply.conversation_id, &sent.reply.id);
    let waiting = app
        .chat
        .subscribe_reply(&app.me, conversation, reply, 0)
        .await
        .unwrap();
    app.chat
        .delete_conversation(&app.me, conversation)
        .await
        .unwrap();
    let outcome = app
        .generator()
        .generate(&ManualApp::job(&sent), true)
        .await
        .unwrap();
    assert_eq!(outcome, GenerateOutcome::Skipped);
    let events: Vec<_> = tokio::time::timeout(std::time::Duration::from_secs(5), waiting.collect())
        .await
        .expect("the stream ends instead of waiting forever");
    assert!(
        matches!(&events[..], [e] if matches!(&e.kind, ReplyEventKind::Error { code, .. } if code == "NOT_FOUND")),
        "{events:?}"
    );
}

async fn shutdown_ends_the_streams_of_replies_it_stops(db: TestDb) {
    let mut app = TestApp::start(db).await;
    let sent = app.send("wait for me [dev:stall]").await;
    let stream = app
        .chat
        .subscribe_reply(&app.me, &sent.reply.conversation_id, &sent.reply.id, 0)
        .await
        .unwrap();
    app.shutdown().await;
    let events: Vec<_> = tokio::time::timeout(std::time::Duration::from_secs(5), stream.collect())
        .await
        .expect("the stream ends at shutdown");
    assert!(
        matches!(events.last(), Some(e) if matches!(&e.kind, ReplyEventKind::Error { code, .. } if code == "UNAVAILABLE")),
        "{events:?}"
    );
}

async fn cancelling_a_pending_reply_ends_it_with_no_text(db: TestDb) {
    let app = ManualApp::start(db).await;
    let sent = app.send("never answered").await;
    let (conversation, reply) = (&sent.reply.conversation_id, &sent.reply.id);
    let cancelled = app
        .chat
        .cancel_reply(&app.me, conversation, reply)
        .await
        .unwrap();
    assert_eq!(
        (cancelled.status, cancelled.content.as_str()),
        (MessageStatus::Cancelled, "")
    );
    let events: Vec<_> = app
        .chat
        .subscribe_reply(&app.me, conversation, reply, 0)
        .await
        .unwrap()
        .collect()
        .await;
    assert!(
        matches!(&events[..], [e] if e.seq == 1 && matches!(&e.kind, ReplyEventKind::Error { code, .. } if code == "CANCELLED"))
    );
    assert!(matches!(
        app.chat.cancel_reply(&app.me, conversation, reply).await,
        Err(Error::FailedPrecondition(_))
    ));
    assert_eq!(
        app.generator()
            .generate(&ManualApp::job(&sent), true)
            .await
            .unwrap(),
        GenerateOutcome::Skipped
    );
}

async fn a_reply_abandoned_by_a_killed_worker_is_finished_once_by_the_next(db: TestDb) {
    let app = ManualApp::start(db).await;
    let sent = app.send("take over").await;
    let (conversation, reply) = (&sent.reply.conversation_id, &sent.reply.id);
    // A worker took the job, streamed a piece and died: the job's lease ran
    // out; the reply's runs out a second later (the two are renewed at
    // different times), so the next worker must wait for it, not give up.
    let past = chrono::Utc::now().timestamp_micros() - 1_000_000;
    let soon = chrono::Utc::now().timestamp_micros() + 1_000_000;
    on_database!(&app.db, pool => {
        sqlx::query("UPDATE jobs SET state = 'running', attempts = 1, lease_until = $1 WHERE id = $2")
            .bind(past).bind(&sent.job_id).execute(pool).await.unwrap();
        sqlx::query("UPDATE messages SET status = 'streaming', attempt = 1, content = 'You', \
                     lease_until = $1 WHERE id = $2")
            .bind(soon).bind(reply).execute(pool).await.unwrap();
    });
    // A client that saw the dead attempt's first piece resumes after it.
    let resumed = app
        .chat
        .subscribe_reply(&app.me, conversation, reply, 1)
        .await
        .unwrap();
    let transport = Arc::new(SqlTransport::new(app.db.clone(), Duration::from_millis(20)));
    let handler = Arc::new(ReplyJobHandler::new(
        Arc::new(app.generator()),
        app.db.clone(),
    ));
    let policy = RetryPolicy::default();
    let worker = Worker::new(
        app.db.clone(),
        transport.clone(),
        WorkerConfig {
            lease: Duration::from_secs(2),
            ..WorkerConfig::default()
        },
    )
    .handle(GENERATE_REPLY, policy, handler);
    let stop = switchboard_core::shutdown::Shutdown::new();
    let running = tokio::spawn(Arc::new(worker).run(stop.signal(), Duration::from_secs(1)));
    let events: Vec<_> = tokio::time::timeout(Duration::from_secs(10), resumed.collect())
        .await
        .expect("the next worker finishes the reply");
    assert_eq!(
        (events[0].seq, &events[0].kind),
        (ATTEMPT_SEQ_SPAN, &ReplyEventKind::Reset { attempt: 2 })
    );
    assert_eq!(text_of(&events), DevEngine::reply_text("take over"));
    let jobs = Jobs::new(app.db.clone(), transport);
    let mut job = jobs.get(&sent.job_id).await.unwrap();
    for _ in 0..100 {
        if job.state.is_finished() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
        job = jobs.get(&sent.job_id).await.unwrap();
    }
    assert_eq!((job.state, job.attempts), (JobState::Succeeded, 2));
    let page = app
        .chat
        .list_messages(&app.me, conversation, 0, "")
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2, "one reply, never two");
    assert_eq!(
        (page.items[1].status, page.items[1].content.clone()),
        (MessageStatus::Complete, DevEngine::reply_text("take over"))
    );
    stop.begin();
    running.await.unwrap();
}

async fn failed_attempts_are_retried_then_dead_lettered_and_an_operator_retry_succeeds(db: TestDb) {
    let policy = RetryPolicy {
        max_attempts: 2,
        backoff_base_ms: 10,
        backoff_max_ms: 20,
    };
    let app = TestApp::start_with(db, policy).await;
    let sent = app.send("fail twice [dev:fail-attempts=2]").await;
    let (conversation, reply) = (&sent.reply.conversation_id, &sent.reply.id);
    let live = app.events(&sent, 0).await;
    app.settle().await;
    // Attempt 1 streamed two pieces and failed; attempt 2 reset, did the
    // same, and was the last: the reply is failed, the job is dead.
    assert_eq!(
        seqs(&live),
        [
            1,
            2,
            ATTEMPT_SEQ_SPAN,
            ATTEMPT_SEQ_SPAN + 1,
            ATTEMPT_SEQ_SPAN + 2,
            ATTEMPT_SEQ_SPAN + 3
        ]
    );
    assert!(matches!(&live[5].kind, ReplyEventKind::Error { code, .. } if code == "UNAVAILABLE"));
    let dead = app.jobs.list_dead_letters(0, "").await.unwrap();
    assert_eq!(dead.items.len(), 1);
    let letter = &dead.items[0];
    assert_eq!(
        (
            letter.id.as_str(),
            letter.state,
            letter.attempts,
            letter.kind.as_str()
        ),
        (sent.job_id.as_str(), JobState::Dead, 2, GENERATE_REPLY)
    );
    assert!(
        letter
            .last_error
            .as_deref()
            .unwrap()
            .contains("failed on purpose")
    );
    assert_eq!(letter.payload["reply_id"], reply.as_str());
    assert!(letter.finished_at.is_some());
    // The operator retries it: the reply goes back to pending and attempt 3
    // (the engine's third call for this reply) answers.
    let retried = app.jobs.retry_dead_letter(&sent.job_id).await.unwrap();
    assert_eq!((retried.state, retried.attempts), (JobState::Queued, 0));
    app.settle().await;
    let job = app.jobs.get(&sent.job_id).await.unwrap();
    assert_eq!((job.state, job.attempts), (JobState::Succeeded, 1));
    let replay = app.events(&sent, 0).await;
    assert_eq!(replay[0].kind, ReplyEventKind::Reset { attempt: 3 });
    assert_eq!(
        text_of(&replay),
        DevEngine::reply_text("fail twice [dev:fail-attempts=2]")
    );
    assert!(matches!(
        replay.last().unwrap().kind,
        ReplyEventKind::Done(_)
    ));
    assert!(
        app.jobs
            .list_dead_letters(0, "")
            .await
            .unwrap()
            .items
            .is_empty()
    );
    let page = app
        .chat
        .list_messages(&app.me, conversation, 0, "")
        .await
        .unwrap();
    assert_eq!(page.items.len(), 2);
    // Retrying or deleting something that is not a dead letter is NOT_FOUND.
    assert!(matches!(
        app.jobs.retry_dead_letter(&sent.job_id).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        app.jobs.delete_dead_letter(&sent.job_id).await,
        Err(Error::NotFound { .. })
    ));
}

async fn cancelling_a_streaming_reply_stops_the_engine_and_keeps_the_text(db: TestDb) {
    let app = TestApp::start(db).await;
    let sent = app.send("hold on [dev:stall]").await;
    let (conversation, reply) = (&sent.reply.conversation_id, &sent.reply.id);
    let mut stream = app
        .chat
        .subscribe_reply(&app.me, conversation, reply, 0)
        .await
        .unwrap();
    let first_two = vec![stream.next().await.unwrap(), stream.next().await.unwrap()];
    let cancelled = app
        .chat
        .cancel_reply(&app.me, conversation, reply)
        .await
        .unwrap();
    assert_eq!(
        (cancelled.status, cancelled.content.clone()),
        (MessageStatus::Cancelled, text_of(&first_two))
    );
    let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(5), stream.collect())
        .await
        .unwrap();
    assert!(
        matches!(&rest[..], [e] if matches!(&e.kind, ReplyEventKind::Error { code, .. } if code == "CANCELLED")),
        "{rest:?}"
    );
    app.settle().await;
    let job = app.jobs.get(&sent.job_id).await.unwrap();
    assert_eq!(
        job.state,
        JobState::Succeeded,
        "a cancelled reply is a finished job"
    );
}

async fn an_open_circuit_refuses_messages_fast_and_a_probe_closes_it(db: TestDb) {
    let app = TestApp::start_configured(db, |config| {
        config.engine.resilience.failure_threshold = 2;
        config.engine.resilience.open_for_ms = 1000;
    })
    .await;
    let status = app.services.as_ref().unwrap().engine_status().clone();
    assert_eq!(status.state().as_str(), "closed");
    for _ in 0..2 {
        let sent = app.send("break it [dev:fail]").await;
        app.events(&sent, 0).await;
    }
    app.settle().await;
    assert_eq!(status.state().as_str(), "open");
    let conversation = app.chat.create_conversation(&app.me, "").await.unwrap();
    let started = std::time::Instant::now();
    let refused = app
        .chat
        .send_message(&app.me, &conversation.id, "hello")
        .await;
    assert!(
        started.elapsed() < Duration::from_millis(100),
        "refused fast"
    );
    assert!(
        matches!(&refused, Err(Error::Unavailable(m)) if m.contains("circuit open")),
        "{refused:?}"
    );
    let page = app
        .chat
        .list_messages(&app.me, &conversation.id, 0, "")
        .await
        .unwrap();
    assert!(
        page.items.is_empty(),
        "nothing is stored for a refused message"
    );
    // After open_for the circuit lets a probe through; its success closes it.
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let sent = app.send("are you back?").await;
    let events = app.events(&sent, 0).await;
    assert!(matches!(
        events.last().unwrap().kind,
        ReplyEventKind::Done(_)
    ));
    assert_eq!(status.state().as_str(), "closed");
}

async fn an_api_instance_without_workers_or_bus_delivers_replies_once_stored(db: TestDb) {
    use switchboard_app::Startup;
    // Slow enough that the reply is still streaming when it is subscribed to.
    let mut config = db.config.clone();
    config.engine.token_delay_ms = 20;
    let api = switchboard_app::Services::start_with(
        &config,
        Startup {
            workers: false,
            engine: None,
        },
    )
    .await
    .unwrap();
    let worker = switchboard_app::Services::start(&config).await.unwrap();
    let me = Principal::user("alice");
    let chat = api.chat();
    let conversation = chat.create_conversation(&me, "").await.unwrap();
    let sent = chat
        .send_message(&me, &conversation.id, "sent to the API instance")
        .await
        .unwrap();
    let events: Vec<_> = tokio::time::timeout(
        Duration::from_secs(10),
        chat.subscribe_reply(&me, &conversation.id, &sent.reply.id, 0)
            .await
            .unwrap()
            .collect(),
    )
    .await
    .expect("the reply arrives once the other process stored it");
    assert_eq!(
        text_of(&events),
        DevEngine::reply_text("sent to the API instance")
    );
    assert!(matches!(
        events.last().unwrap().kind,
        ReplyEventKind::Done(_)
    ));
    let resumed: Vec<_> = chat
        .subscribe_reply(&me, &conversation.id, &sent.reply.id, 3)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(resumed[..], events[3..]);
    worker.shutdown().await;
    api.shutdown().await;
}

async fn cancelling_a_reply_waiting_for_its_retry_ends_it_after_a_reset(db: TestDb) {
    let policy = RetryPolicy {
        max_attempts: 3,
        backoff_base_ms: 60_000,
        backoff_max_ms: 60_000,
    };
    let app = TestApp::start_with(db, policy).await;
    let sent = app.send("fail once [dev:fail-attempts=1]").await;
    let (conversation, reply) = (&sent.reply.conversation_id, &sent.reply.id);
    let mut live = app
        .chat
        .subscribe_reply(&app.me, conversation, reply, 0)
        .await
        .unwrap();
    let first = vec![live.next().await.unwrap(), live.next().await.unwrap()];
    assert_eq!(seqs(&first), [1, 2]);
    // Attempt 1 failed; the reply is pending again, its retry a minute away.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let page = app
            .chat
            .list_messages(&app.me, conversation, 0, "")
            .await
            .unwrap();
        if page.items[1].status == MessageStatus::Pending {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the reply goes back to pending"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let cancelled = app
        .chat
        .cancel_reply(&app.me, conversation, reply)
        .await
        .unwrap();
    assert_eq!(
        (cancelled.status, cancelled.content.as_str()),
        (MessageStatus::Cancelled, "")
    );
    let rest: Vec<_> = tokio::time::timeout(Duration::from_secs(5), live.collect())
        .await
        .expect("the live stream ends");
    assert_eq!(seqs(&rest), [ATTEMPT_SEQ_SPAN, ATTEMPT_SEQ_SPAN + 1]);
    assert_eq!(rest[0].kind, ReplyEventKind::Reset { attempt: 2 });
    assert!(matches!(&rest[1].kind, ReplyEventKind::Error { code, .. } if code == "CANCELLED"));
    // A client resuming after seq 2 from the database sees the same.
    app.hub.evict_finished();
    assert_eq!(app.events(&sent, 2).await, rest);
}

async fn two_processes_with_workers_and_no_bus_deliver_each_others_replies(db: TestDb) {
    let mut config = db.config.clone();
    config.engine.token_delay_ms = 20;
    let a = switchboard_app::Services::start(&config).await.unwrap();
    let b = switchboard_app::Services::start(&config).await.unwrap();
    let me = Principal::user("alice");
    // Several turns, so both processes' workers take some of them.
    for turn in 0..4 {
        let text = format!("turn {turn}");
        let conversation = b.chat().create_conversation(&me, "").await.unwrap();
        let sent = b
            .chat()
            .send_message(&me, &conversation.id, &text)
            .await
            .unwrap();
        let events: Vec<_> = tokio::time::timeout(
            Duration::from_secs(15),
            a.chat()
                .subscribe_reply(&me, &conversation.id, &sent.reply.id, 0)
                .await
                .unwrap()
                .collect(),
        )
        .await
        .expect("the reply reaches the other process, live or once stored");
        assert_eq!(text_of(&events), DevEngine::reply_text(&text));
        assert!(matches!(
            events.last().unwrap().kind,
            ReplyEventKind::Done(_)
        ));
    }
    b.shutdown().await;
    a.shutdown().await;
}

async fn ratings_are_validated_and_stored(db: TestDb) {
    let app = TestApp::start(db).await;
    let sent = app.send("rate me").await;
    app.settle().await;
    let (conversation, reply) = (&sent.reply.conversation_id, &sent.reply.id);
    for bad in [0, 2, -2] {
        assert!(matches!(
            app.chat.rate_reply(&app.me, conversation, reply, bad, "").await,
            Err(Error::InvalidArgument { field, .. }) if field == "rating"
        ));
    }
    assert!(matches!(
        app.chat.rate_reply(&app.me, conversation, reply, 1, &"x".repeat(2001)).await,
        Err(Error::InvalidArgument { field, .. }) if field == "comment"
    ));
    assert!(matches!(
        app.chat
            .rate_reply(&app.me, conversation, &sent.message.id, 1, "")
            .await,
        Err(Error::NotFound { .. })
    ));
    let stranger = Principal::user("mallory");
    assert!(matches!(
        app.chat
            .rate_reply(&stranger, conversation, reply, 1, "")
            .await,
        Err(Error::NotFound { .. })
    ));
    app.chat
        .rate_reply(&app.me, conversation, reply, -1, "too formal")
        .await
        .unwrap();
    let stored: (i64, String) = on_database!(&app.db, pool => {
        sqlx::query_as("SELECT rating, feedback FROM messages WHERE id = $1")
            .bind(reply).fetch_one(pool).await.unwrap()
    });
    assert_eq!(stored, (-1, "too formal".to_owned()));
}

async fn two_generators_on_one_job_complete_it_once(db: TestDb) {
    let app = ManualApp::start(db).await;
    let sent = app.send("race").await;
    let job = ManualApp::job(&sent);
    let (a, b) = (app.generator(), app.generator());
    let (a, b) = tokio::join!(a.generate(&job, true), b.generate(&job, true));
    let outcomes: HashSet<_> = [a.unwrap(), b.unwrap()].into();
    assert_eq!(
        outcomes,
        HashSet::from([GenerateOutcome::Completed, GenerateOutcome::Skipped])
    );
    let events: Vec<_> = app
        .chat
        .subscribe_reply(&app.me, &job.conversation_id, &job.reply_id, 0)
        .await
        .unwrap()
        .collect()
        .await;
    assert_eq!(text_of(&events), DevEngine::reply_text("race"));
    assert_eq!(app.transport.sent.lock().unwrap().len(), 1);
}

async fn services_start_is_ready_and_migrations_are_idempotent(db: TestDb) {
    let services = switchboard_app::Services::start(&db.config).await.unwrap();
    services.ready().await.unwrap();
    services.database().migrate().await.unwrap();
    let again = switchboard_app::Services::start(&db.config).await.unwrap();
    again.shutdown().await;
    services.shutdown().await;
}
