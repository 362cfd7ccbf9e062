//! The API's side: a runner on another host, driven through the
//! contract's [`Runner`] trait.

use crate::service::KEEP_ALIVE;
use crate::{Status, LIVE};
use sandgate_contract::{
    Counts, ExecRequest, ExecResult, Expected, Flow, FlowLog, FlowSubscription, NetworkEvent,
    Observed, ProbeTarget, PulledSnapshot, RestoreReport, Runner, RunnerError, SandboxSpec,
    Subscription, TransferUsage,
};
use sandgate_policy::{EffectivePolicy, PolicyConfig};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::io::{BufRead, BufReader};
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{broadcast, mpsc};

/// How long a connection to the runner is waited for.
const CONNECT: Duration = Duration::from_secs(5);
/// How long a call may take in all (an exec: its own timeout more).
const CALL: Duration = Duration::from_secs(120);
/// How long an image pull may take (a large image, a slow registry).
const PULL: Duration = Duration::from_secs(30 * 60);
/// How long a look at the runner's instance may take.
const LOOK: Duration = Duration::from_secs(5);
/// How long a stream may stay silent: three keep-alives missed means the
/// runner went away without closing it.
const SILENCE: Duration = Duration::from_secs(3 * KEEP_ALIVE.as_secs());
/// How long an idle connection to the runner is kept for the next call:
/// a third of the runner's wait for a request head.
const IDLE: Duration = Duration::from_secs(crate::service::HEAD_WAIT.as_secs() / 3);
/// How long a reconnection of the deaths' stream waits after a failure.
const RETRY: Duration = Duration::from_secs(1);
/// Events a subscriber may have waiting (as the runner's own hub).
const BACKLOG: usize = 1024;

/// A stream's events before the one named [`LIVE`] (name, data), and a
/// receiver of the items after it.
type Followed<T> = (Vec<(String, String)>, broadcast::Receiver<T>);

/// How the runner is reached: its URL, its token and an HTTP agent. The
/// threads that follow its streams hold one each.
#[derive(Clone)]
struct Link {
    base: String,
    auth: String,
    agent: ureq::Agent,
    /// The write lock's generation the API's changes belong to (0: none
    /// said), sent with each call as [`crate::FENCE`].
    fence: Arc<std::sync::atomic::AtomicU64>,
}

impl Link {
    fn url(&self, path: &str) -> String {
        format!("{}/v1/{path}", self.base)
    }

    /// A request with an optional JSON body, taking at most `limit`: the
    /// answer's JSON (`null` for a 204), or the runner's error.
    fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
        limit: Duration,
    ) -> Result<T, RunnerError> {
        let url = self.url(path);
        let auth = self.auth.as_str();
        let fence = self.fence.load(Ordering::SeqCst).to_string();
        let sent = match (method, body) {
            ("GET", _) => self
                .agent
                .get(&url)
                .config()
                .timeout_global(Some(limit))
                .build()
                .header("Authorization", auth)
                .header(crate::FENCE, &fence)
                .call(),
            ("DELETE", _) => self
                .agent
                .delete(&url)
                .config()
                .timeout_global(Some(limit))
                .build()
                .header("Authorization", auth)
                .header(crate::FENCE, &fence)
                .call(),
            (m, body) => {
                let b = match m {
                    "PUT" => self.agent.put(&url),
                    _ => self.agent.post(&url),
                }
                .config()
                .timeout_global(Some(limit))
                .build()
                .header("Authorization", auth)
                .header(crate::FENCE, &fence);
                match body {
                    Some(body) => b.send_json(body),
                    None => b.send_empty(),
                }
            }
        };
        let mut response = sent.map_err(|e| self.unavailable(e))?;
        let status = response.status().as_u16();
        let text = response
            .body_mut()
            .read_to_string()
            .map_err(|e| self.unavailable(e))?;
        if (200..300).contains(&status) {
            let text = if text.is_empty() { "null" } else { &text };
            return serde_json::from_str(text).map_err(|e| {
                RunnerError::host(format!("the runner at {} answered {url}: {e}", self.base))
            });
        }
        Err(self.refused(status, &text))
    }

    /// `PUT`s the file `body` to `path` as it is read, taking at most
    /// `limit`: the runner's error, if any.
    fn upload(&self, path: &str, body: std::fs::File, limit: Duration) -> Result<(), RunnerError> {
        let url = self.url(path);
        let fence = self.fence.load(Ordering::SeqCst).to_string();
        let mut reader = std::io::BufReader::new(body);
        let mut response = self
            .agent
            .put(&url)
            .config()
            .timeout_global(Some(limit))
            .build()
            .header("Authorization", self.auth.as_str())
            .header(crate::FENCE, &fence)
            .header("Content-Type", "application/x-tar")
            .send(ureq::SendBody::from_reader(&mut reader))
            .map_err(|e| self.unavailable(e))?;
        let status = response.status().as_u16();
        if (200..300).contains(&status) {
            return Ok(());
        }
        let text = response.body_mut().read_to_string().unwrap_or_default();
        Err(self.refused(status, &text))
    }

    /// A stream of server-sent events at `path`, once its status is known
    /// to be 200; a read that waits longer than [`SILENCE`] ends it.
    fn stream(&self, path: &str) -> Result<impl BufRead + Send + 'static, RunnerError> {
        let mut response = self
            .agent
            .get(self.url(path))
            .config()
            .timeout_per_read(Some(SILENCE))
            .build()
            .header("Authorization", &self.auth)
            .call()
            .map_err(|e| self.unavailable(e))?;
        let status = response.status().as_u16();
        if status != 200 {
            let text = response.body_mut().read_to_string().unwrap_or_default();
            return Err(self.refused(status, &text));
        }
        Ok(BufReader::new(response.into_body().into_reader()))
    }

    /// The events of the stream at `path` before the one named [`LIVE`]
    /// (name, data), and a receiver of each `T` after it, read on a thread
    /// of its own until the runner ends the stream (the sandbox is
    /// deleted), goes silent, or nobody receives (noticed at the next
    /// event or keep-alive).
    fn follow<T: DeserializeOwned + Clone + Send + 'static>(
        &self,
        path: &str,
        stop: Arc<AtomicBool>,
    ) -> Result<Followed<T>, RunnerError> {
        let reader = self.stream(path)?;
        let mut events = Events {
            lines: reader.lines(),
        };
        let mut first = Vec::new();
        while let Some((name, data)) = events.next(|| true) {
            if name == LIVE {
                break;
            }
            first.push((name, data));
        }
        let (tx, rx) = broadcast::channel(BACKLOG);
        std::thread::spawn(move || {
            let go_on = || !stop.load(Ordering::SeqCst) && tx.receiver_count() > 0;
            while let Some((_, data)) = events.next(go_on) {
                if let Some(item) = parse(&data) {
                    // No receiver left ends the loop.
                    let _ = tx.send(item);
                }
            }
        });
        Ok((first, rx))
    }

    /// The runner's error in an answer of `status`.
    fn refused(&self, status: u16, text: &str) -> RunnerError {
        #[derive(serde::Deserialize)]
        struct Answer {
            error: RunnerError,
        }
        serde_json::from_str::<Answer>(text)
            .map(|a| a.error)
            .unwrap_or_else(|_| {
                RunnerError::host(format!("the runner at {} answered {status}", self.base))
            })
    }

    fn unavailable(&self, e: ureq::Error) -> RunnerError {
        // rustls's error comes alone or inside an I/O error from the
        // handshake. A certificate refused (another CA's, another
        // name's, expired) is said as such, not as a runner away; a
        // handshake that reads no TLS at all is a runner serving plain
        // HTTP.
        let tls = match &e {
            ureq::Error::Rustls(t) => Some(t),
            ureq::Error::Io(io) => io
                .get_ref()
                .and_then(|inner| inner.downcast_ref::<rustls::Error>()),
            _ => None,
        };
        let base = &self.base;
        match tls {
            Some(
                why @ (rustls::Error::InvalidCertificate(_)
                | rustls::Error::NoCertificatesPresented
                | rustls::Error::UnsupportedNameType),
            ) => RunnerError::Unavailable(format!(
                "the runner at {base} is not trusted: {why} (its certificate must be signed by the runners' CA for its address)"
            )),
            Some(why @ rustls::Error::InvalidMessage(_)) => RunnerError::Unavailable(format!(
                "the runner at {base} does not speak TLS ({why}): was it started without --tls-cert?"
            )),
            Some(why) => RunnerError::Unavailable(format!(
                "the runner at {base}: the TLS handshake failed: {why}"
            )),
            None => RunnerError::Unavailable(format!(
                "the runner at {base} does not answer: {e}"
            )),
        }
    }
}

/// A runner on another host, at `base` (`http://host:port`), reached with
/// its token. The policy configuration is the API's own; the host's
/// addresses come from the runner.
pub struct RemoteRunner {
    link: Link,
    policy: PolicyConfig,
    deaths: Mutex<Option<mpsc::UnboundedReceiver<String>>>,
    /// Set when the runner is dropped: the threads that follow its
    /// streams stop.
    stop: Arc<AtomicBool>,
}

impl std::fmt::Debug for RemoteRunner {
    /// The runner's address; never its token.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteRunner")
            .field("base", &self.link.base)
            .finish_non_exhaustive()
    }
}

impl RemoteRunner {
    /// Connects to the runner at `base` (`http://` to a loopback address)
    /// with `token`: see [`RemoteRunner::connect_with`].
    pub fn connect(
        base: &str,
        token: &str,
        policy: PolicyConfig,
    ) -> Result<RemoteRunner, RunnerError> {
        RemoteRunner::connect_with(base, token, None, policy)
    }

    /// Connects to the runner at `base` with `token` (its status is read
    /// once, so that a wrong address, token or certificate is said at
    /// once) and starts following the deaths it reports. `base` is
    /// `https://host:port`, whose certificate must be signed by `ca` (the
    /// PEM of the operator's CA: the only roots it is checked against,
    /// never the system's), or `http://` to a loopback address, without
    /// `ca`.
    pub fn connect_with(
        base: &str,
        token: &str,
        ca: Option<&[u8]>,
        policy: PolicyConfig,
    ) -> Result<RemoteRunner, RunnerError> {
        check_base(base, ca.is_some())?;
        let agent = agent(ca)?;
        let (tx, rx) = mpsc::unbounded_channel();
        let runner = RemoteRunner {
            link: Link {
                base: base.trim_end_matches('/').to_string(),
                auth: format!("Bearer {}", token.trim()),
                agent,
                fence: Arc::default(),
            },
            policy,
            deaths: Mutex::new(Some(rx)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        runner.status()?;
        follow_deaths(runner.link.clone(), runner.stop.clone(), tx);
        Ok(runner)
    }

    fn call<T: DeserializeOwned, B: Serialize>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, RunnerError> {
        self.link.call(method, path, body, CALL)
    }

    fn status(&self) -> Result<Status, RunnerError> {
        self.call("GET", "status", None::<&()>)
    }
}

impl Drop for RemoteRunner {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
    }
}

/// Follows the runner's deaths into `tx` on a thread of its own,
/// connecting again after a failure or a silence, until `stop` or nobody
/// receives.
fn follow_deaths(link: Link, stop: Arc<AtomicBool>, tx: mpsc::UnboundedSender<String>) {
    std::thread::spawn(move || {
        let go_on = || !stop.load(Ordering::SeqCst) && !tx.is_closed();
        while go_on() {
            match link.stream("deaths") {
                Ok(reader) => {
                    let mut events = Events {
                        lines: reader.lines(),
                    };
                    while let Some((_, id)) = events.next(go_on) {
                        // Nobody receiving ends the loops.
                        let _ = tx.send(id);
                    }
                }
                Err(e) => {
                    tracing::warn!(runner = %link.base, error = %e, "following the runner's deaths")
                }
            }
            std::thread::sleep(RETRY);
        }
    });
}

/// The item a runner's event holds; one that holds none is logged and
/// dropped.
fn parse<T: DeserializeOwned>(data: &str) -> Option<T> {
    match serde_json::from_str::<T>(data) {
        Ok(item) => Some(item),
        Err(e) => {
            tracing::warn!(error = %e, "an event from the runner that holds no {}; dropped", std::any::type_name::<T>());
            None
        }
    }
}

/// Server-sent events read from the lines of a stream.
struct Events<I> {
    lines: I,
}

impl<I: Iterator<Item = std::io::Result<String>>> Events<I> {
    /// The next event (its name, empty if none, and its data), or `None`
    /// at the end of the stream (or a read that timed out) or once
    /// `go_on`, asked at every line (keep-alive comments too), says to
    /// stop.
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

/// A runner's URL: `https://` with the operator's CA, or `http://` to a
/// loopback address only (a token and policies do not cross another
/// network in the clear).
pub(crate) fn check_base(base: &str, tls: bool) -> Result<(), RunnerError> {
    let refuse = |why: &str| RunnerError::Invalid {
        code: "invalid_request",
        message: format!("runner URL {base:?}: {why}"),
    };
    let shape = "give https://<host>:<port> or http://<loopback address>:<port>";
    // Parsed as HTTP parses it, so that the host checked is the host
    // connected to: no user part (`http://[::1]@runner.example`), no
    // query, no fragment, no path.
    if base.contains(['@', '?', '#']) {
        return Err(refuse(shape));
    }
    let uri: ureq::http::Uri = base.parse().map_err(|_| refuse(shape))?;
    let (Some(scheme), Some(authority)) = (uri.scheme_str(), uri.authority()) else {
        return Err(refuse(shape));
    };
    if !matches!(uri.path(), "" | "/") {
        return Err(refuse(shape));
    }
    match (scheme, tls) {
        ("https", true) => Ok(()),
        ("https", false) => Err(refuse(
            "an https:// runner is checked against the operator's CA: give its certificate (--runner-ca)",
        )),
        ("http", true) => Err(refuse(
            "the CA is for an https:// runner; plain HTTP is for a loopback address",
        )),
        ("http", false) => {
            let host = authority.host();
            let host = host
                .strip_prefix('[')
                .and_then(|h| h.strip_suffix(']'))
                .unwrap_or(host);
            match host.parse::<IpAddr>() {
                Ok(ip) if ip.is_loopback() => Ok(()),
                _ => Err(refuse(
                    "plain HTTP goes to a loopback address only (the runner's token and the policies would cross the network in the clear): use https:// with the operator's CA",
                )),
            }
        }
        _ => Err(refuse(shape)),
    }
}

/// An HTTP agent for the link between an API and a runner, either way:
/// over TLS checked against the operator's CA `ca` only (when given).
pub(crate) fn agent(ca: Option<&[u8]>) -> Result<ureq::Agent, RunnerError> {
    let mut config = ureq::Agent::config_builder()
        .http_status_as_error(false)
        // Straight to the other end: never through a proxy of the
        // environment, which would see the token and the policies.
        .proxy(None)
        // Neither end redirects: a redirect would carry the token
        // elsewhere.
        .max_redirects(0)
        // Idle connections are dropped well before the other end lets
        // them go (its wait for a request head), never reused closed.
        .max_idle_age(IDLE)
        .timeout_connect(Some(CONNECT));
    if let Some(ca) = ca {
        config = config.tls_config(
            ureq::tls::TlsConfig::builder()
                .provider(ureq::tls::TlsProvider::Rustls)
                .unversioned_rustls_crypto_provider(Arc::new(
                    rustls::crypto::ring::default_provider(),
                ))
                .root_certs(ureq::tls::RootCerts::new_with_certs(&roots(ca)?))
                .build(),
        );
    }
    Ok(config.build().into())
}

/// The certificates of a CA's PEM: at least one.
fn roots(pem: &[u8]) -> Result<Vec<ureq::tls::Certificate<'static>>, RunnerError> {
    let refuse = |why: String| RunnerError::Invalid {
        code: "invalid_request",
        message: format!("the runners' CA: {why}"),
    };
    let mut roots = Vec::new();
    for item in ureq::tls::parse_pem(pem) {
        match item {
            Ok(ureq::tls::PemItem::Certificate(c)) => roots.push(c),
            Ok(_) => {}
            Err(e) => return Err(refuse(e.to_string())),
        }
    }
    if roots.is_empty() {
        return Err(refuse("no certificate in it (PEM)".into()));
    }
    Ok(roots)
}

impl Runner for RemoteRunner {
    fn fence(&self, generation: u64) {
        self.link.fence.store(generation, Ordering::SeqCst);
    }

    fn snapshots(&self) -> Result<Vec<String>, RunnerError> {
        self.call("GET", "snapshots", None::<&()>)
    }

    fn pull_snapshot(&self, name: &str, image: &str) -> Result<PulledSnapshot, RunnerError> {
        let body = crate::service::PullSnapshot {
            name: name.to_string(),
            image: image.to_string(),
        };
        self.link.call("POST", "snapshots", Some(&body), PULL)
    }

    fn import_snapshot(&self, name: &str, archive: std::fs::File) -> Result<(), RunnerError> {
        self.link
            .upload(&format!("snapshots/{name}/archive"), archive, PULL)
    }

    fn delete_snapshot(&self, name: &str) -> Result<(), RunnerError> {
        self.call("DELETE", &format!("snapshots/{name}"), None::<&()>)
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
        let limit = CALL + request.timeout.unwrap_or_default();
        self.link.call(
            "POST",
            &format!("sandboxes/{id}/exec"),
            Some(request),
            limit,
        )
    }

    fn probe(&self, id: &str, targets: &[ProbeTarget]) -> Result<Vec<Observed>, RunnerError> {
        self.call("POST", &format!("sandboxes/{id}/probe"), Some(&targets))
    }

    fn subscribe(&self, id: &str) -> Result<Subscription, RunnerError> {
        let path = format!("sandboxes/{id}/events");
        let (first, live) = self.link.follow::<NetworkEvent>(&path, self.stop.clone())?;
        let recent = first.iter().filter_map(|(_, data)| parse(data)).collect();
        Ok((recent, live))
    }

    fn flows(&self, id: &str) -> Result<FlowSubscription, RunnerError> {
        let path = format!("sandboxes/{id}/flows");
        let (first, live) = self.link.follow::<Flow>(&path, self.stop.clone())?;
        let log = first
            .iter()
            .find(|(name, _)| name == "log")
            .and_then(|(_, data)| parse::<FlowLog>(data))
            .ok_or_else(|| {
                RunnerError::host(format!("the runner at {} sent no flow log", self.link.base))
            })?;
        Ok((log, live))
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
                tracing::warn!(runner = %self.link.base, error = %e, "reading the runner's host addresses");
                Arc::new(self.policy.clone())
            }
        }
    }

    fn transfer_usage(&self, id: &str) -> Result<Option<TransferUsage>, RunnerError> {
        self.call("GET", &format!("sandboxes/{id}/transfer"), None::<&()>)
    }

    fn addresses(&self, id: &str) -> Option<[IpAddr; 2]> {
        self.call("GET", &format!("sandboxes/{id}/addresses"), None::<&()>)
            .ok()
    }

    fn healthy(&self) -> bool {
        self.status().is_ok_and(|s| s.healthy)
    }

    fn instance(&self) -> Result<Option<String>, RunnerError> {
        let status: Status = self.link.call("GET", "status", None::<&()>, LOOK)?;
        Ok(Some(status.instance))
    }

    fn counts(&self) -> Counts {
        self.status().map(|s| s.counts).unwrap_or_default()
    }

    fn capacity(&self) -> Result<sandgate_contract::Capacity, RunnerError> {
        self.status().map(|s| s.capacity)
    }
}

#[cfg(test)]
mod tests {
    use super::check_base;

    #[test]
    fn plain_http_goes_to_loopback_only_and_https_needs_the_ca() {
        for ok in [
            "http://127.0.0.1:7000",
            "http://[::1]:7000/",
            "http://127.1.2.3:1",
        ] {
            assert!(check_base(ok, false).is_ok(), "{ok}");
        }
        for ok in ["https://192.0.2.1:7000", "https://runner.example:7000"] {
            assert!(check_base(ok, true).is_ok(), "{ok}");
        }
        for (bad, tls) in [
            ("https://127.0.0.1:7000", false),
            ("http://127.0.0.1:7000", true),
            ("http://192.0.2.1:7000", false),
            ("http://runner.example:7000", false),
            ("http://[2001:db8::1]:7000", false),
            ("http://[::1]@runner.example:7000", false),
            ("http://127.0.0.1@192.0.2.1:7000", false),
            ("http://user:pw@127.0.0.1:7000", false),
            ("http://127.0.0.1:7000/v1?x=1", false),
            ("http://127.0.0.1:7000#frag", false),
            ("http://127.0.0.1:7000/prefix", false),
            ("http://127.0.0.1.runner.example:7000", false),
            ("http://[::1", false),
            ("http://", false),
            ("127.0.0.1:7000", false),
            ("ftp://192.0.2.1:7000", true),
        ] {
            let e = check_base(bad, tls).unwrap_err();
            assert_eq!(e.status(), 400, "{bad}");
        }
    }
}
