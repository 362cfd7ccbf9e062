//! The API's side: a runner on another host, driven through the
//! contract's [`Runner`] trait.

use crate::{Status, LIVE};
use sandgate_contract::{
    DnsCounts, EventKind, ExecRequest, ExecResult, Expected, NetworkEvent, Observed, ProbeTarget,
    RestoreReport, Runner, RunnerError, SandboxSpec, Subscription,
};
use sandgate_policy::{EffectivePolicy, PolicyConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// How long a connection to the runner is waited for.
const CONNECT: Duration = Duration::from_secs(5);
/// How long a reconnection of the deaths' stream waits after a failure.
const RETRY: Duration = Duration::from_secs(1);
/// Events a subscriber may have waiting (as the runner's own hub).
const BACKLOG: usize = 1024;

/// A runner on another host, at `base` (`http://host:port`), reached with
/// its token. The policy configuration is the API's own; the host's
/// addresses come from the runner.
#[derive(Debug)]
pub struct RemoteRunner {
    base: String,
    auth: String,
    agent: ureq::Agent,
    policy: PolicyConfig,
    deaths: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    stop: Arc<AtomicBool>,
}

impl RemoteRunner {
    /// Connects to the runner at `base` with `token` (its status is read
    /// once, so that a wrong address or token is said at once) and starts
    /// following the deaths it reports.
    pub fn connect(
        base: &str,
        token: &str,
        policy: PolicyConfig,
    ) -> Result<RemoteRunner, RunnerError> {
        check_base(base)?;
        let agent: ureq::Agent = ureq::Agent::config_builder()
            .http_status_as_error(false)
            .timeout_connect(Some(CONNECT))
            .build()
            .into();
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = RemoteRunner {
            base: base.trim_end_matches('/').to_string(),
            auth: format!("Bearer {token}"),
            agent,
            policy,
            deaths: Mutex::new(Some(rx)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        runner.status()?;
        runner.follow_deaths(tx);
        Ok(runner)
    }

    fn url(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.base)
    }

    fn status(&self) -> Result<Status, RunnerError> {
        self.call("GET", "status", None::<&()>)
    }

    /// A request with an optional JSON body; the answer's JSON (`null`
    /// for a 204), or the runner's error.
    fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, RunnerError> {
        let url = self.url(path);
        let auth = self.auth.as_str();
        let sent = match (method, body) {
            ("GET", _) => self.agent.get(&url).header("Authorization", auth).call(),
            ("DELETE", _) => self.agent.delete(&url).header("Authorization", auth).call(),
            (m, body) => {
                let b = match m {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                }
                .header("Authorization", auth);
                match body {
                    Some(body) => b.send_json(body),
                    None => b.send_empty(),
                }
            }
        };
        let mut response = sent.map_err(|e| unavailable(&self.base, e))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| unavailable(&self.base, e))?;
        if (200..300).contains(&status) {
            let text = if text.is_empty() { "null" } else { &text };
            return serde_json::from_str(text).map_err(|e| {
                RunnerError::host(format!("the runner at {} answered {url}: {e}", self.base))
            });
        }
        #[derive(serde::Deserialize)]
        struct Answer {
            error: RunnerError,
        }
        Err(serde_json::from_str::<Answer>(&text)
            .map(|a| a.error)
            .unwrap_or_else(|_| {
                RunnerError::host(format!(
                    "the runner at {} answered {url} with {status}",
                    self.base
                ))
            }))
    }

    /// A stream of server-sent events at `path`: the response, once its
    /// status is known to be 200.
    fn stream(&self, path: &str) -> Result<ureq::http::Response<ureq::Body>, RunnerError> {
        let response = self
            .agent
            .get(self.url(path))
            .header("Authorization", &self.auth)
            .call()
            .map_err(|e| unavailable(&self.base, e))?;
        if response.status().as_u16() == 200 {
            return Ok(response);
        }
        let status = response.status().as_u16();
        let mut response = response;
        let text = response.body_mut().read_to_string().unwrap_or_default();
        #[derive(serde::Deserialize)]
        struct Answer {
            error: RunnerError,
        }
        Err(serde_json::from_str::<Answer>(&text)
            .map(|a| a.error)
            .unwrap_or_else(|_| RunnerError::host(format!("the runner answered {status}"))))
    }

    /// Follows the runner's deaths into `tx` on a thread of its own,
    /// connecting again after a failure, until the runner is dropped or
    /// nobody receives.
    fn follow_deaths(&self, tx: mpsc::UnboundedSender<String>) {
        let this = RemoteRunner {
            base: self.base.clone(),
            auth: self.auth.clone(),
            agent: self.agent.clone(),
            policy: self.policy.clone(),
            deaths: Mutex::new(None),
            stop: self.stop.clone(),
        };
        std::thread::spawn(move || {
            while !this.stop.load(Ordering::SeqCst) && !tx.is_closed() {
                match this.stream("deaths") {
                    Ok(response) => {
                        let reader = BufReader::new(response.into_body().into_reader());
                        let mut events = Events {
                            lines: reader.lines(),
                        };
                        let go_on = || !this.stop.load(Ordering::SeqCst) && !tx.is_closed();
                        while let Some((_, id)) = events.next(go_on) {
                            // Nobody receiving ends the loop above.
                            let _ = tx.send(id);
                        }
                    }
                    Err(e) => {
                        tracing::warn!(runner = %this.base, error = %e, "following the runner's deaths")
                    }
                }
                std::thread::sleep(RETRY);
            }
        });
    }
}

impl Drop for RemoteRunner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// A runner's URL: `http://` to a loopback address only. A token and
/// policies do not cross another network in the clear; TLS to runners on
/// other hosts comes with their registration.
fn check_base(base: &str) -> Result<(), RunnerError> {
    let refuse = |why: &str| RunnerError::Invalid {
        code: "invalid_request",
        message: format!("runner URL {base:?}: {why}"),
    };
    let rest = base
        .strip_prefix("http://")
        .ok_or_else(|| refuse("give http://<loopback address>:<port>"))?;
    let authority = rest.split('/').next().unwrap_or_default();
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or_default(),
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    match host.parse::<IpAddr>() {
        Ok(ip) if ip.is_loopback() => Ok(()),
        _ => Err(refuse(
            "plain HTTP goes to a loopback address only (the runner's token and the policies would cross the network in the clear)",
        )),
    }
}

fn unavailable(base: &str, e: impl std::fmt::Display) -> RunnerError {
    RunnerError::Unavailable(format!("the runner at {base} does not answer: {e}"))
}

/// Server-sent events read from the lines of a stream.
struct Events<I> {
    lines: I,
}

impl<I: Iterator<Item = std::io::Result<String>>> Events<I> {
    /// The next event (its name, empty if none, and its data), or `None`
    /// at the end of the stream or once `go_on`, asked at every line
    /// (keep-alive comments too), says to stop.
    fn next(&mut self, go_on: impl Fn() -> bool) -> Option<(String, String)> {
        let (mut name, mut data) = (String::new(), String::new());
        for line in self.lines.by_ref() {
            let Ok(line) = line else { return None };
            if !go_on() {
                return None;
            }
            if let Some(n) = line.strip_prefix("event:") {
                name = n.trim().to_string();
            } else if let Some(d) = line.strip_prefix("data:") {
                data = d.trim().to_string();
            } else if line.is_empty() && !(name.is_empty() && data.is_empty()) {
                return Some((name, data));
            }
        }
        None
    }
}

impl Runner for RemoteRunner {
    fn snapshots(&self) -> Result<Vec<String>, RunnerError> {
        self.call("GET", "snapshots", None::<&()>)
    }

    fn create(&self, spec: &SandboxSpec) -> Result<(), RunnerError> {
        self.call("POST", "sandboxes", Some(spec))
    }

    fn update(&self, id: &str, policy: &EffectivePolicy) -> Result<(), RunnerError> {
        self.call("PUT", &format!("sandboxes/{id}/policy"), Some(policy))
    }

    fn block(&self, id: &str) -> Result<(), RunnerError> {
        self.call("POST", &format!("sandboxes/{id}/block"), None::<&()>)
    }

    fn stop(&self, id: &str) -> Result<(), RunnerError> {
        self.call("POST", &format!("sandboxes/{id}/stop"), None::<&()>)
    }

    fn delete(&self, id: &str) -> Result<(), RunnerError> {
        self.call("DELETE", &format!("sandboxes/{id}"), None::<&()>)
    }

    fn exec(&self, id: &str, request: &ExecRequest) -> Result<ExecResult, RunnerError> {
        self.call("POST", &format!("sandboxes/{id}/exec"), Some(request))
    }

    fn probe(&self, id: &str, targets: &[ProbeTarget]) -> Result<Vec<Observed>, RunnerError> {
        self.call("POST", &format!("sandboxes/{id}/probe"), Some(&targets))
    }

    fn subscribe(&self, id: &str) -> Result<Subscription, RunnerError> {
        let response = self.stream(&format!("sandboxes/{id}/events"))?;
        let (tx, rx) = broadcast::channel(BACKLOG);
        let parse = |data: &str| serde_json::from_str::<NetworkEvent>(data).ok();
        let reader = BufReader::new(response.into_body().into_reader());
        let mut events = Events {
            lines: reader.lines(),
        };
        let mut recent = Vec::new();
        while let Some((name, data)) = events.next(|| true) {
            if name == LIVE {
                break;
            }
            recent.extend(parse(&data));
        }
        // The rest on a thread of its own, until the runner ends the
        // stream (the sandbox is deleted) or nobody receives (noticed at
        // the next event or keep-alive at the latest).
        let stop = self.stop.clone();
        std::thread::spawn(move || {
            let go_on = || !stop.load(Ordering::SeqCst) && tx.receiver_count() > 0;
            while let Some((_, data)) = events.next(go_on) {
                if let Some(e) = parse(&data) {
                    // No receiver left ends the loop.
                    let _ = tx.send(e);
                }
            }
        });
        Ok((recent, rx))
    }

    fn restore(&self, expected: &[Expected]) -> Result<RestoreReport, RunnerError> {
        self.call("POST", "restore", Some(&expected))
    }

    fn take_deaths(&self) -> Option<mpsc::UnboundedReceiver<String>> {
        self.deaths.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    fn live_policy(&self) -> Arc<PolicyConfig> {
        // The host's addresses as the runner sees them now; without an
        // answer, the API's configuration alone (explain may then call a
        // host address allowed that the runner's kernel denies: never the
        // other way round).
        match self.status() {
            Ok(s) => Arc::new(self.policy.with_host_addresses(s.host_addresses)),
            Err(e) => {
                tracing::warn!(runner = %self.base, error = %e, "reading the runner's host addresses");
                Arc::new(self.policy.clone())
            }
        }
    }

    fn addresses(&self, id: &str) -> Option<[IpAddr; 2]> {
        self.call("GET", &format!("sandboxes/{id}/addresses"), None::<&()>)
            .ok()
    }

    fn healthy(&self) -> bool {
        self.status().is_ok_and(|s| s.healthy)
    }

    fn allowed_counts(&self) -> Option<(u64, u64)> {
        self.status().ok().and_then(|s| s.allowed_counts)
    }

    fn dns_counts(&self) -> DnsCounts {
        self.status().map(|s| s.dns_counts).unwrap_or_default()
    }

    fn event_counts(&self) -> BTreeMap<(EventKind, String), u64> {
        self.status()
            .map(|s| {
                s.event_counts
                    .into_iter()
                    .map(|(kind, reason, n)| ((kind, reason), n))
                    .collect()
            })
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::check_base;

    #[test]
    fn plain_http_goes_to_loopback_only() {
        for ok in [
            "http://127.0.0.1:7000",
            "http://[::1]:7000/",
            "http://127.1.2.3:1",
        ] {
            assert!(check_base(ok).is_ok(), "{ok}");
        }
        for bad in [
            "https://127.0.0.1:7000",
            "http://192.0.2.1:7000",
            "http://runner.example:7000",
            "http://[2001:db8::1]:7000",
            "127.0.0.1:7000",
        ] {
            let e = check_base(bad).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
    }
}
