//! Path templates: patterns, nested fields, additional bindings, custom
//! verbs and methods, typed variables, and the answers when nothing matches.

use crate::app::TestApp;

#[tokio::test]
async fn pattern_variable_captures_every_segment_of_its_pattern() {
    let reply = TestApp::new().get("/v1/shelves/s1/books/b1").await;
    assert_eq!(reply.expect(200)["name"], "shelves/s1/books/b1");
}

#[tokio::test]
async fn pattern_variable_is_percent_decoded() {
    let reply = TestApp::new().get("/v1/shelves/s%201/books/b%C3%A9").await;
    assert_eq!(reply.expect(200)["name"], "shelves/s 1/books/bé");
}

#[tokio::test]
async fn nested_path_field_sets_the_field_inside_the_body_message() {
    let reply = TestApp::new()
        .call("PATCH", "/v1/shelves/s1/books/b1", r#"{"title": "Dune"}"#)
        .await;
    let book = &reply.expect(200)["book"];
    assert_eq!(book["name"], "shelves/s1/books/b1");
    assert_eq!(book["title"], "Dune");
}

#[tokio::test]
async fn path_variable_wins_over_the_same_field_in_the_body() {
    let reply = TestApp::new()
        .call(
            "PATCH",
            "/v1/shelves/s1/books/b1",
            r#"{"name": "shelves/evil/books/x"}"#,
        )
        .await;
    assert_eq!(reply.expect(200)["book"]["name"], "shelves/s1/books/b1");
}

#[tokio::test]
async fn additional_bindings_route_to_the_same_method() {
    let app = TestApp::new();
    assert_eq!(
        app.get("/v1/shelves/s1/books/b1").await.expect(200)["name"],
        "shelves/s1/books/b1"
    );
    assert_eq!(app.get("/v1/books/b1").await.expect(200)["name"], "b1");
}

#[tokio::test]
async fn custom_verb_routes_to_its_method_without_the_verb_in_the_field() {
    let reply = TestApp::new()
        .call(
            "POST",
            "/v1/shelves/s1/books/b1:archive",
            r#"{"reason": "worn"}"#,
        )
        .await;
    let received = reply.expect(200);
    assert_eq!(received["name"], "shelves/s1/books/b1");
    assert_eq!(received["reason"], "worn");
}

#[tokio::test]
async fn custom_http_method_is_routed_by_its_kind() {
    let reply = TestApp::new()
        .call(
            "MOVE",
            "/v1/shelves/s1/books/b1",
            r#"{"destination": "shelves/s2"}"#,
        )
        .await;
    let received = reply.expect(200);
    assert_eq!(received["name"], "shelves/s1/books/b1");
    assert_eq!(received["destination"], "shelves/s2");
}

#[tokio::test]
async fn numeric_path_variable_becomes_a_number() {
    let reply = TestApp::new()
        .get("/v1/shelves/s1/books/b1/editions/2")
        .await;
    assert_eq!(
        reply.expect(200),
        serde_json::json!({"book": "shelves/s1/books/b1", "number": 2})
    );
}

#[tokio::test]
async fn bad_path_parameter_is_a_400_naming_it() {
    let reply = TestApp::new()
        .get("/v1/shelves/s1/books/b1/editions/two")
        .await;
    let status = reply.expect(400);
    assert_eq!(status["message"], "number: must be an integer");
    assert_eq!(
        status["details"][0]["fieldViolations"][0]["field"],
        "number"
    );
}

#[tokio::test]
async fn unknown_path_is_a_404_status_json() {
    let reply = TestApp::new().get("/v1/shelves/s1/pens/p1").await;
    let status = reply.expect(404);
    assert_eq!(status["code"], 5);
    assert_eq!(status["message"], "no route for GET /v1/shelves/s1/pens/p1");
}

#[tokio::test]
async fn wrong_method_is_a_405_with_allow() {
    let reply = TestApp::new()
        .call("PUT", "/v1/shelves/s1/books/b1", "{}")
        .await;
    assert_eq!(reply.expect(405)["code"], 12);
    assert_eq!(reply.headers["allow"], "GET, PATCH, DELETE, MOVE");
}

#[tokio::test]
async fn head_is_answered_like_get() {
    let reply = TestApp::new()
        .call("HEAD", "/v1/shelves/s1/books/b1", "")
        .await;
    assert_eq!(reply.status, 200);
}
