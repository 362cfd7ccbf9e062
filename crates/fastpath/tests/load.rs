//! The program passes the kernel's verifier, attaches to an interface
//! and leaves it again, and its maps take what user space writes.

use sandgate_fastpath::{FastPath, Flow, Side};

#[test]
fn the_program_loads_attaches_and_its_maps_take_flows_and_marks() {
    let (mut fp, mut table) = FastPath::load().expect("load");
    fp.allow(7).unwrap();
    fp.allow(9).unwrap();
    let mut marks = fp.allowed().unwrap();
    marks.sort();
    assert_eq!(marks, vec![7, 9]);
    fp.revoke(7).unwrap();
    fp.revoke(7).unwrap();
    assert_eq!(fp.allowed().unwrap(), vec![9]);
    fp.revoke_all().unwrap();
    assert!(fp.allowed().unwrap().is_empty());

    let flow = Flow {
        protocol: 6,
        slot_ifindex: 3,
        source: ("198.18.0.2".parse().unwrap(), 40000),
        destination: ("192.0.2.10".parse().unwrap(), 443),
        translated: ("198.51.100.1".parse().unwrap(), 40000),
        mark: 9,
    };
    table.insert(1, flow).unwrap();
    assert_eq!(table.len(), 1);
    table.insert(1, Flow { mark: 11, ..flow }).unwrap();
    assert_eq!(table.len(), 1);
    assert_eq!(table.counts(1).unwrap().unwrap().out, (0, 0));
    table.take_off(1).unwrap();
    assert!(table.is_empty());
    assert_eq!(table.take_ended(1).unwrap().map(|c| c.out), Some((0, 0)));
    assert_eq!(table.take_ended(1).unwrap(), None);
    table.insert(2, flow).unwrap();
    table.clear().unwrap();
    assert!(table.is_empty());

    // Attached to the ingress of a scratch namespace's loopback, and
    // detached again; an interface that is not there is an error.
    let ns = sandgate_netns::TempNetns::new("sgfp").unwrap();
    ns.run(|| {
        fp.attach("lo", Side::Uplink)?;
        assert!(fp.is_attached("lo"));
        fp.attach("lo", Side::Uplink)?;
        fp.detach("lo")?;
        assert!(!fp.is_attached("lo"));
        assert!(fp.attach("sgfp-none", Side::Slot).is_err());
        Ok(())
    })
    .unwrap();
}
