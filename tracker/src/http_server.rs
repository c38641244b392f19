//! The HTTP side: a hyper HTTP/1.1 server in front of [`Tracker`]. Only I/O
//! here: routing, limits on connections and request heads, and writing the
//! bodies the policy code produced.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio::sync::{watch, Semaphore};
use tracing::Instrument;

use crate::stats;
use crate::tracker::Tracker;
use crate::types::{random_u64, unix_now};

/// Largest request head (request line + headers) read; larger heads get 431.
pub const MAX_HEAD_BYTES: usize = 8192;
/// Most concurrent HTTP connections; more wait in the accept queue.
pub const MAX_CONNECTIONS: usize = 4096;
/// Time allowed for a client to send a request head.
pub const HEADER_TIMEOUT: Duration = Duration::from_secs(10);

fn reply(status: StatusCode, ctype: &'static str, body: impl Into<Bytes>) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    r
}

fn route(t: &Tracker, req: &Request<Incoming>, remote: SocketAddr) -> Response<Full<Bytes>> {
    if req.method() != Method::GET {
        return reply(StatusCode::METHOD_NOT_ALLOWED, "text/plain", "GET only\n");
    }
    let query = req.uri().query().unwrap_or("").as_bytes();
    let xff = req
        .headers()
        .get("x-forwarded-for")
        .and_then(|v| v.to_str().ok());
    let now = unix_now();
    match req.uri().path() {
        "/announce" => {
            let r = t.http_announce(query, remote.ip(), xff, now, random_u64());
            reply(StatusCode::OK, "text/plain", r.body)
        }
        "/scrape" => {
            let r = t.http_scrape(query, remote.ip(), xff);
            reply(StatusCode::OK, "text/plain", r.body)
        }
        "/stats" => reply(
            StatusCode::OK,
            "text/html; charset=utf-8",
            stats::render_html(&t.stats(now)),
        ),
        "/stats.json" => reply(
            StatusCode::OK,
            "application/json",
            stats::render_json(&t.stats(now)),
        ),
        "/metrics" => reply(
            StatusCode::OK,
            "text/plain; version=0.0.4",
            stats::render_metrics(&t.stats(now)),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n"),
    }
}

/// Serve HTTP on `listener` until `shutdown` turns true.
pub async fn serve(
    listener: TcpListener,
    tracker: Arc<Tracker>,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<()> {
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    loop {
        let permit = tokio::select! {
            p = slots.clone().acquire_owned() => match p { Ok(p) => p, Err(_) => return Ok(()) },
            _ = shutdown.changed() => return Ok(()),
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            _ = shutdown.changed() => return Ok(()),
        };
        let _ = stream.set_nodelay(true);
        let t = tracker.clone();
        let span = tracing::debug_span!("http", %remote);
        tokio::spawn(
            async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let resp = route(&t, &req, remote);
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = http1::Builder::new()
                    .timer(TokioTimer::new())
                    .header_read_timeout(HEADER_TIMEOUT)
                    .max_buf_size(MAX_HEAD_BYTES)
                    .serve_connection(TokioIo::new(stream), svc);
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended");
                }
                drop(permit);
            }
            .instrument(span),
        );
    }
}
