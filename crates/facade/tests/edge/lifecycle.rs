//! Shutdown: a stream that is open when the server is told to stop runs to
//! its end before the server exits; one still open when the grace runs out
//! ends with UNAVAILABLE, over native gRPC and over the WebSocket, and new
//! calls during the drain are refused with UNAVAILABLE.

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;

use crate::support::{Backend, TestApp, spawn_app_with, spawn_app_with_delay};

/// A server whose shutdown grace is one second, and a reply of it that
/// stalls after two tokens: (app, conversation, reply).
async fn stalled_reply() -> (TestApp, String, String) {
    let app = spawn_app_with(Backend::Sqlite, |config| config.shutdown_grace_secs = 1).await;
    let conversation = app
        .post_json("/v1/conversations", json!({ "title": "stalled" }))
        .await;
    let id = conversation["id"].as_str().unwrap().to_owned();
    let sent = app
        .post_json(
            &format!("/v1/conversations/{id}/messages"),
            json!({ "content": "wait [dev:stall]" }),
        )
        .await;
    let reply = sent["reply"]["id"].as_str().unwrap().to_owned();
    (app, id, reply)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grpc_stream_open_when_the_grace_runs_out_ends_with_unavailable() {
    let (mut app, conversation_id, message_id) = stalled_reply().await;
    let mut client = app.grpc().await;
    let mut events = client
        .stream_reply(switchboard_proto::v1::StreamReplyRequest {
            conversation_id: conversation_id.clone(),
            message_id,
            after_seq: 0,
        })
        .await
        .unwrap()
        .into_inner();
    for _ in 0..2 {
        events.message().await.expect("an event before the stall");
    }

    app.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let refused = client
        .get_conversation(switchboard_proto::v1::GetConversationRequest {
            id: conversation_id,
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), tonic::Code::Unavailable, "{refused:?}");
    assert_eq!(refused.message(), "the server is shutting down");

    let ended = loop {
        match events.message().await {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the stream ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), tonic::Code::Unavailable, "{ended:?}");
    assert!(
        ended.message().contains("after_seq"),
        "says how to resume: {ended:?}"
    );
    app.stop().await;
}

type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// The next frame (`None`: the socket ended), within 10 s.
async fn next_frame(socket: &mut Socket) -> Option<Message> {
    tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
        .await
        .expect("a frame within 10 s")
        .map(|frame| frame.expect("a readable frame"))
}

/// The next frame, which must be JSON text.
async fn next_text(socket: &mut Socket) -> Value {
    match next_frame(socket).await {
        Some(Message::Text(text)) => serde_json::from_str(&text).unwrap(),
        other => panic!("a text frame, not {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_websocket_refuses_new_subscriptions_in_the_drain_and_ends_open_ones_with_unavailable() {
    let (mut app, conversation_id, message_id) = stalled_reply().await;
    let bearer = (
        "authorization",
        format!("Bearer {}", app.owner.access_token),
    );
    let mut socket = crate::websocket::connect(&app, &[bearer])
        .await
        .expect("the owner may connect");
    let subscribe =
        json!({"subscribe": {"conversationId": conversation_id, "messageId": message_id}});
    socket
        .send(Message::Text(subscribe.to_string().into()))
        .await
        .unwrap();
    for _ in 0..2 {
        let frame = next_text(&mut socket).await;
        assert!(frame["event"]["delta"].is_string(), "{frame}");
    }

    app.begin_shutdown();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let again = json!({"subscribe": {"conversationId": conversation_id}});
    socket
        .send(Message::Text(again.to_string().into()))
        .await
        .unwrap();
    let refused = next_text(&mut socket).await;
    assert_eq!(refused["error"]["code"], 14, "{refused}");
    assert_eq!(refused["error"]["message"], "the server is shutting down");
    assert!(refused.get("messageId").is_none(), "{refused}");

    let ended = next_text(&mut socket).await;
    assert_eq!(ended["messageId"], message_id.as_str(), "{ended}");
    assert_eq!(ended["error"]["code"], 14, "{ended}");
    match next_frame(&mut socket).await {
        Some(Message::Close(Some(close))) => {
            assert_eq!(u16::from(close.code), 1001, "going away: {close:?}");
        }
        other => panic!("the server closes the socket, not {other:?}"),
    }
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_an_open_reply_stream() {
    let mut app = spawn_app_with_delay(Backend::Sqlite, 20).await;
    let conversation = app
        .post_json("/v1/conversations", json!({ "title": "draining" }))
        .await;
    let id = conversation["id"].as_str().unwrap();
    let sent = app
        .post_json(
            &format!("/v1/conversations/{id}/messages"),
            json!({ "content": "tell me a story" }),
        )
        .await;
    let reply = sent["reply"]["id"].as_str().unwrap();
    let response = app
        .http
        .get(app.url(&format!("/v1/conversations/{id}/messages/{reply}:stream")))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let mut text = String::from_utf8(body.next().await.unwrap().unwrap().to_vec()).unwrap();
    assert!(text.contains("\"seq\":1"), "{text}");

    app.begin_shutdown();
    while let Some(chunk) = body.next().await {
        text.push_str(std::str::from_utf8(&chunk.unwrap()).unwrap());
    }
    assert!(
        text.contains("\"done\""),
        "the stream ran to its end: {text}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_tells_health_watchers_not_serving_and_ends_their_streams() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let mut app = spawn_app_with_delay(Backend::Sqlite, 5).await;
    let channel = tonic::transport::Endpoint::from_shared(app.url(""))
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut health = tonic_health::pb::health_client::HealthClient::new(channel);
    let mut watch = health
        .watch(tonic_health::pb::HealthCheckRequest {
            service: String::new(),
        })
        .await
        .unwrap()
        .into_inner();
    let first = watch.next().await.unwrap().unwrap();
    assert_eq!(first.status, ServingStatus::Serving as i32);

    let started = std::time::Instant::now();
    app.begin_shutdown();
    let last = watch.next().await.unwrap().unwrap();
    assert_eq!(last.status, ServingStatus::NotServing as i32);
    assert!(
        watch.next().await.is_none(),
        "the watch ends, so it does not hold the drain"
    );
    app.stop().await;
    assert!(
        started.elapsed() < std::time::Duration::from_secs(5),
        "the server stopped without waiting out its 10 s grace period"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_grpc_method_is_unimplemented_not_a_rest_404() {
    let app = spawn_app_with_delay(Backend::Sqlite, 5).await;
    let error = app
        .grpc_web::<_, switchboard_proto::v1::Conversation>(
            "/nosuch.v1.Service/Method",
            &switchboard_proto::v1::GetConversationRequest::default(),
        )
        .await
        .unwrap_err();
    assert_eq!(error.0, "12", "UNIMPLEMENTED: {error:?}");
    app.stop().await;
}
