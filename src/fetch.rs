//! Fetching pieces from the mirror (the web seed), verified while they
//! stream, shared by everyone who asks for the same piece at once.
//!
//! One [`Download`] per piece in flight, whatever the number of apt clients
//! waiting for it. One task writes the mirror's bytes to a file under
//! `tmp/` and hashes them as they pass. Readers follow that file as it
//! grows (through their own handle, with positioned reads) and send its
//! bytes on to apt. The last byte of a piece is held back from every reader
//! until the whole piece has matched its SHA-256. If it does not match, the
//! readers' responses end short of their Content-Length, apt discards them,
//! and the file is deleted: no unverified byte is stored, and none is ever
//! delivered as a complete response.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::store::Store;

/// Why a download failed; maps to the status apt gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Failure {
    /// The mirror answered with this status.
    Status(u16),
    /// The mirror could not be reached.
    Unreachable,
    /// The mirror stopped sending.
    Timeout,
    /// The bytes did not match the index (size or hash).
    Corrupt,
    /// A local I/O error (full disk, ...).
    Local,
}

impl Failure {
    /// The status to give apt when no bytes were sent yet.
    pub fn status(self) -> u16 {
        match self {
            Failure::Status(s) if (400..500).contains(&s) => s,
            Failure::Status(_) | Failure::Unreachable | Failure::Corrupt => 502,
            Failure::Timeout => 504,
            Failure::Local => 500,
        }
    }
}

/// Where a download is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    /// Waiting for the mirror's response.
    Connecting,
    /// Receiving; `written` bytes are in the file.
    Streaming {
        /// Bytes written so far.
        written: u64,
    },
    /// Verified and in the store.
    Done,
    /// Failed; nothing was stored.
    Failed(Failure),
}

/// One piece being fetched.
pub struct Download {
    /// Its size from the index.
    pub size: u64,
    file: std::fs::File,
    state: watch::Receiver<State>,
    /// The mirror's Last-Modified, once known.
    pub last_modified: Mutex<Option<i64>>,
}

impl Download {
    /// Waits until the mirror has answered (or the download is over).
    pub async fn started(&self) -> State {
        let mut rx = self.state.clone();
        let res = rx.wait_for(|s| *s != State::Connecting).await.map(|s| *s);
        res.unwrap_or(State::Failed(Failure::Local))
    }

    /// Streams bytes `[start, end)` of the piece into a channel, as they
    /// become available, holding back the last byte until verification.
    pub fn reader(self: &Arc<Self>, start: u64, end: u64) -> mpsc::Receiver<Result<Bytes, ()>> {
        let (tx, rx) = mpsc::channel(8);
        let dl = self.clone();
        tokio::spawn(
            async move {
                let mut state = dl.state.clone();
                let mut pos = start;
                let mut buf = vec![0u8; 256 * 1024];
                loop {
                    let s = *state.borrow_and_update();
                    let available = match s {
                        State::Connecting => 0,
                        State::Streaming { written } => written.min(dl.size.saturating_sub(1)),
                        State::Done => dl.size,
                        State::Failed(_) => {
                            let _ = tx.send(Err(())).await;
                            return;
                        }
                    };
                    while pos < available.min(end) {
                        let want =
                            usize::try_from((available.min(end) - pos).min(buf.len() as u64))
                                .unwrap_or(buf.len());
                        let n = match dl.file.read_at(&mut buf[..want], pos) {
                            Ok(0) | Err(_) => {
                                let _ = tx.send(Err(())).await;
                                return;
                            }
                            Ok(n) => n,
                        };
                        if tx
                            .send(Ok(Bytes::copy_from_slice(&buf[..n])))
                            .await
                            .is_err()
                        {
                            return; // apt went away
                        }
                        pos += n as u64;
                    }
                    if pos >= end {
                        return;
                    }
                    if state.changed().await.is_err() {
                        // The task is gone: only a final state counts.
                        if *state.borrow() != State::Done {
                            let _ = tx.send(Err(())).await;
                            return;
                        }
                    }
                }
            }
            .in_current_span(),
        );
        rx
    }
}

/// In-flight downloads by (archive-relative path, SHA-256).
type Inflight = HashMap<(String, [u8; 32]), Arc<Download>>;

/// Downloads in flight, by piece.
pub struct Downloads {
    inflight: Mutex<Inflight>,
    store: Arc<Store>,
    client: reqwest::Client,
    timeout: Duration,
    stats: Arc<crate::status::Stats>,
}

impl Downloads {
    /// A download manager.
    pub fn new(
        store: Arc<Store>,
        client: reqwest::Client,
        timeout: Duration,
        stats: Arc<crate::status::Stats>,
    ) -> Self {
        Downloads {
            inflight: Mutex::new(HashMap::new()),
            store,
            client,
            timeout,
            stats,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the download of piece `rel` or starts it from `url`.
    pub fn get_or_start(
        self: &Arc<Self>,
        rel: &str,
        sha256: [u8; 32],
        size: u64,
        url: String,
    ) -> Result<Arc<Download>, Failure> {
        let key = (rel.to_string(), sha256);
        let mut map = self.lock();
        if let Some(d) = map.get(&key) {
            return Ok(d.clone());
        }
        let (tmp, file) = self.store.temp_file().map_err(|e| {
            tracing::error!(error = %e, "cannot create a temporary file");
            Failure::Local
        })?;
        let reader_file = file.try_clone().map_err(|_| Failure::Local)?;
        let (tx, rx) = watch::channel(State::Connecting);
        let dl = Arc::new(Download {
            size,
            file: reader_file,
            state: rx,
            last_modified: Mutex::new(None),
        });
        map.insert(key.clone(), dl.clone());
        drop(map);
        let this = self.clone();
        let dl2 = dl.clone();
        let span = tracing::info_span!("download", piece = %rel);
        tokio::spawn(
            async move {
                let outcome = this
                    .run(&dl2, &tx, file, &tmp, &key.0, sha256, size, &url)
                    .await;
                match outcome {
                    Ok(()) => {
                        let _ = tx.send(State::Done);
                    }
                    Err(f) => {
                        let _ = std::fs::remove_file(&tmp);
                        tracing::warn!(failure = ?f, %url, "download failed; nothing stored");
                        let _ = tx.send(State::Failed(f));
                    }
                }
                this.lock().remove(&key);
            }
            .instrument(span),
        );
        Ok(dl)
    }

    #[allow(clippy::too_many_arguments)]
    async fn run(
        &self,
        dl: &Download,
        tx: &watch::Sender<State>,
        file: std::fs::File,
        tmp: &Path,
        rel: &str,
        sha256: [u8; 32],
        size: u64,
        url: &str,
    ) -> Result<(), Failure> {
        let resp = match self.client.get(url).send().await {
            Ok(r) => r,
            Err(e) if e.is_timeout() => return Err(Failure::Timeout),
            Err(e) => {
                tracing::debug!(error = %e, "mirror unreachable");
                return Err(Failure::Unreachable);
            }
        };
        let status = resp.status().as_u16();
        if status != 200 {
            return Err(Failure::Status(status));
        }
        if resp.content_length().is_some_and(|n| n != size) {
            tracing::warn!(announced = ?resp.content_length(), expected = size, "mirror announces the wrong size");
            return Err(Failure::Corrupt);
        }
        let last_modified = resp
            .headers()
            .get(reqwest::header::LAST_MODIFIED)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| httpdate::parse_http_date(v).ok())
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        if let Ok(mut lm) = dl.last_modified.lock() {
            *lm = last_modified;
        }
        let _ = tx.send(State::Streaming { written: 0 });
        let mut resp = resp;
        let mut hasher = Sha256::new();
        let mut written = 0u64;
        loop {
            let chunk = match tokio::time::timeout(self.timeout, resp.chunk()).await {
                Err(_) => return Err(Failure::Timeout),
                Ok(Err(_)) => return Err(Failure::Unreachable),
                Ok(Ok(None)) => break,
                Ok(Ok(Some(c))) => c,
            };
            if written + chunk.len() as u64 > size {
                return Err(Failure::Corrupt);
            }
            hasher.update(&chunk);
            // A positioned write to the page cache: fast enough to do on the
            // runtime thread, and a full disk surfaces here as an error.
            if let Err(e) = file.write_all_at(&chunk, written) {
                tracing::error!(error = %e, "cannot write a download");
                self.store.note_write_failure();
                return Err(Failure::Local);
            }
            written += chunk.len() as u64;
            self.stats.mirror_bytes(chunk.len() as u64);
            let _ = tx.send(State::Streaming { written });
        }
        if written != size {
            return Err(Failure::Unreachable);
        }
        if <[u8; 32]>::from(hasher.finalize()) != sha256 {
            tracing::warn!("mirror sent bytes that do not match the index's SHA256");
            self.stats.corrupt();
            return Err(Failure::Corrupt);
        }
        // Verified: from here on, readers get the piece whatever happens to
        // the store. A failed commit (disk full at fsync, a store on another
        // filesystem) costs only the cached copy.
        let store = self.store.clone();
        let (tmp, rel) = (tmp.to_path_buf(), rel.to_string());
        let committed = tokio::task::spawn_blocking(move || {
            let res = file
                .sync_all()
                .and_then(|()| store.commit_piece(&tmp, &rel, sha256, size, last_modified));
            if res.is_err() {
                let _ = std::fs::remove_file(&tmp);
                store.note_write_failure();
            }
            res
        })
        .await;
        match committed {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::error!(error = %e, "verified piece served but not stored"),
            Err(e) => tracing::error!(error = %e, "verified piece served but not stored"),
        }
        Ok(())
    }
}
