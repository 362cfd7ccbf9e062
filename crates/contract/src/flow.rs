//! The flow log: a record of each connection of a sandbox, allowed or
//! denied, relayed by the kernel or by the gateway.

use serde::{Deserialize, Serialize};

/// Whether a flow was let through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowVerdict {
    /// It passed (and may still be open).
    Allowed,
    /// It was refused at its first packet, or reset by the gateway.
    Denied,
}

/// Who carried (or refused) a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FlowVia {
    /// The kernel: forwarded (the host's connection tracking saw it open
    /// and end), or refused by the ruleset.
    Kernel,
    /// The gateway: a connection steered to it for its name.
    Gateway,
}

/// Where a flow's name came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NameSource {
    /// A DNS answer sandgate gave the sandbox for this address.
    Dns,
    /// The TLS ClientHello's server name.
    Sni,
    /// The HTTP request's `Host`.
    Host,
}

/// One connection of a sandbox.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Flow {
    /// Its number in the sandbox's log: increasing in the order the flows
    /// were seen; an open flow is sent again, with the same id, when it
    /// ends.
    pub id: u64,
    /// Milliseconds since the Unix epoch: when it opened (or was refused).
    pub start_ms: u64,
    /// When it ended; `None` while it is open. A denied flow ends as it
    /// starts.
    #[serde(default)]
    pub end_ms: Option<u64>,
    /// `tcp`, `udp`, `icmp`, `icmpv6`, or the IP protocol's number.
    pub protocol: String,
    /// The sandbox's address.
    pub source: String,
    /// The sandbox's port, for TCP and UDP.
    #[serde(default)]
    pub source_port: Option<u16>,
    /// The destination address (the original one, for a flow the gateway
    /// relayed).
    pub destination: String,
    /// The destination port, for TCP and UDP.
    #[serde(default)]
    pub port: Option<u16>,
    /// The name it was for, where known.
    #[serde(default)]
    pub name: Option<String>,
    /// Where the name came from.
    #[serde(default)]
    pub name_source: Option<NameSource>,
    /// Bytes from the sandbox: IP packets as the kernel counted them, or
    /// the TCP payload the gateway relayed. Final once the flow ended.
    pub bytes_out: u64,
    /// Bytes to the sandbox, counted the same way.
    pub bytes_in: u64,
    /// Whether it passed.
    pub verdict: FlowVerdict,
    /// The reason code, as `explain` and the deny events write it: what
    /// refused it (`not_in_allow_list`, `name_mismatch`, ...) or what let
    /// it through (`allow_list:192.0.2.0/24`,
    /// `domain_allow_list:*.example.com`, `essential_service:<id>`,
    /// `grant:<id>`, `open`).
    pub reason: String,
    /// The rule, in words, where known.
    #[serde(default)]
    pub rule: Option<String>,
    /// Who carried or refused it.
    pub via: FlowVia,
}

/// A sandbox's flow log as it stands: its records (each flow once, as it
/// is now, in the order of their ids) and how many records it could not
/// keep.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FlowLog {
    /// The records.
    pub flows: Vec<Flow>,
    /// Records lost since the sandbox was made: pushed out of its bounded
    /// log by newer ones, or refusals its rate of events held back.
    pub dropped: u64,
}

/// A sandbox's flow log and a receiver of each record as it is written
/// (a flow that opens, and again when it ends), closed when the sandbox is
/// deleted.
pub type FlowSubscription = (FlowLog, tokio::sync::broadcast::Receiver<Flow>);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flow_is_written_as_the_api_documents_it_and_reads_back() {
        let f = Flow {
            id: 3,
            start_ms: 10,
            end_ms: None,
            protocol: "tcp".into(),
            source: "10.77.0.3".into(),
            source_port: Some(40000),
            destination: "192.0.2.10".into(),
            port: Some(443),
            name: Some("a.example".into()),
            name_source: Some(NameSource::Sni),
            bytes_out: 1,
            bytes_in: 2,
            verdict: FlowVerdict::Allowed,
            reason: "domain_allow_list:a.example".into(),
            rule: None,
            via: FlowVia::Gateway,
        };
        let v = serde_json::to_value(&f).unwrap();
        assert_eq!(v["startMs"], 10);
        assert!(v["endMs"].is_null());
        assert_eq!(v["nameSource"], "sni");
        assert_eq!(v["verdict"], "allowed");
        assert_eq!(v["via"], "gateway");
        assert_eq!(v["bytesIn"], 2);
        assert_eq!(serde_json::from_value::<Flow>(v).unwrap(), f);
    }
}
