//! The `nft` program, for what happens once: loading the constant ruleset,
//! and reading a set back when reconciling.

use serde_json::Value;
use std::io::{self, Write};
use std::process::{Command, Stdio};

/// Where Debian's `nftables` package puts the program.
const NFT: &str = "nft";

/// Applies ruleset text with `nft -f -`, atomically: the whole text or,
/// on any error, nothing. Runs in the calling thread's network namespace.
pub fn load_ruleset(text: &str) -> io::Result<()> {
    let mut child = Command::new(NFT)
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| {
            io::Error::new(
                e.kind(),
                format!("cannot run {NFT} (package nftables): {e}"),
            )
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin.write_all(text.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if out.status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!(
            "nft refused the ruleset: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        )))
    }
}

/// One element of a set as `nft -j` reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct SetElement {
    /// The element's value: a string, or for a concatenation the parts.
    pub value: Value,
    /// Milliseconds until it expires, for sets with timeouts.
    pub expires_ms: Option<u64>,
}

/// The elements of set or map `set` of the `inet` table `table`, or `None`
/// if the table has no such set or map. A map's element is its
/// `[key, data]` pair.
pub fn list_set(table: &str, set: &str) -> io::Result<Option<Vec<SetElement>>> {
    for kind in ["set", "map"] {
        let out = Command::new(NFT)
            .args(["-j", "list", kind, "inet", table, set])
            .output()
            .map_err(|e| io::Error::new(e.kind(), format!("cannot run {NFT}: {e}")))?;
        if !out.status.success() {
            continue;
        }
        let doc: Value = serde_json::from_slice(&out.stdout)
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
        let mut elements = Vec::new();
        for item in doc["nftables"].as_array().into_iter().flatten() {
            for elem in item[kind]["elem"].as_array().into_iter().flatten() {
                let (value, expires_ms) = match elem.get("elem") {
                    Some(e) => (e["val"].clone(), e["expires"].as_u64().map(|s| s * 1000)),
                    None => (elem.clone(), None),
                };
                let value = match value.get("concat") {
                    Some(parts) => parts.clone(),
                    None => value,
                };
                elements.push(SetElement { value, expires_ms });
            }
        }
        return Ok(Some(elements));
    }
    Ok(None)
}
