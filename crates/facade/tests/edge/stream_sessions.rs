//! Ending a session ends its streams: StreamReply over native gRPC,
//! gRPC-Web, Server-Sent Events and NDJSON, and the WebSocket, all stop with
//! UNAUTHENTICATED once their credential is checked again (every
//! `auth.credential_recheck_secs`, one second here) after a logout, a
//! password change (for the other sessions) or a revoked API key — even
//! while the reply they follow sends nothing.

use std::time::Duration;

use bytes::{Buf, BytesMut};
use futures::{SinkExt, StreamExt};
use serde_json::{Value, json};
use switchboard_core::config::Config;
use switchboard_proto::v1::StreamReplyRequest;
use switchboard_proto::v1::chat_service_client::ChatServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_tungstenite::tungstenite::Message;

use switchboard_core::identity::Role;

use crate::support::{PASSWORD, TestApp, on_both_databases};
use crate::websocket::{connect, next_frame};

/// How long a stream may go on after its credential stopped working: a few
/// re-checks, with room for a slow machine.
const BOUND: Duration = Duration::from_secs(10);

/// What a refused credential is told, on every transport.
const REFUSED: &str = "the credentials are invalid, expired or revoked";

fn recheck_every_second(config: &mut Config) {
    config.auth.credential_recheck_secs = 1;
    // A stalled reply would otherwise hold the workers' shutdown for 30 s.
    config.shutdown_grace_secs = 1;
}

on_both_databases!(configured by recheck_every_second;
    every_stream_of_a_session_that_logged_out_ends_unauthenticated,
    changing_the_password_ends_the_streams_of_the_other_sessions_only,
    revoking_an_api_key_ends_the_streams_it_opened,
    disabling_an_account_ends_its_streams,
    a_listening_websocket_of_a_session_that_logged_out_is_closed,
);

/// The transports StreamReply is served over.
#[derive(Debug, Clone, Copy)]
enum Transport {
    Grpc,
    GrpcWeb,
    Sse,
    NdJson,
}

const EVERY_TRANSPORT: [Transport; 4] = [
    Transport::Grpc,
    Transport::GrpcWeb,
    Transport::Sse,
    Transport::NdJson,
];

/// How a stream ended: its status code (0: it ended without an error) and
/// message.
type Ending = (i32, String);

/// A stream that has delivered its first event and is read on, in its own
/// task, until it ends.
struct OpenStream {
    transport: Transport,
    ending: JoinHandle<Ending>,
}

/// A credential header: `authorization` or `x-api-key`, and its value.
type Credential = (&'static str, String);

fn bearer(token: &str) -> Credential {
    ("authorization", format!("Bearer {token}"))
}

/// A reply that sends two tokens and then nothing, until it is cancelled.
async fn stalled_reply(app: &TestApp, token: &str) -> (String, String) {
    let (status, conversation) = app
        .create_conversation(Some(token), json!({"title": "stalled"}))
        .await;
    assert_eq!(status, 200, "{conversation}");
    let cid = conversation["id"].as_str().unwrap().to_owned();
    let (status, sent) = app
        .rest(
            "POST",
            &format!("/v1/conversations/{cid}/messages"),
            Some(token),
            Some(json!({"content": "hold on [dev:stall]"})),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    (cid, sent["reply"]["id"].as_str().unwrap().to_owned())
}

/// A new session of the owner; its access token.
async fn sign_in_again(app: &TestApp) -> String {
    let (status, tokens) = app
        .call_login(
            None,
            json!({"email": "owner@example.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{tokens}");
    tokens["accessToken"].as_str().unwrap().to_owned()
}

async fn log_out(app: &TestApp, token: &str) {
    let (status, body) = app.call_logout(Some(token), json!({})).await;
    assert_eq!(status, 200, "{body}");
}

/// Opens StreamReply over `transport` and returns once its first event came.
async fn open(
    app: &TestApp,
    transport: Transport,
    credential: Credential,
    cid: &str,
    mid: &str,
) -> OpenStream {
    let (started, first_event) = oneshot::channel();
    let ending = match transport {
        Transport::Grpc => {
            let channel = app.channel().await;
            let mut request = tonic::Request::new(StreamReplyRequest {
                conversation_id: cid.to_owned(),
                message_id: mid.to_owned(),
                after_seq: 0,
            });
            request
                .metadata_mut()
                .insert(credential.0, credential.1.parse().unwrap());
            tokio::spawn(read_grpc(channel, request, started))
        }
        Transport::GrpcWeb => {
            let request = StreamReplyRequest {
                conversation_id: cid.to_owned(),
                message_id: mid.to_owned(),
                after_seq: 0,
            };
            let mut body = BytesMut::new();
            bytes::BufMut::put_u8(&mut body, 0);
            bytes::BufMut::put_u32(&mut body, prost::Message::encoded_len(&request) as u32);
            prost::Message::encode(&request, &mut body).unwrap();
            let response = app
                .anonymous
                .post(app.url("/switchboard.v1.ChatService/StreamReply"))
                .header("content-type", "application/grpc-web+proto")
                .header("x-grpc-web", "1")
                .header(credential.0, credential.1)
                .body(body.freeze())
                .send();
            tokio::spawn(async move { read_grpc_web(response.await.unwrap(), started).await })
        }
        Transport::Sse | Transport::NdJson => {
            let accept = match transport {
                Transport::Sse => "text/event-stream",
                _ => "application/x-ndjson",
            };
            let response = app
                .anonymous
                .get(app.url(&format!("/v1/conversations/{cid}/messages/{mid}:stream")))
                .header("accept", accept)
                .header(credential.0, credential.1)
                .send();
            tokio::spawn(async move {
                let response = response.await.unwrap();
                assert_eq!(response.status(), 200, "{transport:?} stream opens");
                match transport {
                    Transport::Sse => read_sse(response, started).await,
                    _ => read_ndjson(response, started).await,
                }
            })
        }
    };
    if first_event.await.is_err() {
        let ended = ending.await.unwrap();
        panic!("the {transport:?} stream ended before its first event: {ended:?}");
    }
    OpenStream { transport, ending }
}

async fn open_on_every_transport(
    app: &TestApp,
    credential: &Credential,
    cid: &str,
    mid: &str,
) -> Vec<OpenStream> {
    let mut streams = Vec::new();
    for transport in EVERY_TRANSPORT {
        streams.push(open(app, transport, credential.clone(), cid, mid).await);
    }
    streams
}

/// Tells [`open`] that the first event came (once).
fn announce(started: &mut Option<oneshot::Sender<()>>) {
    if let Some(started) = started.take() {
        let _ = started.send(());
    }
}

async fn read_grpc(
    channel: tonic::transport::Channel,
    request: tonic::Request<StreamReplyRequest>,
    started: oneshot::Sender<()>,
) -> Ending {
    let mut started = Some(started);
    let mut events = match ChatServiceClient::new(channel).stream_reply(request).await {
        Ok(response) => response.into_inner(),
        Err(status) => return (status.code() as i32, status.message().to_owned()),
    };
    loop {
        match events.next().await {
            Some(Ok(_)) => announce(&mut started),
            Some(Err(status)) => return (status.code() as i32, status.message().to_owned()),
            None => return (0, String::new()),
        }
    }
}

async fn read_grpc_web(mut response: reqwest::Response, started: oneshot::Sender<()>) -> Ending {
    assert_eq!(response.status(), 200, "gRPC-Web answers 200");
    let mut started = Some(started);
    let mut buffer = BytesMut::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        buffer.extend_from_slice(&chunk);
        while buffer.len() >= 5 {
            let length = u32::from_be_bytes(buffer[1..5].try_into().unwrap()) as usize;
            if buffer.len() < 5 + length {
                break;
            }
            let flag = buffer.get_u8();
            buffer.advance(4);
            let frame = buffer.split_to(length);
            if flag & 0x80 == 0 {
                announce(&mut started);
                continue;
            }
            let trailers = String::from_utf8_lossy(&frame).into_owned();
            let trailer = |name: &str| {
                trailers
                    .lines()
                    .find_map(|line| line.strip_prefix(&format!("{name}:")))
                    .map(|value| value.trim().to_owned())
                    .unwrap_or_default()
            };
            let message = percent_encoding::percent_decode_str(&trailer("grpc-message"))
                .decode_utf8_lossy()
                .into_owned();
            return (trailer("grpc-status").parse().unwrap(), message);
        }
    }
    (0, String::new())
}

async fn read_sse(mut response: reqwest::Response, started: oneshot::Sender<()>) -> Ending {
    let mut started = Some(started);
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find("\n\n") {
            let event: String = text.drain(..end + 2).collect();
            let data = event
                .lines()
                .find_map(|line| line.strip_prefix("data: "))
                .map(|data| serde_json::from_str::<Value>(data).unwrap());
            match data {
                // Keep-alive comments carry no data.
                None => {}
                Some(status) if event.lines().any(|line| line == "event: error") => {
                    return status_of(&status);
                }
                Some(_) => announce(&mut started),
            }
        }
    }
    (0, String::new())
}

async fn read_ndjson(mut response: reqwest::Response, started: oneshot::Sender<()>) -> Ending {
    let mut started = Some(started);
    let mut text = String::new();
    while let Some(chunk) = response.chunk().await.unwrap() {
        text.push_str(std::str::from_utf8(&chunk).unwrap());
        while let Some(end) = text.find('\n') {
            let line: String = text.drain(..=end).collect();
            let line: Value = serde_json::from_str(&line).unwrap();
            if let Some(status) = line.get("error") {
                return status_of(status);
            }
            assert!(line.get("result").is_some(), "{line}");
            announce(&mut started);
        }
    }
    (0, String::new())
}

/// The code and message of a google.rpc.Status in JSON.
fn status_of(status: &Value) -> Ending {
    (
        status["code"].as_i64().unwrap() as i32,
        status["message"].as_str().unwrap_or_default().to_owned(),
    )
}

/// How `stream` ended, within [`BOUND`].
async fn ending_of(stream: OpenStream) -> Ending {
    let transport = stream.transport;
    tokio::time::timeout(BOUND, stream.ending)
        .await
        .unwrap_or_else(|_| panic!("the {transport:?} stream still runs after {BOUND:?}"))
        .unwrap()
}

async fn assert_ends_unauthenticated(stream: OpenStream) {
    let transport = stream.transport;
    let (code, message) = ending_of(stream).await;
    assert_eq!(
        (code, message.as_str()),
        (16, REFUSED),
        "the {transport:?} stream ends UNAUTHENTICATED"
    );
}

async fn every_stream_of_a_session_that_logged_out_ends_unauthenticated(app: &TestApp) {
    let token = app.owner.access_token.clone();
    let (cid, mid) = stalled_reply(app, &token).await;
    let streams = open_on_every_transport(app, &bearer(&token), &cid, &mid).await;
    log_out(app, &token).await;
    for stream in streams {
        assert_ends_unauthenticated(stream).await;
    }
}

async fn changing_the_password_ends_the_streams_of_the_other_sessions_only(app: &TestApp) {
    let first = app.owner.access_token.clone();
    let second = sign_in_again(app).await;
    let (cid, mid) = stalled_reply(app, &first).await;
    let ended = open_on_every_transport(app, &bearer(&first), &cid, &mid).await;
    let kept = open(app, Transport::Sse, bearer(&second), &cid, &mid).await;
    let (status, body) = app
        .change_password(
            Some(&second),
            json!({"currentPassword": PASSWORD, "newPassword": "a brand new pass phrase"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for stream in ended {
        assert_ends_unauthenticated(stream).await;
    }
    // The session that changed the password streams on, until the reply
    // itself ends (cancelled: its last event, then the end of the stream).
    let (status, body) = app
        .rest(
            "POST",
            &format!("/v1/conversations/{cid}/messages/{mid}:cancel"),
            Some(&second),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(ending_of(kept).await, (0, String::new()));
}

async fn revoking_an_api_key_ends_the_streams_it_opened(app: &TestApp) {
    let token = app.owner.access_token.clone();
    let (status, created) = app
        .create_api_key(Some(&token), json!({"name": "streamer"}))
        .await;
    assert_eq!(status, 200, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    let key_id = created["apiKey"]["id"].as_str().unwrap().to_owned();
    let (cid, mid) = stalled_reply(app, &token).await;
    let mut streams =
        open_on_every_transport(app, &("x-api-key", secret.clone()), &cid, &mid).await;
    // A key also works as a bearer token.
    streams.push(open(app, Transport::Sse, bearer(&secret), &cid, &mid).await);
    let (status, body) = app
        .rest(
            "DELETE",
            &format!("/v1/me/api-keys/{key_id}"),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for stream in streams {
        assert_ends_unauthenticated(stream).await;
    }
}

async fn disabling_an_account_ends_its_streams(app: &TestApp) {
    let token = app.owner.access_token.clone();
    let (cid, mid) = stalled_reply(app, &token).await;
    let streams = open_on_every_transport(app, &bearer(&token), &cid, &mid).await;
    let admin = app.account("root@example.test", Role::Admin).await;
    let (status, body) = app
        .rest(
            "PATCH",
            &format!("/v1/users/{}", app.owner.user_id),
            Some(&admin.access_token),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    for stream in streams {
        assert_ends_unauthenticated(stream).await;
    }
}

async fn a_listening_websocket_of_a_session_that_logged_out_is_closed(app: &TestApp) {
    let token = app.owner.access_token.clone();
    let (cid, mid) = stalled_reply(app, &token).await;
    let mut socket = connect(app, &[bearer(&token)])
        .await
        .expect("the owner connects");
    let subscribe = json!({"subscribe": {"conversationId": cid, "messageId": mid}}).to_string();
    socket.send(Message::Text(subscribe.into())).await.unwrap();
    let first = next_frame(&mut socket).await;
    assert!(first.get("event").is_some(), "{first}");
    log_out(app, &token).await;
    // The client sends nothing more: the periodic re-check ends the socket.
    let refused = tokio::time::timeout(BOUND, async {
        loop {
            let frame = next_frame(&mut socket).await;
            if frame.get("error").is_some() {
                return frame;
            }
        }
    })
    .await
    .expect("an error frame within the bound");
    assert_eq!(
        (
            refused["error"]["code"].as_i64(),
            refused["error"]["message"].as_str()
        ),
        (Some(16), Some(REFUSED)),
        "{refused}"
    );
    let closed = tokio::time::timeout(BOUND, async {
        loop {
            match socket.next().await {
                None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return,
                Some(Ok(_)) => {}
            }
        }
    })
    .await;
    assert!(closed.is_ok(), "the socket is closed");
}
