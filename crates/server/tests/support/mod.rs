//! What the tests that run whole deployments share: a [`Cluster`] of
//! `switchboard` processes on this machine's real PostgreSQL, Redis and
//! (optionally) RabbitMQ, started from the binary under test.

// Each test binary uses the part it needs.
#![allow(dead_code)]

use std::path::Path;
use std::process::{Command, Stdio};

use switchboard_testkit::ThrowawayPostgres;
use switchboard_testkit::process::Process;

/// The password of the admin every cluster's tests sign in as.
pub(crate) const PASSWORD: &str = "correct horse battery staple";
/// That admin's email.
pub(crate) const EMAIL: &str = "ops@example.test";

/// `switchboard serve` on 127.0.0.1:`port` with the embedded defaults
/// (SQLite in `data_dir`, the in-process queue, the dev engine without
/// delay), whatever the test runner's environment says; callers add theirs.
pub(crate) fn embedded_serve(data_dir: &Path, port: u16) -> Command {
    let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
    command
        .args(["serve", "--listen", &format!("127.0.0.1:{port}")])
        .env_remove("DATABASE_URL")
        .env_remove("SWITCHBOARD_DATABASE_URL")
        .env_remove("REDIS_URL")
        .env_remove("AMQP_URL")
        .env("SWITCHBOARD_DATA_DIR", data_dir)
        .env("SWITCHBOARD_ENGINE__TOKEN_DELAY_MS", "0")
        .stdin(Stdio::null());
    command
}

/// The processes of one deployment and the database they share; dropping
/// it kills the processes, then drops the database.
pub(crate) struct Cluster {
    env: Vec<(String, String)>,
    // Before `database`: fields drop in order, and the processes must be
    // gone before their database.
    processes: Vec<(String, Process)>,
    _database: ThrowawayPostgres,
    _data_dir: tempfile::TempDir,
}

impl Cluster {
    /// A fresh database and the environment of every process; `amqp`
    /// selects RabbitMQ as the queue (Redis carries it otherwise).
    pub(crate) async fn new(amqp: bool) -> Cluster {
        let database = ThrowawayPostgres::create().await;
        let data_dir = tempfile::tempdir().unwrap();
        let mut env = vec![
            ("DATABASE_URL", database.url().to_owned()),
            ("REDIS_URL", "redis://127.0.0.1:6379".to_owned()),
            (
                "SWITCHBOARD_QUEUE__PREFIX",
                format!("scale-{}", uuid::Uuid::now_v7().simple()),
            ),
            ("SWITCHBOARD_QUEUE__LEASE_SECS", "2".to_owned()),
            ("SWITCHBOARD_ENGINE__TOKEN_DELAY_MS", "60".to_owned()),
            ("SWITCHBOARD_LOG_LEVEL", "warn".to_owned()),
            (
                "SWITCHBOARD_DATA_DIR",
                data_dir.path().display().to_string(),
            ),
        ];
        if amqp {
            env.push((
                "AMQP_URL",
                "amqp://guest:guest@127.0.0.1:5672/%2f".to_owned(),
            ));
        }
        Cluster {
            env: env.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
            processes: Vec::new(),
            _database: database,
            _data_dir: data_dir,
        }
    }

    /// `switchboard args…` in the cluster's environment (none of the test
    /// runner's own queue or OpenTelemetry settings leak in).
    pub(crate) fn command(&self, args: &[&str]) -> Command {
        let mut command = Command::new(env!("CARGO_BIN_EXE_switchboard"));
        command
            .args(args)
            .env_remove("AMQP_URL")
            .env_remove("SWITCHBOARD_QUEUE__BACKEND");
        for (name, _) in std::env::vars().filter(|(name, _)| name.starts_with("OTEL_")) {
            command.env_remove(name);
        }
        command
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null());
        command
    }

    /// Runs a command to its end.
    pub(crate) fn run(&self, args: &[&str]) {
        let output = self
            .command(args)
            .env("SWITCHBOARD_USER_PASSWORD", PASSWORD)
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "switchboard {args:?}: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Starts a long-running process named `name`.
    pub(crate) fn spawn(&mut self, name: &str, args: &[&str]) -> u32 {
        self.spawn_with(name, args, &[])
    }

    /// Starts a long-running process named `name` with `env` added to the
    /// cluster's environment.
    pub(crate) fn spawn_with(&mut self, name: &str, args: &[&str], env: &[(&str, &str)]) -> u32 {
        self.start(name, args, env, None)
    }

    /// Like [`Cluster::spawn_with`], its errors (the log) written to `log`.
    pub(crate) fn spawn_logged(
        &mut self,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: std::fs::File,
    ) -> u32 {
        self.start(name, args, env, Some(log))
    }

    fn start(
        &mut self,
        name: &str,
        args: &[&str],
        env: &[(&str, &str)],
        log: Option<std::fs::File>,
    ) -> u32 {
        let mut command = self.command(args);
        command.envs(env.iter().copied());
        let process = match log {
            Some(log) => Process::spawn_with_stderr(command, log),
            None => Process::spawn(command),
        };
        let pid = process.id();
        println!("started {name} (pid {pid}): switchboard {}", args.join(" "));
        self.processes.push((name.to_owned(), process));
        pid
    }

    /// Kills the process with `pid` with SIGKILL; returns its name.
    pub(crate) fn kill(&mut self, pid: u32) -> String {
        let (name, process) = self
            .processes
            .iter_mut()
            .find(|(_, process)| process.id() == pid)
            .unwrap_or_else(|| panic!("no process {pid} of this cluster"));
        process.kill();
        name.clone()
    }
}
