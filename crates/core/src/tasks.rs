//! [`AbortOnDrop`]: a spawned task bound to the value that owns it.

/// Aborts the task when dropped, so a lease renewal (or any helper task)
/// never outlives the attempt it serves, even when the attempt panics or is
/// aborted.
#[derive(Debug)]
pub struct AbortOnDrop(pub tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
