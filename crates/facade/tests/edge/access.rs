//! Access control, checked from the generated policy table: every RPC of
//! every service, over native gRPC, gRPC-Web and every REST binding (and
//! the WebSocket, which stands for StreamReply), as an anonymous caller, a
//! user, an operator and an administrator. The matrix is
//! built from `ACCESS_POLICY` and `HTTP_BINDINGS`, so an RPC added to a
//! proto is covered the day it is added.
//!
//! Each call sends the method's empty request: access is decided before
//! input is validated, so the answer says whether the caller got past the
//! guard (anything but the guard's refusal) without needing valid input.

use switchboard_core::identity::Role;
use switchboard_proto::v1;
use switchboard_testkit::grpc::{self, GrpcStatus, Wire};

use crate::support::{Account, TestApp};

/// What a call was answered with, as a gRPC code and message.
type Answer = GrpcStatus;

const UNAUTHENTICATED: i32 = 16;
const PERMISSION_DENIED: i32 = 7;

/// The guard's own refusals, told apart from a service's answers by their
/// messages (a public method such as Logout may answer 401 itself).
fn refused_by_guard(answer: &Answer) -> bool {
    (answer.code == UNAUTHENTICATED
        && (answer.message.starts_with("sign in:")
            || answer.message.starts_with("the credentials are")))
        || answer.code == PERMISSION_DENIED
            && (answer
                .message
                .starts_with("this method needs the permission")
                || answer
                    .message
                    .starts_with("this method is for administrators"))
}

/// The status of a gRPC or gRPC-Web answer to an empty request, read off
/// the wire by the test kit (a missing or unparsable `grpc-status` fails).
async fn grpc_call(client: &reqwest::Client, url: &str, token: Option<&str>, web: bool) -> Answer {
    let wire = if web { Wire::GrpcWeb } else { Wire::Grpc };
    let mut request = grpc::request(client, wire, url).body(vec![0u8, 0, 0, 0, 0]);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the call is sent");
    grpc::read_response(response, wire).await.status
}

/// The codes an admitted call may end with, each for a stated reason: the
/// matrix sends an empty request with made-up ids, so the service may find
/// the input invalid (INVALID_ARGUMENT), the thing missing (NOT_FOUND),
/// not applying to its state (FAILED_PRECONDITION) or existing already
/// (ALREADY_EXISTS), or refuse it itself (a sign-in method's own 401, an
/// API-key-only rule's 403); or it succeeds. A server error (INTERNAL,
/// UNKNOWN, UNAVAILABLE, UNIMPLEMENTED) is never an expected answer.
const EXPECTED_OF_ADMITTED: &[(i32, &str)] = &[
    (0, "OK"),
    (3, "INVALID_ARGUMENT"),
    (5, "NOT_FOUND"),
    (6, "ALREADY_EXISTS"),
    (9, "FAILED_PRECONDITION"),
    (PERMISSION_DENIED, "PERMISSION_DENIED by the service"),
    (UNAUTHENTICATED, "UNAUTHENTICATED by the service"),
];

/// The code of a REST answer: the google.rpc.Status body of an error, or 0.
async fn rest_call(
    client: &reqwest::Client,
    method: &str,
    url: &str,
    token: Option<&str>,
) -> Answer {
    let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
    let has_body = !matches!(method.as_str(), "GET" | "DELETE");
    let mut request = client.request(method, url);
    if has_body {
        request = request.json(&serde_json::json!({}));
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.expect("the call is sent");
    let status = response.status();
    if status.is_success() {
        return Answer {
            code: 0,
            message: String::new(),
        };
    }
    let challenge = response.headers().get("www-authenticate").cloned();
    let body: serde_json::Value = response.json().await.expect("a google.rpc.Status body");
    let code = body["code"].as_i64().expect("a code") as i32;
    if code == UNAUTHENTICATED {
        assert_eq!(status, 401);
        assert!(challenge.is_some(), "a 401 names the Bearer scheme");
    }
    if code == PERMISSION_DENIED {
        assert_eq!(status, 403);
    }
    Answer {
        code,
        message: body["message"].as_str().unwrap_or_default().to_owned(),
    }
}

/// A REST path of a binding's template with every variable filled.
fn rest_path(template: &str) -> String {
    let mut path = String::new();
    let mut rest = template;
    while let Some(start) = rest.find('{') {
        path.push_str(&rest[..start]);
        let end = rest[start..].find('}').expect("a closed variable") + start;
        path.push_str("01a229b8-41c2-7291-af9c-f242ae29f1d6");
        rest = &rest[end + 1..];
    }
    path.push_str(rest);
    path
}

/// Whether `principal` should get past the guard of `policy`.
fn admitted(policy: &switchboard_rest::policy::MethodPolicy, role: Option<Role>) -> bool {
    if policy.public {
        return true;
    }
    match (role, policy.permission) {
        (None, _) => false,
        (Some(role), Some(permission)) => role.permissions().contains(&permission),
        (Some(role), None) => role == Role::Admin,
    }
}

async fn every_rpc_on_every_transport_admits_exactly_the_callers_its_rule_names(app: &TestApp) {
    let operator = app.account("operator@example.test", Role::Operator).await;
    let admin = app.account("admin@example.test", Role::Admin).await;
    let principals: [(&str, Option<Role>, Option<&Account>); 4] = [
        ("anonymous", None, None),
        ("user", Some(Role::User), Some(&app.owner)),
        ("operator", Some(Role::Operator), Some(&operator)),
        ("admin", Some(Role::Admin), Some(&admin)),
    ];
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .expect("an h2c client");
    let h1 = reqwest::Client::new();
    let mut calls = 0;
    let mut methods = 0;
    // Logout ends the session of the token it is called with: it goes last,
    // so the other methods still see live tokens.
    let mut policies: Vec<_> = v1::ACCESS_POLICY.iter().collect();
    policies.sort_by_key(|policy| policy.method.ends_with("/Logout"));
    for policy in policies {
        methods += 1;
        let bindings: Vec<_> = v1::HTTP_BINDINGS
            .iter()
            .filter(|binding| binding.grpc_method == policy.method)
            .collect();
        assert!(
            !bindings.is_empty(),
            "{} has no REST binding",
            policy.method
        );
        for (who, role, account) in &principals {
            let token = account.map(|a| a.access_token.as_str());
            let expected = admitted(policy, *role);
            let mut answers = vec![
                (
                    "gRPC",
                    grpc_call(&h2, &app.url(policy.method), token, false).await,
                ),
                (
                    "gRPC-Web",
                    grpc_call(&h1, &app.url(policy.method), token, true).await,
                ),
            ];
            for binding in &bindings {
                let url = app.url(&rest_path(binding.template));
                answers.push((
                    "REST",
                    rest_call(&h1, binding.http_method, &url, token).await,
                ));
            }
            if policy.method == v1::CHAT_SERVICE_STREAM_REPLY_POLICY.method {
                // The WebSocket stands for StreamReply.
                let headers: Vec<(&str, String)> = token
                    .map(|token| ("authorization", format!("Bearer {token}")))
                    .into_iter()
                    .collect();
                let answer = match crate::websocket::connect(app, &headers).await {
                    Ok(_) => Answer {
                        code: 0,
                        message: String::new(),
                    },
                    Err(401) => Answer {
                        code: UNAUTHENTICATED,
                        message: "sign in:".into(),
                    },
                    Err(403) => Answer {
                        code: PERMISSION_DENIED,
                        message: "this method needs the permission".into(),
                    },
                    Err(other) => panic!("WebSocket upgrade answered {other}"),
                };
                answers.push(("WebSocket", answer));
            }
            for (transport, answer) in answers {
                calls += 1;
                let context = format!("{} over {transport} as {who}: {answer:?}", policy.method);
                if expected {
                    assert!(!refused_by_guard(&answer), "should be admitted: {context}");
                    assert!(
                        EXPECTED_OF_ADMITTED
                            .iter()
                            .any(|(code, _)| *code == answer.code),
                        "an admitted call must succeed or fail for an expected reason \
                         ({EXPECTED_OF_ADMITTED:?}): {context}"
                    );
                } else if role.is_none() {
                    assert_eq!(answer.code, UNAUTHENTICATED, "{context}");
                } else {
                    assert_eq!(answer.code, PERMISSION_DENIED, "{context}");
                }
            }
        }
    }
    // 28 RPCs today; the count only grows.
    assert!(methods >= 28, "{methods} RPCs in the policy table");
    eprintln!(
        "access matrix: {methods} RPCs x 4 principals = {calls} calls over gRPC, gRPC-Web, REST and the WebSocket"
    );
}

crate::support::on_both_databases!(
    every_rpc_on_every_transport_admits_exactly_the_callers_its_rule_names
);

#[test]
fn every_declared_permission_is_one_the_roles_know() {
    for policy in v1::ACCESS_POLICY {
        if let Some(permission) = policy.permission {
            assert!(
                switchboard_core::identity::ALL_PERMISSIONS.contains(&permission),
                "{} declares unknown permission {permission}",
                policy.method
            );
        }
    }
}
