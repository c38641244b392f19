//! apt requests in flight, for the status page's live transfers and the
//! one log line each request gets when it ends.
//!
//! The front end opens a [`Transfer`] for every request to an upstream
//! path; the code that answers it says where the bytes come from
//! ([`note_store`], [`note_mirror`], [`note_download`]), through a
//! task-local, so the request path's functions keep their signatures. The
//! response carries the transfer (as its [`crate::http1::Progress`]); the
//! connection loop counts the bytes written to apt into it. When the
//! response is done (written, cut short, or dropped with its connection)
//! the last reference goes away, and `Drop` writes the log line and takes
//! the transfer off the list. So a transfer is listed exactly while apt
//! still waits for bytes of it, and every request logs once.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Instant;

use crate::assembly::Download;

/// Where a request's bytes come from, as the code answering it said.
#[derive(Clone, Default)]
enum Origin {
    /// Not said (a refusal, an error answer).
    #[default]
    None,
    /// The verified store (or a kept copy of an index).
    Store,
    /// Straight from the mirror (pass-through, Release files).
    Mirror,
    /// An assembly fed by peers and the mirror.
    Download(Arc<Download>),
}

/// One apt request, open until its response is done.
pub struct Transfer {
    id: u64,
    path: String,
    started: Instant,
    /// Size of the body apt is sent (0 until known).
    size: AtomicU64,
    /// Bytes written to apt so far.
    sent: AtomicU64,
    status: AtomicU64,
    complete: AtomicBool,
    origin: Mutex<Origin>,
    list: Weak<Transfers>,
}

/// What one live transfer looks like on the status page.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TransferStatus {
    /// The path apt asked for (without the daemon's host).
    pub path: String,
    /// Bytes of the response body (0 until known).
    pub size: u64,
    /// Bytes written to apt.
    pub sent: u64,
    /// Bytes of the file received so far (from peers and the mirror), for
    /// a file being fetched; else what was sent.
    pub received: u64,
    /// Of those, from peers; and how many distinct peers fed it.
    pub from_peers: u64,
    pub peers: usize,
    /// `store`, `mirror`, `peers`, `peers+mirror`, or `waiting`.
    pub source: &'static str,
    /// Milliseconds since apt asked.
    pub elapsed_ms: u64,
}

/// The list of open transfers.
pub struct Transfers {
    next: AtomicU64,
    open: Mutex<Vec<Weak<Transfer>>>,
    /// Counts the bytes apt gets from the store (the chart's third source).
    stats: Arc<crate::stats::Stats>,
}

tokio::task_local! {
    static CURRENT: Arc<Transfer>;
}

impl Transfers {
    /// An empty list.
    pub fn new(stats: Arc<crate::stats::Stats>) -> Arc<Transfers> {
        Arc::new(Transfers {
            next: AtomicU64::new(0),
            open: Mutex::new(Vec::new()),
            stats,
        })
    }

    /// Opens a transfer for a request to `path`.
    pub fn open(self: &Arc<Self>, path: &str) -> Arc<Transfer> {
        let t = Arc::new(Transfer {
            id: self.next.fetch_add(1, Ordering::Relaxed),
            path: path.to_string(),
            started: Instant::now(),
            size: AtomicU64::new(0),
            sent: AtomicU64::new(0),
            status: AtomicU64::new(0),
            complete: AtomicBool::new(false),
            origin: Mutex::new(Origin::None),
            list: Arc::downgrade(self),
        });
        if let Ok(mut v) = self.open.lock() {
            v.push(Arc::downgrade(&t));
        }
        t
    }

    /// The transfers apt still waits on, oldest first.
    pub fn live(&self) -> Vec<TransferStatus> {
        // The guard is gone at the end of this statement, before any of
        // these `Arc`s can be the last one.
        let open: Vec<Arc<Transfer>> = self
            .open
            .lock()
            .map(|v| v.iter().filter_map(Weak::upgrade).collect())
            .unwrap_or_default();
        let mut out: Vec<(u64, TransferStatus)> = open.iter().map(|t| (t.id, t.status())).collect();
        out.sort_by_key(|(id, _)| *id);
        out.into_iter().map(|(_, s)| s).collect()
    }

    /// Takes `t` (being dropped) and any other dead entry off the list.
    /// Never upgrades under the lock: an upgraded `Arc` could turn out to
    /// be the last one and run `Drop`, which takes this lock again.
    fn close(&self, t: *const Transfer) {
        if let Ok(mut v) = self.open.lock() {
            v.retain(|w| w.strong_count() > 0 && !std::ptr::eq(w.as_ptr(), t));
        }
    }
}

/// Runs `fut` (the answer to one request) with `t` as the transfer that
/// [`note_store`] and the others describe.
pub async fn scope<F: std::future::Future>(t: Arc<Transfer>, fut: F) -> F::Output {
    CURRENT.scope(t, fut).await
}

fn note(o: Origin) {
    let _ = CURRENT.try_with(|t| {
        if let Ok(mut g) = t.origin.lock() {
            *g = o;
        }
    });
}

/// The current request is answered from the store.
pub fn note_store() {
    note(Origin::Store);
}

/// The current request is answered straight from the mirror.
pub fn note_mirror() {
    note(Origin::Mirror);
}

/// The current request follows `dl`, a file being fetched from peers and
/// the mirror.
pub fn note_download(dl: &Arc<Download>) {
    note(Origin::Download(dl.clone()));
}

/// Bytes of one request, by where they came from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BySource {
    pub peers: u64,
    pub mirror: u64,
    pub store: u64,
}

impl Transfer {
    /// The response is known: its status and body size.
    pub fn respond(&self, status: u16, size: Option<u64>) {
        self.status.store(u64::from(status), Ordering::Relaxed);
        if let Some(n) = size {
            self.size.store(n, Ordering::Relaxed);
        }
    }

    fn origin(&self) -> Origin {
        self.origin.lock().map(|g| g.clone()).unwrap_or_default()
    }

    /// Bytes of this request by source. For a fetched file, its bytes from
    /// peers and the mirror (shared with any other request for the same
    /// file); for the store or the mirror, what apt was sent.
    pub fn by_source(&self) -> BySource {
        let sent = self.sent.load(Ordering::Relaxed);
        match self.origin() {
            Origin::None => BySource::default(),
            Origin::Store => BySource {
                store: sent,
                ..BySource::default()
            },
            Origin::Mirror => BySource {
                mirror: sent,
                ..BySource::default()
            },
            Origin::Download(dl) => {
                let s = dl.sources();
                BySource {
                    peers: s.from_peers,
                    mirror: s.received.saturating_sub(s.from_peers),
                    store: 0,
                }
            }
        }
    }

    fn status(&self) -> TransferStatus {
        let sent = self.sent.load(Ordering::Relaxed);
        let mut size = self.size.load(Ordering::Relaxed);
        let (received, from_peers, peers, source) = match self.origin() {
            Origin::None => (sent, 0, 0, "waiting"),
            Origin::Store => (sent, 0, 0, "store"),
            Origin::Mirror => (sent, 0, 0, "mirror"),
            Origin::Download(dl) => {
                let s = dl.sources();
                if size == 0 {
                    size = dl.size;
                }
                let src = match (s.from_peers > 0, s.received > s.from_peers) {
                    (true, true) => "peers+mirror",
                    (true, false) => "peers",
                    (false, true) => "mirror",
                    (false, false) => "waiting",
                };
                (s.received, s.from_peers, s.peers, src)
            }
        };
        TransferStatus {
            path: self.path.clone(),
            size,
            sent,
            received,
            from_peers,
            peers,
            source,
            elapsed_ms: u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX),
        }
    }
}

impl crate::http1::Progress for Transfer {
    fn sent(&self, n: u64) {
        self.sent.fetch_add(n, Ordering::Relaxed);
        if matches!(self.origin(), Origin::Store) {
            if let Some(list) = self.list.upgrade() {
                list.stats.store_bytes(n);
            }
        }
    }

    fn finished(&self, complete: bool) {
        self.complete.store(complete, Ordering::Relaxed);
    }
}

impl Drop for Transfer {
    fn drop(&mut self) {
        if let Some(list) = self.list.upgrade() {
            list.close(self);
        }
        let b = self.by_source();
        let ms = u64::try_from(self.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        let status = self.status.load(Ordering::Relaxed);
        let sent = self.sent.load(Ordering::Relaxed);
        let complete = self.complete.load(Ordering::Relaxed);
        // One line per apt request, key=value, no colour (the subscriber
        // adds none off a terminal): what journald and log shippers want.
        tracing::info!(
            path = %self.path,
            status,
            size = self.size.load(Ordering::Relaxed),
            sent,
            from_peers = b.peers,
            from_mirror = b.mirror,
            from_store = b.store,
            ms,
            complete,
            "apt request"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::http1::Progress;

    /// A transfer is listed while a reference lives, says where its bytes
    /// came from, counts the store's bytes into the stats, and leaves the
    /// list when the last reference goes.
    #[tokio::test]
    async fn listed_while_alive_with_its_source() {
        let stats = crate::stats::Stats::new(&[]);
        let list = Transfers::new(stats.clone());
        let a = list.open("/m/debian/pool/a.deb");
        let b = list.open("/m/debian/dists/x/InRelease");
        scope(a.clone(), async { note_store() }).await;
        scope(b.clone(), async { note_mirror() }).await;
        a.respond(200, Some(10));
        a.sent(4);
        a.sent(6);
        a.finished(true);
        b.sent(3);
        let live = list.live();
        assert_eq!(
            live.iter()
                .map(|t| (t.path.as_str(), t.source, t.sent))
                .collect::<Vec<_>>(),
            vec![
                ("/m/debian/pool/a.deb", "store", 10),
                ("/m/debian/dists/x/InRelease", "mirror", 3)
            ]
        );
        assert_eq!(
            a.by_source(),
            BySource {
                store: 10,
                ..BySource::default()
            }
        );
        assert_eq!(b.by_source().mirror, 3);
        assert_eq!(stats.sample_now().store, 10, "store bytes counted");
        drop(a);
        assert_eq!(list.live().len(), 1);
        drop(b);
        assert!(list.live().is_empty());
        assert!(list.open.lock().map(|v| v.is_empty()).unwrap_or(false));
    }

    /// Outside a request nothing is noted, and nothing panics.
    #[test]
    fn notes_outside_a_request_are_ignored() {
        note_store();
        note_mirror();
    }
}
