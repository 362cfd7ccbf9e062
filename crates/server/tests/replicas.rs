//! Two API replicas on one PostgreSQL store (issue 16, part 3), over one
//! runner (a double here; the real runner's side is the split tests' of
//! crates/sandgate/tests/server.rs): what one replica writes the other
//! reads, names stay unique, racing writes are serialized whole, and a
//! change that a replica cut short (it died holding the write lock) is
//! finished by the other one, and a runner that registers with one is
//! joined by the other. PostgreSQL is Debian's, a cluster of the
//! test's own on a Unix socket (`sandgate_testkit::postgres`); it runs as
//! the `postgres` user, so these tests need root, as the lab's do.

#![allow(clippy::unwrap_used)]

use sandgate_contract::Runner;
use sandgate_testkit::double::RunnerDouble;
use sandgate_testkit::postgres::Postgres;
use sandgate_testkit::{double_server_config, Http, InProcess};
use serde_json::{json, Value};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

const ADMIN: &str = "operator-token-for-replicas";

/// Two replicas, `a` and `b`, on one database and one runner double.
/// (Fields drop in order: the servers, then their directories, then
/// PostgreSQL.)
struct Replicas {
    a: InProcess,
    b: InProcess,
    double: Arc<RunnerDouble>,
    _dirs: Dirs,
    pg: Postgres,
}

struct Dirs(Vec<PathBuf>);

impl Drop for Dirs {
    fn drop(&mut self) {
        for d in &self.0 {
            let _ = std::fs::remove_dir_all(d);
        }
    }
}

impl Replicas {
    fn start(name: &str) -> Replicas {
        let pg = Postgres::start().unwrap();
        let url = pg.database(name).unwrap();
        let mut dirs = Dirs(Vec::new());
        let double = Arc::new(RunnerDouble::new(&["busybox"], sandgate_lab::lab_policy()));
        let mut replica = |n: &str| {
            let dir = std::env::temp_dir().join(format!(
                "sandgate-replica-{}-{name}-{n}",
                std::process::id()
            ));
            let _ = std::fs::remove_dir_all(&dir);
            dirs.0.push(dir.clone());
            let mut cfg = double_server_config(&dir, ADMIN);
            cfg.database = Some(url.clone());
            InProcess::start_with_runner(cfg, double.clone()).unwrap()
        };
        let a = replica("a");
        let b = replica("b");
        Replicas {
            a,
            b,
            double,
            _dirs: dirs,
            pg,
        }
    }

    fn admin(&self, replica: &InProcess) -> Http {
        Http::new(&replica.base, ADMIN, Duration::from_secs(60))
    }

    fn client(&self, replica: &InProcess, key: &str) -> Http {
        Http::new(&replica.base, key, Duration::from_secs(60))
    }
}

fn id(v: &Value) -> String {
    v["id"].as_str().unwrap().to_string()
}

#[test]
fn replicas_share_what_either_writes_and_names_stay_unique() {
    let r = Replicas::start("share");
    let key = r.admin(&r.a).organization("acme", 3);
    let (a, b) = (r.client(&r.a, &key), r.client(&r.b, &key));
    // Made at one, seen, changed and removed at the other.
    let (s, made) = b.call("POST", "/api/sandbox", Some(json!({"name": "one"})));
    assert_eq!(s, 201, "{made}");
    let (s, seen) = a.call("GET", "/api/sandbox/one", None);
    assert_eq!((s, id(&seen)), (200, id(&made)), "{seen}");
    let (s, dup) = a.call("POST", "/api/sandbox", Some(json!({"name": "one"})));
    assert_eq!(
        (s, dup["error"]["code"].as_str()),
        (409, Some("name_taken"))
    );
    // An organization's name is taken once, whichever replica is asked
    // first: the store's unique constraint decides.
    let answers: Vec<u16> = std::thread::scope(|scope| {
        let asks: Vec<_> = [&r.a, &r.b]
            .into_iter()
            .map(|replica| {
                let admin = r.admin(replica);
                scope.spawn(move || {
                    admin
                        .call(
                            "POST",
                            "/api/admin/organizations",
                            Some(json!({"name": "twice", "tier": 1})),
                        )
                        .0
                })
            })
            .collect();
        asks.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let mut sorted = answers.clone();
    sorted.sort();
    assert_eq!(sorted, vec![201, 409], "{answers:?}");
    let (s, _) = a.call("DELETE", &format!("/api/sandbox/{}", id(&made)), None);
    assert_eq!(s, 204);
    let (s, _) = b.call("GET", "/api/sandbox/one", None);
    assert_eq!(s, 404);
    assert!(r.double.ids().is_empty());
}

#[test]
fn racing_updates_through_two_replicas_are_applied_whole_one_after_the_other() {
    let r = Replicas::start("race");
    let key = r.admin(&r.a).organization("acme", 3);
    let (_, made) =
        r.client(&r.a, &key)
            .call("POST", "/api/sandbox", Some(json!({"name": "raced"})));
    let sb = id(&made);
    // Each update puts its policy in force for 30 ms before the store
    // takes it: unserialized, the last to reach the runner and the last
    // to reach the store would often differ.
    r.double.slow_updates(Duration::from_millis(30));
    let bodies = [
        json!({"networkAllowList": "198.51.100.0/28", "networkDenyList": "198.51.100.8/29"}),
        json!({"networkAllowList": "203.0.113.0/28", "networkDenyList": "203.0.113.8/29"}),
    ];
    std::thread::scope(|scope| {
        for (replica, body) in [&r.a, &r.b].into_iter().zip(&bodies) {
            let http = r.client(replica, &key);
            let path = format!("/api/sandbox/{sb}/network-settings");
            scope.spawn(move || {
                for _ in 0..15 {
                    let (s, v) = http.call("POST", &path, Some(body.clone()));
                    // Serialized: each one is applied whole, never
                    // refused for the other's sake.
                    assert_eq!(s, 200, "{v}");
                }
            });
        }
    });
    // What is in force is what either replica reads, and it is one of the
    // two changes whole.
    let held = r.double.held(&sb).unwrap().policy;
    for replica in [&r.a, &r.b] {
        let (_, row) = r
            .client(replica, &key)
            .call("GET", &format!("/api/sandbox/{sb}"), None);
        let stored = (
            row["networkAllowList"].as_str().unwrap().to_string(),
            row["networkDenyList"].as_str().unwrap().to_string(),
        );
        assert_eq!(
            stored,
            (
                held.network_allow_list.to_string(),
                held.network_deny_list.to_string()
            ),
            "the runner holds another policy than the store"
        );
        assert!(
            bodies
                .iter()
                .any(|b| b["networkAllowList"] == stored.0.as_str()
                    && b["networkDenyList"] == stored.1.as_str()),
            "a mixed policy: {stored:?}"
        );
    }
}

#[test]
fn a_change_a_dead_replica_cut_short_is_finished_by_the_other() {
    let r = Replicas::start("recover");
    let key = r.admin(&r.a).organization("acme", 3);
    let a = r.client(&r.a, &key);
    let (_, kept) = a.call(
        "POST",
        "/api/sandbox",
        Some(json!({"name": "kept", "networkAllowList": "198.51.100.0/28"})),
    );
    let (_, half) = a.call(
        "POST",
        "/api/sandbox",
        Some(json!({"name": "half", "networkAllowList": "198.51.100.0/24"})),
    );
    let (kept, half) = (id(&kept), id(&half));
    let stored = r.double.held(&kept).unwrap().policy;
    // What a replica killed amid two changes leaves: a create it never
    // settled, an update whose wider policy reached the runner but not
    // the store, and the write journal open. Written as a replica would,
    // under the write lock (the replicas' advisory lock, "sandgate").
    let mut wider = stored.clone();
    wider.network_allow_list = r.double.held(&half).unwrap().policy.network_allow_list;
    assert_ne!(wider, stored);
    r.double.update(&kept, &wider).unwrap();
    r.pg.psql(
        "recover",
        &format!(
            "SELECT pg_advisory_lock(8314047764612871269); \
             UPDATE sandboxes SET state = 'creating' WHERE id = '{half}'; \
             UPDATE write_journal SET open = 1, holder = 'gone:1', since = 'then' WHERE id = 1; \
             SELECT pg_advisory_unlock(8314047764612871269)"
        ),
    )
    .unwrap();
    // No write comes: the sweep finds it within a few seconds.
    let deadline = Instant::now() + Duration::from_secs(15);
    while r.double.held(&half).is_some() || r.double.held(&kept).unwrap().policy != stored {
        assert!(
            Instant::now() < deadline,
            "the change cut short was not finished"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (s, _) = r
        .client(&r.b, &key)
        .call("GET", &format!("/api/sandbox/{half}"), None);
    assert_eq!(s, 404, "the half-made sandbox's row is gone");
    let (s, row) = r
        .client(&r.b, &key)
        .call("GET", &format!("/api/sandbox/{kept}"), None);
    assert_eq!((s, row["state"].as_str()), (200, Some("running")));
    // The journal is closed as the restore ends.
    let deadline = Instant::now() + Duration::from_secs(5);
    while r
        .pg
        .psql("recover", "SELECT open FROM write_journal")
        .unwrap()
        != "0"
    {
        assert!(Instant::now() < deadline, "the write journal stays open");
        std::thread::sleep(Duration::from_millis(50));
    }
    // The replicas go on serving.
    let (s, _) = r.client(&r.b, &key).call(
        "POST",
        &format!("/api/sandbox/{kept}/network-settings"),
        Some(json!({"networkAllowList": "203.0.113.0/28"})),
    );
    assert_eq!(s, 200);
}

#[test]
fn each_refused_attempt_is_counted_once_by_one_replica_and_another_takes_over() {
    let mut r = Replicas::start("approvals");
    let key = r.admin(&r.a).organization("acme", 3);
    let (s, made) = r.client(&r.a, &key).call(
        "POST",
        "/api/sandbox",
        Some(json!({"name": "asks", "networkAllowList": "198.51.100.0/28", "networkApprovals": true})),
    );
    assert_eq!(s, 201, "{made}");
    let sb = id(&made);
    // A change through each replica: each replica's handler asks to
    // watch the sandbox, and only the lead does.
    for replica in [&r.b, &r.a] {
        let (s, v) = r.client(replica, &key).call(
            "POST",
            &format!("/api/sandbox/{sb}/network-settings"),
            Some(json!({"networkAllowList": "198.51.100.0/28", "networkApprovals": true})),
        );
        assert_eq!(s, 200, "{v}");
    }
    let refused = |n: u64| sandgate_contract::NetworkEvent {
        time_ms: 1_000 + n,
        sandbox: sb.clone(),
        kind: sandgate_contract::EventKind::Dns,
        protocol: "A".into(),
        destination: None,
        port: Some(53),
        domain: Some("wanted.example".into()),
        reason: "dns_not_allowed".into(),
        count: None,
    };
    let (ca, cb) = (r.client(&r.a, &key), r.client(&r.b, &key));
    let attempts = |http: &Http| -> u64 {
        let (_, v) = http.call("GET", &format!("/api/sandbox/{sb}/network/requests"), None);
        v["requests"]
            .as_array()
            .and_then(|all| all.first())
            .and_then(|q| q["attempts"].as_u64())
            .unwrap_or(0)
    };
    // One replica leads (within a look of the lead); until then an event
    // may find no watcher, so they are sent until one is counted.
    let deadline = Instant::now() + Duration::from_secs(15);
    let mut sent = 0;
    while attempts(&cb) == 0 {
        assert!(Instant::now() < deadline, "no replica counted an attempt");
        sent += 1;
        r.double.publish(refused(sent));
        std::thread::sleep(Duration::from_millis(200));
    }
    // Both replicas follow the runner's events; only the lead counts.
    let before = attempts(&ca);
    for _ in 0..3 {
        sent += 1;
        r.double.publish(refused(sent));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while attempts(&ca) < before + 3 {
        assert!(Instant::now() < deadline, "the attempts were not counted");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(500));
    assert_eq!(attempts(&cb), before + 3, "an attempt counted twice");
    // Whichever replica led stops (its session ends); the other takes
    // the lead over and counts on.
    r.a.stop();
    let counted = attempts(&cb);
    let deadline = Instant::now() + Duration::from_secs(15);
    while attempts(&cb) == counted {
        assert!(Instant::now() < deadline, "no replica took the lead over");
        sent += 1;
        r.double.publish(refused(sent));
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn a_runner_that_registers_with_one_replica_is_joined_by_the_other() {
    let pg = Postgres::start().unwrap();
    let url = pg.database("register").unwrap();
    let joined = Arc::new(RunnerDouble::new(&["busybox"], sandgate_lab::lab_policy()));
    let mut dirs = Dirs(Vec::new());
    let mut replica = |n: &str| {
        let dir = std::env::temp_dir().join(format!(
            "sandgate-replica-{}-register-{n}",
            std::process::id()
        ));
        let _ = std::fs::remove_dir_all(&dir);
        dirs.0.push(dir.clone());
        let mut cfg = double_server_config(&dir, ADMIN);
        cfg.database = Some(url.clone());
        let double = joined.clone();
        cfg.connector = Some(sandgate_server::registry::Connector(Arc::new(
            move |url: &str, _: &str| {
                assert_eq!(url, "double://0");
                let d: Arc<dyn Runner> = double.clone();
                Ok(d)
            },
        )));
        InProcess::start_with_fleet(cfg, sandgate_server::fleet::Fleet::empty()).unwrap()
    };
    let (a, b) = (replica("a"), replica("b"));
    let admin_a = Http::new(&a.base, ADMIN, Duration::from_secs(60));
    let admin_b = Http::new(&b.base, ADMIN, Duration::from_secs(60));

    // Registered with a: a joins it at once; b within a look.
    let (s, issued) = admin_a.call("POST", "/api/admin/runners", Some(json!({"name": "r1"})));
    assert_eq!(s, 201, "{issued}");
    let beat = Http::new(
        &a.base,
        issued["token"].as_str().unwrap(),
        Duration::from_secs(60),
    );
    // a joins it in a task of its own; b within a look.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (s, v) = beat.call(
            "POST",
            "/api/runners/heartbeat",
            Some(
                json!({"name": "r1", "url": "double://0", "callToken": "a-call-token-of-the-double",
                        "slots": 10, "used": 0}),
            ),
        );
        assert_eq!(s, 200, "{v}");
        if v["member"] == true {
            break;
        }
        assert!(Instant::now() < deadline, "a never joined r1");
        std::thread::sleep(Duration::from_millis(50));
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (_, runners) = admin_b.call("GET", "/api/admin/runners", None);
        if runners[0]["name"] == "r1" && runners[0]["state"] == "active" {
            break;
        }
        assert!(Instant::now() < deadline, "b never joined r1: {runners}");
        std::thread::sleep(Duration::from_millis(100));
    }
    // Either replica places on it.
    let key = admin_b.organization("acme", 3);
    let (s, made) =
        admin_b
            .with_key(&key)
            .call("POST", "/api/sandbox", Some(json!({"name": "via-b"})));
    assert_eq!((s, made["runner"].as_str()), (201, Some("r1")), "{made}");
    assert!(joined.held(made["id"].as_str().unwrap()).is_some());
    drop((a, b));
}

#[test]
fn a_restore_one_replica_owes_a_runner_is_paid_by_the_other() {
    let Replicas {
        a,
        b,
        double,
        _dirs,
        pg,
    } = Replicas::start("owed");
    let admin = Http::new(&a.base, ADMIN, Duration::from_secs(60));
    let (s, org) = admin.call(
        "POST",
        "/api/admin/organizations",
        Some(json!({"name": "acme", "tier": 3})),
    );
    assert_eq!(s, 201, "{org}");
    let (_, key) = admin.call(
        "POST",
        &format!(
            "/api/admin/organizations/{}/keys",
            org["id"].as_str().unwrap()
        ),
        None,
    );
    let client = Http::new(
        &a.base,
        key["key"].as_str().unwrap(),
        Duration::from_secs(60),
    );
    let (s, made) = client.call("POST", "/api/sandbox", Some(json!({"name": "x"})));
    assert_eq!(s, 201, "{made}");
    let sb = id(&made);
    let before = double.held(&sb).unwrap().policy;

    // The runner is away: a's update of the sandbox reaches it neither
    // as an update nor as a cut-off (503: nothing of it stored, the
    // journal closed), and no restore reaches it: a owes the runner a
    // restore, recorded in the store.
    double.set_away(true);
    let restores = double.restores();
    let (s, v) = client.call(
        "POST",
        &format!("/api/sandbox/{sb}/network-settings"),
        Some(json!({"networkAllowList": "198.51.100.0/24"})),
    );
    assert_eq!(
        (s, v["error"]["code"].as_str()),
        (503, Some("runner_unavailable")),
        "{v}"
    );
    assert_eq!(
        pg.psql("owed", "SELECT owed FROM runners WHERE name = 'main'")
            .unwrap(),
        "1"
    );

    // a is gone before it pays; the runner answers again: b pays it (the
    // store says so: nothing in the journal), and nothing is owed any
    // more.
    drop(a);
    double.set_away(false);
    let deadline = Instant::now() + Duration::from_secs(15);
    while double.restores() == restores {
        assert!(Instant::now() < deadline, "b never paid the restore a owed");
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(
        double.held(&sb).unwrap().policy,
        before,
        "the stored policy"
    );
    let deadline = Instant::now() + Duration::from_secs(5);
    while pg
        .psql("owed", "SELECT owed FROM runners WHERE name = 'main'")
        .unwrap()
        != "0"
    {
        assert!(Instant::now() < deadline, "still owed");
        std::thread::sleep(Duration::from_millis(100));
    }
    drop(b);
}

#[test]
fn a_change_in_flight_is_not_taken_for_one_cut_short() {
    // The journal is open for every change in flight: the replicas'
    // looks (every 2 s) see it so during a slow update, and must not
    // restore every sandbox for it (a full reconcile under the write
    // lock at every look that lands amid a change).
    let r = Replicas::start("inflight");
    let key = r.admin(&r.a).organization("acme", 3);
    let a = r.client(&r.a, &key);
    let (s, made) = a.call("POST", "/api/sandbox", Some(json!({"name": "x"})));
    assert_eq!(s, 201, "{made}");
    let restores = r.double.restores();
    r.double.slow_updates(Duration::from_secs(5));
    let (s, v) = a.call(
        "POST",
        &format!("/api/sandbox/{}/network-settings", id(&made)),
        Some(json!({"networkAllowList": "198.51.100.0/24"})),
    );
    assert_eq!(s, 200, "{v}");
    r.double.slow_updates(Duration::ZERO);
    // Both replicas looked at least twice amid it; a look after it too.
    std::thread::sleep(Duration::from_millis(2500));
    assert_eq!(
        r.double.restores(),
        restores,
        "restored for a change in flight"
    );
}
