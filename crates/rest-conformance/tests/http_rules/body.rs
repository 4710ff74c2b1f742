//! Where the body goes: the whole request (`body: "*"`), one field, none;
//! `response_body`; and the FieldMask a PATCH body fills.

use serde_json::json;

use crate::app::TestApp;

#[tokio::test]
async fn whole_body_is_the_request_less_the_path_fields() {
    let reply = TestApp::new()
        .call(
            "POST",
            "/v1/shelves/s1/books/b1:archive",
            r#"{"reason": "worn"}"#,
        )
        .await;
    assert_eq!(
        reply.expect(200),
        json!({"name": "shelves/s1/books/b1", "reason": "worn"})
    );
}

#[tokio::test]
async fn whole_body_leaves_nothing_to_the_query() {
    let reply = TestApp::new()
        .call("POST", "/v1/shelves/s1/books/b1:archive?reason=worn", "{}")
        .await;
    assert_eq!(reply.error(400), "unknown query parameter `reason`");
}

#[tokio::test]
async fn whole_body_must_be_a_json_object() {
    let reply = TestApp::new()
        .call("POST", "/v1/shelves/s1/books/b1:archive", r#"["worn"]"#)
        .await;
    assert_eq!(reply.error(400), "the request body must be a JSON object");
}

#[tokio::test]
async fn single_field_body_is_that_field_and_the_rest_comes_from_the_query() {
    let reply = TestApp::new()
        .call(
            "POST",
            "/v1/shelves/s1/books?bookId=dune",
            r#"{"title": "Dune"}"#,
        )
        .await;
    let received = reply.expect(200);
    assert_eq!(received["parent"], "shelves/s1");
    assert_eq!(received["book"]["title"], "Dune");
    assert_eq!(received["bookId"], "dune");
}

#[tokio::test]
async fn single_field_body_is_not_also_a_query_parameter() {
    let reply = TestApp::new()
        .call("POST", "/v1/shelves/s1/books?book.title=Dune", "{}")
        .await;
    assert_eq!(reply.error(400), "unknown query parameter `book.title`");
}

#[tokio::test]
async fn binding_without_body_refuses_one() {
    let reply = TestApp::new()
        .call(
            "GET",
            "/v1/shelves/s1/books/b1",
            r#"{"view": "BOOK_VIEW_FULL"}"#,
        )
        .await;
    assert_eq!(reply.error(400), "this method takes no request body");
}

#[tokio::test]
async fn response_body_sends_only_that_field() {
    let reply = TestApp::new()
        .get("/v1/shelves/s1/books/b1/tags?tags=sf&tags=classic")
        .await;
    assert_eq!(reply.expect(200), json!(["sf", "classic"]));
}

#[tokio::test]
async fn empty_response_is_an_empty_object() {
    let reply = TestApp::new()
        .call("DELETE", "/v1/shelves/s1/books/b1", "")
        .await;
    assert_eq!(reply.expect(200), json!({}));
}

#[tokio::test]
async fn patch_fills_the_field_mask_from_the_fields_in_the_body() {
    let body = r#"{"title": "Dune", "page_count": "412", "publisher": {"name": "Chilton", "city": "Philadelphia"}}"#;
    let reply = TestApp::new()
        .call("PATCH", "/v1/shelves/s1/books/b1", body)
        .await;
    assert_eq!(
        reply.expect(200)["updateMask"],
        "title,pageCount,publisher.name,publisher.city"
    );
}

#[tokio::test]
async fn patch_keeps_the_field_mask_the_query_sets() {
    let body = r#"{"title": "Dune", "pageCount": "412"}"#;
    let reply = TestApp::new()
        .call("PATCH", "/v1/shelves/s1/books/b1?updateMask=title", body)
        .await;
    assert_eq!(reply.expect(200)["updateMask"], "title");
}

#[tokio::test]
async fn patch_checks_only_the_fields_its_mask_names() {
    // Publisher.name has min_len 2; a patch of the city alone leaves it empty.
    let body = r#"{"publisher": {"city": "Oslo"}}"#;
    let reply = TestApp::new()
        .call("PATCH", "/v1/shelves/s1/books/b1", body)
        .await;
    assert_eq!(reply.expect(200)["updateMask"], "publisher.city");

    let body = r#"{"publisher": {"name": "X", "city": "Oslo"}}"#;
    let reply = TestApp::new()
        .call("PATCH", "/v1/shelves/s1/books/b1", body)
        .await;
    assert_eq!(
        reply.expect(400)["message"],
        "book.publisher.name: must be at least 2 characters long (got 1)"
    );
}

#[tokio::test]
async fn a_body_that_is_not_json_is_a_415() {
    let app = TestApp::new();
    for content_type in ["text/plain", "application/x-www-form-urlencoded"] {
        let reply = app
            .call_with(
                "PATCH",
                "/v1/shelves/s1/books/b1",
                r#"{"title": "Dune"}"#,
                &[("content-type", content_type)],
            )
            .await;
        assert!(reply.error(415).contains("must be JSON"), "{content_type}");
    }
    let charset = app
        .call_with(
            "PATCH",
            "/v1/shelves/s1/books/b1",
            r#"{"title": "Dune"}"#,
            &[("content-type", "application/json; charset=utf-8")],
        )
        .await;
    charset.expect(200);
}
