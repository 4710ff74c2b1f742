//! The chat scenarios, each written once and run on SQLite and PostgreSQL.

use std::collections::HashSet;

use futures::StreamExt;
use switchboard_core::Error;
use switchboard_core::chat::{
    ConversationPatch, DEFAULT_TITLE, DevEngine, GenerateOutcome, InProcessReplyQueue,
    MessageStatus, ReplyEventKind, recover_replies,
};
use switchboard_core::identity::Principal;
use switchboard_core::on_database;

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
    recover_finishes_replies_left_pending_or_streaming,
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
    assert_eq!(
        seqs(&events),
        (1..=expected.len() as u32 + 1).collect::<Vec<_>>()
    );
    assert_eq!(text_of(&events), expected.concat());
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
        .generate(&ManualApp::job(&sent))
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
    let app = TestApp::start(db).await;
    let sent = app.send("wait for me [dev:stall]").await;
    let stream = app
        .chat
        .subscribe_reply(&app.me, &sent.reply.conversation_id, &sent.reply.id, 0)
        .await
        .unwrap();
    let drained = app
        .queue
        .shutdown(std::time::Duration::from_millis(200))
        .await;
    assert!(!drained, "the stalled reply outlives the grace period");
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
            .generate(&ManualApp::job(&sent))
            .await
            .unwrap(),
        GenerateOutcome::Skipped
    );
}

async fn recover_finishes_replies_left_pending_or_streaming(db: TestDb) {
    let app = ManualApp::start(db).await;
    let (pending, streaming) = (app.send("one").await, app.send("two").await);
    let sql = "UPDATE messages SET status = 'streaming' WHERE id = $1";
    on_database!(&app.db, pool => sqlx::query(sql).bind(&streaming.reply.id).execute(pool).await.map(drop).unwrap());
    let queue = InProcessReplyQueue::new(std::sync::Arc::new(app.generator()), 4);
    assert_eq!(recover_replies(&app.db, &queue).await.unwrap(), 2);
    queue.wait_idle().await;
    for sent in [pending, streaming] {
        let page = app
            .chat
            .list_messages(&app.me, &sent.reply.conversation_id, 0, "")
            .await
            .unwrap();
        assert_eq!(page.items[1].status, MessageStatus::Complete);
    }
}

async fn two_generators_on_one_job_complete_it_once(db: TestDb) {
    let app = ManualApp::start(db).await;
    let sent = app.send("race").await;
    let job = ManualApp::job(&sent);
    let (a, b) = (app.generator(), app.generator());
    let (a, b) = tokio::join!(a.generate(&job), b.generate(&job));
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
    assert_eq!(app.queue.jobs.lock().unwrap().len(), 1);
}

async fn services_start_is_ready_and_migrations_are_idempotent(db: TestDb) {
    let services = switchboard_core::Services::start(&db.config).await.unwrap();
    services.ready().await.unwrap();
    services.database().migrate().await.unwrap();
    let again = switchboard_core::Services::start(&db.config).await.unwrap();
    again.shutdown().await;
    services.shutdown().await;
}
