//! Shutdown: a stream that is open when the server is told to stop runs to
//! its end before the server exits.

use futures::StreamExt;
use serde_json::{Value, json};

use crate::support::{Backend, spawn_app_with_delay};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_an_open_reply_stream() {
    let mut app = spawn_app_with_delay(Backend::Sqlite, 20).await;
    let conversation: Value = app
        .http
        .post(app.url("/v1/conversations"))
        .json(&json!({ "title": "draining" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let id = conversation["id"].as_str().unwrap();
    let sent: Value = app
        .http
        .post(app.url(&format!("/v1/conversations/{id}/messages")))
        .json(&json!({ "content": "tell me a story" }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
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
