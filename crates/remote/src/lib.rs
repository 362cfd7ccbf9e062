//! A runner on another host: the contract's [`Runner`] over HTTP.
//!
//! - [`service`]: the runner's side, an axum router that serves one
//!   runner to its API;
//! - [`RemoteRunner`]: the API's side, a client that implements
//!   [`Runner`], so that the API drives a runner on another host exactly as
//!   it drives the one in its process.
//!
//! The wire is small and fixed (see [`service`] for the routes): JSON
//! bodies of the contract's own types; an error answer is
//! `{"error": {"status", "code", "message"}}`, read back as the same
//! [`RunnerError`]; the two streams (a sandbox's events, the deaths of
//! inits) are server-sent events. Every request carries the runner's token
//! as a bearer token. A runner that does not answer is
//! [`RunnerError::Unavailable`] (503 `runner_unavailable`): the host's
//! fault, never the caller's.
//!
//! [`Runner`]: sandgate_contract::Runner
//! [`RunnerError`]: sandgate_contract::RunnerError
//! [`RunnerError::Unavailable`]: sandgate_contract::RunnerError::Unavailable

mod client;
pub mod heartbeat;
pub mod service;

pub use client::RemoteRunner;

/// The status the runner's side reports and the client reads.
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Status {
    /// Whether the runner enforces as it should.
    pub healthy: bool,
    /// The host's own addresses as they are now (always denied).
    pub host_addresses: Vec<std::net::IpAddr>,
    /// What it has counted.
    pub counts: sandgate_contract::Counts,
    /// Its process's id, new at each start (see
    /// [`sandgate_contract::Runner::instance`]).
    #[serde(default)]
    pub instance: String,
    /// How many sandboxes it can hold, and holds.
    #[serde(default)]
    pub capacity: sandgate_contract::Capacity,
}

/// The header that carries the write lock's generation of an API's
/// change (see [`sandgate_contract::Runner::fence`]); `0` or none: no
/// generation said (an API on SQLite, the only one).
pub const FENCE: &str = "x-sandgate-fence";

/// The shortest token a runner takes.
pub const MIN_TOKEN: usize = 16;

/// The token the API calls a runner that registered with `token`:
/// derived from it (the same at each of the runner's starts), so that the
/// token it registers with never goes back to it.
pub fn call_token(token: &str) -> String {
    use sha2::{Digest, Sha256};
    Sha256::digest(format!("sandgate runner call token\n{}", token.trim()).as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

/// The name of the server-sent event that ends a sandbox's recent events
/// (what follows happened after the subscription).
pub const LIVE: &str = "live";
