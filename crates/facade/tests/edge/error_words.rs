//! Errors in our own words: a battery of malformed input on every door —
//! REST, native gRPC, gRPC-Web binary and text, the WebSocket — each
//! answered with the status it deserves and a message that says what was
//! wrong in the API's terms. No message may name a Rust type or crate, or
//! stutter ("expected expected"), or repeat the client's input at length.
//! The storage plays no part, so this runs on SQLite only.

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{Value, json};
use switchboard_proto::v1::{Conversation, CreateConversationRequest};
use tokio_tungstenite::tungstenite::Message;

use crate::raw::{Wire, frame, grpc_call, grpc_call_encoded};
use crate::support::{Backend, TestApp, spawn_app};

/// What gives a message away as written for a Rust programmer, not a
/// client of the API.
const RUST_ISMS: &[&str] = &[
    "untagged enum",
    "struct ",
    "variant",
    "tonic",
    "prost",
    "serde",
    "hyper",
    "axum",
    "sqlx",
    "invalid type:",
    "rust",
    "::",
    "vec<",
    "option<",
    "string\"",
    "protobuf message:",
    "content`",
];

/// Integer type names as whole words.
const RUST_TYPES: &[&str] = &[
    "i8", "i16", "i32", "i64", "u8", "u16", "u32", "u64", "f32", "f64", "usize",
];

/// Fails with `context` when `message` reads as Rust's, stutters, or is long
/// enough to be echoing input.
fn assert_in_our_words(context: &str, message: &str) {
    eprintln!("{context}\n    -> {message}");
    let lower = message.to_lowercase();
    for rust_ism in RUST_ISMS {
        assert!(
            !lower.contains(rust_ism),
            "{context}: {rust_ism:?} in {message:?}"
        );
    }
    let words: Vec<&str> = lower
        .split(|c: char| !c.is_alphanumeric())
        .filter(|word| !word.is_empty())
        .collect();
    for word in &words {
        assert!(
            !RUST_TYPES.contains(word),
            "{context}: {word:?} in {message:?}"
        );
    }
    // A field path may repeat a name (`conversation.conversation`); prose
    // may not.
    let prose: Vec<&str> = lower
        .split_whitespace()
        .map(|word| word.trim_matches(|c: char| !c.is_alphanumeric()))
        .filter(|word| !word.is_empty())
        .collect();
    for pair in prose.windows(2) {
        assert!(
            pair[0] != pair[1] || pair[0].chars().all(|c| c.is_ascii_digit()),
            "{context}: {:?} twice in {message:?}",
            pair[0]
        );
    }
    assert!(!message.is_empty(), "{context}: an empty message");
    assert!(
        message.len() <= 400,
        "{context}: {} bytes: {message:?}",
        message.len()
    );
}

/// Sends `body` (raw text, with `content_type`) as `method path` with the
/// owner's token; returns the status and the google.rpc.Status body.
async fn rest(
    app: &TestApp,
    method: &str,
    path: &str,
    content_type: &str,
    body: &str,
) -> (u16, Value) {
    let method = reqwest::Method::from_bytes(method.as_bytes()).unwrap();
    let mut request = app.http.request(method, app.url(path));
    if !body.is_empty() {
        request = request
            .header("content-type", content_type)
            .body(body.to_owned());
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    let text = response.text().await.unwrap();
    let json = serde_json::from_str(&text).unwrap_or_else(|_| panic!("{path}: not JSON: {text}"));
    (status, json)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_door_answers_malformed_input_in_the_apis_words() {
    let app = spawn_app(Backend::Sqlite).await;
    let conversation = app
        .post_json("/v1/conversations", json!({"title": "sweep"}))
        .await;
    let cid = conversation["id"].as_str().unwrap().to_owned();
    let huge = "h".repeat(100_000);
    let json = "application/json";

    let rest_cases: Vec<(&str, String, &str, String, u16)> = vec![
        // Wrong JSON types.
        (
            "POST",
            "/v1/conversations".into(),
            json,
            r#"{"title": 5}"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/conversations".into(),
            json,
            r#"{"title": {"a": 1}}"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/conversations".into(),
            json,
            r#"{"title": ["a"]}"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/conversations".into(),
            json,
            r#"[1, 2]"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/conversations".into(),
            json,
            r#""a title""#.into(),
            400,
        ),
        (
            "POST",
            format!("/v1/conversations/{cid}/messages"),
            json,
            r#"{"content": false}"#.into(),
            400,
        ),
        // Numbers: wrong type, not a number, out of range.
        (
            "POST",
            format!("/v1/conversations/{cid}/messages/m1:rate"),
            json,
            r#"{"rating": true}"#.into(),
            400,
        ),
        (
            "POST",
            format!("/v1/conversations/{cid}/messages/m1:rate"),
            json,
            r#"{"rating": "lots"}"#.into(),
            400,
        ),
        (
            "POST",
            format!("/v1/conversations/{cid}/messages/m1:rate"),
            json,
            r#"{"rating": 99999999999}"#.into(),
            400,
        ),
        (
            "POST",
            format!("/v1/conversations/{cid}/messages/m1:rate"),
            json,
            r#"{"rating": 1.5}"#.into(),
            400,
        ),
        // Unknown fields, at the top and nested, and one with a huge name.
        (
            "POST",
            "/v1/conversations".into(),
            json,
            r#"{"tilte": "x"}"#.into(),
            400,
        ),
        (
            "PATCH",
            format!("/v1/conversations/{cid}"),
            json,
            r#"{"conversation": {"title": "x"}}"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/conversations".into(),
            json,
            json!({huge.clone(): 1}).to_string(),
            400,
        ),
        // Bad enum values and timestamps.
        (
            "POST",
            "/v1/me/api-keys".into(),
            json,
            r#"{"name": "k", "expireTime": "next tuesday"}"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/me/api-keys".into(),
            json,
            r#"{"name": "k", "expireTime": 12}"#.into(),
            400,
        ),
        (
            "POST",
            "/v1/me/api-keys".into(),
            json,
            r#"{"name": "k", "permissions": "all"}"#.into(),
            400,
        ),
        // Malformed JSON and other content types.
        (
            "POST",
            "/v1/conversations".into(),
            json,
            r#"{"title": "#.into(),
            400,
        ),
        (
            "POST",
            "/v1/conversations".into(),
            json,
            "{\"title\": \"\u{1}\"}".into(),
            400,
        ),
        (
            "POST",
            "/v1/conversations".into(),
            "text/plain",
            "title=x".into(),
            415,
        ),
        (
            "POST",
            "/v1/conversations".into(),
            "application/x-www-form-urlencoded",
            "title=x".into(),
            415,
        ),
        // Query parameters.
        (
            "GET",
            "/v1/conversations?pageSize=abc".into(),
            json,
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/conversations?pageSize=1e3".into(),
            json,
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/conversations?pageSize=99999999999".into(),
            json,
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/conversations?pageSize=-5".into(),
            json,
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/conversations?colour=red".into(),
            json,
            String::new(),
            400,
        ),
        (
            "GET",
            format!("/v1/conversations?{}=1", "q".repeat(5000)),
            json,
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/conversations?pageSize=1&pageSize=2".into(),
            json,
            String::new(),
            400,
        ),
        // Path ids.
        (
            "GET",
            "/v1/conversations/not-an-id".into(),
            json,
            String::new(),
            400,
        ),
        (
            "GET",
            "/v1/conversations/%FF%FE".into(),
            json,
            String::new(),
            404,
        ),
        (
            "GET",
            format!("/v1/conversations/{}", "x".repeat(5000)),
            json,
            String::new(),
            400,
        ),
        (
            "GET",
            format!("/v1/{}", "y".repeat(5000)),
            json,
            String::new(),
            404,
        ),
        // A body where none is taken, and a method the path does not take.
        (
            "DELETE",
            format!("/v1/conversations/{cid}"),
            json,
            "{}".into(),
            400,
        ),
        ("PUT", "/v1/conversations".into(), json, "{}".into(), 405),
    ];
    for (method, path, content_type, body, expected) in &rest_cases {
        let (status, answer) = rest(&app, method, path, content_type, body).await;
        let shown: String = path.chars().take(60).collect();
        let context = format!(
            "REST {method} {shown} {}",
            body.chars().take(60).collect::<String>()
        );
        assert_eq!(status, *expected, "{context}: {answer}");
        assert!(answer["code"].as_i64().unwrap() > 0, "{context}: {answer}");
        assert_in_our_words(&context, answer["message"].as_str().unwrap());
        for violation in answer["details"][0]["fieldViolations"]
            .as_array()
            .into_iter()
            .flatten()
        {
            assert_in_our_words(&context, violation["description"].as_str().unwrap());
            assert!(
                violation["field"].as_str().unwrap().len() <= 400,
                "{context}"
            );
        }
    }

    let bearer = [(
        "authorization",
        format!("Bearer {}", app.owner.access_token),
    )];
    let get = "/switchboard.v1.ChatService/GetConversation";
    let create = "/switchboard.v1.ChatService/CreateConversation";
    let too_long = CreateConversationRequest {
        conversation: Some(Conversation {
            title: "x".repeat(201),
            ..Default::default()
        }),
    }
    .encode_to_vec();
    let grpc_cases: Vec<(&str, &str, Vec<u8>, i32)> = vec![
        ("garbage bytes", get, frame(&[0xff, 0xff, 0xff, 0xff]), 3),
        (
            "a number where a string belongs",
            get,
            frame(&[0x08, 0x01]),
            3,
        ),
        (
            "a string that is not UTF-8",
            get,
            frame(&[0x0a, 0x02, 0xff, 0xfe]),
            3,
        ),
        ("a field cut short", get, frame(&[0x0a, 0x09, b'a']), 3),
        ("a title too long", create, frame(&too_long), 3),
        (
            "a frame cut short",
            get,
            frame(&[0x0a, 0x01, b'a'])[..6].to_vec(),
            3,
        ),
        ("a length prefix cut short", get, vec![0, 0, 0], 3),
        (
            "a frame claiming 4 GB",
            get,
            vec![0, 0xff, 0xff, 0xff, 0xff, 1, 2],
            3,
        ),
        ("no message", get, Vec::new(), 3),
        ("two messages", get, [frame(&[]), frame(&[])].concat(), 3),
    ];
    for wire in Wire::ALL {
        for (case, method, body, expected) in &grpc_cases {
            let answer = grpc_call(&app, wire, method, &bearer, body.clone()).await;
            let context = format!("{wire:?}, {case}");
            assert_eq!(answer.code, *expected, "{context}: {answer:?}");
            assert_in_our_words(&context, &answer.message);
        }
    }
    for (case, text) in [
        ("not base64 at all", "!!!!!!!!"),
        ("base64 cut short", "AAAAAAE"),
        ("base64 with a space", "AAAA AAA="),
    ] {
        let answer = grpc_call_encoded(&app, Wire::GrpcWebText, get, &bearer, text.into()).await;
        let context = format!("gRPC-Web text, {case}");
        assert_eq!(answer.code, 3, "{context}: {answer:?}");
        assert_in_our_words(&context, &answer.message);
    }

    let (mut socket, _) = tokio_tungstenite::connect_async({
        use tokio_tungstenite::tungstenite::client::IntoClientRequest;
        let mut request = format!("ws://{}/v1/ws", app.address)
            .into_client_request()
            .unwrap();
        request.headers_mut().insert(
            "authorization",
            format!("Bearer {}", app.owner.access_token)
                .parse()
                .unwrap(),
        );
        request
    })
    .await
    .expect("the owner connects");
    let ws_cases: Vec<(&str, String)> = vec![
        ("not JSON", "subscribe me".into()),
        ("an array", "[]".into()),
        ("an unknown kind", r#"{"listen": 1}"#.into()),
        ("a kind that is a string", r#""subscribe""#.into()),
        ("a body that is a string", r#"{"subscribe": "x"}"#.into()),
        (
            "an id that is a number",
            r#"{"subscribe": {"conversationId": 5}}"#.into(),
        ),
        ("no id", r#"{"subscribe": {}}"#.into()),
        (
            "an unknown key",
            r#"{"subscribe": {"conversationId": "c", "colour": 1}}"#.into(),
        ),
        (
            "an id that is not one",
            r#"{"subscribe": {"conversationId": "not-an-id"}}"#.into(),
        ),
        (
            "a negative afterSeq",
            r#"{"subscribe": {"conversationId": "c", "afterSeq": -1}}"#.into(),
        ),
        (
            "afterSeq a string",
            r#"{"subscribe": {"conversationId": "c", "afterSeq": "x"}}"#.into(),
        ),
        (
            "two kinds",
            r#"{"subscribe": {"conversationId": "c"}, "unsubscribe": {}}"#.into(),
        ),
        (
            "a huge id",
            json!({"subscribe": {"conversationId": huge}}).to_string(),
        ),
        (
            "a huge unknown key",
            json!({"subscribe": {huge.clone(): 1}}).to_string(),
        ),
        ("a huge kind", json!({huge.clone(): {}}).to_string()),
    ];
    for (case, text) in ws_cases {
        socket.send(Message::Text(text.into())).await.unwrap();
        let answer = tokio::time::timeout(std::time::Duration::from_secs(10), socket.next())
            .await
            .unwrap_or_else(|_| panic!("WebSocket, {case}: an answer within 10 s"))
            .expect("the socket stays open")
            .expect("a readable frame");
        let answer: Value = serde_json::from_str(&answer.into_text().unwrap()).unwrap();
        let context = format!("WebSocket, {case}");
        assert_eq!(answer["error"]["code"], 3, "{context}: {answer}");
        assert_in_our_words(&context, answer["error"]["message"].as_str().unwrap());
    }
    app.stop().await;
}
