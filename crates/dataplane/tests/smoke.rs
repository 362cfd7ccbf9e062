//! A first look: a slot in open mode reaches the world, not the denied ranges.

#![allow(clippy::unwrap_used)]
mod common;
use common::*;
use sandgate_dataplane::probe::Proto;
use sandgate_lab::addrs::*;

#[test]
fn smoke() {
    let mut rig = Rig::new();
    let p = rig.resolve(3, open());
    let (_slot, ns) = rig.sandbox("a", &p);
    assert!(probe(&ns, Proto::Tcp, SERVER4, TCP_ECHO));
    assert!(probe(&ns, Proto::Udp, SERVER6, UDP_ECHO));
    assert!(probe(&ns, Proto::Icmp, SERVER4, 0));
    assert!(probe(&ns, Proto::Icmp, SERVER6, 0));
    assert!(!probe(&ns, Proto::Tcp, DENIED_SERVER4, TCP_ECHO));
    assert!(!probe(&ns, Proto::Tcp, PRIVATE_SERVER4, TCP_ECHO));
}
