//! State snapshots in SQLite, so that a restart does not forget the swarms.
//!
//! The whole table is written in one transaction (all or nothing) every
//! `snapshot_interval` seconds and on shutdown. After a crash, what was
//! announced since the last snapshot is lost: at most `snapshot_interval`
//! seconds of announces. Clients re-announce every `interval`, so the
//! table heals within one interval. Peers already expired at load time are
//! skipped. Synchronous code: the binary runs it on a blocking thread.

use std::path::Path;

use rusqlite::{params, Connection};

use crate::swarm::{Peer, PeerSet};
use crate::types::InfoHash;

#[derive(Debug, thiserror::Error)]
pub enum PersistError {
    #[error("snapshot database: {0}")]
    Sqlite(#[from] rusqlite::Error),
}

const SCHEMA: &str = "
CREATE TABLE IF NOT EXISTS torrents (
    info_hash BLOB PRIMARY KEY NOT NULL,
    downloaded INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS peers (
    info_hash BLOB NOT NULL,
    addr BLOB NOT NULL,
    last_seen INTEGER NOT NULL,
    key INTEGER NOT NULL,
    seeder INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY NOT NULL, value INTEGER NOT NULL);
";

fn open(path: &Path) -> Result<Connection, PersistError> {
    let c = Connection::open(path)?;
    c.execute_batch("PRAGMA journal_mode=WAL; PRAGMA synchronous=NORMAL;")?;
    c.execute_batch(SCHEMA)?;
    Ok(c)
}

/// Write a snapshot, replacing the previous one atomically.
pub fn save(path: &Path, swarms: &[(InfoHash, PeerSet)], now: u64) -> Result<usize, PersistError> {
    let mut c = open(path)?;
    let tx = c.transaction()?;
    tx.execute("DELETE FROM torrents", [])?;
    tx.execute("DELETE FROM peers", [])?;
    let mut n = 0;
    {
        let mut ins_t = tx.prepare("INSERT INTO torrents VALUES (?1, ?2)")?;
        let mut ins_p = tx.prepare("INSERT INTO peers VALUES (?1, ?2, ?3, ?4, ?5)")?;
        for (h, s) in swarms {
            ins_t.execute(params![&h.0[..], s.downloaded])?;
            for p in &s.v4 {
                ins_p.execute(params![&h.0[..], &p.addr[..], p.last_seen, p.key, p.seeder])?;
            }
            for p in &s.v6 {
                ins_p.execute(params![&h.0[..], &p.addr[..], p.last_seen, p.key, p.seeder])?;
            }
            n += s.len();
        }
    }
    tx.execute(
        "INSERT OR REPLACE INTO meta VALUES ('saved_at', ?1)",
        params![now as i64],
    )?;
    tx.commit()?;
    Ok(n)
}

/// Load a snapshot, skipping malformed rows and peers last seen before
/// `cutoff` (unix seconds). A missing file is an empty snapshot.
pub fn load(path: &Path, cutoff: u32) -> Result<Vec<(InfoHash, PeerSet)>, PersistError> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let c = open(path)?;
    let mut swarms: hashbrown::HashMap<InfoHash, PeerSet> = hashbrown::HashMap::new();
    let mut st = c.prepare("SELECT info_hash, downloaded FROM torrents")?;
    let rows = st.query_map([], |r| Ok((r.get::<_, Vec<u8>>(0)?, r.get::<_, u32>(1)?)))?;
    for row in rows {
        let (h, d) = row?;
        if let Ok(h) = <[u8; 20]>::try_from(h.as_slice()) {
            swarms.entry(InfoHash(h)).or_default().downloaded = d;
        }
    }
    let mut st = c.prepare("SELECT info_hash, addr, last_seen, key, seeder FROM peers")?;
    let rows = st.query_map([], |r| {
        Ok((
            r.get::<_, Vec<u8>>(0)?,
            r.get::<_, Vec<u8>>(1)?,
            r.get::<_, u32>(2)?,
            r.get::<_, u32>(3)?,
            r.get::<_, bool>(4)?,
        ))
    })?;
    for row in rows {
        let (h, addr, last_seen, key, seeder) = row?;
        let Ok(h) = <[u8; 20]>::try_from(h.as_slice()) else {
            continue;
        };
        if last_seen < cutoff {
            continue;
        }
        let s = swarms.entry(InfoHash(h)).or_default();
        if let Ok(addr) = <[u8; 6]>::try_from(addr.as_slice()) {
            s.v4.push(Peer {
                addr,
                last_seen,
                key,
                seeder,
            });
        } else if let Ok(addr) = <[u8; 18]>::try_from(addr.as_slice()) {
            s.v6.push(Peer {
                addr,
                last_seen,
                key,
                seeder,
            });
        }
    }
    Ok(swarms.into_iter().collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::swarm::{AnnounceOp, Families, PeerTable, TableLimits};
    use crate::types::Event;

    #[test]
    fn save_load() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state.sqlite");
        let t = PeerTable::new(TableLimits::default());
        for (hash, peer, now) in [
            (1u8, "10.0.0.1:1", 1000u32),
            (1, "[::1]:2", 1000),
            (2, "10.0.0.2:3", 10),
        ] {
            let op = AnnounceOp {
                info_hash: InfoHash([hash; 20]),
                peer: peer.parse().unwrap(),
                event: Event::Completed,
                seeder: true,
                key: 5,
                numwant: 0,
                now,
                seed: 0,
                families: Families { v4: true, v6: true },
            };
            t.announce(&op, &mut Vec::new(), &mut Vec::new());
        }
        assert_eq!(save(&path, &t.snapshot(), 1000).unwrap(), 3);
        // save twice: replaces, does not append
        assert_eq!(save(&path, &t.snapshot(), 1000).unwrap(), 3);
        for (cutoff, peers) in [(0, 3), (500, 2), (2000, 0)] {
            let u = PeerTable::new(TableLimits::default());
            u.restore(load(&path, cutoff).unwrap());
            assert_eq!(u.peer_count(), peers, "cutoff {cutoff}");
            assert_eq!(u.totals().peers, peers);
        }
        let u = PeerTable::new(TableLimits::default());
        u.restore(load(&path, 0).unwrap());
        assert_eq!(u.totals(), t.totals());
        assert_eq!(u.scrape(&InfoHash([1; 20])).unwrap().downloaded, 2);
        assert!(load(&dir.path().join("none"), 0).unwrap().is_empty());
        std::fs::write(
            dir.path().join("junk"),
            b"not a database at all, really not",
        )
        .unwrap();
        assert!(load(&dir.path().join("junk"), 0).is_err());
    }
}
