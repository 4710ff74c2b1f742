//! Authentication at the edge: the one place every request passes, whatever
//! its transport (native gRPC, gRPC-Web, REST, and the WebSocket upgrade).
//!
//! It reads the credential (`Authorization: Bearer …` or `x-api-key`), asks
//! [`Identity::authenticate`] who presents it, and records the outcome in
//! the request extensions: a [`Caller`] for the generated guards, which
//! apply each method's access rule from the proto, and the [`Principal`]
//! the services scope their work to. It also records the
//! [`RequestContext`] audit events carry, and, for an authenticated caller,
//! a [`SessionCheck`] that asks [`Identity::authenticate`] again with the
//! same credential: every open stream (the generated guards wrap each
//! server stream, the WebSocket asks it too) ends with UNAUTHENTICATED at
//! the first check after the session ends, the key is revoked, the account
//! is disabled or an access token expires. It decides nothing about access
//! itself: a refused credential still reaches public methods, as anonymous.

use std::future::Future;
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::{ConnectInfo, Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use http::header;
use switchboard_core::identity::{Identity, Principal, RequestContext};
use switchboard_rest::policy::{Caller, Grants};
use switchboard_rest::session::{CredentialCheck, SessionCheck, credentials_refused};

/// The longest `User-Agent` kept for audit events.
const MAX_USER_AGENT: usize = 256;

/// What the authentication middleware needs.
#[derive(Debug, Clone)]
pub(crate) struct AuthState {
    pub(crate) identity: Arc<Identity>,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub(crate) trusted_proxies: Arc<[IpAddr]>,
    /// How often an open stream checks its credential again.
    pub(crate) credential_recheck: Duration,
}

/// The credential a request was authenticated with, asked again while its
/// streams are open.
#[derive(Clone)]
struct CredentialRecheck {
    identity: Arc<Identity>,
    credential: String,
    /// The account it authenticated; another one is a refusal too.
    user_id: String,
}

impl std::fmt::Debug for CredentialRecheck {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the credential itself.
        f.debug_struct("CredentialRecheck")
            .field("user_id", &self.user_id)
            .finish_non_exhaustive()
    }
}

impl CredentialCheck for CredentialRecheck {
    fn recheck(&self) -> Pin<Box<dyn Future<Output = Result<(), tonic::Status>> + Send + '_>> {
        Box::pin(async move {
            match self.identity.authenticate(&self.credential).await {
                Ok(Some(current)) if current.user_id == self.user_id => Ok(()),
                Ok(_) => Err(credentials_refused()),
                // Not the credential's fault: the stream ends with the
                // failure's own status (UNAVAILABLE), as a new request would.
                Err(error) => Err(switchboard_api::status_from(error)),
            }
        })
    }
}

/// A principal's permissions, as the generated guards ask for them.
#[derive(Debug)]
struct PrincipalGrants(Principal);

impl Grants for PrincipalGrants {
    fn allows(&self, permission: &str) -> bool {
        self.0.allows(permission)
    }

    fn allows_undeclared(&self) -> bool {
        self.0.is_admin()
    }
}

/// The caller's verified principal as a [`Caller`].
pub(crate) fn caller_of(principal: Principal) -> Caller {
    Caller::Authenticated(Arc::new(PrincipalGrants(principal)))
}

/// The credential a request presents, if any: a bearer token or an API key
/// (`Authorization`, `x-api-key`, or a WebSocket's `bearer.` subprotocol).
/// An `Authorization` header of another scheme (Basic, …) is returned as
/// is, and refused.
///
/// # Errors
/// `INVALID_ARGUMENT` when the request carries more than one: two
/// `Authorization` headers, a bearer token and an API key, … Which one
/// the client meant cannot be known, and guessing (the first wins) lets a
/// proxy's header and a client's disagree about who is calling.
#[allow(clippy::result_large_err)]
pub(crate) fn credential(request: &Request) -> Result<Option<String>, tonic::Status> {
    let headers = request.headers();
    let authorization = headers.get_all(header::AUTHORIZATION).iter().count();
    let api_keys = headers.get_all("x-api-key").iter().count();
    let subprotocol = crate::ws::subprotocol_tokens(headers);
    if authorization + api_keys + subprotocol.len() > 1 {
        return Err(tonic::Status::invalid_argument(
            "send one credential: this request carries more than one \
             (Authorization headers, x-api-key headers or bearer. subprotocols)",
        ));
    }
    if let Some(value) = headers.get(header::AUTHORIZATION) {
        let value = value.to_str().unwrap_or_default().trim();
        return Ok(Some(match value.split_once(' ') {
            Some((scheme, token)) if scheme.eq_ignore_ascii_case("bearer") => {
                token.trim().to_owned()
            }
            _ => String::new(),
        }));
    }
    if let Some(value) = headers.get("x-api-key") {
        return Ok(Some(value.to_str().unwrap_or_default().trim().to_owned()));
    }
    // A browser's WebSocket cannot send headers: its token comes as a
    // subprotocol.
    Ok(subprotocol.into_iter().next())
}

/// A refusal at the edge, on the caller's transport: a trailers-only gRPC
/// status for gRPC and gRPC-Web, a google.rpc.Status JSON body otherwise.
fn refusal(request: &Request, status: &tonic::Status) -> Response {
    if crate::is_grpc(request) {
        status.clone().into_http::<axum::body::Body>()
    } else {
        switchboard_rest::error::status_response(status).into_response()
    }
}

/// The caller's address: the TCP peer, or, when the peer is a trusted
/// proxy, the nearest `X-Forwarded-For` entry that is not (entries further
/// left could have been written by the client itself).
fn client_address(request: &Request, trusted: &[IpAddr]) -> String {
    let Some(peer) = request
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|info| info.0.ip())
    else {
        return String::new();
    };
    if !trusted.contains(&peer) {
        return peer.to_string();
    }
    let forwarded: Vec<IpAddr> = request
        .headers()
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|value| value.to_str().ok())
        .flat_map(|value| value.split(','))
        .filter_map(|entry| entry.trim().parse().ok())
        .collect();
    forwarded
        .iter()
        .rev()
        .find(|address| !trusted.contains(address))
        .or(forwarded.first())
        .unwrap_or(&peer)
        .to_string()
}

fn request_context(request: &Request, trusted: &[IpAddr]) -> RequestContext {
    let headers = request.headers();
    let text = |name: &str| {
        headers
            .get(name)
            .and_then(|value| value.to_str().ok())
            .unwrap_or_default()
            .to_owned()
    };
    let mut user_agent = text("user-agent");
    if user_agent.is_empty() {
        // gRPC-Web clients in browsers cannot set User-Agent.
        user_agent = text("x-user-agent");
    }
    RequestContext {
        client_address: client_address(request, trusted),
        user_agent: user_agent.chars().take(MAX_USER_AGENT).collect(),
        request_id: text("x-request-id"),
    }
}

/// The authentication middleware (see the module comment).
pub(crate) async fn authenticate(
    State(state): State<AuthState>,
    mut request: Request,
    next: Next,
) -> Response {
    let identity = &state.identity;
    let context = request_context(&request, &state.trusted_proxies);
    let credential = match credential(&request) {
        Ok(credential) => credential,
        Err(status) => return refusal(&request, &status),
    };
    let caller = match credential {
        None => Caller::Anonymous,
        Some(credential) if credential.is_empty() => Caller::Refused,
        Some(credential) => match identity.authenticate(&credential).await {
            Ok(Some(principal)) => {
                let recheck = CredentialRecheck {
                    identity: identity.clone(),
                    credential,
                    user_id: principal.user_id.clone(),
                };
                request.extensions_mut().insert(SessionCheck::new(
                    Arc::new(recheck),
                    state.credential_recheck,
                ));
                request.extensions_mut().insert(principal.clone());
                tracing::Span::current().record("user.id", principal.user_id.as_str());
                caller_of(principal)
            }
            Ok(None) => Caller::Refused,
            Err(error) => {
                // Not the credential's fault (the database is down): say so
                // with the error's own status, on the caller's transport.
                return refusal(&request, &switchboard_api::status_from(error));
            }
        },
    };
    request.extensions_mut().insert(caller);
    request.extensions_mut().insert(context);
    next.run(request).await
}

/// `GET /.well-known/jwks.json`: the public keys of the access tokens this
/// server signs, for services that verify them offline.
pub(crate) async fn jwks(State(identity): State<Arc<Identity>>) -> Response {
    identity.keys().reload_if_stale().await;
    (
        [(header::CACHE_CONTROL, "public, max-age=300")],
        axum::Json(identity.keys().jwks()),
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request_from(peer: &str, forwarded: &[&str]) -> Request {
        let mut request = http::Request::builder().uri("/");
        for value in forwarded {
            request = request.header("x-forwarded-for", *value);
        }
        let mut request = request.body(axum::body::Body::empty()).unwrap();
        let peer: SocketAddr = format!("{peer}:4000").parse().unwrap();
        request.extensions_mut().insert(ConnectInfo(peer));
        request
    }

    #[test]
    fn forwarded_for_is_believed_only_from_a_trusted_proxy() {
        let proxy: IpAddr = "10.0.0.1".parse().unwrap();
        let trusted = [proxy];
        // A client that is not a proxy cannot choose its address.
        let direct = request_from("203.0.113.9", &["198.51.100.1"]);
        assert_eq!(client_address(&direct, &trusted), "203.0.113.9");
        // Through the proxy: the address the proxy saw, not what the client
        // wrote further left.
        let proxied = request_from("10.0.0.1", &["198.51.100.1, 203.0.113.9"]);
        assert_eq!(client_address(&proxied, &trusted), "203.0.113.9");
        // Without the header, the proxy itself.
        assert_eq!(
            client_address(&request_from("10.0.0.1", &[]), &trusted),
            "10.0.0.1"
        );
    }
}
