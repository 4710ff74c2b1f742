//! Each provider's discovery document and key set: fetched on first use,
//! a failure remembered for a moment, the key set fetched again (at most
//! so often) when a token names a key we do not have.

use std::sync::Arc;
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::Jwk;
use openidconnect::core::{CoreJsonWebKeySet, CoreProviderMetadata};
use openidconnect::{IssuerUrl, reqwest};
use tokio::sync::Mutex;

use super::bearer::bearer_keys;
use super::{OidcError, OidcProviderConfig, OidcProviders, error_chain};

/// The least time between two JWKS fetches of one provider triggered by an
/// unknown `kid`, so that garbage tokens cannot make us hammer the provider.
const JWKS_REFRESH_INTERVAL: Duration = Duration::from_secs(30);

/// How long a failed discovery is remembered before the next attempt, so
/// that a provider that is down is not asked again on every request.
const REDISCOVERY_BACKOFF: Duration = Duration::from_secs(5);

/// What is known about one provider. The mutex is held across discovery
/// and JWKS fetches so that concurrent callers wait for one fetch instead
/// of each starting their own.
#[derive(Default)]
pub(super) struct ProviderState(Mutex<Discovery>);

#[derive(Default)]
struct Discovery {
    current: Option<Arc<Discovered>>,
    /// When the key set in `current` was fetched.
    keys_fetched_at: Option<Instant>,
    /// The last failed discovery, replayed until [`REDISCOVERY_BACKOFF`]
    /// has passed.
    last_failure: Option<(Instant, String)>,
}

/// A provider's metadata and keys, as of the last fetch.
pub(super) struct Discovered {
    /// The discovery document, its `jwks` set to the latest key set.
    pub(super) metadata: CoreProviderMetadata,
    /// The same key set, for `jsonwebtoken`.
    pub(super) bearer_keys: Vec<Jwk>,
}

impl OidcProviders {
    /// The provider's metadata and keys, discovering it if that has not
    /// succeeded yet.
    pub(super) async fn discovered(&self, index: usize) -> Result<Arc<Discovered>, OidcError> {
        let config = &self.inner.configs[index];
        let mut state = self.inner.states[index].0.lock().await;
        if let Some(current) = &state.current {
            return Ok(current.clone());
        }
        if let Some((at, error)) = &state.last_failure
            && at.elapsed() < REDISCOVERY_BACKOFF
        {
            return Err(OidcError::Discovery(error.clone()));
        }
        match discover(config, &self.inner.http).await {
            Ok(discovered) => {
                tracing::info!(provider = %config.id, issuer = %config.issuer, "discovered identity provider");
                let discovered = Arc::new(discovered);
                state.current = Some(discovered.clone());
                state.keys_fetched_at = Some(Instant::now());
                state.last_failure = None;
                Ok(discovered)
            }
            Err(error) => {
                tracing::warn!(provider = %config.id, issuer = %config.issuer, %error, "identity provider discovery failed");
                state.last_failure = Some((Instant::now(), error.clone()));
                Err(OidcError::Discovery(error))
            }
        }
    }

    /// Fetches the provider's JWKS again unless `seen` is already outdated
    /// (another caller refreshed) or the last fetch is less than
    /// [`JWKS_REFRESH_INTERVAL`] old. Returns whether newer keys than
    /// `seen` are available.
    pub(super) async fn refresh_keys(
        &self,
        index: usize,
        seen: &Arc<Discovered>,
    ) -> Result<bool, OidcError> {
        let config = &self.inner.configs[index];
        let mut state = self.inner.states[index].0.lock().await;
        let Some(current) = state.current.clone() else {
            return Ok(false);
        };
        if !Arc::ptr_eq(&current, seen) {
            return Ok(true);
        }
        if state
            .keys_fetched_at
            .is_some_and(|at| at.elapsed() < JWKS_REFRESH_INTERVAL)
        {
            return Ok(false);
        }
        state.keys_fetched_at = Some(Instant::now());
        let jwks = CoreJsonWebKeySet::fetch_async(current.metadata.jwks_uri(), &self.inner.http)
            .await
            .map_err(|e| {
                tracing::warn!(provider = %config.id, error = %error_chain(&e), "JWKS refresh failed");
                OidcError::Discovery(format!("JWKS: {}", error_chain(&e)))
            })?;
        tracing::info!(provider = %config.id, keys = jwks.keys().len(), "refreshed identity provider keys");
        let bearer_keys = bearer_keys(&jwks);
        let metadata = current.metadata.clone().set_jwks(jwks);
        state.current = Some(Arc::new(Discovered {
            metadata,
            bearer_keys,
        }));
        Ok(true)
    }
}

/// Fetches the discovery document (checking that its issuer is the
/// configured one) and the JWKS.
async fn discover(
    config: &OidcProviderConfig,
    http: &reqwest::Client,
) -> Result<Discovered, String> {
    let issuer = IssuerUrl::new(config.issuer.clone()).map_err(|e| format!("issuer: {e}"))?;
    let metadata = CoreProviderMetadata::discover_async(issuer, http)
        .await
        .map_err(|e| error_chain(&e))?;
    let bearer_keys = bearer_keys(metadata.jwks());
    Ok(Discovered {
        metadata,
        bearer_keys,
    })
}
