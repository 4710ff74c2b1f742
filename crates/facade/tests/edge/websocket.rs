//! `/v1/ws`: replies over a WebSocket, under the same authentication, the
//! same access rule and the same field rules as StreamReply on every other
//! transport; a reconnecting client resumes after the last seq it saw.

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_core::identity::Role;
use switchboard_proto::v1::StreamReplyRequest;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use crate::support::{Backend, TestApp, on_both_databases, spawn_app};

pub(crate) type Socket =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// Opens `/v1/ws` with every header of `headers` (a name may repeat); the
/// HTTP status of a refused upgrade.
pub(crate) async fn connect(app: &TestApp, headers: &[(&str, String)]) -> Result<Socket, u16> {
    let mut request = format!("ws://{}/v1/ws", app.address)
        .into_client_request()
        .expect("a WebSocket request");
    for (name, value) in headers {
        request.headers_mut().append(
            http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            value.parse().unwrap(),
        );
    }
    match tokio_tungstenite::connect_async(request).await {
        Ok((socket, _)) => Ok(socket),
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            Err(response.status().as_u16())
        }
        Err(other) => panic!("WebSocket connect failed: {other}"),
    }
}

pub(crate) async fn next_frame(socket: &mut Socket) -> Value {
    loop {
        let frame = tokio::time::timeout(Duration::from_secs(10), socket.next())
            .await
            .expect("a frame within 10 s")
            .expect("the socket stays open")
            .expect("a readable frame");
        if let Message::Text(text) = frame {
            return serde_json::from_str(&text).expect("a JSON frame");
        }
    }
}

/// The events of one reply until its last (done or error).
async fn events_until_the_end(socket: &mut Socket) -> Vec<Value> {
    let mut events = Vec::new();
    loop {
        let frame = next_frame(socket).await;
        let event = frame["event"].clone();
        assert!(!event.is_null(), "an event frame: {frame}");
        let last = event.get("done").is_some() || event.get("error").is_some();
        events.push(event);
        if last {
            return events;
        }
    }
}

fn seq(event: &Value) -> u64 {
    event["seq"].as_u64().expect("a seq")
}

async fn send_message(app: &TestApp) -> (String, String) {
    let (status, conversation) = app
        .create_conversation(Some(&app.owner.access_token), json!({"title": "ws"}))
        .await;
    assert_eq!(status, 200);
    let cid = conversation["id"].as_str().unwrap().to_owned();
    let (status, sent) = app
        .rest(
            "POST",
            &format!("/v1/conversations/{cid}/messages"),
            Some(&app.owner.access_token),
            Some(json!({"content": "tell me about websockets please"})),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    (cid, sent["reply"]["id"].as_str().unwrap().to_owned())
}

async fn a_reply_streams_over_the_websocket_and_resumes_without_a_gap(app: &TestApp) {
    let (cid, reply) = send_message(app).await;
    let bearer = (
        "authorization",
        format!("Bearer {}", app.owner.access_token),
    );
    let mut socket = connect(app, &[bearer])
        .await
        .expect("the owner may connect");
    let subscribe = |after: u64| {
        json!({"subscribe": {"conversationId": cid, "messageId": reply, "afterSeq": after}})
            .to_string()
    };
    socket
        .send(Message::Text(subscribe(0).into()))
        .await
        .unwrap();
    let all = events_until_the_end(&mut socket).await;
    let seqs: Vec<u64> = all.iter().map(seq).collect();
    assert_eq!(
        seqs,
        (1..=seqs.len() as u64).collect::<Vec<_>>(),
        "every event once, in order"
    );
    assert_eq!(
        all.last().unwrap()["done"]["status"],
        "MESSAGE_STATUS_COMPLETE"
    );

    // A browser reconnects with its token as a subprotocol and resumes
    // after the fourth event: the rest, no gap, no duplicate.
    let protocols = (
        "sec-websocket-protocol",
        format!("switchboard.v1, bearer.{}", app.owner.access_token),
    );
    let mut again = connect(app, &[protocols])
        .await
        .expect("the subprotocol token works");
    again
        .send(Message::Text(subscribe(4).into()))
        .await
        .unwrap();
    let rest = events_until_the_end(&mut again).await;
    assert_eq!(rest, all[4..].to_vec());
}

async fn the_websocket_admits_only_callers_who_may_stream_and_only_their_replies(app: &TestApp) {
    assert_eq!(connect(app, &[]).await.err(), Some(401), "anonymous");
    let forged = ("authorization", "Bearer not.a.token".to_owned());
    assert_eq!(
        connect(app, &[forged]).await.err(),
        Some(401),
        "refused credentials"
    );

    let (cid, reply) = send_message(app).await;
    let other = app.account("ws-other@example.test", Role::User).await;
    let bearer = ("authorization", format!("Bearer {}", other.access_token));
    let mut socket = connect(app, &[bearer])
        .await
        .expect("another user may connect");
    let frame = json!({"subscribe": {"conversationId": cid, "messageId": reply}}).to_string();
    socket.send(Message::Text(frame.into())).await.unwrap();
    let refused = next_frame(&mut socket).await;
    assert_eq!(refused["messageId"], reply.as_str());
    assert_eq!(
        refused["error"]["code"], 5,
        "NOT_FOUND, as on every transport: {refused}"
    );
    socket
        .send(Message::Text("{\"listen\": 1}".into()))
        .await
        .unwrap();
    let malformed = next_frame(&mut socket).await;
    assert_eq!(malformed["error"]["code"], 3, "{malformed}");
}

async fn a_socket_of_a_session_that_logged_out_gets_no_new_subscriptions(app: &TestApp) {
    let (cid, reply) = send_message(app).await;
    let bearer = (
        "authorization",
        format!("Bearer {}", app.owner.access_token),
    );
    let mut socket = connect(app, &[bearer])
        .await
        .expect("the owner may connect");
    let (status, _) = app
        .call_logout(Some(&app.owner.access_token), json!({}))
        .await;
    assert_eq!(status, 200);
    let frame = json!({"subscribe": {"conversationId": cid, "messageId": reply}}).to_string();
    socket.send(Message::Text(frame.into())).await.unwrap();
    let refused = next_frame(&mut socket).await;
    assert_eq!(refused["error"]["code"], 16, "{refused}");
    // And the server closes the socket.
    let end = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the socket is closed");
}

on_both_databases!(
    a_followed_conversation_announces_each_new_reply_and_streams_it,
    a_socket_of_a_session_that_logged_out_gets_no_new_subscriptions,
    a_reply_streams_over_the_websocket_and_resumes_without_a_gap,
    the_websocket_admits_only_callers_who_may_stream_and_only_their_replies,
);

async fn a_followed_conversation_announces_each_new_reply_and_streams_it(app: &TestApp) {
    let bearer = (
        "authorization",
        format!("Bearer {}", app.owner.access_token),
    );
    let (status, conversation) = app
        .create_conversation(Some(&app.owner.access_token), json!({"title": "followed"}))
        .await;
    assert_eq!(status, 200);
    let cid = conversation["id"].as_str().unwrap().to_owned();
    let mut socket = connect(app, &[bearer]).await.expect("the owner connects");
    let follow = json!({"subscribe": {"conversationId": cid}}).to_string();
    socket.send(Message::Text(follow.into())).await.unwrap();
    // Another user may not follow it: NOT_FOUND, as for a missing one.
    let other = app.account("peeker@example.test", Role::User).await;
    let mut peeker = connect(
        app,
        &[("authorization", format!("Bearer {}", other.access_token))],
    )
    .await
    .unwrap();
    let peek = json!({"subscribe": {"conversationId": cid}}).to_string();
    peeker.send(Message::Text(peek.into())).await.unwrap();
    let refused = next_frame(&mut peeker).await;
    assert_eq!(refused["conversationId"], cid.as_str());
    assert_eq!(refused["error"]["code"], 5, "{refused}");

    let mut sent = Vec::new();
    for text in ["first question", "second question"] {
        let (status, answer) = app
            .rest(
                "POST",
                &format!("/v1/conversations/{cid}/messages"),
                Some(&app.owner.access_token),
                Some(json!({ "content": text })),
            )
            .await;
        assert_eq!(status, 200, "{answer}");
        sent.push(answer["reply"]["id"].as_str().unwrap().to_owned());
    }
    // Each reply is announced (pending), then its events follow to `done`.
    let mut announced = Vec::new();
    let mut finished = Vec::new();
    while finished.len() < 2 {
        let frame = next_frame(&mut socket).await;
        assert_eq!(frame["conversationId"], cid.as_str(), "{frame}");
        let message_id = frame["messageId"].as_str().unwrap().to_owned();
        if frame.get("reply").is_some() {
            assert_eq!(frame["reply"]["role"], "ROLE_ASSISTANT");
            announced.push(message_id);
        } else {
            assert!(
                announced.contains(&message_id),
                "announced before its events: {frame}"
            );
            if let Some(done) = frame["event"].get("done") {
                assert_eq!(done["status"], "MESSAGE_STATUS_COMPLETE");
                finished.push(message_id);
            }
        }
    }
    assert_eq!(announced, sent, "both replies, in order");
    // Deleting the conversation ends the subscription with NOT_FOUND.
    let (status, _) = app
        .rest(
            "DELETE",
            &format!("/v1/conversations/{cid}"),
            Some(&app.owner.access_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let ended = next_frame(&mut socket).await;
    assert_eq!(
        (
            ended["conversationId"].as_str(),
            ended["error"]["code"].as_i64()
        ),
        (Some(cid.as_str()), Some(5)),
        "{ended}"
    );
}

/// A reply id of the right form that names nothing.
const SOME_ID: &str = "0190f3a2-7c1e-7d3b-9a4f-2b6c8d0e1f23";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_frame_that_breaks_stream_replys_rules_is_refused_as_grpc_and_rest_refuse_it() {
    let app = spawn_app(Backend::Sqlite).await;
    let bearer = (
        "authorization",
        format!("Bearer {}", app.owner.access_token),
    );
    let mut socket = connect(&app, &[bearer]).await.expect("the owner connects");
    let upper = SOME_ID.to_uppercase();
    // A frame, and the StreamReply request that stands for the same input
    // (the reply a followed conversation's subscription does not name is
    // a good one).
    let cases = [
        (
            "a reply id that is not one",
            json!({"subscribe": {"conversationId": SOME_ID, "messageId": "not-an-id"}}),
            (SOME_ID, "not-an-id"),
        ),
        (
            "two ids that are not ones",
            json!({"subscribe": {"conversationId": "not-an-id", "messageId": upper}}),
            ("not-an-id", upper.as_str()),
        ),
        (
            "a followed conversation's id that is not one",
            json!({"subscribe": {"conversationId": "not-an-id"}}),
            ("not-an-id", SOME_ID),
        ),
        (
            "a followed conversation without an id",
            json!({"subscribe": {}}),
            ("", SOME_ID),
        ),
        (
            "an unsubscription's reply id that is not one",
            json!({"unsubscribe": {"messageId": "not-an-id"}}),
            (SOME_ID, "not-an-id"),
        ),
    ];
    for (case, frame, (conversation_id, message_id)) in cases {
        socket
            .send(Message::Text(frame.to_string().into()))
            .await
            .unwrap();
        let refused = next_frame(&mut socket).await;
        assert_eq!(refused["error"]["code"], 3, "{case}: {refused}");
        assert_eq!(refused["conversationId"], "", "{case}: nothing echoed");
        assert!(refused.get("messageId").is_none(), "{case}: {refused}");

        let request = StreamReplyRequest {
            conversation_id: conversation_id.to_owned(),
            message_id: message_id.to_owned(),
            after_seq: 0,
        };
        let grpc = app
            .grpc()
            .await
            .stream_reply(request)
            .await
            .expect_err("gRPC refuses it");
        assert_eq!(
            refused["error"],
            switchboard_rest::error::status_json(&grpc),
            "{case}: as over gRPC"
        );
        // REST has no path for an empty id.
        if !conversation_id.is_empty() {
            let (status, body) = app
                .rest(
                    "GET",
                    &format!("/v1/conversations/{conversation_id}/messages/{message_id}:stream"),
                    Some(&app.owner.access_token),
                    None,
                )
                .await;
            assert_eq!(status, 400, "{case}: {body}");
            assert_eq!(refused["error"], body, "{case}: as over REST");
        }
    }
    app.stop().await;
}
