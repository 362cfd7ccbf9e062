//! `/metrics` in the Prometheus text format: sandboxes by state and mode,
//! creates and deletes, the DNS service's answers and admissions, and
//! request latencies per route.

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Upper bounds of the latency histogram's buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// One route's latency histogram.
#[derive(Debug, Default, Clone)]
struct Histogram {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

/// The server's counters.
#[derive(Debug, Default)]
pub struct Metrics {
    created: AtomicU64,
    deleted: AtomicU64,
    /// (method, route, status) -> requests; (method, route) -> latencies.
    requests: Mutex<BTreeMap<(String, String, u16), u64>>,
    latency: Mutex<BTreeMap<(String, String), Histogram>>,
    /// Sandboxes by (state, mode), as last counted from the store, and
    /// when: counted again at most once a second, however often scraped.
    sandboxes: tokio::sync::Mutex<Option<(Instant, Counts)>>,
    /// Access requests (shared with the tasks that open them).
    pub approvals: Arc<ApprovalCounts>,
}

/// What the access requests came to.
#[derive(Debug, Default)]
pub struct ApprovalCounts {
    /// Requests opened.
    pub opened: AtomicU64,
    /// Attempts at a new target of a sandbox at its most requests.
    pub dropped: AtomicU64,
    /// Requests approved.
    pub approved: AtomicU64,
    /// Requests denied.
    pub denied: AtomicU64,
}

/// Sandboxes by (state, mode).
type Counts = BTreeMap<(String, String), u64>;

/// How long a count of the store's sandboxes is served before it is made
/// again.
const COUNT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Sandboxes by (state, mode), from the store.
async fn count_sandboxes(st: &AppState) -> Counts {
    let mut by_state_mode = Counts::new();
    let Ok(rows) = st.store.sandboxes(None).await else {
        return by_state_mode;
    };
    let orgs: BTreeMap<String, crate::store::Organization> = st
        .store
        .organizations()
        .await
        .unwrap_or_default()
        .into_iter()
        .map(|o| (o.id.clone(), o))
        .collect();
    for row in rows {
        let mode = orgs
            .get(&row.organization_id)
            .and_then(|o| crate::service::effective(st, o, &row).ok())
            .map(|p| p.mode.as_str().to_string())
            .unwrap_or_else(|| "unknown".into());
        *by_state_mode
            .entry((row.state.as_str().to_string(), mode))
            .or_default() += 1;
    }
    by_state_mode
}

impl Metrics {
    /// A sandbox was created.
    pub fn created(&self) {
        self.created.fetch_add(1, Ordering::Relaxed);
    }

    /// A sandbox was deleted.
    pub fn deleted(&self) {
        self.deleted.fetch_add(1, Ordering::Relaxed);
    }

    fn observe(&self, method: &str, route: &str, status: u16, seconds: f64) {
        let key = (method.to_string(), route.to_string());
        if let Ok(mut r) = self.requests.lock() {
            *r.entry((key.0.clone(), key.1.clone(), status)).or_default() += 1;
        }
        if let Ok(mut l) = self.latency.lock() {
            let h = l.entry(key).or_default();
            for (i, bound) in BUCKETS.iter().enumerate() {
                if seconds <= *bound {
                    h.counts[i] += 1;
                }
            }
            h.count += 1;
            h.sum += seconds;
        }
    }
}

/// Middleware: counts every request and its latency, by route template
/// (never by raw path, so ids do not multiply the series).
pub async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // Known methods only: a made-up one must not add series forever.
    let method = match req.method().as_str() {
        m @ ("GET" | "POST" | "PUT" | "PATCH" | "DELETE" | "HEAD" | "OPTIONS") => m.to_string(),
        _ => "other".to_string(),
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(req).await;
    st.metrics.observe(
        &method,
        &route,
        response.status().as_u16(),
        started.elapsed().as_secs_f64(),
    );
    response
}

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The metrics: an operator surface, so the operator token only (a
/// tenant's key gets 403). Counts come from memory and from the runner's
/// last sample of the kernel's counters: a scrape runs no program and
/// takes no lock of the dataplane.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "Prometheus text format", content_type = "text/plain"),
        (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn metrics(State(st): State<Arc<AppState>>, _: crate::api::Operator) -> Response {
    let mut out = String::new();
    let by_state_mode = {
        let mut counted = st.metrics.sandboxes.lock().await;
        match &*counted {
            Some((at, counts)) if at.elapsed() < COUNT_EVERY => counts.clone(),
            _ => {
                let counts = count_sandboxes(&st).await;
                *counted = Some((Instant::now(), counts.clone()));
                counts
            }
        }
    };
    let _ = writeln!(
        out,
        "# HELP sandgate_sandboxes Sandboxes by state and network mode."
    );
    let _ = writeln!(out, "# TYPE sandgate_sandboxes gauge");
    for ((state, mode), n) in &by_state_mode {
        let _ = writeln!(
            out,
            "sandgate_sandboxes{{state=\"{state}\",mode=\"{mode}\"}} {n}"
        );
    }
    let counter = |out: &mut String, name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        &mut out,
        "sandgate_sandboxes_created_total",
        "Sandboxes created.",
        st.metrics.created.load(Ordering::Relaxed),
    );
    counter(
        &mut out,
        "sandgate_sandboxes_deleted_total",
        "Sandboxes deleted.",
        st.metrics.deleted.load(Ordering::Relaxed),
    );
    let a = &st.metrics.approvals;
    for (name, help, v) in [
        (
            "sandgate_access_requests_opened_total",
            "Access requests opened by a refused name or a denied connection.",
            &a.opened,
        ),
        (
            "sandgate_access_requests_dropped_total",
            "Attempts at a new target of a sandbox holding its most access requests (no request opened).",
            &a.dropped,
        ),
        (
            "sandgate_access_requests_approved_total",
            "Access requests approved.",
            &a.approved,
        ),
        (
            "sandgate_access_requests_denied_total",
            "Access requests denied.",
            &a.denied,
        ),
    ] {
        counter(&mut out, name, help, v.load(Ordering::Relaxed));
    }
    // One read of the runner's counts, off the async threads (a runner on
    // another host is a round trip).
    let counts = crate::service::on_runner(&st, |r| Ok(r.counts()))
        .await
        .unwrap_or_default();
    if let Some((net, dns)) = counts.allowed {
        let _ = writeln!(
            out,
            "# HELP sandgate_connections_allowed_total New connections let out of sandboxes, by what allowed them.\n# TYPE sandgate_connections_allowed_total counter\nsandgate_connections_allowed_total{{by=\"policy\"}} {net}\nsandgate_connections_allowed_total{{by=\"dns_admission\"}} {dns}"
        );
    }
    let dns = counts.dns;
    for (name, help, v) in [
        (
            "sandgate_dns_forwarded_total",
            "DNS queries allowed and forwarded upstream.",
            dns.forwarded,
        ),
        (
            "sandgate_dns_cache_hits_total",
            "DNS queries answered from the cache.",
            dns.cache_hits,
        ),
        (
            "sandgate_dns_refused_total",
            "DNS queries refused by policy.",
            dns.refused,
        ),
        (
            "sandgate_dns_admitted_total",
            "Addresses admitted from DNS answers.",
            dns.admitted,
        ),
        (
            "sandgate_dns_rebinding_total",
            "Private addresses stripped from answers.",
            dns.rebinding,
        ),
        (
            "sandgate_dns_upstream_failures_total",
            "DNS queries no upstream resolver answered (the sandbox got SERVFAIL).",
            dns.upstream_failures,
        ),
        (
            "sandgate_dns_busy_total",
            "DNS queries turned away: the sandbox had its most waiting on upstream.",
            dns.busy,
        ),
        (
            "sandgate_dns_rate_limited_total",
            "DNS queries over their sandbox's rate (answered REFUSED).",
            dns.rate_limited,
        ),
        (
            "sandgate_dns_tcp_refused_total",
            "DNS-over-TCP connections closed at once (a sandbox's or the service's most open).",
            dns.tcp_refused,
        ),
        (
            "sandgate_dns_stale_total",
            "DNS answers and admissions dropped because the slot changed hands meanwhile.",
            dns.stale,
        ),
        (
            "sandgate_dns_held_total",
            "Refused DNS queries held for an approval (approvalHoldSeconds).",
            dns.held,
        ),
        (
            "sandgate_dns_held_approved_total",
            "Held DNS queries answered because an approval came in time.",
            dns.held_approved,
        ),
        (
            "sandgate_dns_upstream_unmatched_total",
            "Datagrams on the upstream sockets that answered no query (late or forged).",
            dns.upstream_unmatched,
        ),
    ] {
        counter(&mut out, name, help, v);
    }
    let gw = counts.gateway;
    for (name, help, v) in [
        (
            "sandgate_gateway_accepted_total",
            "Connections to addresses admitted by name steered to the name-checking gateway.",
            gw.accepted,
        ),
        (
            "sandgate_gateway_passed_total",
            "Connections the gateway passed on: their name allowed and resolved to their address for their sandbox.",
            gw.passed,
        ),
        (
            "sandgate_gateway_refused_total",
            "Connections the gateway reset (name_mismatch, no_server_name, encrypted_client_hello, ...).",
            gw.refused,
        ),
        (
            "sandgate_gateway_cut_total",
            "Gateway connections cut because a policy change no longer allowed their name.",
            gw.cut,
        ),
    ] {
        counter(&mut out, name, help, v);
    }
    let _ = writeln!(
        out,
        "# HELP sandgate_gateway_connections Connections open through the gateway.\n# TYPE sandgate_gateway_connections gauge\nsandgate_gateway_connections {}",
        gw.active
    );
    let _ = writeln!(
        out,
        "# HELP sandgate_network_events_total Denied connection attempts, refused DNS queries and limits reached, by kind and reason (kind \"dropped\": those the sandbox's event rate held back, counted, not published).\n# TYPE sandgate_network_events_total counter"
    );
    for (kind, reason, n) in counts.events {
        let _ = writeln!(
            out,
            "sandgate_network_events_total{{kind=\"{kind}\",reason=\"{}\"}} {n}",
            escape(&reason)
        );
    }
    let _ = writeln!(
        out,
        "# HELP sandgate_http_requests_total HTTP requests by route and status."
    );
    let _ = writeln!(out, "# TYPE sandgate_http_requests_total counter");
    if let Ok(r) = st.metrics.requests.lock() {
        for ((method, route, status), n) in r.iter() {
            let _ = writeln!(
                out,
                "sandgate_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
    }
    let _ = writeln!(
        out,
        "# HELP sandgate_http_request_duration_seconds HTTP request latency by route."
    );
    let _ = writeln!(
        out,
        "# TYPE sandgate_http_request_duration_seconds histogram"
    );
    if let Ok(l) = st.metrics.latency.lock() {
        for ((method, route), h) in l.iter() {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            for (bound, n) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(
                    out,
                    "sandgate_http_request_duration_seconds_bucket{{{labels},le=\"{bound}\"}} {n}"
                );
            }
            let _ = writeln!(
                out,
                "sandgate_http_request_duration_seconds_bucket{{{labels},le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "sandgate_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "sandgate_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
    }
    ([(CONTENT_TYPE, "text/plain; version=0.0.4")], out).into_response()
}
