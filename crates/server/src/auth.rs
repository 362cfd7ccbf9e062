//! Authentication: the operator's admin token, and organizations' API
//! keys, stored as SHA-256 hashes and shown once.
//!
//! Keys are `sg_` and 32 random bytes in hex: 256 bits, so a fast hash is
//! enough (there is nothing to brute-force that a slow hash would
//! protect); lookup is by hash, so no key is ever compared in the clear.

use crate::error::ApiError;
use axum::http::{HeaderMap, StatusCode};
use sha2::{Digest, Sha256};

/// A new random id with `prefix` and `bytes` random bytes in hex.
pub fn random_id(prefix: &str, bytes: usize) -> Result<String, ApiError> {
    let mut buf = vec![0u8; bytes];
    getrandom::fill(&mut buf).map_err(|e| ApiError::internal(format!("random: {e}")))?;
    Ok(format!("{prefix}{}", hex(&buf)))
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The stored form of `key`.
pub fn hash_key(key: &str) -> String {
    hex(&Sha256::digest(key.as_bytes()))
}

/// The bearer token of a request: 401 without one.
pub fn bearer(headers: &HeaderMap) -> Result<&str, ApiError> {
    let unauthorized = |m: &str| ApiError::new(StatusCode::UNAUTHORIZED, "unauthorized", m);
    let value = headers
        .get(axum::http::header::AUTHORIZATION)
        .ok_or_else(|| unauthorized("no API key: send 'Authorization: Bearer <key>'"))?
        .to_str()
        .map_err(|_| unauthorized("the Authorization header is not text"))?;
    // The scheme's name is case-insensitive (RFC 9110, 11.1).
    value
        .split_once(' ')
        .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
        .map(|(_, token)| token.trim())
        .filter(|t| !t.is_empty())
        .ok_or_else(|| unauthorized("the Authorization header must be 'Bearer <key>'"))
}

/// Whether `a` and `b` are equal, in time that depends on their lengths
/// only.
pub fn same(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
