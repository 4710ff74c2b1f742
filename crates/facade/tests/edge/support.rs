//! `spawn_app`: a server on 127.0.0.1:0 with a fresh database, a signed-in
//! account whose token every client sends by default, and the clients of
//! every transport. PostgreSQL is reached at
//! `SWITCHBOARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test gets its own
//! database, dropped afterwards. An unreachable PostgreSQL fails the tests
//! loudly: they are never skipped.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use switchboard_app::Services;
use switchboard_core::config::{Config, EngineConfig, Secret};
use switchboard_core::identity::{RequestContext, Role};
use switchboard_proto::v1::chat_service_client::ChatServiceClient;
use switchboard_testkit::ThrowawayPostgres;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::service::interceptor::InterceptedService;

/// Runs each scenario `async fn name(app: TestApp)` on SQLite and on
/// PostgreSQL; `configured by f;` first lets `f(&mut Config)` change the
/// configuration of each server.
macro_rules! on_both_databases {
    (configured by $configure:ident; $($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::support::spawn_app_with($crate::support::Backend::Sqlite, super::$configure).await;
                    super::$name(&app).await;
                    app.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::support::spawn_app_with($crate::support::Backend::Postgres, super::$configure).await;
                    super::$name(&app).await;
                    app.stop().await;
                }
            )*
        }
    };
    ($($name:ident),* $(,)?) => {
        mod sqlite {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::support::spawn_app($crate::support::Backend::Sqlite).await;
                    super::$name(&app).await;
                    app.stop().await;
                }
            )*
        }
        mod postgres {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    let app = $crate::support::spawn_app($crate::support::Backend::Postgres).await;
                    super::$name(&app).await;
                    app.stop().await;
                }
            )*
        }
    };
}
pub(crate) use on_both_databases;

/// Which database a test runs on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// The password of every account the tests create.
pub(crate) const PASSWORD: &str = "correct horse battery staple";

/// A signed-in account.
#[derive(Debug, Clone)]
pub(crate) struct Account {
    pub(crate) user_id: String,
    pub(crate) access_token: String,
    pub(crate) refresh_token: String,
}

/// Sends the account's bearer token on every native gRPC call.
#[derive(Debug, Clone)]
pub(crate) struct Bearer(pub(crate) Option<String>);

impl tonic::service::Interceptor for Bearer {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        if let Some(token) = &self.0 {
            let value = format!("Bearer {token}").parse().expect("an ASCII token");
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

/// A running server and what it takes to call and stop it.
pub(crate) struct TestApp {
    pub(crate) address: SocketAddr,
    /// A client that sends `owner`'s token on every request.
    pub(crate) http: reqwest::Client,
    /// A client that sends no credentials.
    pub(crate) anonymous: reqwest::Client,
    /// The account every default client acts as.
    pub(crate) owner: Account,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    services: Option<Services>,
    _data_dir: tempfile::TempDir,
    postgres: Option<ThrowawayPostgres>,
}

/// Starts a server with a fresh database and a dev engine that waits
/// `token_delay_ms` between tokens.
pub(crate) async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with_delay(backend, 5).await
}

pub(crate) async fn spawn_app_with_delay(backend: Backend, token_delay_ms: u64) -> TestApp {
    spawn_app_with(backend, |config| {
        config.engine.token_delay_ms = token_delay_ms
    })
    .await
}

/// Starts a server with a fresh database and the configuration `configure`
/// leaves.
pub(crate) async fn spawn_app_with(
    backend: Backend,
    configure: impl FnOnce(&mut Config),
) -> TestApp {
    spawn_app_running(backend, configure, true).await
}

/// Like [`spawn_app_with`]; without job workers when `workers` is false
/// (jobs then stay queued).
pub(crate) async fn spawn_app_running(
    backend: Backend,
    configure: impl FnOnce(&mut Config),
    workers: bool,
) -> TestApp {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
    let token_delay_ms = 5;
    let mut config = Config {
        data_dir: data_dir.path().to_owned(),
        engine: EngineConfig {
            token_delay_ms,
            ..EngineConfig::default()
        },
        cors_allowed_origins: vec!["http://localhost:3000".into()],
        ..Config::default()
    };
    let postgres = match backend {
        Backend::Sqlite => None,
        Backend::Postgres => {
            let database = ThrowawayPostgres::create().await;
            config.database_url = Some(Secret::new(database.url().to_owned()));
            Some(database)
        }
    };
    configure(&mut config);
    let startup = switchboard_app::Startup {
        workers,
        engine: None,
    };
    let services = Services::start_with(&config, startup)
        .await
        .expect("services start");
    let owner = sign_in_new(&services, "owner@example.test", Role::User).await;
    let edge = switchboard_facade::Edge::new(&services, &config);
    let drain = edge.drain.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let address = listener.local_addr().expect("a local address");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(switchboard_facade::serve(
        listener,
        switchboard_facade::app(edge),
        drain.clone(),
        // The configured grace, but at most 10 s, so a test that leaves a
        // stream open does not wait out the 30 s default.
        Duration::from_secs(config.shutdown_grace_secs.min(10)),
    ));
    tokio::spawn(async move {
        let _ = stopped.await;
        drain.begin();
    });
    TestApp {
        address,
        http: client_for(Some(&owner.access_token)),
        anonymous: client_for(None),
        owner,
        stop: Some(stop),
        server: Some(server),
        services: Some(services),
        _data_dir: data_dir,
        postgres,
    }
}

/// An HTTP client (HTTP/1.1, or h2c with prior knowledge when `h2`) that
/// sends `token` as a bearer token on every request.
pub(crate) fn client_for(token: Option<&str>) -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    if let Some(token) = token {
        headers.insert(
            reqwest::header::AUTHORIZATION,
            format!("Bearer {token}").parse().expect("an ASCII token"),
        );
    }
    reqwest::Client::builder()
        .default_headers(headers)
        .build()
        .expect("a reqwest client")
}

/// An HTTP client without credentials whose connections leave from
/// `source` (any address of 127.0.0.0/8 works on loopback), so the server
/// sees a different client address through the same mechanism it uses in
/// production: the TCP peer, not a header.
pub(crate) fn client_from(source: std::net::IpAddr) -> reqwest::Client {
    reqwest::Client::builder()
        .local_address(source)
        .build()
        .expect("a reqwest client")
}

/// Creates an account with `role` in the domain (as `switchboard user
/// create` does) and signs it in.
pub(crate) async fn sign_in_new(services: &Services, email: &str, role: Role) -> Account {
    let identity = services.identity();
    let user = identity
        .create_user(email, PASSWORD, role)
        .await
        .expect("create the account");
    let context = RequestContext {
        client_address: format!("test-{}", user.id),
        ..RequestContext::default()
    };
    let tokens = identity
        .login(&context, email, PASSWORD, "")
        .await
        .expect("sign in");
    Account {
        user_id: user.id,
        access_token: tokens.access_token,
        refresh_token: tokens.refresh_token,
    }
}

impl TestApp {
    pub(crate) fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.address)
    }

    /// GETs `path` and returns its JSON body, whatever the status.
    pub(crate) async fn get_json(&self, path: &str) -> serde_json::Value {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// GETs `path` and returns its body as text, whatever the status.
    pub(crate) async fn get_text(&self, path: &str) -> String {
        self.http
            .get(self.url(path))
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    }

    /// POSTs `body` as JSON to `path`, checks the answer is 200, and returns its JSON.
    pub(crate) async fn post_json(&self, path: &str, body: serde_json::Value) -> serde_json::Value {
        let response = self
            .http
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(response.status(), 200, "POST {path}");
        response.json().await.unwrap()
    }

    /// Calls `method path` over REST with `token` as the bearer token (none:
    /// anonymous) and a JSON `body`; returns the status and the JSON body
    /// (`null` when empty).
    pub(crate) async fn rest(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<serde_json::Value>,
    ) -> (u16, serde_json::Value) {
        let method = reqwest::Method::from_bytes(method.as_bytes()).expect("an HTTP method");
        let mut request = self.anonymous.request(method, self.url(path));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(&body);
        }
        let response = request.send().await.expect("the request is sent");
        let status = response.status().as_u16();
        let text = response.text().await.expect("a body");
        let json = if text.is_empty() {
            serde_json::Value::Null
        } else {
            serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"))
        };
        (status, json)
    }

    // One typed call per RPC over REST, for tests that need the RPC done (its
    // method and path written once); each answers the status and the JSON body.

    /// GetMe (`GET /v1/me`), as `token`.
    pub(crate) async fn get_me(&self, token: Option<&str>) -> (u16, serde_json::Value) {
        self.rest("GET", "/v1/me", token, None).await
    }

    /// ListConversations (`GET /v1/conversations`), as `token`.
    pub(crate) async fn list_conversations(&self, token: Option<&str>) -> (u16, serde_json::Value) {
        self.rest("GET", "/v1/conversations", token, None).await
    }

    /// ListUsers (`GET /v1/users`), as `token`.
    pub(crate) async fn list_users(&self, token: Option<&str>) -> (u16, serde_json::Value) {
        self.rest("GET", "/v1/users", token, None).await
    }

    /// ListApiKeys (`GET /v1/me/api-keys`), as `token`.
    pub(crate) async fn list_api_keys(&self, token: Option<&str>) -> (u16, serde_json::Value) {
        self.rest("GET", "/v1/me/api-keys", token, None).await
    }

    /// CreateApiKey (`POST /v1/me/api-keys`) with `request`, as `token`.
    pub(crate) async fn create_api_key(
        &self,
        token: Option<&str>,
        request: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.rest("POST", "/v1/me/api-keys", token, Some(request))
            .await
    }

    /// Login (`POST /v1/auth:login`) with `request`, as `token`.
    pub(crate) async fn call_login(
        &self,
        token: Option<&str>,
        request: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.rest("POST", "/v1/auth:login", token, Some(request))
            .await
    }

    /// CreateConversation (`POST /v1/conversations`) with `request`, as `token`.
    pub(crate) async fn create_conversation(
        &self,
        token: Option<&str>,
        request: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.rest("POST", "/v1/conversations", token, Some(request))
            .await
    }

    /// Refresh (`POST /v1/auth:refresh`) with `request`, as `token`.
    pub(crate) async fn call_refresh(
        &self,
        token: Option<&str>,
        request: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.rest("POST", "/v1/auth:refresh", token, Some(request))
            .await
    }

    /// Logout (`POST /v1/auth:logout`) with `request`, as `token`.
    pub(crate) async fn call_logout(
        &self,
        token: Option<&str>,
        request: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.rest("POST", "/v1/auth:logout", token, Some(request))
            .await
    }

    /// EnrollTotp (`POST /v1/me/totp:enroll`) with `request`, as `token`.
    pub(crate) async fn enroll_totp(
        &self,
        token: Option<&str>,
        request: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.rest("POST", "/v1/me/totp:enroll", token, Some(request))
            .await
    }

    /// ConfirmTotp (`POST /v1/me/totp:confirm`) with `request`, as `token`.
    pub(crate) async fn confirm_totp(
        &self,
        token: Option<&str>,
        request: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.rest("POST", "/v1/me/totp:confirm", token, Some(request))
            .await
    }

    /// Register (`POST /v1/auth:register`) with `request`, as `token`.
    pub(crate) async fn call_register(
        &self,
        token: Option<&str>,
        request: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.rest("POST", "/v1/auth:register", token, Some(request))
            .await
    }

    /// ChangePassword (`POST /v1/me/password:change`) with `request`, as `token`.
    pub(crate) async fn change_password(
        &self,
        token: Option<&str>,
        request: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        self.rest("POST", "/v1/me/password:change", token, Some(request))
            .await
    }

    /// POSTs `body` as JSON to `path` without credentials from the
    /// loopback address `source`; returns the status and the JSON body.
    pub(crate) async fn post_from(
        &self,
        source: [u8; 4],
        path: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let response = client_from(std::net::IpAddr::from(source))
            .post(self.url(path))
            .json(&body)
            .send()
            .await
            .expect("the request is sent");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or_default())
    }

    /// Signs in over REST as `email` with `password` from the loopback
    /// address `source`; returns the status and the JSON body.
    pub(crate) async fn login_from(
        &self,
        source: [u8; 4],
        email: &str,
        password: &str,
    ) -> (u16, serde_json::Value) {
        self.post_from(
            source,
            "/v1/auth:login",
            serde_json::json!({"email": email, "password": password}),
        )
        .await
    }

    /// The running domain services.
    pub(crate) fn services(&self) -> &Services {
        self.services.as_ref().expect("the services run until stop")
    }

    /// A new account with `role`, signed in.
    pub(crate) async fn account(&self, email: &str, role: Role) -> Account {
        sign_in_new(self.services(), email, role).await
    }

    /// A gRPC channel over h2c.
    pub(crate) async fn channel(&self) -> tonic::transport::Channel {
        tonic::transport::Endpoint::from_shared(self.url(""))
            .expect("a valid URL")
            .connect()
            .await
            .expect("a gRPC connection")
    }

    /// A native gRPC ChatService client over h2c, signed in as `owner`.
    pub(crate) async fn grpc(
        &self,
    ) -> ChatServiceClient<InterceptedService<tonic::transport::Channel, Bearer>> {
        self.grpc_as(Some(&self.owner)).await
    }

    /// A native gRPC ChatService client over h2c, signed in as `account`
    /// (`None`: no credentials).
    pub(crate) async fn grpc_as(
        &self,
        account: Option<&Account>,
    ) -> ChatServiceClient<InterceptedService<tonic::transport::Channel, Bearer>> {
        ChatServiceClient::with_interceptor(
            self.channel().await,
            Bearer(account.map(|a| a.access_token.clone())),
        )
    }

    /// Calls a unary method over gRPC-Web (binary, HTTP/1.1), as a browser
    /// would, signed in as `owner`.
    pub(crate) async fn grpc_web<Req: prost::Message, Res: prost::Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Res, (String, String)> {
        self.grpc_web_with(&self.http, method, request).await
    }

    /// Calls a unary method over gRPC-Web with `client` (and its default
    /// credentials).
    pub(crate) async fn grpc_web_with<Req: prost::Message, Res: prost::Message + Default>(
        &self,
        client: &reqwest::Client,
        method: &str,
        request: &Req,
    ) -> Result<Res, (String, String)> {
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_u32(request.encoded_len() as u32);
        request
            .encode(&mut body)
            .expect("encoding into a growable buffer");
        let response = client
            .post(self.url(method))
            .header("content-type", "application/grpc-web+proto")
            .header("x-grpc-web", "1")
            .body(body.freeze())
            .send()
            .await
            .expect("the gRPC-Web request is sent");
        assert_eq!(
            response.status(),
            200,
            "gRPC-Web answers 200 and puts the status in trailers"
        );
        // A trailers-only response (an error before any message) carries the
        // status in the HTTP headers instead.
        let header = |name: &str| {
            response
                .headers()
                .get(name)
                .map(|value| value.to_str().unwrap_or_default().to_owned())
        };
        if let Some(code) = header("grpc-status") {
            let message = header("grpc-message").unwrap_or_default();
            return if code == "0" {
                Err((code, "no message".into()))
            } else {
                Err((code, message))
            };
        }
        let mut bytes: Bytes = response.bytes().await.expect("a body");
        let mut message = None;
        let mut trailers = String::new();
        while bytes.remaining() >= 5 {
            let flag = bytes.get_u8();
            let length = bytes.get_u32() as usize;
            let frame = bytes.split_to(length);
            if flag & 0x80 == 0 {
                message = Some(Res::decode(frame).expect("a well-formed message"));
            } else {
                trailers = String::from_utf8_lossy(&frame).into_owned();
            }
        }
        let trailer = |name: &str| {
            trailers
                .lines()
                .find_map(|line| line.strip_prefix(&format!("{name}:")))
                .map(|value| value.trim().to_owned())
                .unwrap_or_default()
        };
        match trailer("grpc-status").as_str() {
            "0" => Ok(message.expect("a message with status 0")),
            code => Err((code.to_owned(), trailer("grpc-message"))),
        }
    }

    /// Tells the server to stop taking connections, as SIGTERM does, and
    /// returns at once; open requests go on.
    pub(crate) fn begin_shutdown(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
    }

    /// Stops the server the way SIGTERM does and waits for it to drain,
    /// then drops the PostgreSQL database.
    pub(crate) async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(server) = self.server.take() {
            server
                .await
                .expect("the server task")
                .expect("the server stops cleanly");
        }
        if let Some(services) = self.services.take() {
            services.shutdown().await;
        }
        if let Some(database) = self.postgres.take() {
            database.remove().await.expect("drop the test database");
        }
    }
}
