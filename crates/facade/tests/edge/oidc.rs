//! Sign-in through a real OpenID provider (npm `oidc-provider`, started by
//! the test): the whole authorization-code flow with PKCE and a nonce,
//! driven through the provider's own login and consent pages; accounts
//! provisioned and linked on first sign-in with roles from the provider's
//! claims; and the provider's own access tokens accepted as bearer tokens.

use std::collections::BTreeMap;

use serde_json::json;
use switchboard_core::identity::oidc::OidcProviderConfig;
use switchboard_proto::v1;

use crate::oidc_provider::OidcTestProvider;
use crate::support::{Account, Backend, TestApp, spawn_app_with};

const REDIRECT_URI: &str = "http://127.0.0.1:9/auth/callback";

async fn app_with_provider(backend: Backend, provider: &OidcTestProvider) -> TestApp {
    let config: OidcProviderConfig = serde_json::from_value(json!({
        "id": "test",
        "display_name": "Test IdP",
        "issuer": provider.issuer,
        "client_id": "switchboard",
        "client_secret": "switchboard-secret",
        "audience": "switchboard-api",
        "role_claim": "realm_access.roles",
        "role_map": BTreeMap::from([("admin", "admin"), ("operator", "operator")]),
    }))
    .expect("a provider configuration");
    spawn_app_with(backend, move |c| c.auth.oidc_providers = vec![config]).await
}

/// Starts a sign-in with the provider, signs `login` in on its pages, and
/// returns the completion request the browser would send back.
async fn provider_completion(
    app: &TestApp,
    provider: &OidcTestProvider,
    login: &str,
) -> serde_json::Value {
    let (status, start) = app
        .rest(
            "GET",
            &format!("/v1/auth/providers/test:start?redirectUri={REDIRECT_URI}"),
            None,
            None,
        )
        .await;
    assert_eq!(status, 200, "{start}");
    let url = start["authorizationUrl"].as_str().unwrap();
    assert!(
        url.contains("code_challenge_method=S256") && url.contains("nonce="),
        "{url}"
    );
    let back = provider.sign_in(url, login).await;
    let back = reqwest::Url::parse(&back).expect("the redirect URL");
    let query: BTreeMap<String, String> = back.query_pairs().into_owned().collect();
    assert_eq!(query["state"], start["state"].as_str().unwrap());
    json!({"state": query["state"], "code": query["code"]})
}

/// Signs `login` in through the provider and returns the server's tokens.
async fn oidc_sign_in(
    app: &TestApp,
    provider: &OidcTestProvider,
    login: &str,
) -> serde_json::Value {
    let completion = provider_completion(app, provider, login).await;
    let (status, tokens) = app
        .rest(
            "POST",
            "/v1/auth/providers/test:complete",
            None,
            Some(completion.clone()),
        )
        .await;
    assert_eq!(status, 200, "{tokens}");
    // A state works once.
    let (status, _) = app
        .rest(
            "POST",
            "/v1/auth/providers/test:complete",
            None,
            Some(completion),
        )
        .await;
    assert_eq!(status, 401);
    tokens
}

async fn sign_in_with_the_provider_gives_a_working_session(backend: Backend) {
    let provider = OidcTestProvider::start(&[REDIRECT_URI]).await;
    let app = app_with_provider(backend, &provider).await;
    let (_, providers) = app.rest("GET", "/v1/auth/providers", None, None).await;
    assert_eq!(providers["providers"][0]["id"], "test");
    // The served OpenAPI document offers the provider as a security scheme.
    let (_, openapi) = app.rest("GET", "/openapi.json", None, None).await;
    let scheme = &openapi["components"]["securitySchemes"]["oidc_test"];
    assert_eq!(scheme["type"], "openIdConnect");
    assert_eq!(
        scheme["openIdConnectUrl"],
        format!("{}/.well-known/openid-configuration", provider.issuer)
    );
    let list = &openapi["paths"]["/v1/conversations"]["get"]["security"];
    assert!(
        list.as_array().unwrap().contains(&json!({"oidc_test": []})),
        "{list}"
    );
    let login = &openapi["paths"]["/v1/auth:login"]["post"]["security"];
    assert_eq!(login, &json!([]), "public operations stay open");

    // alice is a Keycloak-style realm admin: provisioned as an admin.
    let alice = oidc_sign_in(&app, &provider, "alice").await;
    assert_eq!(alice["user"]["role"], "USER_ROLE_ADMIN");
    assert_eq!(alice["user"]["identityProviders"][0], "test");
    let token = alice["accessToken"].as_str().unwrap();
    let (status, users) = app.list_users(Some(token)).await;
    assert_eq!(status, 200, "{users}");
    let listed = users["users"].as_array().unwrap();
    let alice_listed = listed
        .iter()
        .find(|u| u["id"] == alice["user"]["id"])
        .unwrap();
    assert_eq!(
        alice_listed["identityProviders"],
        json!(["test"]),
        "{users}"
    );
    let owner_listed = listed
        .iter()
        .find(|u| u["email"] == "owner@example.test")
        .unwrap();
    assert_eq!(owner_listed["identityProviders"], json!([]), "{users}");
    // bob has no roles: a plain user, who can chat over gRPC with the session.
    let bob = oidc_sign_in(&app, &provider, "bob").await;
    assert_eq!(bob["user"]["role"], "USER_ROLE_USER");
    let account = Account {
        user_id: bob["user"]["id"].as_str().unwrap().into(),
        access_token: bob["accessToken"].as_str().unwrap().into(),
        refresh_token: bob["refreshToken"].as_str().unwrap().into(),
    };
    let created = app
        .grpc_as(Some(&account))
        .await
        .create_conversation(v1::CreateConversationRequest {
            conversation: Some(v1::Conversation {
                title: "via oidc".into(),
                ..Default::default()
            }),
        })
        .await
        .expect("CreateConversation with an OIDC session");
    assert_eq!(created.into_inner().title, "via oidc");
    // A second sign-in finds the same account (linked by issuer and subject).
    let again = oidc_sign_in(&app, &provider, "bob").await;
    assert_eq!(again["user"]["id"], bob["user"]["id"]);
    app.stop().await;
}

async fn provider_tokens_are_accepted_as_bearer_tokens_when_they_verify(backend: Backend) {
    let provider = OidcTestProvider::start(&[REDIRECT_URI]).await;
    let app = app_with_provider(backend, &provider).await;
    // service-a already uses the provider: its own token works directly,
    // with the operator role its realm roles map to.
    let token = provider
        .client_credentials_token("service-a", "service-a-secret")
        .await;
    let (status, listed) = app.list_conversations(Some(&token)).await;
    assert_eq!(status, 200, "{listed}");
    let (status, me) = app.get_me(Some(&token)).await;
    assert_eq!(
        (status, me["role"].as_str()),
        (200, Some("USER_ROLE_OPERATOR"))
    );
    let account = Account {
        user_id: String::new(),
        access_token: token.clone(),
        refresh_token: String::new(),
    };
    app.grpc_as(Some(&account))
        .await
        .list_conversations(v1::ListConversationsRequest::default())
        .await
        .expect("the provider's token over native gRPC");
    // Another audience, expired, or tampered: refused.
    let other = provider
        .client_credentials_token_for("service-a", "service-a-secret", Some("urn:other:api"))
        .await;
    let expired = provider
        .client_credentials_token_for("service-a", "service-a-secret", Some("urn:test:expired"))
        .await;
    let tampered = {
        let parts: Vec<&str> = token.split('.').collect();
        format!("{}.{}x.{}", parts[0], parts[1], parts[2])
    };
    for (name, bad) in [
        ("wrong audience", other),
        ("expired", expired),
        ("tampered", tampered),
    ] {
        let (status, body) = app.list_conversations(Some(&bad)).await;
        assert_eq!(status, 401, "{name}: {body}");
    }
    app.stop().await;
}

async fn a_provider_sign_in_never_takes_over_a_registered_account(backend: Backend) {
    let provider = OidcTestProvider::start(&[REDIRECT_URI]).await;
    let app = app_with_provider(backend, &provider).await;
    // Someone registers alice's address before alice ever signs in.
    let (status, squatter) = app
        .call_register(
            None,
            json!({"email": "alice@example.test", "password": crate::support::PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{squatter}");
    let completion = provider_completion(&app, &provider, "alice").await;
    let (status, refused) = app
        .rest(
            "POST",
            "/v1/auth/providers/test:complete",
            None,
            Some(completion),
        )
        .await;
    assert_eq!(status, 400, "not linked to the password account: {refused}");
    let token = squatter["accessToken"].as_str().unwrap();
    let (_, me) = app.get_me(Some(token)).await;
    assert_eq!(me["role"], "USER_ROLE_USER", "the squatter gained nothing");
    assert_eq!(me["identityProviders"], json!([]));
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_a_provider_sign_in_never_takes_over_a_registered_account() {
    a_provider_sign_in_never_takes_over_a_registered_account(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_a_provider_sign_in_never_takes_over_a_registered_account() {
    a_provider_sign_in_never_takes_over_a_registered_account(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_sign_in_with_the_provider_gives_a_working_session() {
    sign_in_with_the_provider_gives_a_working_session(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_sign_in_with_the_provider_gives_a_working_session() {
    sign_in_with_the_provider_gives_a_working_session(Backend::Postgres).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_provider_tokens_are_accepted_as_bearer_tokens_when_they_verify() {
    provider_tokens_are_accepted_as_bearer_tokens_when_they_verify(Backend::Sqlite).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn postgres_provider_tokens_are_accepted_as_bearer_tokens_when_they_verify() {
    provider_tokens_are_accepted_as_bearer_tokens_when_they_verify(Backend::Postgres).await;
}
