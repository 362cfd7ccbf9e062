//! A known egress address (docs/REQUIREMENTS.md, "A known egress
//! address"): the source address an organization's sandboxes' connections
//! leave from, instead of the host's own, so that the organization's
//! firewalls can allow-list it. The operator sets it per organization; it
//! changes where traffic comes from, never what may leave.

use crate::config::PolicyConfig;
use crate::error::{ErrorCode, PolicyError};
use crate::ranges::Ranges;
use serde::{Deserialize, Serialize};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

/// The source addresses of an organization's sandboxes' connections, per
/// family; a family without one leaves from the host's own address.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EgressAddress {
    /// The IPv4 source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv4: Option<Ipv4Addr>,
    /// The IPv6 source address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipv6: Option<Ipv6Addr>,
}

impl EgressAddress {
    /// Checks what the operator gave: at least one address, each a unicast
    /// address outside the sandbox subnets; 400 `invalid_egress_address`
    /// naming the field otherwise. Whether the host holds the address is
    /// the host's to say, not this crate's.
    pub fn check(&self, config: &PolicyConfig) -> Result<(), PolicyError> {
        if self.ipv4.is_none() && self.ipv6.is_none() {
            return Err(PolicyError::new(
                ErrorCode::InvalidEgressAddress,
                "an egress address needs \"ipv4\", \"ipv6\" or both; to go back to the host's own address, delete it",
            ));
        }
        let bad = |field: &'static str, addr: IpAddr, why: &str| {
            PolicyError {
            field: Some(field),
            ..PolicyError::new(
                ErrorCode::InvalidEgressAddress,
                format!("{field} {addr} {why}; give a unicast address of this host that its upstream routes back to it"),
            )
        }
        };
        for (field, addr) in self.addresses() {
            let special = match addr {
                IpAddr::V4(a) => {
                    a.is_unspecified()
                        || a.is_loopback()
                        || a.is_multicast()
                        || a.is_broadcast()
                        || a.is_link_local()
                }
                IpAddr::V6(a) => {
                    a.is_unspecified()
                        || a.is_loopback()
                        || a.is_multicast()
                        || a.is_unicast_link_local()
                        || a.to_ipv4_mapped().is_some()
                }
            };
            if special {
                return Err(bad(
                    field,
                    addr,
                    "is not a unicast address a connection can leave from",
                ));
            }
            if config.sandbox_subnets().iter().any(|n| n.contains(&addr)) {
                return Err(bad(field, addr, "is inside the sandbox subnets"));
            }
        }
        Ok(())
    }

    /// The source address of a connection to `dest`: this one's of
    /// `dest`'s family, if it has one.
    pub fn source_for(&self, dest: IpAddr) -> Option<IpAddr> {
        match dest.to_canonical() {
            IpAddr::V4(_) => self.ipv4.map(IpAddr::V4),
            IpAddr::V6(_) => self.ipv6.map(IpAddr::V6),
        }
    }

    /// The first of its addresses that the host of `ranges` does not
    /// hold (see [`Ranges::host_addresses`]), with its field name: a
    /// connection given a source the host does not hold would leave with
    /// a forged address, and its answers would go elsewhere.
    pub fn not_held(&self, ranges: &Ranges) -> Option<(&'static str, IpAddr)> {
        self.addresses()
            .find(|(_, addr)| !ranges.host_addresses().any(|a| a == *addr))
    }

    /// The addresses it has, with their field names.
    pub fn addresses(&self) -> impl Iterator<Item = (&'static str, IpAddr)> {
        let v4 = self.ipv4.map(|a| ("ipv4", IpAddr::V4(a)));
        let v6 = self.ipv6.map(|a| ("ipv6", IpAddr::V6(a)));
        v4.into_iter().chain(v6)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn egress(v4: Option<&str>, v6: Option<&str>) -> EgressAddress {
        EgressAddress {
            ipv4: v4.map(|a| a.parse().unwrap()),
            ipv6: v6.map(|a| a.parse().unwrap()),
        }
    }

    #[test]
    fn unicast_addresses_outside_the_sandbox_subnets_pass() {
        let config = PolicyConfig::default();
        for e in [
            egress(Some("203.0.113.65"), None),
            egress(None, Some("2001:db8:eeee::65")),
            egress(Some("198.51.100.7"), Some("2001:db8::7")),
        ] {
            assert_eq!(e.check(&config), Ok(()), "{e:?}");
        }
    }

    #[test]
    fn empty_special_and_sandbox_addresses_are_refused_naming_the_field() {
        let config = PolicyConfig::default();
        let sandbox = config
            .sandbox_subnets()
            .iter()
            .find(|n| n.addr().is_ipv4())
            .unwrap()
            .hosts()
            .nth(3)
            .unwrap()
            .to_string();
        for (e, field) in [
            (egress(None, None), None),
            (egress(Some("0.0.0.0"), None), Some("ipv4")),
            (egress(Some("127.0.0.1"), None), Some("ipv4")),
            (egress(Some("224.0.0.1"), None), Some("ipv4")),
            (egress(Some("255.255.255.255"), None), Some("ipv4")),
            (egress(Some("169.254.1.1"), None), Some("ipv4")),
            (egress(Some(&sandbox), None), Some("ipv4")),
            (egress(Some("203.0.113.65"), Some("::1")), Some("ipv6")),
            (egress(None, Some("fe80::1")), Some("ipv6")),
            (egress(None, Some("::ffff:203.0.113.65")), Some("ipv6")),
            (egress(None, Some("ff02::1")), Some("ipv6")),
        ] {
            let err = e.check(&config).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidEgressAddress, "{e:?}");
            assert_eq!(err.field, field, "{e:?}: {}", err.message);
        }
    }

    #[test]
    fn unknown_fields_are_refused() {
        let err = serde_json::from_str::<EgressAddress>(r#"{"ipv4":"203.0.113.65","ip":"x"}"#);
        assert!(err.is_err());
        let ok: EgressAddress = serde_json::from_str(r#"{"ipv6":"2001:db8:eeee::65"}"#).unwrap();
        assert_eq!(ok, egress(None, Some("2001:db8:eeee::65")));
    }
}
