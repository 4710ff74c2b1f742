//! Ambiguous requests are refused, never guessed at: two credentials, a
//! unary call carrying two messages, a body announced larger than the limit
//! (refused before `100 Continue`, before a byte of it is read), and
//! nothing a client sends is echoed back without bound. The storage plays
//! no part, so these run on SQLite only.

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{Value, json};
use switchboard_proto::v1::{Conversation, CreateConversationRequest};
use tokio_tungstenite::tungstenite::Message;

use crate::raw::{Wire, first_response_head, frame, grpc_call};
use crate::support::{Backend, spawn_app};

const INVALID_ARGUMENT: i32 = 3;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_credentials_in_one_request_are_refused_on_every_door() {
    let app = spawn_app(Backend::Sqlite).await;
    let bearer = format!("Bearer {}", app.owner.access_token);
    let ambiguous: Vec<(&str, Vec<(&str, String)>)> = vec![
        (
            "two Authorization headers",
            vec![
                ("authorization", bearer.clone()),
                ("authorization", "Bearer someone.elses.token".into()),
            ],
        ),
        (
            "a bearer token and an API key",
            vec![
                ("authorization", bearer.clone()),
                ("x-api-key", "sb_key_of_someone_else".into()),
            ],
        ),
        (
            "two API keys",
            vec![
                ("x-api-key", "sb_key_one".into()),
                ("x-api-key", "sb_key_two".into()),
            ],
        ),
    ];
    for (case, headers) in &ambiguous {
        let mut request = app.anonymous.get(app.url("/v1/conversations"));
        for (name, value) in headers {
            request = request.header(*name, value);
        }
        let response = request.send().await.unwrap();
        assert_eq!(response.status(), 400, "REST, {case}");
        let body: Value = response.json().await.unwrap();
        assert_eq!(body["code"], INVALID_ARGUMENT, "REST, {case}: {body}");
        assert!(
            body["message"].as_str().unwrap().contains("one credential"),
            "REST, {case}: {body}"
        );
        for wire in Wire::ALL {
            let answer = grpc_call(
                &app,
                wire,
                "/switchboard.v1.ChatService/ListConversations",
                headers,
                frame(&[]),
            )
            .await;
            assert_eq!(
                answer.code, INVALID_ARGUMENT,
                "{wire:?}, {case}: {answer:?}"
            );
        }
        assert_eq!(
            crate::websocket::connect(&app, headers).await.err(),
            Some(400),
            "WebSocket, {case}"
        );
    }
    // A browser's subprotocol token next to an Authorization header is two
    // credentials as well.
    let both = [
        ("authorization", bearer.clone()),
        (
            "sec-websocket-protocol",
            format!("switchboard.v1, bearer.{}", app.owner.access_token),
        ),
    ];
    assert_eq!(
        crate::websocket::connect(&app, &both).await.err(),
        Some(400)
    );
    // One credential still works.
    assert!(
        crate::websocket::connect(&app, &[("authorization", bearer)])
            .await
            .is_ok()
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unary_call_must_carry_exactly_one_message() {
    let app = spawn_app(Backend::Sqlite).await;
    let bearer = [(
        "authorization",
        format!("Bearer {}", app.owner.access_token),
    )];
    let create = |title: &str| {
        frame(
            &CreateConversationRequest {
                conversation: Some(Conversation {
                    title: title.into(),
                    ..Default::default()
                }),
            }
            .encode_to_vec(),
        )
    };
    for wire in Wire::ALL {
        let two = [create("first"), create("second")].concat();
        let answer = grpc_call(
            &app,
            wire,
            "/switchboard.v1.ChatService/CreateConversation",
            &bearer,
            two,
        )
        .await;
        assert_eq!(answer.code, INVALID_ARGUMENT, "{wire:?}: {answer:?}");
        assert_eq!(
            answer.message, "a unary call must carry exactly one message",
            "{wire:?}"
        );
        let none = grpc_call(
            &app,
            wire,
            "/switchboard.v1.ChatService/CreateConversation",
            &bearer,
            Vec::new(),
        )
        .await;
        assert_eq!(
            none.code, INVALID_ARGUMENT,
            "{wire:?}, no message: {none:?}"
        );
    }
    let listed = app.get_json("/v1/conversations").await;
    assert_eq!(listed["conversations"], json!([]), "nothing was created");
    // grpc.health.v1 is held to the same rule.
    let health = grpc_call(
        &app,
        Wire::Grpc,
        "/grpc.health.v1.Health/Check",
        &[],
        [frame(&[]), frame(&[])].concat(),
    )
    .await;
    assert_eq!(health.code, INVALID_ARGUMENT, "{health:?}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_body_announced_over_the_limit_is_refused_before_it_is_read() {
    let app = spawn_app(Backend::Sqlite).await;
    let fifty_megabytes = 50 << 20;
    let head = |expect: bool| {
        format!(
            "POST /v1/conversations HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
             content-type: application/json\r\ncontent-length: {fifty_megabytes}{}",
            app.address,
            app.owner.access_token,
            if expect {
                "\r\nexpect: 100-continue"
            } else {
                ""
            }
        )
    };
    // No `100 Continue`: the client is told at once not to send the body.
    let answer = first_response_head(&app, &head(true)).await;
    let answer = answer.expect("an answer without sending the body");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // Without `Expect`, the server answers without waiting for the body.
    let answer = first_response_head(&app, &head(false)).await;
    let answer = answer.expect("an answer without waiting for the body");
    assert!(answer.starts_with("HTTP/1.1 413"), "{answer}");
    // A body within the limit is still read.
    let within = format!(
        "POST /v1/conversations HTTP/1.1\r\nhost: {}\r\nauthorization: Bearer {}\r\n\
         content-type: application/json\r\ncontent-length: 2\r\nexpect: 100-continue",
        app.address, app.owner.access_token
    );
    let answer = first_response_head(&app, &within).await.unwrap();
    assert!(answer.starts_with("HTTP/1.1 100"), "{answer}");
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn websocket_error_frames_never_echo_unbounded_input() {
    let app = spawn_app(Backend::Sqlite).await;
    let bearer = [(
        "authorization",
        format!("Bearer {}", app.owner.access_token),
    )];
    let mut socket = crate::websocket::connect(&app, &bearer)
        .await
        .expect("the owner connects");
    let huge = "x".repeat(1 << 20);
    let frames = [
        json!({"subscribe": {"conversationId": huge}}),
        json!({"subscribe": {"conversationId": "c", "messageId": huge}}),
        json!({"unsubscribe": {"conversationId": huge}}),
        json!({"subscribe": {"conversationId": "c", huge.clone(): 1}}),
        json!({huge.clone(): {}}),
        json!({"subscribe": {"conversationId": 5, "messageId": huge}}),
    ];
    for (index, frame) in frames.iter().enumerate() {
        socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .unwrap_or_else(|_| panic!("frame {index}: an answer within 10 s"))
            .expect("the socket stays open")
            .expect("a readable frame");
        let text = answer.into_text().expect("a text frame");
        assert!(
            text.len() < 1024,
            "frame {index}: {} bytes echoed",
            text.len()
        );
        let answer: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(
            answer["error"]["code"], INVALID_ARGUMENT,
            "frame {index}: {answer}"
        );
    }
    app.stop().await;
}
