//! The `switchboard` binary: parses the command line, loads the
//! configuration, sets up logging, and runs one of `serve`, `migrate` or
//! `openapi`. Everything else lives in the library crates.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use switchboard_core::Services;
use switchboard_core::config::{Config, LogFormat};
use tracing_subscriber::EnvFilter;

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
    },
    /// Create the database if needed, apply pending migrations, and exit.
    Migrate {
        /// The directory of local state [config `data_dir`, env SWITCHBOARD_DATA_DIR; default ./data].
        #[arg(long, value_name = "DIR")]
        data_dir: Option<PathBuf>,
    },
    /// Print the OpenAPI 3.1 document of the REST API to standard output.
    Openapi,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Openapi = cli.command {
        print!("{}", switchboard_proto::OPENAPI_JSON);
        return Ok(());
    }
    let config = Config::load(cli.config.as_deref())?;
    match cli.command {
        Command::Serve { listen, data_dir } => serve(config.with_overrides(listen, data_dir)).await,
        Command::Migrate { data_dir } => migrate(config.with_overrides(None, data_dir)).await,
        Command::Openapi => unreachable!("handled before the configuration is loaded"),
    }
}

fn init_logging(config: &Config) -> anyhow::Result<()> {
    let filter = EnvFilter::try_new(&config.log_level).context("invalid log_level")?;
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    match config.log_format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
    Ok(())
}

async fn serve(config: Config) -> anyhow::Result<()> {
    init_logging(&config)?;
    // Bind first: a port already taken fails before anything else starts.
    let listener = tokio::net::TcpListener::bind(config.listen)
        .await
        .with_context(|| format!("cannot listen on {}", config.listen))?;
    let services = Services::start(&config)
        .await
        .context("cannot start the services")?;
    let edge = switchboard_facade::Edge::new(services.chat(), services.database().clone(), &config);
    let drain = edge.drain.clone();
    let app = switchboard_facade::app(edge);
    tracing::info!(address = %listener.local_addr()?, "listening: gRPC, gRPC-Web and REST; Swagger UI at /docs");
    let grace = Duration::from_secs(config.shutdown_grace_secs);
    let shutdown = async move {
        shutdown_signal().await;
        // Readiness fails from now on, so load balancers stop sending.
        drain.begin();
    };
    switchboard_facade::serve(listener, app, shutdown, grace)
        .await
        .context("serving failed")?;
    tracing::info!("stopped taking requests; finishing replies in progress");
    services.shutdown().await;
    tracing::info!("shut down");
    Ok(())
}

async fn migrate(config: Config) -> anyhow::Result<()> {
    init_logging(&config)?;
    let database = switchboard_core::db::Database::connect(&config)
        .await
        .context("cannot connect to the database")?;
    database.migrate().await.context("migration failed")?;
    database.close().await;
    tracing::info!("database is up to date");
    Ok(())
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() {
    let interrupt = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut terminate =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
                .expect("installing a SIGTERM handler cannot fail on unix");
        tokio::select! {
            _ = interrupt => tracing::info!("SIGINT received; shutting down"),
            _ = terminate.recv() => tracing::info!("SIGTERM received; shutting down"),
        }
    }
    #[cfg(not(unix))]
    {
        let _ = interrupt.await;
    }
}
