//! The HTTP/1.1 connection loop of the apt front end.
//!
//! Why not hyper's server: apt pipelines up to 10 requests on one
//! keep-alive connection and needs the answers in order. hyper's HTTP/1
//! server reads the next request only after the previous response is
//! written. One slow package would then hold back the nine behind it, and
//! their downloads would not even start. This loop reads requests as they
//! come (parsing with `httparse`, the parser hyper itself uses), starts a
//! task for each at once, and writes the responses in request order. It is
//! generic over [`Handler`], so the policy (what to serve) lives in
//! `service.rs` and this file only speaks HTTP.
//!
//! Limits: request head 16 KiB (431), target 8 KiB (414), 64 headers (431),
//! no request bodies (GET and HEAD only), at most 16 requests in flight per
//! connection (the reader waits), 60 s idle keep-alive, 30 s to send a
//! complete request head, 60 s for apt to take each chunk of a response.

use std::fmt::Write as _;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;
use std::sync::Arc;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tracing::Instrument;

use crate::admission::Ticket;

/// Largest request head.
pub const MAX_HEAD: usize = 16 * 1024;
const MAX_HEADERS: usize = 64;
const MAX_IN_FLIGHT: usize = 16;
const IDLE: Duration = Duration::from_secs(60);
const WRITE_TIMEOUT: Duration = Duration::from_secs(60);

/// A parsed request.
#[derive(Debug, Clone)]
pub struct Request {
    /// The method, upper case as sent.
    pub method: String,
    /// The request target as sent.
    pub target: String,
    /// Header names lower-cased, values as sent (lossy UTF-8).
    pub headers: Vec<(String, String)>,
    /// The client's address.
    pub peer: SocketAddr,
}

impl Request {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }

    /// Whether this is a HEAD request.
    pub fn is_head(&self) -> bool {
        self.method == "HEAD"
    }
}

/// A response body.
pub enum Body {
    /// No body.
    Empty,
    /// Bytes in memory.
    Bytes(Bytes),
    /// A range of a file, sent with sendfile(2).
    File {
        /// The open file.
        file: std::fs::File,
        /// Where to start.
        offset: u64,
        /// How many bytes.
        len: u64,
    },
    /// A file that is still being written (a piece being assembled): the
    /// ranges that may be sent arrive through `rx` and go out with
    /// sendfile(2), so the bytes never pass through user space. An `Err`
    /// or an early end cuts the response short, as for `Stream`.
    FileRanges {
        /// The file.
        file: std::fs::File,
        /// `[start, end)` ranges, in order and contiguous.
        rx: mpsc::Receiver<Result<(u64, u64), ()>>,
        /// The Content-Length.
        len: u64,
    },
    /// Chunks produced by a task. `len` is the Content-Length (chunked
    /// encoding when `None`). An `Err` or an early end cuts the response
    /// short and closes the connection, so apt never takes a partial or
    /// failed body for a whole one.
    Stream {
        /// The chunks.
        rx: mpsc::Receiver<Result<Bytes, ()>>,
        /// The total length, if known.
        len: Option<u64>,
    },
}

/// A response.
pub struct Response {
    /// Status code.
    pub status: u16,
    /// Extra headers (Content-Length, Date, Connection are added here).
    pub headers: Vec<(&'static str, String)>,
    /// The body.
    pub body: Body,
    /// Close the connection after this response.
    pub close: bool,
    /// Told the bytes written and the end (the request's live transfer).
    pub progress: Option<Arc<dyn Progress>>,
}

impl Response {
    /// A short plain-text response.
    pub fn text(status: u16, msg: impl Into<String>) -> Response {
        let mut m: String = msg.into();
        m.push('\n');
        Response {
            status,
            headers: vec![("content-type", "text/plain; charset=utf-8".into())],
            body: Body::Bytes(Bytes::from(m)),
            close: false,
            progress: None,
        }
    }

    /// A body with a content type.
    pub fn bytes(status: u16, content_type: &str, body: impl Into<Bytes>) -> Response {
        Response {
            status,
            headers: vec![("content-type", content_type.to_string())],
            body: Body::Bytes(body.into()),
            close: false,
            progress: None,
        }
    }

    pub(crate) fn body_len(&self) -> Option<u64> {
        match &self.body {
            Body::Empty => Some(0),
            Body::Bytes(b) => Some(b.len() as u64),
            Body::File { len, .. } => Some(*len),
            Body::Stream { len, .. } => *len,
            Body::FileRanges { len, .. } => Some(*len),
        }
    }
}

/// What serves requests.
pub trait Handler: Send + Sync + 'static {
    /// Answers one request.
    fn handle(self: Arc<Self>, req: Request) -> impl Future<Output = Response> + Send;
    /// Counts bytes of response bodies written to apt.
    fn sent(&self, bytes: u64);
}

/// Follows one response as it is written: the front end's live transfers
/// and request log line (`transfers.rs`).
pub trait Progress: Send + Sync {
    /// `n` more bytes of the body were written.
    fn sent(&self, n: u64);
    /// The response ended: in full, or cut short.
    fn finished(&self, complete: bool);
}

struct Queued {
    response: JoinHandle<Response>,
    head: bool,
    close: bool,
}

/// Whether `target` names one of the daemon's own pages (`/`,
/// `/status.json`, `/metrics`): what a status slot may serve.
fn is_status_page(target: &str) -> bool {
    let path = target.split('?').next().unwrap_or("");
    matches!(path, "/" | "/status.json" | "/metrics")
}

/// Serves one connection until it closes.
///
/// When `shutdown` turns true the connection reads no further request:
/// the responses already queued are sent in full, then it closes. A
/// request head must be complete within `head_timeout` of its first byte
/// (else 408). The connection reports what it does to its admission
/// `ticket`, and closes when the ticket is evicted (`admission.rs`).
pub async fn serve_connection<H: Handler>(
    stream: TcpStream,
    peer: SocketAddr,
    handler: Arc<H>,
    shutdown: watch::Receiver<bool>,
    ticket: Arc<Ticket>,
    head_timeout: Duration,
) {
    let _ = stream.set_nodelay(true);
    let (rd, wr) = stream.into_split();
    let (tx, rx) = mpsc::channel(MAX_IN_FLIGHT);
    let span = tracing::debug_span!("apt", %peer);
    let conn = Conn {
        peer,
        ticket: ticket.clone(),
        head_timeout,
    };
    let reader =
        tokio::spawn(read_loop(rd, conn, handler.clone(), tx, shutdown).instrument(span.clone()));
    write_loop(wr, rx, &*handler, &ticket)
        .instrument(span)
        .await;
    reader.abort();
}

/// What the read loop knows of its connection.
struct Conn {
    peer: SocketAddr,
    ticket: Arc<Ticket>,
    head_timeout: Duration,
}

fn ready(resp: Response) -> JoinHandle<Response> {
    tokio::spawn(async move { resp })
}

async fn read_loop<H: Handler>(
    mut rd: OwnedReadHalf,
    conn: Conn,
    handler: Arc<H>,
    tx: mpsc::Sender<Queued>,
    mut shutdown: watch::Receiver<bool>,
) {
    let Conn {
        peer,
        ticket,
        head_timeout,
    } = conn;
    let mut buf = BytesMut::with_capacity(4096);
    // When the head now buffered must be complete.
    let mut deadline: Option<tokio::time::Instant> = None;
    loop {
        if *shutdown.borrow() {
            return;
        }
        // Parse every complete request already buffered (pipelining).
        let parsed = parse(&buf);
        match parsed {
            Parsed::Complete(len, req) => {
                let _ = buf.split_to(len);
                deadline = None;
                let (mut req, close, problem) = *req;
                req.peer = peer;
                let head = req.is_head();
                // The first complete request earns the connection a slot
                // (admission.rs); without one it gets 503.
                let status = is_status_page(&req.target);
                let slot = ticket.request(status);
                let problem = problem.or_else(|| {
                    (!slot || (ticket.status_only() && !status)).then(|| {
                        let mut r = Response::text(
                            503,
                            "busy: every connection slot is serving apt; try again",
                        );
                        r.headers.push(("retry-after", "1".into()));
                        r
                    })
                });
                let (response, close) = match problem {
                    Some(resp) => (ready(resp), true),
                    None => {
                        let h = handler.clone();
                        let target = req.target.clone();
                        let method = req.method.clone();
                        let span = tracing::info_span!("request", %method, %target);
                        (tokio::spawn(h.handle(req).instrument(span)), close)
                    }
                };
                if tx
                    .send(Queued {
                        response,
                        head,
                        close,
                    })
                    .await
                    .is_err()
                    || close
                {
                    return;
                }
                continue;
            }
            Parsed::Error(resp) => {
                let _ = tx
                    .send(Queued {
                        response: ready(resp),
                        head: false,
                        close: true,
                    })
                    .await;
                return;
            }
            Parsed::Partial => {}
        }
        // A head under way has a deadline from its first byte: a client
        // sending a byte now and then cannot hold the slot (slowloris).
        // Between requests, the idle timer.
        let until = if buf.is_empty() {
            ticket.head(false);
            tokio::time::Instant::now() + IDLE
        } else {
            ticket.head(true);
            *deadline.get_or_insert_with(|| tokio::time::Instant::now() + head_timeout)
        };
        let read = tokio::select! {
            r = tokio::time::timeout_at(until, rd.read_buf(&mut buf)) => r,
            _ = shutdown.changed() => return,
            _ = ticket.kill.notified() => {
                tracing::debug!("evicted: another connection needed the slot");
                return;
            }
        };
        match read {
            Ok(Ok(0)) | Ok(Err(_)) => return,
            Ok(Ok(_)) => {}
            Err(_) => {
                if !buf.is_empty() {
                    tracing::debug!(%peer, "request head not complete in time: 408");
                    ticket.head_timed_out();
                    let _ = tx
                        .send(Queued {
                            response: ready(Response::text(408, "request head took too long")),
                            head: false,
                            close: true,
                        })
                        .await;
                }
                return;
            }
        }
    }
}

enum Parsed {
    /// Bytes consumed; the request, whether to close after it, and an error
    /// response to send instead of handling it.
    Complete(usize, Box<(Request, bool, Option<Response>)>),
    Partial,
    Error(Response),
}

/// The request-head parser on arbitrary bytes (the fuzz target).
pub(crate) fn parse_for_fuzz(buf: &[u8]) {
    let _ = parse(buf);
}

fn parse(buf: &[u8]) -> Parsed {
    if buf.is_empty() {
        return Parsed::Partial;
    }
    let mut headers = [httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    let status = match req.parse(buf) {
        Ok(s) => s,
        Err(httparse::Error::TooManyHeaders) => {
            return Parsed::Error(Response::text(431, "too many header fields"));
        }
        Err(e) => return Parsed::Error(Response::text(400, format!("malformed request: {e}"))),
    };
    let len = match status {
        httparse::Status::Complete(len) => len,
        httparse::Status::Partial => {
            if buf.len() > MAX_HEAD {
                let first_line_done = buf
                    .windows(2)
                    .take(crate::url::MAX_TARGET + 64)
                    .any(|w| w == b"\r\n");
                return Parsed::Error(if first_line_done {
                    Response::text(431, "request head too large")
                } else {
                    Response::text(414, "request target too long")
                });
            }
            return Parsed::Partial;
        }
    };
    if len > MAX_HEAD {
        return Parsed::Error(Response::text(431, "request head too large"));
    }
    let method = req.method.unwrap_or("").to_string();
    let target = req.path.unwrap_or("").to_string();
    let version = req.version.unwrap_or(1);
    let headers: Vec<(String, String)> = req
        .headers
        .iter()
        .map(|h| {
            (
                h.name.to_ascii_lowercase(),
                String::from_utf8_lossy(h.value).into_owned(),
            )
        })
        .collect();
    let request = Request {
        method,
        target,
        headers,
        peer: SocketAddr::from(([0, 0, 0, 0], 0)),
    };
    let conn = request.header("connection").map(str::to_ascii_lowercase);
    let close = match version {
        0 => !conn.as_deref().is_some_and(|c| c.contains("keep-alive")),
        _ => conn.as_deref().is_some_and(|c| c.contains("close")),
    };
    let has_body = request.header("transfer-encoding").is_some()
        || request
            .header("content-length")
            .is_some_and(|v| v.trim() != "0");
    let problem = if has_body {
        Some(Response::text(400, "request bodies are not accepted"))
    } else if request.target.len() > crate::url::MAX_TARGET {
        Some(Response::text(414, "request target too long"))
    } else {
        None
    };
    // After a refused request the stream may hold its body: stop reading.
    let close = close || problem.is_some();
    Parsed::Complete(len, Box::new((request, close, problem)))
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        206 => "Partial Content",
        304 => "Not Modified",
        400 => "Bad Request",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        408 => "Request Timeout",
        410 => "Gone",
        412 => "Precondition Failed",
        414 => "URI Too Long",
        416 => "Range Not Satisfiable",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "",
    }
}

async fn write_loop<H: Handler>(
    mut wr: OwnedWriteHalf,
    mut rx: mpsc::Receiver<Queued>,
    handler: &H,
    ticket: &Ticket,
) {
    while let Some(q) = rx.recv().await {
        let resp = match q.response.await {
            Ok(r) => r,
            Err(e) => {
                tracing::error!(error = %e, "request handler failed");
                Response::text(500, "internal error")
            }
        };
        let close = q.close || resp.close;
        let res = write_response(&mut wr, resp, q.head, close, handler).await;
        ticket.response_done();
        match res {
            Ok(()) if !close => {}
            Ok(()) => break,
            Err(e) => {
                tracing::debug!(error = %e, "connection closed mid-response");
                break;
            }
        }
    }
    let _ = wr.shutdown().await;
}

async fn write_response<H: Handler>(
    wr: &mut OwnedWriteHalf,
    resp: Response,
    head_only: bool,
    close: bool,
    handler: &H,
) -> io::Result<()> {
    let progress = resp.progress.clone();
    let count = |n: u64| {
        handler.sent(n);
        if let Some(p) = &progress {
            p.sent(n);
        }
    };
    let res = write_body(wr, resp, head_only, close, &count).await;
    if let Some(p) = &progress {
        p.finished(res.is_ok());
    }
    res
}

async fn write_body(
    wr: &mut OwnedWriteHalf,
    resp: Response,
    head_only: bool,
    close: bool,
    count: &(dyn Fn(u64) + Sync),
) -> io::Result<()> {
    let len = resp.body_len();
    let mut h = String::with_capacity(384);
    let _ = write!(h, "HTTP/1.1 {} {}\r\n", resp.status, reason(resp.status));
    for (k, v) in &resp.headers {
        if v.contains(['\r', '\n']) {
            continue; // never let a value split the head
        }
        h.push_str(k);
        h.push_str(": ");
        h.push_str(v);
        h.push_str("\r\n");
    }
    let no_body_status =
        resp.status == 304 || resp.status == 204 || (100..200).contains(&resp.status);
    let chunked = len.is_none() && !no_body_status;
    if let Some(n) = len {
        if !no_body_status {
            let _ = write!(h, "content-length: {n}\r\n");
        }
    } else if chunked {
        h.push_str("transfer-encoding: chunked\r\n");
    }
    h.push_str("date: ");
    DATE.with(|d| h.push_str(d.borrow_mut().now()));
    h.push_str("\r\n");
    h.push_str(if close {
        "connection: close\r\n"
    } else {
        "connection: keep-alive\r\n"
    });
    h.push_str("server: debtorrent\r\n\r\n");
    if head_only || no_body_status {
        return timed(wr.write_all(h.as_bytes())).await;
    }
    // A file body follows at once: the head goes with MSG_MORE, so that it
    // leaves in the same segment as the body's first bytes (one packet,
    // not two, for a small package: the socket has TCP_NODELAY).
    let more = matches!(resp.body, Body::File { len, .. } if len > 0);
    timed(write_head(wr, h.as_bytes(), more)).await?;
    match resp.body {
        Body::Empty => {}
        Body::Bytes(b) => {
            timed(wr.write_all(&b)).await?;
            count(b.len() as u64);
        }
        Body::File { file, offset, len } => send_file(wr, &file, offset, len, count).await?,
        Body::FileRanges { file, mut rx, len } => {
            let mut sent = 0u64;
            while let Some(r) = rx.recv().await {
                let Ok((s, e)) = r else {
                    return Err(io::Error::other("body source failed; response cut short"));
                };
                if e <= s {
                    continue;
                }
                if sent + (e - s) > len {
                    return Err(io::Error::other("body longer than announced"));
                }
                send_file(wr, &file, s, e - s, count).await?;
                sent += e - s;
            }
            if sent != len {
                return Err(io::Error::other("body ended early; response cut short"));
            }
        }
        Body::Stream { mut rx, len } => {
            let mut sent = 0u64;
            loop {
                let chunk = match rx.recv().await {
                    Some(Ok(c)) => c,
                    Some(Err(())) => {
                        return Err(io::Error::other("body source failed; response cut short"))
                    }
                    None => break,
                };
                if chunk.is_empty() {
                    continue;
                }
                if let Some(n) = len {
                    if sent + chunk.len() as u64 > n {
                        return Err(io::Error::other("body longer than announced"));
                    }
                }
                if chunked {
                    timed(wr.write_all(format!("{:x}\r\n", chunk.len()).as_bytes())).await?;
                    timed(wr.write_all(&chunk)).await?;
                    timed(wr.write_all(b"\r\n")).await?;
                } else {
                    timed(wr.write_all(&chunk)).await?;
                }
                sent += chunk.len() as u64;
                count(chunk.len() as u64);
            }
            match len {
                Some(n) if sent != n => {
                    return Err(io::Error::other("body ended early; response cut short"))
                }
                None => timed(wr.write_all(b"0\r\n\r\n")).await?,
                _ => {}
            }
        }
    }
    Ok(())
}

/// Writes a response head; with `more`, as `send(MSG_MORE)`: the kernel
/// holds it back for the body that follows (sendfile's last chunk pushes).
async fn write_head(wr: &mut OwnedWriteHalf, mut head: &[u8], more: bool) -> io::Result<()> {
    if !more {
        return wr.write_all(head).await;
    }
    let sock: &TcpStream = wr.as_ref();
    while !head.is_empty() {
        let n = when_writable(sock, || {
            rustix::net::send(sock.as_fd(), head, rustix::net::SendFlags::MORE)
        })
        .await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        head = &head[n..];
    }
    Ok(())
}

/// One write system call `op` on `sock`, made once the socket is
/// writable, again after a spurious readiness (`EAGAIN`).
async fn when_writable(
    sock: &TcpStream,
    mut op: impl FnMut() -> rustix::io::Result<usize>,
) -> io::Result<usize> {
    loop {
        sock.writable().await?;
        match sock.try_io(tokio::io::Interest::WRITABLE, || {
            op().map_err(io::Error::from)
        }) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            res => return res,
        }
    }
}

/// The `Date` header's value, formatted once a second per thread rather
/// than once per response.
struct CachedDate {
    secs: u64,
    text: String,
}

impl CachedDate {
    fn now(&mut self) -> &str {
        let now = std::time::SystemTime::now();
        let secs = now
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        if secs != self.secs || self.text.is_empty() {
            self.secs = secs;
            self.text = httpdate::fmt_http_date(now);
        }
        &self.text
    }
}

thread_local! {
    static DATE: std::cell::RefCell<CachedDate> = const {
        std::cell::RefCell::new(CachedDate { secs: 0, text: String::new() })
    };
}

async fn timed<T, F: Future<Output = io::Result<T>>>(f: F) -> io::Result<T> {
    tokio::time::timeout(WRITE_TIMEOUT, f)
        .await
        .unwrap_or_else(|_| {
            Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "client stopped reading",
            ))
        })
}

/// Sends `len` bytes of `file` from `offset` with sendfile(2): the bytes go
/// from the page cache to the socket without a copy through user space,
/// which is how nginx serves files and what the cached-file benchmark needs.
async fn send_file(
    wr: &mut OwnedWriteHalf,
    file: &std::fs::File,
    mut offset: u64,
    len: u64,
    count: &(dyn Fn(u64) + Sync),
) -> io::Result<()> {
    let sock: &TcpStream = wr.as_ref();
    let end = offset + len;
    while offset < end {
        let want = usize::try_from((end - offset).min(1 << 22)).unwrap_or(1 << 22);
        let n = timed(when_writable(sock, || {
            let mut off = offset;
            rustix::fs::sendfile(sock.as_fd(), file.as_fd(), Some(&mut off), want)
        }))
        .await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "file shorter than expected",
            ));
        }
        offset += n as u64;
        count(n as u64);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_cases() {
        let long_target = format!("GET /{} HTTP/1.1\r\n", "a".repeat(MAX_HEAD + 10));
        let many_headers = format!("GET / HTTP/1.1\r\n{}\r\n", "x: y\r\n".repeat(100));
        let big_header = format!("GET / HTTP/1.1\r\nx: {}\r\n", "y".repeat(MAX_HEAD + 10));
        // (input, expected: Ok((consumed, close)) or Err(status); Partial = Ok((0, false)))
        let cases: Vec<(&str, Result<(usize, bool), u16>)> = vec![
            ("GET /x HTTP/1.1\r\nHost: a\r\n\r\n", Ok((28, false))),
            (
                "GET /x HTTP/1.1\r\nConnection: close\r\n\r\n",
                Ok((38, true)),
            ),
            ("GET /x HTTP/1.0\r\n\r\n", Ok((19, true))),
            (
                "GET /x HTTP/1.0\r\nConnection: keep-alive\r\n\r\n",
                Ok((43, false)),
            ),
            ("GET /x HTTP/1.1\r\nHost: a\r\n", Ok((0, false))),
            ("GARBAGE\r\n\r\n", Err(400)),
            ("GET /x HTTP/1.1\r\nbad header\r\n\r\n", Err(400)),
            (&long_target, Err(414)),
            (&many_headers, Err(431)),
            (&big_header, Err(431)),
        ];
        for (input, want) in cases {
            let got = match parse(input.as_bytes()) {
                Parsed::Complete(n, r) => Ok((n, r.1)),
                Parsed::Partial => Ok((0, false)),
                Parsed::Error(resp) => Err(resp.status),
            };
            assert_eq!(got, want, "{:?}", &input[..input.len().min(60)]);
        }
    }

    #[test]
    fn bodies_are_refused() {
        for req in [
            "POST /x HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
            "GET /x HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n",
        ] {
            match parse(req.as_bytes()) {
                Parsed::Complete(_, r) => {
                    assert!(r.1, "closes after");
                    assert_eq!(r.2.map(|x| x.status), Some(400));
                }
                _ => panic!("{req}"),
            }
        }
    }

    #[test]
    fn pipelined_requests_parse_one_by_one() {
        let two = b"GET /a HTTP/1.1\r\n\r\nGET /b HTTP/1.1\r\n\r\n";
        let Parsed::Complete(n, r) = parse(two) else {
            panic!()
        };
        assert_eq!(r.0.target, "/a");
        let Parsed::Complete(_, r) = parse(&two[n..]) else {
            panic!()
        };
        assert_eq!(r.0.target, "/b");
    }
}
