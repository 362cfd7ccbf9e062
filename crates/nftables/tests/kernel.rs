//! Element transactions against the real kernel, in a scratch namespace
//! (needs root and nf_tables).

#![allow(clippy::unwrap_used)]

use sandgate_netns::TempNetns;
use sandgate_nftables::{list_set, load_ruleset, ElementData, Key, NftSocket, Transaction};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::time::Duration;

const RULESET: &str = r#"
table inet t {
  set src4 { type ifname . ipv4_addr; }
  set allow4 { type ifname . ipv4_addr; flags interval; }
  set allow6 { type ifname . ipv6_addr; flags interval; }
  set admit4 { type ifname . ipv4_addr; flags timeout; }
  set valid { type ifname . mark; }
  map mode { type ifname : verdict; }
  map gen { type ifname : mark; }
  map pass { type mark : verdict; }
  chain open { accept; }
}
"#;

fn values(set: &str) -> Vec<String> {
    let mut v: Vec<String> = list_set("t", set)
        .unwrap()
        .unwrap()
        .into_iter()
        .map(|e| e.value.to_string())
        .collect();
    v.sort();
    v
}

fn scratch(tag: &str) -> TempNetns {
    TempNetns::new(&format!("sgt-nft-{tag}")).unwrap()
}

#[test]
fn a_transaction_adds_and_deletes_elements_of_every_kind() {
    let s = scratch("kinds");
    s.run(|| {
        load_ruleset(RULESET)?;
        let mut sock = NftSocket::open()?;
        let a = Ipv4Addr::new(192, 0, 2, 7);
        let mut tx = Transaction::new("t");
        tx.add("src4", Key::new().ifname("sgh1").ipv4(a))
            .add_interval(
                "allow4",
                Key::new()
                    .ifname("sgh1")
                    .ipv4(Ipv4Addr::new(198, 51, 100, 0)),
                Key::new()
                    .ifname("sgh1")
                    .ipv4(Ipv4Addr::new(198, 51, 100, 255)),
            )
            .add_interval(
                "allow6",
                Key::new()
                    .ifname("sgh1")
                    .ipv6("2001:db8::".parse::<Ipv6Addr>().unwrap()),
                Key::new()
                    .ifname("sgh1")
                    .ipv6("2001:db8:ffff:ffff:ffff:ffff:ffff:ffff".parse().unwrap()),
            )
            .add_with_timeout(
                "admit4",
                Key::new().ifname("sgh1").ipv4(a),
                Duration::from_secs(60),
            )
            .add("valid", Key::new().ifname("sgh1").mark(42))
            .add_mapping(
                "mode",
                Key::new().ifname("sgh1"),
                ElementData::Jump("open".into()),
            )
            .add_mapping(
                "gen",
                Key::new().ifname("sgh1"),
                ElementData::Value(Key::new().mark(42)),
            )
            .add_mapping("pass", Key::new().mark(42), ElementData::Accept)
            .add_mapping(
                "pass",
                Key::new().mark(43),
                ElementData::Jump("open".into()),
            );
        sock.commit(&tx)?;
        assert_eq!(
            values("pass"),
            vec![
                r#"[42,{"accept":null}]"#,
                r#"[43,{"jump":{"target":"open"}}]"#
            ]
        );
        assert_eq!(values("src4"), vec![r#"["sgh1","192.0.2.7"]"#]);
        assert_eq!(
            values("allow4"),
            vec![r#"["sgh1",{"prefix":{"addr":"198.51.100.0","len":24}}]"#]
        );
        assert_eq!(
            values("allow6"),
            vec![r#"["sgh1",{"prefix":{"addr":"2001:db8::","len":32}}]"#]
        );
        assert_eq!(values("valid"), vec![r#"["sgh1",42]"#]);
        let admitted = list_set("t", "admit4")?.unwrap();
        assert!(admitted[0].expires_ms.unwrap() > 50_000);
        // And away again, in one transaction.
        let mut tx = Transaction::new("t");
        tx.delete("src4", Key::new().ifname("sgh1").ipv4(a))
            .delete_interval(
                "allow4",
                Key::new()
                    .ifname("sgh1")
                    .ipv4(Ipv4Addr::new(198, 51, 100, 0)),
                Key::new()
                    .ifname("sgh1")
                    .ipv4(Ipv4Addr::new(198, 51, 100, 255)),
            )
            .delete("mode", Key::new().ifname("sgh1"))
            .delete("gen", Key::new().ifname("sgh1"));
        sock.commit(&tx)?;
        assert!(values("src4").is_empty());
        assert!(values("allow4").is_empty());
        assert!(values("mode").is_empty());
        Ok(())
    })
    .unwrap();
}

#[test]
fn a_failing_change_leaves_the_whole_transaction_undone() {
    let s = scratch("atomic");
    s.run(|| {
        load_ruleset(RULESET)?;
        let mut sock = NftSocket::open()?;
        let mut tx = Transaction::new("t");
        tx.add(
            "src4",
            Key::new().ifname("sgh1").ipv4(Ipv4Addr::new(192, 0, 2, 1)),
        )
        // Not there: the kernel refuses, and the addition above with it.
        .delete(
            "src4",
            Key::new().ifname("sgh9").ipv4(Ipv4Addr::new(192, 0, 2, 9)),
        );
        let err = sock.commit(&tx).unwrap_err();
        assert!(
            err.to_string().contains("delete an element of set src4"),
            "{err}"
        );
        assert!(values("src4").is_empty());
        // Adding an element twice fails too (no silent success).
        let mut tx = Transaction::new("t");
        tx.add(
            "src4",
            Key::new().ifname("sgh1").ipv4(Ipv4Addr::new(192, 0, 2, 1)),
        );
        sock.commit(&tx)?;
        assert!(sock.commit(&tx).is_err());
        // The socket is still usable after errors.
        let mut tx = Transaction::new("t");
        tx.add(
            "src4",
            Key::new().ifname("sgh2").ipv4(Ipv4Addr::new(192, 0, 2, 2)),
        );
        sock.commit(&tx)?;
        assert_eq!(values("src4").len(), 2);
        Ok(())
    })
    .unwrap();
}

#[test]
fn elements_with_a_timeout_expire() {
    let s = scratch("timeout");
    s.run(|| {
        load_ruleset(RULESET)?;
        let mut sock = NftSocket::open()?;
        let mut tx = Transaction::new("t");
        tx.add_with_timeout(
            "admit4",
            Key::new().ifname("sgh1").ipv4(Ipv4Addr::new(192, 0, 2, 3)),
            Duration::from_millis(300),
        );
        sock.commit(&tx)?;
        assert_eq!(list_set("t", "admit4")?.unwrap().len(), 1);
        std::thread::sleep(Duration::from_millis(1500));
        assert_eq!(list_set("t", "admit4")?.unwrap().len(), 0);
        Ok(())
    })
    .unwrap();
}

#[test]
fn destroy_ignores_missing_elements_and_flush_empties_a_set() {
    let s = scratch("destroy");
    s.run(|| {
        load_ruleset(RULESET)?;
        let mut sock = NftSocket::open()?;
        let k = |d| Key::new().ifname("sgh1").ipv4(Ipv4Addr::new(192, 0, 2, d));
        let mut tx = Transaction::new("t");
        tx.add("src4", k(1)).add("src4", k(2)).add("src4", k(3));
        sock.commit(&tx)?;
        // Destroy of a present and an absent element, and a refresh
        // (destroy then add) of a timed element, in one batch.
        let mut tx = Transaction::new("t");
        tx.destroy("src4", k(1))
            .destroy("src4", k(9))
            .destroy("admit4", k(5))
            .add_with_timeout("admit4", k(5), Duration::from_secs(30));
        sock.commit(&tx)?;
        assert_eq!(values("src4").len(), 2);
        let mut tx = Transaction::new("t");
        tx.destroy("admit4", k(5))
            .add_with_timeout("admit4", k(5), Duration::from_secs(90));
        sock.commit(&tx)?;
        assert!(list_set("t", "admit4")?.unwrap()[0].expires_ms.unwrap() > 60_000);
        let mut tx = Transaction::new("t");
        tx.flush("src4");
        sock.commit(&tx)?;
        assert!(values("src4").is_empty());
        Ok(())
    })
    .unwrap();
}

#[test]
fn counters_are_read_back_over_netlink() {
    let s = scratch("counters");
    s.run(|| {
        load_ruleset(
            r#"
table inet c {
  counter first { packets 7 bytes 700 }
  counter second { }
  set dropped { type ifname; flags dynamic; counter; }
  set several { type ifname; flags dynamic; counter; }
  chain x { update @dropped { iifname } drop; }
}
"#,
        )?;
        let status = std::process::Command::new("nft")
            .args([
                "add element inet c dropped { \"sgh1\" counter packets 3 bytes 90, \"sgh22\" counter packets 5 bytes 150 }",
            ])
            .status()?;
        assert!(status.success());
        let mut sock = NftSocket::open()?;
        let mut named = sock.counters("c")?;
        named.sort();
        assert_eq!(
            named,
            vec![("first".to_string(), 7), ("second".to_string(), 0)]
        );
        let mut per_slot = sock.set_counters("c", "dropped")?;
        per_slot.sort();
        assert_eq!(
            per_slot,
            vec![
                (Key::new().ifname("sgh1").bytes().to_vec(), 3),
                (Key::new().ifname("sgh22").bytes().to_vec(), 5),
            ]
        );
        assert!(sock.set_counters("c", "several")?.is_empty());
        // A set that is not there is an error, not an empty answer.
        assert!(sock.set_counters("c", "missing").is_err());
        Ok(())
    })
    .unwrap();
}

#[test]
fn an_element_quota_lets_its_bytes_pass_then_matches_and_reads_back() {
    let s = scratch("quota");
    s.run(|| {
        let status = std::process::Command::new("ip")
            .args(["link", "set", "lo", "up"])
            .status()?;
        assert!(status.success());
        load_ruleset(
            r#"
table inet q {
  set over { type ifname; }
  chain out { type filter hook output priority 0; policy accept; oifname @over drop; }
}
"#,
        )?;
        let mut sock = NftSocket::open()?;
        let lo = Key::new().ifname("lo");
        let quota = |consumed| sandgate_nftables::Quota {
            bytes: 1000,
            consumed,
        };
        let mut tx = Transaction::new("q");
        tx.add_with_quota("over", lo.clone(), quota(0));
        sock.commit(&tx)?;
        let sink = std::net::UdpSocket::bind("127.0.0.1:0")?;
        let to = sink.local_addr()?;
        let sender = std::net::UdpSocket::bind("127.0.0.1:0")?;
        // 100 bytes of payload: 128 on the wire (IPv4 and UDP headers).
        let sent = |n: usize| {
            (0..n)
                .filter(|_| sender.send_to(&[7; 100], to).is_ok())
                .count()
        };
        // 7 packets make 896 bytes; the 8th reaches 1,024 and matches.
        assert_eq!(sent(10), 7);
        let read = sock.set_quotas("q", "over")?;
        assert_eq!(read.len(), 1);
        assert_eq!(read[0].0, lo.bytes().to_vec());
        assert_eq!(read[0].1.bytes, 1000);
        assert!(read[0].1.consumed >= 1000, "{:?}", read[0].1);
        // Put back with what was counted: still over. Put back with
        // nothing counted: the quota starts again.
        let mut tx = Transaction::new("q");
        tx.destroy("over", lo.clone()).add_with_quota(
            "over",
            lo.clone(),
            quota(read[0].1.consumed),
        );
        sock.commit(&tx)?;
        assert_eq!(sent(2), 0);
        let mut tx = Transaction::new("q");
        tx.destroy("over", lo.clone())
            .add_with_quota("over", lo.clone(), quota(640));
        sock.commit(&tx)?;
        assert_eq!(sent(5), 2);
        // A set whose elements carry no quota is an error, not zeros.
        load_ruleset("table inet q { set plain { type ifname; elements = { \"lo\" }; }; }")?;
        assert!(sock.set_quotas("q", "plain").is_err());
        Ok(())
    })
    .unwrap();
}
