//! The admin API: HTTP/JSON over the server's mutual-TLS port (SPEC section 11).

use std::sync::Arc;

use crate::engine::server::Server;
use crate::lifecycle::Identity;

/// What the admin API serves from.
pub struct AdminContext {
    /// The running server.
    pub server: Server,
}

impl AdminContext {
    /// The admin API of `server`.
    pub fn new(server: Server) -> AdminContext {
        AdminContext { server }
    }
}

/// Serves one admin connection whose certificate said `identity`.
///
/// Not built yet: the connection is closed at once.
pub async fn serve_connection<S>(ctx: Arc<AdminContext>, identity: Identity, stream: S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let _ = (ctx, stream);
    tracing::warn!(admin = %identity.name, "the admin API is not built yet; connection closed");
}
