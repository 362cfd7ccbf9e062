//! Network namespaces and links, through the kernel's own interfaces.
//!
//! - [`Netns`]: named network namespaces under `/run/netns` (what `ip netns`
//!   makes), created by unsharing on a thread of our own and pinned with a
//!   bind mount; [`Netns::run`] runs code inside one.
//! - [`Rtnl`]: a blocking rtnetlink client for links (veth pairs), addresses
//!   and routes, in the namespace of the thread that opens it;
//!   [`AddressMonitor`] follows the namespace's address changes;
//!   [`Rtnl::shape_received`] paces what a link receives (a sandbox's
//!   egress) through an `ifb` device and a token bucket.
//!
//! No `ip` program is run. No `unsafe` here: `nix` wraps the system calls.

mod ns;
mod rtnl;
mod shape;

pub use ns::{set_sysctl, Netns, TempNetns, NETNS_DIR};
pub use rtnl::{AddressMonitor, Link, Rtnl};
pub use shape::{BucketStats, TokenBucket};
