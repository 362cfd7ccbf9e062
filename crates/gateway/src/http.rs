//! Plain HTTP through the gateway: every request's name (its `Host`, or
//! the authority of an absolute target) is checked before the request is
//! passed on, so that a connection opened for an allowed name cannot ask
//! the same address for another site on its second request. HTTP/1 is
//! served and relayed by `hyper`; upgrades (WebSocket) are relayed once
//! the destination agreed to them.

use http_body_util::{Either, Full};
use hyper::body::{Bytes, Incoming};
use hyper::client::conn::http1::SendRequest;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use rustls::pki_types::ServerName;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;

/// How long a request head may take to arrive.
const HEAD_TIMEOUT: Duration = Duration::from_secs(30);

/// Why the relay of a request ended the connection.
#[derive(Debug)]
pub enum RelayError {
    /// The gateway refused the request.
    Refused(crate::Denial),
    /// The destination could not be reached.
    Io(io::Error),
    /// HTTP failed on either side.
    Http(hyper::Error),
}

impl std::fmt::Display for RelayError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            RelayError::Refused(d) => write!(f, "refused by the gateway: {}", d.code()),
            RelayError::Io(e) => write!(f, "the destination: {e}"),
            RelayError::Http(e) => write!(f, "HTTP: {e}"),
        }
    }
}

impl std::error::Error for RelayError {}

impl From<io::Error> for RelayError {
    fn from(e: io::Error) -> Self {
        RelayError::Io(e)
    }
}

impl From<hyper::Error> for RelayError {
    fn from(e: hyper::Error) -> Self {
        RelayError::Http(e)
    }
}

/// The name a request is for: its `Host` header's and its target's
/// authority's host, which must agree; `None` if it names none. An
/// authority with a user part (`user@host`, which HTTP forbids) names
/// nothing the gateway passes: what stands before the `@` would travel on.
pub fn request_name<B>(req: &Request<B>) -> Result<Option<String>, crate::Denial> {
    let mut names = Vec::new();
    if let Some(authority) = req.uri().authority() {
        if authority.as_str().contains('@') {
            return Err(crate::Denial::NameMismatch);
        }
        names.push(authority.host().to_string());
    }
    let mut hosts = req.headers().get_all(hyper::header::HOST).iter();
    match (hosts.next(), hosts.next()) {
        (Some(_), Some(_)) => return Err(crate::Denial::NameMismatch),
        (Some(h), None) => {
            let h = h.to_str().map_err(|_| crate::Denial::NameMismatch)?;
            let authority: hyper::http::uri::Authority =
                h.parse().map_err(|_| crate::Denial::NameMismatch)?;
            if authority.as_str().contains('@') {
                return Err(crate::Denial::NameMismatch);
            }
            names.push(authority.host().to_string());
        }
        _ => {}
    }
    names.dedup_by(|a, b| a.eq_ignore_ascii_case(b));
    match names.as_slice() {
        [] => Ok(None),
        [one] => Ok(Some(one.clone())),
        _ => Err(crate::Denial::NameMismatch),
    }
}

/// A stream whose first bytes were already read: they are read again
/// first.
/// The bytes read from it and written to it are counted in `counts` (the
/// flow log's).
pub struct Prefixed {
    prefix: Vec<u8>,
    pos: usize,
    inner: TcpStream,
    counts: Arc<crate::flows::FlowCounts>,
}

impl Prefixed {
    /// `inner`, with `prefix` read from it before.
    pub fn new(
        prefix: Vec<u8>,
        inner: TcpStream,
        counts: Arc<crate::flows::FlowCounts>,
    ) -> Prefixed {
        Prefixed {
            prefix,
            pos: 0,
            inner,
            counts,
        }
    }
}

impl AsyncRead for Prefixed {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.pos < self.prefix.len() {
            let n = (self.prefix.len() - self.pos).min(buf.remaining());
            let start = self.pos;
            buf.put_slice(&self.prefix[start..start + n]);
            self.pos += n;
            self.counts.add_up(n);
            return Poll::Ready(Ok(()));
        }
        let before = buf.filled().len();
        let read = Pin::new(&mut self.inner).poll_read(cx, buf);
        self.counts.add_up(buf.filled().len() - before);
        read
    }
}

impl AsyncWrite for Prefixed {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let written = Pin::new(&mut self.inner).poll_write(cx, buf);
        if let Poll::Ready(Ok(n)) = &written {
            self.counts.add_down(*n);
        }
        written
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

/// What a request asks, as the gateway checks it.
#[derive(Debug, Clone, Copy)]
pub struct Asked<'a> {
    /// The name it is for (`None`: it names none).
    pub name: Option<&'a str>,
    /// Its method.
    pub method: &'a str,
    /// Its target's path, as sent (still encoded).
    pub path: &'a str,
}

/// What the HTTP relay asks of the gateway for each request.
pub trait Check: Send + Sync + 'static {
    /// Whether a request may pass; a refusal is reported by the callee.
    /// A refusal by HTTP rules ([`crate::Denial::Http`]) is answered 403
    /// and the connection kept; any other ends the connection.
    fn request(&self, asked: &Asked<'_>) -> Result<(), crate::Denial>;

    /// Reports a request refused after its check (its destination's
    /// certificate is not trusted).
    fn refused(&self, name: Option<&str>, denial: &crate::Denial);

    /// Prepares the headers of a request for `name` that passed its
    /// check: secrets put in their placeholders' place (the names of
    /// those put, returned), headers that would change what the rules
    /// checked taken out.
    fn rewrite(&self, name: &str, headers: &mut hyper::HeaderMap) -> Vec<String>;

    /// Puts back the placeholders of the secrets `replaced` where their
    /// values come back in the response's headers.
    fn unrewrite(&self, replaced: &[String], headers: &mut hyper::HeaderMap);
}

/// A response relayed from the destination, or the gateway's own.
pub type Answer = Response<Either<Incoming, Full<Bytes>>>;

/// The gateway's answer to a request that HTTP rules refused: 403 with
/// `x-sandgate-deny: <reason>`.
pub fn forbidden(denial: &crate::Denial) -> Answer {
    answer(
        hyper::StatusCode::FORBIDDEN,
        denial,
        "this request is not allowed by the sandbox's HTTP rules",
    )
}

/// The gateway's own answer, with `x-sandgate-deny: <reason>`.
fn answer(status: hyper::StatusCode, denial: &crate::Denial, why: &str) -> Answer {
    let code = denial.code();
    let mut response = Response::new(Either::Right(Full::new(Bytes::from(format!(
        "sandgate: {why} ({code})\n"
    )))));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    if let Ok(v) = hyper::header::HeaderValue::from_str(&code) {
        headers.insert("x-sandgate-deny", v);
    }
    headers.insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The connection to the destination, opened at the first request passed.
type Sender = Arc<tokio::sync::Mutex<Option<SendRequest<Incoming>>>>;

/// How the gateway reaches the destination of an HTTP connection.
#[derive(Clone)]
pub struct Upstream {
    /// Where, from where.
    pub dial: crate::Dial,
    /// In TLS of the gateway's own (a terminated connection), to this
    /// server name, verified against the host's roots; `None`: in the
    /// clear.
    pub tls: Option<(tokio_rustls::TlsConnector, ServerName<'static>)>,
}

/// Checks one request and passes it on.
async fn forward(
    check: Arc<dyn Check>,
    (sender, tunnels): (Sender, Tunnels),
    upstream: Upstream,
    mut req: Request<Incoming>,
) -> Result<Answer, RelayError> {
    let name = request_name(&req).map_err(RelayError::Refused)?;
    let asked = Asked {
        name: name.as_deref(),
        method: req.method().as_str(),
        path: req.uri().path(),
    };
    match check.request(&asked) {
        Ok(()) => {}
        Err(denial @ crate::Denial::Http(_)) => return Ok(forbidden(&denial)),
        Err(denial) => return Err(RelayError::Refused(denial)),
    }
    strip_upgrade(req.headers_mut());
    let replaced = match &name {
        Some(name) => check.rewrite(name, req.headers_mut()),
        None => Vec::new(),
    };
    let mut slot = sender.lock().await;
    let sender = match slot.as_mut() {
        Some(s) if !s.is_closed() => s,
        _ => match open(&upstream).await {
            Ok(s) => slot.insert(s),
            Err(RelayError::Io(e)) if upstream.tls.is_some() && is_tls_refusal(&e) => {
                // The destination's certificate is not one the host's
                // roots vouch for: said to the sandbox, and reported.
                let denial = crate::Denial::UpstreamUntrusted;
                check.refused(name.as_deref(), &denial);
                tracing::debug!(error = %e, "gateway: a destination's certificate was refused");
                return Ok(answer(
                    hyper::StatusCode::BAD_GATEWAY,
                    &denial,
                    "the destination's TLS certificate is not trusted by this host",
                ));
            }
            Err(e) => return Err(e),
        },
    };
    sender.ready().await?;
    let upgrade = hyper::upgrade::on(&mut req);
    let mut response = sender.send_request(req).await?;
    // A value the destination sends back in a header (a reflected
    // credential) goes back to the sandbox as the placeholder.
    check.unrewrite(&replaced, response.headers_mut());
    if response.status() == hyper::StatusCode::SWITCHING_PROTOCOLS {
        let theirs = hyper::upgrade::on(&mut response);
        // The tunnel lives as long as the connection it came from: it is
        // awaited by `serve`, and aborted with it when a policy change
        // cuts it.
        let task = tokio::spawn(async move {
            if let (Ok(ours), Ok(theirs)) = (upgrade.await, theirs.await) {
                let (mut ours, mut theirs) = (TokioIo::new(ours), TokioIo::new(theirs));
                if let Err(e) = tokio::io::copy_bidirectional(&mut ours, &mut theirs).await {
                    tracing::debug!(error = %e, "gateway: an upgraded connection ended");
                }
            }
        });
        tunnels.add(task);
    }
    Ok(response.map(Either::Left))
}

/// Takes every upgrade but WebSocket's out of a request (its `Upgrade`
/// and the `Connection` tokens that ask for it): after an upgrade the
/// gateway sees nothing more, so a tunnel of HTTP/2 (`h2c`) would carry
/// requests no rule or name check saw. WebSocket carries no requests.
fn strip_upgrade(headers: &mut hyper::HeaderMap) {
    use hyper::header::{CONNECTION, UPGRADE};
    let websocket = headers
        .get(UPGRADE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("websocket"));
    if websocket || !headers.contains_key(UPGRADE) {
        return;
    }
    headers.remove(UPGRADE);
    headers.remove("http2-settings");
    let kept: Vec<String> = headers
        .get_all(CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .filter(|t| {
            !t.is_empty()
                && !t.eq_ignore_ascii_case("upgrade")
                && !t.eq_ignore_ascii_case("http2-settings")
        })
        .map(str::to_string)
        .collect();
    headers.remove(CONNECTION);
    if let Ok(v) = hyper::header::HeaderValue::from_str(&kept.join(", ")) {
        if !kept.is_empty() {
            headers.insert(CONNECTION, v);
        }
    }
}

/// The tunnels (upgraded connections) of one sandbox connection: aborted
/// when the connection's future is dropped (a cut), awaited when it ends.
#[derive(Clone, Default)]
struct Tunnels(Arc<std::sync::Mutex<TunnelTasks>>);

#[derive(Default)]
struct TunnelTasks {
    /// To wait for, once the connection handed its bytes to them.
    joins: Vec<tokio::task::JoinHandle<()>>,
    /// To abort, whether waited for or not.
    aborts: Vec<tokio::task::AbortHandle>,
}

impl Tunnels {
    fn tasks(&self) -> std::sync::MutexGuard<'_, TunnelTasks> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn add(&self, task: tokio::task::JoinHandle<()>) {
        let mut tasks = self.tasks();
        tasks.aborts.push(task.abort_handle());
        tasks.joins.push(task);
    }

    fn take(&self) -> Vec<tokio::task::JoinHandle<()>> {
        std::mem::take(&mut self.tasks().joins)
    }
}

/// Aborts the tunnels it guards when dropped.
struct AbortTunnels(Tunnels);

impl Drop for AbortTunnels {
    fn drop(&mut self) {
        for task in std::mem::take(&mut self.0.tasks().aborts) {
            task.abort();
        }
    }
}

/// Whether a failed connect is the destination's certificate refused
/// (not one the host's roots vouch for, or not for the name).
fn is_tls_refusal(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|inner| {
        matches!(
            inner.downcast_ref::<rustls::Error>(),
            Some(rustls::Error::InvalidCertificate(_))
        )
    })
}

/// Serves the sandbox's side `down`, passing each request that `check`
/// lets through to the destination over one connection of its own;
/// ends at the first request refused by name (an error, after which the
/// caller resets the connection).
pub async fn serve<IO>(
    down: IO,
    upstream: Upstream,
    check: Arc<dyn Check>,
) -> Result<(), RelayError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let sender: Sender = Arc::new(tokio::sync::Mutex::new(None));
    let tunnels = Tunnels::default();
    let guard = AbortTunnels(tunnels.clone());
    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
        let fut: Pin<Box<dyn Future<Output = Result<Answer, RelayError>> + Send>> =
            Box::pin(forward(
                check.clone(),
                (sender.clone(), tunnels.clone()),
                upstream.clone(),
                req,
            ));
        fut
    });
    hyper::server::conn::http1::Builder::new()
        .preserve_header_case(true)
        .timer(TokioTimer::new())
        .header_read_timeout(HEAD_TIMEOUT)
        .serve_connection(TokioIo::new(down), service)
        .with_upgrades()
        .await?;
    // An upgraded connection runs on as its tunnel: the sandbox's
    // connection (tracked, counted, cut by policy changes) ends with it.
    for task in guard.0.take() {
        if let Err(e) = task.await {
            tracing::debug!(error = %e, "gateway: a tunnel's task ended");
        }
    }
    Ok(())
}

/// A connection to the destination, for the requests of one sandbox
/// connection.
async fn open(upstream: &Upstream) -> Result<SendRequest<Incoming>, RelayError> {
    let stream = upstream.dial.connect().await?;
    stream.set_nodelay(true)?;
    match &upstream.tls {
        None => handshake(stream).await,
        Some((connector, name)) => {
            let tls = tokio::time::timeout(
                upstream.dial.timeout,
                connector.connect(name.clone(), stream),
            )
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "TLS handshake timed out"))??;
            handshake(tls).await
        }
    }
}

/// HTTP/1 over `io`, its connection driven on a task of its own.
async fn handshake<IO>(io: IO) -> Result<SendRequest<Incoming>, RelayError>
where
    IO: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let (sender, conn) = hyper::client::conn::http1::Builder::new()
        .preserve_header_case(true)
        .handshake(TokioIo::new(io))
        .await?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "gateway: a connection to a destination ended");
        }
    });
    Ok(sender)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Denial;

    fn req(target: &str, hosts: &[&str]) -> Request<()> {
        let mut b = Request::builder().uri(target);
        for h in hosts {
            b = b.header("host", *h);
        }
        b.body(()).unwrap()
    }

    #[test]
    fn a_requests_name_is_its_host_and_its_targets_authority_which_must_agree() {
        let name = |t, h: &[&str]| request_name(&req(t, h));
        assert_eq!(
            name("/", &["api.example.com"]).unwrap(),
            Some("api.example.com".into())
        );
        assert_eq!(
            name("/", &["api.example.com:8080"]).unwrap(),
            Some("api.example.com".into())
        );
        assert_eq!(name("/", &[]).unwrap(), None);
        assert_eq!(
            name("http://api.example.com/x", &["API.example.com"]).unwrap(),
            Some("api.example.com".into())
        );
        assert!(matches!(
            name("http://other.example.net/x", &["api.example.com"]),
            Err(Denial::NameMismatch)
        ));
        assert!(matches!(
            name("/", &["api.example.com", "other.example.net"]),
            Err(Denial::NameMismatch)
        ));
        assert!(matches!(
            name("/", &["bad host"]),
            Err(Denial::NameMismatch)
        ));
    }
}
