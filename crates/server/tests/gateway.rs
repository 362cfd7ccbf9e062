//! Names bound to the connections they admit (issue 14, the gateway): a
//! sandbox allowed one name on an address that many names share (the
//! lab's `example.com` and `example.net` all answer at one address, with
//! one certificate: a CDN stand-in) reaches that name and no other, over
//! TLS (server name) and plain HTTP (Host), over IPv4 and IPv6; a name
//! that resolved for another sandbox does not count; no name, an
//! encrypted name and QUIC are refused; an address the allow list opens
//! never passes the gateway; an update that removes a name cuts its
//! connection at once. Every connection here is made from the sandbox's
//! own network namespace, to lab addresses only.

#![allow(clippy::unwrap_used)]

mod common;

use common::Api;
use sandgate_gateway::hello::craft;
use sandgate_lab::addrs::{
    HTTP, HTTPS, QUIC, SERVER4, SERVER4_B, SERVER6, SERVER6_B, TCP_ECHO, TCP_STREAM, UDP_ECHO,
};
use sandgate_netns::Netns;
use sandgate_testkit::tls_client;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream, UdpSocket};
use std::time::{Duration, Instant};

const T: Duration = Duration::from_secs(3);

/// What a request got: the response's text, or how the connection ended.
#[derive(Debug, PartialEq, Eq)]
enum Got {
    Answer(String),
    Reset,
    Other(String),
}

impl Got {
    fn answered_for(&self, name: &str) -> bool {
        matches!(self, Got::Answer(a) if a.starts_with("HTTP/1.1 200") && a.ends_with(&format!("host={name}\n")))
    }
}

fn ended(e: &std::io::Error) -> Got {
    if e.kind() == std::io::ErrorKind::ConnectionReset {
        Got::Reset
    } else {
        Got::Other(e.to_string())
    }
}

fn exchange(stream: &mut impl ReadWrite, name: &str) -> Got {
    let request = format!("GET / HTTP/1.1\r\nHost: {name}\r\nConnection: close\r\n\r\n");
    if let Err(e) = stream
        .write_all(request.as_bytes())
        .and_then(|()| stream.flush())
    {
        return ended(&e);
    }
    let mut out = Vec::new();
    match stream.read_to_end(&mut out) {
        Ok(_) if out.is_empty() => Got::Other("closed without an answer".into()),
        Ok(_) => Got::Answer(String::from_utf8_lossy(&out).into_owned()),
        Err(e) if !out.is_empty() => Got::Other(format!("{e} after {} bytes", out.len())),
        Err(e) => ended(&e),
    }
}

trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}

fn connect(addr: IpAddr, port: u16) -> TcpStream {
    let s = TcpStream::connect_timeout(&SocketAddr::new(addr, port), T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s
}

/// GET / over TLS with server name `name` (verified against the lab CA),
/// from `ns`.
fn https(ns: &Netns, ca_pem: &str, addr: IpAddr, name: &str) -> Got {
    let ca = ca_pem.to_string();
    let name = name.to_string();
    ns.run(move || {
        let server = rustls::pki_types::ServerName::try_from(name.clone()).unwrap();
        let conn = rustls::ClientConnection::new(tls_client(&[ca])?, server).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, connect(addr, HTTPS));
        Ok(exchange(&mut stream, &name))
    })
    .unwrap()
}

/// GET / in the clear with `Host: name`, from `ns`.
fn http(ns: &Netns, addr: IpAddr, name: &str) -> Got {
    let name = name.to_string();
    ns.run(move || Ok(exchange(&mut connect(addr, HTTP), &name)))
        .unwrap()
}

/// Sends `hello` (made by hand) to `addr:port` from `ns`: whether the
/// connection was reset.
fn hello_reset(ns: &Netns, addr: IpAddr, port: u16, hello: Vec<u8>) -> bool {
    ns.run(move || {
        let mut s = connect(addr, port);
        s.write_all(&hello)?;
        let mut buf = [0u8; 512];
        Ok(matches!(s.read(&mut buf), Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset))
    })
    .unwrap()
}

/// Whether a datagram to `addr:port` from `ns` is echoed.
fn udp_echoed(ns: &Netns, addr: IpAddr, port: u16) -> bool {
    ns.run(move || {
        let any: SocketAddr = if addr.is_ipv4() {
            "0.0.0.0:0".parse().unwrap()
        } else {
            "[::]:0".parse().unwrap()
        };
        let s = UdpSocket::bind(any)?;
        s.set_read_timeout(Some(Duration::from_millis(700)))?;
        s.send_to(b"quic-shaped", SocketAddr::new(addr, port))?;
        let mut buf = [0u8; 64];
        Ok(s.recv_from(&mut buf).is_ok())
    })
    .unwrap()
}

/// A connection from `ns` to the lab's byte stream at [`SERVER4_B`] (a
/// name-checked port in the tests that use it) that sent a hello naming
/// `name` and is streaming.
fn stream_under(ns: &Netns, name: &'static str) -> TcpStream {
    ns.run(move || {
        let mut s = connect(SERVER4_B, TCP_STREAM);
        s.write_all(&craft::records(
            &craft::hello_message(&[craft::sni(&[name])]),
            16384,
        ))?;
        let mut buf = [0u8; 4096];
        s.read_exact(&mut buf)?;
        Ok(s)
    })
    .unwrap()
}

/// Reads a streaming connection until it ends: how (`reset`, `closed`,
/// or `still streaming` three seconds after `since`).
fn streams_until(stream: &mut TcpStream, since: Instant) -> &'static str {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return "closed",
            Ok(_) if since.elapsed() > Duration::from_secs(3) => return "still streaming",
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return "reset",
            Err(e) => panic!("{e}"),
        }
    }
}

fn resolve(api: &Api, key: &str, id: &str, name: &str) {
    let r = api.exec(key, id, &format!("nslookup {name} 2>&1"));
    assert!(
        r["stdout"]
            .as_str()
            .unwrap()
            .contains(&SERVER4_B.to_string()),
        "{name} did not resolve for {id}: {r}"
    );
}

/// Waits for sandbox `id`'s event of `reason` (and `domain`, where
/// given): the recent events, then the stream as it comes (an event
/// crosses the runner's event pump after the connection was reset).
fn saw(api: &Api, key: &str, id: &str, reason: &str, domain: Option<&str>) {
    let seen = api.events(key, id, true, |e| {
        e["reason"] == reason && domain.is_none_or(|d| e["domain"] == d)
    });
    assert!(
        seen.last().is_some_and(|e| e["reason"] == reason),
        "no {reason} event in {seen:?}"
    );
}

fn metric(api: &Api, name: &str) -> u64 {
    api.metrics()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no metric {name}"))
}

#[test]
fn a_name_admits_its_own_connections_on_a_shared_address_and_no_other_names() {
    let api = Api::start();
    let (_, key) = api.organization("cdn", 3);
    let ca = api.lab().ca_pem().to_string();
    let a = api.sandbox(
        &key,
        json!({"name": "one-name", "domainAllowList": "api.example.com"}),
    );
    let b = api.sandbox(
        &key,
        json!({"name": "two-names", "domainAllowList": "api.example.com,www.example.net"}),
    );
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    resolve(&api, &key, a, "api.example.com");
    let ns = api.slot_netns(a);

    // The allowed name, over TLS and in the clear, both families.
    for addr in [SERVER4_B, SERVER6_B] {
        let got = https(&ns, &ca, addr, "api.example.com");
        assert!(got.answered_for("api.example.com"), "{addr}: {got:?}");
        let got = http(&ns, addr, "api.example.com");
        assert!(got.answered_for("api.example.com"), "{addr}: {got:?}");
    }
    // Another site of the same address (the certificate covers it):
    // reset, for the server name and for the Host.
    for addr in [SERVER4_B, SERVER6_B] {
        assert_eq!(
            https(&ns, &ca, addr, "www.example.net"),
            Got::Reset,
            "{addr}"
        );
        assert_eq!(http(&ns, addr, "www.example.net"), Got::Reset, "{addr}");
    }
    // No name; an encrypted one (ECH) behind an allowed outer name; the
    // name in a hello cut into many records is still read.
    let hello = |ext: Vec<(u16, Vec<u8>)>, size| craft::records(&craft::hello_message(&ext), size);
    assert!(hello_reset(&ns, SERVER4_B, HTTPS, hello(vec![], 16384)));
    assert!(hello_reset(
        &ns,
        SERVER4_B,
        HTTPS,
        hello(
            vec![craft::sni(&["api.example.com"]), (craft::ECH, vec![0; 64])],
            16384
        )
    ));
    assert!(hello_reset(
        &ns,
        SERVER4_B,
        HTTPS,
        hello(vec![craft::sni(&["www.example.net"])], 5)
    ));

    // QUIC to the name's address is refused; the address's other UDP
    // ports follow the policy as before.
    assert!(!udp_echoed(&ns, SERVER4_B, QUIC));
    assert!(udp_echoed(&ns, SERVER4_B, UDP_ECHO));

    // A name that resolved for another sandbox only: `b` may have it, but
    // has not asked for it.
    resolve(&api, &key, b, "www.example.net");
    let ns_b = api.slot_netns(b);
    assert!(https(&ns_b, &ca, SERVER4_B, "www.example.net").answered_for("www.example.net"));
    assert_eq!(https(&ns_b, &ca, SERVER4_B, "api.example.com"), Got::Reset);
    resolve(&api, &key, b, "api.example.com");
    assert!(https(&ns_b, &ca, SERVER4_B, "api.example.com").answered_for("api.example.com"));

    // Each refusal is an event with its reason (and name).
    for (reason, domain) in [
        ("name_mismatch", Some("www.example.net")),
        ("no_server_name", None),
        ("encrypted_client_hello", None),
        ("quic_denied", None),
    ] {
        saw(&api, &key, a, reason, domain);
    }
    saw(&api, &key, b, "name_mismatch", Some("api.example.com"));
    assert!(metric(&api, "sandgate_gateway_passed_total") >= 6);
    assert!(metric(&api, "sandgate_gateway_refused_total") >= 8);
}

#[test]
fn an_address_the_allow_list_opens_never_passes_the_gateway() {
    let api = Api::start();
    let (_, key) = api.organization("listed", 3);
    let ca = api.lab().ca_pem().to_string();
    let s = api.sandbox(
        &key,
        json!({"name": "listed", "networkAllowList": format!("{SERVER4_B}/32"), "domainAllowList": "api.example.com"}),
    );
    let id = s["id"].as_str().unwrap();
    resolve(&api, &key, id, "api.example.com");
    let ns = api.slot_netns(id);
    let before = metric(&api, "sandgate_gateway_accepted_total");
    // Any name: the address is the list's, not the name's.
    assert!(https(&ns, &ca, SERVER4_B, "www.example.net").answered_for("www.example.net"));
    assert!(http(&ns, SERVER4_B, "www.example.net").answered_for("www.example.net"));
    assert!(udp_echoed(&ns, SERVER4_B, QUIC));
    assert_eq!(metric(&api, "sandgate_gateway_accepted_total"), before);
    // Its IPv6 address is admitted by name only: that one is checked.
    assert_eq!(https(&ns, &ca, SERVER6_B, "www.example.net"), Got::Reset);
    assert!(metric(&api, "sandgate_gateway_accepted_total") > before);
}

#[test]
fn an_update_that_removes_a_name_cuts_its_gateway_connection_at_once() {
    // The lab's byte stream, checked as a name's port: a connection that
    // runs until something cuts it.
    let api = Api::start_with(|cfg| cfg.runner.name_checked_ports.push(TCP_STREAM));
    let (_, key) = api.organization("cut", 3);
    let s = api.sandbox(
        &key,
        json!({"name": "streams", "domainAllowList": "api.example.com,www.example.net"}),
    );
    let id = s["id"].as_str().unwrap().to_string();
    resolve(&api, &key, &id, "api.example.com");
    resolve(&api, &key, &id, "www.example.net");
    let ns = api.slot_netns(&id);
    let open = |name: &'static str| stream_under(&ns, name);
    let mut kept = open("www.example.net");
    let mut removed = open("api.example.com");
    let (s, v) = api.post(
        &format!("/api/sandbox/{id}/network-settings"),
        &key,
        json!({"domainAllowList": "www.example.net"}),
    );
    assert_eq!(s, 200, "{v}");
    let updated = Instant::now();
    // The removed name's connection ends within a second (reset); the
    // other runs on.
    assert_eq!(streams_until(&mut removed, updated), "reset");
    assert!(
        updated.elapsed() < Duration::from_secs(1),
        "{:?}",
        updated.elapsed()
    );
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..10 {
        assert!(kept.read(&mut buf).unwrap() > 0);
    }
    assert_eq!(metric(&api, "sandgate_gateway_cut_total"), 1);
}

#[test]
fn a_denied_name_is_refused_at_dns_and_at_the_gateway_in_open_mode_too() {
    let api = Api::start();
    let (_, key) = api.organization("deny-name", 3);
    let ca = api.lab().ca_pem().to_string();
    let s = api.sandbox(
        &key,
        json!({"name": "open-but", "domainDenyList": "www.example.net"}),
    );
    assert_eq!(s["effectiveNetwork"]["mode"], "open");
    let id = s["id"].as_str().unwrap();
    let r = api.exec(&key, id, "nslookup www.example.net 2>&1");
    assert!(
        !r["stdout"]
            .as_str()
            .unwrap()
            .contains(&SERVER4_B.to_string()),
        "{r}"
    );
    resolve(&api, &key, id, "api.example.com");
    let ns = api.slot_netns(id);
    // Open mode asks no DNS answer of a name; the deny list is checked on
    // every connection to the name-checked ports, both families.
    for addr in [SERVER4_B, SERVER6_B] {
        assert!(https(&ns, &ca, addr, "api.example.com").answered_for("api.example.com"));
        assert!(http(&ns, addr, "example.com").answered_for("example.com"));
        assert_eq!(
            https(&ns, &ca, addr, "www.example.net"),
            Got::Reset,
            "{addr}"
        );
        assert_eq!(http(&ns, addr, "www.example.net"), Got::Reset, "{addr}");
    }
    // QUIC would carry the name past the gateway: refused.
    assert!(!udp_echoed(&ns, SERVER4_B, QUIC));
    assert!(udp_echoed(&ns, SERVER4_B, UDP_ECHO));
    saw(&api, &key, id, "domain_deny_list", Some("www.example.net"));
    saw(&api, &key, id, "quic_denied", None);
    // explain names the entry.
    let (status, v) = api.get(
        &format!("/api/sandbox/{id}/network/explain?dest=www.example.net:443"),
        &key,
    );
    assert_eq!(status, 200, "{v}");
    assert_eq!(v["reason"], "domain_deny_list:www.example.net", "{v}");
}

#[test]
fn a_domain_deny_list_cuts_the_connections_of_its_names_old_and_new() {
    // The lab's byte stream, checked as a name's port.
    let api = Api::start_with(|cfg| cfg.runner.name_checked_ports.push(TCP_STREAM));
    let (_, key) = api.organization("deny-cut", 3);
    let s = api.sandbox(&key, json!({"name": "open-streams"}));
    let id = s["id"].as_str().unwrap().to_string();
    let ns = api.slot_netns(&id);
    let open = |name: &'static str| stream_under(&ns, name);
    let update = |body: serde_json::Value| {
        let (s, v) = api.post(&format!("/api/sandbox/{id}/network-settings"), &key, body);
        assert_eq!(s, 200, "{v}");
        Instant::now()
    };
    // Opened before any deny list: the kernel forwarded it, never the
    // gateway; the first deny list cuts every such connection of the
    // name-checked ports (their names were never read).
    let mut before = open("www.example.net");
    let accepted = metric(&api, "sandgate_gateway_accepted_total");
    let updated = update(json!({"domainDenyList": "api.example.com"}));
    let last = common::streams_until_cut(&mut before, updated);
    assert!(last < Duration::from_secs(1), "{last:?}");
    // From now on they go through the gateway, which cuts a name the next
    // update denies, and keeps the others.
    let mut kept = open("www.example.net");
    let mut removed = open("example.com");
    assert_eq!(
        metric(&api, "sandgate_gateway_accepted_total"),
        accepted + 2
    );
    let updated = update(json!({"domainDenyList": "example.com,api.example.com"}));
    let last = common::streams_until_cut(&mut removed, updated);
    assert!(last < Duration::from_secs(1), "{last:?}");
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..10 {
        assert!(kept.read(&mut buf).unwrap() > 0);
    }
    // A connection the gateway passed is cut when its destination is
    // denied (the kernel never sees it: the gateway's own connection
    // leaves from the host).
    let updated = update(json!({"networkDenyList": format!("{SERVER4_B}/32")}));
    let last = common::streams_until_cut(&mut kept, updated);
    assert!(last < Duration::from_secs(1), "{last:?}");
}

#[test]
fn a_tier_may_keep_name_admitted_addresses_to_the_name_checked_ports() {
    let api = Api::start_with(|cfg| {
        let mut repr = sandgate_lab::lab_policy_repr(None);
        repr.name_admitted_other_ports = Some(sandgate_policy::OtherPorts::Deny);
        cfg.policy = sandgate_policy::PolicyConfig::from_repr(repr).unwrap();
    });
    let (_, key) = api.organization("names-only", 3);
    let ca = api.lab().ca_pem().to_string();
    let s = api.sandbox(
        &key,
        json!({"name": "named", "domainAllowList": "api.example.com"}),
    );
    let id = s["id"].as_str().unwrap();
    assert_eq!(s["effectiveNetwork"]["namePortsOnly"], true, "{s}");
    resolve(&api, &key, id, "api.example.com");
    let ns = api.slot_netns(id);
    // The name, through the gateway: yes; the same address on another
    // port or protocol: no, and said so.
    assert!(https(&ns, &ca, SERVER4_B, "api.example.com").answered_for("api.example.com"));
    assert!(!api.echoes(&key, id, &SERVER4_B.to_string()));
    assert!(!udp_echoed(&ns, SERVER4_B, UDP_ECHO));
    saw(&api, &key, id, "not_in_allow_list", None);
    let (status, v) = api.get(
        &format!("/api/sandbox/{id}/network/explain?dest=api.example.com:443"),
        &key,
    );
    assert_eq!(status, 200, "{v}");
    assert!(
        v["rule"]
            .as_str()
            .unwrap()
            .contains("name-checked ports only"),
        "{v}"
    );
}

#[test]
fn a_connection_the_gateway_passes_leaves_from_the_known_egress_address() {
    use sandgate_lab::addrs::{EGRESS4, EGRESS6, HOST_LINK4};
    let api = Api::start();
    let (known, key) = api.organization("known", 3);
    let (_, other_key) = api.organization("other", 3);
    let (s, v) = api.call(
        "PUT",
        &format!("/api/admin/organizations/{known}/egress-address"),
        Some(common::ADMIN),
        common::Send::Json(json!({"ipv4": EGRESS4.to_string(), "ipv6": EGRESS6.to_string()})),
    );
    assert_eq!(s, 200, "{v}");
    let ca = api.lab().ca_pem().to_string();
    let named = json!({"name": "named", "domainAllowList": "api.example.com"});
    let a = api.sandbox(&key, named.clone());
    let b = api.sandbox(&other_key, named);
    let (a, b) = (a["id"].as_str().unwrap(), b["id"].as_str().unwrap());
    resolve(&api, &key, a, "api.example.com");
    resolve(&api, &other_key, b, "api.example.com");
    let (a_ns, b_ns) = (api.slot_netns(a), api.slot_netns(b));
    let from = |got: Got, addr: IpAddr| {
        assert!(got.answered_for("api.example.com"), "{got:?}");
        let Got::Answer(text) = got else {
            unreachable!()
        };
        assert!(text.contains(&format!("from={addr} ")), "{text}");
    };
    // Over TLS (relayed by splice) and in the clear (through hyper).
    from(https(&a_ns, &ca, SERVER4_B, "api.example.com"), EGRESS4);
    from(http(&a_ns, SERVER6_B, "api.example.com"), EGRESS6);
    from(http(&a_ns, SERVER4_B, "api.example.com"), EGRESS4);
    from(
        https(&b_ns, &ca, SERVER4_B, "api.example.com"),
        HOST_LINK4.addr(),
    );
}

/// Sends `requests` ("METHOD PATH") for `name` one after the other on one
/// plain-HTTP connection from `ns` to `addr`, each after the answer to
/// the one before; what each got: `200 <what the lab saw>`, `403 <the
/// x-sandgate-deny reason>`, or how the connection ended.
fn ask(ns: &Netns, addr: IpAddr, name: &str, requests: &[&str]) -> Vec<String> {
    let name = name.to_string();
    let requests: Vec<String> = requests.iter().map(|r| r.to_string()).collect();
    ns.run(move || Ok(ask_on(&mut connect(addr, HTTP), &name, &requests)))
        .unwrap()
}

/// [`ask`] over TLS with server name `sni` (`Host: host`), trusting the
/// CAs of `roots` (PEM) alone.
fn ask_tls(
    ns: &Netns,
    roots: &[&str],
    addr: IpAddr,
    (sni, host): (&str, &str),
    requests: &[&str],
) -> Vec<String> {
    let roots: Vec<String> = roots.iter().map(|r| r.to_string()).collect();
    let (sni, host) = (sni.to_string(), host.to_string());
    let requests: Vec<String> = requests.iter().map(|r| r.to_string()).collect();
    ns.run(move || {
        let server = rustls::pki_types::ServerName::try_from(sni).unwrap();
        let conn = rustls::ClientConnection::new(tls_client(&roots)?, server).unwrap();
        let mut stream = rustls::StreamOwned::new(conn, connect(addr, HTTPS));
        Ok(ask_on(&mut stream, &host, &requests))
    })
    .unwrap()
}

fn ask_on(s: &mut impl ReadWrite, name: &str, requests: &[String]) -> Vec<String> {
    let mut got = Vec::new();
    for r in requests {
        // "METHOD PATH", then header lines.
        let (line, headers) = r.split_once('\n').unwrap_or((r, ""));
        let headers: String = headers.lines().map(|h| format!("{h}\r\n")).collect();
        let request = format!("{line} HTTP/1.1\r\nHost: {name}\r\n{headers}\r\n");
        if let Err(e) = s.write_all(request.as_bytes()) {
            got.push(format!("{:?}", ended(&e)));
            break;
        }
        match read_response(s) {
            Ok(answer) => got.push(answer),
            Err(e) => {
                got.push(format!("{:?}", ended(&e)));
                break;
            }
        }
    }
    got
}

/// One response: its status and, for 200, the lab's line of what it saw
/// (method and path), for 403 the gateway's reason.
fn read_response(s: &mut impl Read) -> std::io::Result<String> {
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        if s.read(&mut byte)? == 0 {
            return Err(std::io::Error::new(
                std::io::ErrorKind::UnexpectedEof,
                "closed",
            ));
        }
        head.push(byte[0]);
    }
    let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
    let header = |n: &str| {
        head.lines()
            .find_map(|l| l.strip_prefix(&format!("{n}: ")))
            .map(|v| v.trim().to_string())
    };
    let length: usize = header("content-length").unwrap().parse().unwrap();
    let mut body = vec![0u8; length];
    s.read_exact(&mut body)?;
    let body = String::from_utf8_lossy(&body).into_owned();
    let status = &head[9..12];
    Ok(match status {
        "200" => {
            // "sandgate lab: GET /path from=... host=...", then the
            // headers the lab echoes (of which `authorization`).
            let seen: Vec<&str> = body.split_whitespace().collect();
            let auth: String = body
                .lines()
                .filter(|l| {
                    [
                        "authorization",
                        "origin",
                        "upgrade",
                        "http2-settings",
                        "x-http-method-override",
                    ]
                    .iter()
                    .any(|h| l.starts_with(&format!("{h}: ")))
                })
                .map(|l| format!(" | {l}"))
                .collect();
            format!("200 {} {}{auth}", seen[2], seen[3])
        }
        "403" | "502" => format!("{status} {}", header("x-sandgate-deny").unwrap_or_default()),
        other => format!("{other} {body}"),
    })
}

#[test]
fn http_rules_allow_and_refuse_requests_by_method_and_path() {
    let api = Api::start_with(|cfg| cfg.runner.name_checked_ports.push(TCP_STREAM));
    let (_, key) = api.organization("rules", 3);
    let ca = api.lab().ca_pem().to_string();
    let rules = json!([{"host": "api.example.com", "methods": ["GET", "HEAD"], "paths": ["/repos/**", "/echo-headers"]}]);
    let s = api.sandbox(
        &key,
        json!({"name": "ruled", "domainAllowList": "api.example.com,www.example.net,static.example.com", "httpRules": rules}),
    );
    assert_eq!(s["httpRules"], rules, "{s}");
    assert_eq!(s["effectiveNetwork"]["httpRules"], rules, "{s}");
    let id = s["id"].as_str().unwrap().to_string();
    resolve(&api, &key, &id, "api.example.com");
    resolve(&api, &key, &id, "www.example.net");
    resolve(&api, &key, &id, "static.example.com");
    let ns = api.slot_netns(&id);

    // Allowed and refused requests on one connection: a refused one is
    // answered 403 with its reason, and the connection carries the next.
    for addr in [SERVER4_B, SERVER6_B] {
        assert_eq!(
            ask(
                &ns,
                addr,
                "api.example.com",
                &[
                    "POST /repos/a",
                    "GET /admin",
                    "GET /repos/%2e%2e/admin",
                    "GET /repos/a/b?page=2",
                ]
            ),
            [
                "403 http_method_not_allowed",
                "403 http_path_not_allowed",
                "403 http_path_ambiguous",
                "200 GET /repos/a/b?page=2",
            ],
            "{addr}"
        );
    }
    // A name no rule covers is not restricted.
    assert_eq!(
        ask(&ns, SERVER4_B, "www.example.net", &["DELETE /anything"]),
        ["200 DELETE /anything"]
    );
    // What would change the request after its check is taken out: an
    // override of the method, and an upgrade to HTTP/2 in the clear
    // (its requests would pass unchecked in the tunnel).
    let sneaky = "GET /echo-headers\nX-HTTP-Method-Override: DELETE\nUpgrade: h2c\nConnection: Upgrade, HTTP2-Settings\nHTTP2-Settings: AAMAAABkAAQAAP__";
    assert_eq!(
        ask(&ns, SERVER4_B, "api.example.com", &[sneaky]),
        ["200 GET /echo-headers"]
    );
    // TLS to a name with rules is terminated by the gateway, under its
    // own CA, which the sandbox trusts (in its system bundle, read-only,
    // and named by the usual variables); its requests are checked as
    // plain HTTP's are. A client that trusts only the lab's CA cannot
    // complete the handshake; TLS to a name without rules is relayed as
    // it is (the lab's certificate).
    let r = api.exec(
        &key,
        &id,
        "cat /etc/sandgate/ca.pem; echo \"$SSL_CERT_FILE $REQUESTS_CA_BUNDLE $NODE_EXTRA_CA_CERTS\"; \
         grep -c 'BEGIN CERTIFICATE' /etc/ssl/certs/ca-certificates.crt; \
         echo x >> /etc/ssl/certs/ca-certificates.crt && echo writable",
    );
    let out = r["stdout"].as_str().unwrap();
    let gateway_ca = &out[..out.find("-----END CERTIFICATE-----").unwrap() + 25];
    assert!(
        out.contains(
            // The built-in snapshot has no bundle of its own: the
            // variables naming the system bundle stay unset.
            "\n  /etc/sandgate/ca.pem\n1\n"
        ) && !out.contains("writable"),
        "{r}"
    );
    for addr in [SERVER4_B, SERVER6_B] {
        assert_eq!(
            ask_tls(
                &ns,
                &[gateway_ca],
                addr,
                ("api.example.com", "api.example.com"),
                &["POST /repos/a", "GET /repos/a"]
            ),
            ["403 http_method_not_allowed", "200 GET /repos/a"],
            "{addr}"
        );
    }
    // Another site over a connection terminated for this one (domain
    // fronting): reset.
    assert_eq!(
        ask_tls(
            &ns,
            &[gateway_ca],
            SERVER4_B,
            ("api.example.com", "www.example.net"),
            &["GET /repos/a"]
        ),
        ["Reset"]
    );
    assert!(!https(&ns, &ca, SERVER4_B, "api.example.com").answered_for("api.example.com"));
    assert!(https(&ns, &ca, SERVER4_B, "www.example.net").answered_for("www.example.net"));
    for (reason, name) in [
        ("http_method_not_allowed", "api.example.com"),
        ("http_path_not_allowed", "api.example.com"),
        ("http_path_ambiguous", "api.example.com"),
        ("tls_handshake_failed", "api.example.com"),
        ("name_mismatch", "www.example.net"),
    ] {
        saw(&api, &key, &id, reason, Some(name));
    }

    // Rules that come with an update reach the connections open under
    // their name at once; the other name's runs on.
    let mut kept = stream_under(&ns, "static.example.com");
    let mut ruled = stream_under(&ns, "www.example.net");
    let (status, v) = api.post(
        &format!("/api/sandbox/{id}/network-settings"),
        &key,
        json!({"httpRules": [{"host": "*.example.net", "methods": ["GET"]}]}),
    );
    assert_eq!(status, 200, "{v}");
    let updated = Instant::now();
    assert_eq!(streams_until(&mut ruled, updated), "reset");
    assert!(updated.elapsed() < Duration::from_secs(1));
    let mut buf = vec![0u8; 64 * 1024];
    for _ in 0..10 {
        assert!(kept.read(&mut buf).unwrap() > 0);
    }
    // The rules of api.example.com went with the update.
    assert_eq!(
        ask(&ns, SERVER4_B, "api.example.com", &["POST /admin"]),
        ["200 POST /admin"]
    );
    assert_eq!(
        ask(&ns, SERVER4_B, "www.example.net", &["POST /x", "GET /x"]),
        ["403 http_method_not_allowed", "200 GET /x"]
    );
    // In the flow log, a connection whose only request was refused stays
    // one the name let through (the refusal is an event).
    let (port, answers) = ns
        .run(|| {
            let mut s = connect(SERVER4_B, HTTP);
            let port = s.local_addr()?.port();
            Ok((
                port,
                ask_on(&mut s, "www.example.net", &["POST /only".into()]),
            ))
        })
        .unwrap();
    assert_eq!(answers, ["403 http_method_not_allowed"]);
    let f = flow_where(&api, &key, &id, "the connection with a 403", |f| {
        f["sourcePort"] == port && !f["endMs"].is_null()
    });
    assert_eq!(
        (&f["verdict"], &f["via"], &f["nameSource"], &f["name"]),
        (
            &json!("allowed"),
            &json!("gateway"),
            &json!("host"),
            &json!("www.example.net")
        ),
        "{f}"
    );
    // `[]` removes them.
    let (status, v) = api.post(
        &format!("/api/sandbox/{id}/network-settings"),
        &key,
        json!({"httpRules": []}),
    );
    assert_eq!(status, 200, "{v}");
    assert!(v.get("httpRules").is_none(), "{v}");
    assert_eq!(
        ask(&ns, SERVER4_B, "www.example.net", &["POST /x"]),
        ["200 POST /x"]
    );
}

#[test]
fn http_rules_hold_in_open_mode_where_no_name_is_admitted() {
    // The gateway's own TLS to destinations trusts another CA than the
    // lab's here: a terminated connection's destination is not trusted.
    let other_ca = sandgate_lab::tls::LabTls::new(&[]).unwrap().ca_pem;
    let roots = std::env::temp_dir().join(format!("sandgate-other-ca-{}.pem", std::process::id()));
    std::fs::write(&roots, other_ca).unwrap();
    let api = Api::start_with(|cfg| cfg.runner.tls_roots = roots.clone());
    let (_, key) = api.organization("open-rules", 3);
    let s = api.sandbox(
        &key,
        json!({"name": "open", "httpRules": [{"host": "api.example.com", "methods": ["GET"]}]}),
    );
    assert_eq!(s["effectiveNetwork"]["mode"], "open", "{s}");
    let id = s["id"].as_str().unwrap();
    let ns = api.slot_netns(id);
    // No DNS answer asked for: open mode sends every connection to the
    // name-checked ports through the gateway once rules exist.
    assert_eq!(
        ask(&ns, SERVER4_B, "api.example.com", &["PUT /x", "GET /x"]),
        ["403 http_method_not_allowed", "200 GET /x"]
    );
    assert_eq!(
        ask(&ns, SERVER6_B, "www.example.net", &["PUT /x"]),
        ["200 PUT /x"]
    );
    // Over TLS, terminated: refused by the rules before any connection
    // out; passed by them, the destination's certificate (the lab's CA)
    // is not one this host trusts: 502, and an event.
    let r = api.exec(&key, id, "cat /etc/sandgate/ca.pem");
    let gateway_ca = r["stdout"].as_str().unwrap().to_string();
    assert_eq!(
        ask_tls(
            &ns,
            &[&gateway_ca],
            SERVER4_B,
            ("api.example.com", "api.example.com"),
            &["PUT /x", "GET /x"]
        ),
        [
            "403 http_method_not_allowed",
            "502 upstream_certificate_untrusted"
        ]
    );
    saw(
        &api,
        &key,
        id,
        "upstream_certificate_untrusted",
        Some("api.example.com"),
    );
    std::fs::remove_file(&roots).unwrap();
}

#[test]
fn a_secret_reaches_its_hosts_only_and_never_enters_the_sandbox() {
    const VALUE: &str = "ghp_the_real_value_1234";
    let mut api = Api::start();
    let (_, key) = api.organization("secrets", 3);
    let (status, v) = api.post(
        "/api/secrets",
        &key,
        json!({"name": "GH_TOKEN", "value": VALUE, "hosts": ["API.example.com"]}),
    );
    assert_eq!(status, 201, "{v}");
    assert_eq!(
        v,
        json!({"name": "GH_TOKEN", "hosts": ["api.example.com"], "createdAt": v["createdAt"]})
    );
    let (status, v) = api.get("/api/secrets", &key);
    assert_eq!(status, 200, "{v}");
    assert!(!v.to_string().contains(VALUE), "{v}");
    let (status, v) = api.post(
        "/api/secrets",
        &key,
        json!({"name": "GH_TOKEN", "value": "other", "hosts": ["api.example.com"]}),
    );
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("secret_exists"))
    );

    let s = api.sandbox(
        &key,
        json!({"name": "holder", "domainAllowList": "api.example.com,www.example.net", "secrets": ["GH_TOKEN"]}),
    );
    assert_eq!(s["secrets"], json!(["GH_TOKEN"]), "{s}");
    let placeholder = s["env"]["GH_TOKEN"].as_str().unwrap().to_string();
    assert!(
        placeholder.starts_with("sg_secret_") && placeholder.len() > 30,
        "{s}"
    );
    assert!(!s.to_string().contains(VALUE));
    let id = s["id"].as_str().unwrap().to_string();
    resolve(&api, &key, &id, "api.example.com");
    resolve(&api, &key, &id, "www.example.net");
    let ns = api.slot_netns(&id);

    // Inside: the placeholder, never the value (environment of every
    // process, the file system the sandbox sees).
    let r = api.exec(
        &key,
        &id,
        &format!("echo \"$GH_TOKEN\"; cat /proc/*/environ | tr '\\0' '\\n' | grep -c {VALUE}; grep -rls {VALUE} /etc /root /tmp /proc/1/environ; echo done"),
    );
    let out = r["stdout"].as_str().unwrap();
    assert_eq!(out, format!("{placeholder}\n0\ndone\n"), "{r}");

    // To its host, over TLS the gateway terminates: the value, in the
    // header the placeholder was in.
    let gateway_ca = api.exec(&key, &id, "cat /etc/sandgate/ca.pem")["stdout"]
        .as_str()
        .unwrap()
        .to_string();
    let with = format!("GET /echo-headers\nAuthorization: Bearer {placeholder}");
    for addr in [SERVER4_B, SERVER6_B] {
        assert_eq!(
            ask_tls(
                &ns,
                &[&gateway_ca],
                addr,
                ("api.example.com", "api.example.com"),
                &[&with]
            ),
            [format!(
                "200 GET /echo-headers | authorization: Bearer {VALUE}"
            )],
            "{addr}"
        );
    }
    // Never in a header a server may reflect, never under a Host with a
    // user part (`placeholder@host`, which the name check would read as
    // the host).
    let origin = format!("GET /echo-headers\nAuthorization: Bearer {placeholder}\nOrigin: https://{placeholder}.example");
    assert_eq!(
        ask_tls(&ns, &[&gateway_ca], SERVER4_B, ("api.example.com", "api.example.com"), &[&origin]),
        [format!("200 GET /echo-headers | authorization: Bearer {VALUE} | origin: https://{placeholder}.example")]
    );
    saw(
        &api,
        &key,
        &id,
        "secret_outside_credential_headers",
        Some("api.example.com"),
    );
    let fronted = ask_tls(
        &ns,
        &[&gateway_ca],
        SERVER4_B,
        ("api.example.com", &format!("{placeholder}@api.example.com")),
        &[&with],
    );
    assert!(
        fronted.len() == 1 && !fronted[0].starts_with("200"),
        "{fronted:?}"
    );
    // Elsewhere, never: in the clear to its own host (the value never
    // travels unencrypted), in the clear to another host, and over TLS to
    // another host (relayed as it is: the gateway does not read it).
    let kept = format!("200 GET /echo-headers | authorization: Bearer {placeholder}");
    assert_eq!(
        ask(&ns, SERVER4_B, "api.example.com", &[&with]),
        std::slice::from_ref(&kept)
    );
    assert_eq!(
        ask(&ns, SERVER4_B, "www.example.net", &[&with]),
        std::slice::from_ref(&kept)
    );
    assert_eq!(
        ask_tls(
            &ns,
            &[api.lab().ca_pem()],
            SERVER4_B,
            ("www.example.net", "www.example.net"),
            &[&with]
        ),
        [kept]
    );
    saw(
        &api,
        &key,
        &id,
        "secret_over_plain_http",
        Some("api.example.com"),
    );
    saw(
        &api,
        &key,
        &id,
        "secret_to_unlisted_host",
        Some("www.example.net"),
    );

    // A restart of the server (and its runner) hands the runner the
    // secret again, from the store, sealed there.
    api.restart();
    resolve(&api, &key, &id, "api.example.com");
    let ns = api.slot_netns(&id);
    assert_eq!(
        ask_tls(
            &ns,
            &[&gateway_ca],
            SERVER4_B,
            ("api.example.com", "api.example.com"),
            &[&with]
        ),
        [format!(
            "200 GET /echo-headers | authorization: Bearer {VALUE}"
        )]
    );
    // Sealed in the store: not in its files in the clear.
    let mut files = 0;
    for entry in std::fs::read_dir(api.dir.join("server")).unwrap() {
        let path = entry.unwrap().path();
        if path.to_string_lossy().contains("sandgate.db") {
            let bytes = std::fs::read(&path).unwrap();
            assert!(
                !bytes.windows(VALUE.len()).any(|w| w == VALUE.as_bytes()),
                "the value is in {} in the clear",
                path.display()
            );
            files += 1;
        }
    }
    assert!(files >= 1);

    // A secret held by a sandbox stays until the sandbox goes.
    let (status, v) = api.delete("/api/secrets/GH_TOKEN", &key);
    assert_eq!(
        (status, v["error"]["code"].as_str()),
        (409, Some("secret_in_use")),
        "{v}"
    );
    let (status, _) = api.delete(&format!("/api/sandbox/{id}"), &key);
    assert_eq!(status, 204);
    let (status, v) = api.delete("/api/secrets/GH_TOKEN", &key);
    assert_eq!(status, 204, "{v}");
    let (status, v) = api.get("/api/secrets", &key);
    assert_eq!((status, v), (200, json!([])));
}

/// A WebSocket-like tunnel from `ns` through the gateway to the lab's
/// `/upgrade` at [`SERVER4_B`] for `name`, echoing.
fn tunnel(ns: &Netns, name: &'static str) -> TcpStream {
    ns.run(move || {
        let mut s = connect(SERVER4_B, HTTP);
        s.write_all(
            format!("GET /upgrade HTTP/1.1\r\nHost: {name}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n")
                .as_bytes(),
        )?;
        let mut head = Vec::new();
        let mut byte = [0u8; 1];
        while !head.ends_with(b"\r\n\r\n") {
            s.read_exact(&mut byte)?;
            head.push(byte[0]);
        }
        assert!(head.starts_with(b"HTTP/1.1 101"), "{}", String::from_utf8_lossy(&head));
        Ok(s)
    })
    .unwrap()
}

fn echoes(s: &mut TcpStream) -> std::io::Result<bool> {
    s.write_all(b"ping")?;
    let mut back = [0u8; 4];
    s.read_exact(&mut back)?;
    Ok(&back == b"ping")
}

#[test]
fn an_update_cuts_an_upgraded_connection_through_the_gateway() {
    let api = Api::start();
    let (_, key) = api.organization("tunnels", 3);
    let s = api.sandbox(
        &key,
        json!({"name": "tunnels", "domainAllowList": "api.example.com,www.example.net"}),
    );
    let id = s["id"].as_str().unwrap().to_string();
    resolve(&api, &key, &id, "api.example.com");
    resolve(&api, &key, &id, "www.example.net");
    let ns = api.slot_netns(&id);
    let mut kept = tunnel(&ns, "api.example.com");
    let mut removed = tunnel(&ns, "www.example.net");
    assert!(echoes(&mut kept).unwrap() && echoes(&mut removed).unwrap());
    let (status, v) = api.post(
        &format!("/api/sandbox/{id}/network-settings"),
        &key,
        json!({"domainAllowList": "api.example.com"}),
    );
    assert_eq!(status, 200, "{v}");
    let updated = Instant::now();
    // The tunnel of the removed name ends (reset or closed) at once; the
    // other echoes on.
    let ended = loop {
        match echoes(&mut removed) {
            Ok(_) if updated.elapsed() > Duration::from_secs(3) => break false,
            Ok(_) => std::thread::sleep(Duration::from_millis(20)),
            Err(_) => break true,
        }
    };
    assert!(
        ended,
        "the tunnel outlived the update (cut: {})",
        metric(&api, "sandgate_gateway_cut_total")
    );
    assert!(
        updated.elapsed() < Duration::from_secs(1),
        "{:?}",
        updated.elapsed()
    );
    assert!(echoes(&mut kept).unwrap());
}

/// Sandbox `id`'s flow log as the API lists it, with `query`.
fn flows(api: &Api, key: &str, id: &str, query: &str) -> serde_json::Value {
    let (status, v) = api.get(&format!("/api/sandbox/{id}/network/flows{query}"), key);
    assert_eq!(status, 200, "{v}");
    v
}

/// Waits (5 s at most) for a record of sandbox `id`'s flow log that
/// `wanted` accepts (a record crosses the runner's pump after the fact).
fn flow_where(
    api: &Api,
    key: &str,
    id: &str,
    what: &str,
    wanted: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let log = flows(api, key, id, "?limit=1000");
        if let Some(f) = log["flows"].as_array().unwrap().iter().find(|f| wanted(f)) {
            return f.clone();
        }
        assert!(Instant::now() < deadline, "no record of {what} in {log:#}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64
}

#[test]
fn the_flow_log_holds_each_connection_with_its_verdict_name_and_bytes() {
    let api = Api::start();
    let (_, key) = api.organization("flows", 3);
    let ca = api.lab().ca_pem().to_string();
    let s = api.sandbox(
        &key,
        json!({"name": "flows", "networkAllowList": format!("{SERVER4}/32"), "domainAllowList": "api.example.com"}),
    );
    let id = s["id"].as_str().unwrap();
    resolve(&api, &key, id, "api.example.com");
    let ns = api.slot_netns(id);

    // Through the gateway: the allowed name over TLS and in the clear,
    // another name of the same address.
    assert!(https(&ns, &ca, SERVER4_B, "api.example.com").answered_for("api.example.com"));
    assert!(http(&ns, SERVER4_B, "api.example.com").answered_for("api.example.com"));
    assert_eq!(https(&ns, &ca, SERVER4_B, "www.example.net"), Got::Reset);
    // By the kernel: the listed address (1000 bytes echoed, then closed),
    // an unlisted one (refused), and QUIC to the name's address (refused).
    let echo_port = ns
        .run(|| {
            let mut s = connect(SERVER4, TCP_ECHO);
            s.write_all(&[7u8; 1000])?;
            let mut back = [0u8; 1000];
            s.read_exact(&mut back)?;
            Ok(s.local_addr()?.port())
        })
        .unwrap();
    let refused = ns
        .run(|| {
            let to = SocketAddr::new(SERVER6, TCP_ECHO);
            Ok(TcpStream::connect_timeout(&to, Duration::from_millis(500)).is_err())
        })
        .unwrap();
    assert!(refused);
    assert!(!udp_echoed(&ns, SERVER4_B, QUIC));

    let from_gateway = |source: &'static str| {
        move |f: &serde_json::Value| {
            f["via"] == "gateway"
                && f["nameSource"] == source
                && f["name"] == "api.example.com"
                && !f["endMs"].is_null()
        }
    };
    for (source, port) in [("sni", HTTPS), ("host", HTTP)] {
        let f = flow_where(&api, &key, id, source, from_gateway(source));
        assert_eq!(f["verdict"], "allowed", "{f}");
        assert_eq!(f["reason"], "domain_allow_list:api.example.com", "{f}");
        assert_eq!(f["destination"], SERVER4_B.to_string(), "{f}");
        assert_eq!(f["port"], port, "{f}");
        assert_eq!(f["protocol"], "tcp", "{f}");
        // The request went up, the answer came down.
        assert!(f["bytesOut"].as_u64().unwrap() > 50, "{f}");
        assert!(f["bytesIn"].as_u64().unwrap() > 50, "{f}");
        assert!(f["endMs"].as_u64() >= f["startMs"].as_u64(), "{f}");
    }
    let mismatch = flow_where(&api, &key, id, "the other name", |f| {
        f["reason"] == "name_mismatch"
    });
    assert_eq!(mismatch["verdict"], "denied");
    assert_eq!(mismatch["via"], "gateway");
    assert_eq!(mismatch["name"], "www.example.net");
    assert_eq!(mismatch["nameSource"], "sni");
    let echo = flow_where(&api, &key, id, "the echo", |f| {
        f["via"] == "kernel" && f["sourcePort"] == echo_port
    });
    assert_eq!(echo["verdict"], "allowed", "{echo}");
    assert_eq!(echo["reason"], format!("allow_list:{SERVER4}/32"), "{echo}");
    assert_eq!(echo["destination"], SERVER4.to_string());
    assert_eq!(echo["port"], TCP_ECHO);
    // Closed, but the kernel keeps it (TIME_WAIT) for a while: open.
    assert!(echo["endMs"].is_null(), "{echo}");
    // The kernel forgets it (as its timeout would): the record ends, with
    // the bytes the kernel counted (the IP packets: 1000 bytes of data
    // each way, and the headers).
    let source = echo["source"].as_str().unwrap().to_string();
    let forgot = api
        .lab()
        .host()
        .run(move || {
            let port = echo_port.to_string();
            std::process::Command::new("conntrack")
                .args(["-D", "-p", "tcp", "-s", &source, "--sport", &port])
                .output()
        })
        .unwrap();
    assert!(forgot.status.success(), "{forgot:?}");
    let ended = flow_where(&api, &key, id, "the echo's end", |f| {
        f["id"] == echo["id"] && !f["endMs"].is_null()
    });
    for way in ["bytesOut", "bytesIn"] {
        let n = ended[way].as_u64().unwrap();
        assert!((1000..2000).contains(&n), "{way}: {ended}");
    }
    let unlisted = flow_where(&api, &key, id, "the unlisted address", |f| {
        f["destination"] == SERVER6.to_string()
    });
    assert_eq!(unlisted["verdict"], "denied");
    assert_eq!(unlisted["reason"], "not_in_allow_list");
    assert_eq!(unlisted["via"], "kernel");
    let quic = flow_where(&api, &key, id, "QUIC", |f| f["reason"] == "quic_denied");
    assert_eq!(quic["protocol"], "udp");
    assert_eq!(quic["port"], QUIC);

    // Nothing of sandgate's own services: no DNS query, and a connection
    // the gateway relayed is its record only.
    let log = flows(&api, &key, id, "?limit=1000");
    let all = log["flows"].as_array().unwrap();
    assert!(all.iter().all(|f| f["port"] != 53), "{log:#}");
    assert!(
        all.iter().all(|f| !(f["via"] == "kernel"
            && f["destination"] == SERVER4_B.to_string()
            && f["protocol"] == "tcp")),
        "{log:#}"
    );
    assert_eq!(log["dropped"], 0);
    assert_eq!(metric(&api, "sandgate_flow_records_lost_total"), 0);
    let ids: Vec<u64> = all.iter().map(|f| f["id"].as_u64().unwrap()).collect();
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "{ids:?}");
    // `limit`: the latest; `since`: what is open or ended since.
    let last = flows(&api, &key, id, "?limit=1");
    assert_eq!(last["flows"].as_array().unwrap().len(), 1);
    // (The latest: a record written since the listing above is later.)
    assert!(
        last["flows"][0]["id"].as_u64() >= ids.last().copied(),
        "{last}"
    );
    let later = flows(&api, &key, id, &format!("?since={}", now_ms() + 60_000));
    assert!(later["flows"]
        .as_array()
        .unwrap()
        .iter()
        .all(|f| f["endMs"].is_null()));

    // Followed: a new flow is told as it opens.
    let opener = {
        let ns = api.slot_netns(id);
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(500));
            ns.run(|| {
                let mut s = connect(SERVER4, TCP_ECHO);
                s.write_all(b"x")?;
                Ok(s.local_addr()?.port())
            })
            .unwrap()
        })
    };
    let since = now_ms();
    let seen = api.stream(
        &key,
        &format!("/api/sandbox/{id}/network/flows?follow=true&since={since}"),
        |f| f["via"] == "kernel" && f["startMs"].as_u64() >= Some(since) && f["port"] == TCP_ECHO,
    );
    let port = opener.join().unwrap();
    assert_eq!(seen.last().unwrap()["sourcePort"], port, "{seen:?}");
}
