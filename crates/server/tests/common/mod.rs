//! A sandgate server in a lab of its own, driven through HTTP on loopback
//! (REQUIREMENTS.md section 5: the runner and its DNS service work in the lab's
//! `host` namespace; only loopback and the lab's addresses are reached).

#![allow(dead_code, clippy::unwrap_used)]

use sandgate_lab::addrs::*;
use sandgate_lab::Lab;
use sandgate_server::ServerConfig;
use sandgate_testkit::double::RunnerDouble;
use sandgate_testkit::InProcess;
use serde_json::{json, Value};
use std::net::IpAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

pub const ADMIN: &str = "operator-token-for-tests";

/// Method, path, key, body, expected status, expected code.
pub type Case<'a> = (&'a str, String, Option<&'a str>, Send<'a>, u16, &'a str);

/// Sends each case and checks its status and code, a message for a
/// person, and none of the OCI runtime's own words in the answer.
pub fn refused(api: &Api, cases: Vec<Case<'_>>) {
    for (method, path, key, body, status, code) in cases {
        let (s, v) = api.call(method, &path, key, body);
        assert_eq!(
            (s, v["error"]["code"].as_str()),
            (status, Some(code)),
            "{method} {path}: {v}"
        );
        assert!(
            v["error"]["message"]
                .as_str()
                .is_some_and(|m| !m.is_empty()),
            "{v}"
        );
        for runtime_words in ["config.json", "chdir", "runc"] {
            assert!(
                !v.to_string().contains(runtime_words),
                "{method} {path}: {v}"
            );
        }
    }
}

/// What a request sends.
pub enum Send<'a> {
    Nothing,
    Json(Value),
    Raw(&'a str, Vec<u8>),
}

pub struct Api {
    pub base: String,
    pub dir: PathBuf,
    cfg: ServerConfig,
    server: InProcess,
    agent: ureq::Agent,
    lab: Option<Lab>,
    double: Option<Arc<RunnerDouble>>,
}

pub fn config(lab: &Lab, dir: &std::path::Path) -> ServerConfig {
    sandgate_testkit::lab_server_config(lab, dir, 1, ADMIN)
}

impl Api {
    pub fn start() -> Api {
        Api::start_with(|_| {})
    }

    /// A server whose configuration `tweak` changes first.
    pub fn start_with(tweak: impl FnOnce(&mut ServerConfig)) -> Api {
        Api::start_in(Lab::up().unwrap(), |_, cfg| tweak(cfg))
    }

    /// A server in `lab` (up already, with what the test runs in it),
    /// whose configuration `tweak` changes first.
    pub fn start_in(lab: Lab, tweak: impl FnOnce(&Lab, &mut ServerConfig)) -> Api {
        let dir = std::env::temp_dir().join(format!("sandgate-api-{}", lab.tag()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = config(&lab, &dir);
        tweak(&lab, &mut cfg);
        let server = InProcess::start(cfg.clone(), None).unwrap();
        Api::over(server, dir, cfg, Some(lab), None)
    }

    /// A server over a runner double (no root, no lab), whose
    /// configuration `tweak` changes first.
    pub fn with_double(tweak: impl FnOnce(&mut ServerConfig)) -> Api {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sandgate-double-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = sandgate_testkit::double_server_config(&dir, ADMIN);
        tweak(&mut cfg);
        let double = Arc::new(RunnerDouble::new(&["busybox"], cfg.policy.clone()));
        let server = InProcess::start_with_runner(cfg.clone(), double.clone()).unwrap();
        Api::over(server, dir, cfg, None, Some(double))
    }

    /// A server over several runner doubles, each named (no root, no
    /// lab): made by `doubles` from each name and the configuration. Two
    /// more follow those named, for runners that register themselves: at
    /// `double://0` and `double://1`.
    pub fn with_fleet(
        names: &[&str],
        doubles: impl Fn(&str, &ServerConfig) -> RunnerDouble,
    ) -> (Api, Vec<Arc<RunnerDouble>>) {
        Api::with_fleet_and(names, doubles, |_| {})
    }

    /// [`Api::with_fleet`], its configuration changed by `tweak` first.
    pub fn with_fleet_and(
        names: &[&str],
        doubles: impl Fn(&str, &ServerConfig) -> RunnerDouble,
        tweak: impl FnOnce(&mut ServerConfig),
    ) -> (Api, Vec<Arc<RunnerDouble>>) {
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("sandgate-fleet-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let mut cfg = sandgate_testkit::double_server_config(&dir, ADMIN);
        tweak(&mut cfg);
        let made: Vec<Arc<RunnerDouble>> =
            names.iter().map(|n| Arc::new(doubles(n, &cfg))).collect();
        // Runners that register are doubles too, by their URL
        // (`double://N`, N their index among these).
        let registering: Vec<Arc<RunnerDouble>> = (0..2)
            .map(|i| Arc::new(doubles(&format!("joined-{i}"), &cfg)))
            .collect();
        let joinable = registering.clone();
        cfg.connector = Some(sandgate_server::registry::Connector(Arc::new(
            move |url: &str, token: &str| {
                assert!(token.len() >= 16, "the call token");
                let i: usize = url
                    .strip_prefix("double://")
                    .and_then(|n| n.parse().ok())
                    .ok_or_else(|| {
                        sandgate_contract::RunnerError::Unavailable(format!("no double at {url}"))
                    })?;
                let d: Arc<dyn sandgate_contract::Runner> = joinable[i].clone();
                Ok(d)
            },
        )));
        let fleet = sandgate_server::fleet::Fleet::new(
            names
                .iter()
                .zip(&made)
                .map(|(name, d)| {
                    let runner: Arc<dyn sandgate_contract::Runner> = d.clone();
                    (name.to_string(), runner)
                })
                .collect(),
        )
        .unwrap();
        let server = InProcess::start_with_fleet(cfg.clone(), fleet).unwrap();
        let first = made.first().unwrap_or(&registering[0]).clone();
        let mut all = made;
        all.extend(registering);
        (Api::over(server, dir, cfg, None, Some(first)), all)
    }

    fn over(
        server: InProcess,
        dir: PathBuf,
        cfg: ServerConfig,
        lab: Option<Lab>,
        double: Option<Arc<RunnerDouble>>,
    ) -> Api {
        let agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_global(Some(Duration::from_secs(60)))
            .build()
            .into();
        Api {
            base: server.base.clone(),
            dir,
            cfg,
            server,
            agent,
            lab,
            double,
        }
    }

    /// The lab of a server over the real runner.
    pub fn lab(&self) -> &Lab {
        self.lab
            .as_ref()
            .expect("a server over the real runner, in a lab")
    }

    /// The runner double of a server over one.
    pub fn double(&self) -> &Arc<RunnerDouble> {
        self.double.as_ref().expect("a server over a runner double")
    }

    /// A request: status and JSON body (`null` when empty or not JSON).
    pub fn call(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Send<'_>,
    ) -> (u16, Value) {
        let (status, v, _) = self.answer(method, path, key, body);
        (status, v)
    }

    /// A request: status, JSON body, and the `Retry-After` header if the
    /// answer has one.
    pub fn answer(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        body: Send<'_>,
    ) -> (u16, Value, Option<String>) {
        let url = format!("{}{path}", self.base);
        let auth = key.map(|k| format!("Bearer {k}"));
        let with_auth = |b: ureq::RequestBuilder<ureq::typestate::WithBody>| match &auth {
            Some(a) => b.header("Authorization", a),
            None => b,
        };
        let without = |b: ureq::RequestBuilder<ureq::typestate::WithoutBody>| match &auth {
            Some(a) => b.header("Authorization", a),
            None => b,
        };
        let response = match (method, body) {
            ("GET", _) => without(self.agent.get(&url)).call(),
            ("DELETE", _) => without(self.agent.delete(&url)).call(),
            (m, body) => {
                let b = match m {
                    "POST" => self.agent.post(&url),
                    "PUT" => self.agent.put(&url),
                    "PATCH" => self.agent.patch(&url),
                    other => panic!("method {other}"),
                };
                let b = with_auth(b);
                match body {
                    Send::Nothing => b.send_empty(),
                    Send::Json(v) => b.send_json(&v),
                    Send::Raw(ctype, bytes) => {
                        let (status, v) = self.raw(m, path, key, ctype, &bytes);
                        return (status, v, None);
                    }
                }
            }
        };
        let mut response = response.unwrap();
        let status = response.status().as_u16();
        let retry_after = response
            .headers()
            .get("retry-after")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string);
        let text = response.body_mut().read_to_string().unwrap_or_default();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::Null),
            retry_after,
        )
    }

    /// A request written by hand on its own connection: the body is sent
    /// from another thread while the answer is read, so that an answer
    /// given before the whole body was read (413) is still seen.
    fn raw(
        &self,
        method: &str,
        path: &str,
        key: Option<&str>,
        ctype: &str,
        body: &[u8],
    ) -> (u16, Value) {
        use std::io::{Read, Write};
        let addr = self.base.trim_start_matches("http://").to_string();
        let mut stream = std::net::TcpStream::connect(&addr).unwrap();
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n",
            body.len()
        );
        if let Some(k) = key {
            head.push_str(&format!("Authorization: Bearer {k}\r\n"));
        }
        head.push_str("\r\n");
        let mut writer = stream.try_clone().unwrap();
        let body = body.to_vec();
        let w = std::thread::spawn(move || {
            let _ = writer.write_all(head.as_bytes());
            let _ = writer.write_all(&body);
        });
        let mut response = Vec::new();
        let mut buf = [0u8; 8192];
        while let Ok(n @ 1..) = stream.read(&mut buf) {
            response.extend_from_slice(&buf[..n]);
        }
        let _ = stream.shutdown(std::net::Shutdown::Both);
        let _ = w.join();
        let text = String::from_utf8_lossy(&response);
        let status = text
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b)
            .unwrap_or_default();
        (status, serde_json::from_str(body).unwrap_or(Value::Null))
    }

    /// A GET with this whole `Authorization` header.
    pub fn get_authorized(&self, path: &str, authorization: &str) -> u16 {
        let url = format!("{}{path}", self.base);
        let response = self
            .agent
            .get(&url)
            .header("Authorization", authorization)
            .call();
        response.unwrap().status().as_u16()
    }

    pub fn get(&self, path: &str, key: &str) -> (u16, Value) {
        self.call("GET", path, Some(key), Send::Nothing)
    }

    pub fn post(&self, path: &str, key: &str, body: Value) -> (u16, Value) {
        self.call("POST", path, Some(key), Send::Json(body))
    }

    pub fn delete(&self, path: &str, key: &str) -> (u16, Value) {
        self.call("DELETE", path, Some(key), Send::Nothing)
    }

    /// `/metrics`, as the operator scrapes it.
    pub fn metrics(&self) -> String {
        let mut response = self
            .agent
            .get(format!("{}/metrics", self.base))
            .header("Authorization", format!("Bearer {ADMIN}"))
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        response.body_mut().read_to_string().unwrap()
    }

    /// A new organization of `tier` and a key of it.
    pub fn organization(&self, name: &str, tier: u8) -> (String, String) {
        let (s, org) = self.post(
            "/api/admin/organizations",
            ADMIN,
            json!({"name": name, "tier": tier}),
        );
        assert_eq!(s, 201, "{org}");
        let id = org["id"].as_str().unwrap().to_string();
        let (s, key) = self.call(
            "POST",
            &format!("/api/admin/organizations/{id}/keys"),
            Some(ADMIN),
            Send::Nothing,
        );
        assert_eq!(s, 201, "{key}");
        (id, key["key"].as_str().unwrap().to_string())
    }

    /// Creates a sandbox; panics unless 201.
    pub fn sandbox(&self, key: &str, body: Value) -> Value {
        let (s, v) = self.post("/api/sandbox", key, body);
        assert_eq!(s, 201, "{v}");
        v
    }

    /// Runs `command` in sandbox `id`.
    pub fn exec(&self, key: &str, id: &str, command: &str) -> Value {
        let (s, v) = self.try_exec(key, id, command);
        assert_eq!(s, 200, "{v}");
        v
    }

    /// Runs `command` in sandbox `id`: the status and the answer.
    pub fn try_exec(&self, key: &str, id: &str, command: &str) -> (u16, Value) {
        self.post(
            &format!("/api/sandbox/{id}/process/execute"),
            key,
            json!({"command": command, "timeout": 10}),
        )
    }

    /// Whether the lab's TCP echo at `dest` answers sandbox `id`, asked
    /// from inside it.
    pub fn echoes(&self, key: &str, id: &str, dest: &str) -> bool {
        self.try_echoes(key, id, dest)
            .unwrap_or_else(|(s, v)| panic!("exec: {s} {v}"))
    }

    /// [`Api::echoes`], or the exec's status and answer when it is not
    /// 200.
    pub fn try_echoes(&self, key: &str, id: &str, dest: &str) -> Result<bool, (u16, Value)> {
        if let Ok(ip) = dest.parse::<IpAddr>() {
            assert!(is_lab_address(ip), "{dest} is not a lab address");
        }
        let command = format!("echo sandgate | nc -w 1 {dest} {TCP_ECHO}");
        match self.try_exec(key, id, &command) {
            (200, r) => Ok(r["stdout"] == "sandgate\n"),
            other => Err(other),
        }
    }

    /// `explain`'s verdict and reason for `dest` in sandbox `id`.
    pub fn explain(&self, key: &str, id: &str, dest: &str) -> (bool, String) {
        let (s, v) = self.get(
            &format!("/api/sandbox/{id}/network/explain?dest={dest}"),
            key,
        );
        assert_eq!(s, 200, "{v}");
        (
            v["allowed"].as_bool().unwrap(),
            v["reason"].as_str().unwrap().to_string(),
        )
    }

    /// Reads sandbox `id`'s events as server-sent events: the recent ones
    /// (`follow` false), or until `until` accepts one.
    pub fn events(
        &self,
        key: &str,
        id: &str,
        follow: bool,
        until: impl Fn(&Value) -> bool,
    ) -> Vec<Value> {
        self.stream(
            key,
            &format!("/api/sandbox/{id}/network/events?follow={follow}"),
            |v| follow && until(v),
        )
    }

    /// Reads server-sent events from `path` until `until` accepts one or
    /// the stream ends; their `data:`, in order.
    pub fn stream(&self, key: &str, path: &str, until: impl Fn(&Value) -> bool) -> Vec<Value> {
        use std::io::BufRead;
        let url = format!("{}{path}", self.base);
        let mut response = self
            .agent
            .get(&url)
            .header("Authorization", format!("Bearer {key}"))
            .call()
            .unwrap();
        assert_eq!(response.status().as_u16(), 200);
        let mut seen = Vec::new();
        let reader = std::io::BufReader::new(response.body_mut().as_reader());
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if let Some(data) = line.strip_prefix("data:") {
                let v: Value = serde_json::from_str(data.trim()).unwrap();
                let done = until(&v);
                seen.push(v);
                if done {
                    break;
                }
            }
        }
        seen
    }

    /// Builds `tests/<name>.c` static into the built-in snapshot's
    /// `/bin/<name>`, for the sandboxes made after.
    pub fn install(&self, name: &str) {
        let rootfs = self.runtime_dir().join("snapshots/busybox/rootfs");
        assert!(rootfs.join("bin/busybox").exists(), "{}", rootfs.display());
        let built = std::process::Command::new("cc")
            .args(["-static", "-O2", "-Wall", "-Werror", "-o"])
            .arg(rootfs.join("bin").join(name))
            .arg(format!("{}/tests/{name}.c", env!("CARGO_MANIFEST_DIR")))
            .status()
            .unwrap();
        assert!(built.success(), "cc {name}.c");
    }

    /// Stops serving and drops the server (its runner and store).
    pub fn stop(&mut self) {
        self.server.stop();
    }

    /// Stops the server and starts it again on the same files (its
    /// sandboxes run on meanwhile, as after a restart of the daemon).
    pub fn restart(&mut self) {
        self.server.stop();
        self.server = match &self.double {
            Some(double) => InProcess::start_with_runner(self.cfg.clone(), double.clone()),
            None => InProcess::start(self.cfg.clone(), None),
        }
        .unwrap();
        self.base = self.server.base.clone();
    }

    /// Stops the server and starts it again over `double` in place of its
    /// runner double (a runner that lost or kept what the test says).
    pub fn restart_over(&mut self, double: Arc<RunnerDouble>) {
        self.double = Some(double);
        self.restart();
    }

    /// The runtime's data directory (sandboxes' files, runc's state).
    pub fn runtime_dir(&self) -> PathBuf {
        self.cfg.runner.runtime.data_dir.clone()
    }

    /// The network namespace of sandbox `id`'s slot: what is sent from
    /// it is what the sandbox sends (its interface, its addresses).
    pub fn slot_netns(&self, id: &str) -> sandgate_netns::Netns {
        let runner = &self.cfg.runner;
        sandgate_testkit::slot_netns(&runner.data_dir, &runner.instance, id).unwrap()
    }
}

impl Drop for Api {
    /// Stops the server and removes every runtime sandbox it left (the
    /// lab's drop then removes the slots' namespaces).
    fn drop(&mut self) {
        self.stop();
        if self.lab.is_some() {
            let _ = sandgate_runner::purge_runtime(&self.cfg.runner);
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A connection from `ns` to the lab's byte stream at `addr`, streaming.
pub fn stream_from(ns: &sandgate_netns::Netns, addr: IpAddr) -> std::net::TcpStream {
    use std::io::Read;
    ns.run(move || {
        let mut s = std::net::TcpStream::connect_timeout(
            &std::net::SocketAddr::new(addr, TCP_STREAM),
            Duration::from_secs(3),
        )?;
        s.set_read_timeout(Some(Duration::from_secs(3)))?;
        let mut buf = [0u8; 4096];
        s.read_exact(&mut buf)?;
        Ok(s)
    })
    .unwrap()
}

/// Reads a streaming connection until nothing arrives for a second:
/// how long after `since` its last bytes came (a connection the kernel
/// cut stops passing packets; one the gateway cut is reset). Panics if it
/// still streams three seconds on.
pub fn streams_until_cut(stream: &mut std::net::TcpStream, since: std::time::Instant) -> Duration {
    use std::io::Read;
    stream
        .set_read_timeout(Some(Duration::from_secs(1)))
        .unwrap();
    let mut buf = vec![0u8; 64 * 1024];
    let mut last = since;
    loop {
        match stream.read(&mut buf) {
            Ok(0) => return last.saturating_duration_since(since),
            Ok(_) => {
                last = std::time::Instant::now();
                assert!(
                    last.duration_since(since) < Duration::from_secs(3),
                    "still streaming 3 s after the change"
                );
            }
            Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => {
                return std::time::Instant::now().saturating_duration_since(since)
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                return last.saturating_duration_since(since)
            }
            Err(e) => panic!("{e}"),
        }
    }
}
