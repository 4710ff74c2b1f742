//! The field constraints declared with `(switchboard.v1.field)`, enforced by
//! the generated guard before the method runs: 400s naming the field by its
//! proto path, every violation listed in a google.rpc.BadRequest.

use crate::app::TestApp;

const CREATE: &str = "/v1/shelves/s1/books";

async fn create(body: &str) -> String {
    TestApp::new().call("POST", CREATE, body).await.error(400)
}

#[tokio::test]
async fn required_field_must_be_set() {
    assert_eq!(create("").await, "book: is required");
}

#[tokio::test]
async fn min_len_is_enforced() {
    assert_eq!(
        create(r#"{"publisher": {"name": "X"}}"#).await,
        "book.publisher.name: must be at least 2 characters long (got 1)"
    );
}

#[tokio::test]
async fn max_len_is_enforced() {
    let body = format!(r#"{{"title": "{}"}}"#, "é".repeat(41));
    assert_eq!(
        create(&body).await,
        "book.title: must be at most 40 characters long (got 41)"
    );
}

#[tokio::test]
async fn pattern_is_enforced_on_the_whole_value() {
    assert_eq!(
        create(r#"{"isbn": "978-0441013593"}"#).await,
        "book.isbn: must match the pattern [0-9]{13}"
    );
    let reply = TestApp::new()
        .call("POST", "/v1/shelves/s1/books?bookId=Dune", "{}")
        .await;
    assert_eq!(
        reply.error(400),
        "book_id: must match the pattern [a-z][a-z0-9-]*"
    );
}

#[tokio::test]
async fn minimum_is_enforced() {
    assert_eq!(
        create(r#"{"pageCount": "-1"}"#).await,
        "book.page_count: must be at least 0 (got -1)"
    );
}

#[tokio::test]
async fn maximum_is_enforced() {
    assert_eq!(
        create(r#"{"rating": 5.5}"#).await,
        "book.rating: must be at most 5 (got 5.5)"
    );
    let reply = TestApp::new()
        .get("/v1/shelves/s1/books?pageSize=101")
        .await;
    assert_eq!(reply.error(400), "page_size: must be at most 100 (got 101)");
}

#[tokio::test]
async fn max_items_is_enforced() {
    assert_eq!(
        create(r#"{"tags": ["a", "b", "c", "d"]}"#).await,
        "book.tags: must have at most 3 items (got 4)"
    );
}

#[tokio::test]
async fn every_violation_is_named_in_the_details() {
    let reply = TestApp::new()
        .call("POST", CREATE, r#"{"rating": -1, "isbn": "x"}"#)
        .await;
    let status = reply.expect(400);
    assert_eq!(
        status["message"],
        "book.rating: must be at least 0 (got -1) (and 1 more)"
    );
    let fields: Vec<&str> = status["details"][0]["fieldViolations"]
        .as_array()
        .unwrap()
        .iter()
        .map(|violation| violation["field"].as_str().unwrap())
        .collect();
    assert_eq!(fields, ["book.rating", "book.isbn"]);
}
