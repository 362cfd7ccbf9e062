//! Network events of sandboxes: denied connection attempts (the
//! dataplane's NFLOG reader) and refused or rebinding DNS queries (the DNS
//! service), by sandbox id. Each sandbox keeps its last [`RECENT`] events;
//! subscribers get new ones as they come. Both sources are rate-limited
//! per sandbox before they get here (in the kernel, in the DNS service),
//! and a subscriber that falls behind loses events rather than slowing the
//! others down.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc::{sync_channel, Receiver, SyncSender, TrySendError};
use std::sync::{Mutex, MutexGuard};
use std::time::{SystemTime, UNIX_EPOCH};

/// Events kept per sandbox.
pub const RECENT: usize = 256;
/// Events a subscriber may have waiting.
const BACKLOG: usize = 1024;

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The sandbox.
    pub sandbox: String,
    /// `connection` (a denied packet) or `dns` (a refused query, or an
    /// answer stripped of private addresses).
    pub kind: &'static str,
    /// `tcp`, `udp`, `icmp`, ... for a connection; the record type for a
    /// query.
    pub protocol: String,
    /// The destination address, for a connection; the removed addresses,
    /// for a rebinding answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The destination port, where there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The name asked, for DNS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The reason code (`blocked`, `not_in_allow_list`,
    /// `restricted_by_tier`, `always_denied:<range>`, `private_range`,
    /// `spoofed_source`, `dns_not_allowed`, `dns_rebinding`).
    pub reason: String,
}

/// Milliseconds since the epoch of `t`.
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Where events go.
#[derive(Debug, Default)]
pub struct EventHub {
    recent: Mutex<HashMap<String, VecDeque<NetworkEvent>>>,
    subscribers: Mutex<Vec<(String, SyncSender<NetworkEvent>)>>,
    counts: Mutex<BTreeMap<(&'static str, String), u64>>,
}

impl EventHub {
    /// Records `event` and hands it to the sandbox's subscribers.
    pub fn publish(&self, event: NetworkEvent) {
        *lock(&self.counts)
            .entry((event.kind, event.reason.clone()))
            .or_default() += 1;
        lock(&self.subscribers).retain(|(id, tx)| {
            id != &event.sandbox
                || !matches!(
                    tx.try_send(event.clone()),
                    Err(TrySendError::Disconnected(_))
                )
        });
        let mut recent = lock(&self.recent);
        let queue = recent.entry(event.sandbox.clone()).or_default();
        if queue.len() == RECENT {
            queue.pop_front();
        }
        queue.push_back(event);
    }

    /// The recent events of sandbox `id`, and a receiver of its next ones.
    pub fn subscribe(&self, id: &str) -> (Vec<NetworkEvent>, Receiver<NetworkEvent>) {
        let (tx, rx) = sync_channel(BACKLOG);
        lock(&self.subscribers).push((id.to_string(), tx));
        let recent = lock(&self.recent)
            .get(id)
            .map(|q| q.iter().cloned().collect())
            .unwrap_or_default();
        (recent, rx)
    }

    /// Forgets sandbox `id`'s events (it is deleted); its subscribers'
    /// streams end.
    pub fn forget(&self, id: &str) {
        lock(&self.recent).remove(id);
        lock(&self.subscribers).retain(|(s, _)| s != id);
    }

    /// Events so far, by kind and reason.
    pub fn counts(&self) -> BTreeMap<(&'static str, String), u64> {
        lock(&self.counts).clone()
    }
}
