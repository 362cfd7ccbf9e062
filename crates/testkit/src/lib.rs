//! The server in a lab, as sandgate's tests, benchmarks and demo run it
//! (never the server itself): its lab configuration, the server run in
//! this process, a small HTTP client of its API, looks at what it left on
//! the host, and a runner double ([`double`]) for the API's tests that
//! need no root.
//!
//! Everything here obeys the lab rule (REQUIREMENTS.md section 5): the configuration
//! points the server's DNS service at the lab's resolver and its network
//! tests at lab addresses, and the client talks to loopback.

pub mod double;
pub mod postgres;
pub mod tls;

use sandgate_dns::Upstream;
use sandgate_lab::addrs::{DNS4, DNS6};
use sandgate_lab::{lab_policy, Lab};
use sandgate_netns::Netns;
use sandgate_policy::Catalog;
use sandgate_runner::RunnerConfig;
use sandgate_server::{Server, ServerConfig};
use serde_json::{json, Value};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// A server configuration for `lab`: files under `dir` (`server/`,
/// `runner/`), the runner in the lab's host namespace with a warm pool of
/// `warm_pool`, the lab's resolver upstream, lab probe targets, and
/// `admin_token` as the operator's token.
pub fn lab_server_config(
    lab: &Lab,
    dir: &Path,
    warm_pool: usize,
    admin_token: &str,
) -> ServerConfig {
    let mut runner = RunnerConfig::new(
        dir.join("runner"),
        lab.tag(),
        Upstream {
            servers: vec![SocketAddr::new(DNS4, 53), SocketAddr::new(DNS6, 53)],
            timeout: Duration::from_secs(1),
        },
    );
    runner.host_netns = Some(lab.host().name().to_string());
    runner.warm_pool = warm_pool;
    runner.fast_path = test_fast_path();
    runner.tls_roots = lab_roots(lab, dir);
    let mut cfg = ServerConfig::new(dir.join("server"), runner, lab_policy(), Catalog::builtin());
    cfg.admin_token = Some(admin_token.into());
    cfg.probe_targets = sandgate_lab::probe_targets(&cfg.catalog);
    cfg.secrets_key = Some(lab_secrets_key());
    cfg
}

/// The key that seals the secrets of servers in the lab: a fixed one, as
/// a test's key may be.
pub fn lab_secrets_key() -> sandgate_server::secrets::SecretsKey {
    sandgate_server::secrets::SecretsKey::parse(&"5a".repeat(32))
        .unwrap_or_else(|e| panic!("the lab's secrets key: {e}"))
}

/// The lab's CA in a file under `dir`: the roots against which the
/// gateway checks the lab's HTTPS servers when it terminates TLS (the
/// lab's servers are the only destinations).
pub fn lab_roots(lab: &Lab, dir: &Path) -> std::path::PathBuf {
    let path = dir.join("lab-ca.pem");
    if let Err(e) = std::fs::create_dir_all(dir).and_then(|()| std::fs::write(&path, lab.ca_pem()))
    {
        eprintln!("the lab's CA could not be written ({e}): the gateway will terminate no TLS");
    }
    path
}

/// A server configuration for a server over a runner double: files under
/// `dir`, the lab's policy and probe targets, `admin_token` as the
/// operator's token. Its runner part is never started (the double stands
/// in for it); it names the lab's resolver all the same.
pub fn double_server_config(dir: &Path, admin_token: &str) -> ServerConfig {
    let runner = RunnerConfig::new(
        dir.join("runner"),
        "double",
        Upstream {
            servers: vec![SocketAddr::new(DNS4, 53)],
            timeout: Duration::from_secs(1),
        },
    );
    let mut cfg = ServerConfig::new(dir.join("server"), runner, lab_policy(), Catalog::builtin());
    cfg.admin_token = Some(admin_token.into());
    cfg.secrets_key = Some(lab_secrets_key());
    cfg.probe_targets = sandgate_lab::probe_targets(&cfg.catalog);
    cfg
}

/// Removes every runtime sandbox of a runner and a directory of files
/// when dropped, even after a failed assertion: declared after the lab
/// and before the runner or server, it is dropped after them and before
/// the lab (which removes the slots).
pub struct Purge(pub RunnerConfig, pub std::path::PathBuf);

impl Drop for Purge {
    fn drop(&mut self) {
        // Best effort on the way out: what is left is reported by the
        // tests that look for left-overs.
        let _ = sandgate_runner::purge_runtime(&self.0);
        let _ = std::fs::remove_dir_all(&self.1);
    }
}

/// A lab with a server in it, as the API's benchmarks use them: one
/// warm slot, files under the temporary directory (removed, with every
/// sandbox, when dropped), and an organization of tier 3 with its key.
pub struct LabServer {
    // Dropped in this order: the server, its sandboxes, the lab.
    /// The server.
    pub server: InProcess,
    _purge: Purge,
    /// The runner's data directory.
    pub runner_dir: std::path::PathBuf,
    /// The runner's instance tag.
    pub instance: String,
    /// A client with the organization's key.
    pub http: Http,
    /// The lab.
    pub lab: Lab,
}

impl LabServer {
    /// Brings up a lab and a server in it for the benchmark `name`,
    /// `admin_token` as the operator's token, its configuration changed by
    /// `tweak` first.
    pub fn start(
        name: &str,
        admin_token: &str,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> LabServer {
        let lab = Lab::up().expect("the lab");
        let dir = std::env::temp_dir().join(format!("sandgate-bench-{name}-{}", lab.tag()));
        // A left-over of an earlier run, if any.
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = lab_server_config(&lab, &dir, 1, admin_token);
        tweak(&mut cfg);
        let purge = Purge(cfg.runner.clone(), dir.clone());
        let runner_dir = cfg.runner.data_dir.clone();
        let instance = cfg.runner.instance.clone();
        let server = InProcess::start(cfg, None).expect("the server");
        let admin = Http::new(&server.base, admin_token, Duration::from_secs(60));
        let http = admin.with_key(&admin.organization("bench", 3));
        LabServer {
            server,
            _purge: purge,
            runner_dir,
            instance,
            http,
            lab,
        }
    }

    /// Creates a sandbox from `body` (201, or a panic): its id, and the
    /// network namespace of its slot (what is sent from it is what the
    /// sandbox sends).
    pub fn sandbox(&self, body: Value) -> (String, Netns) {
        let (s, sandbox) = self.http.call("POST", "/api/sandbox", Some(body));
        assert_eq!(s, 201, "{sandbox}");
        let id = sandbox["id"].as_str().expect("an id").to_string();
        let ns = slot_netns(&self.runner_dir, &self.instance, &id).expect("its slot");
        (id, ns)
    }
}

/// A server running in this process on a Tokio runtime of its own,
/// listening on an unused port of 127.0.0.1; stopped when dropped.
pub struct InProcess {
    /// Its address, `http://127.0.0.1:port`.
    pub base: String,
    rt: Option<tokio::runtime::Runtime>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    serving: Option<tokio::task::JoinHandle<()>>,
}

impl InProcess {
    /// Starts a server with `cfg`, listening in `listen_in` (a network
    /// namespace's loopback) or, when `None`, in this process's own.
    pub fn start(cfg: ServerConfig, listen_in: Option<&Netns>) -> std::io::Result<InProcess> {
        let rt = tokio::runtime::Runtime::new()?;
        let (server, _) = rt.block_on(Server::start(cfg))?;
        InProcess::serve(rt, server, listen_in)
    }

    /// Starts a server with `cfg` over `runner` (a [`double::RunnerDouble`]),
    /// listening on this process's loopback.
    pub fn start_with_runner(
        cfg: ServerConfig,
        runner: std::sync::Arc<dyn sandgate_contract::Runner>,
    ) -> std::io::Result<InProcess> {
        let rt = tokio::runtime::Runtime::new()?;
        let (server, _) = rt.block_on(Server::with_runner(cfg, runner))?;
        InProcess::serve(rt, server, None)
    }

    /// [`InProcess::start_with_runner`] over several runners, each named
    /// (see `sandgate_server::fleet`).
    pub fn start_with_fleet(
        cfg: ServerConfig,
        fleet: sandgate_server::fleet::Fleet,
    ) -> std::io::Result<InProcess> {
        let rt = tokio::runtime::Runtime::new()?;
        let (server, _) = rt.block_on(Server::with_fleet(cfg, fleet))?;
        InProcess::serve(rt, server, None)
    }

    fn serve(
        rt: tokio::runtime::Runtime,
        server: Server,
        listen_in: Option<&Netns>,
    ) -> std::io::Result<InProcess> {
        let bind = || {
            let l = std::net::TcpListener::bind("127.0.0.1:0")?;
            l.set_nonblocking(true)?;
            Ok(l)
        };
        let listener = match listen_in {
            Some(ns) => ns.run(bind)?,
            None => bind()?,
        };
        let base = format!("http://{}", listener.local_addr()?);
        let listener = {
            let _entered = rt.enter();
            tokio::net::TcpListener::from_std(listener)?
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let serving = rt.spawn(async move {
            let _ = server
                .serve(listener, async {
                    let _ = stopped.await;
                })
                .await;
        });
        Ok(InProcess {
            base,
            rt: Some(rt),
            stop: Some(stop),
            serving: Some(serving),
        })
    }

    /// Stops serving gracefully and drops the server (its runner and
    /// store), waiting up to 5 s for each.
    pub fn stop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(rt) = self.rt.take() {
            if let Some(serving) = self.serving.take() {
                let _ = rt.block_on(async {
                    tokio::time::timeout(Duration::from_secs(5), serving).await
                });
            }
            rt.shutdown_timeout(Duration::from_secs(5));
        }
    }
}

impl Drop for InProcess {
    fn drop(&mut self) {
        self.stop();
    }
}

/// An HTTP client of the API at `base` (`http://127.0.0.1:port`) with one
/// bearer key.
pub struct Http {
    base: String,
    key: String,
    agent: ureq::Agent,
}

impl Http {
    /// A client of `base` sending `key`, waiting at most `timeout` for an
    /// answer.
    pub fn new(base: &str, key: &str, timeout: Duration) -> Http {
        Http {
            base: base.to_string(),
            key: key.to_string(),
            agent: ureq::Agent::config_builder()
                .http_status_as_error(false)
                .timeout_global(Some(timeout))
                .build()
                .into(),
        }
    }

    /// The same server with another key.
    pub fn with_key(&self, key: &str) -> Http {
        Http {
            base: self.base.clone(),
            key: key.to_string(),
            agent: self.agent.clone(),
        }
    }

    /// A request (`GET`, `DELETE`, or a `POST` or `PUT` with or without a
    /// JSON body): its status and JSON body (`null` when empty or not
    /// JSON); `None` when there was no answer (the server went away).
    pub fn try_call(&self, method: &str, path: &str, body: Option<Value>) -> Option<(u16, Value)> {
        let url = format!("{}{path}", self.base);
        let auth = format!("Bearer {}", self.key);
        let response = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", &auth).call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .header("Authorization", &auth)
                .call(),
            ("PUT", Some(b)) => self
                .agent
                .put(&url)
                .header("Authorization", &auth)
                .send_json(&b),
            (_, Some(b)) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_json(&b),
            (_, None) => self
                .agent
                .post(&url)
                .header("Authorization", &auth)
                .send_empty(),
        };
        let mut response = response.ok()?;
        let status = response.status().as_u16();
        let text = response.body_mut().read_to_string().ok()?;
        Some((status, serde_json::from_str(&text).unwrap_or(Value::Null)))
    }

    /// [`Http::try_call`] to a server that must answer.
    pub fn call(&self, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
        self.try_call(method, path, body)
            .unwrap_or_else(|| panic!("{method} {path}: no answer from {}", self.base))
    }

    /// With the operator's key: a new organization of `tier` and a key of
    /// it.
    pub fn organization(&self, name: &str, tier: u8) -> String {
        let (s, org) = self.call(
            "POST",
            "/api/admin/organizations",
            Some(json!({"name": name, "tier": tier})),
        );
        assert_eq!(s, 201, "{org}");
        let path = format!(
            "/api/admin/organizations/{}/keys",
            org["id"].as_str().unwrap_or_default()
        );
        let (s, key) = self.call("POST", &path, None);
        assert_eq!(s, 201, "{key}");
        key["key"].as_str().unwrap_or_default().to_string()
    }
}

/// The names in directory `dir` (none if it is missing).
pub fn names_in(dir: &Path) -> BTreeSet<String> {
    std::fs::read_dir(dir)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// The containers `runc` lists in its state directory `root` (a runner's
/// is `<runner data dir>/runtime/runc`).
pub fn runc_containers(root: &Path) -> BTreeSet<String> {
    let out = Command::new("runc")
        .arg("--root")
        .arg(root)
        .args(["list", "-q"])
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .map(str::to_string)
            .collect()
    })
    .unwrap_or_default()
}

/// Runs `bundle` detached as container `id` with `runc` of state directory
/// `root`, then deletes it: how long the run took (the OCI runtime's own
/// floor, for a baseline).
pub fn runc_run_once(root: &Path, bundle: &Path, id: &str) -> Duration {
    let runc = |args: &[&std::ffi::OsStr]| {
        let ok = Command::new("runc")
            .arg("--root")
            .arg(root)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "runc {args:?}");
    };
    let t = Instant::now();
    runc(&[
        "run".as_ref(),
        "--detach".as_ref(),
        "--bundle".as_ref(),
        bundle.as_os_str(),
        id.as_ref(),
    ]);
    let took = t.elapsed();
    runc(&["delete".as_ref(), "--force".as_ref(), id.as_ref()]);
    took
}

/// The number of slot links (host side) in the lab's host namespace.
pub fn slot_links(lab: &Lab) -> usize {
    let out = Command::new("ip")
        .args(["-n", lab.host().name(), "-o", "link", "show"])
        .output();
    out.map(|o| {
        String::from_utf8_lossy(&o.stdout)
            .lines()
            .filter(|l| {
                l.split(": ")
                    .nth(1)
                    .is_some_and(|n| n.starts_with(sandgate_dataplane::SLOT_IF_PREFIX))
            })
            .count()
    })
    .unwrap_or(0)
}

/// Reads the lab's byte stream (`TCP_STREAM`) at `addr` from `ns` until
/// nothing comes for 300 ms: the bytes received (a transfer quota stops
/// it). Panics if it still streams after 10 s.
pub fn drain_stream(ns: &Netns, addr: std::net::IpAddr) -> std::io::Result<u64> {
    use std::io::{ErrorKind, Read};
    ns.run(move || {
        let to = SocketAddr::new(addr, sandgate_lab::addrs::TCP_STREAM);
        let mut s = std::net::TcpStream::connect_timeout(&to, Duration::from_secs(3))?;
        s.set_read_timeout(Some(Duration::from_millis(300)))?;
        let start = Instant::now();
        let mut buf = vec![0u8; 64 * 1024];
        let mut got = 0u64;
        loop {
            match s.read(&mut buf) {
                Ok(0) => return Ok(got),
                Ok(n) => got += n as u64,
                Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                    return Ok(got)
                }
                Err(e) => return Err(e),
            }
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the stream never stopped"
            );
        }
    })
}

/// The network namespace of sandbox `id`'s slot, from the records of the
/// runner in `runner_dir` (instance `tag`): what is sent from it is what
/// the sandbox sends.
pub fn slot_netns(
    runner_dir: &Path,
    tag: &str,
    id: &str,
) -> std::io::Result<sandgate_netns::Netns> {
    let name = slot_owners(runner_dir, tag)?
        .into_iter()
        .find(|(_, o)| o.as_deref() == Some(id))
        .map(|(name, _)| name)
        .ok_or_else(|| {
            std::io::Error::new(
                std::io::ErrorKind::NotFound,
                format!("no slot holds sandbox {id}"),
            )
        })?;
    sandgate_netns::Netns::open(&name)
}

/// The dataplane's records, read from a runner's data directory: each
/// slot's namespace name (instance `tag`) and, for a slot in use, its
/// sandbox's id.
pub fn slot_owners(
    runner_dir: &Path,
    tag: &str,
) -> std::io::Result<BTreeMap<String, Option<String>>> {
    use sandgate_dataplane::state::{Phase, State};
    let state = State::load(&runner_dir.join("dataplane.json"))?;
    Ok(state
        .slots
        .into_iter()
        .map(|(index, r)| {
            let owner = if r.phase == Phase::Active {
                r.owner
            } else {
                None
            };
            (format!("{tag}-s{index}"), owner)
        })
        .collect())
}

/// A loopback TCP port for a server that a test stops and starts again
/// on the same address: below the kernel's ephemeral range (read from
/// `/proc/sys/net/ipv4/ip_local_port_range`), so that no connection of
/// the machine is given it meanwhile, free when chosen, and never handed
/// out twice in this process.
pub fn steady_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 10_000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let first_ephemeral: u32 = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse().ok())
        .unwrap_or(32768);
    let span = first_ephemeral.saturating_sub(LOW).max(1);
    // Where this process starts: apart from other test processes.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id() % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let n = NEXT.fetch_add(1, Ordering::SeqCst);
        let Ok(port) = u16::try_from(LOW + n % span) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free loopback port below the ephemeral range");
}

/// A TLS client (ring, the safe default versions) that trusts the CAs of
/// `roots` (PEM, each maybe a bundle) alone: the lab's, the gateway's.
pub fn tls_client(roots: &[String]) -> std::io::Result<std::sync::Arc<rustls::ClientConfig>> {
    use rustls::pki_types::pem::PemObject;
    let bad = |e: &dyn std::fmt::Display| std::io::Error::other(e.to_string());
    let mut store = rustls::RootCertStore::empty();
    for pem in roots {
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(pem.as_bytes()) {
            store.add(cert.map_err(|e| bad(&e))?).map_err(|e| bad(&e))?;
        }
    }
    let config = rustls::ClientConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(&e))?
    .with_root_certificates(store)
    .with_no_client_auth();
    Ok(std::sync::Arc::new(config))
}

/// Sends one HTTP/1.1 request over TLS from `ns` to `addr:443` with server
/// name `sni` (and `Host: sni`), trusting the CAs of `roots` (PEM) alone,
/// with `headers` (`name: value` each); the answer as text (status line,
/// headers and body), or why none came.
pub fn https_request(
    ns: &sandgate_netns::Netns,
    roots: &[String],
    addr: std::net::IpAddr,
    (sni, path): (&str, &str),
    headers: &[String],
) -> std::io::Result<String> {
    use std::io::{Read, Write};
    let (roots, sni, path) = (roots.to_vec(), sni.to_string(), path.to_string());
    let headers: String = headers.iter().map(|h| format!("{h}\r\n")).collect();
    ns.run(move || {
        let server = rustls::pki_types::ServerName::try_from(sni.clone())
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let conn = rustls::ClientConnection::new(tls_client(&roots)?, server)
            .map_err(|e| std::io::Error::other(e.to_string()))?;
        let tcp = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(addr, 443),
            Duration::from_secs(5),
        )?;
        tcp.set_read_timeout(Some(Duration::from_secs(5)))?;
        let mut tls = rustls::StreamOwned::new(conn, tcp);
        tls.write_all(
            format!("GET {path} HTTP/1.1\r\nHost: {sni}\r\n{headers}Connection: close\r\n\r\n")
                .as_bytes(),
        )?;
        let mut out = Vec::new();
        match tls.read_to_end(&mut out) {
            Ok(_) => {}
            // A server that closes without TLS's close notify: what came
            // is the answer.
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof && !out.is_empty() => {}
            Err(e) => return Err(e),
        }
        Ok(String::from_utf8_lossy(&out).into_owned())
    })
}

/// The fast path's mode for the servers and dataplanes tests start:
/// `SANDGATE_TEST_FAST_PATH` (`auto`, `on` or `off`), or the default
/// (`auto`, as a server's). `scripts/test` runs the dataplane's update,
/// cut, escape, event and lifecycle tests a second time with it off.
pub fn test_fast_path() -> sandgate_runner::FastPathMode {
    match std::env::var("SANDGATE_TEST_FAST_PATH") {
        Ok(mode) => mode
            .parse()
            .unwrap_or_else(|e| panic!("SANDGATE_TEST_FAST_PATH: {e}")),
        Err(_) => sandgate_runner::FastPathMode::default(),
    }
}
