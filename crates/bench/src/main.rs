//! `switchboard-bench`: the load generators of `docs/benchmarks.md`. Parses
//! the arguments, sets up logging on stderr, runs one measurement and prints
//! its report as one JSON line on stdout.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use switchboard_bench::{chat, connections, hello, logins, queue};
use tracing_subscriber::EnvFilter;

/// Load generators for Switchboard's benchmarks (scripts/bench.sh). Each
/// subcommand prints one JSON line on stdout; progress and errors go to
/// stderr (RUST_LOG, default `warn`).
#[derive(Debug, Parser)]
#[command(name = "switchboard-bench", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Chat turns against a running server: N users, M turns each, every
    /// turn a SendMessage over REST and the reply's SSE stream until
    /// `done`. Prints turns, seconds, turns_per_s, first_token_ms {p50,
    /// p99}, turn_ms {p50, p99} and errors; exits 1 if any turn failed.
    Chat(chat::ChatOptions),
    /// Job-queue throughput (enqueue → done) through Jobs, a Worker and the
    /// chosen backend's transport, in this process, with a no-op job.
    /// Prints {"system": "switchboard", "broker", "jobs", "enqueue_s",
    /// "total_s", "jobs_per_s", "concurrency", …}, the shape of
    /// scripts/bench/dramatiq_bench.py's output.
    Queue(queue::QueueOptions),
    /// A burst of failed sign-ins (wrong passwords, unknown emails) from
    /// many loopback addresses at once against a running server, reading
    /// the server's resident memory from /proc/PID/status. Prints
    /// attempts, refused, unexpected, burst_s, baseline_mib,
    /// peak_sampled_mib, peak_hwm_mib, at_end_mib and after_{1,3,5}s_mib;
    /// exits 1 unless every attempt was refused with 401.
    Logins(logins::LoginsOptions),
    /// A bare tonic hello-world server (`helloworld.Greeter/SayHello`), the
    /// reference the http section holds GetConversation to. Serves until
    /// stopped.
    Hello {
        /// The address to listen on.
        #[arg(long, default_value = "127.0.0.1:50051")]
        listen: std::net::SocketAddr,
    },
    /// Many WebSocket or SSE clients following one reply of a running
    /// server whose engine this process plays (engine.kind = openai at
    /// --engine-listen). Prints clients, complete, failed, connect_s,
    /// rss_before_mib, rss_open_mib, kib_per_connection,
    /// done_after_last_token_ms {p50, p99} and
    /// last_done_after_last_token_ms; exits 1 unless every client got every
    /// event in order, ending with the right `done`.
    Connections(connections::ConnectionsOptions),
}

#[tokio::main]
async fn main() -> ExitCode {
    let cli = Cli::parse();
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("warn"));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command).await {
        Ok(code) => code,
        Err(err) => {
            eprintln!("switchboard-bench: FAIL: {err:#}");
            ExitCode::FAILURE
        }
    }
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Hello { listen } => {
            hello::serve(listen).await?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Chat(options) => {
            let report = chat::run(&options).await?;
            println!("{}", serde_json::to_string(&report)?);
            if report.errors == 0 {
                return Ok(ExitCode::SUCCESS);
            }
            for error in &report.error_samples {
                eprintln!("switchboard-bench: {error}");
            }
            eprintln!(
                "switchboard-bench: FAIL: {} of {} turns failed",
                report.errors,
                report.errors + report.turns
            );
            Ok(ExitCode::FAILURE)
        }
        Command::Queue(options) => {
            let report = queue::run(&options).await?;
            println!("{}", serde_json::to_string(&report)?);
            Ok(ExitCode::SUCCESS)
        }
        Command::Logins(options) => {
            let report = logins::run(&options).await?;
            println!("{}", serde_json::to_string(&report)?);
            if report.unexpected.is_empty() {
                return Ok(ExitCode::SUCCESS);
            }
            eprintln!(
                "switchboard-bench: FAIL: not every sign-in was refused with 401: {}",
                report.unexpected.join(", ")
            );
            Ok(ExitCode::FAILURE)
        }
        Command::Connections(options) => {
            let report = connections::run(&options).await?;
            println!("{}", serde_json::to_string(&report)?);
            if report.failed == 0 {
                return Ok(ExitCode::SUCCESS);
            }
            for error in &report.error_samples {
                eprintln!("switchboard-bench: {error}");
            }
            eprintln!(
                "switchboard-bench: FAIL: {} of {} clients did not get every event",
                report.failed, report.clients
            );
            Ok(ExitCode::FAILURE)
        }
    }
}
