//! What the front end serves: the policy behind every apt request.
//!
//! - `dists/.../InRelease`, `Release`, `Release.gpg`: always from the
//!   mirror (freshness; signatures are apt's to check), passed through
//!   unchanged and kept as the last good copy, served when the mirror fails.
//! - other `dists/...` files that the suite's (cached) Release lists by
//!   SHA-256 and apt asks for by their by-hash names (Packages, Sources,
//!   Translation, Contents, dep11): content of the suite's swarm like pool files,
//!   fetched from peers that hold the same SHA-256 or from the mirror,
//!   verified and stored before apt gets a byte, and offered to peers.
//!   Anything else there is passed through from the mirror like a Release.
//!   A Packages/Sources file whose bytes match its suite's Release becomes
//!   a registered torrent.
//! - `pool/...` listed by a registered torrent: from the verified store, or
//!   fetched (verified while streaming, see fetch.rs) and stored.
//! - anything else that looks like a Debian archive file: passed through,
//!   uncached.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use sha2::{Digest, Sha256, Sha512};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::assembly::{Failure, State};
use crate::http1::{Body, Handler, Request, Response};
use crate::mirror::Mirror;
use crate::registry::{self, Registry};
use crate::release::{self, Release};
use crate::stats::Stats;
use crate::status::Pages;
use crate::store::{self, Store};
use crate::swarm::Content;
use crate::transfers::{self, Transfers};
use crate::types::InfoHash;
use crate::url::{self, Area, LocalPage, Policy, Target, UpstreamUrl};

/// The request handler.
pub struct Service {
    /// Upstream policy.
    pub policy: Policy,
    /// Verified store.
    pub store: Arc<Store>,
    /// Torrents and Releases.
    pub registry: Arc<Registry>,
    /// The swarm: fetches pieces from peers and the mirror.
    pub swarm: Arc<crate::swarm::Swarm>,
    /// The mirror: client, chunk loop, rate estimate.
    pub mirror: Arc<Mirror>,
    /// Counters.
    pub stats: Arc<Stats>,
    /// Status pages.
    pub pages: Pages,
    /// Becomes true once the torrents of the previous run are loaded.
    pub loaded: watch::Receiver<bool>,
    /// apt requests in flight (the status page, the request log line).
    pub transfers: Arc<Transfers>,
    /// Packages and Sources files fetched from the mirror and not yet
    /// registered (see [`Registering`]).
    pub registering: Registering,
}

/// How many index files are on their way to being registered. apt gets an
/// index streamed from the mirror as it arrives, and the daemon registers
/// it (decompress, parse, make its torrent) once the last byte is saved:
/// an `apt-get update && apt-get install` asks for the first packages
/// while that runs. Such a request waits for the registrations in flight
/// ([`REGISTER_WAIT`]) instead of passing the package through to the
/// mirror: in the fleet benchmark a newcomer passed its first 30 packages,
/// a 44 MB one among them, through to the mirror that way.
#[derive(Clone)]
pub struct Registering(Arc<watch::Sender<usize>>);

/// The longest a package request waits for index registrations.
const REGISTER_WAIT: Duration = Duration::from_secs(10);

impl Default for Registering {
    fn default() -> Self {
        Registering(Arc::new(watch::channel(0).0))
    }
}

impl Registering {
    /// One more in flight, until the guard drops.
    fn start(&self) -> RegisteringGuard {
        self.0.send_modify(|n| *n += 1);
        RegisteringGuard(self.0.clone())
    }

    /// Waits (at most [`REGISTER_WAIT`]) until none is in flight; false
    /// when none was.
    async fn settle(&self) -> bool {
        if *self.0.borrow() == 0 {
            return false;
        }
        let mut rx = self.0.subscribe();
        let _ = tokio::time::timeout(REGISTER_WAIT, rx.wait_for(|n| *n == 0)).await;
        true
    }
}

struct RegisteringGuard(Arc<watch::Sender<usize>>);

impl Drop for RegisteringGuard {
    fn drop(&mut self) {
        self.0.send_modify(|n| *n = n.saturating_sub(1));
    }
}

impl Handler for Service {
    async fn handle(self: Arc<Self>, req: Request) -> Response {
        self.stats.request();
        match req.method.as_str() {
            "GET" | "HEAD" => {}
            "CONNECT" => {
                let mut r = Response::text(
                    405,
                    "CONNECT is not supported: debtorrent is not a general proxy",
                );
                r.close = true;
                return r;
            }
            _ => {
                let mut r = Response::text(405, "only GET and HEAD");
                r.headers.push(("allow", "GET, HEAD".into()));
                return r;
            }
        }
        let target = match url::parse_target(&req.target, &self.policy) {
            Ok(t) => t,
            Err(e) => {
                tracing::info!(target = %req.target, refusal = %e, "refused");
                let status = match e {
                    url::Refusal::BadRequest(_) => 400,
                    url::Refusal::TooLong => 414,
                    url::Refusal::Forbidden(_) => 403,
                };
                return Response::text(status, e.to_string());
            }
        };
        match target {
            Target::Local(LocalPage::Status) => {
                Response::bytes(200, "text/html; charset=utf-8", self.pages.html())
            }
            Target::Local(LocalPage::StatusJson) => {
                Response::bytes(200, "application/json", self.pages.json())
            }
            Target::Local(LocalPage::Metrics) => Response::bytes(
                200,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
                self.pages.metrics(),
            ),
            Target::Upstream(u) => {
                let t = self.transfers.open(&req.target);
                let mut resp = transfers::scope(t.clone(), self.serve_upstream(&req, &u)).await;
                let len = match &resp.body {
                    Body::Empty => None,
                    _ => resp.body_len(),
                };
                t.respond(resp.status, len);
                resp.progress = Some(t);
                resp
            }
        }
    }

    fn sent(&self, bytes: u64) {
        self.stats.apt_bytes(bytes);
    }
}

/// Flat repositories (`deb http://host/path ./`) have no dists/ or pool/.
fn looks_like_archive_file(path: &str) -> bool {
    let name = path.rsplit('/').next().unwrap_or("");
    let stem = name.split('.').next().unwrap_or("");
    matches!(
        stem,
        "Packages" | "Sources" | "Release" | "InRelease" | "Translation-en"
    ) || [
        ".deb",
        ".udeb",
        ".ddeb",
        ".dsc",
        ".diff.gz",
        ".changes",
        ".buildinfo",
    ]
    .iter()
    .any(|e| name.ends_with(e))
        || name.contains(".tar.")
}

fn content_type(path: &str) -> &'static str {
    if path.ends_with(".deb") || path.ends_with(".udeb") {
        "application/vnd.debian.binary-package"
    } else if path.ends_with(".dsc")
        || path.contains("Release")
        || path.ends_with("Packages")
        || path.ends_with("Sources")
    {
        "text/plain; charset=utf-8"
    } else {
        "application/octet-stream"
    }
}

fn unix(t: SystemTime) -> i64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

fn http_date(secs: i64) -> String {
    httpdate::fmt_http_date(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
}

fn parse_date(s: &str) -> Option<i64> {
    httpdate::parse_http_date(s.trim()).ok().map(unix)
}

/// A byte range to serve, from `Range` (single ranges only; anything else
/// is answered with the whole file, which RFC 9110 allows).
#[derive(Debug, PartialEq, Eq)]
pub enum RangeReq {
    /// The whole body.
    Full,
    /// `[start, end)`.
    Part(u64, u64),
    /// Not satisfiable: 416.
    Unsatisfiable,
}

/// Parses a `Range` header against a body of `size` bytes.
pub fn parse_range(header: Option<&str>, size: u64) -> RangeReq {
    let Some(h) = header else {
        return RangeReq::Full;
    };
    let Some(spec) = h.trim().strip_prefix("bytes=") else {
        return RangeReq::Full;
    };
    if spec.contains(',') {
        return RangeReq::Full;
    }
    let Some((a, b)) = spec.trim().split_once('-') else {
        return RangeReq::Full;
    };
    let (a, b) = (a.trim(), b.trim());
    let num = |s: &str| s.parse::<u64>().ok();
    match (a.is_empty(), b.is_empty()) {
        (true, false) => match num(b) {
            Some(0) => RangeReq::Unsatisfiable,
            Some(n) if size > 0 => RangeReq::Part(size.saturating_sub(n), size),
            Some(_) => RangeReq::Unsatisfiable,
            None => RangeReq::Full,
        },
        (false, true) => match num(a) {
            Some(s) if s < size => RangeReq::Part(s, size),
            Some(_) => RangeReq::Unsatisfiable,
            None => RangeReq::Full,
        },
        (false, false) => match (num(a), num(b)) {
            (Some(s), Some(e)) if s <= e && s < size => RangeReq::Part(s, (e + 1).min(size)),
            (Some(s), Some(e)) if s <= e => RangeReq::Unsatisfiable,
            _ => RangeReq::Full,
        },
        (true, true) => RangeReq::Full,
    }
}

/// Validators of a body: for `If-Modified-Since`, `If-Range`.
struct Validators {
    mtime: i64,
    etag: Option<String>,
}

impl Validators {
    fn headers(&self) -> Vec<(&'static str, String)> {
        let mut h = vec![("last-modified", http_date(self.mtime))];
        if let Some(e) = &self.etag {
            h.push(("etag", e.clone()));
        }
        h
    }

    /// 304 applies: `If-Modified-Since` is at or after the body's time.
    fn not_modified(&self, req: &Request) -> bool {
        if let (Some(inm), Some(etag)) = (req.header("if-none-match"), &self.etag) {
            return inm.split(',').any(|t| t.trim() == etag || t.trim() == "*");
        }
        req.header("if-modified-since")
            .and_then(parse_date)
            .is_some_and(|ims| self.mtime <= ims)
    }

    /// The `Range` header applies (no `If-Range`, or it matches).
    fn range_applies(&self, req: &Request) -> bool {
        match req.header("if-range") {
            None => true,
            Some(v) if v.trim().starts_with('"') || v.trim().starts_with("W/") => {
                self.etag.as_deref() == Some(v.trim())
            }
            Some(v) => parse_date(v) == Some(self.mtime),
        }
    }
}

fn etag_of(sha: &[u8; 32]) -> String {
    format!("\"sha256-{}\"", debtorrent_gen::encode_hex(&sha[..12]))
}

/// Answers from a body of `size` bytes with validators: 304, 416, 206 or
/// 200, with `make_body(start, end)` producing the bytes.
fn respond_with(
    req: &Request,
    size: u64,
    v: &Validators,
    ctype: &str,
    make_body: impl FnOnce(u64, u64) -> Body,
) -> Response {
    let mut headers = v.headers();
    headers.push(("accept-ranges", "bytes".into()));
    if v.not_modified(req) {
        return Response {
            status: 304,
            headers,
            body: Body::Empty,
            close: false,
            progress: None,
        };
    }
    headers.push(("content-type", ctype.into()));
    let range = if v.range_applies(req) {
        parse_range(req.header("range"), size)
    } else {
        RangeReq::Full
    };
    let (status, start, end) = match range {
        RangeReq::Full => (200, 0, size),
        RangeReq::Part(s, e) => {
            headers.push(("content-range", format!("bytes {s}-{}/{size}", e - 1)));
            (206, s, e)
        }
        RangeReq::Unsatisfiable => {
            headers.push(("content-range", format!("bytes */{size}")));
            return Response {
                status: 416,
                headers,
                body: Body::Empty,
                close: false,
                progress: None,
            };
        }
    };
    let body = if req.is_head() {
        sized_empty(end - start)
    } else {
        make_body(start, end)
    };
    Response {
        status,
        headers,
        body,
        close: false,
        progress: None,
    }
}

/// A body that announces `len` bytes for a HEAD response.
fn sized_empty(len: u64) -> Body {
    let (_, rx) = mpsc::channel(1);
    Body::Stream { rx, len: Some(len) }
}

fn file_body(path: &Path, start: u64, end: u64) -> Body {
    opened_body(std::fs::File::open(path), start, end)
}

/// [`file_body`] of a file already opened (or not).
fn opened_body(opened: std::io::Result<std::fs::File>, start: u64, end: u64) -> Body {
    match opened {
        Ok(file) => Body::File {
            file,
            offset: start,
            len: end - start,
        },
        Err(_) => {
            // Announce the length, then fail: the response is cut short.
            let (tx, rx) = mpsc::channel(1);
            let _ = tx.try_send(Err(()));
            Body::Stream {
                rx,
                len: Some(end - start),
            }
        }
    }
}

/// The mirror's headers worth passing on, under our names.
fn copy_headers(
    from: &reqwest::header::HeaderMap,
    names: &[(reqwest::header::HeaderName, &'static str)],
) -> Vec<(&'static str, String)> {
    names
        .iter()
        .filter_map(|(name, key)| Some((*key, from.get(name)?.to_str().ok()?.to_string())))
        .collect()
}

/// A response to HEAD: the headers and the length, no body.
fn head_response(status: u16, headers: Vec<(&'static str, String)>, len: u64) -> Response {
    Response {
        status,
        headers,
        body: sized_empty(len),
        close: false,
        progress: None,
    }
}

fn failure_response(f: Failure) -> Response {
    let msg = match f {
        Failure::Status(s) => format!("the mirror answered {s}"),
        Failure::Unreachable => "the mirror could not be reached".into(),
        Failure::Timeout => "the mirror did not answer in time".into(),
        Failure::Corrupt => "the mirror sent bytes that do not match the index".into(),
        Failure::Local => "local storage error".into(),
    };
    Response::text(f.status(), msg)
}

impl Service {
    /// An apt request for a file of an archive.
    async fn serve_upstream(&self, req: &Request, u: &UpstreamUrl) -> Response {
        match u.split_archive() {
            Some((_, rel, Area::Dists)) => {
                let rel = rel.to_string();
                self.serve_index(req, u, &rel).await
            }
            Some((_, rel, Area::Pool)) => {
                let rel = rel.to_string();
                self.serve_pool(req, u, &rel).await
            }
            None if looks_like_archive_file(&u.path) => self.pass_through(req, u).await,
            None => Response::text(
                403,
                "not a Debian archive path (expected .../dists/... or .../pool/...)",
            ),
        }
    }

    async fn wait_loaded(&self) {
        let mut rx = self.loaded.clone();
        let _ = tokio::time::timeout(Duration::from_secs(30), rx.wait_for(|l| *l)).await;
    }

    async fn serve_pool(&self, req: &Request, u: &UpstreamUrl, rel: &str) -> Response {
        self.wait_loaded().await;
        let Some(archive) = u.archive_key() else {
            return self.pass_through(req, u).await;
        };
        let mut found = self.registry.find_piece(&archive, rel);
        if found.is_none() && self.registering.settle().await {
            found = self.registry.find_piece(&archive, rel);
        }
        let Some((reg, index, found)) = found else {
            tracing::debug!("not listed by any torrent: passing through");
            return self.pass_through(req, u).await;
        };
        let ctype = content_type(rel);
        // The same content stored under another path (fetched through
        // another suite's pool path) is the same file.
        let (rel, meta) = match self.store.get(rel, &found.sha256) {
            Some(m) => (rel.to_string(), Some(m)),
            None => match self.store.find(&found.sha256) {
                Some((other, m)) => (other, Some(m)),
                None => (rel.to_string(), None),
            },
        };
        let rel = rel.as_str();
        let meta = match meta {
            Some(m) => Some(m),
            None => {
                let store = self.store.clone();
                let rel2 = rel.to_string();
                tokio::task::spawn_blocking(move || store.adopt(&rel2, &found.sha256, found.size))
                    .await
                    .ok()
                    .flatten()
            }
        };
        if let Some(meta) = meta {
            self.stats.store_hit();
            transfers::note_store();
            self.store.touch(rel);
            let v = Validators {
                mtime: meta.mtime,
                etag: Some(etag_of(&meta.sha256)),
            };
            // A kept descriptor when the file was served lately.
            let store = &self.store;
            return respond_with(req, meta.size, &v, ctype, |s, e| {
                opened_body(store.open_piece(rel, &meta.sha256), s, e)
            });
        }
        if !self.store.can_store(found.size) {
            tracing::info!("store full or failing: verified pass-through");
            return self.verified_pass_through(req, u, found).await;
        }
        let dl = match self.swarm.fetch(&reg, index, u.url()).await {
            Ok(d) => d,
            Err(Failure::Local) => return self.verified_pass_through(req, u, found).await,
            Err(f) => return failure_response(f),
        };
        transfers::note_download(&dl);
        match dl.started().await {
            State::Failed(Failure::Local) => {
                return self.verified_pass_through(req, u, found).await
            }
            State::Failed(f) => return failure_response(f),
            _ => {}
        }
        let mtime = dl.last_modified().unwrap_or_else(store::now);
        let v = Validators {
            mtime,
            etag: Some(etag_of(&found.sha256)),
        };
        let Some(file) = dl.file_handle() else {
            return failure_response(Failure::Local);
        };
        respond_with(req, found.size, &v, ctype, |s, e| Body::FileRanges {
            file,
            rx: dl.ranges(s, e),
            len: e - s,
        })
    }

    /// A listed piece streamed from the mirror without storing it (the
    /// store cannot take it), checked like a stored one: the size must be
    /// the index's and the final chunk is held back until the SHA-256
    /// matches, so a wrong file never reaches apt as a complete response.
    async fn verified_pass_through(
        &self,
        req: &Request,
        u: &UpstreamUrl,
        found: registry::Found,
    ) -> Response {
        let resp = match self.mirror.send(self.mirror.get(&u.url())).await {
            Ok(r) => r,
            Err(f) => return failure_response(f),
        };
        transfers::note_mirror();
        let status = resp.status().as_u16();
        if status != 200 {
            return failure_response(Failure::Status(status));
        }
        if resp.content_length().is_some_and(|n| n != found.size) {
            return failure_response(Failure::Corrupt);
        }
        let mut headers = copy_headers(
            resp.headers(),
            &[(reqwest::header::LAST_MODIFIED, "last-modified")],
        );
        headers.push(("content-type", content_type(&u.path).to_string()));
        headers.push(("etag", etag_of(&found.sha256)));
        if req.is_head() {
            return head_response(200, headers, found.size);
        }
        let (tx, rx) = mpsc::channel(8);
        let stats = self.stats.clone();
        let mut body = self.mirror.body(resp);
        tokio::spawn(
            async move {
                let mut h = Sha256::new();
                let mut held: Option<Bytes> = None;
                let mut n = 0u64;
                loop {
                    match body.next().await {
                        Ok(Some(c)) => {
                            n += c.len() as u64;
                            h.update(&c);
                            if let Some(prev) = held.replace(c) {
                                if tx.send(Ok(prev)).await.is_err() {
                                    return;
                                }
                            }
                        }
                        Ok(None) => break,
                        Err(_) => {
                            let _ = tx.send(Err(())).await;
                            return;
                        }
                    }
                }
                let good = n == found.size && <[u8; 32]>::from(h.finalize()) == found.sha256;
                match held {
                    Some(last) if good => {
                        let _ = tx.send(Ok(last)).await;
                    }
                    _ => {
                        if !good {
                            stats.corrupt();
                            tracing::warn!(
                                "mirror sent bytes that do not match the index's SHA256"
                            );
                        }
                        let _ = tx.send(Err(())).await;
                    }
                }
            }
            .in_current_span(),
        );
        Response {
            status: 200,
            headers,
            body: Body::Stream {
                rx,
                len: Some(found.size),
            },
            close: false,
            progress: None,
        }
    }

    /// Streams a file from the mirror without keeping it.
    async fn pass_through(&self, req: &Request, u: &UpstreamUrl) -> Response {
        let mut rb = self.mirror.get(&u.url());
        for h in ["range", "if-range", "if-modified-since", "if-none-match"] {
            if let Some(v) = req.header(h) {
                rb = rb.header(h, v);
            }
        }
        let resp = match self.mirror.send(rb).await {
            Ok(r) => r,
            Err(f) => return failure_response(f),
        };
        transfers::note_mirror();
        let status = resp.status().as_u16();
        use reqwest::header::{ACCEPT_RANGES, CONTENT_RANGE, CONTENT_TYPE, ETAG, LAST_MODIFIED};
        let headers = copy_headers(
            resp.headers(),
            &[
                (CONTENT_TYPE, "content-type"),
                (LAST_MODIFIED, "last-modified"),
                (ETAG, "etag"),
                (CONTENT_RANGE, "content-range"),
                (ACCEPT_RANGES, "accept-ranges"),
            ],
        );
        let len = resp.content_length();
        if status == 304 || req.is_head() {
            return head_response(status, headers, len.unwrap_or(0));
        }
        let (tx, rx) = mpsc::channel(8);
        let mut body = self.mirror.body(resp);
        tokio::spawn(
            async move {
                loop {
                    match body.next().await {
                        Ok(Some(c)) => {
                            if tx.send(Ok(c)).await.is_err() {
                                return;
                            }
                        }
                        Ok(None) => return,
                        Err(_) => {
                            let _ = tx.send(Err(())).await;
                            return;
                        }
                    }
                }
            }
            .in_current_span(),
        );
        Response {
            status,
            headers,
            body: Body::Stream { rx, len },
            close: false,
            progress: None,
        }
    }

    async fn serve_index(&self, req: &Request, u: &UpstreamUrl, rel: &str) -> Response {
        if let Some(c) = index_content(&self.registry, &self.store, u, rel) {
            if let Some(r) = self.serve_index_content(req, u, rel, &c).await {
                return r;
            }
        }
        let cache = self.store.index_file(u);
        let mut rb = self.mirror.get(&u.url());
        for h in ["if-modified-since", "if-none-match"] {
            if let Some(v) = req.header(h) {
                rb = rb.header(h, v);
            }
        }
        let resp = match self.mirror.send(rb).await {
            Ok(r) => r,
            Err(f) => {
                tracing::info!(failure = ?f, "mirror failed; trying the last good copy");
                return self.cached_index(req, &cache, failure_response(f));
            }
        };
        transfers::note_mirror();
        let status = resp.status().as_u16();
        match status {
            200 => {}
            304 => {
                let headers = copy_headers(
                    resp.headers(),
                    &[
                        (reqwest::header::LAST_MODIFIED, "last-modified"),
                        (reqwest::header::ETAG, "etag"),
                    ],
                );
                return head_response(304, headers, 0);
            }
            400..=499 => return Response::text(status, format!("the mirror answered {status}")),
            _ => {
                tracing::info!(status, "mirror error; trying the last good copy");
                return self.cached_index(
                    req,
                    &cache,
                    Response::text(status, format!("the mirror answered {status}")),
                );
            }
        }
        let len = resp.content_length();
        let mut headers = copy_headers(
            resp.headers(),
            &[
                (reqwest::header::LAST_MODIFIED, "last-modified"),
                (reqwest::header::ETAG, "etag"),
            ],
        );
        let last_modified = headers
            .iter()
            .find(|(k, _)| *k == "last-modified")
            .map(|(_, v)| v.clone());
        headers.push(("content-type", content_type(rel).to_string()));
        if req.is_head() {
            return head_response(200, headers, len.unwrap_or(0));
        }
        let (tx, rx) = mpsc::channel(8);
        let job = IndexJob {
            store: self.store.clone(),
            registry: self.registry.clone(),
            swarm: self.swarm.clone(),
            u: u.clone(),
            rel: rel.to_string(),
            cache,
            len,
            mtime: last_modified.as_deref().and_then(parse_date),
            _registering: is_index_candidate(rel).then(|| self.registering.start()),
        };
        let body = self.mirror.body(resp);
        tokio::spawn(job.run(body, tx).in_current_span());
        Response {
            status: 200,
            headers,
            body: Body::Stream { rx, len },
            close: false,
            progress: None,
        }
    }

    /// An index file its suite's Release lists: from the store, or fetched
    /// through its swarm (peers, the mirror as fallback) and stored, and
    /// only once it matched the Release's SHA-256 sent to apt. `None`: go
    /// to the mirror as for a Release (no room in the store, a local fault).
    async fn serve_index_content(
        &self,
        req: &Request,
        u: &UpstreamUrl,
        rel: &str,
        c: &IndexContent,
    ) -> Option<Response> {
        self.wait_loaded().await;
        if self.store.get(&c.store_rel, &c.sha256).is_some() {
            self.stats.store_hit();
            transfers::note_store();
        } else {
            if !self.store.can_store(c.size) {
                return None;
            }
            let content = Content {
                sha256: c.sha256,
                size: c.size,
                path: c.store_rel.clone(),
            };
            let dl = match self
                .swarm
                .fetch_content(c.swarm, Vec::new(), content, u.url())
                .await
            {
                Ok(d) => d,
                Err(_) => return None,
            };
            transfers::note_download(&dl);
            match dl.finished().await {
                State::Done => {}
                State::Failed(Failure::Status(s)) if (400..500).contains(&s) => {
                    return Some(Response::text(s, format!("the mirror answered {s}")));
                }
                // Failed (or verified but not stored): the mirror directly,
                // with the last good copy behind it.
                _ => return None,
            }
            self.store.get(&c.store_rel, &c.sha256)?;
        }
        self.store.touch(&c.store_rel);
        let path = self.store.piece_path(&c.store_rel);
        keep_index(&self.store, &self.registry, u, rel, c, &path).await;
        // Always sent whole: a conditional request must not get a 304 for
        // content the Release has since changed (`now` is after any
        // If-Modified-Since apt can send); the ETag is the content's hash.
        let v = Validators {
            mtime: store::now(),
            etag: Some(etag_of(&c.sha256)),
        };
        let ctype = content_type(rel);
        Some(respond_with(req, c.size, &v, ctype, |s, e| {
            file_body(&path, s, e)
        }))
    }

    /// The last good copy of an index, or `fallback` if there is none.
    fn cached_index(&self, req: &Request, cache: &Path, fallback: Response) -> Response {
        let Ok(md) = std::fs::metadata(cache) else {
            return fallback;
        };
        transfers::note_store();
        let v = Validators {
            mtime: md.modified().map(unix).unwrap_or(0),
            etag: None,
        };
        let ctype = content_type(&cache.to_string_lossy());
        respond_with(req, md.len(), &v, ctype, |s, e| file_body(cache, s, e))
    }
}

/// An index file that its suite's Release lists by SHA-256: content its
/// swarm's peers may serve.
#[derive(Clone, Debug)]
struct IndexContent {
    sha256: [u8; 32],
    size: u64,
    /// Where the store keeps it, named by content alone:
    /// `dists/by-hash/SHA256/<hex>`.
    store_rel: String,
    /// The swarm of its suite family and component.
    swarm: InfoHash,
    /// Its name in the Release, under `dists/` (`dists/SUITE/main/
    /// binary-amd64/Packages.xz`), whichever name apt asked for.
    listed_rel: String,
}

/// The cached InRelease (or Release) of the suite at `dir` (`dists/x/`)
/// of `u`'s archive.
fn cached_release(store: &Store, u: &UpstreamUrl, dir: &str) -> Option<Release> {
    ["InRelease", "Release"].iter().find_map(|f| {
        let mut u2 = u.clone();
        let (root, _, _) = u.split_archive()?;
        u2.path = format!("{root}{dir}{f}");
        std::fs::read(store.index_file(&u2))
            .ok()
            .map(|t| Release::parse(&t))
    })
}

/// Whether `rel` (under `dists/`) is an index file its suite's Release
/// lists by SHA-256, and if so what it is. InRelease, Release and
/// Release.gpg never are: they always come from the mirror.
fn index_content(
    registry: &Registry,
    store: &Store,
    u: &UpstreamUrl,
    rel: &str,
) -> Option<IndexContent> {
    let name = rel.rsplit('/').next()?;
    if matches!(name, "InRelease" | "Release" | "Release.gpg") {
        return None;
    }
    let archive = u.archive_key()?;
    let (suite_dir, release) =
        registry.release_for(&archive, rel, |d| cached_release(store, u, d))?;
    let within = rel.strip_prefix(suite_dir.as_str())?;
    // Only by-hash names: the name pins the content. A plain name
    // (`Packages.xz`) means whatever the mirror's InRelease says now, which
    // may be newer than the Release we know while apt's InRelease is still
    // on its way; those pass through from the mirror.
    let (_, rest) = within.split_once("by-hash/")?;
    // By SHA-512 (apt's choice where the Release lists it): the same file,
    // addressed by its SHA-256 from the same Release.
    let l = match rest.split_once('/') {
        Some(("SHA256", hex)) => release.by_sha256(&release::hex::<32>(hex)?)?,
        Some(("SHA512", hex)) => release.by_sha512(&release::hex::<64>(hex)?)?,
        _ => return None,
    };
    let (sha256, size) = release.sha256_of(&l.name)?;
    let listed = l.name.clone();
    if size == 0 {
        return None;
    }
    // Stored by content alone: the same file listed by several suites or
    // architectures (an empty contrib index, a Translation that did not
    // change) is one download and one file.
    let hex = debtorrent_gen::sha256_hex(&sha256);
    let store_rel = format!("dists/by-hash/SHA256/{hex}");
    debtorrent_gen::check_path(store_rel.as_bytes()).ok()?;
    let component = registry::component(&suite_dir, &format!("{suite_dir}{listed}"));
    Some(IndexContent {
        sha256,
        size,
        store_rel,
        swarm: release.swarm_id(&component),
        listed_rel: format!("{suite_dir}{listed}"),
    })
}

/// An index file served from the store: kept as the last good copy under
/// its URL's name (a hard link), and registered if it is a Packages or
/// Sources file that is new there.
async fn keep_index(
    store: &Arc<Store>,
    registry: &Arc<Registry>,
    u: &UpstreamUrl,
    rel: &str,
    c: &IndexContent,
    stored: &Path,
) {
    let cache = store.index_file(u);
    let same =
        std::fs::metadata(&cache).is_ok_and(|m| m.len() == c.size) && rel.contains("/by-hash/");
    if same {
        return;
    }
    static SEQ: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let tmp = cache.with_file_name(format!(".dt-link-{}-{n}", std::process::id()));
    let (src, dst) = (stored.to_path_buf(), cache.clone());
    let linked = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
        if let Some(parent) = dst.parent() {
            std::fs::create_dir_all(parent)?;
        }
        let _ = std::fs::remove_file(&tmp);
        if std::fs::hard_link(&src, &tmp).is_err() {
            std::fs::copy(&src, &tmp)?;
        }
        std::fs::rename(&tmp, &dst)
    })
    .await;
    if !matches!(linked, Ok(Ok(()))) {
        tracing::warn!(path = %cache.display(), "could not keep the index copy");
        return;
    }
    // Registered under the name the Release lists it by: its SHA-256 is
    // all we checked (apt asked by SHA-512, perhaps).
    register_saved(store, registry, u, &c.listed_rel, &cache, c.sha256, None).await;
}

/// Passing one index file through: tee to the cache, then register.
struct IndexJob {
    store: Arc<Store>,
    registry: Arc<Registry>,
    swarm: Arc<crate::swarm::Swarm>,
    u: UpstreamUrl,
    rel: String,
    cache: PathBuf,
    len: Option<u64>,
    mtime: Option<i64>,
    /// Held until the job ends, registration included.
    _registering: Option<RegisteringGuard>,
}

impl IndexJob {
    async fn run(self, mut body: crate::mirror::Body, tx: mpsc::Sender<Result<Bytes, ()>>) {
        let tmp = match self.store.temp_file() {
            Ok((p, f)) => (p, f),
            Err(e) => {
                tracing::error!(error = %e, "cannot create a temporary file");
                let _ = tx.send(Err(())).await;
                return;
            }
        };
        let (tmp_path, mut file) = tmp;
        let by_hash_512 = self.rel.contains("/by-hash/SHA512/");
        let mut h256 = Sha256::new();
        let mut h512 = by_hash_512.then(Sha512::new);
        let mut n = 0u64;
        let mut apt_gone = false;
        // A failed cache write (full disk) stops the copy, not apt's download.
        let mut caching = true;
        let complete = loop {
            match body.next().await {
                Ok(Some(c)) => {
                    if caching {
                        h256.update(&c);
                        if let Some(h) = h512.as_mut() {
                            h.update(&c);
                        }
                        if let Err(e) = std::io::Write::write_all(&mut file, &c) {
                            tracing::warn!(error = %e, "cannot keep a copy of this index");
                            caching = false;
                        }
                    }
                    n += c.len() as u64;
                    if !apt_gone && tx.send(Ok(c)).await.is_err() {
                        apt_gone = true; // finish the cache copy anyway
                    }
                    if apt_gone && !caching {
                        break false;
                    }
                }
                Ok(None) => break self.len.is_none_or(|l| l == n),
                Err(_) => break false,
            }
        };
        if !complete || !caching {
            if !complete {
                let _ = tx.send(Err(())).await;
            }
            let _ = std::fs::remove_file(&tmp_path);
            return;
        }
        drop(tx);
        // Whole: from here until it is registered, a shutdown waits for
        // it (apt has it and will not ask again).
        let _saving = self.store.commit_ticket();
        let sha256: [u8; 32] = h256.finalize().into();
        let sha512: Option<[u8; 64]> = h512.map(|h| h.finalize().into());
        let cache = self.cache.clone();
        let mtime = self.mtime;
        let saved = tokio::task::spawn_blocking(move || -> std::io::Result<()> {
            file.sync_all()?;
            if let Some(t) = mtime {
                file.set_modified(UNIX_EPOCH + Duration::from_secs(t.max(0) as u64))?;
            }
            if let Some(parent) = cache.parent() {
                std::fs::create_dir_all(parent)?;
            }
            std::fs::rename(&tmp_path, &cache)
        })
        .await;
        if !matches!(saved, Ok(Ok(()))) {
            tracing::warn!(path = %self.cache.display(), "could not keep the index copy");
            return;
        }
        self.after_saved(sha256, sha512.as_ref()).await;
    }

    /// A Release updates the suite's hash list (and what we hold of the
    /// files it lists is offered to their swarms); an index file it lists
    /// joins the store and its swarm; a Packages/Sources file that matches
    /// it becomes a torrent.
    async fn after_saved(&self, sha256: [u8; 32], sha512: Option<&[u8; 64]>) {
        let name = self.rel.rsplit('/').next().unwrap_or("");
        if name == "InRelease" || name == "Release" {
            if let Some(archive) = self.u.archive_key() {
                if let Ok(text) = std::fs::read(&self.cache) {
                    let suite_dir = &self.rel[..self.rel.len() - name.len()];
                    let r = Release::parse(&text);
                    tracing::debug!(suite = suite_dir, files = r.len(), "release registered");
                    self.registry.set_release(&archive, suite_dir, r);
                    self.offer_held(suite_dir).await;
                }
            }
            return;
        }
        if let Some(c) = index_content(&self.registry, &self.store, &self.u, &self.rel) {
            if c.sha256 == sha256 {
                let (store, cache, c2) = (self.store.clone(), self.cache.clone(), c.clone());
                let linked = tokio::task::spawn_blocking(move || {
                    store.link_verified(&cache, &c2.store_rel, c2.sha256, c2.size)
                })
                .await;
                match linked {
                    Ok(Ok(())) => self.swarm.offer(c.swarm, content_of(&c)).await,
                    Ok(Err(e)) => {
                        tracing::debug!(error = %e, "index file not shared: not stored")
                    }
                    Err(_) => {}
                }
            }
        }
        register_saved(
            &self.store,
            &self.registry,
            &self.u,
            &self.rel,
            &self.cache,
            sha256,
            sha512,
        )
        .await;
    }

    /// The files a new Release of `suite_dir` lists that the store holds
    /// (unchanged since an earlier version, or kept from before a
    /// restart): offered to their swarms.
    async fn offer_held(&self, suite_dir: &str) {
        let Some(archive) = self.u.archive_key() else {
            return;
        };
        let Some((dir, release)) =
            self.registry
                .release_for(&archive, &format!("{suite_dir}InRelease"), |_| None)
        else {
            return;
        };
        let mut held = Vec::new();
        for name in release.names() {
            let mut u = self.u.clone();
            if let Some((root, _, _)) = self.u.split_archive() {
                u.path = format!("{root}{dir}{name}");
            }
            let rel = format!("{dir}{name}");
            if let Some(c) = index_content(&self.registry, &self.store, &u, &rel) {
                if self.store.get(&c.store_rel, &c.sha256).is_some() {
                    held.push(c);
                }
            }
        }
        for c in held {
            self.swarm.offer(c.swarm, content_of(&c)).await;
        }
    }
}

fn content_of(c: &IndexContent) -> Content {
    Content {
        sha256: c.sha256,
        size: c.size,
        path: c.store_rel.clone(),
    }
}

/// A Packages or Sources file (or a by-hash name, which may be one): what
/// a saved index must be to be registered.
fn is_index_candidate(rel: &str) -> bool {
    let name = rel.rsplit('/').next().unwrap_or("");
    release::index_kind(name).is_some() || rel.contains("/by-hash/")
}

/// Registers a saved index file (`cache`, fetched as `rel` of `u`) if it
/// is a Packages or Sources file its suite's Release lists with this hash.
async fn register_saved(
    store: &Arc<Store>,
    registry: &Arc<Registry>,
    u: &UpstreamUrl,
    rel: &str,
    cache: &Path,
    sha256: [u8; 32],
    sha512: Option<&[u8; 64]>,
) {
    let Some(archive) = u.archive_key() else {
        return;
    };
    if !is_index_candidate(rel) {
        return;
    }
    let name = rel.rsplit('/').next().unwrap_or("");
    let Some((suite_dir, rel_release)) =
        registry.release_for(&archive, rel, |d| cached_release(store, u, d))
    else {
        tracing::info!(index = %rel, "no Release known for this index; not registered");
        return;
    };
    let (kind, index_path) =
        match registry::classify_index(&suite_dir, rel, &rel_release, &sha256, sha512) {
            Ok(x) => x,
            Err(why) => {
                if release::index_kind(name).is_some() {
                    tracing::warn!(index = %rel, why, "index not registered");
                }
                return;
            }
        };
    let swarm = Some(rel_release.swarm_id(&registry::component(&suite_dir, &index_path)));
    let f = registry::IndexFile {
        archive,
        index_path,
        file: cache.to_path_buf(),
        file_rel: store.relative_index(cache),
        kind,
        added: store::now(),
        swarm,
    };
    if let Err(e) = registry::register_index(registry, store.db(), f, None).await {
        tracing::warn!(error = %e, "index matched its Release but gives no torrent");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges() {
        use RangeReq::*;
        let cases = [
            (None, 1000, Full),
            (Some("bytes=0-99"), 1000, Part(0, 100)),
            (Some("bytes=100-199"), 1000, Part(100, 200)),
            (Some("bytes=900-"), 1000, Part(900, 1000)),
            (Some("bytes=-100"), 1000, Part(900, 1000)),
            (Some("bytes=-5000"), 1000, Part(0, 1000)),
            (Some("bytes=990-2000"), 1000, Part(990, 1000)),
            (Some("bytes=1000-"), 1000, Unsatisfiable),
            (Some("bytes=1000-1001"), 1000, Unsatisfiable),
            (Some("bytes=-0"), 1000, Unsatisfiable),
            (Some("bytes=5-1"), 1000, Full),
            (Some("bytes=0-1,5-6"), 1000, Full),
            (Some("items=0-1"), 1000, Full),
            (Some("bytes=x-y"), 1000, Full),
            (Some("bytes=-"), 1000, Full),
        ];
        for (h, size, want) in cases {
            assert_eq!(parse_range(h, size), want, "{h:?}");
        }
    }

    fn req(headers: &[(&str, &str)]) -> Request {
        Request {
            method: "GET".into(),
            target: "/".into(),
            headers: headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            peer: "127.0.0.1:1".parse().unwrap(),
        }
    }

    #[test]
    fn validators() {
        let v = Validators {
            mtime: 1_700_000_000,
            etag: Some("\"sha256-abc\"".into()),
        };
        let lm = http_date(1_700_000_000);
        let earlier = http_date(1_600_000_000);
        // (headers, not_modified, range_applies)
        let cases: Vec<(Vec<(&str, &str)>, bool, bool)> = vec![
            (vec![], false, true),
            (vec![("if-modified-since", &lm)], true, true),
            (vec![("if-modified-since", &earlier)], false, true),
            (vec![("if-modified-since", "garbage")], false, true),
            (vec![("if-none-match", "\"sha256-abc\"")], true, true),
            (
                vec![("if-none-match", "\"other\""), ("if-modified-since", &lm)],
                false,
                true,
            ),
            (vec![("if-range", "\"sha256-abc\"")], false, true),
            (vec![("if-range", "\"other\"")], false, false),
            (vec![("if-range", &lm)], false, true),
            (vec![("if-range", &earlier)], false, false),
        ];
        for (h, nm, ra) in cases {
            let r = req(&h);
            assert_eq!(v.not_modified(&r), nm, "{h:?}");
            assert_eq!(v.range_applies(&r), ra, "{h:?}");
        }
    }

    #[test]
    fn archive_file_names() {
        for (p, want) in [
            ("/debian/Packages.gz", true),
            ("/x/hello_1_all.deb", true),
            ("/x/hello_1.tar.xz", true),
            ("/x/InRelease", true),
            ("/etc/passwd", false),
            ("/", false),
            ("/index.html", false),
        ] {
            assert_eq!(looks_like_archive_file(p), want, "{p}");
        }
    }
}
