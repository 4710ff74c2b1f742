//! Shutdown: a stream that is open when the server is told to stop runs to
//! its end before the server exits.

use futures::StreamExt;
use serde_json::json;

use crate::support::{Backend, spawn_app_with_delay};

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
