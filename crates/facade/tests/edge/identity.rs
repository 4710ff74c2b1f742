//! Identity end to end: registering and signing in, sessions and refresh
//! tokens, API keys, the second factor, refused credentials on every
//! transport, users kept apart, administration and the audit trail — on
//! SQLite and on PostgreSQL.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::{Value, json};
use switchboard_core::identity::Role;
use switchboard_core::identity::audit::verify_chain;
use switchboard_core::identity::jwt::{self, AccessClaims, SigningKey, StoredKey};
use switchboard_core::identity::totp::TotpSecret;
use switchboard_core::on_database;
use switchboard_proto::v1;
use switchboard_proto::v1::auth_service_client::AuthServiceClient;
use switchboard_proto::v1::user_service_client::UserServiceClient;

use crate::support::{Account, PASSWORD, TestApp, on_both_databases};

fn now() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
}

async fn audit_actions(app: &TestApp, admin: &Account, action: &str) -> Vec<Value> {
    let (status, body) = app
        .rest(
            "GET",
            &format!("/v1/audit-events?action={action}"),
            Some(&admin.access_token),
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    body["events"].as_array().cloned().unwrap_or_default()
}

async fn a_new_user_registers_signs_in_and_chats_over_every_transport(app: &TestApp) {
    let (status, registered) = app
        .call_register(
            None,
            json!({"email": "New@Example.test", "password": PASSWORD, "displayName": "New"}),
        )
        .await;
    assert_eq!(status, 200, "{registered}");
    assert_eq!(registered["user"]["email"], "new@example.test");
    assert_eq!(registered["user"]["role"], "USER_ROLE_USER");
    assert_eq!(registered["tokenType"], "Bearer");

    // Sign in over native gRPC.
    let mut auth = AuthServiceClient::new(app.channel().await);
    let tokens = auth
        .login(v1::LoginRequest {
            email: "new@example.test".into(),
            password: PASSWORD.into(),
            totp_code: String::new(),
        })
        .await
        .expect("login over gRPC")
        .into_inner();
    let token = tokens.access_token;

    // REST: create and list.
    let (status, created) = app
        .create_conversation(Some(&token), json!({"title": "mine"}))
        .await;
    assert_eq!(status, 200, "{created}");
    let id = created["id"].as_str().unwrap().to_owned();
    // Native gRPC: read it back.
    let account = Account {
        user_id: tokens.user.unwrap().id,
        access_token: token.clone(),
        refresh_token: tokens.refresh_token,
    };
    let got = app
        .grpc_as(Some(&account))
        .await
        .get_conversation(v1::GetConversationRequest { id: id.clone() })
        .await
        .expect("GetConversation over gRPC")
        .into_inner();
    assert_eq!(got.title, "mine");
    // gRPC-Web: list as a browser would.
    let client = crate::support::client_for(Some(&token));
    let listed: v1::ListConversationsResponse = app
        .grpc_web_with(
            &client,
            "/switchboard.v1.ChatService/ListConversations",
            &v1::ListConversationsRequest::default(),
        )
        .await
        .expect("ListConversations over gRPC-Web");
    assert_eq!(listed.conversations.len(), 1);
    assert_eq!(listed.conversations[0].id, id);
    // And who am I.
    let (status, me) = app.get_me(Some(&token)).await;
    assert_eq!(
        (status, me["email"].as_str()),
        (200, Some("new@example.test"))
    );
}

async fn another_user_never_sees_the_first_users_conversations(app: &TestApp) {
    let owner = &app.owner;
    let (_, conversation) = app
        .create_conversation(Some(&owner.access_token), json!({"title": "private"}))
        .await;
    let cid = conversation["id"].as_str().unwrap().to_owned();
    let (status, sent) = app
        .rest(
            "POST",
            &format!("/v1/conversations/{cid}/messages"),
            Some(&owner.access_token),
            Some(json!({"content": "secret"})),
        )
        .await;
    assert_eq!(status, 200, "{sent}");
    let mid = sent["reply"]["id"].as_str().unwrap().to_owned();
    let other = app.account("other@example.test", Role::User).await;
    let admin = app.account("boss@example.test", Role::Admin).await;

    // Every ChatService RPC that names a conversation, over REST.
    let rest_cases = [
        (
            "GetConversation",
            "GET",
            format!("/v1/conversations/{cid}"),
            None,
        ),
        (
            "UpdateConversation",
            "PATCH",
            format!("/v1/conversations/{cid}"),
            Some(json!({"title": "mine now"})),
        ),
        (
            "DeleteConversation",
            "DELETE",
            format!("/v1/conversations/{cid}"),
            None,
        ),
        (
            "ListMessages",
            "GET",
            format!("/v1/conversations/{cid}/messages"),
            None,
        ),
        (
            "SendMessage",
            "POST",
            format!("/v1/conversations/{cid}/messages"),
            Some(json!({"content": "hi"})),
        ),
        (
            "StreamReply",
            "GET",
            format!("/v1/conversations/{cid}/messages/{mid}:stream"),
            None,
        ),
        (
            "CancelReply",
            "POST",
            format!("/v1/conversations/{cid}/messages/{mid}:cancel"),
            Some(json!({})),
        ),
        (
            "RateMessage",
            "POST",
            format!("/v1/conversations/{cid}/messages/{mid}:rate"),
            Some(json!({"rating": 1})),
        ),
    ];
    for intruder in [&other, &admin] {
        for (rpc, method, path, body) in &rest_cases {
            let (status, answer) = app
                .rest(method, path, Some(&intruder.access_token), body.clone())
                .await;
            assert_eq!(status, 404, "{rpc} over REST: {answer}");
            assert!(!answer.to_string().contains("secret"));
        }
        let (status, listed) = app.list_conversations(Some(&intruder.access_token)).await;
        assert_eq!(status, 200);
        assert!(
            !listed.to_string().contains(&cid),
            "ListConversations leaks: {listed}"
        );
    }
    // The list above covers every ChatService RPC: a new one fails here
    // until it is given an ownership case.
    let covered = [
        "GetConversation",
        "UpdateConversation",
        "DeleteConversation",
        "ListMessages",
        "SendMessage",
        "StreamReply",
        "CancelReply",
        "RateMessage",
        "ListConversations",
        "CreateConversation",
    ];
    for policy in v1::ACCESS_POLICY
        .iter()
        .filter(|p| p.method.starts_with("/switchboard.v1.ChatService/"))
    {
        let name = policy.method.rsplit('/').next().unwrap();
        assert!(covered.contains(&name), "{name} has no ownership case here");
    }

    // Native gRPC and gRPC-Web say NOT_FOUND too.
    let mut grpc = app.grpc_as(Some(&other)).await;
    let status = grpc
        .get_conversation(v1::GetConversationRequest { id: cid.clone() })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let status = grpc
        .list_messages(v1::ListMessagesRequest {
            conversation_id: cid.clone(),
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::NotFound);
    let client = crate::support::client_for(Some(&other.access_token));
    let web = app
        .grpc_web_with::<_, v1::Conversation>(
            &client,
            "/switchboard.v1.ChatService/GetConversation",
            &v1::GetConversationRequest { id: cid.clone() },
        )
        .await
        .unwrap_err();
    assert_eq!(web.0, "5", "NOT_FOUND over gRPC-Web: {web:?}");
    // The owner still has it, untouched.
    let (status, mine) = app
        .rest(
            "GET",
            &format!("/v1/conversations/{cid}"),
            Some(&owner.access_token),
            None,
        )
        .await;
    assert_eq!((status, mine["title"].as_str()), (200, Some("private")));
}

/// Signs `claims` with the server's current signing key, read from the
/// database as an attacker who stole it would not be able to; the tests use
/// it to make tokens that are valid in every way but one.
async fn sign_with_server_key(app: &TestApp, claims: &AccessClaims) -> (String, SigningKey) {
    let db = app.services().database();
    let row: (String, String, String, String) = on_database!(db, pool => {
        sqlx::query_as("SELECT kid, algorithm, private_key, public_jwk FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1")
            .fetch_one(pool)
            .await
            .unwrap()
    });
    let key = SigningKey::from_stored(&StoredKey {
        kid: row.0,
        algorithm: row.1,
        private_key: row.2,
        public_jwk: row.3,
    })
    .unwrap();
    (jwt::sign(&key, claims).unwrap(), key)
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

fn unb64(text: &str) -> Vec<u8> {
    use base64::Engine as _;
    base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(text)
        .expect("base64url")
}

/// Part `index` of a JWT (0: header, 1: claims) as JSON, unverified.
fn jwt_part(token: &str, index: usize) -> Value {
    let part = token.split('.').nth(index).expect("a JWT part");
    serde_json::from_slice(&unb64(part)).expect("JSON")
}

async fn every_forged_or_stale_credential_is_a_401_on_every_transport(app: &TestApp) {
    let owner = &app.owner;
    let good = jwt_part(&owner.access_token, 1);
    let claims = |edit: &dyn Fn(&mut AccessClaims)| {
        let mut claims = AccessClaims {
            iss: good["iss"].as_str().unwrap().into(),
            aud: good["aud"].as_str().unwrap().into(),
            sub: good["sub"].as_str().unwrap().into(),
            exp: now() + 600,
            nbf: now() - 10,
            iat: now() - 10,
            jti: "t".into(),
            sid: good["sid"].as_str().unwrap().into(),
        };
        edit(&mut claims);
        claims
    };
    // The control: a token signed like the server's is accepted.
    let (control, key) = sign_with_server_key(app, &claims(&|_| {})).await;
    let (status, _) = app.list_conversations(Some(&control)).await;
    assert_eq!(
        status, 200,
        "the control token must work, or the cases below prove nothing"
    );

    let header = |alg: &str| {
        b64(format!(r#"{{"alg":"{alg}","typ":"at+jwt","kid":"{}"}}"#, key.kid).as_bytes())
    };
    let body = b64(serde_json::to_string(&claims(&|_| {})).unwrap().as_bytes());
    let alg_none = format!("{}.{body}.", header("none"));
    let public_jwk = key.public_jwk();
    let public_bytes = unb64(public_jwk["x"].as_str().unwrap_or_default());
    let hs256 = {
        let mut h = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256);
        h.kid = Some(key.kid.clone());
        h.typ = Some("at+jwt".into());
        jsonwebtoken::encode(
            &h,
            &claims(&|_| {}),
            &jsonwebtoken::EncodingKey::from_secret(&public_bytes).unwrap(),
        )
        .unwrap()
    };
    let tampered = {
        let parts: Vec<&str> = control.split('.').collect();
        let forged = b64(
            serde_json::to_string(&claims(&|c| c.sub = "someone-else".into()))
                .unwrap()
                .as_bytes(),
        );
        format!("{}.{forged}.{}", parts[0], parts[2])
    };
    let unknown_kid = {
        let other = SigningKey::generate(key.algorithm).unwrap();
        jwt::sign(&other, &claims(&|_| {})).unwrap()
    };
    let (expired, _) = sign_with_server_key(
        app,
        &claims(&|c| {
            c.exp = now() - 120;
            c.iat = now() - 1000;
            c.nbf = now() - 1000;
        }),
    )
    .await;
    let (not_yet, _) = sign_with_server_key(app, &claims(&|c| c.nbf = now() + 600)).await;
    let (wrong_iss, _) =
        sign_with_server_key(app, &claims(&|c| c.iss = "https://evil.example".into())).await;
    let (wrong_aud, _) =
        sign_with_server_key(app, &claims(&|c| c.aud = "another-api".into())).await;

    // A revoked API key, and the token of a disabled user.
    let (_, key_created) = app
        .create_api_key(Some(&owner.access_token), json!({"name": "soon revoked"}))
        .await;
    let revoked_key = key_created["secret"].as_str().unwrap().to_owned();
    let key_id = key_created["apiKey"]["id"].as_str().unwrap();
    let (status, _) = app
        .rest(
            "DELETE",
            &format!("/v1/me/api-keys/{key_id}"),
            Some(&owner.access_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let doomed = app.account("doomed@example.test", Role::User).await;
    let admin = app.account("root@example.test", Role::Admin).await;
    let (status, _) = app
        .rest(
            "PATCH",
            &format!("/v1/users/{}", doomed.user_id),
            Some(&admin.access_token),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 200);

    let cases: Vec<(&str, Option<String>)> = vec![
        ("missing token", None),
        ("alg none", Some(alg_none)),
        ("HS256 signed with the public key", Some(hs256)),
        ("expired", Some(expired)),
        ("not yet valid", Some(not_yet)),
        ("wrong issuer", Some(wrong_iss)),
        ("wrong audience", Some(wrong_aud)),
        ("unknown kid", Some(unknown_kid)),
        ("tampered payload", Some(tampered)),
        ("revoked API key", Some(revoked_key)),
        ("disabled user", Some(doomed.access_token.clone())),
        ("garbage", Some("not.a.token".into())),
    ];
    for (name, token) in &cases {
        let (status, body) = app.list_conversations(token.as_deref()).await;
        assert_eq!(status, 401, "{name} over REST: {body}");
        let message = body["message"].as_str().unwrap();
        assert!(
            message == "sign in: this method needs a bearer token or an API key"
                || message == "the credentials are invalid, expired or revoked",
            "{name}: the refusal reveals nothing specific: {message}"
        );
        let account = token.as_ref().map(|token| Account {
            user_id: String::new(),
            access_token: token.clone(),
            refresh_token: String::new(),
        });
        let status = app
            .grpc_as(account.as_ref())
            .await
            .list_conversations(v1::ListConversationsRequest::default())
            .await
            .unwrap_err();
        assert_eq!(
            status.code(),
            tonic::Code::Unauthenticated,
            "{name} over gRPC"
        );
        let client = crate::support::client_for(token.as_deref());
        let web = app
            .grpc_web_with::<_, v1::ListConversationsResponse>(
                &client,
                "/switchboard.v1.ChatService/ListConversations",
                &v1::ListConversationsRequest::default(),
            )
            .await
            .unwrap_err();
        assert_eq!(web.0, "16", "{name} over gRPC-Web");
    }
    eprintln!("{} refused credentials x 3 transports", cases.len());
}

async fn refresh_tokens_rotate_and_a_reused_one_ends_the_session(app: &TestApp) {
    let owner = &app.owner;
    let (status, fresh) = app
        .call_refresh(None, json!({"refreshToken": owner.refresh_token}))
        .await;
    assert_eq!(status, 200, "{fresh}");
    let new_refresh = fresh["refreshToken"].as_str().unwrap();
    assert_ne!(new_refresh, owner.refresh_token, "refresh tokens rotate");
    let new_access = fresh["accessToken"].as_str().unwrap();
    let (status, _) = app.get_me(Some(new_access)).await;
    assert_eq!(status, 200);

    // Someone replays the old one: refused, and the whole session ends.
    let (status, _) = app
        .call_refresh(None, json!({"refreshToken": owner.refresh_token}))
        .await;
    assert_eq!(status, 401);
    let (status, _) = app
        .call_refresh(None, json!({"refreshToken": new_refresh}))
        .await;
    assert_eq!(
        status, 401,
        "the rotated token of a revoked session is dead too"
    );
    let (status, _) = app.get_me(Some(new_access)).await;
    assert_eq!(status, 401, "so are the session's access tokens");

    let admin = app.account("auditor@example.test", Role::Admin).await;
    let reuse = audit_actions(app, &admin, "auth.refresh_token_reuse").await;
    assert_eq!(reuse.len(), 1, "{reuse:?}");
    assert_eq!(reuse[0]["actor"], owner.user_id);
    assert_eq!(reuse[0]["outcome"], "AUDIT_OUTCOME_FAILURE");

    // Logout ends a session at once.
    let second = app.account("leaver@example.test", Role::User).await;
    let (status, _) = app
        .call_logout(None, json!({"refreshToken": second.refresh_token}))
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.get_me(Some(&second.access_token)).await;
    assert_eq!(status, 401);
}

async fn api_keys_are_shown_once_restricted_and_revocable(app: &TestApp) {
    let owner = &app.owner;
    let (status, created) = app
        .create_api_key(
            Some(&owner.access_token),
            json!({"name": "reader", "permissions": ["conversations.read"]}),
        )
        .await;
    assert_eq!(status, 200, "{created}");
    let secret = created["secret"].as_str().unwrap().to_owned();
    assert!(secret.starts_with("sbk_"));
    let (status, refused) = app
        .create_api_key(
            Some(&owner.access_token),
            json!({"name": "greedy", "permissions": ["users.read"]}),
        )
        .await;
    assert_eq!(status, 400, "a key cannot exceed its owner: {refused}");

    // As x-api-key and as a bearer token; reading works, writing does not.
    let response = app
        .anonymous
        .get(app.url("/v1/conversations"))
        .header("x-api-key", &secret)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    let (status, _) = app.list_conversations(Some(&secret)).await;
    assert_eq!(status, 200);
    let (status, _) = app
        .create_conversation(Some(&secret), json!({"title": "x"}))
        .await;
    assert_eq!(status, 403);
    // A key never mints another key, restricted or not.
    let (status, body) = app
        .create_api_key(Some(&secret), json!({"name": "child"}))
        .await;
    assert_eq!(status, 403, "{body}");

    let (_, listed) = app.list_api_keys(Some(&owner.access_token)).await;
    let keys = listed["apiKeys"].as_array().unwrap();
    assert_eq!(keys.len(), 1);
    assert!(
        keys[0]["lastUsedAt"].is_string(),
        "last use is recorded: {listed}"
    );
    assert!(
        !listed.to_string().contains(&secret),
        "the secret is never listed"
    );

    let id = keys[0]["id"].as_str().unwrap();
    let (status, _) = app
        .rest(
            "DELETE",
            &format!("/v1/me/api-keys/{id}"),
            Some(&owner.access_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.list_conversations(Some(&secret)).await;
    assert_eq!(status, 401);
    let admin = app.account("keys-auditor@example.test", Role::Admin).await;
    assert_eq!(audit_actions(app, &admin, "api_key.create").await.len(), 1);
    assert_eq!(audit_actions(app, &admin, "api_key.revoke").await.len(), 1);
}

async fn sign_in_is_throttled_and_never_tells_which_accounts_exist(app: &TestApp) {
    let login = |email: &'static str, password: &'static str| async move {
        app.call_login(None, json!({"email": email, "password": password}))
            .await
    };
    let unknown = login("nobody@example.test", "wrong password here").await;
    let wrong = login("owner@example.test", "wrong password here").await;
    assert_eq!(unknown.0, 401);
    assert_eq!(
        unknown, wrong,
        "an unknown email and a wrong password get the same answer"
    );
    for _ in 0..4 {
        assert_eq!(
            login("owner@example.test", "wrong password here").await.0,
            401
        );
    }
    // The sixth attempt on the account from this address in a minute is
    // held back, even with the right password.
    let response = app
        .anonymous
        .post(app.url("/v1/auth:login"))
        .json(&json!({"email": "owner@example.test", "password": PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status(), 429);
    let retry_after: u64 = response.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!((1..=60).contains(&retry_after));
    // Failures are audited.
    let admin = app
        .account("throttle-auditor@example.test", Role::Admin)
        .await;
    let failures: Vec<Value> = audit_actions(app, &admin, "auth.login")
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "AUDIT_OUTCOME_FAILURE")
        .collect();
    assert_eq!(failures.len(), 6, "{failures:?}");
    assert!(failures.iter().all(|e| e["clientAddress"] == "127.0.0.1"));
}

async fn admins_manage_users_and_read_an_audit_trail_that_detects_edits(app: &TestApp) {
    let admin = app.account("admin@example.test", Role::Admin).await;
    let bob = app.account("bob@example.test", Role::User).await;
    let (status, users) = app.list_users(Some(&admin.access_token)).await;
    assert_eq!(status, 200);
    assert_eq!(users["users"].as_array().unwrap().len(), 3);
    let (status, _) = app.list_users(Some(&bob.access_token)).await;
    assert_eq!(status, 403);

    let (status, promoted) = app
        .rest(
            "PATCH",
            &format!("/v1/users/{}", bob.user_id),
            Some(&admin.access_token),
            Some(json!({"role": "USER_ROLE_OPERATOR"})),
        )
        .await;
    assert_eq!(
        (status, promoted["role"].as_str()),
        (200, Some("USER_ROLE_OPERATOR"))
    );
    let (status, _) = app
        .rest(
            "GET",
            &format!("/v1/users/{}", bob.user_id),
            Some(&admin.access_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app
        .rest(
            "PATCH",
            &format!("/v1/users/{}", admin.user_id),
            Some(&admin.access_token),
            Some(json!({"disabled": true})),
        )
        .await;
    assert_eq!(status, 400, "an admin cannot disable themselves");
    let (status, _) = app
        .rest(
            "DELETE",
            &format!("/v1/users/{}", bob.user_id),
            Some(&admin.access_token),
            None,
        )
        .await;
    assert_eq!(status, 200);
    let (status, _) = app.get_me(Some(&bob.access_token)).await;
    assert_eq!(status, 401, "a deleted account's tokens die with it");

    let role_changes = audit_actions(app, &admin, "user.role_change").await;
    assert_eq!(role_changes.len(), 1);
    assert_eq!(role_changes[0]["detail"], "role user -> operator");
    assert_eq!(role_changes[0]["actor"], admin.user_id);
    assert!(!role_changes[0]["requestId"].as_str().unwrap().is_empty());
    assert_eq!(audit_actions(app, &admin, "user.read").await.len(), 1);
    assert_eq!(audit_actions(app, &admin, "user.list").await.len(), 1);
    assert_eq!(audit_actions(app, &admin, "user.delete").await.len(), 1);
    // Paging and the actor filter.
    let (_, page) = app
        .rest(
            "GET",
            &format!("/v1/audit-events?actor={}&pageSize=1", admin.user_id),
            Some(&admin.access_token),
            None,
        )
        .await;
    assert_eq!(page["events"].as_array().unwrap().len(), 1);
    let token = page["nextPageToken"].as_str().unwrap();
    assert!(!token.is_empty());
    let (_, next) = app
        .rest(
            "GET",
            &format!(
                "/v1/audit-events?actor={}&pageSize=1&pageToken={token}",
                admin.user_id
            ),
            Some(&admin.access_token),
            None,
        )
        .await;
    let seq = |page: &Value| {
        page["events"][0]["seq"]
            .as_str()
            .unwrap()
            .parse::<i64>()
            .unwrap()
    };
    assert!(seq(&next) < seq(&page), "newest first: {next} after {page}");

    // The chain is intact; then someone edits a row by hand.
    let db = app.services().database();
    let report = verify_chain(db).await.unwrap();
    assert!(report.is_intact(), "{report:?}");
    let edited: i64 = role_changes[0]["seq"].as_str().unwrap().parse().unwrap();
    let edit = "UPDATE audit_events SET detail = 'role user -> user' WHERE seq = $1";
    let refused =
        on_database!(db, pool => sqlx::query(edit).bind(edited).execute(pool).await.map(drop));
    assert!(refused.is_err(), "the database refuses to edit audit rows");
    on_database!(db, pool => {
        let bypass = match db.kind() {
            switchboard_core::db::DatabaseKind::Sqlite => "DROP TRIGGER audit_events_no_update",
            switchboard_core::db::DatabaseKind::Postgres => "ALTER TABLE audit_events DISABLE TRIGGER audit_events_no_update",
        };
        sqlx::query(bypass).execute(pool).await.unwrap();
        sqlx::query(edit).bind(edited).execute(pool).await.unwrap();
    });
    let report = verify_chain(db).await.unwrap();
    eprintln!("audit verify after a hand edit of seq {edited}: {report:?}");
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        report.problems[0].starts_with(&format!("seq {edited}: its fields do not match its hash"))
    );
}

async fn a_second_factor_guards_sign_in_and_recovery_codes_work_once(app: &TestApp) {
    let owner = &app.owner;
    let token = Some(owner.access_token.as_str());
    let (status, enrolled) = app.enroll_totp(token, json!({})).await;
    assert_eq!(status, 200, "{enrolled}");
    assert!(
        enrolled["otpauthUri"]
            .as_str()
            .unwrap()
            .starts_with("otpauth://totp/")
    );
    let secret = TotpSecret::from_base32(enrolled["secret"].as_str().unwrap()).unwrap();
    let (status, _) = app.confirm_totp(token, json!({"code": "000000"})).await;
    assert_eq!(status, 400, "a wrong code does not turn it on");
    let code = secret.code_at(now() as u64);
    let (status, confirmed) = app.confirm_totp(token, json!({"code": code})).await;
    assert_eq!(status, 200, "{confirmed}");
    let recovery: Vec<String> = confirmed["recoveryCodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c.as_str().unwrap().to_owned())
        .collect();
    assert_eq!(recovery.len(), 10);

    let login = |second: &str| {
        app.call_login(
            None,
            json!({"email": "owner@example.test", "password": PASSWORD, "totpCode": second}),
        )
    };
    let (status, body) = login("").await;
    assert_eq!(status, 401);
    assert!(body["message"].as_str().unwrap().contains("second factor"));
    let (status, _) = login(&code).await;
    assert_eq!(status, 401, "a TOTP code is never accepted twice");
    let (status, signed_in) = login(&recovery[0]).await;
    assert_eq!(status, 200, "{signed_in}");
    assert_eq!(signed_in["user"]["totpEnabled"], true);
    let (status, _) = login(&recovery[0]).await;
    assert_eq!(status, 401, "a recovery code works once");
    let (status, _) = app
        .rest(
            "POST",
            "/v1/me/totp:remove",
            token,
            Some(json!({"code": recovery[1]})),
        )
        .await;
    assert_eq!(status, 200);
}

async fn bcrypt_hashes_from_the_old_system_are_rehashed_on_sign_in(app: &TestApp) {
    let db = app.services().database();
    let hash = bcrypt::hash(PASSWORD, 4).unwrap();
    let insert = "INSERT INTO users (id, email, display_name, role, password_hash, disabled, totp_enabled, created_at, updated_at) \
                  VALUES ('01a229b8-41c2-7291-af9c-000000000001', 'legacy@example.test', '', 'user', $1, FALSE, FALSE, 0, 0)";
    on_database!(db, pool => sqlx::query(insert).bind(&hash).execute(pool).await.map(drop).unwrap());
    let (status, body) = app
        .call_login(
            None,
            json!({"email": "legacy@example.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    let stored: String = on_database!(db, pool => {
        sqlx::query_scalar("SELECT password_hash FROM users WHERE email = 'legacy@example.test'").fetch_one(pool).await.unwrap()
    });
    assert!(stored.starts_with("$argon2id$"), "{stored}");
    let (status, _) = app
        .call_login(
            None,
            json!({"email": "legacy@example.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 200, "the new hash verifies");
}

async fn rotating_the_signing_key_logs_nobody_out(app: &TestApp) {
    let before = app.owner.access_token.clone();
    let old_kid = app.services().identity().keys().signing_kid();
    let new_kid = app.services().identity().keys().rotate().await.unwrap();
    assert_ne!(old_kid, new_kid);
    let (status, _) = app.get_me(Some(&before)).await;
    assert_eq!(status, 200, "a token of the retired key still works");
    let (status, jwks) = app.rest("GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(status, 200);
    let kids: Vec<&str> = jwks["keys"]
        .as_array()
        .unwrap()
        .iter()
        .map(|k| k["kid"].as_str().unwrap())
        .collect();
    assert!(
        kids.contains(&old_kid.as_str()) && kids.contains(&new_kid.as_str()),
        "{kids:?}"
    );
    let fresh = app.account("after-rotation@example.test", Role::User).await;
    assert_eq!(jwt_part(&fresh.access_token, 0)["kid"], new_kid.as_str());
}

async fn changing_the_password_ends_every_other_session(app: &TestApp) {
    let first = &app.owner;
    let login = |password: &'static str| {
        app.call_login(
            None,
            json!({"email": "owner@example.test", "password": password}),
        )
    };
    let (status, second) = login(PASSWORD).await;
    assert_eq!(status, 200);
    let second = second["accessToken"].as_str().unwrap().to_owned();
    let change = |current: &str| {
        app.change_password(
            Some(&second),
            json!({"currentPassword": current, "newPassword": "a brand new pass phrase"}),
        )
    };
    let (status, body) = change("not my password at all").await;
    assert_eq!(status, 400, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .starts_with("current_password:")
    );
    let (status, body) = change(PASSWORD).await;
    assert_eq!(status, 200, "{body}");
    let (status, _) = app.get_me(Some(&first.access_token)).await;
    assert_eq!(status, 401, "the other session ended");
    let (status, _) = app.get_me(Some(&second)).await;
    assert_eq!(status, 200, "the calling session stays");
    assert_eq!(login(PASSWORD).await.0, 401);
    assert_eq!(login("a brand new pass phrase").await.0, 200);
}

async fn nul_characters_are_refused_alike_on_both_databases(app: &TestApp) {
    let (status, body) = app
        .call_login(
            None,
            json!({"email": "a\u{0}b@example.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 400, "{body}");
    let admin = app.account("nul-admin@example.test", Role::Admin).await;
    let (status, body) = app
        .rest("GET", "/v1/users/a%00b", Some(&admin.access_token), None)
        .await;
    assert_eq!(status, 400, "{body}");
}

async fn expired_sessions_are_purged_and_live_ones_kept(app: &TestApp) {
    let leaving = app.account("expired@example.test", Role::User).await;
    let db = app.services().database();
    let expire = "UPDATE sessions SET expires_at = 0 WHERE user_id = $1";
    on_database!(db, pool => sqlx::query(expire).bind(&leaving.user_id).execute(pool).await.map(drop).unwrap());
    let purged = app.services().identity().purge_expired().await.unwrap();
    assert_eq!(purged, 1, "only the expired session goes");
    let left: i64 = on_database!(db, pool => {
        sqlx::query_scalar("SELECT COUNT(*) FROM refresh_tokens").fetch_one(pool).await.unwrap()
    });
    assert_eq!(
        left, 1,
        "the expired session's refresh token is deleted, the owner's kept"
    );
    let (status, _) = app.get_me(Some(&leaving.access_token)).await;
    assert_eq!(status, 401);
    let (status, _) = app
        .call_refresh(None, json!({"refreshToken": leaving.refresh_token}))
        .await;
    assert_eq!(status, 401, "its refresh tokens went with it");
    let (status, _) = app.get_me(Some(&app.owner.access_token)).await;
    assert_eq!(status, 200, "a live session stays");
}

async fn api_keys_cannot_change_how_their_owner_signs_in(app: &TestApp) {
    let owner = &app.owner;
    let (status, created) = app
        .create_api_key(Some(&owner.access_token), json!({"name": "unrestricted"}))
        .await;
    assert_eq!(status, 200, "{created}");
    let key = created["secret"].as_str().unwrap().to_owned();
    // Every RPC that changes how the account signs in, called with the key.
    let cases = [
        ("/v1/me/totp:enroll", json!({})),
        ("/v1/me/totp:confirm", json!({"code": "123456"})),
        ("/v1/me/totp:remove", json!({"code": "123456"})),
        (
            "/v1/me/password:change",
            json!({"currentPassword": PASSWORD, "newPassword": "a key chose this password"}),
        ),
    ];
    for (path, body) in &cases {
        let (status, answer) = app.rest("POST", path, Some(&key), Some(body.clone())).await;
        assert_eq!(status, 403, "{path} with an API key: {answer}");
        assert!(
            answer["message"]
                .as_str()
                .unwrap()
                .contains("API keys cannot change sign-in settings"),
            "{path}: {answer}"
        );
    }
    // Native gRPC says PERMISSION_DENIED too.
    let mut auth = AuthServiceClient::with_interceptor(
        app.channel().await,
        crate::support::Bearer(Some(key.clone())),
    );
    let status = auth
        .enroll_totp(v1::EnrollTotpRequest {})
        .await
        .unwrap_err();
    assert_eq!(status.code(), tonic::Code::PermissionDenied, "{status:?}");
    // The owner still signs in with the password alone.
    let (status, me) = app
        .login_from([127, 0, 0, 1], "owner@example.test", PASSWORD)
        .await;
    assert_eq!(status, 200, "{me}");
    assert_eq!(me["user"]["totpEnabled"], false);
}

async fn an_admin_resets_a_lost_second_factor_and_it_is_audited(app: &TestApp) {
    let owner = &app.owner;
    let token = Some(owner.access_token.as_str());
    let (_, enrolled) = app.enroll_totp(token, json!({})).await;
    let secret = TotpSecret::from_base32(enrolled["secret"].as_str().unwrap()).unwrap();
    let code = secret.code_at(now() as u64);
    let (status, _) = app.confirm_totp(token, json!({"code": code})).await;
    assert_eq!(status, 200);
    let (status, _) = app
        .login_from([127, 0, 0, 1], "owner@example.test", PASSWORD)
        .await;
    assert_eq!(status, 401, "the second factor is in force");

    let admin = app.account("reset-admin@example.test", Role::Admin).await;
    let reset = format!("/v1/users/{}:resetSecondFactor", owner.user_id);
    // Not with a key, not by a user, and not on oneself.
    let (_, admin_key) = app
        .create_api_key(Some(&admin.access_token), json!({"name": "admin script"}))
        .await;
    let admin_key = admin_key["secret"].as_str().unwrap().to_owned();
    let (status, body) = app
        .rest("POST", &reset, Some(&admin_key), Some(json!({})))
        .await;
    assert_eq!(status, 403, "an admin's API key cannot reset it: {body}");
    let (status, _) = app.rest("POST", &reset, token, Some(json!({}))).await;
    assert_eq!(status, 403, "a user cannot reset it");
    let (status, body) = app
        .rest(
            "POST",
            &format!("/v1/users/{}:resetSecondFactor", admin.user_id),
            Some(&admin.access_token),
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 400, "not one's own: {body}");

    let (status, user) = app
        .rest("POST", &reset, Some(&admin.access_token), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{user}");
    assert_eq!(user["totpEnabled"], false);
    let (status, body) = app.get_me(Some(&owner.access_token)).await;
    assert_eq!(status, 401, "the account's sessions ended with it: {body}");
    let (status, body) = app
        .login_from([127, 0, 0, 1], "owner@example.test", PASSWORD)
        .await;
    assert_eq!(status, 200, "the password alone signs in again: {body}");
    let events = audit_actions(app, &admin, "totp.reset").await;
    assert_eq!(events.len(), 1, "{events:?}");
    assert_eq!(events[0]["actor"], admin.user_id);
    assert_eq!(events[0]["target"], format!("user:{}", owner.user_id));
    // Over native gRPC as well.
    let mut users = UserServiceClient::with_interceptor(
        app.channel().await,
        crate::support::Bearer(Some(admin.access_token.clone())),
    );
    let answer = users
        .reset_user_second_factor(v1::ResetUserSecondFactorRequest {
            id: owner.user_id.clone(),
        })
        .await
        .expect("ResetUserSecondFactor over gRPC")
        .into_inner();
    assert!(!answer.totp_enabled);
}

async fn a_victim_signs_in_from_a_new_address_while_another_hammers_the_account(app: &TestApp) {
    let attacker = [127, 0, 0, 2];
    // Guessing stays slow: from one address, the account's burst is five
    // attempts, then 429 — even for the right password.
    for _ in 0..5 {
        let (status, _) = app
            .login_from(attacker, "owner@example.test", "a wrong guess")
            .await;
        assert_eq!(status, 401);
    }
    for guess in ["another wrong guess", PASSWORD] {
        let (status, body) = app.login_from(attacker, "owner@example.test", guess).await;
        assert_eq!(status, 429, "{body}");
    }
    // The owner, from another address, signs in all the same.
    let (status, body) = app
        .login_from([127, 0, 0, 3], "owner@example.test", PASSWORD)
        .await;
    assert_eq!(status, 200, "the owner is not locked out: {body}");
    let admin = app
        .account("hammer-auditor@example.test", Role::Admin)
        .await;
    let refused: Vec<Value> = audit_actions(app, &admin, "auth.login")
        .await
        .into_iter()
        .filter(|e| e["outcome"] == "AUDIT_OUTCOME_FAILURE")
        .collect();
    assert_eq!(
        refused.len(),
        5,
        "throttled attempts never reach the password check"
    );
    assert!(refused.iter().all(|e| e["clientAddress"] == "127.0.0.2"));
}

async fn one_address_is_one_account_however_it_is_written(app: &TestApp) {
    // Each registration from its own address: registering is throttled
    // per address, and that is not what this test is about.
    let sources = std::sync::atomic::AtomicU8::new(10);
    let register = |email: &str| {
        let source = [
            127,
            0,
            1,
            sources.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
        ];
        app.post_from(
            source,
            "/v1/auth:register",
            json!({"email": email, "password": PASSWORD}),
        )
    };
    for email in ["josé@example.test", "mike@example.test"] {
        let (status, body) = register(email).await;
        assert_eq!(status, 200, "{email}: {body}");
    }
    let id_of = |email: &'static str| async move {
        let (status, body) = app.login_from([127, 0, 0, 1], email, PASSWORD).await;
        assert_eq!(status, 200, "{email}: {body}");
        body["user"]["id"].as_str().unwrap().to_owned()
    };
    let owner = app.owner.user_id.clone();
    let jose = id_of("josé@example.test").await;
    let mike = id_of("mike@example.test").await;
    // Variants that are the same address: registering them again is
    // ALREADY_EXISTS, and signing in with them reaches the same account.
    let same: [(&str, &str, &String); 6] = [
        ("fullwidth", "ｏｗｎｅｒ@example.test", &owner),
        ("upper case", "OWNER@Example.TEST", &owner),
        ("trailing dot", "owner@example.test.", &owner),
        ("combining accent", "jose\u{301}@example.test", &jose),
        ("dotless i", "m\u{131}ke@example.test", &mike),
        ("dotted capital I", "M\u{130}KE@example.test", &mike),
    ];
    for (variant, email, account) in same {
        let (status, body) = register(email).await;
        assert_eq!(status, 409, "{variant} {email:?}: {body}");
        let (status, body) = app.login_from([127, 0, 0, 1], email, PASSWORD).await;
        assert_eq!(status, 200, "{variant} {email:?}: {body}");
        assert_eq!(&body["user"]["id"], account.as_str(), "{variant}");
    }
    // Invisible and control characters are refused outright.
    let refused = [
        ("zero-width space", "ow\u{200b}ner@example.test"),
        ("zero-width joiner", "owner\u{200d}@example.test"),
        ("byte order mark", "\u{feff}owner@example.test"),
        ("right-to-left override", "owner@exam\u{202e}ple.test"),
        ("bell", "owner\u{7}@example.test"),
    ];
    for (variant, email) in refused {
        let (status, body) = register(email).await;
        assert_eq!(status, 400, "{variant}: {body}");
        assert!(
            body["message"].as_str().unwrap().starts_with("email:"),
            "{variant}: {body}"
        );
        let (status, body) = app.login_from([127, 0, 0, 1], email, PASSWORD).await;
        assert_eq!(status, 400, "{variant} sign-in: {body}");
    }
    let (_, users) = app
        .rest(
            "GET",
            "/v1/users",
            Some(
                &app.account("count-admin@example.test", Role::Admin)
                    .await
                    .access_token,
            ),
            None,
        )
        .await;
    assert_eq!(users["users"].as_array().unwrap().len(), 4, "{users}");
}

async fn disabling_an_account_ends_its_sessions_for_good(app: &TestApp) {
    let admin = app.account("disabler@example.test", Role::Admin).await;
    let doomed = app.account("suspended@example.test", Role::User).await;
    let path = format!("/v1/users/{}", doomed.user_id);
    let set_disabled = |disabled: bool| {
        app.rest(
            "PATCH",
            &path,
            Some(&admin.access_token),
            Some(json!({"disabled": disabled})),
        )
    };
    let refresh = || app.call_refresh(None, json!({"refreshToken": doomed.refresh_token}));
    assert_eq!(set_disabled(true).await.0, 200);
    let (status, _) = app.get_me(Some(&doomed.access_token)).await;
    assert_eq!(status, 401, "disabled: the access token is refused");
    assert_eq!(refresh().await.0, 401, "disabled: so is the refresh token");

    assert_eq!(set_disabled(false).await.0, 200);
    let (status, _) = app.get_me(Some(&doomed.access_token)).await;
    assert_eq!(
        status, 401,
        "enabled again: the old access token stays dead"
    );
    assert_eq!(refresh().await.0, 401, "and so does the old refresh token");
    let (status, body) = app
        .login_from([127, 0, 0, 1], "suspended@example.test", PASSWORD)
        .await;
    assert_eq!(status, 200, "a fresh sign-in works: {body}");
    let fresh = body["accessToken"].as_str().unwrap();
    let (status, _) = app.get_me(Some(fresh)).await;
    assert_eq!(status, 200);
}

async fn accounts_stored_before_emails_were_normalised_get_their_key_at_start(app: &TestApp) {
    // Two variants of one address, registered before normalisation (their
    // key NULL, as the migration leaves them), the fullwidth one first.
    let db = app.services().database();
    let insert = "INSERT INTO users (id, email, display_name, role, password_hash, disabled, totp_enabled, created_at, updated_at) \
                  VALUES ($1, $2, '', 'user', NULL, FALSE, FALSE, $3, $3)";
    for (id, email, at) in [
        (
            "01a229b8-41c2-7291-af9c-000000000011",
            "ｏld@example.test",
            1_i64,
        ),
        (
            "01a229b8-41c2-7291-af9c-000000000012",
            "old@example.test.",
            2_i64,
        ),
    ] {
        on_database!(db, pool => sqlx::query(insert).bind(id).bind(email).bind(at).execute(pool).await.map(drop).unwrap());
    }
    // A restart fills the keys in.
    switchboard_core::identity::Identity::start(
        db.clone(),
        &switchboard_core::config::AuthConfig::default(),
    )
    .await
    .unwrap();
    let keys: Vec<(String, Option<String>)> = on_database!(db, pool => {
        sqlx::query_as("SELECT id, email_key FROM users WHERE id LIKE '01a229b8-41c2-7291-af9c-0000000000%' ORDER BY id")
            .fetch_all(pool)
            .await
            .unwrap()
    });
    assert_eq!(
        keys,
        [
            (
                "01a229b8-41c2-7291-af9c-000000000011".to_owned(),
                Some("old@example.test".to_owned())
            ),
            // The later variant cannot take the key the first one holds.
            ("01a229b8-41c2-7291-af9c-000000000012".to_owned(), None),
        ]
    );
    let (status, body) = app
        .post_from(
            [127, 0, 0, 1],
            "/v1/auth:register",
            json!({"email": "OLD@example.test", "password": PASSWORD}),
        )
        .await;
    assert_eq!(status, 409, "{body}");
}

on_both_databases!(
    accounts_stored_before_emails_were_normalised_get_their_key_at_start,
    api_keys_cannot_change_how_their_owner_signs_in,
    an_admin_resets_a_lost_second_factor_and_it_is_audited,
    a_victim_signs_in_from_a_new_address_while_another_hammers_the_account,
    one_address_is_one_account_however_it_is_written,
    disabling_an_account_ends_its_sessions_for_good,
    expired_sessions_are_purged_and_live_ones_kept,
    signing_keys_survive_a_restart,
    nul_characters_are_refused_alike_on_both_databases,
    changing_the_password_ends_every_other_session,
    a_new_user_registers_signs_in_and_chats_over_every_transport,
    another_user_never_sees_the_first_users_conversations,
    every_forged_or_stale_credential_is_a_401_on_every_transport,
    refresh_tokens_rotate_and_a_reused_one_ends_the_session,
    api_keys_are_shown_once_restricted_and_revocable,
    sign_in_is_throttled_and_never_tells_which_accounts_exist,
    admins_manage_users_and_read_an_audit_trail_that_detects_edits,
    a_second_factor_guards_sign_in_and_recovery_codes_work_once,
    bcrypt_hashes_from_the_old_system_are_rehashed_on_sign_in,
    rotating_the_signing_key_logs_nobody_out,
);

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_admin_without_a_required_second_factor_may_only_manage_their_account() {
    let app = crate::support::spawn_app_with(crate::support::Backend::Sqlite, |config| {
        config.auth.require_totp_for_admins = true;
    })
    .await;
    let admin = app.account("strict@example.test", Role::Admin).await;
    let (status, _) = app.list_users(Some(&admin.access_token)).await;
    assert_eq!(status, 403);
    let (status, _) = app.get_me(Some(&admin.access_token)).await;
    assert_eq!(status, 200);
    let (status, _) = app.enroll_totp(Some(&admin.access_token), json!({})).await;
    assert_eq!(status, 200);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_forwarded_address_is_the_callers() {
    let app = crate::support::spawn_app_with(crate::support::Backend::Sqlite, |config| {
        config.trusted_proxies = vec!["127.0.0.1".into()];
    })
    .await;
    let login = |forwarded: &'static str| {
        app.anonymous
            .post(app.url("/v1/auth:login"))
            .header("x-forwarded-for", forwarded)
            .json(&json!({"email": "nobody@example.test", "password": "wrong password here"}))
            .send()
    };
    assert_eq!(login("198.51.100.7").await.unwrap().status(), 401);
    let admin = app.account("proxy-admin@example.test", Role::Admin).await;
    let events = audit_actions(&app, &admin, "auth.login").await;
    let failure = events
        .iter()
        .find(|e| e["outcome"] == "AUDIT_OUTCOME_FAILURE")
        .expect("the failed sign-in is audited");
    assert_eq!(failure["clientAddress"], "198.51.100.7");
    app.stop().await;
}

async fn signing_keys_survive_a_restart(app: &TestApp) {
    // A second identity service over the same database, as after a restart
    // or on another instance: the same key signs, and today's tokens verify.
    let config = switchboard_core::config::AuthConfig::default();
    let restarted =
        switchboard_core::identity::Identity::start(app.services().database().clone(), &config)
            .await
            .unwrap();
    assert_eq!(
        restarted.keys().signing_kid(),
        app.services().identity().keys().signing_kid()
    );
    let principal = restarted
        .authenticate(&app.owner.access_token)
        .await
        .unwrap()
        .expect("a token of the first start verifies after the restart");
    assert_eq!(principal.user_id, app.owner.user_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rs256_signs_when_configured() {
    let app = crate::support::spawn_app_with(crate::support::Backend::Sqlite, |config| {
        config.auth.signing_algorithm = "RS256".into();
    })
    .await;
    assert_eq!(jwt_part(&app.owner.access_token, 0)["alg"], "RS256");
    let (status, _) = app.get_me(Some(&app.owner.access_token)).await;
    assert_eq!(status, 200);
    let (_, jwks) = app.rest("GET", "/.well-known/jwks.json", None, None).await;
    assert_eq!(jwks["keys"][0]["kty"], "RSA");
    assert!(
        jwks["keys"][0].get("d").is_none(),
        "no private part is published"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn guesses_spread_over_many_addresses_still_meet_the_accounts_ceiling() {
    let app = crate::support::spawn_app_with(crate::support::Backend::Sqlite, |config| {
        config.auth.login_attempts_per_account = 2;
        config.auth.login_attempts_per_account_ceiling = 5;
    })
    .await;
    // Two guesses from each of three addresses: the sixth guess on the
    // account meets its ceiling, though its address has tried only once.
    // (Every attempt counts, whether the account exists or not.)
    let mut answers = Vec::new();
    for last in [2, 3, 4] {
        for _ in 0..2 {
            let (status, _) = app
                .login_from([127, 0, 0, last], "target@example.test", "a wrong guess")
                .await;
            answers.push(status);
        }
    }
    assert_eq!(answers, [401, 401, 401, 401, 401, 429], "{answers:?}");
    // Another account is not affected by this one's ceiling.
    let (status, _) = app
        .login_from([127, 0, 0, 5], "nobody@example.test", "a wrong guess")
        .await;
    assert_eq!(status, 401);
    app.stop().await;
}
