//! The verified content store and the index cache, under the data folder:
//!
//! ```text
//! DATA/state.db                          SQLite (see db.rs)
//! DATA/store/pool/main/h/hello/hello_2.10-3_amd64.deb   verified package files
//! DATA/index/http/deb.debian.org:80/debian/dists/...    last good index files
//! DATA/tmp/                              downloads in progress (emptied at start)
//! ```
//!
//! Invariants (what makes kill -9 at any moment safe):
//! 1. A file under `store/` was verified (SHA-256 over the whole file,
//!    equal to the index's hash) before it got there: downloads are written
//!    under `tmp/`, fsynced, verified, then renamed into place.
//! 2. The in-memory map, and with it what is served, only lists a file after
//!    the rename. At start-up, rows whose file is missing or has the wrong
//!    size are dropped. A file found without a row is hashed again before it
//!    is served (`adopt`): that is how `debtorrent import` and a crash
//!    between rename and row insert end up in the store.
//! 3. `tmp/` is emptied at start, so a partial download is never resumed
//!    from unverified bytes.
//!
//! Store paths are archive-relative paths that passed debtorrent-gen's path
//! rules (no `..`, no absolute paths), so they cannot leave `store/`.

use std::collections::HashMap;
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use anyhow::Context;
use sha2::{Digest, Sha256};

use crate::db::{Db, Loaded, PieceRow};
use crate::url::{Scheme, UpstreamUrl};

/// What the store knows about a stored piece.
#[derive(Clone, Copy, Debug)]
pub struct Meta {
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its size.
    pub size: u64,
    /// Upstream Last-Modified (Unix seconds), or when it was stored.
    pub mtime: i64,
    /// Last served (Unix seconds).
    pub last_used: i64,
    /// `last_used` changed since the last flush to the database.
    dirty: bool,
}

/// The stored pieces by path, and one path per SHA-256 (content that
/// peers and other suites name by its hash, whatever path we stored it at).
#[derive(Default)]
struct Pieces {
    by_path: HashMap<String, Meta>,
    by_sha: HashMap<[u8; 32], String>,
}

impl Pieces {
    fn insert(&mut self, rel: &str, meta: Meta) -> Option<Meta> {
        let old = self.by_path.insert(rel.to_string(), meta);
        if let Some(o) = &old {
            if o.sha256 != meta.sha256 && self.by_sha.get(&o.sha256).is_some_and(|p| p == rel) {
                self.by_sha.remove(&o.sha256);
            }
        }
        self.by_sha.insert(meta.sha256, rel.to_string());
        old
    }

    fn remove(&mut self, rel: &str) -> Option<Meta> {
        let m = self.by_path.remove(rel)?;
        if self.by_sha.get(&m.sha256).is_some_and(|p| p == rel) {
            self.by_sha.remove(&m.sha256);
        }
        Some(m)
    }
}

/// A store file kept open: its path, the content it was opened as, and
/// the descriptor that [`Store::open_piece`] hands out copies of.
struct OpenFile {
    rel: String,
    sha256: [u8; 32],
    file: File,
}

/// How many store files stay open for the apt front end. Opening the file
/// (and closing it) per response was an eighth of the daemon's CPU when
/// `wrk` fetched one small package over and over (`bench/daemon` (b)); a
/// `dup` of a kept descriptor costs a fraction of that. The bound keeps
/// descriptors, and the space of files pruned while open, small.
const OPEN_FILES: usize = 32;

/// The content store.
pub struct Store {
    store_dir: PathBuf,
    tmp_dir: PathBuf,
    index_dir: PathBuf,
    pieces: Mutex<Pieces>,
    db: Db,
    total: AtomicU64,
    limit: u64,
    seq: AtomicU64,
    /// Until when (Unix seconds) new pieces are not written, after a write
    /// failed (disk full): requests are served by verified pass-through.
    degraded_until: std::sync::atomic::AtomicI64,
    /// Pieces that some registered torrent lists, for pruning decisions.
    referenced: Box<dyn Fn(&str) -> bool + Send + Sync>,
    /// Held around a file's move into the store and its listing, and
    /// around a pruned file's unlisting and removal: a pass never removes
    /// a file that a commit just put at the same path.
    files: Mutex<()>,
    /// One prune pass at a time.
    pruning: Mutex<()>,
    /// A commit found a pass under way and asks for another.
    prune_again: std::sync::atomic::AtomicBool,
    /// Files apt has that are on their way into the store ([`CommitTicket`]).
    commits: std::sync::atomic::AtomicUsize,
    /// Open store files, most recently used first ([`Store::open_piece`]).
    open_files: Mutex<std::collections::VecDeque<OpenFile>>,
    /// Bumped whenever a listed file is unlisted or replaced: an open that
    /// raced with it is not cached.
    epoch: AtomicU64,
    /// An exclusive lock on `DATA/lock` for the life of the store: a second
    /// daemon (or `debtorrent import`) on the same folder would empty its
    /// `tmp/` under the running one.
    _lock: File,
}

/// Seconds since the Unix epoch.
pub fn now() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl Store {
    /// Opens the data folder: creates it, empties `tmp/`, opens the
    /// database and reconciles its rows with the files.
    pub fn open(
        data_dir: &Path,
        limit: u64,
        referenced: Box<dyn Fn(&str) -> bool + Send + Sync>,
    ) -> anyhow::Result<(Arc<Store>, Loaded)> {
        let store_dir = data_dir.join("store");
        let tmp_dir = data_dir.join("tmp");
        let index_dir = data_dir.join("index");
        for d in [data_dir, &store_dir, &index_dir] {
            fs::create_dir_all(d).with_context(|| format!("cannot create {}", d.display()))?;
        }
        let lock_path = data_dir.join("lock");
        let lock = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .with_context(|| format!("cannot open {}", lock_path.display()))?;
        if rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive).is_err() {
            anyhow::bail!(
                "another debtorrent uses the data folder {} (stop it first)",
                data_dir.display()
            );
        }
        // Empty tmp/ rather than delete it: it may be a mountpoint.
        fs::create_dir_all(&tmp_dir)
            .with_context(|| format!("cannot create {}", tmp_dir.display()))?;
        let entries =
            fs::read_dir(&tmp_dir).with_context(|| format!("cannot read {}", tmp_dir.display()))?;
        for entry in entries {
            let p = entry?.path();
            let res = if p.is_dir() {
                fs::remove_dir_all(&p)
            } else {
                fs::remove_file(&p)
            };
            res.with_context(|| format!("cannot remove {}", p.display()))?;
        }
        let (db, mut loaded) = Db::open(&data_dir.join("state.db"))?;
        let mut map = Pieces::default();
        let mut total = 0;
        let mut dropped = 0;
        for row in std::mem::take(&mut loaded.pieces) {
            let ok = fs::metadata(store_dir.join(&row.path))
                .is_ok_and(|m| m.is_file() && m.len() == row.size);
            if !ok || debtorrent_gen::check_path(row.path.as_bytes()).is_err() {
                db.del_piece(&row.path);
                dropped += 1;
                continue;
            }
            total += row.size;
            map.insert(
                &row.path,
                Meta {
                    sha256: row.sha256,
                    size: row.size,
                    mtime: row.mtime.unwrap_or(row.stored_at),
                    last_used: row.last_used,
                    dirty: false,
                },
            );
            loaded.pieces.push(row);
        }
        if dropped > 0 {
            tracing::warn!(
                dropped,
                "state rows without a matching store file were removed"
            );
        }
        tracing::info!(pieces = map.by_path.len(), bytes = total, "store opened");
        let store = Store {
            store_dir,
            tmp_dir,
            index_dir,
            pieces: Mutex::new(map),
            db,
            total: AtomicU64::new(total),
            limit,
            seq: AtomicU64::new(0),
            degraded_until: std::sync::atomic::AtomicI64::new(0),
            referenced,
            files: Mutex::new(()),
            pruning: Mutex::new(()),
            prune_again: std::sync::atomic::AtomicBool::new(false),
            commits: std::sync::atomic::AtomicUsize::new(0),
            open_files: Mutex::new(std::collections::VecDeque::new()),
            epoch: AtomicU64::new(0),
            _lock: lock,
        };
        Ok((Arc::new(store), loaded))
    }

    /// The database handle.
    pub fn db(&self) -> &Db {
        &self.db
    }

    /// Counts a file apt already has (a verified download, a whole index
    /// file) as on its way into the store until the ticket drops, so that
    /// a shutdown waits for it: apt got its last byte before the fsync,
    /// and a SIGTERM right after `apt-get` must not lose the file.
    pub fn commit_ticket(self: &Arc<Self>) -> CommitTicket {
        self.commits.fetch_add(1, Ordering::SeqCst);
        CommitTicket(self.clone())
    }

    /// Files apt has that are not yet in the store or registered (or
    /// given up): verified downloads, and whole index files.
    pub fn commits_in_flight(&self) -> usize {
        self.commits.load(Ordering::SeqCst)
    }

    /// Total bytes of stored pieces.
    pub fn total_bytes(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Number of stored pieces.
    pub fn piece_count(&self) -> usize {
        self.lock().by_path.len()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Pieces> {
        // A panic while holding this lock leaves a consistent map (every
        // critical section is a single insert, remove or lookup).
        self.pieces.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Where piece `rel` lives.
    pub fn piece_path(&self, rel: &str) -> PathBuf {
        self.store_dir.join(rel)
    }

    /// Opens stored piece `rel`, which the caller found listed as `sha`,
    /// for reading at explicit offsets (sendfile, pread: the copies share
    /// one file position, which nobody uses). The last [`OPEN_FILES`]
    /// stay open, and a hit is a `dup` of the kept descriptor. A file is
    /// dropped from them when it is unlisted or replaced, so that a pruned
    /// file's space is freed when the last response reading it ends.
    pub fn open_piece(&self, rel: &str, sha: &[u8; 32]) -> io::Result<File> {
        let lock = || self.open_files.lock().unwrap_or_else(|e| e.into_inner());
        {
            let mut open = lock();
            if let Some(i) = open.iter().position(|o| &o.sha256 == sha && o.rel == rel) {
                let f = open[i].file.try_clone();
                if i > 0 {
                    if let Some(o) = open.remove(i) {
                        open.push_front(o);
                    }
                }
                return f;
            }
        }
        let epoch = self.epoch.load(Ordering::SeqCst);
        let file = File::open(self.piece_path(rel))?;
        // Kept only if nothing was unlisted or replaced since the caller's
        // look-up (then the file may not be the listed one any more);
        // checked under the lock that `forget_open` takes after bumping
        // the epoch.
        let mut open = lock();
        if self.epoch.load(Ordering::SeqCst) == epoch && self.get(rel, sha).is_some() {
            if let Ok(kept) = file.try_clone() {
                open.push_front(OpenFile {
                    rel: rel.to_string(),
                    sha256: *sha,
                    file: kept,
                });
                open.truncate(OPEN_FILES);
            }
        }
        Ok(file)
    }

    /// `rel` is unlisted or replaced: no kept descriptor of it survives,
    /// and opens under way are not kept.
    fn forget_open(&self, rel: &str) {
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.open_files
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|o| o.rel != rel);
    }

    /// The stored piece at `rel`, if it is the one with hash `sha`.
    pub fn get(&self, rel: &str, sha: &[u8; 32]) -> Option<Meta> {
        self.lock()
            .by_path
            .get(rel)
            .filter(|m| &m.sha256 == sha)
            .copied()
    }

    /// The stored piece at `rel`, whatever its hash.
    pub fn get_any(&self, rel: &str) -> Option<Meta> {
        self.lock().by_path.get(rel).copied()
    }

    /// The content `sha`, wherever it is stored: its path and meta.
    pub fn find(&self, sha: &[u8; 32]) -> Option<(String, Meta)> {
        let p = self.lock();
        let rel = p.by_sha.get(sha)?;
        let m = p.by_path.get(rel).filter(|m| &m.sha256 == sha)?;
        Some((rel.clone(), *m))
    }

    /// Records a use of `rel` (for least-recently-used pruning). Only the
    /// in-memory map changes here; [`Store::flush_touches`] writes the
    /// changed times to the database periodically, so a busy store does
    /// not cost a database write per request. A crash loses at most one
    /// flush interval of recency, which only pruning order depends on.
    pub fn touch(&self, rel: &str) {
        let now = now();
        if let Some(m) = self.lock().by_path.get_mut(rel) {
            if m.last_used != now {
                m.last_used = now;
                m.dirty = true;
            }
        }
    }

    /// Writes changed `last_used` times to the database.
    pub fn flush_touches(&self) {
        let changed: Vec<(String, i64)> = self
            .lock()
            .by_path
            .iter_mut()
            .filter(|(_, m)| m.dirty)
            .map(|(p, m)| {
                m.dirty = false;
                (p.clone(), m.last_used)
            })
            .collect();
        for (p, t) in changed {
            self.db.touch(&p, t);
        }
    }

    /// Whether a new piece of `size` bytes should be written: false while
    /// a recent write failed, or when `tmp/` has less than `size` plus a
    /// margin free. The caller then streams the piece through, verified,
    /// without storing it.
    pub fn can_store(&self, size: u64) -> bool {
        if now() < self.degraded_until.load(Ordering::Relaxed) {
            return false;
        }
        match rustix::fs::statvfs(&self.tmp_dir) {
            Ok(st) => {
                // Headroom for indexes and the database: 64 MiB, or a tenth
                // of a small filesystem.
                let total = st.f_blocks.saturating_mul(st.f_frsize);
                let margin = (64u64 << 20).min(total / 10);
                st.f_bavail.saturating_mul(st.f_frsize) >= size.saturating_add(margin)
            }
            Err(_) => true,
        }
    }

    /// Records a failed write: stop storing new pieces for a minute.
    pub fn note_write_failure(&self) {
        self.degraded_until.store(now() + 60, Ordering::Relaxed);
    }

    /// A new file under `tmp/`.
    pub fn temp_file(&self) -> io::Result<(PathBuf, File)> {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let path = self.tmp_dir.join(format!("dl-{}-{n}", std::process::id()));
        let f = fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        Ok((path, f))
    }

    /// Holds the lock a commit takes to move a file into the store: a
    /// test stands for a slow disk with it.
    #[cfg(test)]
    pub(crate) fn hold_commits(&self) -> std::sync::MutexGuard<'_, ()> {
        self.files.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves a verified, fsynced temporary file into the store (blocking).
    pub fn commit_piece(
        &self,
        tmp: &Path,
        rel: &str,
        sha256: [u8; 32],
        size: u64,
        mtime: Option<i64>,
    ) -> io::Result<()> {
        debtorrent_gen::check_path(rel.as_bytes())
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "unsafe store path"))?;
        let dest = self.piece_path(rel);
        if let Some(parent) = dest.parent() {
            fs::create_dir_all(parent)?;
        }
        {
            let _files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            fs::rename(tmp, &dest)?;
            if let Some(parent) = dest.parent() {
                // Make the rename itself durable.
                File::open(parent)?.sync_all()?;
            }
            self.insert(rel, sha256, size, mtime);
        }
        self.prune_if_needed();
        Ok(())
    }

    fn insert(&self, rel: &str, sha256: [u8; 32], size: u64, mtime: Option<i64>) {
        let now = now();
        let meta = Meta {
            sha256,
            size,
            mtime: mtime.unwrap_or(now),
            last_used: now,
            dirty: false,
        };
        self.db.put_piece(PieceRow {
            path: rel.to_string(),
            sha256,
            size,
            stored_at: now,
            last_used: now,
            mtime,
        });
        let old = self.lock().insert(rel, meta);
        if let Some(old) = old {
            self.total.fetch_sub(old.size, Ordering::Relaxed);
            // A new file at a listed path (committed over the old one).
            self.forget_open(rel);
        }
        self.total.fetch_add(size, Ordering::Relaxed);
    }

    /// A file at `rel` that the map does not list (imported, or left by a
    /// crash after its rename): hashes it and, if it is the expected piece,
    /// lists it (blocking). Anything else there is left alone; it will be
    /// replaced when the piece is downloaded.
    pub fn adopt(&self, rel: &str, sha256: &[u8; 32], size: u64) -> Option<Meta> {
        let path = self.piece_path(rel);
        let md = fs::metadata(&path).ok()?;
        if !md.is_file() || md.len() != size {
            return None;
        }
        if &sha256_file(&path).ok()? != sha256 {
            return None;
        }
        let mtime = md
            .modified()
            .ok()
            .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
            .map(|d| d.as_secs() as i64);
        self.insert(rel, *sha256, size, mtime);
        tracing::info!(path = rel, "adopted a verified file found in the store");
        self.get(rel, sha256)
    }

    /// Puts a file that should be `sha256` into the store at `rel` as a hard
    /// link, so that an index file kept as the last good copy and shared
    /// with peers takes its space once; where linking fails (another file
    /// system), a checked copy. The link is hashed before it is listed:
    /// `src` is a path another writer may have replaced since the caller
    /// hashed its bytes. Blocking.
    pub fn link_verified(
        &self,
        src: &Path,
        rel: &str,
        sha256: [u8; 32],
        size: u64,
    ) -> io::Result<()> {
        if self.get(rel, &sha256).is_some() {
            return Ok(());
        }
        if fs::metadata(src)?.len() != size {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "size changed"));
        }
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let tmp = self.tmp_dir.join(format!("ln-{}-{n}", std::process::id()));
        match fs::hard_link(src, &tmp) {
            Ok(()) => {
                let same = fs::metadata(&tmp).is_ok_and(|m| m.len() == size)
                    && sha256_file(&tmp).is_ok_and(|h| h == sha256);
                if !same {
                    let _ = fs::remove_file(&tmp);
                    return Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "the file changed before it was linked",
                    ));
                }
                let res = self.commit_piece(&tmp, rel, sha256, size, None);
                if res.is_err() {
                    let _ = fs::remove_file(&tmp);
                }
                res
            }
            Err(_) => self.import_file(src, rel, sha256, size),
        }
    }

    /// Copies a file (already hashed by the caller to be `sha256`) into the
    /// store: used by `debtorrent import`. Blocking.
    pub fn import_file(
        &self,
        src: &Path,
        rel: &str,
        sha256: [u8; 32],
        size: u64,
    ) -> io::Result<()> {
        let (tmp, mut out) = self.temp_file()?;
        let res = (|| {
            let mut inp = File::open(src)?;
            let mut h = Sha256::new();
            let mut buf = vec![0u8; 1 << 20];
            let mut n_total = 0u64;
            loop {
                let n = inp.read(&mut buf)?;
                if n == 0 {
                    break;
                }
                h.update(&buf[..n]);
                out.write_all(&buf[..n])?;
                n_total += n as u64;
            }
            out.sync_all()?;
            // Hash again what was copied: the source may have changed.
            if n_total != size || <[u8; 32]>::from(h.finalize()) != sha256 {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    "file changed while importing",
                ));
            }
            self.commit_piece(&tmp, rel, sha256, size, None)
        })();
        if res.is_err() {
            let _ = fs::remove_file(&tmp);
        }
        res
    }

    /// Where the last good copy of an index file lives.
    pub fn index_file(&self, u: &UpstreamUrl) -> PathBuf {
        let scheme = match u.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        let mut p = self
            .index_dir
            .join(scheme)
            .join(format!("{}:{}", u.host, u.port));
        for seg in u.path.split('/').filter(|s| !s.is_empty()) {
            // url.rs guarantees no `.`/`..` segments, NUL or backslash.
            p.push(seg);
        }
        p
    }

    /// The data-relative form of an index file path, for the database.
    pub fn relative_index(&self, p: &Path) -> String {
        p.strip_prefix(self.index_dir.parent().unwrap_or(Path::new("")))
            .unwrap_or(p)
            .to_string_lossy()
            .into_owned()
    }

    fn prune_if_needed(&self) {
        loop {
            if self.total_bytes() <= self.limit {
                return;
            }
            // A pass under way may have listed the store before this
            // commit: it is asked for one more pass. The flag is set
            // before trying the lock and cleared by the holder before it
            // lists, so either the pass sees this file or the flag.
            self.prune_again.store(true, Ordering::SeqCst);
            // The flag's store, then the lock; the holder's unlock, then
            // its load of the flag: a fence on each side so that one of
            // the two sees the other (the lock alone only orders one way).
            std::sync::atomic::fence(Ordering::SeqCst);
            let Ok(pass) = self.pruning.try_lock() else {
                return;
            };
            self.prune_again.store(false, Ordering::SeqCst);
            self.prune_pass();
            drop(pass);
            std::sync::atomic::fence(Ordering::SeqCst);
            if !self.prune_again.load(Ordering::SeqCst) {
                return;
            }
        }
    }

    /// One pruning pass: lists the store, deletes what `prune` chooses.
    fn prune_pass(&self) {
        let snapshot: Vec<(String, Meta)> = self
            .lock()
            .by_path
            .iter()
            .map(|(k, v)| (k.clone(), *v))
            .collect();
        let refs: Vec<bool> = snapshot.iter().map(|(p, _)| (self.referenced)(p)).collect();
        let files: Vec<crate::prune::Stored<'_>> = snapshot
            .iter()
            .zip(&refs)
            .map(|((p, m), &r)| crate::prune::Stored {
                path: p,
                size: m.size,
                last_used: m.last_used,
                referenced: r,
            })
            .collect();
        let victims = crate::prune::choose_victims(&files, self.limit);
        for i in victims {
            let Some((path, seen)) = snapshot.get(i) else {
                continue;
            };
            let _files = self.files.lock().unwrap_or_else(|e| e.into_inner());
            // Only the file the snapshot saw: one committed at the same
            // path since stays.
            let mut map = self.lock();
            if map
                .by_path
                .get(path)
                .is_none_or(|m| m.sha256 != seen.sha256)
            {
                continue;
            }
            if let Some(old) = map.remove(path) {
                self.total.fetch_sub(old.size, Ordering::Relaxed);
            }
            drop(map);
            self.forget_open(path);
            self.db.del_piece(path);
            if let Err(e) = fs::remove_file(self.piece_path(path)) {
                tracing::warn!(path = %path, error = %e, "could not remove a pruned file");
            } else {
                tracing::info!(path = %path, "pruned");
            }
        }
    }
}

/// A commit in flight ([`Store::commit_ticket`]).
pub struct CommitTicket(Arc<Store>);

impl Drop for CommitTicket {
    fn drop(&mut self) {
        self.0.commits.fetch_sub(1, Ordering::SeqCst);
    }
}

/// SHA-256 of a whole file (blocking).
pub fn sha256_file(path: &Path) -> io::Result<[u8; 32]> {
    let mut f = File::open(path)?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(h.finalize().into())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::{FileExt, MetadataExt};

    fn put(store: &Store, rel: &str, body: &[u8]) -> [u8; 32] {
        let (tmp, mut f) = store.temp_file().expect("a temp file");
        f.write_all(body).expect("write");
        f.sync_all().expect("fsync");
        let sha: [u8; 32] = Sha256::digest(body).into();
        store
            .commit_piece(&tmp, rel, sha, body.len() as u64, None)
            .expect("commit");
        sha
    }

    fn read_all(f: &File) -> Vec<u8> {
        let mut b = vec![0u8; f.metadata().map_or(0, |m| m.len() as usize)];
        f.read_exact_at(&mut b, 0).expect("read");
        b
    }

    fn kept(store: &Store) -> Vec<String> {
        let open = store.open_files.lock().expect("lock");
        open.iter().map(|o| o.rel.clone()).collect()
    }

    /// Opened store files stay open for the next response; a file
    /// committed over one, or pruned, is forgotten at once, so that no
    /// response gets the old bytes under the new content and a pruned
    /// file's space is not held.
    #[test]
    fn open_pieces_are_kept_until_replaced_or_pruned() {
        let dir = tempfile::tempdir().expect("tempdir");
        // Room for two 1000-byte files, not three.
        let (store, _) = Store::open(dir.path(), 2500, Box::new(|_: &str| false)).expect("store");
        let a1 = put(&store, "pool/a.deb", &[1u8; 1000]);
        let f1 = store.open_piece("pool/a.deb", &a1).expect("open");
        let f2 = store.open_piece("pool/a.deb", &a1).expect("open again");
        assert_eq!(kept(&store), ["pool/a.deb"]);
        let ino = |f: &File| f.metadata().map(|m| m.ino()).expect("metadata");
        assert_eq!(ino(&f1), ino(&f2), "a hit is the same file");
        // A new copy at the same path: the kept one is dropped, the next
        // open is the new file.
        let a2 = put(&store, "pool/a.deb", &[2u8; 1000]);
        assert!(kept(&store).is_empty(), "{:?}", kept(&store));
        let f3 = store
            .open_piece("pool/a.deb", &a2)
            .expect("open the new copy");
        assert_eq!(read_all(&f3), vec![2u8; 1000]);
        assert_eq!(read_all(&f1), vec![1u8; 1000], "a reader keeps its copy");
        // Asked as content it no longer is: opened, but not kept.
        drop(store.open_piece("pool/a.deb", &a1));
        assert_eq!(kept(&store), ["pool/a.deb"]);
        // Two more files overflow the limit: the least recently used one
        // (a.deb) is pruned and forgotten.
        let b = put(&store, "pool/b.deb", &[3u8; 1000]);
        store.open_piece("pool/b.deb", &b).expect("open b");
        put(&store, "pool/c.deb", &[4u8; 1000]);
        assert!(
            store.get("pool/a.deb", &a2).is_none(),
            "a.deb was not pruned"
        );
        assert!(!kept(&store).contains(&"pool/a.deb".to_string()));
        // At most OPEN_FILES stay open.
        let big = tempfile::tempdir().expect("tempdir");
        let (store, _) =
            Store::open(big.path(), u64::MAX, Box::new(|_: &str| false)).expect("store");
        for i in 0..OPEN_FILES + 5 {
            let rel = format!("pool/f{i}.deb");
            let sha = put(&store, &rel, format!("{i}").as_bytes());
            store.open_piece(&rel, &sha).expect("open");
        }
        assert_eq!(kept(&store).len(), OPEN_FILES);
    }
}
