//! ChatApi called in-process (no transport): the principal in extensions,
//! conversions, the error table and the reply stream, on a SQLite database
//! in a temporary directory.

use futures::StreamExt;
use switchboard_api::ChatApi;
use switchboard_app::Services;
use switchboard_core::chat::DevEngine;
use switchboard_core::config::{Config, EngineConfig};
use switchboard_core::identity::Principal;
use switchboard_proto::FieldMask;
use switchboard_proto::v1 as pb;
use switchboard_proto::v1::chat_service_server::ChatService;
use tempfile::TempDir;
use tonic::{Code, Request};
use tonic_types::StatusExt;

struct TestApi {
    api: ChatApi,
    _services: Services,
    _dir: TempDir,
}

async fn spawn_api() -> TestApi {
    let dir = tempfile::tempdir().unwrap();
    let config = Config {
        data_dir: dir.path().to_owned(),
        engine: EngineConfig {
            token_delay_ms: 0,
            max_concurrent_replies: 4,
            ..EngineConfig::default()
        },
        ..Config::default()
    };
    let services = Services::start(&config).await.unwrap();
    TestApi {
        api: ChatApi::new(services.chat()),
        _services: services,
        _dir: dir,
    }
}

/// A request from user `user`.
fn as_user<T>(user: &str, message: T) -> Request<T> {
    let mut request = Request::new(message);
    request.extensions_mut().insert(Principal::user(user));
    request
}

async fn create(api: &ChatApi, user: &str, title: &str) -> pb::Conversation {
    let conversation = Some(pb::Conversation {
        title: title.into(),
        ..Default::default()
    });
    let request = as_user(user, pb::CreateConversationRequest { conversation });
    api.create_conversation(request).await.unwrap().into_inner()
}

#[tokio::test]
async fn requests_without_a_principal_are_unauthenticated() {
    let t = spawn_api().await;
    let status = t
        .api
        .list_conversations(Request::new(Default::default()))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::Unauthenticated);
}

#[tokio::test]
async fn conversations_are_created_updated_by_mask_and_private() {
    let t = spawn_api().await;
    let created = create(&t.api, "alice", "  Trip ").await;
    assert_eq!(
        (created.title.as_str(), created.created_at.is_some()),
        ("Trip", true)
    );
    let update = |paths: &[&str], title: &str| pb::UpdateConversationRequest {
        conversation: Some(pb::Conversation {
            id: created.id.clone(),
            title: title.into(),
            ..Default::default()
        }),
        update_mask: Some(FieldMask {
            paths: paths.iter().map(|p| (*p).into()).collect(),
        }),
    };
    let updated = t
        .api
        .update_conversation(as_user("alice", update(&["title"], "Plan")))
        .await
        .unwrap();
    assert_eq!(updated.into_inner().title, "Plan");
    let status = t
        .api
        .update_conversation(as_user("alice", update(&["owner"], "x")))
        .await
        .unwrap_err();
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "update_mask"
    );
    let status = t
        .api
        .update_conversation(as_user("alice", update(&["title"], " ")))
        .await
        .unwrap_err();
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "conversation.title"
    );
    let get = pb::GetConversationRequest {
        id: created.id.clone(),
    };
    assert_eq!(
        t.api
            .get_conversation(as_user("bob", get))
            .await
            .unwrap_err()
            .code(),
        Code::NotFound
    );
}

#[tokio::test]
async fn bad_page_tokens_and_sizes_are_invalid_arguments() {
    let t = spawn_api().await;
    let list = |page_size, page_token: &str| pb::ListConversationsRequest {
        page_size,
        page_token: page_token.into(),
    };
    let status = t
        .api
        .list_conversations(as_user("alice", list(0, "garbage")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
    assert_eq!(
        status.get_details_bad_request().unwrap().field_violations[0].field,
        "page_token"
    );
    let status = t
        .api
        .list_conversations(as_user("alice", list(-5, "")))
        .await
        .unwrap_err();
    assert_eq!(status.code(), Code::InvalidArgument);
}

#[tokio::test]
async fn a_sent_message_streams_its_reply_to_done() {
    let t = spawn_api().await;
    let conversation = create(&t.api, "alice", "").await;
    let send = pb::SendMessageRequest {
        conversation_id: conversation.id.clone(),
        content: "hello".into(),
    };
    let sent = t
        .api
        .send_message(as_user("alice", send))
        .await
        .unwrap()
        .into_inner();
    let (message, reply) = (sent.message.unwrap(), sent.reply.unwrap());
    assert_eq!(reply.status, pb::MessageStatus::Pending as i32);
    let stream = |message_id: &str| pb::StreamReplyRequest {
        conversation_id: conversation.id.clone(),
        message_id: message_id.into(),
        after_seq: 0,
    };
    let events: Vec<_> = t
        .api
        .stream_reply(as_user("alice", stream(&reply.id)))
        .await
        .unwrap()
        .into_inner()
        .collect()
        .await;
    let Some(pb::reply_event::Kind::Done(done)) =
        events.last().unwrap().as_ref().unwrap().kind.clone()
    else {
        panic!("the last event is not done: {events:?}");
    };
    assert_eq!(done.content, DevEngine::reply_text("hello"));
    let Err(status) = t
        .api
        .stream_reply(as_user("alice", stream(&message.id)))
        .await
    else {
        panic!("a user message has no reply stream");
    };
    assert_eq!(status.code(), Code::NotFound);
}
