//! nf_tables for sandgate, through the kernel's own interfaces.
//!
//! sandgate keeps one constant ruleset and puts all per-sandbox state in
//! set and map elements, so the two operations here are all it needs:
//!
//! - [`Transaction`]: element additions and deletions sent to the kernel as
//!   one nfnetlink batch over a netlink socket, which the kernel applies
//!   all at once or not at all (about microseconds per transaction, against
//!   about 20 ms for a run of the `nft` program);
//! - [`load_ruleset`] and [`list_set`]: the `nft` program, used only at
//!   start-up and reconciliation to replace the whole table atomically from
//!   text and to read back what a set holds;
//! - [`NftSocket::counters`] and [`NftSocket::set_counters`]: named
//!   counters and the counters of a dynamic set's elements, dumped over
//!   netlink (a metrics scrape never runs a program), and
//!   [`NftSocket::set_quotas`], the quotas elements carry ([`Quota`],
//!   added with [`Transaction::add_with_quota`]).
//!
//! Keys are built with [`Key`], which lays out concatenations the way the
//! kernel expects (each part padded to 4 bytes). The socket belongs to the
//! network namespace of the thread that opens it.

mod batch;
mod key;
mod program;
mod read;

pub use batch::{ElementData, NftSocket, Quota, Transaction, Verb};
pub use key::Key;
pub use program::{list_set, load_ruleset, SetElement};
