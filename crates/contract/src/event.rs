//! A sandbox's network events.

use serde::{Deserialize, Serialize};

/// What an event is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EventKind {
    /// A denied packet, a connection limit reached.
    Connection,
    /// A refused query, an answer stripped of private addresses, a DNS
    /// limit reached.
    Dns,
    /// Events held back by the sandbox's rate of events, counted.
    Dropped,
    /// A grant added, revoked or ended (`grant_added`, `grant_revoked`,
    /// `grant_expired`; `protocol` holds the grant's id).
    Grant,
    /// A budget reached: `egress_mbps` when the sandbox starts sending
    /// faster than its egress budget (what it sends beyond waits);
    /// `transfer_quota` once a period, when its transfer quota is spent
    /// (what it sends or receives beyond is dropped, each packet a
    /// `transfer_quota` denial).
    Budget,
}

impl EventKind {
    /// The kind as written (the server-sent event's name, the metric's
    /// label).
    pub fn as_str(self) -> &'static str {
        match self {
            EventKind::Connection => "connection",
            EventKind::Dns => "dns",
            EventKind::Dropped => "dropped",
            EventKind::Grant => "grant",
            EventKind::Budget => "budget",
        }
    }
}

impl std::fmt::Display for EventKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkEvent {
    /// Milliseconds since the Unix epoch.
    pub time_ms: u64,
    /// The sandbox.
    pub sandbox: String,
    /// What it is about.
    pub kind: EventKind,
    /// `tcp`, `udp`, `icmp`, ... for a connection; the record type for a
    /// query.
    pub protocol: String,
    /// The destination address, for a connection; the removed addresses,
    /// for a rebinding answer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub destination: Option<String>,
    /// The destination port, where there is one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The name asked, for DNS; the name a connection the gateway reset
    /// was for, as sent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    /// The reason code (`blocked`, `not_in_allow_list`,
    /// `restricted_by_tier`, `always_denied:<range>`, `private_range`,
    /// `spoofed_source`, `connection_limit`, `connection_rate`,
    /// `dns_not_allowed`, `dns_rebinding`, `upstream_unreachable`,
    /// `dns_rate_limited`, `quic_denied`; from the gateway `name_mismatch`,
    /// `no_server_name`, `encrypted_client_hello`,
    /// `unrecognized_protocol`, ...). For a `dropped` event: the reason of the
    /// events held back.
    pub reason: String,
    /// For a `dropped` event: how many events of `reason` the sandbox's
    /// rate held back since the last report.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_event_is_written_as_the_api_documents_it_and_reads_back() {
        let e = NetworkEvent {
            time_ms: 1,
            sandbox: "sb-1".into(),
            kind: EventKind::Dns,
            protocol: "A".into(),
            destination: None,
            port: Some(53),
            domain: Some("example.com".into()),
            reason: "dns_not_allowed".into(),
            count: None,
        };
        let v = serde_json::to_value(&e).unwrap();
        assert_eq!(v["kind"], "dns");
        assert_eq!(v["timeMs"], 1);
        assert!(v.get("destination").is_none());
        assert_eq!(serde_json::from_value::<NetworkEvent>(v).unwrap(), e);
    }
}
