//! `/metrics` in the OpenMetrics text format, through `prometheus-client`:
//! sandboxes by state and mode, creates and deletes, access requests,
//! request counts and latencies per route (all kept in memory as they
//! happen), and what the runner counts (its DNS service, gateway and
//! events, read from its memory at the scrape). A scrape reads no store.

use crate::AppState;
use axum::extract::{MatchedPath, Request, State};
use axum::http::header::CONTENT_TYPE;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{text, DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};
use sandgate_contract::SandboxState;
use sandgate_policy::Mode;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

/// Upper bounds of the latency histogram's buckets, seconds.
const BUCKETS: [f64; 12] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0,
];

/// A request's series: its method, its route template and its status.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    method: &'static str,
    route: String,
    status: u16,
}

/// A route's latency series.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

/// A series of `sandgate_sandboxes`.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SandboxLabels {
    state: &'static str,
    mode: &'static str,
}

/// The server's metrics.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    created: Counter,
    deleted: Counter,
    requests: Family<RequestLabels, Counter>,
    latency: Family<RouteLabels, Histogram, fn() -> Histogram>,
    /// Sandboxes by state and mode: the store's tally (each state as the
    /// store writes it; a sandbox's first count and its mode from the
    /// service, which resolves policies).
    pub sandboxes: SandboxTally,
    /// Access requests (shared with the tasks that open them).
    pub approvals: Arc<ApprovalCounts>,
}

/// What the access requests came to.
#[derive(Debug, Default)]
pub struct ApprovalCounts {
    /// Requests opened.
    pub opened: Counter,
    /// Attempts at a new target of a sandbox at its most requests.
    pub dropped: Counter,
    /// Requests approved.
    pub approved: Counter,
    /// Requests denied.
    pub denied: Counter,
}

/// Each sandbox's state and mode as last written, and the gauge they add
/// up to. Held by the store, which changes states as it writes them, and
/// by the metrics, which encode the gauge.
#[derive(Debug, Clone, Default)]
pub struct SandboxTally {
    known: Arc<Mutex<HashMap<String, SandboxLabels>>>,
    gauge: Family<SandboxLabels, Gauge>,
}

impl SandboxTally {
    /// Sandbox `id` is (newly, or again at a start) in `state` with `mode`
    /// (`None`: its policy cannot be resolved, `unknown`). Only a create
    /// and a start add a sandbox; every other change is to one known.
    pub fn add(&self, id: &str, state: SandboxState, mode: Option<Mode>) {
        let mode = mode.map(Mode::as_str).unwrap_or("unknown");
        self.change(id, true, |_| SandboxLabels {
            state: state.as_str(),
            mode,
        });
    }

    /// Known sandbox `id` is in `state`, its mode unchanged (a sandbox
    /// deleted meanwhile stays gone: a late death adds nothing).
    pub fn set_state(&self, id: &str, state: SandboxState) {
        self.change(id, false, |old| SandboxLabels {
            state: state.as_str(),
            mode: old.map_or("unknown", |o| o.mode),
        });
    }

    /// Known sandbox `id` has `mode` now, its state unchanged (what the
    /// store says of its state is not read back here: a death recorded
    /// meanwhile stands).
    pub fn set_mode(&self, id: &str, mode: Option<Mode>) {
        let mode = mode.map(Mode::as_str).unwrap_or("unknown");
        self.change(id, false, |old| SandboxLabels {
            state: old.map_or("unknown", |o| o.state),
            mode,
        });
    }

    fn change(
        &self,
        id: &str,
        add: bool,
        labels: impl FnOnce(Option<&SandboxLabels>) -> SandboxLabels,
    ) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        let old = known.get(id).cloned();
        if old.is_none() && !add {
            return;
        }
        let new = labels(old.as_ref());
        if old.as_ref() == Some(&new) {
            return;
        }
        if let Some(old) = old {
            self.gauge.get_or_create(&old).dec();
        }
        self.gauge.get_or_create(&new).inc();
        known.insert(id.to_string(), new);
    }

    /// Sandbox `id` is gone.
    pub fn remove(&self, id: &str) {
        let Ok(mut known) = self.known.lock() else {
            return;
        };
        if let Some(old) = known.remove(id) {
            self.gauge.get_or_create(&old).dec();
        }
    }
}

impl Metrics {
    /// The server's metrics, `sandboxes` (the store's tally) among them.
    pub fn new(sandboxes: SandboxTally) -> Self {
        let mut registry = Registry::default();
        let created = Counter::default();
        registry.register(
            "sandgate_sandboxes_created",
            "Sandboxes created",
            created.clone(),
        );
        let deleted = Counter::default();
        registry.register(
            "sandgate_sandboxes_deleted",
            "Sandboxes deleted",
            deleted.clone(),
        );
        registry.register(
            "sandgate_sandboxes",
            "Sandboxes by state and network mode",
            sandboxes.gauge.clone(),
        );
        let approvals = Arc::new(ApprovalCounts::default());
        for (name, help, counter) in [
            (
                "sandgate_access_requests_opened",
                "Access requests opened by a refused name or a denied connection",
                &approvals.opened,
            ),
            (
                "sandgate_access_requests_dropped",
                "Attempts at a new target of a sandbox holding its most access requests (no request opened)",
                &approvals.dropped,
            ),
            (
                "sandgate_access_requests_approved",
                "Access requests approved",
                &approvals.approved,
            ),
            (
                "sandgate_access_requests_denied",
                "Access requests denied",
                &approvals.denied,
            ),
        ] {
            registry.register(name, help, counter.clone());
        }
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "sandgate_http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        let latency: Family<RouteLabels, Histogram, fn() -> Histogram> =
            Family::new_with_constructor(|| Histogram::new(BUCKETS));
        registry.register_with_unit(
            "sandgate_http_request_duration",
            "HTTP request latency by route",
            Unit::Seconds,
            latency.clone(),
        );
        Metrics {
            registry,
            created,
            deleted,
            requests,
            latency,
            sandboxes,
            approvals,
        }
    }
}

impl Metrics {
    /// A sandbox was created.
    pub fn created(&self) {
        self.created.inc();
    }

    /// A sandbox was deleted.
    pub fn deleted(&self) {
        self.deleted.inc();
    }
}

/// Middleware: counts every request and its latency, by route template
/// (never by raw path, so ids do not multiply the series).
pub async fn track(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    // Known methods only: a made-up one must not add series forever.
    let method = match req.method().as_str() {
        "GET" => "GET",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "HEAD" => "HEAD",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    };
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|p| p.as_str().to_string())
        .unwrap_or_else(|| "unmatched".into());
    let started = Instant::now();
    let response = next.run(req).await;
    let m = &st.metrics;
    m.requests
        .get_or_create(&RequestLabels {
            method,
            route: route.clone(),
            status: response.status().as_u16(),
        })
        .inc();
    m.latency
        .get_or_create(&RouteLabels { method, route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The runner's counts as they were read for one scrape.
#[derive(Debug)]
struct RunnerCounts(sandgate_contract::Counts);

/// One counter (or gauge) without labels.
fn one(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    metric: &impl EncodeMetric,
) -> Result<(), std::fmt::Error> {
    metric.encode(encoder.encode_descriptor(name, help, None, metric.metric_type())?)
}

impl Collector for RunnerCounts {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let counts = &self.0;
        if let Some((net, dns)) = counts.allowed {
            let mut family = encoder.encode_descriptor(
                "sandgate_connections_allowed",
                "New connections let out of sandboxes, by what allowed them",
                None,
                prometheus_client::metrics::MetricType::Counter,
            )?;
            for (by, n) in [("policy", net), ("dns_admission", dns)] {
                ConstCounter::new(n).encode(family.encode_family(&[("by", by)])?)?;
            }
        }
        let dns = counts.dns;
        for (name, help, v) in [
            (
                "sandgate_dns_forwarded",
                "DNS queries allowed and forwarded upstream",
                dns.forwarded,
            ),
            (
                "sandgate_dns_cache_hits",
                "DNS queries answered from the cache",
                dns.cache_hits,
            ),
            (
                "sandgate_dns_refused",
                "DNS queries refused by policy",
                dns.refused,
            ),
            (
                "sandgate_dns_admitted",
                "Addresses admitted from DNS answers",
                dns.admitted,
            ),
            (
                "sandgate_dns_rebinding",
                "Private addresses stripped from answers",
                dns.rebinding,
            ),
            (
                "sandgate_dns_upstream_failures",
                "DNS queries no upstream resolver answered (the sandbox got SERVFAIL)",
                dns.upstream_failures,
            ),
            (
                "sandgate_dns_busy",
                "DNS queries turned away: the sandbox had its most waiting on upstream",
                dns.busy,
            ),
            (
                "sandgate_dns_rate_limited",
                "DNS queries over their sandbox's rate (answered REFUSED)",
                dns.rate_limited,
            ),
            (
                "sandgate_dns_tcp_refused",
                "DNS-over-TCP connections closed at once (a sandbox's or the service's most open)",
                dns.tcp_refused,
            ),
            (
                "sandgate_dns_stale",
                "DNS answers and admissions dropped because the slot changed hands meanwhile",
                dns.stale,
            ),
            (
                "sandgate_dns_held",
                "Refused DNS queries held for an approval (approvalHoldSeconds)",
                dns.held,
            ),
            (
                "sandgate_dns_held_approved",
                "Held DNS queries answered because an approval came in time",
                dns.held_approved,
            ),
            (
                "sandgate_dns_upstream_unmatched",
                "Datagrams on the upstream sockets that answered no query (late or forged)",
                dns.upstream_unmatched,
            ),
        ] {
            one(&mut encoder, name, help, &ConstCounter::new(v))?;
        }
        let gw = counts.gateway;
        for (name, help, v) in [
            ("sandgate_gateway_accepted", "Connections to addresses admitted by name steered to the name-checking gateway", gw.accepted),
            ("sandgate_gateway_passed", "Connections the gateway passed on: their name allowed and resolved to their address for their sandbox", gw.passed),
            ("sandgate_gateway_refused", "Connections the gateway reset (name_mismatch, no_server_name, encrypted_client_hello, ...)", gw.refused),
            ("sandgate_gateway_cut", "Gateway connections cut because a policy change no longer allowed their name", gw.cut),
        ] {
            one(&mut encoder, name, help, &ConstCounter::new(v))?;
        }
        one(
            &mut encoder,
            "sandgate_flow_records_lost",
            "Flow log records lost before they were written (the kernel's event socket overflowed, or a queue of records was full)",
            &ConstCounter::new(counts.flows_lost),
        )?;
        one(
            &mut encoder,
            "sandgate_gateway_connections",
            "Connections open through the gateway",
            &ConstGauge::new(i64::try_from(gw.active).unwrap_or(i64::MAX)),
        )?;
        let mut family = encoder.encode_descriptor(
            "sandgate_network_events",
            "Denied connection attempts, refused DNS queries and limits reached, by kind and reason (kind \"dropped\": those the sandbox's event rate held back, counted, not published)",
            None,
            prometheus_client::metrics::MetricType::Counter,
        )?;
        for (kind, reason, n) in &counts.events {
            let labels = [("kind", kind.as_str()), ("reason", reason.as_str())];
            ConstCounter::new(*n).encode(family.encode_family(&labels)?)?;
        }
        Ok(())
    }
}

/// The metrics: an operator surface, so the operator token only (a
/// tenant's key gets 403). Counts come from memory and from the runner's
/// last sample of the kernel's counters: a scrape runs no program, takes
/// no lock of the dataplane and reads no store.
#[utoipa::path(get, path = "/metrics", tag = "system",
    responses((status = 200, description = "OpenMetrics text format", content_type = "application/openmetrics-text"),
        (status = 401, body = crate::api::ErrorBody), (status = 403, body = crate::api::ErrorBody)),
    security(("bearer" = [])))]
pub async fn metrics(State(st): State<Arc<AppState>>, _: crate::api::Operator) -> Response {
    // One read of each runner's counts, off the async threads (a runner
    // on another host is a round trip), summed; one that does not answer
    // counts nothing.
    let mut counts = sandgate_contract::Counts::default();
    for member in st.fleet.members() {
        let read = crate::service::on_runner(&st, &member.name, |r| Ok(r.counts())).await;
        if let Ok(theirs) = read {
            counts.add(&theirs);
        }
    }
    let mut runner = Registry::default();
    runner.register_collector(Box::new(RunnerCounts(counts)));
    let mut out = String::new();
    let encoded = text::encode_registry(&mut out, &st.metrics.registry)
        .and_then(|()| text::encode_registry(&mut out, &runner))
        .and_then(|()| text::encode_eof(&mut out));
    if let Err(e) = encoded {
        return crate::error::ApiError::internal(e).into_response();
    }
    (
        [(
            CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        out,
    )
        .into_response()
}
