//! The proto3 JSON mapping, both ways: lowerCamelCase out and either name
//! in, int64 as strings, enums as names, Timestamp as RFC 3339 in UTC; and
//! malformed input refused with a 400 naming the field at fault.

use serde_json::json;

use crate::app::TestApp;

const CREATE: &str = "/v1/shelves/s1/books?bookId=dune";

#[tokio::test]
async fn output_follows_the_proto3_json_mapping() {
    let body = r#"{"title": "Dune", "genre": "GENRE_FICTION", "pageCount": "412", "inPrint": true,
                   "rating": 4.5, "publishedAt": "1965-08-01T00:00:00+02:00", "tags": ["sf"]}"#;
    let book = &TestApp::new().call("POST", CREATE, body).await.expect(200)["book"];
    let expected = json!({
        "name": "", "title": "Dune", "genre": "GENRE_FICTION", "tags": ["sf"], "pageCount": "412",
        "inPrint": true, "rating": 4.5, "publishedAt": "1965-07-31T22:00:00Z", "isbn": "",
    });
    assert_eq!(*book, expected);
}

#[tokio::test]
async fn input_accepts_original_field_names() {
    let body = r#"{"page_count": "412", "in_print": true, "published_at": "1965-08-01T00:00:00Z"}"#;
    let book = &TestApp::new().call("POST", CREATE, body).await.expect(200)["book"];
    assert_eq!(book["pageCount"], "412");
    assert_eq!(book["inPrint"], true);
    assert_eq!(book["publishedAt"], "1965-08-01T00:00:00Z");
}

#[tokio::test]
async fn input_accepts_int64_as_number_and_enum_as_number() {
    let book = &TestApp::new()
        .call("POST", CREATE, r#"{"pageCount": 412, "genre": 2}"#)
        .await
        .expect(200)["book"];
    assert_eq!(book["pageCount"], "412");
    assert_eq!(book["genre"], "GENRE_HISTORY");
}

#[tokio::test]
async fn malformed_json_is_a_400() {
    let reply = TestApp::new().call("POST", CREATE, r#"{"title": "#).await;
    assert!(
        reply
            .error(400)
            .starts_with("the request body is not valid JSON")
    );
}

#[tokio::test]
async fn wrong_type_is_a_400_naming_the_field() {
    let reply = TestApp::new().call("POST", CREATE, r#"{"title": 5}"#).await;
    assert_eq!(
        reply.error(400),
        "book.title: must be a string, not a number"
    );
}

#[tokio::test]
async fn unknown_enum_name_is_a_400_naming_the_field() {
    let reply = TestApp::new()
        .call("POST", CREATE, r#"{"genre": "GENRE_COOKING"}"#)
        .await;
    assert!(
        reply
            .error(400)
            .starts_with("book.genre: unknown value \"GENRE_COOKING\"; expected one of GENRE_")
    );
}

#[tokio::test]
async fn a_bad_enum_number_or_an_int64_of_the_wrong_type_is_said_in_json_terms() {
    let app = TestApp::new();
    assert_eq!(
        app.call("POST", CREATE, r#"{"genre": 99}"#)
            .await
            .error(400),
        "book.genre: must be one of GENRE_UNSPECIFIED, GENRE_FICTION, GENRE_HISTORY, \
         GENRE_POETRY; got 99"
    );
    assert_eq!(
        app.call("POST", CREATE, r#"{"pageCount": true}"#)
            .await
            .error(400),
        "book.pageCount: must be a number that fits the field (a whole number, for an \
         integer field), or a string holding one"
    );
}

#[tokio::test]
async fn unknown_field_is_a_400_naming_it() {
    let reply = TestApp::new()
        .call("POST", CREATE, r#"{"publisher": {"colour": "red"}}"#)
        .await;
    assert!(
        reply
            .error(400)
            .starts_with("book.publisher.colour: unknown field")
    );
}

#[tokio::test]
async fn bad_timestamp_is_a_400_naming_the_field() {
    let reply = TestApp::new()
        .call("POST", CREATE, r#"{"publishedAt": "last summer"}"#)
        .await;
    assert!(
        reply
            .error(400)
            .starts_with("book.publishedAt: must be an RFC 3339 date-time")
    );
}
