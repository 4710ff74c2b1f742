//! Streams that end when their caller's session does.
//!
//! A unary call is authenticated once, when it arrives; a server stream can
//! stay open for as long as its client reads. So the edge records, next to
//! the [`Caller`](crate::policy::Caller) of an authenticated request, a
//! [`SessionCheck`]: how to ask again whether the credential still holds,
//! and how often. The generated service guards wrap the response of every
//! server-streaming method in [`while_signed_in`], so on native gRPC,
//! gRPC-Web, SSE and NDJSON alike a stream of a session that logged out, of
//! a revoked API key or of a disabled account ends with the check's error
//! (UNAUTHENTICATED) at the next check, even while it sends nothing. The
//! WebSocket asks the same [`SessionCheck`] at the same interval.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};

/// Asks again whether the credential a request was authenticated with
/// still authenticates the same caller.
pub trait CredentialCheck: Send + Sync + fmt::Debug {
    /// Checks the credential now.
    ///
    /// # Errors
    /// [`credentials_refused`] when it no longer holds (logged out, revoked,
    /// expired, account disabled); the status of the failure when it could
    /// not be checked (the database does not answer).
    fn recheck(&self) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send + '_>>;
}

/// The status of a request, or of an open stream, whose credential is
/// refused. One wording for every transport.
pub fn credentials_refused() -> tonic::Status {
    tonic::Status::unauthenticated("the credentials are invalid, expired or revoked")
}

/// How an open stream checks its caller's credential again, and how often.
/// The edge puts one in the extensions of every authenticated request.
#[derive(Debug, Clone)]
pub struct SessionCheck {
    check: Arc<dyn CredentialCheck>,
    interval: Duration,
}

impl SessionCheck {
    /// Asks `check` every `interval` while a stream is open.
    pub fn new(check: Arc<dyn CredentialCheck>, interval: Duration) -> Self {
        Self { check, interval }
    }

    /// How often an open stream checks its credential.
    pub fn interval(&self) -> Duration {
        self.interval
    }

    /// Checks the credential now.
    ///
    /// # Errors
    /// The check's status when the credential no longer holds or could not
    /// be checked (see [`CredentialCheck::recheck`]).
    pub async fn recheck(&self) -> Result<(), tonic::Status> {
        self.check.recheck().await
    }
}

/// The response stream of a guarded server-streaming method.
pub type GuardedStream<Item> = Pin<Box<dyn Stream<Item = Result<Item, tonic::Status>> + Send>>;

/// `stream`, ended with the check's error at the first check that fails:
/// the error is its last item and `stream` is dropped then. Without a
/// check (an anonymous caller of a public method, a trusted in-process
/// caller) `stream` is returned as it is.
pub fn while_signed_in<S, Item>(stream: S, check: Option<SessionCheck>) -> GuardedStream<Item>
where
    S: Stream<Item = Result<Item, tonic::Status>> + Send + 'static,
    Item: Send + 'static,
{
    let Some(check) = check else {
        return Box::pin(stream);
    };
    let mut ticks =
        tokio::time::interval_at(tokio::time::Instant::now() + check.interval, check.interval);
    // A stream that waited on its reader does not check several times in a row.
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let state = Some((Box::pin(stream), ticks, check));
    Box::pin(futures::stream::unfold(state, |state| async move {
        let (mut stream, mut ticks, check) = state?;
        loop {
            // `next` is cancel-safe: an item not yet ready when the tick
            // fires stays in the stream.
            tokio::select! {
                item = stream.next() => {
                    return item.map(|item| (item, Some((stream, ticks, check))));
                }
                _ = ticks.tick() => {
                    if let Err(status) = check.recheck().await {
                        return Some((Err(status), None));
                    }
                }
            }
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, Ordering};

    use super::*;

    /// A credential that holds until it is revoked.
    #[derive(Debug, Default)]
    struct Revocable(AtomicBool);

    impl CredentialCheck for Revocable {
        fn recheck(&self) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send + '_>> {
            let revoked = self.0.load(Ordering::SeqCst);
            Box::pin(async move {
                if revoked {
                    Err(credentials_refused())
                } else {
                    Ok(())
                }
            })
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_silent_stream_ends_unauthenticated_at_the_first_check_after_revocation() {
        let credential = Arc::new(Revocable::default());
        let check = SessionCheck::new(credential.clone(), Duration::from_secs(30));
        let silent = futures::stream::iter([Ok(1)]).chain(futures::stream::pending());
        let mut stream = while_signed_in(silent, Some(check));
        assert_eq!(stream.next().await.unwrap().unwrap(), 1);
        // Checks pass while the credential holds.
        let waited = tokio::time::timeout(Duration::from_secs(95), stream.next()).await;
        assert!(waited.is_err(), "nothing to say, still open");
        credential.0.store(true, Ordering::SeqCst);
        let started = tokio::time::Instant::now();
        let ended = stream.next().await.unwrap().unwrap_err();
        assert_eq!(ended.code(), tonic::Code::Unauthenticated);
        assert!(started.elapsed() <= Duration::from_secs(30));
        assert!(stream.next().await.is_none(), "nothing after the error");
    }

    #[tokio::test(start_paused = true)]
    async fn without_a_check_the_stream_is_untouched() {
        let items: Vec<Result<i32, tonic::Status>> = vec![Ok(1), Ok(2)];
        let stream = while_signed_in(futures::stream::iter(items), None);
        let got: Vec<i32> = stream.map(Result::unwrap).collect().await;
        assert_eq!(got, [1, 2]);
    }
}
