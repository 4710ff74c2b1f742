//! The server's real log output with `log_format = "json"`: every line is
//! one JSON object with ECS names, each request has one access line, and no
//! secret, token or message content is ever written, whichever door it came
//! through. The test sends passwords, tokens, an API key, message text and a
//! rating comment over REST, native gRPC, gRPC-Web and the WebSocket, at
//! the most talkative level (`debug`), then reads the log file.

use std::time::Duration;

mod support;

use futures::{SinkExt, StreamExt};
use prost::Message as _;
use serde_json::{Value, json};
use switchboard_proto::v1::{LoginRequest, SendMessageRequest};
use switchboard_testkit::grpc::{self, Wire};
use switchboard_testkit::process::{Process, free_port};
use switchboard_testkit::rest::{post_json, wait_ready};
use tokio_tungstenite::tungstenite::client::IntoClientRequest;

/// Every secret the test sends; none may appear in the log.
struct Secrets {
    password: String,
    wrong_password: String,
    message_over_rest: String,
    message_over_grpc: String,
    message_over_grpc_web: String,
    comment: String,
    bogus_token: String,
}

impl Secrets {
    fn new() -> Self {
        let unique = |what: &str| format!("{what}-{}", uuid::Uuid::now_v7().simple());
        Self {
            password: unique("pw-correct-horse"),
            wrong_password: unique("pw-wrong"),
            message_over_rest: unique("private-rest-text"),
            message_over_grpc: unique("private-grpc-text"),
            message_over_grpc_web: unique("private-grpc-web-text"),
            comment: unique("private-comment"),
            bogus_token: unique("sb-bogus-token"),
        }
    }
}

fn login_frame(email: &str, password: &str) -> Vec<u8> {
    grpc::frame(
        &LoginRequest {
            email: email.to_owned(),
            password: password.to_owned(),
            ..LoginRequest::default()
        }
        .encode_to_vec(),
    )
}

#[tokio::test]
async fn the_log_is_ecs_json_with_one_access_line_per_request_and_no_secrets() {
    let data_dir = tempfile::tempdir().unwrap();
    let log_path = data_dir.path().join("server.log");
    let port = free_port();
    let base = format!("http://127.0.0.1:{port}");
    let mut command = support::embedded_serve(&data_dir.path().join("data"), port);
    command
        .env("SWITCHBOARD_LOG_FORMAT", "json")
        .env("SWITCHBOARD_LOG_LEVEL", "debug")
        .env("OTEL_SERVICE_NAME", "switchboard-logs-test");
    let server = Process::spawn_with_stderr(command, std::fs::File::create(&log_path).unwrap());
    let http = reqwest::Client::new();
    wait_ready(&http, &base).await;
    let secrets = Secrets::new();
    let email = "logged@example.test";

    // REST: register, a wrong and a right password, a refresh.
    let registered = post_json(
        &http,
        format!("{base}/v1/auth:register"),
        None,
        json!({"email": email, "password": secrets.password}),
    )
    .await;
    let access = registered["accessToken"].as_str().unwrap().to_owned();
    let refresh = registered["refreshToken"].as_str().unwrap().to_owned();
    let refused = http
        .post(format!("{base}/v1/auth:login"))
        .json(&json!({"email": email, "password": secrets.wrong_password}))
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);
    let refreshed = post_json(
        &http,
        format!("{base}/v1/auth:refresh"),
        None,
        json!({"refreshToken": refresh}),
    )
    .await;
    let access = refreshed["accessToken"]
        .as_str()
        .unwrap_or(&access)
        .to_owned();
    let refresh_again = refreshed["refreshToken"].as_str().unwrap().to_owned();

    // REST with the token, an API key, and a bogus token.
    let key = post_json(
        &http,
        format!("{base}/v1/me/api-keys"),
        Some(&access),
        json!({"name": "logs"}),
    )
    .await;
    let api_key = key["secret"].as_str().unwrap().to_owned();
    let me = http
        .get(format!("{base}/v1/me"))
        .header("x-api-key", &api_key)
        .send()
        .await
        .unwrap();
    assert_eq!(me.status(), 200);
    let bogus = http
        .get(format!("{base}/v1/me"))
        .bearer_auth(&secrets.bogus_token)
        .send()
        .await
        .unwrap();
    assert_eq!(bogus.status(), 401);
    let conversation = post_json(
        &http,
        format!("{base}/v1/conversations"),
        Some(&access),
        json!({"title": "logged"}),
    )
    .await;
    let cid = conversation["id"].as_str().unwrap().to_owned();
    let sent = post_json(
        &http,
        format!("{base}/v1/conversations/{cid}/messages"),
        Some(&access),
        json!({"content": secrets.message_over_rest}),
    )
    .await;
    let reply_id = sent["reply"]["id"].as_str().unwrap().to_owned();
    let streamed = http
        .get(format!(
            "{base}/v1/conversations/{cid}/messages/{reply_id}:stream"
        ))
        .bearer_auth(&access)
        .header("accept", "text/event-stream")
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        streamed.contains(&secrets.message_over_rest),
        "the reply quotes it"
    );
    let rated = http
        .post(format!(
            "{base}/v1/conversations/{cid}/messages/{reply_id}:rate"
        ))
        .bearer_auth(&access)
        .json(&json!({"rating": 1, "comment": secrets.comment}))
        .send()
        .await
        .unwrap();
    assert_eq!(rated.status(), 200);

    // Native gRPC and gRPC-Web: a login with the wrong password, a message.
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    for (client, wire, content) in [
        (&h2, Wire::Grpc, &secrets.message_over_grpc),
        (&http, Wire::GrpcWeb, &secrets.message_over_grpc_web),
    ] {
        let response = grpc::request(
            client,
            wire,
            &format!("{base}/switchboard.v1.AuthService/Login"),
        )
        .body(login_frame(email, &secrets.wrong_password))
        .send()
        .await
        .unwrap();
        assert_eq!(grpc::read_response(response, wire).await.status.code, 16);
        let message = SendMessageRequest {
            conversation_id: cid.clone(),
            content: content.clone(),
        };
        let response = grpc::request(
            client,
            wire,
            &format!("{base}/switchboard.v1.ChatService/SendMessage"),
        )
        .bearer_auth(&access)
        .body(grpc::frame(&message.encode_to_vec()))
        .send()
        .await
        .unwrap();
        assert_eq!(grpc::read_response(response, wire).await.status.code, 0);
    }

    // The WebSocket, its token in the subprotocol.
    let mut request = format!("ws://127.0.0.1:{port}/v1/ws")
        .into_client_request()
        .unwrap();
    request.headers_mut().insert(
        "sec-websocket-protocol",
        format!("switchboard.v1, bearer.{access}").parse().unwrap(),
    );
    let (mut socket, _) = tokio_tungstenite::connect_async(request).await.unwrap();
    socket
        .send(tokio_tungstenite::tungstenite::Message::Text(
            json!({"subscribe": {"conversationId": cid, "messageId": reply_id, "afterSeq": 0}})
                .to_string()
                .into(),
        ))
        .await
        .unwrap();
    let first = tokio::time::timeout(Duration::from_secs(10), socket.next())
        .await
        .expect("a frame")
        .expect("the socket is open")
        .unwrap();
    assert!(first.is_text(), "{first:?}");
    drop(socket);

    // Let the last lines reach the file, then stop the server.
    tokio::time::sleep(Duration::from_millis(500)).await;
    server.terminate();
    let mut server = server;
    server
        .exit_by(std::time::Instant::now() + Duration::from_secs(40))
        .await
        .expect("the server exits");

    let log = std::fs::read_to_string(&log_path).unwrap();
    let lines: Vec<Value> = log
        .lines()
        .map(|line| {
            serde_json::from_str(line).unwrap_or_else(|error| panic!("not JSON ({error}): {line}"))
        })
        .collect();
    assert!(lines.len() > 20, "{} lines", lines.len());
    for line in &lines {
        for key in ["@timestamp", "log.level", "log.logger", "message"] {
            assert!(line.get(key).is_some(), "no {key}: {line}");
        }
        assert_eq!(line["service.name"], "switchboard-logs-test", "{line}");
    }
    let access_lines: Vec<&Value> = lines
        .iter()
        .filter(|line| line["log.logger"] == "switchboard::access")
        .collect();
    let routes: Vec<String> = access_lines
        .iter()
        .map(|line| {
            format!(
                "{} {} {}",
                line["switchboard.transport"].as_str().unwrap_or("?"),
                line["switchboard.rpc"].as_str().unwrap_or("?"),
                line["http.response.status_code"]
            )
        })
        .collect();
    for expected in [
        "rest /switchboard.v1.AuthService/Register 200",
        "rest /switchboard.v1.AuthService/Login 401",
        "rest /switchboard.v1.AuthService/GetCurrentUser 401",
        "rest /switchboard.v1.ChatService/SendMessage 200",
        "rest /switchboard.v1.ChatService/StreamReply 200",
        "grpc /switchboard.v1.AuthService/Login 200",
        "grpc /switchboard.v1.ChatService/SendMessage 200",
        "grpc-web /switchboard.v1.ChatService/SendMessage 200",
        "http other 101",
    ] {
        assert_eq!(
            routes.iter().filter(|route| *route == expected).count(),
            1,
            "one access line for {expected}: {routes:#?}"
        );
    }
    for line in &access_lines {
        assert!(
            line["http.request.id"]
                .as_str()
                .is_some_and(|id| !id.is_empty()),
            "{line}"
        );
        assert!(line["event.duration"].as_u64().is_some(), "{line}");
        assert!(line["http.request.method"].is_string(), "{line}");
        assert!(line["url.path"].is_string(), "{line}");
    }
    let send = access_lines
        .iter()
        .find(|line| line["switchboard.rpc"] == "/switchboard.v1.ChatService/SendMessage")
        .unwrap();
    assert!(
        send["user.id"].is_string(),
        "the user is named once known: {send}"
    );
    let failed_login = access_lines
        .iter()
        .find(|line| {
            line["switchboard.transport"] == "grpc"
                && line["switchboard.rpc"] == "/switchboard.v1.AuthService/Login"
        })
        .unwrap();
    assert_eq!(failed_login["rpc.grpc.status_code"], "16", "{failed_login}");

    let mut leaks = Vec::new();
    for (what, secret) in [
        ("the password", secrets.password.as_str()),
        ("a wrong password", &secrets.wrong_password),
        ("message text (REST)", &secrets.message_over_rest),
        ("message text (gRPC)", &secrets.message_over_grpc),
        ("message text (gRPC-Web)", &secrets.message_over_grpc_web),
        ("a rating comment", &secrets.comment),
        ("a bogus token", &secrets.bogus_token),
        ("an access token", &access),
        ("a refresh token", &refresh),
        ("a newer refresh token", &refresh_again),
        ("an API key", &api_key),
    ] {
        if log.contains(secret) {
            leaks.push(what);
        }
    }
    assert!(leaks.is_empty(), "the log holds {leaks:?}");
}
