//! Load: `SANDGATE_LOAD_SANDBOXES` (1,000) sandboxes alive at once on one
//! host, made through the API by four clients, in the lab, with traffic.
//!
//! Each figure is printed beside its baseline from the same run, taken
//! when (almost) nothing else was alive, so that the ratio shows what the
//! number of live sandboxes costs:
//! 1. create-to-ready (201), one at a time, and `runc run --detach` of the
//!    same bundle, with one sandbox alive against all of them (and the
//!    latencies the four clients saw, first tenth against last);
//! 2. a network-settings update, exec with traffic (a TCP echo through the
//!    policy), and a DNS lookup admitting an address, with one sandbox
//!    alive against all of them;
//! 3. memory: the server's resident set and the host's available memory,
//!    per sandbox;
//! 4. traffic: a TCP echo round trip from every sandbox's slot, eight at
//!    a time, against as many from one slot;
//! 5. enforcement, checked on a sample of the live sandboxes: what the
//!    policy allows answers, the rest does not; and everything gone after
//!    the deletes.
//!
//! `cargo bench -p sandgate-server --bench load` (as root).

#![allow(clippy::unwrap_used, missing_docs)]

use sandgate_lab::addrs::*;
use sandgate_lab::bench::{ms, stats};
use sandgate_lab::Lab;
use sandgate_testkit::{Http, InProcess};
use serde_json::json;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

const ADMIN: &str = "load-operator-token";
const CLIENTS: usize = 4;

fn mem_available_kib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("MemAvailable:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap()
}

/// `runs` creates (to 201) one after another, each deleted after, and as
/// many `runc run --detach` of the bundle of sandbox `bundle_of` (the OCI
/// runtime's own floor, at the same load).
fn one_by_one(
    http: &Http,
    dir: &std::path::Path,
    bundle_of: &str,
    runs: usize,
) -> [Vec<Duration>; 2] {
    let (_, v) = http.call("GET", &format!("/api/sandbox/{bundle_of}"), None);
    let bundle = dir
        .join("runner/runtime/sandboxes")
        .join(v["id"].as_str().unwrap());
    let root = dir.join("runc-baseline");
    let mut base = Vec::new();
    let mut made = Vec::new();
    for i in 0..runs {
        base.push(sandgate_testkit::runc_run_once(
            &root,
            &bundle,
            &format!("base{i}"),
        ));
        // Let the warm pool refill, as between real requests.
        std::thread::sleep(Duration::from_millis(30));
        let t = Instant::now();
        let (s, v) = http.call(
            "POST",
            "/api/sandbox",
            Some(json!({"name": format!("c{i}")})),
        );
        made.push(t.elapsed());
        assert_eq!(s, 201, "{v}");
        http.call("DELETE", &format!("/api/sandbox/c{i}"), None);
    }
    [base, made]
}

/// The same operations on sandbox `name`, `runs` times each: updates
/// (turning its allow list round), execs with a TCP echo through the
/// policy, and DNS lookups that admit an address.
fn operations(http: &Http, name: &str, runs: usize) -> [Vec<Duration>; 3] {
    let mut updates = Vec::new();
    for i in 0..runs {
        let list = if i % 2 == 0 {
            format!("{SERVER4}/32")
        } else {
            format!("{SERVER4}/32,{SERVER6}/128")
        };
        let t = Instant::now();
        let (s, v) = http.call(
            "POST",
            &format!("/api/sandbox/{name}/network-settings"),
            Some(json!({"networkAllowList": list})),
        );
        updates.push(t.elapsed());
        assert_eq!(s, 200, "{v}");
    }
    let exec = |command: &str| {
        let t = Instant::now();
        let (s, v) = http.call(
            "POST",
            &format!("/api/sandbox/{name}/process/execute"),
            Some(json!({"command": command, "timeout": 10})),
        );
        let took = t.elapsed();
        assert_eq!(s, 200, "{v}");
        (took, v["stdout"].as_str().unwrap_or_default().to_string())
    };
    let mut execs = Vec::new();
    let mut lookups = Vec::new();
    for _ in 0..runs {
        let (took, out) = exec(&format!("echo load | nc -w 2 {SERVER4} {TCP_ECHO}"));
        assert_eq!(out, "load\n");
        execs.push(took);
        let (took, out) = exec("nslookup example.com >/dev/null && echo ok");
        assert_eq!(out, "ok\n");
        lookups.push(took);
    }
    [updates, execs, lookups]
}

/// Runs `job(i)` for every `i` below `n` on `threads` threads, each taking
/// the next index when it is done: how long all took.
fn in_parallel(threads: usize, n: usize, job: impl Fn(usize) + Sync) -> Duration {
    let next = AtomicUsize::new(0);
    let started = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= n {
                    break;
                }
                job(i);
            });
        }
    });
    started.elapsed()
}

/// A TCP echo round trip (1 KiB) to [`SERVER4`] from each of the slot
/// namespaces `slots`, by eight threads at once: how long all took and how
/// many came back whole.
fn round_trips(slots: &[String]) -> (Duration, usize) {
    use std::io::{Read, Write};
    let whole = AtomicUsize::new(0);
    let took = in_parallel(8, slots.len(), |i| {
        let ok = sandgate_netns::Netns::open(&slots[i]).and_then(|ns| {
            ns.run(|| {
                let to = std::net::SocketAddr::new(SERVER4, TCP_ECHO);
                let mut c = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(2))?;
                c.set_read_timeout(Some(Duration::from_secs(2)))?;
                let sent = [7u8; 1024];
                c.write_all(&sent)?;
                let mut got = [0u8; 1024];
                c.read_exact(&mut got)?;
                Ok(got == sent)
            })
        });
        if ok.unwrap_or(false) {
            whole.fetch_add(1, Ordering::Relaxed);
        }
    });
    (took, whole.into_inner())
}

/// The slot namespace of each sandbox the dataplane holds (by its record
/// in the runner's directory), the one of `probe_id` apart.
fn sandbox_slots(dir: &std::path::Path, tag: &str, probe_id: &str) -> (String, Vec<String>) {
    let mut probe = String::new();
    let mut others = Vec::new();
    for (name, owner) in sandgate_testkit::slot_owners(&dir.join("runner"), tag).unwrap() {
        match owner.as_deref() {
            Some(id) if id == probe_id => probe = name,
            Some(_) => others.push(name),
            None => {}
        }
    }
    (probe, others)
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    let total = sandgate_lab::bench::load_sandboxes(1000);
    let runs = sandgate_lab::bench::runs(40);
    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-bench-load-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let mut cfg = sandgate_testkit::lab_server_config(&lab, &dir, 4, ADMIN);
    cfg.max_sandboxes_per_org = total + 10;
    let runner_cfg = cfg.runner.clone();
    let server = InProcess::start(cfg, None).unwrap();
    let admin = Http::new(&server.base, ADMIN, Duration::from_secs(120));
    let http = admin.with_key(&admin.organization("load", 3));
    let body = |name: &str| {
        json!({
            "name": name,
            "networkAllowList": format!("{SERVER4}/32"),
            "domainAllowList": "example.com",
        })
    };

    // The baselines: one sandbox alive.
    let (s, v) = http.call("POST", "/api/sandbox", Some(body("probe")));
    assert_eq!(s, 201, "{v}");
    let alone = operations(&http, "probe", runs);
    let [runc_alone, create_alone] = one_by_one(&http, &dir, "probe", runs);
    let (mem0, rss0) = (
        mem_available_kib(),
        sandgate_lab::bench::rss_kib(std::process::id()).unwrap(),
    );

    println!("\n{total} sandboxes, made by {CLIENTS} clients at once");
    let creates = Mutex::new(vec![Duration::ZERO; total]);
    let made_in = in_parallel(CLIENTS, total, |i| {
        let t = Instant::now();
        let (st, v) = http.call("POST", "/api/sandbox", Some(body(&format!("l{i}"))));
        let took = t.elapsed();
        assert_eq!(st, 201, "sandbox {i}: {v}");
        creates.lock().unwrap()[i] = took;
    });
    let creates = creates.into_inner().unwrap();
    let (mem1, rss1) = (
        mem_available_kib(),
        sandgate_lab::bench::rss_kib(std::process::id()).unwrap(),
    );
    println!(
        "all {total} made in {:.1} s ({:.1} a second)",
        made_in.as_secs_f64(),
        total as f64 / made_in.as_secs_f64()
    );
    let window = (total / 10).max(1);
    stats(
        &format!("create to 201, the first {window}"),
        &creates[..window],
        None,
    );
    stats(
        &format!("create to 201, the last {window}"),
        &creates[total - window..],
        Some(&creates[..window]),
    );

    println!("\nwith {} sandboxes alive ({runs} runs each)", total + 1);
    let [runc_loaded, create_loaded] = one_by_one(&http, &dir, "probe", runs);
    stats("runc run --detach, one alive", &runc_alone, None);
    stats(
        "runc run --detach, all alive",
        &runc_loaded,
        Some(&runc_alone),
    );
    stats("create to 201, one alive", &create_alone, Some(&runc_alone));
    stats(
        "create to 201, all alive",
        &create_loaded,
        Some(&create_alone),
    );
    let loaded = operations(&http, "probe", runs);
    for (i, what) in [
        "network-settings update, to 200",
        "exec: a TCP echo through the policy",
        "exec: a DNS lookup admitting an address",
    ]
    .iter()
    .enumerate()
    {
        stats(&format!("{what}, one alive"), &alone[i], None);
        stats(&format!("{what}, all alive"), &loaded[i], Some(&alone[i]));
    }
    println!(
        "memory: the server's resident set {} -> {} KiB ({:.1} KiB a sandbox); host's available memory {:.0} KiB less a sandbox",
        rss0,
        rss1,
        (rss1 as f64 - rss0 as f64) / total as f64,
        (mem0 as f64 - mem1 as f64) / total as f64
    );

    // Traffic through every sandbox's slot at once, against as many round
    // trips through the probe's slot alone.
    let (_, v) = http.call("GET", "/api/sandbox/probe", None);
    let (probe_slot, slots) = sandbox_slots(&dir, lab.tag(), v["id"].as_str().unwrap());
    let (alone_took, alone_ok) = round_trips(&vec![probe_slot; slots.len()]);
    let (all_took, all_ok) = round_trips(&slots);
    println!(
        "TCP echo round trips: {} from one sandbox's slot in {:.2} s ({alone_ok} whole); \
         one from each of {} sandboxes' slots in {:.2} s ({all_ok} whole): {:.3}x the time",
        slots.len(),
        alone_took.as_secs_f64(),
        slots.len(),
        all_took.as_secs_f64(),
        all_took.as_secs_f64() / alone_took.as_secs_f64()
    );
    assert_eq!((alone_ok, all_ok), (slots.len(), slots.len()));

    // Enforcement on a sample across the range: the listed server answers,
    // another does not.
    let sample: Vec<usize> = (0..total).step_by((total / 20).max(1)).collect();
    let t = Instant::now();
    for i in &sample {
        let (s, v) = http.call(
            "POST",
            &format!("/api/sandbox/l{i}/process/execute"),
            Some(json!({"command": format!(
                "echo a | nc -w 1 {SERVER4} {TCP_ECHO}; echo b | nc -w 1 {SERVER4_B} {TCP_ECHO}; true"
            ), "timeout": 10})),
        );
        assert_eq!(s, 200, "{v}");
        assert_eq!(v["stdout"], "a\n", "sandbox l{i}: {v}");
    }
    println!(
        "enforcement checked in {} of them: allowed answered, denied did not ({:.0} ms each)",
        sample.len(),
        ms(t.elapsed()) / sample.len() as f64
    );

    let deleted_in = in_parallel(CLIENTS, total, |i| {
        let (st, v) = http.call("DELETE", &format!("/api/sandbox/l{i}"), None);
        assert_eq!(st, 204, "sandbox {i}: {v}");
    });
    println!("\nall {total} deleted in {:.1} s", deleted_in.as_secs_f64());
    http.call("DELETE", "/api/sandbox/probe", None);
    let left = sandgate_netns::Netns::list(&format!("{}-s", lab.tag()))
        .unwrap()
        .len();
    println!("slot namespaces left: {left} (the warm pool holds 4)");
    drop(server);
    let _ = sandgate_runner::purge_runtime(&runner_cfg);
    let _ = std::fs::remove_dir_all(&dir);
}
