//! What the edge put in a request's extensions about its caller: the
//! authenticated [`Principal`] and the [`RequestContext`] audit events
//! record.

use switchboard_core::identity::{Principal, RequestContext};
use tonic::{Request, Status};

/// The caller, as the edge authenticated it.
///
/// # Errors
///
/// `UNAUTHENTICATED` when the edge authenticated nobody (the generated
/// guard refuses such calls first; this is the second lock).
pub(crate) fn principal<T>(request: &Request<T>) -> Result<Principal, Status> {
    request
        .extensions()
        .get::<Principal>()
        .cloned()
        .ok_or_else(|| Status::unauthenticated("no authenticated caller"))
}

/// The caller, if the edge authenticated one.
pub(crate) fn optional_principal<T>(request: &Request<T>) -> Option<Principal> {
    request.extensions().get::<Principal>().cloned()
}

/// Where the request came from.
pub(crate) fn context<T>(request: &Request<T>) -> RequestContext {
    request
        .extensions()
        .get::<RequestContext>()
        .cloned()
        .unwrap_or_default()
}
