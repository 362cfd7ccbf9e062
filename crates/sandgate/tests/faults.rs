//! `kill -9` of the server at random points of create, update and delete
//! (issue 8; `SANDGATE_FAULT_TRIALS`, 200 unless set, and
//! `SANDGATE_FAULT_SEED` to replay a run).
//!
//! Each trial sends one request to the real `sandgate server` binary in a
//! lab, kills the server after a random delay, and then checks:
//! - **while it is down**, from every slot's namespace: a sandbox the
//!   request did not touch reaches exactly what its policy allows; the one
//!   it touched reaches no more than its old or its new policy allows
//!   (never both); a slot with no sandbox reaches nothing;
//! - **after a restart**: every sandbox listed is running with one of the
//!   policies the request could leave (a create done or gone, an update old
//!   or new, a delete done or not), and its slot reaches exactly what that
//!   stored policy allows;
//! - **nothing is left over**: slot namespaces, the host side's links, the
//!   runtime's containers and directories match the sandboxes listed, plus
//!   the warm pool.
//!
//! Policies are three, each told apart by reachability: only
//! [`SERVER4`], only [`SERVER4_B`] (an allow list of both and a deny list
//! of [`SERVER4`]: a crash that lost the deny list would widen it), or
//! block-all. [`SERVER6`] is in no list, so reaching it would be a widened
//! policy too.

#![allow(clippy::unwrap_used)]

mod common;

use common::*;
use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use sandgate_testkit::{names_in, runc_containers, slot_links, slot_owners, Http};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// What a sandbox may reach.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Policy {
    OnlyA,
    OnlyB,
    Blocked,
}

const POLICIES: [Policy; 3] = [Policy::OnlyA, Policy::OnlyB, Policy::Blocked];
const TARGETS: [IpAddr; 3] = [SERVER4, SERVER4_B, SERVER6];
/// A connect that has not completed in this time counts as dropped (a
/// completed one takes well under a millisecond here)...
const QUICK: Duration = Duration::from_millis(400);
/// ...unless a second look, taken before any verdict against the policy,
/// sees it complete in this time.
const PATIENT: Duration = Duration::from_secs(2);

impl Policy {
    /// The settings of a create or an update.
    fn body(self) -> Value {
        json!({
            "networkBlockAll": self == Policy::Blocked,
            "networkAllowList": match self {
                Policy::OnlyB => format!("{SERVER4}/32,{SERVER4_B}/32"),
                _ => format!("{SERVER4}/32"),
            },
            "networkDenyList": match self {
                Policy::OnlyB => format!("{SERVER4}/32"),
                _ => String::new(),
            },
        })
    }

    /// Which of [`TARGETS`] it reaches.
    fn reach(self) -> [bool; 3] {
        match self {
            Policy::OnlyA => [true, false, false],
            Policy::OnlyB => [false, true, false],
            Policy::Blocked => [false, false, false],
        }
    }

    /// The policy a sandbox's stored view shows.
    fn of(view: &Value) -> Policy {
        if view["networkBlockAll"] == true {
            Policy::Blocked
        } else if view["networkDenyList"] == format!("{SERVER4}/32") {
            assert_eq!(
                view["networkAllowList"],
                format!("{SERVER4}/32,{SERVER4_B}/32"),
                "{view}"
            );
            Policy::OnlyB
        } else {
            assert_eq!(view["networkAllowList"], format!("{SERVER4}/32"), "{view}");
            assert!(view.get("networkDenyList").is_none(), "{view}");
            Policy::OnlyA
        }
    }
}

/// What a request in flight may leave behind.
#[derive(Debug, Clone)]
enum Op {
    Create(String, Policy),
    Update(String, Policy),
    Delete(String),
}

/// The sandboxes listed, by name.
fn sandboxes(http: &Http) -> BTreeMap<String, Value> {
    let (status, list) = http.call("GET", "/api/sandbox", None);
    assert_eq!(status, 200, "{list}");
    list.as_array()
        .unwrap()
        .iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s.clone()))
        .collect()
}

/// Which of [`TARGETS`] each named slot namespace reaches, probed at once;
/// `None` for a name that is not a namespace (yet): one a kill cut short
/// between making the file and mounting the namespace on it, which has
/// nothing in it to send from.
fn reach_of(slots: &[String], timeout: Duration) -> BTreeMap<String, Option<[bool; 3]>> {
    let probes: Vec<_> = slots
        .iter()
        .flat_map(|ns| TARGETS.iter().map(move |t| (ns.clone(), *t)))
        .map(|(ns, target)| {
            std::thread::spawn(move || {
                let ok = sandgate_netns::Netns::open(&ns).and_then(|n| {
                    n.run(|| {
                        let to = SocketAddr::new(target, TCP_ECHO);
                        Ok(TcpStream::connect_timeout(&to, timeout).is_ok())
                    })
                });
                (ns, target, ok.ok())
            })
        })
        .collect();
    let mut reach: BTreeMap<String, Option<[bool; 3]>> = BTreeMap::new();
    for p in probes {
        let (ns, target, ok) = p.join().unwrap();
        let i = TARGETS.iter().position(|t| *t == target).unwrap();
        let entry = reach.entry(ns).or_insert(Some([false; 3]));
        match (entry.as_mut(), ok) {
            (Some(r), Some(ok)) => r[i] = ok,
            _ => *entry = None,
        }
    }
    reach
}

#[test]
fn kill_9_at_random_points_leaves_every_sandbox_at_its_intended_policy_or_gone() {
    let trials: usize = std::env::var("SANDGATE_FAULT_TRIALS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed: u64 = std::env::var("SANDGATE_FAULT_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("SANDGATE_FAULT_SEED={seed}");
    let mut rng = sandgate_lab::bench::XorShift::new(seed);

    let lab = Lab::up().unwrap();
    let dir = std::env::temp_dir().join(format!("sandgate-faults-{}", lab.tag()));
    let _ = std::fs::remove_dir_all(&dir);
    let runner_dir = dir.join("runner");
    let runc_root = runner_dir.join("runtime/runc");
    let mut guard = Cleanup {
        dir: dir.clone(),
        server: Some(start_server(&lab, &dir)),
    };
    let url = guard.server.as_ref().unwrap().url.clone();
    let key = Http::new(&url, TOKEN, Duration::from_secs(30)).organization("acme", 3);
    let client_of = |server: &Option<ServerProcess>| {
        Http::new(&server.as_ref().unwrap().url, &key, Duration::from_secs(30))
    };

    // The sandboxes as the store has them: name to (id, policy).
    let mut known: BTreeMap<String, (String, Policy)> = BTreeMap::new();
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    let mut next_name = 0;
    let started = Instant::now();
    for trial in 0..trials {
        let client = client_of(&guard.server);
        // Between one and four sandboxes.
        let op = match (known.len(), rng.below(3)) {
            (0 | 1, _) | (2 | 3, 0) => {
                next_name += 1;
                Op::Create(format!("t{next_name}"), POLICIES[rng.below(3) as usize])
            }
            (_, 1) | (4.., 0) => {
                let name = known
                    .keys()
                    .nth(rng.below(known.len() as u64) as usize)
                    .unwrap();
                let old = known[name].1;
                let new = POLICIES
                    .into_iter()
                    .filter(|p| *p != old)
                    .nth(rng.below(2) as usize)
                    .unwrap();
                Op::Update(name.clone(), new)
            }
            _ => {
                let name = known
                    .keys()
                    .nth(rng.below(known.len() as u64) as usize)
                    .unwrap();
                Op::Delete(name.clone())
            }
        };
        // A create takes tens of milliseconds, an update one: the delays
        // spread the kill over the whole request and a little after.
        let delay = Duration::from_micros(match op {
            Op::Create(..) => rng.below(60_000),
            Op::Update(..) => rng.below(3_000),
            Op::Delete(..) => rng.below(40_000),
        });
        let request = {
            let op = op.clone();
            std::thread::spawn(move || match op {
                Op::Create(name, p) => {
                    let mut body = p.body();
                    body["name"] = json!(name);
                    client.try_call("POST", "/api/sandbox", Some(body))
                }
                Op::Update(name, p) => client.try_call(
                    "POST",
                    &format!("/api/sandbox/{name}/network-settings"),
                    Some(p.body()),
                ),
                Op::Delete(name) => {
                    client.try_call("DELETE", &format!("/api/sandbox/{name}"), None)
                }
            })
        };
        std::thread::sleep(delay);
        let mut server = guard.server.take().unwrap();
        server.child.kill().unwrap();
        server.child.wait().unwrap();
        let answer = request.join().unwrap();
        // An answer that came before the kill must be a success.
        if let Some((status, body)) = &answer {
            assert!(
                (200..300).contains(status),
                "trial {trial} {op:?}: {status} {body}"
            );
        }
        *counts
            .entry(if answer.is_some() { "answered" } else { "cut" })
            .or_default() += 1;

        // While the server is down: the kernel holds each slot to its
        // policy.
        let owners = slot_owners(&runner_dir, lab.tag()).unwrap();
        let slots = sandgate_netns::Netns::list(&format!("{}-s", lab.tag())).unwrap();
        let down = reach_of(&slots, QUICK);
        let ids: BTreeMap<&str, (&str, Policy)> = known
            .iter()
            .map(|(name, (id, p))| (id.as_str(), (name.as_str(), *p)))
            .collect();
        for (ns, reach) in &down {
            let mut reach = reach.unwrap_or([false; 3]);
            let owner = owners.get(ns).cloned().flatten();
            let allowed: Vec<Policy> = match owner.as_deref().map(|o| ids.get(o)) {
                // A slot with no sandbox (pool, being made or removed).
                None => vec![Policy::Blocked],
                // A sandbox the store did not have: the create in flight.
                Some(None) => match &op {
                    Op::Create(_, p) => vec![*p, Policy::Blocked],
                    other => panic!("trial {trial} {other:?}: {ns} has unknown owner {owner:?}"),
                },
                Some(Some((name, old))) => match &op {
                    Op::Update(n, new) if n == name => vec![*old, *new, Policy::Blocked],
                    Op::Delete(n) if n == name => vec![*old, Policy::Blocked],
                    _ => vec![*old],
                },
            };
            if !allowed.iter().any(|p| p.reach() == reach) {
                // A second look, with time to spare, before a verdict.
                reach = reach_of(std::slice::from_ref(ns), PATIENT)[ns].unwrap_or([false; 3]);
            }
            assert!(
                allowed.iter().any(|p| p.reach() == reach),
                "trial {trial} {op:?} (seed {seed}): while the server was down {ns} (owner {owner:?}) reached {reach:?}, allowed {allowed:?}"
            );
        }

        // After a restart: every sandbox at a policy the request could
        // leave, enforced, and nothing else left.
        guard.server = Some(start_server(&lab, &dir));
        let listed = sandboxes(&client_of(&guard.server));
        let mut now = BTreeMap::new();
        for (name, view) in &listed {
            assert_eq!(view["state"], "running", "trial {trial}: {view}");
            let p = Policy::of(view);
            let ok = match (&op, known.get(name)) {
                (Op::Create(n, want), None) => n == name && p == *want,
                (Op::Update(n, new), Some((_, old))) if n == name => p == *old || p == *new,
                (_, Some((_, old))) => p == *old,
                (_, None) => false,
            };
            assert!(ok, "trial {trial} {op:?}: after restart {name} is {p:?}");
            now.insert(name.clone(), (view["id"].as_str().unwrap().to_string(), p));
        }
        if let Op::Create(n, _) | Op::Delete(n) = &op {
            let done = now.contains_key(n) != known.contains_key(n);
            *counts
                .entry(if done { "took effect" } else { "did not" })
                .or_default() += 1;
        }
        if let Op::Update(n, new) = &op {
            let done = now[n].1 == *new;
            *counts
                .entry(if done { "took effect" } else { "did not" })
                .or_default() += 1;
        }
        known = now;

        // The warm pool (one slot) is refilled after the start: wait for
        // it, then every slot namespace and link is a sandbox's or the
        // pool's.
        let ids: BTreeSet<String> = known.values().map(|(id, _)| id.clone()).collect();
        let deadline = Instant::now() + Duration::from_secs(10);
        let (owners, slots) = loop {
            let owners = slot_owners(&runner_dir, lab.tag()).unwrap();
            let slots = sandgate_netns::Netns::list(&format!("{}-s", lab.tag())).unwrap();
            let settled = slots.len() == ids.len() + 1
                && owners.len() == slots.len()
                && slot_links(&lab) == slots.len();
            if settled || Instant::now() > deadline {
                break (owners, slots);
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        let active: BTreeMap<&String, &String> = owners
            .iter()
            .filter_map(|(ns, o)| o.as_ref().map(|o| (ns, o)))
            .collect();
        assert_eq!(
            active
                .values()
                .map(|o| o.to_string())
                .collect::<BTreeSet<_>>(),
            ids,
            "trial {trial}: active slots {owners:?}"
        );
        assert_eq!(
            slots.len(),
            ids.len() + 1,
            "trial {trial}: {slots:?} for {} sandboxes and the pool",
            ids.len()
        );
        assert_eq!(
            slots.iter().cloned().collect::<BTreeSet<_>>(),
            owners.keys().cloned().collect::<BTreeSet<_>>(),
            "trial {trial}: namespaces and records differ"
        );
        assert_eq!(slot_links(&lab), slots.len(), "trial {trial}");
        assert_eq!(runc_containers(&runc_root), ids, "trial {trial}");
        assert_eq!(
            names_in(&dir.join("runner/runtime/sandboxes")),
            ids,
            "trial {trial}"
        );
        let by_id: BTreeMap<&str, Policy> =
            known.values().map(|(id, p)| (id.as_str(), *p)).collect();
        let active_slots: Vec<String> = active.keys().map(|s| s.to_string()).collect();
        for (ns, mut reach) in reach_of(&active_slots, QUICK) {
            let p = by_id[active[&ns].as_str()];
            if reach != Some(p.reach()) {
                reach = reach_of(std::slice::from_ref(&ns), PATIENT)[&ns];
            }
            assert_eq!(
                reach,
                Some(p.reach()),
                "trial {trial} {op:?}: after restart {ns} ({p:?}) reached {reach:?}"
            );
        }
        *counts
            .entry(match op {
                Op::Create(..) => "creates",
                Op::Update(..) => "updates",
                Op::Delete(..) => "deletes",
            })
            .or_default() += 1;
    }
    println!(
        "{trials} trials in {:.0?}: {counts:?}; no policy widened, nothing left over",
        started.elapsed()
    );

    // Everything deleted, then a graceful stop: the host keeps nothing.
    let client = client_of(&guard.server);
    for name in known.keys() {
        let (s, v) = client.call("DELETE", &format!("/api/sandbox/{name}"), None);
        assert_eq!(s, 204, "{v}");
    }
    guard.server.take().unwrap().stop_gracefully();
    assert!(runc_containers(&runc_root).is_empty());
    assert!(names_in(&dir.join("runner/runtime/sandboxes")).is_empty());
}
