//! [`Shutdown`] and [`ShutdownSignal`]: how a process tells its background
//! work (job workers, the scheduler, gauges, breaker reports, open reply
//! streams) that it is stopping. One owner holds the [`Shutdown`] and
//! begins it; every task that must stop holds a [`ShutdownSignal`] and
//! waits on [`ShutdownSignal::requested`]. A [`Shutdown`] that is dropped
//! without being begun counts as begun: work never outlives its owner.

use tokio::sync::watch;

/// The owner's side: begins the shutdown. Cloning shares it.
#[derive(Debug, Clone)]
pub struct Shutdown(std::sync::Arc<watch::Sender<bool>>);

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    /// A shutdown not yet begun.
    pub fn new() -> Self {
        Self(std::sync::Arc::new(watch::Sender::new(false)))
    }

    /// Begins the shutdown: every [`ShutdownSignal`] of it resolves. Calling
    /// it again does nothing.
    pub fn begin(&self) {
        self.0.send_replace(true);
    }

    /// Whether [`Shutdown::begin`] has been called.
    pub fn has_begun(&self) -> bool {
        *self.0.borrow()
    }

    /// A signal for a task that must stop when this shutdown begins.
    pub fn signal(&self) -> ShutdownSignal {
        ShutdownSignal(self.0.subscribe())
    }
}

/// The side of a task that must stop. Cloning is cheap.
#[derive(Debug, Clone)]
pub struct ShutdownSignal(watch::Receiver<bool>);

impl ShutdownSignal {
    /// Resolves once the shutdown has begun, or its [`Shutdown`] is gone.
    /// Cancel-safe.
    pub async fn requested(&self) {
        let mut receiver = self.0.clone();
        // An error means the sender is gone: that counts as begun.
        let _ = receiver.wait_for(|begun| *begun).await;
    }

    /// Whether the shutdown has begun (or its [`Shutdown`] is gone).
    pub fn is_requested(&self) -> bool {
        *self.0.borrow() || self.0.has_changed().is_err()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_signal_resolves_when_its_shutdown_begins() {
        let shutdown = Shutdown::new();
        let signal = shutdown.signal();
        assert!(!signal.is_requested());
        let waiting = tokio::spawn({
            let signal = signal.clone();
            async move { signal.requested().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        shutdown.begin();
        waiting.await.unwrap();
        assert!(signal.is_requested());
        assert!(shutdown.has_begun());
    }

    #[tokio::test]
    async fn a_dropped_shutdown_counts_as_begun() {
        let shutdown = Shutdown::new();
        let signal = shutdown.signal();
        drop(shutdown);
        assert!(signal.is_requested());
        tokio::time::timeout(std::time::Duration::from_secs(1), signal.requested())
            .await
            .expect("the signal resolves once its owner is gone");
    }
}
