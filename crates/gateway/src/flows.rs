//! The gateway's part of the flow log: a record of each connection steered
//! to it, told on a channel when it opens (passed for its name), when it
//! ends (with the bytes relayed each way) and when it is refused.

use crate::{lock, Counters};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

/// What became of a connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FlowStage {
    /// Passed on for its name; it is open.
    Opened,
    /// It ended, after it was passed: the TCP payload relayed from the
    /// sandbox (`up`) and to it (`down`). (A later refusal that ended it,
    /// a request for another name say, is an event of its own.)
    Closed {
        /// Bytes from the sandbox.
        up: u64,
        /// Bytes to the sandbox.
        down: u64,
    },
    /// Reset before it was passed on: the reason code.
    Refused(String),
}

/// A record of one connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GatewayFlow {
    /// The slot of the sandbox.
    pub slot: u32,
    /// The lease under which the sandbox held the slot: a record of a
    /// slot's earlier holder is not its next holder's.
    pub lease: u64,
    /// The gateway's number for the connection (the same in each of its
    /// records).
    pub conn: u64,
    /// When it was accepted.
    pub start: SystemTime,
    /// When it was passed (`Opened`), ended (`Closed`) or refused.
    pub time: SystemTime,
    /// The sandbox's end.
    pub source: SocketAddr,
    /// The original destination.
    pub destination: SocketAddr,
    /// The name it was for, as far as known.
    pub name: Option<String>,
    /// Whether the name came from a TLS ClientHello (else an HTTP `Host`).
    pub tls: bool,
    /// What became of it.
    pub stage: FlowStage,
}

/// Bytes relayed each way, counted as they pass.
#[derive(Debug, Default)]
pub struct FlowCounts {
    /// From the sandbox.
    pub up: AtomicU64,
    /// To the sandbox.
    pub down: AtomicU64,
}

impl FlowCounts {
    pub(crate) fn add_up(&self, n: usize) {
        self.up.fetch_add(n as u64, Ordering::Relaxed);
    }
    pub(crate) fn add_down(&self, n: usize) {
        self.down.fetch_add(n as u64, Ordering::Relaxed);
    }
}

/// Where records go.
#[derive(Debug, Clone)]
pub(crate) struct FlowSink {
    pub(crate) tx: SyncSender<GatewayFlow>,
    pub(crate) counters: Arc<Counters>,
    pub(crate) next: Arc<AtomicU64>,
}

/// One connection's record, from its start to its end: told when it is
/// passed ([`FlowTrack::open`]), and, when the last handle on it goes,
/// as closed (if it was passed) or refused (if it was refused first).
#[derive(Debug)]
pub(crate) struct FlowTrack {
    sink: FlowSink,
    slot: u32,
    lease: u64,
    conn: u64,
    start: SystemTime,
    source: SocketAddr,
    destination: SocketAddr,
    /// The name, as far as known (shared with the connection's check).
    pub(crate) name: Arc<Mutex<Option<String>>>,
    tls: AtomicBool,
    pub(crate) counts: Arc<FlowCounts>,
    opened: AtomicBool,
    refused: Mutex<Option<(String, Option<String>)>>,
}

impl FlowTrack {
    pub(crate) fn new(
        sink: &FlowSink,
        (slot, lease): (u32, u64),
        source: SocketAddr,
        destination: SocketAddr,
    ) -> FlowTrack {
        FlowTrack {
            conn: sink.next.fetch_add(1, Ordering::Relaxed) + 1,
            sink: sink.clone(),
            slot,
            lease,
            start: SystemTime::now(),
            source,
            destination,
            name: Arc::new(Mutex::new(None)),
            tls: AtomicBool::new(false),
            counts: Arc::new(FlowCounts::default()),
            opened: AtomicBool::new(false),
            refused: Mutex::new(None),
        }
    }

    /// The name came from a TLS ClientHello.
    pub(crate) fn set_tls(&self) {
        self.tls.store(true, Ordering::Relaxed);
    }

    /// The connection was passed on (once; later calls do nothing).
    pub(crate) fn open(&self) {
        if !self.opened.swap(true, Ordering::SeqCst) {
            self.send(SystemTime::now(), FlowStage::Opened, None);
        }
    }

    /// The gateway refused the connection for `code`, naming `name` (the
    /// first refusal counts).
    pub(crate) fn refuse(&self, code: String, name: Option<&str>) {
        lock(&self.refused).get_or_insert((code, name.map(str::to_string)));
    }

    fn send(&self, time: SystemTime, stage: FlowStage, name: Option<String>) {
        let name = name.or_else(|| lock(&self.name).clone());
        let flow = GatewayFlow {
            slot: self.slot,
            lease: self.lease,
            conn: self.conn,
            start: self.start,
            time,
            source: self.source,
            destination: self.destination,
            name,
            tls: self.tls.load(Ordering::Relaxed),
            stage,
        };
        if self.sink.tx.try_send(flow).is_err() {
            self.sink
                .counters
                .flows_lost
                .fetch_add(1, Ordering::Relaxed);
        }
    }
}

impl Drop for FlowTrack {
    fn drop(&mut self) {
        let refused = lock(&self.refused).take();
        let now = SystemTime::now();
        if self.opened.load(Ordering::SeqCst) {
            let stage = FlowStage::Closed {
                up: self.counts.up.load(Ordering::Relaxed),
                down: self.counts.down.load(Ordering::Relaxed),
            };
            self.send(now, stage, None);
        } else if let Some((code, name)) = refused {
            self.send(now, FlowStage::Refused(code), name);
        }
        // Neither passed nor refused (closed before it said anything):
        // nothing was asked, nothing to record.
    }
}
