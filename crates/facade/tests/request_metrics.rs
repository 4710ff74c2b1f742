//! The request metrics move as they should, read off a real `/metrics`
//! scrape: `switchboard_requests_total` counts each call once, with the
//! gRPC status it really ended with — in the headers of a trailers-only
//! answer, in the trailers after a stream's messages (native gRPC and
//! gRPC-Web), CANCELLED when the caller goes away — and
//! `switchboard_open_streams` counts reply streams by kind while they are
//! open (native gRPC, gRPC-Web, SSE, NDJSON, WebSocket).
//!
//! A test binary of its own: the recorder is process-wide, and these tests
//! compare counts before and after, one test at a time.

#[allow(dead_code, unused_imports, unused_macros)]
#[path = "edge/support.rs"]
mod support;

use std::time::Duration;

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::json;
use switchboard_proto::v1::{GetConversationRequest, StreamReplyRequest};
use switchboard_testkit::grpc::{self, Wire};
use tokio::sync::Mutex;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

use support::{Backend, PASSWORD, TestApp, spawn_app_with};

/// One test at a time: they compare process-wide counts.
static SERIAL: Mutex<()> = Mutex::const_new(());

const STREAM_REPLY: &str = "/switchboard.v1.ChatService/StreamReply";
const GET_CONVERSATION: &str = "/switchboard.v1.ChatService/GetConversation";

async fn start() -> TestApp {
    spawn_app_with(Backend::Sqlite, |config| {
        config.auth.credential_recheck_secs = 1;
        config.shutdown_grace_secs = 1;
    })
    .await
}

/// The value of the sample `name{labels}` in a scrape (0 when absent).
async fn sample(app: &TestApp, name: &str, labels: &[(&str, &str)]) -> f64 {
    let text = app.get_text("/metrics").await;
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| line.rsplit_once(' '))
        .filter(|(series, _)| {
            let (series_name, rest) = series.split_once('{').unwrap_or((series, ""));
            series_name == name
                && labels
                    .iter()
                    .all(|(key, value)| rest.contains(&format!("{key}=\"{value}\"")))
        })
        .map(|(_, value)| value.parse::<f64>().unwrap())
        .sum()
}

async fn requests(
    app: &TestApp,
    transport: &str,
    rpc: &str,
    status: &str,
    grpc_status: &str,
) -> f64 {
    sample(
        app,
        "switchboard_requests_total",
        &[
            ("transport", transport),
            ("rpc", rpc),
            ("status", status),
            ("grpc_status", grpc_status),
        ],
    )
    .await
}

async fn open_streams(app: &TestApp, kind: &str) -> f64 {
    sample(app, "switchboard_open_streams", &[("kind", kind)]).await
}

/// Polls until `check` holds, for up to ten seconds.
async fn eventually<F, Fut>(what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if check().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("{what} did not happen within ten seconds");
}

/// A reply that sends two tokens and then nothing until it is cancelled:
/// (conversation, reply).
async fn stalled_reply(app: &TestApp, token: &str) -> (String, String) {
    let (_, conversation) = app
        .create_conversation(Some(token), json!({"title": "metrics"}))
        .await;
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

fn stream_reply_frame(cid: &str, mid: &str) -> Vec<u8> {
    grpc::frame(
        &StreamReplyRequest {
            conversation_id: cid.to_owned(),
            message_id: mid.to_owned(),
            after_seq: 0,
        }
        .encode_to_vec(),
    )
}

#[tokio::test]
async fn a_status_sent_after_a_streams_messages_is_the_one_counted_and_open_streams_are_gauged() {
    let _serial = SERIAL.lock().await;
    let app = start().await;
    let (_, login) = app
        .call_login(
            None,
            json!({"email": "owner@example.test", "password": PASSWORD}),
        )
        .await;
    let token = login["accessToken"].as_str().unwrap().to_owned();
    let (cid, mid) = stalled_reply(&app, &token).await;
    let kinds = ["grpc", "grpc-web", "sse", "ndjson", "websocket"];
    let mut open_before = Vec::new();
    for kind in kinds {
        open_before.push(open_streams(&app, kind).await);
    }
    let grpc_before = requests(&app, "grpc", STREAM_REPLY, "200", "16").await;
    let grpc_web_before = requests(&app, "grpc-web", STREAM_REPLY, "200", "16").await;
    let sse_before = requests(&app, "rest", STREAM_REPLY, "200", "").await;

    // One stream of the stalled reply on every transport, with the session
    // that is about to log out.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let mut ends = Vec::new();
    for (client, wire) in [(&h2, Wire::Grpc), (&app.anonymous, Wire::GrpcWeb)] {
        let response = grpc::request(client, wire, &app.url(STREAM_REPLY))
            .bearer_auth(&token)
            .body(stream_reply_frame(&cid, &mid))
            .send()
            .await
            .unwrap();
        ends.push(tokio::spawn(async move {
            let answer = grpc::read_response(response, wire).await;
            (answer.messages.len(), answer.status.code)
        }));
    }
    let mut bodies = Vec::new();
    for accept in ["text/event-stream", "application/x-ndjson"] {
        let response = app
            .anonymous
            .get(app.url(&format!("/v1/conversations/{cid}/messages/{mid}:stream")))
            .bearer_auth(&token)
            .header("accept", accept)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200);
        bodies.push(tokio::spawn(async move { response.text().await.unwrap() }));
    }
    let mut request = format!("ws://{}/v1/ws", app.address)
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("switchboard.v1, bearer.{token}").parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            json!({"subscribe": {"conversationId": cid, "messageId": mid, "afterSeq": 0}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    for (kind, before) in kinds.iter().zip(&open_before) {
        eventually(&format!("one more open {kind} stream"), || async {
            open_streams(&app, kind).await == before + 1.0
        })
        .await;
    }

    // The logout ends every stream with UNAUTHENTICATED at the next check.
    let (status, _) = app.call_logout(Some(&token), json!({})).await;
    assert_eq!(status, 200);
    for end in ends {
        let (messages, code) = tokio::time::timeout(Duration::from_secs(10), end)
            .await
            .expect("the stream ends")
            .unwrap();
        assert!(messages >= 1, "the status came after the stream's messages");
        assert_eq!(code, 16, "UNAUTHENTICATED");
    }
    for body in bodies {
        let text = tokio::time::timeout(Duration::from_secs(10), body)
            .await
            .expect("the stream ends")
            .unwrap();
        assert!(
            text.contains("UNAUTHENTICATED") || text.contains("16"),
            "{text}"
        );
    }
    tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(Ok(frame)) = socket.next().await {
            if frame.is_close() {
                break;
            }
        }
    })
    .await
    .expect("the socket is closed");
    drop(socket);

    for (kind, before) in kinds.iter().zip(&open_before) {
        eventually(
            &format!("the {kind} stream no longer counted open"),
            || async { open_streams(&app, kind).await == *before },
        )
        .await;
    }
    assert_eq!(
        requests(&app, "grpc", STREAM_REPLY, "200", "16").await,
        grpc_before + 1.0,
        "native gRPC: UNAUTHENTICATED from the trailers, counted once"
    );
    assert_eq!(
        requests(&app, "grpc-web", STREAM_REPLY, "200", "16").await,
        grpc_web_before + 1.0,
        "gRPC-Web: UNAUTHENTICATED from the trailers, counted once"
    );
    assert_eq!(
        requests(&app, "rest", STREAM_REPLY, "200", "").await,
        sse_before + 2.0,
        "SSE and NDJSON, counted when they start"
    );
    app.stop().await;
}

#[tokio::test]
async fn unary_calls_and_a_caller_that_goes_away_are_counted_with_their_status() {
    let _serial = SERIAL.lock().await;
    let app = start().await;
    let token = app.owner.access_token.clone();
    let (cid, mid) = stalled_reply(&app, &token).await;
    let ok_before = requests(&app, "grpc", GET_CONVERSATION, "200", "0").await;
    let not_found_before = requests(&app, "grpc", GET_CONVERSATION, "200", "5").await;
    let rest_before = requests(&app, "rest", GET_CONVERSATION, "404", "").await;
    let cancelled_before = requests(&app, "grpc", STREAM_REPLY, "200", "1").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();

    for (id, code) in [(cid.clone(), 0), (uuid::Uuid::now_v7().to_string(), 5)] {
        let response = grpc::request(&h2, Wire::Grpc, &app.url(GET_CONVERSATION))
            .bearer_auth(&token)
            .body(grpc::frame(&GetConversationRequest { id }.encode_to_vec()))
            .send()
            .await
            .unwrap();
        assert_eq!(
            grpc::read_response(response, Wire::Grpc).await.status.code,
            code
        );
    }
    let (status, _) = app
        .rest(
            "GET",
            &format!("/v1/conversations/{}", uuid::Uuid::now_v7()),
            Some(&token),
            None,
        )
        .await;
    assert_eq!(status, 404);

    // A stream whose caller reads one message and hangs up.
    let response = grpc::request(&h2, Wire::Grpc, &app.url(STREAM_REPLY))
        .bearer_auth(&token)
        .body(stream_reply_frame(&cid, &mid))
        .send()
        .await
        .unwrap();
    let mut body = response.bytes_stream();
    let first = body.next().await.expect("a first message").unwrap();
    assert!(!first.is_empty());
    drop(body);
    drop(h2);

    eventually("the hung-up stream counted as CANCELLED", || async {
        requests(&app, "grpc", STREAM_REPLY, "200", "1").await == cancelled_before + 1.0
    })
    .await;
    assert_eq!(
        requests(&app, "grpc", GET_CONVERSATION, "200", "0").await,
        ok_before + 1.0,
        "OK comes in the trailers of a unary answer"
    );
    assert_eq!(
        requests(&app, "grpc", GET_CONVERSATION, "200", "5").await,
        not_found_before + 1.0,
        "NOT_FOUND comes in the headers of a trailers-only answer"
    );
    assert_eq!(
        requests(&app, "rest", GET_CONVERSATION, "404", "").await,
        rest_before + 1.0
    );
    app.stop().await;
}
