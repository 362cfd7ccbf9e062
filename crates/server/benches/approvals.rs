//! What an approval costs, through the API of a server in the lab, beside
//! a baseline from the same run (interleaved):
//!
//! 1. `POST .../requests/{id}/approve` with a TTL, to its 200 (a grant of
//!    the request's name in force), against `POST .../grants` of the same
//!    name to its 201 (the work an approval stands for);
//! 2. the approve call to the answer of the DNS query held for it
//!    (`approvalHoldSeconds`), read in the sandbox's namespace: the brief's
//!    target is 50 ms.
//!
//! Each round: the sandbox asks a name it is refused; the query is held
//! and its access request opens (again: the grant of the round before was
//! revoked, so the request is pending once more); the request is approved;
//! the held query's answer arrives; the grant is revoked; then the same
//! name is granted directly and revoked, the baseline.
//!
//! `cargo bench -p sandgate-server --bench approvals` (as root).
//! `SANDGATE_BENCH_RUNS` sets the rounds (200).

#![allow(clippy::unwrap_used, missing_docs)]

use sandgate_lab::addrs::{DNS4, SERVER4};
use sandgate_lab::bench::{ms, percentile, stats};
use sandgate_testkit::LabServer;
use serde_json::json;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

const ADMIN: &str = "bench-operator-token";
const NAME: &str = "held.example.com";

/// A DNS query for `name`'s A record, id `id`.
fn query(id: u16, name: &str) -> Vec<u8> {
    let mut q = id.to_be_bytes().to_vec();
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 0]);
    for label in name.split('.') {
        q.push(u8::try_from(label.len()).unwrap());
        q.extend_from_slice(label.as_bytes());
    }
    q.extend_from_slice(&[0, 0, 1, 0, 1]);
    q
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = sandgate_lab::bench::runs(200);
    let lab = LabServer::start("approvals", ADMIN, |_| {});
    let http = &lab.http;
    let (id, ns) = lab.sandbox(
        json!({"name": "asking", "networkAllowList": format!("{SERVER4}/32"),
               "networkApprovals": true, "approvalHoldSeconds": 30}),
    );
    // Port 53 of any address reaches the DNS service of the sandbox's
    // host; the lab's resolver address is as good as any (a lab address).
    let socket = ns
        .run(|| {
            let u = UdpSocket::bind("0.0.0.0:0")?;
            u.connect(SocketAddr::new(DNS4, 53))?;
            u.set_read_timeout(Some(Duration::from_secs(40)))?;
            Ok(u)
        })
        .unwrap();
    let requests = format!("/api/sandbox/{id}/network/requests");
    let grants = format!("/api/sandbox/{id}/network/grants");

    let (mut approve, mut to_answer, mut grant) = (Vec::new(), Vec::new(), Vec::new());
    for round in 0..runs {
        let asked = u16::try_from(round % 60_000).unwrap();
        socket.send(&query(asked, NAME)).unwrap();
        // The request, pending (opened, or opened again).
        let request = loop {
            let (s, v) = http.call("GET", &format!("{requests}?state=pending"), None);
            assert_eq!(s, 200, "{v}");
            if let Some(r) = v["requests"].as_array().unwrap().first() {
                break r["id"].as_str().unwrap().to_string();
            }
            std::thread::sleep(Duration::from_millis(2));
        };
        // The held answer is read on a thread of its own, stamped as it
        // arrives (before or after the approve's 200).
        let (s, v, start, answered) = std::thread::scope(|scope| {
            let reader = scope.spawn(|| {
                let mut buf = [0u8; 512];
                let n = socket.recv(&mut buf).unwrap();
                (Instant::now(), buf, n)
            });
            let start = Instant::now();
            let (s, v) = http.call(
                "POST",
                &format!("{requests}/{request}/approve"),
                Some(json!({"ttlSeconds": 600})),
            );
            approve.push(start.elapsed());
            (s, v, start, reader.join().unwrap())
        });
        assert_eq!(s, 200, "{v}");
        let (at, buf, n) = answered;
        to_answer.push(at.duration_since(start));
        assert_eq!(u16::from_be_bytes([buf[0], buf[1]]), asked);
        assert_eq!(
            buf[3] & 0x0f,
            0,
            "the held query was not answered NOERROR: {:?}",
            String::from_utf8_lossy(&buf[..n])
        );
        let gid = v["grantId"].as_str().unwrap();
        let (s, v) = http.call("DELETE", &format!("{grants}/{gid}"), None);
        assert_eq!(s, 204, "{v}");

        // The baseline: the grant an approval makes, given directly.
        let start = Instant::now();
        let (s, v) = http.call(
            "POST",
            &grants,
            Some(json!({"target": NAME, "ttlSeconds": 600})),
        );
        grant.push(start.elapsed());
        assert_eq!(s, 201, "{v}");
        let gid = v["id"].as_str().unwrap();
        let (s, v) = http.call("DELETE", &format!("{grants}/{gid}"), None);
        assert_eq!(s, 204, "{v}");
    }

    println!("\napprovals against the grants they make ({runs} rounds, interleaved)");
    stats("baseline: POST grant of the name, to 201", &grant, None);
    stats("POST approve (TTL), to 200", &approve, Some(&grant));
    stats(
        "POST approve, to the held query's answer",
        &to_answer,
        Some(&grant),
    );
    let p50 = |v: &[Duration]| ms(percentile(v, 0.5));
    println!(
        "  p50 approve minus grant: {:+.3} ms; the held answer minus the approve's 200: {:+.3} ms",
        p50(&approve) - p50(&grant),
        p50(&to_answer) - p50(&approve)
    );
}
