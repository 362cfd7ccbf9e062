//! API latency through HTTP, in the lab, each beside a baseline measured
//! in the same run:
//!
//! 1. create-to-ready: `POST /api/sandbox` until its 201 (policy in the
//!    kernel, the sandbox's first process running, the row stored), with
//!    a warm pool of network slots; against `runc run --detach` of a
//!    busybox bundle (the OCI runtime's own floor);
//! 2. a network-settings update (`POST .../network-settings` until its
//!    200: validated, resolved, in the kernel, stored); against `GET
//!    /api/sandbox/{id}` (HTTP, auth and a store read: the floor of any
//!    call);
//! 3. updates and DNS answers (a sandbox's query to its gateway, answered
//!    from the cache) while `/metrics` is scraped in a loop by another
//!    client, against the same without the scrapes, and with a loop of
//!    `GET /health` (a request that reads the store and no counter: the
//!    cost of a busy client on two cores), with 100 sandboxes alive (the
//!    scrape reads the store and the runner's last sample of the kernel's
//!    counters: no program, no lock of the dataplane).
//!
//! `cargo bench -p sandgate-server --bench api` (as root).
//! `SANDGATE_BENCH_RUNS` sets the runs per series (40).

#![allow(clippy::unwrap_used, missing_docs)]

use sandgate_lab::bench::stats;
use sandgate_lab::Lab;
use sandgate_testkit::{Http, InProcess, Purge};
use serde_json::json;
use std::time::{Duration, Instant};

const ADMIN: &str = "bench-operator-token";

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let runs = sandgate_lab::bench::runs(40);
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-bench-api-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let cfg = sandgate_testkit::lab_server_config(&lab, &dir, 4, ADMIN);
    // Whatever happens (a failed assertion too), the sandboxes go.
    let _purge = Purge(cfg.runner.clone(), dir.clone());
    let server = InProcess::start(cfg, None).unwrap();
    let admin = Http::new(&server.base, ADMIN, Duration::from_secs(60));
    let http = admin.with_key(&admin.organization("bench", 3));
    println!("\ncreate to ready through the API ({runs} runs each, warm pool of 4 slots)");
    // The baseline: runc itself on the bundle of a sandgate sandbox.
    let (s, first) = http.call("POST", "/api/sandbox", Some(json!({"name": "first"})));
    assert_eq!(s, 201);
    let id = first["id"].as_str().unwrap().to_string();
    let bundle = dir.join("runner/runtime/sandboxes").join(&id);
    let base_root = dir.join("runc-baseline");
    let base: Vec<Duration> = (0..runs)
        .map(|i| sandgate_testkit::runc_run_once(&base_root, &bundle, &format!("base{i}")))
        .collect();
    stats("baseline: runc run --detach", &base, None);
    let mut creates = Vec::new();
    for i in 0..runs {
        // Let the pool refill between creates, as between real requests.
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        let (s, v) = http.call(
            "POST",
            "/api/sandbox",
            Some(json!({"name": format!("s{i}"), "networkAllowList": "192.0.2.10/32"})),
        );
        creates.push(t.elapsed());
        assert_eq!(s, 201, "{v}");
    }
    stats(
        "POST /api/sandbox (allowlist), to 201",
        &creates,
        Some(&base),
    );
    for i in 0..runs {
        http.call("DELETE", &format!("/api/sandbox/s{i}"), None);
    }

    println!(
        "\nnetwork-settings update through the API ({} runs each)",
        runs * 5
    );
    let mut base = Vec::new();
    for _ in 0..runs * 5 {
        let t = Instant::now();
        let (s, _) = http.call("GET", "/api/sandbox/first", None);
        base.push(t.elapsed());
        assert_eq!(s, 200);
    }
    stats("baseline: GET /api/sandbox/{id}", &base, None);
    let updates: Vec<Duration> = (0..runs * 5).map(|i| update(&http, i)).collect();
    stats("POST .../network-settings, to 200", &updates, Some(&base));

    scrapes(&server.base, &http, runs, lab.tag());

    http.call("DELETE", "/api/sandbox/first", None);
    drop(server);
}

/// One network-settings update of `first` (the `i`th: lists alternate),
/// timed to its 200.
fn update(http: &Http, i: usize) -> Duration {
    let list = if i % 2 == 0 {
        "192.0.2.10/32"
    } else {
        "198.51.100.0/24"
    };
    let t = Instant::now();
    let (s, v) = http.call(
        "POST",
        "/api/sandbox/first/network-settings",
        Some(json!({"networkAllowList": list})),
    );
    let took = t.elapsed();
    assert_eq!(s, 200, "{v}");
    took
}

/// The namespace of the slot whose sandbox address is `addr`.
fn slot_of(lab: &str, addr: std::net::IpAddr) -> sandgate_netns::Netns {
    for name in sandgate_netns::Netns::list(&format!("{lab}-s")).unwrap() {
        let ns = sandgate_netns::Netns::open(&name).unwrap();
        let has = ns
            .run(|| {
                let mut rt = sandgate_netns::Rtnl::open()?;
                Ok(rt.addresses()?.iter().any(|(_, a)| *a == addr))
            })
            .unwrap();
        if has {
            return ns;
        }
    }
    panic!("no slot has {addr}")
}

/// One DNS query from `ns` to `gateway`, timed.
fn dns_once(ns: &sandgate_netns::Netns, gateway: std::net::IpAddr, query: &[u8]) -> Duration {
    ns.run(|| {
        let u = std::net::UdpSocket::bind("0.0.0.0:0")?;
        u.set_read_timeout(Some(Duration::from_secs(2)))?;
        let t = Instant::now();
        u.send_to(query, (gateway, 53))?;
        u.recv(&mut [0u8; 1024])?;
        Ok(t.elapsed())
    })
    .unwrap()
}

fn scrapes(base: &str, http: &Http, runs: usize, lab: &str) {
    println!(
        "
updates and DNS answers while /metrics is scraped in a loop (100 sandboxes alive, {} runs each)",
        runs * 5
    );
    // With `first` and `resolver`, the organization's 100 (its most).
    for i in 0..98 {
        let (s, v) = http.call(
            "POST",
            "/api/sandbox",
            Some(json!({"name": format!("m{i}")})),
        );
        assert_eq!(s, 201, "{v}");
    }
    let (_, open) = http.call("POST", "/api/sandbox", Some(json!({"name": "resolver"})));
    assert!(open["id"].is_string());
    let r = http.call(
        "POST",
        "/api/sandbox/resolver/process/execute",
        Some(json!({"command": "ip -4 -o addr show eth0"})),
    );
    let text = r.1["stdout"].as_str().unwrap().to_string();
    let addr: std::net::Ipv4Addr = text
        .split_whitespace()
        .skip_while(|w| *w != "inet")
        .nth(1)
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let gateway = std::net::IpAddr::V4(std::net::Ipv4Addr::from(u32::from(addr) - 1));
    let ns = slot_of(lab, std::net::IpAddr::V4(addr));
    let mut m = hickory_proto::op::Message::query();
    m.metadata.id = 4242;
    m.metadata.recursion_desired = true;
    m.add_query(hickory_proto::op::Query::query(
        hickory_proto::rr::Name::from_ascii("example.com.").unwrap(),
        hickory_proto::rr::RecordType::A,
    ));
    let query = m.to_vec().unwrap();
    dns_once(&ns, gateway, &query);
    // A loop of `path` requests beside the updates and queries (`None`: no
    // loop).
    let series = |scraping: Option<&'static str>| -> (Vec<Duration>, Vec<Duration>, usize) {
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let scraped = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let scraper = scraping.map(|path| {
            let (stop, scraped) = (stop.clone(), scraped.clone());
            let scrape = Http::new(base, ADMIN, Duration::from_secs(60));
            std::thread::spawn(move || {
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let (s, _) = scrape.call("GET", path, None);
                    assert_eq!(s, 200);
                    scraped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                }
            })
        });
        let mut updates = Vec::new();
        let mut answers = Vec::new();
        for i in 0..runs * 5 {
            updates.push(update(http, i));
            answers.push(dns_once(&ns, gateway, &query));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = scraper {
            t.join().unwrap();
        }
        (
            updates,
            answers,
            scraped.load(std::sync::atomic::Ordering::Relaxed),
        )
    };
    let (quiet_updates, quiet_answers, _) = series(None);
    let (health_updates, health_answers, healths) = series(Some("/health"));
    let (busy_updates, busy_answers, scraped) = series(Some("/metrics"));
    stats("update, alone (baseline)", &quiet_updates, None);
    stats(
        "update, GET /health in a loop",
        &health_updates,
        Some(&quiet_updates),
    );
    stats(
        "update, /metrics scraped in a loop",
        &busy_updates,
        Some(&quiet_updates),
    );
    stats("DNS answer, alone (baseline)", &quiet_answers, None);
    stats(
        "DNS answer, GET /health in a loop",
        &health_answers,
        Some(&quiet_answers),
    );
    stats(
        "DNS answer, /metrics scraped in a loop",
        &busy_answers,
        Some(&quiet_answers),
    );
    println!("  ({healths} health checks, {scraped} scrapes during their series)");
    for i in 0..98 {
        http.call("DELETE", &format!("/api/sandbox/m{i}"), None);
    }
    http.call("DELETE", "/api/sandbox/resolver", None);
}
