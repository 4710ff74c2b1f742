//! The `switchboard` binary: parses the command line, loads the
//! configuration, sets up logging, and runs one of `serve`, `worker`,
//! `migrate`, `user create`, `audit verify`, `keys rotate`, `openapi` or
//! `probe`. Everything else lives in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

mod ecs;
mod probe;
mod telemetry;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use switchboard_app::Services;
use switchboard_app::Startup;
use switchboard_core::config::Config;
use switchboard_core::db::Database;
use switchboard_core::identity::{Identity, Role};

/// Switchboard: a backend for chatbot products. One port serves native gRPC,
/// gRPC-Web and REST/JSON, all generated from the protobuf definitions.
///
/// Configuration comes from defaults, then a TOML file, then environment
/// variables (SWITCHBOARD_*, and DATABASE_URL), then these flags. Every key
/// is listed in the README.
#[derive(Debug, Parser)]
#[command(name = "switchboard", version, about, long_about)]
struct Cli {
    /// A TOML configuration file. Without it, ./switchboard.toml is read if it exists.
    #[arg(long, global = true, env = "SWITCHBOARD_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Start the server: migrate the database, then serve gRPC, gRPC-Web,
    /// REST, Swagger UI (/docs), health (/healthz, /readyz) and reflection on
    /// one port until SIGTERM or SIGINT, then drain open requests and exit.
    Serve {
        /// The address to listen on [config `listen`, env SWITCHBOARD_LISTEN; default 127.0.0.1:8080].
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
        /// The directory of local state, such as the SQLite database [config `data_dir`, env SWITCHBOARD_DATA_DIR; default ./data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Serve the API only: run no job workers or scheduled jobs in this
        /// process (run `switchboard worker` processes for them).
        #[arg(long)]
        no_workers: bool,
    },
    /// Run job workers and the scheduled jobs, without the API: generate
    /// replies from the queue until SIGTERM or SIGINT, then finish the jobs
    /// in progress (up to `shutdown_grace_secs`) and exit.
    Worker {
        /// The directory of local state [config `data_dir`, env SWITCHBOARD_DATA_DIR; default ./data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
        /// Serve /healthz, /readyz and /metrics on this address (none by default).
        #[arg(long, value_name = "ADDR")]
        listen: Option<SocketAddr>,
    },
    /// Create the database if needed, apply pending migrations, and exit.
    Migrate {
        /// The directory of local state [config `data_dir`, env SWITCHBOARD_DATA_DIR; default ./data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Manage accounts.
    #[command(subcommand)]
    User(UserCommand),
    /// Check the audit trail.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Manage the keys that sign access tokens.
    #[command(subcommand)]
    Keys(KeysCommand),
    /// Print the OpenAPI 3.1 document of the REST API to standard output.
    Openapi,
    /// Synthetic monitoring: check /readyz, then run a whole chat turn over
    /// REST (the reply as Server-Sent Events) and over native gRPC with a
    /// probe account's API key, and delete the conversation. Prints each
    /// step's latency; exits 1 naming the step that failed. With --every it
    /// probes for ever and serves its own metrics at --listen.
    Probe {
        /// The server's base URL, such as http://127.0.0.1:8080.
        url: String,
        /// The probe account's API key (sent as a bearer token); an argument
        /// shows in `ps`, so prefer the variable.
        #[arg(long, env = "SWITCHBOARD_PROBE_API_KEY", hide_env_values = true)]
        api_key: String,
        /// The longest one step may take, such as 10s or 500ms.
        #[arg(long, default_value = "10s", value_parser = probe::parse_duration)]
        timeout: Duration,
        /// Probe for ever, this often (such as 30s), instead of once.
        #[arg(long, value_parser = probe::parse_duration)]
        every: Option<Duration>,
        /// With --every: serve the probe's Prometheus metrics at ADDR/metrics.
        #[arg(long, value_name = "ADDR", requires = "every")]
        listen: Option<SocketAddr>,
    },
}

#[derive(Debug, Subcommand)]
enum UserCommand {
    /// Create an account, such as the first administrator. The password is
    /// read from SWITCHBOARD_USER_PASSWORD, or else asked for at the
    /// terminal; it is never taken as an argument (arguments show in `ps`).
    Create {
        /// The account's sign-in email.
        #[arg(long)]
        email: String,
        /// The account's role: user, operator or admin.
        #[arg(long, default_value = "user")]
        role: String,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCommand {
    /// Walk the hash chain of the audit trail and report any event that was
    /// edited, deleted or cut off the end. Exits 1 if the chain is broken.
    Verify,
}

#[derive(Debug, Subcommand)]
enum KeysCommand {
    /// Add a new signing key and retire the others. Tokens signed by the
    /// retired keys stay valid until they expire; running servers pick the
    /// new key up when they first meet a token signed with it.
    Rotate,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        print!("{}", switchboard_proto::OPENAPI_JSON);
        return Ok(());
    }
    if let Command::Probe {
        url,
        api_key,
        timeout,
        every,
        listen,
    } = cli.command
    {
        // The probe runs anywhere: it reads no configuration.
        return probe::run(probe::ProbeOptions {
            url,
            api_key,
            timeout,
            every,
            listen,
        })
        .await;
    }
    let config = Config::load(cli.config.as_deref())?;
    let result = match cli.command {
        Command::Serve {
            listen,
            data_dir,
            no_workers,
        } => serve(config.with_overrides(listen, data_dir), !no_workers).await,
        Command::Worker { data_dir, listen } => {
            worker(config.with_overrides(None, data_dir), listen).await
        }
        Command::Migrate { data_dir } => migrate(config.with_overrides(None, data_dir)).await,
        Command::User(UserCommand::Create { email, role }) => {
            create_user(config, &email, &role).await
        }
        Command::Audit(AuditCommand::Verify) => verify_audit(config).await,
        Command::Keys(KeysCommand::Rotate) => rotate_keys(config).await,
        Command::Openapi | Command::Probe { .. } => {
            unreachable!("handled before the configuration is loaded")
        }
    };
    telemetry::flush_logs();
    result
}

/// The database, migrated, and the identity domain over it, for the
/// administrative commands (no server, no reply workers).
async fn identity(config: &Config) -> anyhow::Result<Identity> {
    let database = Database::connect(config)
        .await
        .context("cannot connect to the database")?;
    database.migrate().await.context("migration failed")?;
    Identity::start(database, &config.auth)
        .await
        .context("cannot load the identity service")
}

async fn create_user(config: Config, email: &str, role: &str) -> anyhow::Result<()> {
    telemetry::init_logs(&config)?;
    let role: Role = role
        .parse()
        .map_err(|e: switchboard_core::Error| anyhow::anyhow!("{e}"))?;
    let password = match std::env::var("SWITCHBOARD_USER_PASSWORD") {
        Ok(password) => password,
        Err(_) => {
            let password = rpassword::prompt_password(format!("Password for {email}: "))
                .context("cannot read the password (set SWITCHBOARD_USER_PASSWORD when there is no terminal)")?;
            let again = rpassword::prompt_password("Again: ")?;
            anyhow::ensure!(password == again, "the passwords differ");
            password
        }
    };
    let identity = identity(&config).await?;
    let user = identity
        .create_user(email, &password, role)
        .await
        .map_err(|e| anyhow::anyhow!("{}", e.public_message()))?;
    println!(
        "created {} ({}) with role {}",
        user.email, user.id, user.role
    );
    Ok(())
}

async fn verify_audit(config: Config) -> anyhow::Result<()> {
    telemetry::init_logs(&config)?;
    let database = Database::connect(&config)
        .await
        .context("cannot connect to the database")?;
    database.migrate().await.context("migration failed")?;
    let report = switchboard_core::identity::audit::verify_chain(&database)
        .await
        .context("cannot read the audit trail")?;
    if report.is_intact() {
        println!("audit trail intact: {} events", report.events);
        return Ok(());
    }
    println!("audit trail BROKEN ({} events read):", report.events);
    for problem in &report.problems {
        println!("  {problem}");
    }
    telemetry::exit(1);
}

async fn rotate_keys(config: Config) -> anyhow::Result<()> {
    telemetry::init_logs(&config)?;
    let identity = identity(&config).await?;
    let kid = identity
        .keys()
        .rotate()
        .await
        .context("cannot rotate the signing keys")?;
    println!(
        "new signing key {kid}; older keys retired (still accepted until their tokens expire)"
    );
    Ok(())
}

async fn serve(config: Config, workers: bool) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&config)?;
    switchboard_facade::install_metrics_recorder();
    raise_open_files_limit();
    // Bind first: a port already taken fails before anything else starts.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let startup = Startup {
        workers,
        engine: None,
    };
    let mut services = Services::start_with(&config, startup)
        .await
        .context("cannot start the services")?;
    let edge = switchboard_facade::Edge::new(&services, &config);
    let drain = edge.drain.clone();
    let app = switchboard_facade::app(edge);
    tracing::info!(address = %listener.local_addr()?, "listening: gRPC, gRPC-Web and REST; Swagger UI at /docs");
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let server = tokio::spawn(switchboard_facade::serve(
        listener,
        app,
        drain.clone(),
        grace,
    ));
    let (server, signal) = until_signal(server).await?;
    begin_drain(&mut services, &drain, &config, signal).await;
    server
        .await
        .context("the server task failed")?
        .context("serving failed")?;
    services.shutdown().await;
    tracing::info!("shut down");
    telemetry.shutdown().await;
    Ok(())
}

/// Raises the open-files soft limit (RLIMIT_NOFILE) to the hard limit, so
/// the number of open connections is bounded by what the operator allows
/// rather than by the soft default (often 1024), and logs the limit the
/// process has. A limit that cannot be raised is logged and kept.
fn raise_open_files_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let hard = limit.maximum;
    if limit.current != hard {
        let raised = Rlimit {
            current: hard,
            maximum: hard,
        };
        if let Err(err) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(error = %err, soft = ?limit.current, hard = ?hard, "cannot raise the open-files limit to its hard limit");
        }
    }
    let limit = getrlimit(Resource::Nofile);
    let show = |value: Option<u64>| value.map_or_else(|| "unlimited".to_owned(), |n| n.to_string());
    tracing::info!(
        open_files = %show(limit.current),
        hard = %show(limit.maximum),
        "open-files limit (RLIMIT_NOFILE): one per connection, plus the database's and the process's own"
    );
}

async fn worker(config: Config, listen: Option<SocketAddr>) -> anyhow::Result<()> {
    let telemetry = telemetry::init(&config)?;
    switchboard_facade::install_metrics_recorder();
    let listener = match listen {
        Some(address) => Some(
            tokio::net::TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen on {address}"))?,
        ),
        None => None,
    };
    let startup = Startup {
        workers: true,
        engine: None,
    };
    let mut services = Services::start_with(&config, startup)
        .await
        .context("cannot start the workers")?;
    let drain = switchboard_facade::Drain::default();
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let (server, signal) = match listener {
        Some(listener) => {
            let app = switchboard_facade::worker_app(&services, drain.clone());
            tracing::info!(address = %listener.local_addr()?, "serving /healthz, /readyz and /metrics");
            let server = tokio::spawn(switchboard_facade::serve(
                listener,
                app,
                drain.clone(),
                grace,
            ));
            let (server, signal) = until_signal(server).await?;
            (Some(server), signal)
        }
        None => {
            tracing::info!("worker running; stop with SIGTERM or SIGINT");
            // Nothing listens, so nothing waits out the drain delay.
            (None, shutdown_signal().await)
        }
    };
    begin_drain(&mut services, &drain, &config, signal).await;
    if let Some(server) = server {
        server
            .await
            .context("the health listener's task failed")?
            .context("the health listener failed")?;
    }
    services.shutdown().await;
    tracing::info!("shut down");
    telemetry.shutdown().await;
    Ok(())
}

/// The task that serves a listener.
type ServerTask = tokio::task::JoinHandle<std::io::Result<()>>;

/// Waits for SIGTERM or SIGINT while `server` runs; fails if it stops
/// first (its listener failed). Gives the server back, still running, with
/// the signal that came.
async fn until_signal(mut server: ServerTask) -> anyhow::Result<(ServerTask, Signal)> {
    tokio::select! {
        result = &mut server => {
            result.context("the server task failed")?.context("serving failed")?;
            anyhow::bail!("the listener stopped before any shutdown signal")
        }
        signal = shutdown_signal() => Ok((server, signal)),
    }
}

/// Begins the drain (readiness and liveness fail, new requests are refused,
/// the listener stays open while open requests and streams finish) and
/// stops the workers within the same grace, counted from the signal: the
/// listener's drain and the workers' wait run side by side, not one after
/// the other.
///
/// On SIGTERM (an orchestrator) the listener also stays open for
/// `shutdown_drain_delay_secs` (within the grace) when nothing is in
/// flight, so a load balancer's next health check gets 503 rather than a
/// refused connection; on SIGINT (a person at a terminal) it does not wait.
async fn begin_drain(
    services: &mut Services,
    drain: &switchboard_facade::Drain,
    config: &Config,
    signal: Signal,
) {
    // Taken before the drain begins, so the listener never finds nothing in
    // flight while jobs still run: it answers health checks (503) until
    // they are done.
    let jobs = drain.track();
    if signal == Signal::Terminate {
        let delay = config
            .shutdown_drain_delay_secs
            .min(config.shutdown_grace_secs);
        let held = drain.track();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(delay)).await;
            drop(held);
        });
    }
    drain.begin();
    // A second signal means "now": the grace is not waited out. Committed
    // writes are safe without a clean close (SQLite's WAL, PostgreSQL's
    // own), and jobs cut short run again once their leases run out.
    tokio::spawn(async {
        shutdown_signal().await;
        tracing::warn!("a second shutdown signal: exiting at once, without the rest of the grace");
        telemetry::exit(130);
    });
    if services.runs_workers() {
        tracing::info!(
            "draining: refusing new requests, finishing open ones and the jobs in progress"
        );
    } else {
        tracing::info!("draining: refusing new requests, finishing open ones");
    }
    services.stop_workers().await;
    drop(jobs);
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    telemetry::init_logs(&config)?;
    let database = switchboard_core::db::Database::connect(&config)
        .await
        .context("cannot connect to the database")?;
    database.migrate().await.context("migration failed")?;
    database.close().await;
    tracing::info!("database is up to date");
    Ok(())
}

/// The signal that asked the process to stop.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Signal {
    /// SIGINT: Ctrl-C at a terminal.
    Interrupt,
    /// SIGTERM: an orchestrator or service manager.
    Terminate,
}

/// Resolves on SIGTERM or SIGINT, saying which.
async fn shutdown_signal() -> Signal {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = interrupt => {
                tracing::info!("SIGINT received; shutting down");
                Signal::Interrupt
            }
            _ = terminate.recv() => {
                tracing::info!("SIGTERM received; shutting down");
                Signal::Terminate
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
        Signal::Interrupt
    }
}
