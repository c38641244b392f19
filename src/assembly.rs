//! One piece being fetched: the assembly that every source writes into and
//! every waiting apt reads from, verified before anything is released.
//!
//! One [`Download`] per piece in flight, whatever the number of apt clients
//! waiting for it and whatever the number of sources (peers and the
//! mirror). Sources hand byte ranges to [`Download::put`] in any order. The
//! bytes go to a file under `tmp/`. A verifier task per download hashes the
//! contiguous prefix as it grows, always in order, on a blocking thread that
//! reads it back from the page cache, and reports each whole copy's result
//! (a piece of at most [`INLINE_HASH_MAX`] is hashed as it arrives).
//! Readers (apt responses) follow the file, with sendfile(2).
//!
//! What a reader may send (the invariant, see `docs/ARCHITECTURE.md`):
//! never byte `size - 1` before the piece matched its SHA-256, and nothing
//! at all of a piece of at most `hold_whole` bytes that took bytes from a
//! peer. A corrupt peer then costs apt nothing for the common small
//! package: the piece is fetched again while apt waits. A large piece streams
//! and, if it fails, every response ends short of its Content-Length, so apt
//! discards it.

use std::collections::HashMap;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use crate::store::Store;
use crate::types::Source;

/// Pieces up to this size are hashed by the connection's reader as their
/// bytes arrive in order, from the buffer they arrived in: a piece that
/// one or two reads bring is then verified the moment its last byte is
/// written, with no round trip to a blocking thread. Larger pieces are
/// hashed by their verifier, which reads them back from the page cache on
/// its own thread. Measured in `bench/swarm` (1), 1 GB from one seed,
/// pages prefaulted: hashing the big piece on the reader (as every piece
/// was until stop 24) took 1.24-1.43 CPU-s per GB in the leecher at
/// 846-1003 MB/s; reading it back, 1.07-1.18 CPU-s at 1021-1149 MB/s. The
/// second read costs less than what a reader busy hashing costs: the
/// socket's backlog grows while it hashes, and the kernel's receive work
/// moves out of the fast path. Hashing outside the assembly's lock, on
/// the reader, changed nothing (1.23-1.26).
pub const INLINE_HASH_MAX: u64 = 1 << 20;

/// The block size of the wire protocol; also the unit in which sources are
/// recorded for penalties.
const BLOCK: u64 = crate::types::BLOCK as u64;

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
    /// No source has started yet.
    Connecting,
    /// Receiving; readers may send up to `available` bytes.
    Streaming {
        /// Bytes readers may send now.
        available: u64,
    },
    /// Verified, and being stored (fsync, rename, the row): readers may
    /// send every byte. apt does not wait for our disk: its file's last
    /// byte goes out as soon as the hash matches.
    Verified,
    /// Verified (and stored, unless the store failed).
    Done,
    /// Failed; nothing was stored.
    Failed(Failure),
}

/// What [`Download::put`] did with a range.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Put {
    /// Nothing new (already received, or the piece is over).
    Duplicate,
    /// `new` bytes were new.
    Progress {
        /// New bytes written.
        new: u64,
    },
}

/// Called with `(generation, matched)` when the verifier has hashed a
/// whole copy of the piece.
pub type OnVerdict = Box<dyn Fn(u64, bool) + Send + Sync>;

static NEXT_ID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// Mutable state of the assembly, under one mutex held for one put.
struct Asm {
    /// Bytes `[0, received)` are in the file.
    received: u64,
    /// Received ranges beyond that prefix, sorted, disjoint, merged.
    got: Vec<(u64, u64)>,
    /// The verifier's result for this generation (`Download::gen`).
    verdict: Option<bool>,
    /// Source of each block (the last one that wrote into it).
    block_src: Vec<Source>,
    /// Bytes that came from peers.
    peer_bytes: u64,
    /// Some reader already sent bytes of this piece.
    sent_any: bool,
    /// The SHA-256 of `[0, hashed)` of this generation. `None` while the
    /// verifier has it on its thread (reading back what arrived out of
    /// order) or has finished it.
    hasher: Option<Sha256>,
    /// How much of the contiguous prefix is hashed.
    hashed: u64,
}

/// What [`Download::sources`] reports.
#[derive(Clone, Copy, Debug, Default)]
pub struct Sources {
    pub received: u64,
    pub from_peers: u64,
    pub peers: usize,
}

/// One piece being fetched.
pub struct Download {
    /// Archive-relative path (`pool/...`).
    pub rel: String,
    /// Its size from the index.
    pub size: u64,
    /// Its SHA-256 from the index.
    pub sha256: [u8; 32],
    /// The temporary file under `tmp/`.
    tmp: PathBuf,
    file: std::fs::File,
    hold_whole: u64,
    state_tx: watch::Sender<State>,
    state: watch::Receiver<State>,
    asm: Mutex<Asm>,
    /// Wakes the verifier (new bytes, a reset, the end).
    wake: tokio::sync::Notify,
    on_verdict: Mutex<Option<OnVerdict>>,
    /// Unique among downloads (a verdict names its download by it).
    pub id: u64,
    /// The mirror's Last-Modified, once known.
    last_modified: Mutex<Option<i64>>,
    /// The generation: bumped (under the `Asm` lock) when a failed copy is
    /// thrown away, and the verifier starts over. Atomic so that it reads
    /// without the lock: the torrent actor asks for it with every block,
    /// and taking the lock for it made the actor and the connection
    /// readers wait on one another (7% of a leecher's CPU).
    gen_now: std::sync::atomic::AtomicU64,
}

impl Download {
    /// A new, empty assembly writing to `file` (at `tmp`). `None` when the
    /// size does not fit this machine's memory model.
    fn new(
        rel: &str,
        size: u64,
        sha256: [u8; 32],
        tmp: PathBuf,
        file: std::fs::File,
        hold_whole: u64,
    ) -> Option<Download> {
        let blocks = usize::try_from(size.div_ceil(BLOCK)).ok()?;
        let (tx, rx) = watch::channel(State::Connecting);
        Some(Download {
            rel: rel.to_string(),
            size,
            sha256,
            tmp,
            file,
            hold_whole,
            state_tx: tx,
            state: rx,
            asm: Mutex::new(Asm {
                received: 0,
                got: Vec::new(),
                verdict: None,
                block_src: vec![Source::Mirror; blocks],
                peer_bytes: 0,
                sent_any: false,
                hasher: Some(Sha256::new()),
                hashed: 0,
            }),
            wake: tokio::sync::Notify::new(),
            on_verdict: Mutex::new(None),
            id: NEXT_ID.fetch_add(1, std::sync::atomic::Ordering::Relaxed),
            last_modified: Mutex::new(None),
            gen_now: std::sync::atomic::AtomicU64::new(0),
        })
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Asm> {
        self.asm.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The current state.
    pub fn state(&self) -> State {
        *self.state.borrow()
    }

    /// Waits until a source has started (or the download is over).
    pub async fn started(&self) -> State {
        let mut rx = self.state.clone();
        let res = rx.wait_for(|s| *s != State::Connecting).await.map(|s| *s);
        res.unwrap_or(State::Failed(Failure::Local))
    }

    /// Waits for the final state.
    pub async fn finished(&self) -> State {
        let mut rx = self.state.clone();
        let res = rx
            .wait_for(|s| matches!(s, State::Done | State::Failed(_)))
            .await
            .map(|s| *s);
        res.unwrap_or(State::Failed(Failure::Local))
    }

    /// The mirror's Last-Modified (the first one given is kept), for the
    /// stored file's mtime.
    pub fn note_last_modified(&self, t: Option<i64>) {
        if let Ok(mut lm) = self.last_modified.lock() {
            if lm.is_none() {
                *lm = t;
            }
        }
    }

    /// The mirror's Last-Modified, once known.
    pub fn last_modified(&self) -> Option<i64> {
        self.last_modified.lock().ok().and_then(|g| *g)
    }

    /// Marks that a source started delivering (readers stop waiting for
    /// the mirror's answer).
    pub fn mark_started(&self) {
        self.state_tx.send_if_modified(|s| {
            if *s == State::Connecting {
                *s = State::Streaming { available: 0 };
                true
            } else {
                false
            }
        });
    }

    /// Bytes `[0, n)` have been received.
    pub fn contiguous(&self) -> u64 {
        self.lock().received
    }

    /// The current generation (see [`Download::reset_for_retry`]).
    pub fn gen(&self) -> u64 {
        self.gen_now.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Registers who hears the verifier's result. A result that came
    /// before is delivered at once.
    pub fn on_verdict(&self, f: OnVerdict) {
        let done = {
            let a = self.lock();
            a.verdict.map(|ok| (self.gen(), ok))
        };
        if let Some((gen, ok)) = done {
            f(gen, ok);
        }
        if let Ok(mut g) = self.on_verdict.lock() {
            *g = Some(f);
        }
    }

    /// Where the bytes received so far came from (the status page's live
    /// transfers, the request log line): bytes received, of those from
    /// peers, and how many distinct peers wrote the blocks.
    pub fn sources(&self) -> Sources {
        let a = self.lock();
        let received = a.received + a.got.iter().map(|(s, e)| e - s).sum::<u64>();
        let mut peers: Vec<crate::types::PeerKey> =
            a.block_src.iter().filter_map(|s| s.peer()).collect();
        peers.sort_unstable_by_key(|k| k.get());
        peers.dedup();
        Sources {
            received,
            from_peers: a.peer_bytes,
            peers: peers.len(),
        }
    }

    /// Bytes that came from peers.
    pub fn peer_bytes(&self) -> u64 {
        self.lock().peer_bytes
    }

    /// How much of the piece may be relayed to peers now (`dt_wip`,
    /// `docs/torrent-format.md` §7.7): the mirror's contiguous bytes, the
    /// last byte only once verified. `None` once it failed, or when a peer
    /// fed it: what a peer sent is passed on only after it verified.
    pub fn relayable(&self) -> Option<u64> {
        let a = self.lock();
        match self.state() {
            State::Failed(_) => None,
            State::Verified | State::Done => Some(self.size),
            _ if a.peer_bytes > 0 => None,
            _ => Some(a.received.min(self.size.saturating_sub(1))),
        }
    }

    /// Reads `buf.len()` bytes at `offset` of the assembly's file.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// What is received: the contiguous prefix and the ranges beyond it.
    pub fn received(&self) -> (u64, Vec<(u64, u64)>) {
        let a = self.lock();
        (a.received, a.got.clone())
    }

    fn available(&self, a: &Asm) -> u64 {
        if a.peer_bytes > 0 && self.size <= self.hold_whole && !a.sent_any {
            0
        } else {
            a.received.min(self.size.saturating_sub(1))
        }
    }

    /// Writes the bytes of `[offset, offset + data.len())` that are not yet
    /// received, from source `src` (a peer or the mirror). See
    /// [`Download::put_run`].
    pub fn put(&self, offset: u64, data: &[u8], src: Source) -> std::io::Result<Put> {
        let mut new = [0u64];
        self.put_run(offset, &[data], src, &mut new)?;
        Ok(match new[0] {
            0 => Put::Duplicate,
            new => Put::Progress { new },
        })
    }

    /// Writes a run of ranges that follow one another from `offset` (the
    /// blocks one read from a peer's socket brought), the parts not yet
    /// received, in one `pwritev` per part: large writes let the page cache
    /// take large folios, which costs the kernel half as much per byte as
    /// one 16 KiB write per block. `new[i]` gets the new bytes of `run[i]`.
    /// In a piece of at most [`INLINE_HASH_MAX`] bytes, bytes that extend
    /// the hashed prefix are hashed here, from `run` while it is still in
    /// the CPU's cache; anything else wakes the verifier, which reads it
    /// back from the page cache on its own thread.
    /// The caller has checked that the range lies inside the piece.
    pub fn put_run(
        &self,
        offset: u64,
        run: &[&[u8]],
        src: Source,
        new: &mut [u64],
    ) -> std::io::Result<()> {
        let total: u64 = run.iter().map(|d| d.len() as u64).sum();
        let end = offset + total;
        if end > self.size || new.len() != run.len() {
            return Err(std::io::Error::other("range beyond the piece"));
        }
        new.iter_mut().for_each(|n| *n = 0);
        let mut a = self.lock();
        if a.received == self.size {
            return Ok(());
        }
        // The parts of the range nobody delivered yet.
        let mut parts: Vec<(u64, u64)> = Vec::with_capacity(2);
        let mut cur = offset.max(a.received);
        for &(s, e) in &a.got {
            if cur >= end {
                break;
            }
            if e <= cur {
                continue;
            }
            if s > cur {
                parts.push((cur, s.min(end)));
            }
            cur = cur.max(e);
        }
        if cur < end {
            parts.push((cur, end));
        }
        if parts.is_empty() {
            return Ok(());
        }
        let mut written = 0;
        let mut slices: Vec<&[u8]> = Vec::with_capacity(run.len());
        for &(s, e) in &parts {
            // The pieces of `run` that fall in [s, e), in order.
            slices.clear();
            let mut at = offset;
            for (i, d) in run.iter().enumerate() {
                let (ds, de) = (at, at + d.len() as u64);
                at = de;
                let (from, to) = (ds.max(s), de.min(e));
                if from < to {
                    slices.push(&d[(from - ds) as usize..(to - ds) as usize]);
                    new[i] += to - from;
                }
            }
            write_all_vectored_at(&self.file, &slices, s)?;
            written += e - s;
            let (b0, b1) = (s / BLOCK, (e - 1) / BLOCK);
            for b in b0..=b1 {
                if let Some(x) = a.block_src.get_mut(b as usize) {
                    *x = src;
                }
            }
            insert_range(&mut a.got, s, e);
            if a.hashed == s && self.size <= INLINE_HASH_MAX {
                if let Some(h) = a.hasher.as_mut() {
                    slices.iter().for_each(|d| h.update(d));
                    a.hashed = e;
                }
            }
        }
        if src != Source::Mirror {
            a.peer_bytes += written;
        }
        while let Some(&(s, e)) = a.got.first() {
            if s > a.received {
                break;
            }
            a.received = a.received.max(e);
            a.got.remove(0);
        }
        let available = self.available(&a);
        let verifier_has_work = a.hashed < a.received || a.hashed == self.size;
        drop(a);
        if verifier_has_work {
            self.wake.notify_one();
        }
        // Readers are woken per 256 KiB (and for the first bytes), not per
        // 16 KiB block: at 1 GB/s that is 4,000 wake-ups a second instead of
        // 61,000, and each reader sends bigger chunks.
        let size = self.size;
        self.state_tx.send_if_modified(|st| match st {
            State::Connecting => {
                *st = State::Streaming { available };
                true
            }
            State::Streaming { available: old }
                if available > *old
                    && (*old == 0 || available - *old >= 256 * 1024 || available + 1 >= size) =>
            {
                *old = available;
                true
            }
            _ => false,
        });
        Ok(())
    }

    /// After a failed hash: per block, its source and a digest of the bad
    /// copy (for the smart ban), then everything is forgotten so the piece
    /// can be fetched again. Returns `None` when a reader already sent
    /// bytes of it: then the piece cannot be retried under the readers,
    /// and the caller fails it.
    pub fn reset_for_retry(&self) -> Option<Vec<(Source, [u8; 32])>> {
        let mut a = self.lock();
        if a.sent_any {
            return None;
        }
        let mut blocks = Vec::with_capacity(a.block_src.len());
        let mut buf = vec![0u8; BLOCK as usize];
        for (b, &src) in a.block_src.iter().enumerate() {
            let start = b as u64 * BLOCK;
            let n = (self.size - start).min(BLOCK) as usize;
            if self.file.read_exact_at(&mut buf[..n], start).is_err() {
                return None;
            }
            blocks.push((src, Sha256::digest(&buf[..n]).into()));
        }
        a.received = 0;
        self.gen_now
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        a.verdict = None;
        a.got.clear();
        a.peer_bytes = 0;
        a.block_src.iter_mut().for_each(|s| *s = Source::Mirror);
        a.hasher = Some(Sha256::new());
        a.hashed = 0;
        drop(a);
        self.state_tx
            .send_replace(State::Streaming { available: 0 });
        self.wake.notify_one();
        Some(blocks)
    }

    /// Per-block digests of the complete (verified) copy.
    pub fn block_digests(&self) -> Vec<[u8; 32]> {
        let blocks = self.size.div_ceil(BLOCK);
        let mut out = Vec::with_capacity(blocks as usize);
        let mut buf = vec![0u8; BLOCK as usize];
        for b in 0..blocks {
            let start = b * BLOCK;
            let n = (self.size - start).min(BLOCK) as usize;
            if self.file.read_exact_at(&mut buf[..n], start).is_err() {
                return Vec::new();
            }
            out.push(Sha256::digest(&buf[..n]).into());
        }
        out
    }

    /// The piece is verified: release the last byte, then fsync and move
    /// it into the store. A failed commit (disk full at fsync) costs only
    /// the cached copy: readers still get the verified piece. Returns
    /// whether it was stored.
    ///
    /// The last byte used to wait for the two fsyncs (the file's and its
    /// directory's): in `bench/install` (300 packages, apt pipelining 10)
    /// that wait was on every file's critical path.
    pub async fn commit(self: &Arc<Self>, store: &Arc<Store>) -> bool {
        let _ = self.state_tx.send(State::Verified);
        self.wake.notify_one();
        let (dl, store2) = (self.clone(), store.clone());
        let last_modified = self.last_modified.lock().ok().and_then(|g| *g);
        let committed = tokio::task::spawn_blocking(move || {
            let res = dl.file.sync_all().and_then(|()| {
                store2.commit_piece(&dl.tmp, &dl.rel, dl.sha256, dl.size, last_modified)
            });
            if res.is_err() {
                let _ = std::fs::remove_file(&dl.tmp);
                store2.note_write_failure();
            }
            res
        })
        .await;
        let _ = self.state_tx.send(State::Done);
        self.wake.notify_one();
        match committed {
            Ok(Ok(())) => true,
            Ok(Err(e)) => {
                tracing::error!(error = %e, "verified piece served but not stored");
                false
            }
            Err(e) => {
                tracing::error!(error = %e, "verified piece served but not stored");
                false
            }
        }
    }

    /// The piece failed for good: readers' responses end short, and the
    /// temporary file goes.
    pub fn fail(&self, f: Failure) {
        if matches!(
            self.state(),
            State::Verified | State::Done | State::Failed(_)
        ) {
            return;
        }
        let _ = std::fs::remove_file(&self.tmp);
        tracing::warn!(piece = %self.rel, failure = ?f, "download failed; nothing stored");
        let _ = self.state_tx.send(State::Failed(f));
        self.wake.notify_one();
    }

    /// A handle on the file, for sendfile(2) (it stays valid when the file
    /// is renamed into the store).
    pub fn file_handle(&self) -> Option<std::fs::File> {
        self.file.try_clone().ok()
    }

    /// Hands out the ranges of `[start, end)` that may be sent, as they
    /// become available, for sendfile(2): the last byte only once the
    /// piece is verified, nothing of a held-whole piece before that.
    pub fn ranges(
        self: &Arc<Self>,
        start: u64,
        end: u64,
    ) -> mpsc::Receiver<Result<(u64, u64), ()>> {
        let (tx, rx) = mpsc::channel(16);
        let dl = self.clone();
        tokio::spawn(
            async move {
                let mut state = dl.state.clone();
                let mut pos = start;
                loop {
                    let s = *state.borrow_and_update();
                    let available = match s {
                        State::Connecting => 0,
                        State::Streaming { available } => available,
                        State::Verified | State::Done => dl.size,
                        State::Failed(_) => {
                            let _ = tx.send(Err(())).await;
                            return;
                        }
                    };
                    let upto = available.min(end);
                    if pos < upto {
                        // From here on the piece cannot be retried silently.
                        dl.lock().sent_any = true;
                        if tx.send(Ok((pos, upto))).await.is_err() {
                            return; // apt went away
                        }
                        pos = upto;
                    }
                    if pos >= end {
                        return;
                    }
                    if state.changed().await.is_err()
                        && !matches!(*state.borrow(), State::Verified | State::Done)
                    {
                        let _ = tx.send(Err(())).await;
                        return;
                    }
                }
            }
            .in_current_span(),
        );
        rx
    }
}

/// The verifier of one download: finishes the hash of each whole copy and
/// reports its result. It reads the bytes back from the page cache, 4 MiB
/// at a time, on a blocking thread, so that a connection's reader never
/// stops reading while megabytes are hashed; only a small piece
/// ([`INLINE_HASH_MAX`]) is hashed by [`Download::put_run`] as its bytes
/// arrive in order.
async fn verify(dl: Arc<Download>) {
    const CHUNK: u64 = 4 << 20;
    enum Job {
        ReadBack {
            gen: u64,
            hasher: Sha256,
            from: u64,
            to: u64,
        },
        Finish {
            gen: u64,
            digest: [u8; 32],
        },
    }
    loop {
        if matches!(dl.state(), State::Verified | State::Done | State::Failed(_)) {
            return;
        }
        let job = {
            let mut a = dl.lock();
            let gen = dl.gen();
            if a.hashed == dl.size && a.verdict.is_none() {
                a.hasher.take().map(|h| Job::Finish {
                    gen,
                    digest: h.finalize().into(),
                })
            } else if a.hashed < a.received {
                let (from, to) = (a.hashed, a.received.min(a.hashed + CHUNK));
                a.hasher.take().map(|hasher| Job::ReadBack {
                    gen,
                    hasher,
                    from,
                    to,
                })
            } else {
                None
            }
        };
        match job {
            None => dl.wake.notified().await,
            Some(Job::ReadBack {
                gen,
                mut hasher,
                from,
                to,
            }) => {
                let dl2 = dl.clone();
                // Taken from the pool for this chunk only and given back
                // right after it: a download waiting for the network
                // holds no buffer (lost only if the read fails or its
                // thread panics).
                let mut b = take_read_buf();
                let res = tokio::task::spawn_blocking(move || {
                    // Grown (and zeroed) only past what it ever held.
                    let n = (to - from) as usize;
                    if b.len() < n {
                        b.resize(n, 0);
                    }
                    let r = dl2.file.read_exact_at(&mut b[..n], from);
                    if r.is_ok() {
                        hasher.update(&b[..n]);
                    }
                    (r, hasher, b)
                })
                .await;
                match res {
                    Ok((Ok(()), h, b)) => {
                        give_read_buf(b);
                        let mut a = dl.lock();
                        // A reset in between started a new hash already.
                        if dl.gen() == gen {
                            a.hasher = Some(h);
                            a.hashed = to;
                        }
                    }
                    Ok((Err(e), _, _)) => {
                        tracing::error!(error = %e, "cannot read back a download to verify it");
                        dl.fail(Failure::Local);
                        return;
                    }
                    Err(_) => return,
                }
            }
            Some(Job::Finish { gen, digest }) => {
                let ok = digest == dl.sha256;
                let still = {
                    let mut a = dl.lock();
                    if dl.gen() == gen {
                        a.verdict = Some(ok);
                        true
                    } else {
                        false
                    }
                };
                if still {
                    if let Ok(cb) = dl.on_verdict.lock() {
                        if let Some(f) = cb.as_ref() {
                            f(gen, ok);
                        }
                    }
                }
            }
        }
    }
}

/// Read-back buffers between the verifiers' reads. A fresh 4 MiB buffer
/// per download was zeroed and page-faulted in each time: 5 % of the
/// leecher's CPU in `bench/install` (300 files). A verifier takes one for
/// each chunk it reads back and gives it back at once, so a download that
/// waits for the network holds none. One is kept: an idle daemon holds at
/// most 4 MiB here (issue 12's RSS goal is 40 MB per daemon).
static READ_BACK: Mutex<Vec<Vec<u8>>> = Mutex::new(Vec::new());
const READ_BACK_KEPT: usize = 1;

/// A buffer from the pool, or a new empty one.
fn take_read_buf() -> Vec<u8> {
    let kept = READ_BACK.lock().ok().and_then(|mut v| v.pop());
    kept.unwrap_or_default()
}

/// Back to the pool, if it has room.
fn give_read_buf(b: Vec<u8>) {
    if let Ok(mut kept) = READ_BACK.lock() {
        if kept.len() < READ_BACK_KEPT {
            kept.push(b);
        }
    }
}

/// `pwritev` of `slices` at `offset`, all of it (a short write continues
/// where it stopped).
fn write_all_vectored_at(
    file: &std::fs::File,
    slices: &[&[u8]],
    offset: u64,
) -> std::io::Result<()> {
    let mut rest: Vec<&[u8]> = slices.iter().copied().filter(|d| !d.is_empty()).collect();
    let mut at = offset;
    while !rest.is_empty() {
        let iov: Vec<std::io::IoSlice<'_>> =
            rest.iter().map(|d| std::io::IoSlice::new(d)).collect();
        let n = match rustix::io::pwritev(file, &iov, at) {
            Ok(0) => return Err(std::io::ErrorKind::WriteZero.into()),
            Ok(n) => n,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        };
        at += n as u64;
        let mut skip = n;
        while let Some(first) = rest.first_mut() {
            if skip < first.len() {
                *first = &first[skip..];
                break;
            }
            skip -= first.len();
            rest.remove(0);
        }
    }
    Ok(())
}

/// Adds `[s, e)` to a sorted list of disjoint ranges, merging neighbours.
fn insert_range(v: &mut Vec<(u64, u64)>, s: u64, e: u64) {
    let i = v.partition_point(|&(_, pe)| pe < s);
    let mut j = i;
    let (mut ns, mut ne) = (s, e);
    while j < v.len() && v[j].0 <= ne {
        ns = ns.min(v[j].0);
        ne = ne.max(v[j].1);
        j += 1;
    }
    v.splice(i..j, [(ns, ne)]);
}

/// In-flight downloads by (archive-relative path, SHA-256).
type Inflight = HashMap<(String, [u8; 32]), Arc<Download>>;

/// Downloads in flight, by piece: everyone asking for the same piece at
/// once shares one.
pub struct Downloads {
    inflight: Mutex<Inflight>,
    store: Arc<Store>,
    hold_whole: u64,
}

impl Downloads {
    /// A download manager.
    pub fn new(store: Arc<Store>, hold_whole: u64) -> Self {
        Downloads {
            inflight: Mutex::new(HashMap::new()),
            store,
            hold_whole,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inflight> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Joins the download of piece `rel`, or creates it. The bool is true
    /// when it was created: the caller then starts its sources.
    pub fn get_or_create(
        self: &Arc<Self>,
        rel: &str,
        sha256: [u8; 32],
        size: u64,
    ) -> Result<(Arc<Download>, bool), Failure> {
        let key = (rel.to_string(), sha256);
        let mut map = self.lock();
        if let Some(d) = map.get(&key) {
            return Ok((d.clone(), false));
        }
        let (tmp, file) = self.store.temp_file().map_err(|e| {
            tracing::error!(error = %e, "cannot create a temporary file");
            Failure::Local
        })?;
        // The piece's blocks are reserved at once: a disk without room for
        // it fails here, before a byte is fetched (apt then gets a verified
        // pass-through), and the writes that follow skip ext4's per-page
        // delayed allocation (a fifth less kernel time per byte written).
        // A file system without fallocate just goes on.
        match rustix::fs::fallocate(&file, rustix::fs::FallocateFlags::KEEP_SIZE, 0, size) {
            Ok(()) => {}
            Err(rustix::io::Errno::NOSPC | rustix::io::Errno::DQUOT) => {
                tracing::warn!(size, "no room on disk for the piece");
                let _ = std::fs::remove_file(&tmp);
                return Err(Failure::Local);
            }
            Err(_) => {}
        }
        let dl = Arc::new(
            Download::new(rel, size, sha256, tmp, file, self.hold_whole).ok_or(Failure::Local)?,
        );
        map.insert(key.clone(), dl.clone());
        drop(map);
        tokio::spawn(verify(dl.clone()).in_current_span());
        // Forget it once it is over, so the next request starts afresh
        // (after a failure) or finds the piece in the store.
        let (this, dl2) = (self.clone(), dl.clone());
        tokio::spawn(async move {
            dl2.finished().await;
            this.lock().remove(&key);
        });
        Ok((dl, true))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::PeerKey;
    use std::time::Duration;

    fn p(n: u32) -> Source {
        Source::Peer(PeerKey::new(n).expect("non-zero"))
    }

    fn download(data: &[u8], hold_whole: u64) -> (tempfile::TempDir, Arc<Download>) {
        let dir = tempfile::tempdir().expect("tempdir");
        let tmp = dir.path().join("piece");
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&tmp)
            .expect("tmp file");
        let dl = Download::new(
            "pool/x.deb",
            data.len() as u64,
            Sha256::digest(data).into(),
            tmp,
            file,
            hold_whole,
        )
        .expect("a size that fits");
        (dir, Arc::new(dl))
    }

    fn data(n: usize) -> Vec<u8> {
        (0..n).map(|i| (i * 7 + i / 251) as u8).collect()
    }

    /// Runs the verifier until it reports; returns (generation, matched).
    async fn verdict(dl: &Arc<Download>) -> (u64, bool) {
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        dl.on_verdict(Box::new(move |gen, ok| {
            let _ = tx.send((gen, ok));
        }));
        let task = tokio::spawn(verify(dl.clone()));
        let v = tokio::time::timeout(Duration::from_secs(10), rx.recv())
            .await
            .expect("a verdict within 10 s")
            .expect("a verdict");
        task.abort();
        v
    }

    #[tokio::test]
    async fn blocks_in_any_order_verify_and_readers_see_only_the_contiguous_prefix() {
        let d = data(5 * BLOCK as usize + 123);
        let (_dir, dl) = download(&d, 0);
        let b = BLOCK as usize;
        // (offset, len, source, expected put, contiguous afterwards)
        let steps: &[(usize, usize, Source, Put, u64)] = &[
            (2 * b, b, p(7), Put::Progress { new: b as u64 }, 0),
            (0, b, p(7), Put::Progress { new: b as u64 }, b as u64),
            (0, b, p(8), Put::Duplicate, b as u64),
            (b, b, p(8), Put::Progress { new: b as u64 }, 3 * b as u64),
            // The mirror overlaps what peers sent: only new bytes count.
            (
                2 * b,
                3 * b,
                Source::Mirror,
                Put::Progress { new: 2 * b as u64 },
                5 * b as u64,
            ),
            (
                5 * b,
                123,
                p(9),
                Put::Progress { new: 123 },
                5 * b as u64 + 123,
            ),
        ];
        for &(off, len, src, want, contiguous) in steps {
            let got = dl.put(off as u64, &d[off..off + len], src).expect("put");
            assert_eq!(got, want, "put {off}+{len} from {src:?}");
            assert_eq!(dl.contiguous(), contiguous);
        }
        // The last byte is held back until the verifier has matched it.
        assert_eq!(
            dl.state(),
            State::Streaming {
                available: dl.size - 1
            }
        );
        assert_eq!(dl.peer_bytes(), 3 * BLOCK + 123);
        assert_eq!(verdict(&dl).await, (0, true));
        assert_eq!(dl.put(0, &d[..10], p(1)).expect("put"), Put::Duplicate);
    }

    /// Who hashes the bytes that arrive in order: the writer, from its
    /// buffer, for a piece of at most `INLINE_HASH_MAX`; the verifier,
    /// reading them back, for a larger one. Both verify, and a wrong copy
    /// of a large piece fails.
    #[tokio::test]
    async fn small_pieces_are_hashed_as_written_large_ones_by_the_verifier() {
        let max = INLINE_HASH_MAX as usize;
        for (size, inline) in [(max, true), (max + 1, false), (3 * max + 5, false)] {
            let d = data(size);
            let (_dir, dl) = download(&d, 0);
            for (i, chunk) in d.chunks(256 * 1024).enumerate() {
                let off = (i * 256 * 1024) as u64;
                dl.put(off, chunk, p(1)).expect("put");
            }
            let hashed = dl.lock().hashed;
            assert_eq!(hashed == dl.size, inline, "size {size}: hashed {hashed}");
            assert_eq!(verdict(&dl).await, (0, true), "size {size}");
        }
        let mut d = data(2 * max);
        let (_dir, dl) = download(&d, 0);
        d[max + 7] ^= 1;
        dl.put(0, &d, p(1)).expect("put");
        assert_eq!(verdict(&dl).await, (0, false));
    }

    /// The verifiers' read-back buffers are kept for the next download: a
    /// buffer that held a longer piece's bytes must not leak them into a
    /// shorter one's hash, and the pool stays bounded.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn read_back_buffers_are_reused_without_stale_bytes() {
        let max = INLINE_HASH_MAX as usize;
        let long = data(5 * max + 3);
        let (_dir, dl) = download(&long, 0);
        dl.put(0, &long, p(1)).expect("put");
        assert_eq!(verdict(&dl).await, (0, true));
        // The same bytes as the long piece's start, one changed at the
        // end: a hash over the buffer's old length would see the old byte.
        let mut short = long[..max + 100].to_vec();
        let (_dir2, dl2) = download(&short, 0);
        let last = short.len() - 1;
        short[last] ^= 1;
        dl2.put(0, &short, p(1)).expect("put");
        assert_eq!(verdict(&dl2).await, (0, false));
        short[last] ^= 1;
        let (_dir3, dl3) = download(&short, 0);
        dl3.put(0, &short, p(1)).expect("put");
        assert_eq!(verdict(&dl3).await, (0, true));
        let kept = READ_BACK.lock().expect("pool").len();
        assert!(kept <= READ_BACK_KEPT, "{kept} buffers kept");
    }

    /// apt gets the last byte once the hash matches, not once the file is
    /// in the store: a slow disk (here, a commit held back) delays only
    /// the store. A second request meanwhile joins the same assembly.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_last_byte_goes_out_before_the_store_has_the_file() {
        let dir = tempfile::tempdir().expect("tempdir");
        let (store, _) =
            Store::open(dir.path(), u64::MAX, Box::new(|_: &str| true)).expect("store");
        let downloads = Arc::new(Downloads::new(store.clone(), 0));
        let d = data(3 * BLOCK as usize + 77);
        let sha: [u8; 32] = Sha256::digest(&d).into();
        let (dl, created) = downloads
            .get_or_create("pool/x.deb", sha, d.len() as u64)
            .expect("an assembly");
        assert!(created);
        let (tx, mut verdicts) = tokio::sync::mpsc::unbounded_channel();
        dl.on_verdict(Box::new(move |_, ok| {
            let _ = tx.send(ok);
        }));
        dl.put(0, &d, Source::Mirror).expect("put");
        let ok = tokio::time::timeout(Duration::from_secs(10), verdicts.recv()).await;
        assert_eq!(ok.ok().flatten(), Some(true));
        let mut ranges = dl.ranges(0, dl.size);
        // A thread holds the commit lock until told to let go.
        let (locked_tx, locked_rx) = std::sync::mpsc::channel();
        let (release, release_rx) = std::sync::mpsc::channel::<()>();
        let holder = std::thread::spawn({
            let store = store.clone();
            move || {
                let _held = store.hold_commits();
                let _ = locked_tx.send(());
                let _ = release_rx.recv();
            }
        });
        locked_rx.recv().expect("the commit lock is held");
        let committing = tokio::spawn({
            let (dl, store) = (dl.clone(), store.clone());
            async move { dl.commit(&store).await }
        });
        // Every byte, the last one included, while the commit waits.
        let mut upto = 0;
        while upto < dl.size {
            let r = tokio::time::timeout(Duration::from_secs(10), ranges.recv()).await;
            match r.ok().flatten() {
                Some(Ok((_, e))) => upto = e,
                other => panic!("the reader got {other:?} at {upto}"),
            }
        }
        assert_eq!(dl.state(), State::Verified);
        assert!(store.get("pool/x.deb", &sha).is_none(), "stored already");
        let (again, created) = downloads
            .get_or_create("pool/x.deb", sha, d.len() as u64)
            .expect("the same assembly");
        assert!(!created && Arc::ptr_eq(&again, &dl));
        drop(release);
        holder.join().expect("the holder thread");
        let stored = tokio::time::timeout(Duration::from_secs(10), committing).await;
        assert!(matches!(stored, Ok(Ok(true))), "{stored:?}");
        assert_eq!(dl.state(), State::Done);
        assert!(store.get("pool/x.deb", &sha).is_some(), "not stored");
    }

    #[tokio::test]
    async fn a_corrupt_block_fails_the_hash_and_a_retry_starts_clean() {
        let d = data(3 * BLOCK as usize);
        let (_dir, dl) = download(&d, 1 << 20);
        let mut bad = d.clone();
        bad[BLOCK as usize + 5] ^= 0xff;
        let b = BLOCK as usize;
        dl.put(0, &d[..b], p(1)).expect("put");
        // Held whole: a piece that took peer bytes shows apt nothing yet.
        assert_eq!(dl.state(), State::Streaming { available: 0 });
        dl.put(b as u64, &bad[b..2 * b], p(2)).expect("put");
        dl.put(2 * b as u64, &d[2 * b..], p(1)).expect("put");
        assert_eq!(verdict(&dl).await, (0, false));
        let suspect = dl
            .reset_for_retry()
            .expect("nothing was sent, so it can retry");
        assert_eq!(
            suspect.iter().map(|(s, _)| *s).collect::<Vec<_>>(),
            vec![p(1), p(2), p(1)]
        );
        assert_eq!((dl.contiguous(), dl.gen()), (0, 1));
        dl.put(0, &d, Source::Mirror).expect("put");
        assert_eq!(verdict(&dl).await, (1, true));
        let good = dl.block_digests();
        let differs: Vec<usize> = (0..3).filter(|&i| suspect[i].1 != good[i]).collect();
        assert_eq!(differs, vec![1], "only the corrupt block differs");
    }

    #[test]
    fn streamed_pieces_cannot_be_retried_under_a_reader() {
        let d = data(2 * BLOCK as usize);
        let (_dir, dl) = download(&d, 0);
        dl.put(0, &d[..BLOCK as usize], p(1)).expect("put");
        dl.lock().sent_any = true;
        assert!(dl.reset_for_retry().is_none());
    }

    #[test]
    fn ranges_beyond_the_piece_are_refused() {
        let d = data(100);
        let (_dir, dl) = download(&d, 0);
        assert!(dl.put(90, &d[..20], p(1)).is_err());
    }

    #[test]
    fn ranges_merge() {
        let cases: &[(&[(u64, u64)], (u64, u64), &[(u64, u64)])] = &[
            (&[], (0, 5), &[(0, 5)]),
            (&[(0, 5)], (5, 9), &[(0, 9)]),
            (&[(10, 20)], (0, 5), &[(0, 5), (10, 20)]),
            (&[(0, 5), (10, 20)], (5, 10), &[(0, 20)]),
            (&[(0, 5), (10, 20), (30, 40)], (12, 35), &[(0, 5), (10, 40)]),
            (&[(10, 20)], (25, 30), &[(10, 20), (25, 30)]),
            (&[(10, 20)], (12, 15), &[(10, 20)]),
        ];
        for (before, (s, e), after) in cases {
            let mut v = before.to_vec();
            insert_range(&mut v, *s, *e);
            assert_eq!(&v, after, "insert {s}..{e} into {before:?}");
        }
    }
}
