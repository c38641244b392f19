//! A real HTTP/1.1 mirror (tokio + hyper) on 127.0.0.1:0 serving the test
//! repository under a path prefix (`/debian/`), with GET/HEAD, single Range,
//! If-Range, Last-Modified/If-Modified-Since, keep-alive, byte and request
//! counters, a request log, and fault switches that can be flipped while it
//! runs.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant, UNIX_EPOCH};

use bytes::Bytes;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio::sync::mpsc;

use super::{http_date, parse_http_date};

/// A fault the mirror can be told to show.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// New connections are reset at once; requests on open connections are
    /// dropped without an answer; bodies in flight are cut short.
    Down,
    /// Answer with this status and a short text body.
    Status(u16),
    /// Flip bytes in the body (length unchanged). Only meaningful for pool files.
    Corrupt,
    /// Send the body at this many bytes per second.
    Throttle(u64),
    /// Send the headers and part of the body, then hang.
    Stall,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Stats {
    /// Body bytes of files under `pool/` handed to the socket.
    pub pool_bytes: u64,
    /// Body bytes of every other file (dists/..., indexes).
    pub index_bytes: u64,
    pub requests: u64,
    pub pool_requests: u64,
    pub index_requests: u64,
    pub connections: u64,
}

#[derive(Debug, Clone)]
pub struct LogEntry {
    pub conn: u64,
    /// Milliseconds since the mirror started, when the request's headers
    /// were answered.
    pub at_ms: u64,
    pub method: String,
    /// The request target exactly as sent.
    pub target: String,
    /// Request headers of interest (Range, If-Range, If-Modified-Since, ...).
    pub headers: Vec<(String, String)>,
    pub status: u16,
}

impl std::fmt::Display for LogEntry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{:>6}ms conn {}] {} {} -> {}",
            self.at_ms, self.conn, self.method, self.target, self.status
        )?;
        for (k, v) in &self.headers {
            write!(f, " | {k}: {v}")?;
        }
        Ok(())
    }
}

struct State {
    root: PathBuf,
    prefix: String,
    down: AtomicBool,
    pool_fault: Mutex<Option<Fault>>,
    index_fault: Mutex<Option<Fault>>,
    pool_bytes: AtomicU64,
    index_bytes: AtomicU64,
    requests: AtomicU64,
    pool_requests: AtomicU64,
    index_requests: AtomicU64,
    connections: AtomicU64,
    log: Mutex<Vec<LogEntry>>,
    started: Instant,
}

pub struct Mirror {
    addr: SocketAddr,
    state: Arc<State>,
    rt: Option<tokio::runtime::Runtime>,
}

impl Mirror {
    /// Serves `root` under `/debian/` on a fresh loopback port.
    pub fn start(root: &Path) -> Mirror {
        Mirror::start_with_prefix(root, "/debian")
    }

    pub fn start_with_prefix(root: &Path, prefix: &str) -> Mirror {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("e2e-mirror")
            .enable_all()
            .build()
            .expect("mirror runtime");
        let std_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind mirror");
        std_listener.set_nonblocking(true).unwrap();
        let addr = std_listener.local_addr().unwrap();
        let state = Arc::new(State {
            root: root.to_path_buf(),
            prefix: prefix.trim_end_matches('/').to_string(),
            down: AtomicBool::new(false),
            pool_fault: Mutex::new(None),
            index_fault: Mutex::new(None),
            pool_bytes: AtomicU64::new(0),
            index_bytes: AtomicU64::new(0),
            requests: AtomicU64::new(0),
            pool_requests: AtomicU64::new(0),
            index_requests: AtomicU64::new(0),
            connections: AtomicU64::new(0),
            log: Mutex::new(Vec::new()),
            started: Instant::now(),
        });
        let st = state.clone();
        rt.spawn(async move {
            let listener = tokio::net::TcpListener::from_std(std_listener).expect("tokio listener");
            loop {
                let Ok((sock, _)) = listener.accept().await else {
                    continue;
                };
                if st.down.load(Ordering::SeqCst) {
                    #[allow(deprecated)]
                    let _ = sock.set_linger(Some(Duration::ZERO));
                    drop(sock); // RST
                    continue;
                }
                let conn_id = st.connections.fetch_add(1, Ordering::SeqCst) + 1;
                let _ = sock.set_nodelay(true);
                let st2 = st.clone();
                tokio::spawn(async move {
                    let svc = hyper::service::service_fn(move |req| {
                        let st = st2.clone();
                        async move { handle(st, conn_id, req).await }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .keep_alive(true)
                        .serve_connection(TokioIo::new(sock), svc)
                        .await;
                });
            }
        });
        Mirror {
            addr,
            state,
            rt: Some(rt),
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    /// `127.0.0.1:PORT`
    pub fn host_port(&self) -> String {
        format!("127.0.0.1:{}", self.addr.port())
    }

    /// The path prefix the repository is served under, e.g. `/debian`.
    pub fn prefix(&self) -> &str {
        &self.state.prefix
    }

    /// `http://127.0.0.1:PORT/debian`
    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}{}", self.addr.port(), self.state.prefix)
    }

    /// Sets a fault for everything: `Down` stops the whole mirror; the others
    /// apply to pool files only (indexes keep working) — use
    /// [`Mirror::set_index_fault`] for index files.
    pub fn set_fault(&self, fault: Option<Fault>) {
        match fault {
            Some(Fault::Down) => self.state.down.store(true, Ordering::SeqCst),
            other => {
                self.state.down.store(false, Ordering::SeqCst);
                *self.state.pool_fault.lock().unwrap() = other;
            }
        }
    }

    pub fn set_down(&self, down: bool) {
        self.state.down.store(down, Ordering::SeqCst);
    }

    pub fn set_pool_fault(&self, fault: Option<Fault>) {
        *self.state.pool_fault.lock().unwrap() = fault;
    }

    pub fn set_index_fault(&self, fault: Option<Fault>) {
        *self.state.index_fault.lock().unwrap() = fault;
    }

    /// Clears every fault.
    pub fn heal(&self) {
        self.state.down.store(false, Ordering::SeqCst);
        self.set_pool_fault(None);
        self.set_index_fault(None);
    }

    pub fn stats(&self) -> Stats {
        let s = &self.state;
        Stats {
            pool_bytes: s.pool_bytes.load(Ordering::SeqCst),
            index_bytes: s.index_bytes.load(Ordering::SeqCst),
            requests: s.requests.load(Ordering::SeqCst),
            pool_requests: s.pool_requests.load(Ordering::SeqCst),
            index_requests: s.index_requests.load(Ordering::SeqCst),
            connections: s.connections.load(Ordering::SeqCst),
        }
    }

    pub fn log(&self) -> Vec<LogEntry> {
        self.state.log.lock().unwrap().clone()
    }

    /// Pool requests in the log after the first `skip` entries, a line each.
    pub fn pool_log(&self, skip: usize) -> String {
        self.log()
            .iter()
            .skip(skip)
            .filter(|e| e.target.contains("/pool/"))
            .map(|e| format!("  {e}\n"))
            .collect()
    }

    pub fn log_text(&self) -> String {
        self.log().iter().map(|e| format!("{e}\n")).collect()
    }

    /// How many GETs for a path ending in `suffix` got a body (200/206).
    pub fn body_requests_for(&self, suffix: &str) -> usize {
        self.log()
            .iter()
            .filter(|e| e.method == "GET" && (e.status == 200 || e.status == 206))
            .filter(|e| percent_decode(e.target.split('?').next().unwrap()).ends_with(suffix))
            .count()
    }
}

impl Drop for Mirror {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let log = self.log();
            let skip = log.len().saturating_sub(60);
            eprintln!(
                "---- mirror {} stats {:?}; last {} requests:",
                self.addr,
                self.stats(),
                log.len() - skip
            );
            for e in &log[skip..] {
                eprintln!("  {e}");
            }
        }
        if let Some(rt) = self.rt.take() {
            rt.shutdown_background();
        }
    }
}

pub fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' && i + 2 < b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
                out.push(v);
                i += 3;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The response body: fed by a producer task through a channel, counting the
/// bytes handed to hyper.
pub struct MirrorBody {
    rx: Option<mpsc::Receiver<Bytes>>,
    counter: Option<(Arc<State>, bool)>,
    remaining: u64,
}

impl MirrorBody {
    fn empty() -> MirrorBody {
        MirrorBody {
            rx: None,
            counter: None,
            remaining: 0,
        }
    }

    fn text(s: &str) -> MirrorBody {
        let (tx, rx) = mpsc::channel(1);
        let b = Bytes::copy_from_slice(s.as_bytes());
        let len = b.len() as u64;
        tx.try_send(b).unwrap();
        MirrorBody {
            rx: Some(rx),
            counter: None,
            remaining: len,
        }
    }
}

impl Body for MirrorBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        let Some(rx) = self.rx.as_mut() else {
            return Poll::Ready(None);
        };
        match rx.poll_recv(cx) {
            Poll::Ready(Some(b)) => {
                let n = b.len() as u64;
                self.remaining = self.remaining.saturating_sub(n);
                if let Some((st, pool)) = &self.counter {
                    let c = if *pool {
                        &st.pool_bytes
                    } else {
                        &st.index_bytes
                    };
                    c.fetch_add(n, Ordering::SeqCst);
                }
                Poll::Ready(Some(Ok(Frame::data(b))))
            }
            Poll::Ready(None) => {
                self.rx = None;
                Poll::Ready(None)
            }
            Poll::Pending => Poll::Pending,
        }
    }

    fn is_end_stream(&self) -> bool {
        self.rx.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::with_exact(self.remaining)
    }
}

fn simple(status: u16, text: &str) -> Response<MirrorBody> {
    Response::builder()
        .status(status)
        .header("content-type", "text/plain")
        .header("content-length", text.len())
        .body(MirrorBody::text(text))
        .unwrap()
}

async fn handle(
    st: Arc<State>,
    conn: u64,
    req: Request<Incoming>,
) -> Result<Response<MirrorBody>, io::Error> {
    if st.down.load(Ordering::SeqCst) {
        return Err(io::Error::new(
            io::ErrorKind::ConnectionReset,
            "mirror is down",
        ));
    }
    st.requests.fetch_add(1, Ordering::SeqCst);
    let method = req.method().as_str().to_string();
    let target = req.uri().to_string();
    let mut headers = Vec::new();
    for name in [
        "range",
        "if-range",
        "if-modified-since",
        "if-none-match",
        "cache-control",
        "connection",
        "user-agent",
        "via",
    ] {
        if let Some(v) = req.headers().get(name) {
            headers.push((
                name.to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            ));
        }
    }
    let resp = respond(&st, &req).await;
    st.log.lock().unwrap().push(LogEntry {
        conn,
        at_ms: st.started.elapsed().as_millis() as u64,
        method,
        target,
        headers,
        status: resp.status().as_u16(),
    });
    Ok(resp)
}

async fn respond(st: &Arc<State>, req: &Request<Incoming>) -> Response<MirrorBody> {
    let head = req.method() == hyper::Method::HEAD;
    if !head && req.method() != hyper::Method::GET {
        return simple(405, "method not allowed\n");
    }
    let path = percent_decode(req.uri().path());
    let Some(rel) = path
        .strip_prefix(&st.prefix)
        .and_then(|p| p.strip_prefix('/'))
    else {
        return simple(404, "not under the mirror prefix\n");
    };
    if rel.split('/').any(|seg| seg == ".." || seg == ".") || rel.contains('\0') {
        return simple(400, "bad path\n");
    }
    let pool = rel.starts_with("pool/");
    if pool {
        st.pool_requests.fetch_add(1, Ordering::SeqCst);
    } else {
        st.index_requests.fetch_add(1, Ordering::SeqCst);
    }
    let fault = if pool {
        *st.pool_fault.lock().unwrap()
    } else {
        *st.index_fault.lock().unwrap()
    };
    if let Some(Fault::Status(code)) = fault {
        return simple(code, &format!("mirror fault {code}\n"));
    }
    let file_path = st.root.join(rel);
    let meta = match tokio::fs::metadata(&file_path).await {
        Ok(m) if m.is_file() => m,
        _ => return simple(404, "not found\n"),
    };
    let len = meta.len();
    let mtime = meta.modified().unwrap_or(UNIX_EPOCH);
    let mtime_secs = mtime
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let last_modified = http_date(mtime);
    let hdr = |n: &str| {
        req.headers()
            .get(n)
            .and_then(|v| v.to_str().ok())
            .map(str::to_string)
    };

    if let Some(ims) = hdr("if-modified-since").and_then(|v| parse_http_date(&v)) {
        if mtime_secs <= ims && hdr("range").is_none() {
            return Response::builder()
                .status(304)
                .header("last-modified", &last_modified)
                .body(MirrorBody::empty())
                .unwrap();
        }
    }

    let mut status = StatusCode::OK;
    let (mut start, mut count) = (0u64, len);
    let mut content_range = None;
    if let Some(range) = hdr("range") {
        let if_range_ok = hdr("if-range").is_none_or(|v| v == last_modified);
        if if_range_ok {
            match parse_range(&range, len) {
                RangeResult::Ok(s, e) => {
                    status = StatusCode::PARTIAL_CONTENT;
                    start = s;
                    count = e - s + 1;
                    content_range = Some(format!("bytes {s}-{e}/{len}"));
                }
                RangeResult::Unsatisfiable => {
                    return Response::builder()
                        .status(416)
                        .header("content-range", format!("bytes */{len}"))
                        .header("content-length", 0)
                        .body(MirrorBody::empty())
                        .unwrap();
                }
                RangeResult::Ignore => {}
            }
        }
    }

    let mut b = Response::builder()
        .status(status)
        .header("content-length", count)
        .header("last-modified", &last_modified)
        .header("accept-ranges", "bytes")
        .header("content-type", "application/octet-stream");
    if let Some(cr) = content_range {
        b = b.header("content-range", cr);
    }
    if head {
        return b.body(MirrorBody::empty()).unwrap();
    }
    let (tx, rx) = mpsc::channel::<Bytes>(4);
    tokio::spawn(produce(st.clone(), file_path, start, count, fault, tx));
    b.body(MirrorBody {
        rx: Some(rx),
        counter: Some((st.clone(), pool)),
        remaining: count,
    })
    .unwrap()
}

async fn produce(
    st: Arc<State>,
    path: PathBuf,
    start: u64,
    count: u64,
    fault: Option<Fault>,
    tx: mpsc::Sender<Bytes>,
) {
    let Ok(mut f) = tokio::fs::File::open(&path).await else {
        return;
    };
    if f.seek(io::SeekFrom::Start(start)).await.is_err() {
        return;
    }
    let chunk = match fault {
        Some(Fault::Throttle(rate)) => (rate / 20).clamp(512, 64 * 1024) as usize,
        Some(Fault::Stall) => 16 * 1024,
        _ => 64 * 1024,
    };
    let began = Instant::now();
    let mut sent = 0u64;
    let mut buf = vec![0u8; chunk];
    while sent < count {
        if st.down.load(Ordering::SeqCst) {
            // The mirror "died": the body ends short and hyper drops the
            // connection.
            return;
        }
        let want = chunk.min((count - sent) as usize);
        if f.read_exact(&mut buf[..want]).await.is_err() {
            return;
        }
        let mut data = buf[..want].to_vec();
        if fault == Some(Fault::Corrupt) {
            let mid = data.len() / 2;
            data[mid] ^= 0xff;
            data[0] ^= 0x55;
        }
        if tx.send(Bytes::from(data)).await.is_err() {
            return;
        }
        sent += want as u64;
        match fault {
            Some(Fault::Throttle(rate)) if rate > 0 => {
                let due = Duration::from_secs_f64(sent as f64 / rate as f64);
                let elapsed = began.elapsed();
                if due > elapsed {
                    tokio::time::sleep(due - elapsed).await;
                }
            }
            Some(Fault::Stall) if sent < count => {
                // Hang until the client goes away (or a long time passes).
                tokio::select! {
                    _ = tx.closed() => {}
                    _ = tokio::time::sleep(Duration::from_secs(600)) => {}
                }
                return;
            }
            _ => {}
        }
    }
}

enum RangeResult {
    Ok(u64, u64),
    Unsatisfiable,
    Ignore,
}

fn parse_range(v: &str, len: u64) -> RangeResult {
    let Some(spec) = v.trim().strip_prefix("bytes=") else {
        return RangeResult::Ignore;
    };
    if spec.contains(',') {
        return RangeResult::Ignore;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeResult::Ignore;
    };
    let (a, b) = (a.trim(), b.trim());
    if a.is_empty() {
        let Ok(n) = b.parse::<u64>() else {
            return RangeResult::Ignore;
        };
        if n == 0 || len == 0 {
            return RangeResult::Unsatisfiable;
        }
        return RangeResult::Ok(len.saturating_sub(n), len - 1);
    }
    let Ok(s) = a.parse::<u64>() else {
        return RangeResult::Ignore;
    };
    let e = if b.is_empty() {
        len.saturating_sub(1)
    } else {
        match b.parse::<u64>() {
            Ok(e) => e.min(len.saturating_sub(1)),
            Err(_) => return RangeResult::Ignore,
        }
    };
    if s >= len || e < s {
        return RangeResult::Unsatisfiable;
    }
    RangeResult::Ok(s, e)
}
