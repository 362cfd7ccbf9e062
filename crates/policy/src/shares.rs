//! Fair shares: what one sandbox may take of what every sandbox of a host
//! shares (REQUIREMENTS.md section 3, "Fair shares").
//!
//! Each limit has a default here, the operator sets them for every tier
//! (`[policy.fair_shares]`) and for one tier (`[policy.tiers.N]
//! fair_shares`), and a resolved policy carries its tier's values, so
//! that the dataplane and the DNS service enforce them and the API shows
//! them (`effectiveNetwork.fairShares`).

use crate::error::{ErrorCode, PolicyError};
use serde::{Deserialize, Serialize};

/// The limits of one sandbox.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FairShares {
    /// Connections tracked at once (the host's connection-tracking table
    /// is shared by every sandbox); more are refused.
    pub connections: u32,
    /// New connections let out per second (a burst of twice as many);
    /// more are refused.
    pub new_connections_per_second: u32,
    /// DNS queries per second (a burst of twice as many); more are
    /// answered REFUSED at once and forwarded never.
    pub dns_queries_per_second: u32,
    /// DNS queries waiting for an upstream answer at once; more get
    /// SERVFAIL at once.
    pub dns_in_flight: u32,
    /// DNS-over-TCP connections open at once; more are closed at once.
    pub dns_tcp_connections: u32,
    /// Addresses admitted by DNS answers at once; beyond, the oldest
    /// admission makes room.
    pub admitted_addresses: u32,
    /// Deny events per second of each reason; the rest are counted and
    /// reported as dropped.
    pub events_per_second: u32,
}

impl Default for FairShares {
    fn default() -> Self {
        FairShares {
            connections: 4096,
            new_connections_per_second: 500,
            dns_queries_per_second: 200,
            dns_in_flight: 32,
            dns_tcp_connections: 16,
            admitted_addresses: 4096,
            events_per_second: 20,
        }
    }
}

impl FairShares {
    /// These shares with the connection budgets a sandbox asked for
    /// (`maxConnections`, `newConnectionsPerSecond`; `None`: the tier's),
    /// never above these (a tier lowered since keeps the sandbox within
    /// the new one) and never below 1.
    pub fn narrowed(self, connections: Option<u32>, new_per_second: Option<u32>) -> FairShares {
        let within = |asked: Option<u32>, tier: u32| asked.map_or(tier, |a| a.clamp(1, tier));
        FairShares {
            connections: within(connections, self.connections),
            new_connections_per_second: within(new_per_second, self.new_connections_per_second),
            ..self
        }
    }

    /// Whether these are `tier`'s shares, narrowed at most by a sandbox's
    /// connection budgets.
    pub fn within(&self, tier: &FairShares) -> bool {
        *self
            == tier.narrowed(
                Some(self.connections),
                Some(self.new_connections_per_second),
            )
            && self.connections >= 1
            && self.new_connections_per_second >= 1
    }
}

/// Fair shares as written in the configuration: each key optional, over
/// the defaults (or over the table for every tier).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FairSharesRepr {
    /// See [`FairShares::connections`].
    pub connections: Option<u32>,
    /// See [`FairShares::new_connections_per_second`].
    pub new_connections_per_second: Option<u32>,
    /// See [`FairShares::dns_queries_per_second`].
    pub dns_queries_per_second: Option<u32>,
    /// See [`FairShares::dns_in_flight`].
    pub dns_in_flight: Option<u32>,
    /// See [`FairShares::dns_tcp_connections`].
    pub dns_tcp_connections: Option<u32>,
    /// See [`FairShares::admitted_addresses`].
    pub admitted_addresses: Option<u32>,
    /// See [`FairShares::events_per_second`].
    pub events_per_second: Option<u32>,
}

impl FairSharesRepr {
    /// `base` with the keys written here in place of its own; every limit
    /// must be at least 1 (a limit of 0 would cut the sandbox off, which
    /// `networkBlockAll` says more plainly).
    pub fn over(&self, base: FairShares, key: &str) -> Result<FairShares, PolicyError> {
        let pick = |name: &str, v: Option<u32>, d: u32| -> Result<u32, PolicyError> {
            match v {
                Some(0) => Err(PolicyError::new(
                    ErrorCode::InvalidConfig,
                    format!("{key}.{name} is 0; every fair share is at least 1"),
                )),
                Some(n) => Ok(n),
                None => Ok(d),
            }
        };
        Ok(FairShares {
            connections: pick("connections", self.connections, base.connections)?,
            new_connections_per_second: pick(
                "new_connections_per_second",
                self.new_connections_per_second,
                base.new_connections_per_second,
            )?,
            dns_queries_per_second: pick(
                "dns_queries_per_second",
                self.dns_queries_per_second,
                base.dns_queries_per_second,
            )?,
            dns_in_flight: pick("dns_in_flight", self.dns_in_flight, base.dns_in_flight)?,
            dns_tcp_connections: pick(
                "dns_tcp_connections",
                self.dns_tcp_connections,
                base.dns_tcp_connections,
            )?,
            admitted_addresses: pick(
                "admitted_addresses",
                self.admitted_addresses,
                base.admitted_addresses,
            )?,
            events_per_second: pick(
                "events_per_second",
                self.events_per_second,
                base.events_per_second,
            )?,
        })
    }
}
