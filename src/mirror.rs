//! The mirror, in one room: the HTTP client and its redirect and port
//! policy, the one loop that reads a response's chunks (with the
//! per-chunk timeout and the byte counter every path needs), range fetches
//! into an assembly (the web seed), and the mirror's rate estimate.
//!
//! The torrent task meets the mirror the way it meets a peer: as a
//! [`Source`](crate::types::Source) that writes blocks into a piece's
//! assembly. Only *when* the mirror is asked is policy (the state
//! machine's mirror rules); everything here is I/O.

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use bytes::Bytes;

use crate::assembly::{Download, Failure};
use crate::stats::Stats;
use crate::types::Source;
use crate::url;

/// How the mirror client is built (from `serve`'s options).
pub struct Options {
    /// Extra PEM roots (`--ca-file`).
    pub ca_file: Option<PathBuf>,
    /// Connect timeout.
    pub connect_timeout: Duration,
    /// How long to wait for a mirror's next bytes.
    pub timeout: Duration,
    /// Hosts and ports the daemon may reach (also for redirects).
    pub policy: url::Policy,
}

/// The mirror's speed as last measured. Starts at 10 MB/s and 100 ms, a
/// guess that the first transfers replace.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Estimate {
    /// Transfer rate once bytes flow (bytes/s).
    pub rate: u64,
    /// Time from request to response headers (ms).
    pub latency_ms: u64,
}

impl Default for Estimate {
    fn default() -> Self {
        Estimate {
            rate: 10_000_000,
            latency_ms: 100,
        }
    }
}

impl Estimate {
    /// Folds one transfer in: weight 1/4 for the newest sample, so one
    /// slow request does not swing the mirror rules. The rate only counts
    /// transfers long enough to say something (over 256 KiB).
    pub fn fold(&mut self, latency_ms: u64, bytes: u64, transfer_ms: u64) {
        self.latency_ms = (self.latency_ms * 3 + latency_ms) / 4;
        if bytes > 256 * 1024 {
            let r = bytes.saturating_mul(1000) / transfer_ms.max(1);
            self.rate = (self.rate * 3 + r) / 4;
        }
    }
}

/// The mirror client and what is known of its speed.
pub struct Mirror {
    client: reqwest::Client,
    timeout: Duration,
    stats: Arc<Stats>,
    estimate: Mutex<Estimate>,
}

/// What a finished range fetch moved, and how fast.
#[derive(Clone, Copy, Debug, Default)]
pub struct Moved {
    /// Bytes received.
    pub bytes: u64,
    /// Milliseconds from the request to the response headers.
    pub latency_ms: u64,
    /// Milliseconds from the headers to the end.
    pub transfer_ms: u64,
}

impl Mirror {
    /// The client, with extra roots, timeouts and the redirect policy.
    pub fn new(opts: Options, stats: Arc<Stats>) -> anyhow::Result<Mirror> {
        let mut client = reqwest::Client::builder();
        if let Some(path) = &opts.ca_file {
            let pem = std::fs::read(path)
                .with_context(|| format!("cannot read --ca-file {}", path.display()))?;
            let certs = reqwest::Certificate::from_pem_bundle(&pem)
                .with_context(|| format!("--ca-file {}: not PEM certificates", path.display()))?;
            if certs.is_empty() {
                bail!("--ca-file {}: no certificate found", path.display());
            }
            for c in certs {
                client = client.add_root_certificate(c);
            }
        }
        let client = client
            .connect_timeout(opts.connect_timeout)
            .read_timeout(opts.timeout)
            .no_proxy()
            .redirect(redirect_policy(opts.policy))
            .user_agent(concat!("debtorrent/", env!("CARGO_PKG_VERSION")))
            .build()
            .context("cannot build the HTTP client")?;
        Ok(Mirror {
            client,
            timeout: opts.timeout,
            stats,
            estimate: Mutex::new(Estimate::default()),
        })
    }

    /// A GET of `url`, to add headers to and [`send`](Self::send).
    pub fn get(&self, url: &str) -> reqwest::RequestBuilder {
        self.client.get(url)
    }

    /// Sends a request; a failure says whether it timed out.
    pub async fn send(&self, rb: reqwest::RequestBuilder) -> Result<reqwest::Response, Failure> {
        rb.send().await.map_err(|e| {
            tracing::debug!(error = %e, "mirror unreachable");
            if e.is_timeout() {
                Failure::Timeout
            } else {
                Failure::Unreachable
            }
        })
    }

    /// The response's body as chunks (see [`Body::next`]).
    pub fn body(&self, resp: reqwest::Response) -> Body {
        Body {
            resp,
            timeout: self.timeout,
            stats: self.stats.clone(),
        }
    }

    /// The mirror's speed as last measured.
    pub fn estimate(&self) -> Estimate {
        self.estimate.lock().map(|e| *e).unwrap_or_default()
    }

    /// Fetches `[from, to)` of a piece into `dl` (the web seed). A
    /// whole-piece range is a plain GET; a part uses HTTP Range and needs
    /// a `206` with a matching `Content-Range` (a `200` is read from the
    /// start and the bytes before `from` are skipped). Returns when the
    /// range is in (the verifier reports on the whole piece), or why it
    /// failed. `stop` ends it early at a chunk boundary. What it moved
    /// feeds the estimate through [`Mirror::note`], when the caller still
    /// wants the run.
    pub async fn fetch_range(
        &self,
        url: &str,
        dl: &Download,
        from: u64,
        to: u64,
        mut on_bytes: impl FnMut(u64),
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> (Result<(), Failure>, Moved) {
        let t0 = Instant::now();
        let whole = from == 0 && to == dl.size;
        let mut rb = self.get(url);
        if !whole {
            rb = rb.header(reqwest::header::RANGE, format!("bytes={}-{}", from, to - 1));
        }
        let mut moved = Moved::default();
        let resp = match self.send(rb).await {
            Ok(r) => r,
            Err(f) => return (Err(f), moved),
        };
        moved.latency_ms = t0.elapsed().as_millis() as u64;
        let t1 = Instant::now();
        let res = self
            .read_range(
                resp,
                dl,
                from,
                to,
                whole,
                &mut moved.bytes,
                &mut on_bytes,
                stop,
            )
            .await;
        moved.transfer_ms = t1.elapsed().as_millis() as u64;
        (res, moved)
    }

    /// Folds what a range fetch moved into the estimate.
    pub fn note(&self, moved: &Moved) {
        if let Ok(mut e) = self.estimate.lock() {
            e.fold(moved.latency_ms, moved.bytes, moved.transfer_ms);
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn read_range(
        &self,
        resp: reqwest::Response,
        dl: &Download,
        from: u64,
        to: u64,
        whole: bool,
        bytes: &mut u64,
        on_bytes: &mut impl FnMut(u64),
        stop: &tokio::sync::watch::Receiver<bool>,
    ) -> Result<(), Failure> {
        let status = resp.status().as_u16();
        let mut skip = 0u64;
        match status {
            200 => {
                if resp.content_length().is_some_and(|n| n != dl.size) {
                    tracing::warn!(announced = ?resp.content_length(), expected = dl.size, "mirror announces the wrong size");
                    return Err(Failure::Corrupt);
                }
                skip = from;
            }
            206 if !whole => {
                let cr = resp
                    .headers()
                    .get(reqwest::header::CONTENT_RANGE)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("");
                if cr != format!("bytes {}-{}/{}", from, to - 1, dl.size) {
                    tracing::warn!(content_range = cr, "mirror answered a different range");
                    return Err(Failure::Corrupt);
                }
            }
            s => return Err(Failure::Status(s)),
        }
        dl.note_last_modified(last_modified(resp.headers()));
        dl.mark_started();
        let mut body = self.body(resp);
        let mut pos = from;
        loop {
            if *stop.borrow() {
                return Ok(());
            }
            let Some(chunk) = body.next().await? else {
                break;
            };
            *bytes += chunk.len() as u64;
            on_bytes(chunk.len() as u64);
            let mut c: &[u8] = &chunk;
            if skip > 0 {
                let n = (skip as usize).min(c.len());
                c = &c[n..];
                skip -= n as u64;
            }
            if c.is_empty() {
                continue;
            }
            if pos + c.len() as u64 > to {
                if status == 200 && pos < to {
                    // A plain GET past our range: keep only what we asked for.
                    c = &c[..(to - pos) as usize];
                } else if status == 200 {
                    return Ok(());
                } else {
                    return Err(Failure::Corrupt);
                }
            }
            if let Err(e) = dl.put(pos, c, Source::Mirror) {
                tracing::error!(error = %e, "cannot write a download");
                return Err(Failure::Local);
            }
            pos += c.len() as u64;
            if pos >= to {
                return Ok(());
            }
        }
        if pos != to {
            return Err(Failure::Unreachable);
        }
        Ok(())
    }
}

/// A mirror response's body: the one chunk loop every path uses. Each
/// chunk must come within the timeout, and every byte is counted as
/// mirror traffic.
pub struct Body {
    resp: reqwest::Response,
    timeout: Duration,
    stats: Arc<Stats>,
}

impl Body {
    /// The next chunk; `None` at the end. A stall past the timeout or a
    /// broken connection is a failure.
    pub async fn next(&mut self) -> Result<Option<Bytes>, Failure> {
        match tokio::time::timeout(self.timeout, self.resp.chunk()).await {
            Err(_) => Err(Failure::Timeout),
            Ok(Err(_)) => Err(Failure::Unreachable),
            Ok(Ok(None)) => Ok(None),
            Ok(Ok(Some(c))) => {
                self.stats.mirror_bytes(c.len() as u64);
                Ok(Some(c))
            }
        }
    }
}

/// A response's `Last-Modified` as Unix seconds.
pub fn last_modified(h: &reqwest::header::HeaderMap) -> Option<i64> {
    h.get(reqwest::header::LAST_MODIFIED)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| httpdate::parse_http_date(v).ok())
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map(|d| d.as_secs() as i64)
}

/// Redirects are followed only to hosts and ports the policy allows, so a
/// mirror cannot bounce the daemon to an internal service.
fn redirect_policy(policy: url::Policy) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("too many redirects");
        }
        let u = attempt.url();
        let port = u.port_or_known_default().unwrap_or(0);
        let host = u.host_str().unwrap_or("").to_ascii_lowercase();
        let scheme_ok = matches!(u.scheme(), "http" | "https");
        let host_ok = policy.hosts.is_empty() || policy.hosts.contains(&host);
        if scheme_ok && policy.ports.contains(&port) && host_ok {
            attempt.follow()
        } else {
            attempt.error("redirect to a host or port that is not allowed")
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_folds_latency_and_only_long_transfers_into_the_rate() {
        // (latency ms, bytes, transfer ms) -> (rate, latency) after it.
        let cases: &[(u64, u64, u64, u64, u64)] = &[
            // A short transfer moves the latency, not the rate.
            (20, 1000, 1, 10_000_000, 80),
            // 1 MB in 100 ms = 10 MB/s: the rate stays.
            (100, 1_000_000, 100, 10_000_000, 100),
            // 4 MB in 100 ms = 40 MB/s: a quarter of the way there.
            (100, 4_000_000, 100, 17_500_000, 100),
            // Zero ms does not divide by zero.
            (0, 300_000, 0, 82_500_000, 75),
        ];
        for &(lat, bytes, ms, rate, latency_ms) in cases {
            let mut e = Estimate::default();
            e.fold(lat, bytes, ms);
            assert_eq!(e, Estimate { rate, latency_ms }, "{lat} {bytes} {ms}");
        }
    }
}
