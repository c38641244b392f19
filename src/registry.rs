//! Which torrents exist: one per `Packages`/`Sources` index apt fetched,
//! per archive (`http://deb.debian.org/debian/`), keyed by the index's
//! path without compression suffix. Also the Release hash lists per suite,
//! which decide whether an index's bytes are the ones its suite lists.
//!
//! Readers (every pool request) take a read lock for a hash lookup; writers
//! (a new index after `apt-get update`) replace a whole entry. Torrents are
//! held behind `Arc`, so a request that found a piece keeps a valid view
//! even if a newer index replaces it meanwhile.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use debtorrent_gen::{IndexKind, Torrent};

use crate::db::{Db, TorrentRow};
use crate::types::InfoHash;

use crate::release::{self, Release};

/// A registered torrent.
pub struct Registered {
    /// Archive key, e.g. `http://deb.debian.org/debian/`.
    pub archive: String,
    /// The index path under the archive, without compression suffix:
    /// `dists/bookworm/main/binary-amd64/Packages`.
    pub index_path: String,
    /// Where its index is cached.
    pub index_file: PathBuf,
    /// The dt2 swarm its suite family and component belong to
    /// (`docs/torrent-format.md` §7), from its suite's Release; `None` when
    /// that Release is no longer cached.
    pub swarm: Option<InfoHash>,
    /// The torrent.
    pub torrent: Torrent,
    /// When it was registered (Unix seconds).
    pub added: i64,
}

impl Registered {
    /// The swarm its peers meet in: its dt2 swarm id, or, when its suite's
    /// Release is not known (a flat repository without one, a cache lost),
    /// a swarm of its own named by its dt1 info hash.
    pub fn swarm_key(&self) -> InfoHash {
        self.swarm.unwrap_or_else(|| self.torrent.info_hash())
    }
}

/// A piece found for a request.
#[derive(Clone, Copy, Debug)]
pub struct Found {
    /// Its size.
    pub size: u64,
    /// Its SHA-256.
    pub sha256: [u8; 32],
}

#[derive(Default)]
struct Inner {
    by_archive: HashMap<String, Vec<Arc<Registered>>>,
    /// Key: archive key + suite dir (`dists/bookworm/`).
    releases: HashMap<String, Arc<Release>>,
}

/// The registry.
pub struct Registry {
    inner: RwLock<Inner>,
    /// Bumped on every registration, so the swarm can follow.
    generation: tokio::sync::watch::Sender<u64>,
}

impl Default for Registry {
    fn default() -> Self {
        Registry {
            inner: RwLock::default(),
            generation: tokio::sync::watch::Sender::new(0),
        }
    }
}

impl Registry {
    fn read(&self) -> std::sync::RwLockReadGuard<'_, Inner> {
        self.inner.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, Inner> {
        self.inner.write().unwrap_or_else(|e| e.into_inner())
    }

    /// The piece at `rel` (e.g. `pool/main/h/hello/x.deb`) in any torrent
    /// of `archive`: the torrent, the piece index, its size and hash.
    pub fn find_piece(&self, archive: &str, rel: &str) -> Option<(Arc<Registered>, u32, Found)> {
        let inner = self.read();
        inner.by_archive.get(archive)?.iter().find_map(|r| {
            r.torrent.find(rel).map(|p| {
                (
                    r.clone(),
                    p.index,
                    Found {
                        size: p.size,
                        sha256: *p.sha256,
                    },
                )
            })
        })
    }

    /// Changes whenever a torrent is registered.
    pub fn subscribe(&self) -> tokio::sync::watch::Receiver<u64> {
        self.generation.subscribe()
    }

    /// Whether any torrent lists `rel` (for pruning).
    pub fn referenced(&self, rel: &str) -> bool {
        self.read()
            .by_archive
            .values()
            .flatten()
            .any(|r| r.torrent.find(rel).is_some())
    }

    /// Adds a torrent, replacing the one of the same index. Returns the
    /// info hash it replaced, if it differs.
    pub fn register(&self, reg: Registered) -> Option<String> {
        let mut inner = self.write();
        let list = inner.by_archive.entry(reg.archive.clone()).or_default();
        let old = list
            .iter()
            .position(|r| r.index_path == reg.index_path)
            .map(|i| list.remove(i));
        let new_hash = reg.torrent.info_hash();
        list.push(Arc::new(reg));
        drop(inner);
        self.generation.send_modify(|g| *g += 1);
        old.map(|o| o.torrent.info_hash())
            .filter(|h| *h != new_hash)
            .map(|h| h.to_hex())
    }

    /// Every registered torrent.
    pub fn all(&self) -> Vec<Arc<Registered>> {
        self.read().by_archive.values().flatten().cloned().collect()
    }

    /// Remembers the Release of a suite.
    pub fn set_release(&self, archive: &str, suite_dir: &str, r: Release) {
        self.write()
            .releases
            .insert(format!("{archive}{suite_dir}"), Arc::new(r));
    }

    /// The Release governing `rel` (`dists/SUITE/...`): the longest suite
    /// directory for which a Release is known. `load` reads a cached
    /// Release for a candidate suite dir when none is in memory (after a
    /// restart).
    pub fn release_for(
        &self,
        archive: &str,
        rel: &str,
        load: impl Fn(&str) -> Option<Release>,
    ) -> Option<(String, Arc<Release>)> {
        let candidates = suite_dirs(rel);
        {
            let inner = self.read();
            for dir in candidates.iter().rev() {
                if let Some(r) = inner.releases.get(&format!("{archive}{dir}")) {
                    return Some((dir.clone(), r.clone()));
                }
            }
        }
        for dir in candidates.iter().rev() {
            if let Some(r) = load(dir) {
                self.set_release(archive, dir, r);
                let r = self
                    .read()
                    .releases
                    .get(&format!("{archive}{dir}"))
                    .cloned()?;
                return Some((dir.clone(), r));
            }
        }
        None
    }
}

/// The component of an index at `rel` under `suite_dir`: the first segment
/// after the suite (`main` for `dists/bookworm/main/binary-amd64/Packages`),
/// empty for an index right in the suite directory (a flat layout).
pub fn component(suite_dir: &str, rel: &str) -> String {
    let within = rel.strip_prefix(suite_dir).unwrap_or("");
    match within.split_once('/') {
        Some((c, _)) => c.to_string(),
        None => String::new(),
    }
}

/// The dt2 swarm of a registered index, from its suite's Release as
/// cached beside it (at start-up, before apt has fetched anything). The
/// cache mirrors the archive's layout, so the archive's root is the index
/// file's path up to the `dists` segment of `index_path`.
fn cached_swarm(
    registry: &Registry,
    archive: &str,
    index_path: &str,
    index_file: &Path,
) -> Option<InfoHash> {
    // `index_file` may be a by-hash name, deeper than `index_path`: the
    // nearest `dists` folder above it is the suite's.
    let root = index_file
        .ancestors()
        .find(|p| p.file_name().is_some_and(|n| n == "dists"))?
        .parent()?;

    let load = |dir: &str| -> Option<Release> {
        ["InRelease", "Release"]
            .iter()
            .find_map(|f| std::fs::read(root.join(dir).join(f)).ok())
            .map(|t| Release::parse(&t))
    };
    let (suite_dir, release) = registry.release_for(archive, index_path, load)?;
    Some(release.swarm_id(&component(&suite_dir, index_path)))
}

/// The directories under `dists/` that could hold the Release for `rel`:
/// for `dists/a/b/main/binary-amd64/Packages.xz`, `dists/a/`, `dists/a/b/`, ...
fn suite_dirs(rel: &str) -> Vec<String> {
    let Some(rest) = rel.strip_prefix("dists/") else {
        return Vec::new();
    };
    let segs: Vec<&str> = rest.split('/').collect();
    let mut out = Vec::new();
    let mut dir = String::from("dists/");
    for s in segs.iter().take(segs.len().saturating_sub(1)) {
        dir.push_str(s);
        dir.push('/');
        out.push(dir.clone());
    }
    out
}

/// What an index file at `rel` is, judged against its suite's Release and
/// the SHA-256 (and SHA-512, for by-hash/SHA512) of its bytes: the kind and
/// the normalised index path to register, or why not.
pub fn classify_index(
    suite_dir: &str,
    rel: &str,
    release: &Release,
    sha256: &[u8; 32],
    sha512: Option<&[u8; 64]>,
) -> Result<(IndexKind, String), &'static str> {
    let within = rel.strip_prefix(suite_dir).ok_or("not under the suite")?;
    let listed_name = if let Some((dir, hash)) = split_by_hash(within) {
        let listed = match hash {
            ByHash::Sha256(h) => {
                if &h != sha256 {
                    return Err("by-hash content does not match its name");
                }
                release.by_sha256(&h)
            }
            ByHash::Sha512(h) => {
                if sha512 != Some(&h) {
                    return Err("by-hash content does not match its name");
                }
                release.by_sha512(&h)
            }
        }
        .ok_or("hash not listed in the Release")?;
        // The listed file must live in the same directory as the by-hash one.
        if !listed.name.starts_with(dir) {
            return Err("by-hash file listed for another directory");
        }
        listed.name.clone()
    } else {
        let (want, _) = release
            .sha256_of(within)
            .ok_or("not listed in the Release")?;
        if &want != sha256 {
            return Err("content does not match the Release's SHA256");
        }
        within.to_string()
    };
    let kind = release::index_kind(&listed_name).ok_or("not a Packages or Sources index")?;
    let base = match listed_name.rsplit_once('.') {
        Some((stem, "gz" | "xz" | "bz2" | "lz4" | "zst" | "lzma")) => stem,
        _ => listed_name.as_str(),
    };
    Ok((kind, format!("{suite_dir}{base}")))
}

enum ByHash {
    Sha256([u8; 32]),
    Sha512([u8; 64]),
}

/// `main/binary-amd64/by-hash/SHA256/<hex>` -> (`main/binary-amd64/`, hash).
fn split_by_hash(within: &str) -> Option<(&str, ByHash)> {
    let i = within.find("by-hash/")?;
    let (dir, rest) = (&within[..i], &within[i + "by-hash/".len()..]);
    let (algo, hex) = rest.split_once('/')?;
    match algo {
        "SHA256" => Some((dir, ByHash::Sha256(release::hex::<32>(hex)?))),
        "SHA512" => Some((dir, ByHash::Sha512(release::hex::<64>(hex)?))),
        _ => None,
    }
}

/// Builds the torrent of an index file on disk (blocking).
pub fn build_from_file(path: &Path, kind: IndexKind) -> Result<Torrent, String> {
    let f = std::fs::File::open(path).map_err(|e| format!("{}: {e}", path.display()))?;
    let opts = debtorrent_gen::Options {
        kind: Some(kind),
        ..Default::default()
    };
    debtorrent_gen::build_from_reader(std::io::BufReader::new(f), &opts)
        .map(|b| b.torrent)
        .map_err(|e| format!("{}: {e}", path.display()))
}

/// An index file, cached on disk, to register as a torrent.
pub struct IndexFile {
    /// Archive key, e.g. `http://deb.debian.org/debian/`.
    pub archive: String,
    /// The index path under the archive, without compression suffix.
    pub index_path: String,
    /// Where it is cached.
    pub file: PathBuf,
    /// The same, relative to the data folder (as the database keeps it).
    pub file_rel: String,
    /// Packages or Sources.
    pub kind: IndexKind,
    /// When it was first registered (Unix seconds).
    pub added: i64,
    /// Its dt2 swarm, if its suite's Release is known.
    pub swarm: Option<InfoHash>,
}

/// The one way a torrent is registered, when apt fetches an index and at
/// start-up: the index file is read on a blocking thread, the torrent
/// built, checked against the info hash the database `known` for it (at
/// start-up), registered (replacing the torrent of the same index), and
/// recorded in the database when it is new.
pub async fn register_index(
    registry: &Registry,
    db: &Db,
    f: IndexFile,
    known: Option<&str>,
) -> Result<InfoHash, String> {
    let (path, kind) = (f.file.clone(), f.kind);
    let torrent = tokio::task::spawn_blocking(move || build_from_file(&path, kind))
        .await
        .map_err(|e| format!("the index reader stopped: {e}"))??;
    let info_hash = torrent.info_hash();
    let hex = info_hash.to_hex();
    if let Some(k) = known {
        if k != hex {
            return Err("the cached index changed".into());
        }
    }
    let row = TorrentRow {
        info_hash: hex.clone(),
        archive: f.archive.clone(),
        index_path: f.index_path.clone(),
        index_file: f.file_rel,
        pieces: u64::from(torrent.piece_count()),
        total: torrent.total_size(),
        added: f.added,
    };
    let replaced = registry.register(Registered {
        archive: f.archive,
        index_path: f.index_path,
        index_file: f.file,
        swarm: f.swarm,
        torrent,
        added: f.added,
    });
    if known.is_none() {
        tracing::info!(info_hash = %hex, index = %row.index_path, pieces = row.pieces, "torrent registered");
        if let Some(old) = replaced {
            db.del_torrent(&old);
        }
        db.put_torrent(row);
    }
    Ok(info_hash)
}

/// Registers the torrents of earlier runs from their cached index files;
/// a torrent whose index is gone or changed is forgotten. Returns how many
/// were registered.
pub async fn reload(data_dir: &Path, rows: Vec<TorrentRow>, registry: &Registry, db: &Db) -> usize {
    let mut n = 0;
    for row in rows {
        let Some(kind) = release::index_kind(&row.index_path) else {
            db.del_torrent(&row.info_hash);
            continue;
        };
        let file = data_dir.join(&row.index_file);
        let swarm = cached_swarm(registry, &row.archive, &row.index_path, &file);
        let f = IndexFile {
            archive: row.archive,
            index_path: row.index_path.clone(),
            file,
            file_rel: row.index_file,
            kind,
            added: row.added,
            swarm,
        };
        match register_index(registry, db, f, Some(&row.info_hash)).await {
            Ok(_) => n += 1,
            Err(why) => {
                tracing::warn!(index = %row.index_path, why, "cached index gone or changed; torrent forgotten");
                db.del_torrent(&row.info_hash);
            }
        }
    }
    n
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn components() {
        let cases = [
            (
                "dists/bookworm/",
                "dists/bookworm/main/binary-amd64/Packages",
                "main",
            ),
            (
                "dists/bookworm/",
                "dists/bookworm/main/source/Sources",
                "main",
            ),
            (
                "dists/bookworm/",
                "dists/bookworm/main/debian-installer/binary-amd64/Packages",
                "main",
            ),
            ("dists/flat/", "dists/flat/Packages", ""),
            (
                "dists/other/",
                "dists/bookworm/main/binary-amd64/Packages",
                "",
            ),
        ];
        for (suite, rel, want) in cases {
            assert_eq!(component(suite, rel), want, "{rel}");
        }
    }

    fn hex64(b: u8) -> String {
        format!("{b:02x}").repeat(32)
    }

    #[test]
    fn suite_dir_candidates() {
        assert_eq!(
            suite_dirs("dists/bookworm/main/binary-amd64/Packages.xz"),
            vec![
                "dists/bookworm/",
                "dists/bookworm/main/",
                "dists/bookworm/main/binary-amd64/"
            ]
        );
        assert!(suite_dirs("pool/x").is_empty());
        assert!(suite_dirs("dists/InRelease").is_empty());
    }

    #[test]
    fn classify() {
        let text = format!(
            "SHA256:\n {} 10 main/binary-amd64/Packages.xz\n {} 20 main/binary-amd64/Packages\n {} 30 main/source/Sources.gz\n {} 40 main/i18n/Translation-en\n",
            hex64(1), hex64(2), hex64(3), hex64(4)
        );
        let r = Release::parse(text.as_bytes());
        let h = |b: u8| [b; 32];
        let d = "dists/stable/";
        // (rel, content hash, expected)
        let cases: Vec<(String, [u8; 32], Result<(IndexKind, &str), &str>)> = vec![
            (
                format!("{d}main/binary-amd64/Packages.xz"),
                h(1),
                Ok((
                    IndexKind::Packages,
                    "dists/stable/main/binary-amd64/Packages",
                )),
            ),
            (
                format!("{d}main/binary-amd64/Packages"),
                h(2),
                Ok((
                    IndexKind::Packages,
                    "dists/stable/main/binary-amd64/Packages",
                )),
            ),
            (
                format!("{d}main/source/Sources.gz"),
                h(3),
                Ok((IndexKind::Sources, "dists/stable/main/source/Sources")),
            ),
            (
                format!("{d}main/binary-amd64/by-hash/SHA256/{}", hex64(1)),
                h(1),
                Ok((
                    IndexKind::Packages,
                    "dists/stable/main/binary-amd64/Packages",
                )),
            ),
            (
                format!("{d}main/binary-amd64/Packages.xz"),
                h(9),
                Err("content does not match the Release's SHA256"),
            ),
            (
                format!("{d}main/binary-amd64/by-hash/SHA256/{}", hex64(1)),
                h(9),
                Err("by-hash content does not match its name"),
            ),
            (
                format!("{d}main/source/by-hash/SHA256/{}", hex64(1)),
                h(1),
                Err("by-hash file listed for another directory"),
            ),
            (
                format!("{d}main/binary-amd64/by-hash/SHA256/{}", hex64(7)),
                h(7),
                Err("hash not listed in the Release"),
            ),
            (
                format!("{d}main/i18n/Translation-en"),
                h(4),
                Err("not a Packages or Sources index"),
            ),
            (
                format!("{d}main/binary-i386/Packages.xz"),
                h(1),
                Err("not listed in the Release"),
            ),
        ];
        for (rel, sha, want) in cases {
            let got = classify_index(d, &rel, &r, &sha, None);
            let got = got.as_ref().map(|(k, p)| (*k, p.as_str())).map_err(|e| *e);
            assert_eq!(got, want, "{rel}");
        }
    }
}
