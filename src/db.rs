//! The state database: one thread owns the SQLite connection (WAL mode)
//! and takes commands over a channel, so no request ever waits on a lock
//! or on fsync of the database.
//!
//! What is in it: the torrents registered from indexes, the stored pieces
//! (path, SHA-256, size, when stored, last use), the dt2 swarm each stored
//! piece is shared in, and byte counters. The
//! store's files are the truth for content and the rows are the index of
//! them: at start-up, rows whose file is missing or has the wrong size are
//! removed (see `Store::open`). Writes are batched per transaction. A crash
//! loses at most the last batch of `last_used` updates and counter
//! increments (under a second's worth). It never loses a stored piece's row
//! after the piece was served, because the row is written before the piece
//! is announced as stored.

use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use anyhow::Context;
use rusqlite::{params, Connection};

/// A stored piece's row.
#[derive(Clone, Debug)]
pub struct PieceRow {
    /// Archive-relative path, e.g. `pool/main/h/hello/hello_2.10-3_amd64.deb`.
    pub path: String,
    /// Its SHA-256.
    pub sha256: [u8; 32],
    /// Its size.
    pub size: u64,
    /// Unix seconds it was stored.
    pub stored_at: i64,
    /// Unix seconds it was last served.
    pub last_used: i64,
    /// The upstream Last-Modified, Unix seconds, if known.
    pub mtime: Option<i64>,
}

/// A registered torrent's row.
#[derive(Clone, Debug)]
pub struct TorrentRow {
    /// 40-hex info hash.
    pub info_hash: String,
    /// Archive key, e.g. `http://deb.debian.org/debian/`.
    pub archive: String,
    /// The index path under the archive, e.g. `dists/bookworm/main/binary-amd64/Packages.xz`.
    pub index_path: String,
    /// Where the index is cached, relative to the data folder.
    pub index_file: String,
    /// Piece count.
    pub pieces: u64,
    /// Total bytes.
    pub total: u64,
    /// Unix seconds it was registered.
    pub added: i64,
}

enum Cmd {
    PutPiece(PieceRow),
    PutShared(String, [u8; 20]),
    DelPiece(String),
    Touch(String, i64),
    PutTorrent(TorrentRow),
    DelTorrent(String),
    AddCounter(&'static str, u64),
    Flush(mpsc::Sender<()>),
}

/// A handle to the database thread. Cloning is cheap.
#[derive(Clone)]
pub struct Db {
    tx: mpsc::Sender<Cmd>,
}

/// What the database held at start-up.
pub struct Loaded {
    /// Stored pieces.
    pub pieces: Vec<PieceRow>,
    /// Registered torrents.
    pub torrents: Vec<TorrentRow>,
    /// Counters by name.
    pub counters: Vec<(String, u64)>,
    /// Stored pieces by the dt2 swarm they were shared in: (path, swarm).
    pub shared: Vec<(String, [u8; 20])>,
}

impl Db {
    /// Opens (creating or migrating) the database and starts its thread.
    pub fn open(path: &Path) -> anyhow::Result<(Db, Loaded)> {
        let conn = Connection::open(path)
            .with_context(|| format!("cannot open state database {}", path.display()))?;
        conn.pragma_update(None, "journal_mode", "WAL")?;
        conn.pragma_update(None, "synchronous", "NORMAL")?;
        conn.busy_timeout(Duration::from_secs(5))?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS pieces (
                path TEXT PRIMARY KEY,
                sha256 BLOB NOT NULL,
                size INTEGER NOT NULL,
                stored_at INTEGER NOT NULL,
                last_used INTEGER NOT NULL,
                mtime INTEGER
            );
            CREATE TABLE IF NOT EXISTS torrents (
                info_hash TEXT NOT NULL,
                archive TEXT NOT NULL,
                index_path TEXT NOT NULL,
                index_file TEXT NOT NULL,
                pieces INTEGER NOT NULL,
                total INTEGER NOT NULL,
                added INTEGER NOT NULL,
                PRIMARY KEY (archive, index_path)
            );
            CREATE TABLE IF NOT EXISTS shared (
                path TEXT PRIMARY KEY,
                swarm BLOB NOT NULL
            );
            CREATE TABLE IF NOT EXISTS counters (
                name TEXT PRIMARY KEY,
                value INTEGER NOT NULL
            );",
        )
        .context("cannot create the state database schema")?;
        let loaded = load(&conn).context("cannot read the state database")?;
        let (tx, rx) = mpsc::channel();
        std::thread::Builder::new()
            .name("debtorrent-db".into())
            .spawn(move || run(conn, rx))
            .context("cannot start the database thread")?;
        Ok((Db { tx }, loaded))
    }

    fn send(&self, c: Cmd) {
        // The thread only stops when every handle is gone.
        let _ = self.tx.send(c);
    }

    /// Records a stored piece.
    pub fn put_piece(&self, row: PieceRow) {
        self.send(Cmd::PutPiece(row));
    }

    /// Records the dt2 swarm a stored piece is shared in, so that it is
    /// announced there again after a restart even if no current index
    /// lists it any more (an older index version did).
    pub fn put_shared(&self, path: &str, swarm: [u8; 20]) {
        self.send(Cmd::PutShared(path.to_string(), swarm));
    }

    /// Forgets a stored piece.
    pub fn del_piece(&self, path: &str) {
        self.send(Cmd::DelPiece(path.to_string()));
    }

    /// Records that a piece was served now.
    pub fn touch(&self, path: &str, now: i64) {
        self.send(Cmd::Touch(path.to_string(), now));
    }

    /// Registers (or replaces) the torrent of an index.
    pub fn put_torrent(&self, row: TorrentRow) {
        self.send(Cmd::PutTorrent(row));
    }

    /// Forgets the torrent of an index (archive key + index path).
    pub fn del_torrent(&self, info_hash: &str) {
        self.send(Cmd::DelTorrent(info_hash.to_string()));
    }

    /// Adds to a named byte counter.
    pub fn add_counter(&self, name: &'static str, n: u64) {
        if n > 0 {
            self.send(Cmd::AddCounter(name, n));
        }
    }

    /// Waits until everything sent so far is committed.
    pub fn flush(&self) {
        let (tx, rx) = mpsc::channel();
        self.send(Cmd::Flush(tx));
        let _ = rx.recv_timeout(Duration::from_secs(10));
    }
}

fn load(conn: &Connection) -> rusqlite::Result<Loaded> {
    let mut st =
        conn.prepare("SELECT path, sha256, size, stored_at, last_used, mtime FROM pieces")?;
    let pieces = st
        .query_map([], |r| {
            let sha: Vec<u8> = r.get(1)?;
            Ok((
                r.get::<_, String>(0)?,
                sha,
                r.get::<_, i64>(2)?,
                r.get(3)?,
                r.get(4)?,
                r.get(5)?,
            ))
        })?
        .filter_map(Result::ok)
        .filter_map(|(path, sha, size, stored_at, last_used, mtime)| {
            Some(PieceRow {
                path,
                sha256: <[u8; 32]>::try_from(sha.as_slice()).ok()?,
                size: u64::try_from(size).ok()?,
                stored_at,
                last_used,
                mtime,
            })
        })
        .collect();
    let mut st = conn.prepare(
        "SELECT info_hash, archive, index_path, index_file, pieces, total, added FROM torrents",
    )?;
    let torrents = st
        .query_map([], |r| {
            Ok(TorrentRow {
                info_hash: r.get(0)?,
                archive: r.get(1)?,
                index_path: r.get(2)?,
                index_file: r.get(3)?,
                pieces: r.get::<_, i64>(4)?.max(0) as u64,
                total: r.get::<_, i64>(5)?.max(0) as u64,
                added: r.get(6)?,
            })
        })?
        .filter_map(Result::ok)
        .collect();
    let mut st = conn.prepare("SELECT name, value FROM counters")?;
    let counters = st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?.max(0) as u64))
        })?
        .filter_map(Result::ok)
        .collect();
    let mut st = conn.prepare("SELECT path, swarm FROM shared")?;
    let shared = st
        .query_map([], |r| {
            Ok((r.get::<_, String>(0)?, r.get::<_, Vec<u8>>(1)?))
        })?
        .filter_map(Result::ok)
        .filter_map(|(path, id)| Some((path, <[u8; 20]>::try_from(id.as_slice()).ok()?)))
        .collect();
    Ok(Loaded {
        pieces,
        torrents,
        counters,
        shared,
    })
}

fn run(mut conn: Connection, rx: mpsc::Receiver<Cmd>) {
    while let Ok(first) = rx.recv() {
        // Batch whatever else is queued into the same transaction.
        let mut batch = vec![first];
        while let Ok(c) = rx.try_recv() {
            batch.push(c);
            if batch.len() >= 512 {
                break;
            }
        }
        let mut acks = Vec::new();
        if let Err(e) = apply(&mut conn, batch, &mut acks) {
            tracing::error!(error = %e, "state database write failed");
        }
        for a in acks {
            let _ = a.send(());
        }
    }
}

fn apply(
    conn: &mut Connection,
    batch: Vec<Cmd>,
    acks: &mut Vec<mpsc::Sender<()>>,
) -> rusqlite::Result<()> {
    let tx = conn.transaction()?;
    for c in batch {
        match c {
            Cmd::PutPiece(p) => {
                tx.execute(
                    "INSERT OR REPLACE INTO pieces (path, sha256, size, stored_at, last_used, mtime)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                    params![p.path, &p.sha256[..], p.size as i64, p.stored_at, p.last_used, p.mtime],
                )?;
            }
            Cmd::PutShared(path, swarm) => {
                tx.execute(
                    "INSERT OR REPLACE INTO shared (path, swarm) VALUES (?1, ?2)",
                    params![path, &swarm[..]],
                )?;
            }
            Cmd::DelPiece(path) => {
                tx.execute("DELETE FROM pieces WHERE path = ?1", params![path])?;
                tx.execute("DELETE FROM shared WHERE path = ?1", params![path])?;
            }
            Cmd::Touch(path, now) => {
                tx.execute(
                    "UPDATE pieces SET last_used = ?2 WHERE path = ?1",
                    params![path, now],
                )?;
            }
            Cmd::PutTorrent(t) => {
                tx.execute(
                    "INSERT OR REPLACE INTO torrents (info_hash, archive, index_path, index_file, pieces, total, added)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                    params![t.info_hash, t.archive, t.index_path, t.index_file, t.pieces as i64, t.total as i64, t.added],
                )?;
            }
            Cmd::DelTorrent(h) => {
                tx.execute("DELETE FROM torrents WHERE info_hash = ?1", params![h])?;
            }
            Cmd::AddCounter(name, n) => {
                tx.execute(
                    "INSERT INTO counters (name, value) VALUES (?1, ?2)
                     ON CONFLICT(name) DO UPDATE SET value = value + ?2",
                    params![name, n as i64],
                )?;
            }
            Cmd::Flush(ack) => acks.push(ack),
        }
    }
    tx.commit()
}
