//! The access rule of each RPC, declared in the proto with
//! `(switchboard.v1.access)` and gathered by the generator into one table
//! per service. The identity layer enforces it on every transport.

/// Who may call one method.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodPolicy {
    /// The full gRPC method path, such as `/switchboard.v1.ChatService/GetConversation`.
    pub method: &'static str,
    /// The permission the caller must hold, if the method declares one.
    pub permission: Option<&'static str>,
    /// Anyone may call the method, signed in or not.
    pub public: bool,
}
