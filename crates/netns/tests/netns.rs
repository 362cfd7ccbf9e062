//! Namespaces and links on the real kernel (needs root).

#![allow(clippy::unwrap_used)]

use sandgate_netns::{Netns, Rtnl, TempNetns};
use std::net::{IpAddr, UdpSocket};
use std::time::Duration;

fn scratch(tag: &str) -> TempNetns {
    TempNetns::new(&format!("sgt-{tag}")).unwrap()
}

#[test]
fn a_veth_pair_between_two_namespaces_carries_udp_both_ways() {
    let a = scratch("a");
    let b = scratch("b");
    let b_fd = b.fd();
    // Made from inside A, with the peer created directly in B.
    a.run(|| {
        let mut rt = Rtnl::open()?;
        rt.add_veth("sgt-a", "sgt-b", Some(b_fd))?;
        let idx = rt.link_index("sgt-a")?.unwrap();
        rt.add_address(idx, "192.0.2.1/31".parse().unwrap())?;
        rt.add_address(idx, "2001:db8:77::1/64".parse().unwrap())?;
        rt.set_up(idx)?;
        let lo = rt.link_index("lo")?.unwrap();
        rt.set_up(lo)
    })
    .unwrap();
    b.run(|| {
        let mut rt = Rtnl::open()?;
        assert!(rt.link_index("sgt-a")?.is_none(), "the host end stays in A");
        let idx = rt.link_index("sgt-b")?.unwrap();
        // Asked for by name, a link is the one a dump lists.
        let listed = rt.links()?.into_iter().find(|l| l.name == "sgt-b").unwrap();
        let asked = rt.link("sgt-b")?.unwrap();
        assert_eq!((asked.index, &asked.mac), (listed.index, &listed.mac));
        assert_eq!(asked.index, idx);
        rt.add_address(idx, "192.0.2.0/31".parse().unwrap())?;
        rt.add_address(idx, "2001:db8:77::2/64".parse().unwrap())?;
        rt.set_up(idx)?;
        rt.add_route(
            "0.0.0.0/0".parse().unwrap(),
            Some("192.0.2.1".parse().unwrap()),
            idx,
        )
    })
    .unwrap();
    // A server in A, a client in B, over IPv4 and IPv6.
    for (server, client) in [
        ("192.0.2.1:7001", "192.0.2.0:0"),
        ("[2001:db8:77::1]:7001", "[2001:db8:77::2]:0"),
    ] {
        let srv = a.run(|| UdpSocket::bind(server)).unwrap();
        srv.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        let cli = b.run(|| UdpSocket::bind(client)).unwrap();
        cli.send_to(b"ping", server).unwrap();
        let mut buf = [0u8; 16];
        let (n, from) = srv.recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], b"ping");
        let expected: IpAddr = client
            .trim_start_matches('[')
            .rsplit_once(':')
            .unwrap()
            .0
            .trim_end_matches(']')
            .parse()
            .unwrap();
        assert_eq!(from.ip(), expected);
    }
    // The addresses exist only inside the namespaces, not in the test's own.
    let err = UdpSocket::bind("192.0.2.1:7001").unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrNotAvailable);
}

#[test]
fn deleting_a_namespace_removes_its_name_and_devices() {
    let name = format!("sgt-del-{}", std::process::id());
    let ns = Netns::create(&name).unwrap();
    ns.run(|| {
        let mut rt = Rtnl::open()?;
        rt.add_veth("sgt-x", "sgt-y", None)
    })
    .unwrap();
    assert!(Netns::list("sgt-del-").unwrap().contains(&name));
    ns.delete().unwrap();
    assert!(!Netns::list("sgt-del-").unwrap().contains(&name));
    assert!(Netns::open(&name).is_err());
    // Deleting again is not an error.
    Netns::delete_name(&name).unwrap();
}

#[test]
fn creating_a_namespace_twice_fails_and_keeps_the_first() {
    let first = scratch("dup");
    let err = Netns::create(first.name()).unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AlreadyExists);
    assert!(Netns::open(first.name()).is_ok());
}
