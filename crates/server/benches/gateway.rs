//! The name-checking gateway's cost, in the lab, each beside a baseline
//! measured in the same run from the same sandbox's namespace:
//!
//! 1. connect to the last byte of an HTTP answer: `GET /` to an address
//!    admitted by name, through the gateway (the request's name checked,
//!    a connection of the gateway's own to the destination, hyper both
//!    ways), against the same request to an address the sandbox's allow
//!    list opens (forwarded by the kernel); p50 added (target: <= 0.3 ms);
//! 2. a bulk transfer (the lab's byte stream, read as fast as the reader
//!    can), through the gateway (`splice`) against direct: the ratio of
//!    bytes a second (target: >= 0.8x);
//! 3. (run last) connections held open through the gateway: the process's resident
//!    memory per connection (an upper bound: the lab's echo server, in
//!    this process too, holds a thread per connection; target: <= 64 KiB);
//! 4. HTTPS that the gateway terminates (the name has HTTP rules: a
//!    handshake with the sandbox under the gateway's CA, its own to the
//!    destination, each request checked) against HTTPS straight to the
//!    address the allow list opens: a `GET /` from connect to the last
//!    byte, and a bulk transfer (`GET /bytes/N`; target: >= 0.5x).
//!
//! `cargo bench -p sandgate-server --bench gateway` (as root).
//! `SANDGATE_BENCH_RUNS` sets the requests per series (400),
//! `SANDGATE_BENCH_GATEWAY_CONNS` the connections held (1,000; each takes
//! eight descriptors in this process: the client's, the gateway's six and
//! the echo server's).

#![allow(clippy::unwrap_used, missing_docs)]

use sandgate_gateway::hello::craft;
use sandgate_lab::addrs::HTTPS;
use sandgate_lab::addrs::{HTTP, SERVER4, SERVER4_B, TCP_ECHO, TCP_STREAM};
use sandgate_lab::bench::{rss_kib, stats};
use sandgate_testkit::LabServer;
use serde_json::json;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN: &str = "bench-operator-token";
const NAME: &str = "api.example.com";
/// A name with HTTP rules: its TLS is terminated by the gateway (4).
const RULED: &str = "rules.example.com";
const T: Duration = Duration::from_secs(5);

fn connect(addr: IpAddr, port: u16) -> TcpStream {
    let s = TcpStream::connect_timeout(&SocketAddr::new(addr, port), T).unwrap();
    s.set_read_timeout(Some(T)).unwrap();
    s.set_nodelay(true).unwrap();
    s
}

fn get(addr: IpAddr) -> Duration {
    let start = Instant::now();
    let mut s = connect(addr, HTTP);
    s.write_all(format!("GET / HTTP/1.1\r\nHost: {NAME}\r\nConnection: close\r\n\r\n").as_bytes())
        .unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).unwrap();
    assert!(
        out.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&out)
    );
    start.elapsed()
}

/// `GET path` over TLS to `addr` as [`RULED`]: the time from connect to the
/// answer's last byte, and the bytes of the answer.
fn https_get(cfg: &Arc<rustls::ClientConfig>, addr: IpAddr, path: &str) -> (Duration, u64) {
    let start = Instant::now();
    let conn = rustls::ClientConnection::new(cfg.clone(), RULED.try_into().unwrap()).unwrap();
    let mut s = rustls::StreamOwned::new(conn, connect(addr, HTTPS));
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: {RULED}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let mut buf = vec![0u8; 256 * 1024];
    let mut n = 0u64;
    let mut head = Vec::new();
    loop {
        match s.read(&mut buf) {
            Ok(0) => break,
            Ok(k) => {
                if head.len() < 12 {
                    head.extend_from_slice(&buf[..k.min(12)]);
                }
                n += k as u64;
            }
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => break,
            Err(e) => panic!("{e}"),
        }
    }
    assert!(
        head.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&head)
    );
    (start.elapsed(), n)
}

fn hello() -> Vec<u8> {
    craft::records(&craft::hello_message(&[craft::sni(&[NAME])]), 16384)
}

/// Bytes a second read from the lab's stream at `addr` for `secs`.
fn bulk(addr: IpAddr, through_gateway: bool, secs: f64) -> f64 {
    let mut s = connect(addr, TCP_STREAM);
    if through_gateway {
        s.write_all(&hello()).unwrap();
    }
    let mut buf = vec![0u8; 256 * 1024];
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed().as_secs_f64() < secs {
        n += s.read(&mut buf).unwrap() as u64;
    }
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = sandgate_lab::bench::runs(400);
    let conns: usize = std::env::var("SANDGATE_BENCH_GATEWAY_CONNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1000);
    // The lab's stream and echo, checked as names' ports, for 2 and 3.
    let lab = LabServer::start("gateway", ADMIN, |cfg| {
        cfg.runner.name_checked_ports.extend([TCP_STREAM, TCP_ECHO]);
    });
    let http = &lab.http;
    // HTTP rules on the name: its TLS is terminated by the gateway (4);
    // its plain HTTP is checked by them as well (1).
    let (id, ns) = lab.sandbox(json!({
        "name": "gw", "networkAllowList": format!("{SERVER4}/32"), "domainAllowList": format!("{NAME},{RULED}"),
        "httpRules": [{"host": RULED, "methods": ["GET"]}],
    }));
    let (s, r) = http.call(
        "POST",
        &format!("/api/sandbox/{id}/process/execute"),
        Some(json!({"command": format!("nslookup {NAME}; nslookup {RULED}"), "timeout": 10})),
    );
    assert!(
        s == 200
            && r["stdout"]
                .as_str()
                .unwrap()
                .contains(&SERVER4_B.to_string()),
        "{r}"
    );

    println!(
        "\nHTTP GET, connect to the answer's last byte, from a sandbox ({runs} each, interleaved)"
    );
    let (direct, gateway) = ns
        .run(|| {
            let (mut d, mut g) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                d.push(get(SERVER4));
                g.push(get(SERVER4_B));
            }
            Ok((d, g))
        })
        .unwrap();
    stats("baseline: an address the allow list opens", &direct, None);
    stats(
        "through the gateway (Host checked)",
        &gateway,
        Some(&direct),
    );
    let p50 = |v: &[Duration]| sandgate_lab::bench::percentile(v, 0.5);
    println!(
        "  p50 added by the gateway: {:.3} ms",
        sandgate_lab::bench::ms(p50(&gateway)) - sandgate_lab::bench::ms(p50(&direct))
    );

    println!("\nbulk transfer from the lab's stream, 2 s each, 3 rounds interleaved");
    let rounds = ns
        .run(|| {
            let mut v = Vec::new();
            for _ in 0..3 {
                v.push((bulk(SERVER4, false, 2.0), bulk(SERVER4_B, true, 2.0)));
            }
            Ok(v)
        })
        .unwrap();
    for (direct, gateway) in rounds {
        println!(
            "  direct {:8.1} MB/s   through the gateway (splice) {:8.1} MB/s   {:.2}x",
            direct / 1e6,
            gateway / 1e6,
            gateway / direct
        );
    }

    let (_, ca) = http.call(
        "POST",
        &format!("/api/sandbox/{id}/process/execute"),
        Some(json!({"command": "cat /etc/sandgate/ca.pem"})),
    );
    let cfg = sandgate_testkit::tls_client(&[
        ca["stdout"].as_str().unwrap().to_string(),
        lab.lab.ca_pem().to_string(),
    ])
    .unwrap();
    println!("\nHTTPS GET /, connect to the answer's last byte ({runs} each, interleaved)");
    let (direct, gateway) = ns
        .run(|| {
            let (mut d, mut g) = (Vec::new(), Vec::new());
            for _ in 0..runs {
                d.push(https_get(&cfg, SERVER4, "/").0);
                g.push(https_get(&cfg, SERVER4_B, "/").0);
            }
            Ok((d, g))
        })
        .unwrap();
    stats(
        "baseline: TLS to an address the allow list opens",
        &direct,
        None,
    );
    stats(
        "terminated by the gateway (rules checked)",
        &gateway,
        Some(&direct),
    );
    println!(
        "  p50 added by the gateway: {:.3} ms",
        sandgate_lab::bench::ms(p50(&gateway)) - sandgate_lab::bench::ms(p50(&direct))
    );
    println!("\nbulk transfer over HTTPS (GET /bytes/400000000), 3 rounds interleaved");
    let rounds = ns
        .run(|| {
            let rate = |addr| {
                let (t, n) = https_get(&cfg, addr, "/bytes/400000000");
                n as f64 / t.as_secs_f64()
            };
            Ok((0..3)
                .map(|_| (rate(SERVER4), rate(SERVER4_B)))
                .collect::<Vec<_>>())
        })
        .unwrap();
    for (direct, gateway) in rounds {
        println!(
            "  direct TLS {:8.1} MB/s   terminated by the gateway {:8.1} MB/s   {:.2}x",
            direct / 1e6,
            gateway / 1e6,
            gateway / direct
        );
    }

    // Last: the held connections' tracking outlives them (TIME_WAIT),
    // within the sandbox's share of tracked connections.
    println!("\n{conns} connections held open through the gateway");
    let before = rss_kib(std::process::id()).unwrap();
    let held = ns
        .run(|| {
            let mut v = Vec::new();
            for _ in 0..conns {
                let mut s = connect(SERVER4_B, TCP_ECHO);
                let h = hello();
                s.write_all(&h).unwrap();
                let mut back = vec![0u8; h.len()];
                s.read_exact(&mut back).unwrap();
                v.push(s);
            }
            Ok(v)
        })
        .unwrap();
    let after = rss_kib(std::process::id()).unwrap();
    println!(
        "  resident memory: {before} KiB before, {after} KiB with {} open: {:.1} KiB per connection (upper bound)",
        held.len(),
        (after.saturating_sub(before)) as f64 / held.len() as f64
    );
    drop(held);
}
