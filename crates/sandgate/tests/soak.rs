//! A soak run (issue 8): sandboxes that are created, run commands with
//! traffic flowing, have their policy updated and are deleted, in a loop
//! from several clients at once, against the real `sandgate server`
//! binary in a lab, for `SANDGATE_SOAK_SECONDS` (40 unless set).
//!
//! Every step's result is checked against the sandbox's policy (what is
//! allowed answers, what is not does not), the server's memory and open
//! files are sampled, and at the end nothing may be left: no sandbox, slot
//! namespace or link beyond the warm pool, no container, no file. The
//! counts are printed.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use sandgate_testkit::{names_in, runc_containers, slot_links, Http};
use serde_json::json;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

const WORKERS: usize = 3;

/// The server's resident memory (KiB) and open files.
fn usage(pid: u32) -> (u64, usize) {
    let rss = sandgate_lab::bench::rss_kib(pid).unwrap();
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap()
        .count();
    (rss, fds)
}

#[derive(Default)]
struct Counts {
    cycles: AtomicU64,
    execs: AtomicU64,
    updates: AtomicU64,
    allowed_ok: AtomicU64,
    denied_ok: AtomicU64,
    bytes: AtomicU64,
}

/// One client's loop: create, traffic, update, traffic, delete.
fn worker(http: Http, n: usize, stop: Arc<AtomicBool>, counts: Arc<Counts>) {
    let exec = |name: &str, command: &str| -> String {
        let (s, v) = http.call(
            "POST",
            &format!("/api/sandbox/{name}/process/execute"),
            Some(json!({"command": command, "timeout": 10})),
        );
        assert_eq!(s, 200, "{v}");
        counts.execs.fetch_add(1, Ordering::Relaxed);
        v["stdout"].as_str().unwrap().to_string()
    };
    // Prints which of the two servers answered, and how many bytes a
    // second of the allowed one's character stream brought.
    let traffic = |name: &str, allowed: std::net::IpAddr| -> (bool, bool, u64) {
        let out = exec(
            name,
            &format!(
                "echo a | nc -w 1 {SERVER4} {TCP_ECHO}; echo b | nc -w 1 {SERVER4_B} {TCP_ECHO}; \
                 timeout 1 nc {allowed} {TCP_STREAM} | wc -c"
            ),
        );
        let bytes = out
            .lines()
            .last()
            .and_then(|l| l.trim().parse().ok())
            .unwrap_or(0);
        (out.contains("a\n"), out.contains("b\n"), bytes)
    };
    let mut i = 0;
    while !stop.load(Ordering::Relaxed) {
        i += 1;
        let name = format!("w{n}-{i}");
        // Listed by address, or by name (admitted through the sandbox's
        // own DNS answer: example.net is SERVER4_B in the lab).
        let by_name = i % 2 == 0;
        let body = if by_name {
            json!({"name": name, "domainAllowList": "example.net"})
        } else {
            json!({"name": name, "networkAllowList": format!("{SERVER4}/32")})
        };
        let (s, v) = http.call("POST", "/api/sandbox", Some(body));
        assert_eq!(s, 201, "{v}");
        if by_name {
            let out = exec(&name, "nslookup example.net >/dev/null 2>&1; echo $?");
            assert_eq!(out.trim(), "0", "{name}: example.net did not resolve");
        }
        let allowed = if by_name { SERVER4_B } else { SERVER4 };
        let (a, b, bytes) = traffic(&name, allowed);
        assert_eq!((a, b), (!by_name, by_name), "{name} before its update");
        assert!(bytes > 0, "{name}: no stream from {allowed}");
        counts.bytes.fetch_add(bytes, Ordering::Relaxed);
        // The update turns the allowed server round.
        let swapped = if by_name {
            json!({"domainAllowList": "", "networkAllowList": format!("{SERVER4}/32")})
        } else {
            json!({"networkAllowList": format!("{SERVER4_B}/32")})
        };
        let (s, v) = http.call(
            "POST",
            &format!("/api/sandbox/{name}/network-settings"),
            Some(swapped),
        );
        assert_eq!(s, 200, "{v}");
        counts.updates.fetch_add(1, Ordering::Relaxed);
        let allowed = if by_name { SERVER4 } else { SERVER4_B };
        let (a, b, bytes) = traffic(&name, allowed);
        assert_eq!((a, b), (by_name, !by_name), "{name} after its update");
        counts.bytes.fetch_add(bytes, Ordering::Relaxed);
        counts.allowed_ok.fetch_add(2, Ordering::Relaxed);
        counts.denied_ok.fetch_add(2, Ordering::Relaxed);
        let (s, v) = http.call("DELETE", &format!("/api/sandbox/{name}"), None);
        assert_eq!(s, 204, "{v}");
        counts.cycles.fetch_add(1, Ordering::Relaxed);
    }
}

#[test]
fn sandboxes_cycling_with_traffic_leave_the_server_flat_and_the_host_clean() {
    let seconds: u64 = std::env::var("SANDGATE_SOAK_SECONDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(40);
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-soak-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut guard = Cleanup {
        dir: dir.clone(),
        server: Some(start_server(&lab, &dir)),
    };
    let url = guard.server.as_ref().unwrap().url.clone();
    let pid = guard.server.as_ref().unwrap().child.id();
    let admin = Http::new(&url, TOKEN, Duration::from_secs(60));
    let key = admin.organization("soak", 3);

    let stop = Arc::new(AtomicBool::new(false));
    let counts = Arc::new(Counts::default());
    let workers: Vec<_> = (0..WORKERS)
        .map(|n| {
            let (http, stop, counts) = (admin.with_key(&key), stop.clone(), counts.clone());
            std::thread::spawn(move || worker(http, n, stop, counts))
        })
        .collect();
    // The server's memory and open files, every second, then at the end.
    let started = Instant::now();
    let run = Duration::from_secs(seconds);
    let mut samples = Vec::new();
    while started.elapsed() < run && !workers.iter().any(|w| w.is_finished()) {
        std::thread::sleep(Duration::from_secs(1));
        samples.push((started.elapsed(), usage(pid)));
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        w.join().unwrap();
    }
    let end = usage(pid);
    // The first half's highest levels (caches and the allocator warm, as
    // many sandboxes alive as at any time) are the reference: a leak
    // grows past them by the end, when no sandbox is left.
    let first_half = samples.iter().filter(|(t, _)| *t <= run / 2);
    let warm = (
        first_half.clone().map(|(_, (rss, _))| *rss).max().unwrap(),
        first_half.map(|(_, (_, fds))| *fds).max().unwrap(),
    );
    let peak = samples.iter().map(|(_, (rss, _))| *rss).max().unwrap();
    let c = |a: &AtomicU64| a.load(Ordering::Relaxed);
    println!(
        "soak of {seconds} s, {WORKERS} clients: {} cycles (create, {} execs, {} updates, delete), \
         {} allowed and {} denied connections as expected, {} KiB streamed; \
         server RSS at most {} KiB in the first half, {} KiB at the end (peak {} KiB), open files at most {} then {}",
        c(&counts.cycles),
        c(&counts.execs),
        c(&counts.updates),
        c(&counts.allowed_ok),
        c(&counts.denied_ok),
        c(&counts.bytes) / 1024,
        warm.0,
        end.0,
        peak,
        warm.1,
        end.1
    );
    assert!(
        c(&counts.cycles) >= WORKERS as u64,
        "too few cycles to judge"
    );
    // Flat: no more than 16 MiB above the first half's highest level once
    // every sandbox is gone, and no more open files.
    assert!(
        end.0 <= warm.0 + 16 * 1024,
        "the server's memory grew from {} to {} KiB",
        warm.0,
        end.0
    );
    assert!(
        end.1 <= warm.1,
        "open files grew from {} to {}",
        warm.1,
        end.1
    );

    // Nothing left but the warm pool's one slot.
    let (s, list) = admin.with_key(&key).call("GET", "/api/sandbox", None);
    assert_eq!((s, list.as_array().map(Vec::len)), (200, Some(0)));
    assert!(runc_containers(&dir.join("runner/runtime/runc")).is_empty());
    assert!(names_in(&dir.join("runner/runtime/sandboxes")).is_empty());
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let slots = sandgate_netns::Netns::list(&format!("{}-s", lab.tag())).unwrap();
        if (slots.len(), slot_links(&lab)) == (1, 1) {
            break;
        }
        assert!(Instant::now() < deadline, "left over: {slots:?}");
        std::thread::sleep(Duration::from_millis(100));
    }
    guard.server.take().unwrap().stop_gracefully();
}
