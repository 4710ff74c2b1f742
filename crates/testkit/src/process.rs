//! Child processes of a test — the `switchboard` binary serving, working or
//! running a command — and the ports they listen on. A [`Process`] is
//! killed when the test ends, however it ends.

use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// A port on 127.0.0.1 that was free a moment ago (the OS picked it for a
/// listener that is closed again), for a child process to listen on.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .expect("bind 127.0.0.1:0")
        .local_addr()
        .expect("a local address")
        .port()
}

/// A long-running child process, killed (SIGKILL) and reaped when dropped
/// if it has not exited by then.
#[derive(Debug)]
pub struct Process(Child);

impl Process {
    /// Starts `command` with its standard output discarded and its errors
    /// shown with the test's.
    ///
    /// # Panics
    ///
    /// When the program cannot be started.
    pub fn spawn(mut command: Command) -> Process {
        Process(
            command
                .stdout(Stdio::null())
                .stderr(Stdio::inherit())
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}")),
        )
    }

    /// Starts `command` with its standard output discarded and its errors
    /// written to `stderr` (a log file a test reads).
    ///
    /// # Panics
    ///
    /// When the program cannot be started.
    pub fn spawn_with_stderr(mut command: Command, stderr: std::fs::File) -> Process {
        Process(
            command
                .stdout(Stdio::null())
                .stderr(stderr)
                .spawn()
                .unwrap_or_else(|error| panic!("cannot start {command:?}: {error}")),
        )
    }

    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends SIGTERM, as an orchestrator does, and returns at once.
    ///
    /// # Panics
    ///
    /// When the signal cannot be sent.
    pub fn terminate(&self) {
        let sent = Command::new("kill")
            .args(["-TERM", &self.id().to_string()])
            .status()
            .expect("run kill(1)");
        assert!(sent.success(), "SIGTERM to {}", self.id());
    }

    /// Kills the process with SIGKILL, as a crash would, and reaps it.
    ///
    /// # Panics
    ///
    /// When the process cannot be signalled or waited for.
    pub fn kill(&mut self) {
        self.0.kill().expect("SIGKILL the process");
        self.0.wait().expect("reap the process");
    }

    /// The exit status, waiting at most until `deadline` (`None`: still
    /// running then).
    ///
    /// # Panics
    ///
    /// When the process cannot be waited for.
    pub async fn exit_by(&mut self, deadline: Instant) -> Option<ExitStatus> {
        loop {
            if let Some(status) = self.0.try_wait().expect("wait for the process") {
                return Some(status);
            }
            if Instant::now() >= deadline {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
