//! The query string: every field not bound by the path or the body, nested
//! and repeated ones included, under either of its names; anything else is
//! refused by name.

use serde_json::json;

use crate::app::TestApp;

#[tokio::test]
async fn remaining_fields_come_from_the_query() {
    let reply = TestApp::new()
        .get("/v1/shelves/s1/books?pageSize=5&pageToken=next")
        .await;
    let received = reply.expect(200);
    assert_eq!(received["parent"], "shelves/s1");
    assert_eq!(received["pageSize"], 5);
    assert_eq!(received["pageToken"], "next");
}

#[tokio::test]
async fn repeated_query_parameters_collect_every_value() {
    let reply = TestApp::new()
        .get(
            "/v1/shelves/s1/books?tags=sf&tags=classic&filter.genres=GENRE_FICTION&filter.genres=3",
        )
        .await;
    let received = reply.expect(200);
    assert_eq!(received["tags"], json!(["sf", "classic"]));
    assert_eq!(
        received["filter"]["genres"],
        json!(["GENRE_FICTION", "GENRE_POETRY"])
    );
}

#[tokio::test]
async fn nested_query_parameters_set_nested_fields() {
    let uri = "/v1/shelves/s1/books?filter.author=Herbert&filter.inPrint=true&filter.minRating=4.5\
               &filter.pages.min=100&filter.publishedAfter=1965-08-01T00:00:00%2B02:00";
    let filter = &TestApp::new().get(uri).await.expect(200)["filter"];
    assert_eq!(filter["author"], "Herbert");
    assert_eq!(filter["inPrint"], true);
    assert_eq!(filter["minRating"], 4.5);
    assert_eq!(filter["pages"], json!({"min": "100", "max": "0"}));
    assert_eq!(filter["publishedAfter"], "1965-07-31T22:00:00Z");
}

#[tokio::test]
async fn query_parameters_accept_proto_and_json_names() {
    let reply = TestApp::new()
        .get("/v1/shelves/s1/books?page_size=5&filter.in_print=true&filter.pages.min=1")
        .await;
    let received = reply.expect(200);
    assert_eq!(received["pageSize"], 5);
    assert_eq!(received["filter"]["inPrint"], true);
}

#[tokio::test]
async fn unknown_query_parameters_are_a_400_naming_them() {
    let reply = TestApp::new()
        .get("/v1/shelves/s1/books?colour=red&pageSize=5&filter.size=2")
        .await;
    let status = reply.expect(400);
    assert_eq!(
        status["message"],
        "unknown query parameter `colour`, `filter.size`"
    );
    assert_eq!(
        status["details"][0]["@type"],
        "type.googleapis.com/google.rpc.BadRequest"
    );
}

#[tokio::test]
async fn path_fields_are_not_query_parameters() {
    let reply = TestApp::new()
        .get("/v1/shelves/s1/books?parent=shelves/s2")
        .await;
    assert_eq!(reply.error(400), "unknown query parameter `parent`");
}

#[tokio::test]
async fn singular_query_parameter_given_twice_is_a_400() {
    let reply = TestApp::new()
        .get("/v1/shelves/s1/books?pageSize=5&page_size=6")
        .await;
    assert_eq!(
        reply.error(400),
        "page_size: query parameter given more than once"
    );
}

#[tokio::test]
async fn enum_query_parameter_takes_a_name_or_a_number() {
    let app = TestApp::new();
    assert_eq!(
        app.get("/v1/shelves/s1/books/b1?view=BOOK_VIEW_FULL")
            .await
            .expect(200)["view"],
        "BOOK_VIEW_FULL"
    );
    assert_eq!(
        app.get("/v1/shelves/s1/books/b1?view=1").await.expect(200)["view"],
        "BOOK_VIEW_BASIC"
    );
}

#[tokio::test]
async fn bad_query_values_are_a_400_naming_the_field() {
    let app = TestApp::new();
    assert_eq!(
        app.get("/v1/shelves/s1/books?filter.inPrint=yes")
            .await
            .error(400),
        "filter.in_print: must be true or false; got \"yes\""
    );
    assert!(
        app.get("/v1/shelves/s1/books?pageSize=many")
            .await
            .error(400)
            .starts_with("pageSize: ")
    );
    assert!(
        app.get("/v1/shelves/s1/books/b1?view=BOOK_VIEW_HUGE")
            .await
            .error(400)
            .starts_with("view: unknown value \"BOOK_VIEW_HUGE\"; expected one of ")
    );
}
