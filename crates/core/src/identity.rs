//! Who is calling. The edge authenticates each request and puts a
//! [`Principal`] in its extensions; services read it from there and scope
//! every query to it. Until accounts land, every request runs as
//! [`Principal::local`].

/// The authenticated caller of a request.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Principal {
    /// The caller's user id; conversations are owned by it.
    pub user_id: String,
}

impl Principal {
    /// The user id of [`Principal::local`].
    pub const LOCAL_USER_ID: &'static str = "local";

    /// The single local user every request runs as until the identity work
    /// lands.
    pub fn local() -> Self {
        Self::user(Self::LOCAL_USER_ID)
    }

    /// The principal of user `user_id`.
    pub fn user(user_id: impl Into<String>) -> Self {
        Self {
            user_id: user_id.into(),
        }
    }
}
