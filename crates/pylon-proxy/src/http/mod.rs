//! Layer 7: the HTTP servers, the one request path, routing and upstreams.

pub mod body;
pub mod error;
pub mod files;
pub mod filters;
pub mod forward;
pub mod forward_addr;
pub(crate) mod forward_auth;
pub mod grpc;
mod h1;
mod h3_tunnel;
pub mod headers;
pub mod pipeline;
pub mod proxy;
pub mod router;
pub mod server_h1h2;
pub mod server_h2;
pub mod server_h3;
pub mod tunnel;
pub mod ws_relay;

/// `make()`'s value pinned in an allocation made first: `Box::pin` of a value made
/// beforehand copies it once more (a connection's loop or a stream's request future is
/// kilobytes).
#[inline(always)]
pub(crate) fn pinned_in_place<T>(make: impl FnOnce() -> T) -> std::pin::Pin<Box<T>> {
    Box::into_pin(Box::write(Box::new_uninit(), make()))
}
