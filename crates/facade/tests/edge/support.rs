//! `spawn_app`: a server on 127.0.0.1:0 with a fresh database, and the
//! clients of every transport. PostgreSQL is reached at
//! `SWITCHBOARD_TEST_POSTGRES_URL` (default
//! `postgres://postgres@127.0.0.1:5432/postgres`); each test gets its own
//! database, dropped afterwards. An unreachable PostgreSQL fails the tests
//! loudly: they are never skipped.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use sqlx::Connection as _;
use switchboard_core::Services;
use switchboard_core::config::{Config, EngineConfig, Secret};
use switchboard_proto::v1::chat_service_client::ChatServiceClient;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// Runs each scenario `async fn name(app: TestApp)` on SQLite and on PostgreSQL.
macro_rules! on_both_databases {
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

const DEFAULT_POSTGRES_URL: &str = "postgres://postgres@127.0.0.1:5432/postgres";

/// Which database a test runs on.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Backend {
    Sqlite,
    Postgres,
}

/// A running server and what it takes to call and stop it.
pub(crate) struct TestApp {
    pub(crate) address: SocketAddr,
    pub(crate) http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    server: Option<JoinHandle<std::io::Result<()>>>,
    services: Option<Services>,
    _data_dir: tempfile::TempDir,
    postgres: Option<(String, String)>,
}

/// Starts a server with a fresh database and a dev engine that waits
/// `token_delay_ms` between tokens.
pub(crate) async fn spawn_app(backend: Backend) -> TestApp {
    spawn_app_with_delay(backend, 5).await
}

pub(crate) async fn spawn_app_with_delay(backend: Backend, token_delay_ms: u64) -> TestApp {
    let data_dir = tempfile::tempdir().expect("a temporary directory");
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
            let (url, name) = create_postgres_database().await;
            config.database_url = Some(Secret::new(url.clone()));
            Some((admin_url(), name))
        }
    };
    let services = Services::start(&config).await.expect("services start");
    let edge = switchboard_facade::Edge::new(services.chat(), services.database().clone(), &config);
    let drain = edge.drain.clone();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind port 0");
    let address = listener.local_addr().expect("a local address");
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(switchboard_facade::serve(
        listener,
        switchboard_facade::app(edge),
        async move {
            let _ = stopped.await;
            drain.begin();
        },
        Duration::from_secs(10),
    ));
    TestApp {
        address,
        http: reqwest::Client::new(),
        stop: Some(stop),
        server: Some(server),
        services: Some(services),
        _data_dir: data_dir,
        postgres,
    }
}

fn admin_url() -> String {
    std::env::var("SWITCHBOARD_TEST_POSTGRES_URL")
        .unwrap_or_else(|_| DEFAULT_POSTGRES_URL.to_owned())
}

async fn create_postgres_database() -> (String, String) {
    let admin = admin_url();
    let mut connection = sqlx::PgConnection::connect(&admin).await.unwrap_or_else(|error| {
        panic!(
            "\n\n*** PostgreSQL is not reachable at {admin}: {error}\n\
             *** These tests need the real PostgreSQL server and are never skipped:\n\
             *** start it (pg_ctlcluster <version> main start) or set SWITCHBOARD_TEST_POSTGRES_URL.\n\n"
        )
    });
    let name = format!("sb_edge_{}", uuid::Uuid::now_v7().simple());
    sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
        .execute(&mut connection)
        .await
        .expect("create the test database");
    let _ = connection.close().await;
    let base = admin
        .rsplit_once('/')
        .map_or(admin.as_str(), |(base, _)| base);
    (format!("{base}/{name}"), name)
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

    /// A native gRPC client over h2c.
    pub(crate) async fn grpc(&self) -> ChatServiceClient<tonic::transport::Channel> {
        ChatServiceClient::connect(self.url(""))
            .await
            .expect("a gRPC connection")
    }

    /// Calls a unary method over gRPC-Web (binary, HTTP/1.1), as a browser would.
    pub(crate) async fn grpc_web<Req: prost::Message, Res: prost::Message + Default>(
        &self,
        method: &str,
        request: &Req,
    ) -> Result<Res, (String, String)> {
        let mut body = BytesMut::new();
        body.put_u8(0);
        body.put_u32(request.encoded_len() as u32);
        request
            .encode(&mut body)
            .expect("encoding into a growable buffer");
        let response = self
            .http
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
        if let Some((admin, name)) = self.postgres.take() {
            let mut connection = sqlx::PgConnection::connect(&admin)
                .await
                .expect("PostgreSQL");
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
            )))
            .execute(&mut connection)
            .await
            .expect("drop the test database");
        }
    }
}
