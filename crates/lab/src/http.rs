//! The world's HTTP service, in the clear and over TLS: answers every
//! request with 200 and a line naming the request and the address it came
//! from, so a client can check what it reached, and from where. A request
//! for a path under [`ECHO_HEADERS`] gets, after that line, every header
//! it came with (`name: value`, one a line), so a client can check what
//! reached the server (a secret put in its placeholder's place, or not).

use std::io::{self, Read, Write};
use std::net::IpAddr;

/// Paths under which the answer echoes the request's headers.
pub const ECHO_HEADERS: &str = "/echo-headers";

/// `/bytes/N`: an answer of N bytes (at most [`BYTES_MAX`]), for bulk
/// transfers over HTTP and HTTPS.
pub const BYTES: &str = "/bytes/";

/// The most bytes `/bytes/N` answers.
pub const BYTES_MAX: u64 = 1 << 30;

/// `/upgrade` with `Upgrade: websocket`: answered 101, then every byte
/// sent is echoed (a WebSocket stand-in, for tunnels through a proxy).
pub const UPGRADE: &str = "/upgrade";

/// Reads one request head from `conn`, which came from `peer`, and
/// answers it.
pub fn serve(conn: &mut impl ReadWrite, peer: Option<IpAddr>) -> io::Result<()> {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 1024];
    let head_end = loop {
        let n = conn.read(&mut chunk)?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            break end + 4;
        }
        if buf.len() > 16 * 1024 {
            return answer(conn, 431, "request head too large\n");
        }
    };
    let mut headers = [httparse::EMPTY_HEADER; 64];
    let mut request = httparse::Request::new(&mut headers);
    match request.parse(&buf[..head_end]) {
        Ok(httparse::Status::Complete(_)) => {
            let host = request
                .headers
                .iter()
                .find(|h| h.name.eq_ignore_ascii_case("host"))
                .map(|h| String::from_utf8_lossy(h.value).into_owned())
                .unwrap_or_default();
            let from = peer.map_or_else(|| "?".into(), |p| p.to_canonical().to_string());
            let path = request.path.unwrap_or("?");
            if let Some((status, kind, body)) = crate::mirrors::answer(path) {
                return answer_as(conn, status, kind, &body);
            }
            if let Some(n) = path.strip_prefix(BYTES).and_then(|n| n.parse::<u64>().ok()) {
                return bytes(conn, n.min(BYTES_MAX));
            }
            let websocket = request.headers.iter().any(|h| {
                h.name.eq_ignore_ascii_case("upgrade") && h.value.eq_ignore_ascii_case(b"websocket")
            });
            if path == UPGRADE && websocket {
                conn.write_all(
                    b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\r\n",
                )?;
                conn.flush()?;
                conn.write_all(&buf[head_end..])?;
                // Until the client closes, or 10 s without a byte (the
                // connection's reads time out often: the lab's servers
                // watch their stop flag between them).
                let mut chunk = [0u8; 16 * 1024];
                let mut idle = std::time::Instant::now();
                loop {
                    match conn.read(&mut chunk) {
                        Ok(0) => return Ok(()),
                        Ok(n) => {
                            conn.write_all(&chunk[..n])?;
                            conn.flush()?;
                            idle = std::time::Instant::now();
                        }
                        Err(e)
                            if matches!(
                                e.kind(),
                                io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                            ) && idle.elapsed() < std::time::Duration::from_secs(10) => {}
                        Err(e) => return Err(e),
                    }
                }
            }
            let mut body = format!(
                "sandgate lab: {} {path} from={from} host={host}\n",
                request.method.unwrap_or("?"),
            );
            if path.starts_with(ECHO_HEADERS) {
                for h in request.headers.iter() {
                    body.push_str(&format!(
                        "{}: {}\n",
                        h.name.to_ascii_lowercase(),
                        String::from_utf8_lossy(h.value)
                    ));
                }
            }
            answer(conn, 200, &body)
        }
        _ => answer(conn, 400, "bad request\n"),
    }
}

/// An answer of `n` bytes, written as they go.
fn bytes(conn: &mut impl ReadWrite, n: u64) -> io::Result<()> {
    conn.write_all(
        format!(
            "HTTP/1.1 200 OK\r\ncontent-type: application/octet-stream\r\ncontent-length: {n}\r\nconnection: close\r\n\r\n"
        )
        .as_bytes(),
    )?;
    let chunk = vec![b'x'; 256 * 1024];
    let mut left = n;
    while left > 0 {
        let k = left.min(chunk.len() as u64) as usize;
        conn.write_all(&chunk[..k])?;
        left -= k as u64;
    }
    conn.flush()
}

fn answer(conn: &mut impl ReadWrite, status: u16, body: &str) -> io::Result<()> {
    answer_as(conn, status, "text/plain", body.as_bytes())
}

fn answer_as(conn: &mut impl ReadWrite, status: u16, kind: &str, body: &[u8]) -> io::Result<()> {
    let reason = match status {
        200 => "OK",
        400 => "Bad Request",
        404 => "Not Found",
        431 => "Request Header Fields Too Large",
        _ => "Service Unavailable",
    };
    conn.write_all(
        format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: {kind}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        )
        .as_bytes(),
    )?;
    conn.write_all(body)?;
    conn.flush()
}

/// A stream to read a request from and write the answer to.
pub trait ReadWrite: Read + Write {}
impl<T: Read + Write> ReadWrite for T {}
