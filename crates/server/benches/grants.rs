//! What a grant costs, through the API of a server in the lab, each
//! series beside a baseline from the same run (interleaved):
//!
//! 1. `POST .../network/grants` to its 201 (the grant in the kernel),
//!    against the update it stands for: `POST .../network-settings`
//!    adding the same address to the allow list, to its 200;
//! 2. the call to the first connection it lets through, from the
//!    sandbox's namespace (the call, then a connect that succeeds at once:
//!    nothing is waited for after the answer);
//! 3. `DELETE .../grants/{id}` to its 204, against the update removing
//!    the entry again.
//!
//! The brief's target: a grant takes effect within 1 ms p50 of the call;
//! the API's own work (HTTP, the key, the store, the transaction) is the
//! baseline's as well, so the figure to read is the difference.
//!
//! `cargo bench -p sandgate-server --bench grants` (as root).
//! `SANDGATE_BENCH_RUNS` sets the rounds (200).

#![allow(clippy::unwrap_used, missing_docs)]

use sandgate_lab::addrs::{SERVER4, SERVER4_B, TCP_ECHO};
use sandgate_lab::bench::{ms, percentile, stats};
use sandgate_testkit::LabServer;
use serde_json::json;
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

const ADMIN: &str = "bench-operator-token";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = sandgate_lab::bench::runs(200);
    let lab = LabServer::start("grants", ADMIN, |_| {});
    let http = &lab.http;
    let (id, ns) =
        lab.sandbox(json!({"name": "granted", "networkAllowList": format!("{SERVER4}/32")}));
    let connects = || {
        ns.run(|| {
            Ok(TcpStream::connect_timeout(
                &SocketAddr::new(SERVER4_B, TCP_ECHO),
                Duration::from_secs(1),
            )
            .is_ok())
        })
        .unwrap()
    };
    let settings = format!("/api/sandbox/{id}/network-settings");
    let grants = format!("/api/sandbox/{id}/network/grants");
    let timed = |method: &str, path: &str, body: Option<serde_json::Value>, want: u16| {
        let start = Instant::now();
        let (s, v) = http.call(method, path, body);
        let took = start.elapsed();
        assert_eq!(s, want, "{method} {path}: {v}");
        (took, v)
    };

    let (mut update_add, mut grant_add) = (Vec::new(), Vec::new());
    let (mut update_remove, mut revoke) = (Vec::new(), Vec::new());
    let mut to_first_connection = Vec::new();
    for _ in 0..runs {
        let both = format!("{SERVER4}/32,{SERVER4_B}/32");
        let (t, _) = timed(
            "POST",
            &settings,
            Some(json!({"networkAllowList": both})),
            200,
        );
        update_add.push(t);
        let (t, _) = timed(
            "POST",
            &settings,
            Some(json!({"networkAllowList": format!("{SERVER4}/32")})),
            200,
        );
        update_remove.push(t);

        let start = Instant::now();
        let (t, g) = timed(
            "POST",
            &grants,
            Some(json!({"target": SERVER4_B.to_string(), "ttlSeconds": 600})),
            201,
        );
        assert!(connects(), "the grant let nothing through");
        to_first_connection.push(start.elapsed());
        grant_add.push(t);
        let gid = g["id"].as_str().unwrap();
        let (t, _) = timed("DELETE", &format!("{grants}/{gid}"), None, 204);
        revoke.push(t);
        assert!(!connects(), "the revoke left the address open");
    }

    println!("\ngrants against the updates they stand for ({runs} rounds, interleaved)");
    stats("baseline: update adding the address", &update_add, None);
    stats("POST grant, to 201", &grant_add, Some(&update_add));
    stats(
        "POST grant, to the first connection through",
        &to_first_connection,
        Some(&update_add),
    );
    stats(
        "baseline: update removing the address",
        &update_remove,
        None,
    );
    stats("DELETE grant, to 204", &revoke, Some(&update_remove));
    let p50 = |v: &[Duration]| ms(percentile(v, 0.5));
    println!(
        "  p50 grant minus update: {:+.3} ms; revoke minus update: {:+.3} ms",
        p50(&grant_add) - p50(&update_add),
        p50(&revoke) - p50(&update_remove)
    );
}
