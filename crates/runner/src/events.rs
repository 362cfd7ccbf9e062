//! Network events of sandboxes: denied connection attempts (the
//! dataplane's NFLOG reader) and refused or rebinding DNS queries (the DNS
//! service), by sandbox id. Each sandbox keeps its last [`RECENT`] events;
//! subscribers get new ones as they come, through a broadcast channel (so
//! an async server waits on them without a thread each). Both sources are
//! rate-limited per sandbox before they get here (in the kernel, in the
//! DNS service), and a subscriber that falls behind by [`BACKLOG`] events
//! is told how many it lost rather than slowing the others down.

use crate::lock;
pub use sandgate_contract::{EventKind, NetworkEvent};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{SystemTime, UNIX_EPOCH};
use tokio::sync::broadcast;

/// Events kept per sandbox.
pub const RECENT: usize = 256;
/// Events a subscriber may have waiting.
pub const BACKLOG: usize = 1024;

/// Milliseconds since the epoch of `t`.
pub fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One sandbox's events.
#[derive(Debug)]
struct Stream {
    recent: VecDeque<NetworkEvent>,
    /// Made at the first subscription (a channel's slots are allocated up
    /// front: no cost for sandboxes nobody follows).
    live: Option<broadcast::Sender<NetworkEvent>>,
}

/// Where events go.
#[derive(Debug, Default)]
pub struct EventHub {
    streams: Mutex<HashMap<String, Stream>>,
    counts: Mutex<BTreeMap<(EventKind, String), u64>>,
    /// The sandboxes' flow logs, opened and forgotten with their events.
    pub flows: crate::flows::FlowLogs,
}

impl EventHub {
    /// Starts keeping sandbox `id`'s events and flows.
    pub fn open(&self, id: &str) {
        self.flows.open(id);
        lock(&self.streams)
            .entry(id.to_string())
            .or_insert_with(|| Stream {
                recent: VecDeque::new(),
                live: None,
            });
    }

    /// Records `event` and hands it to the sandbox's subscribers; an event
    /// of a sandbox not (or no longer) open is counted and dropped.
    pub fn publish(&self, event: NetworkEvent) {
        *lock(&self.counts)
            .entry((event.kind, event.reason.clone()))
            .or_default() += event.count.unwrap_or(1);
        let mut streams = lock(&self.streams);
        let Some(stream) = streams.get_mut(&event.sandbox) else {
            return;
        };
        if let Some(live) = &stream.live {
            // No subscriber left is not an error.
            let _ = live.send(event.clone());
        }
        if stream.recent.len() == RECENT {
            stream.recent.pop_front();
        }
        stream.recent.push_back(event);
    }

    /// The recent events of sandbox `id`, and a receiver of its next ones
    /// (closed when the sandbox is forgotten); `None` if it is not open.
    pub fn subscribe(
        &self,
        id: &str,
    ) -> Option<(Vec<NetworkEvent>, broadcast::Receiver<NetworkEvent>)> {
        let mut streams = lock(&self.streams);
        let stream = streams.get_mut(id)?;
        let live = stream
            .live
            .get_or_insert_with(|| broadcast::channel(BACKLOG).0)
            .subscribe();
        Some((stream.recent.iter().cloned().collect(), live))
    }

    /// Forgets sandbox `id`'s events and flows (it is deleted); its
    /// subscribers' streams end.
    pub fn forget(&self, id: &str) {
        self.flows.forget(id);
        lock(&self.streams).remove(id);
    }

    /// Events so far, by kind and reason (for `dropped`, the events held
    /// back, by their reason).
    pub fn counts(&self) -> BTreeMap<(EventKind, String), u64> {
        lock(&self.counts).clone()
    }
}
