//! The torrent value: the sorted pieces of one index and its info hash
//! (sections 2 and 3 of `docs/torrent-format.md`).
//!
//! Memory layout: the daemon keeps several of these loaded, each with 60-80
//! thousand pieces, so a piece is not a struct with an owned `String`. All
//! paths share one `String` in piece order; per piece we keep an end offset
//! (4 bytes), a size (8) and a SHA-256 (32), plus 4 bytes in a hash table for
//! path lookups: about 50 bytes a piece on top of the path text itself.

use std::fmt;
use std::io::{self, Write};

use hashbrown::HashTable;
use sha1::{Digest, Sha1};

use crate::parse::{DropReason, Entries, Report};

/// The SHA-1 of a bencoded info dict: the swarm's identity.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default)]
pub struct InfoHash(pub [u8; 20]);

impl InfoHash {
    /// Lower-case hex, 40 characters.
    pub fn to_hex(&self) -> String {
        crate::hex::encode_hex(&self.0)
    }

    /// Parses 40 hex digits (either case).
    pub fn from_hex(s: &str) -> Option<InfoHash> {
        crate::hex::decode_hex(s.as_bytes()).map(InfoHash)
    }
}

impl fmt::Display for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for InfoHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "InfoHash({})", self.to_hex())
    }
}

/// Hex of a SHA-256, for display.
pub fn sha256_hex(h: &[u8; 32]) -> String {
    crate::hex::encode_hex(h)
}

/// One piece, which is one file of the archive.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Piece<'a> {
    /// Its index in the torrent.
    pub index: u32,
    /// Its path relative to the archive root, e.g. `pool/main/h/hello/hello_2.10-3_amd64.deb`.
    pub path: &'a str,
    /// Its length in bytes (the piece length).
    pub size: u64,
    /// Its SHA-256 (the piece hash).
    pub sha256: &'a [u8; 32],
}

/// A lookup-table entry. It carries the path's place in the arena so a
/// lookup touches the table and the path bytes, not also `ends`: on a real
/// index with random probes each avoided cache miss is a quarter of the time.
#[derive(Clone, Copy)]
struct Slot {
    index: u32,
    start: u32,
    end: u32,
}

/// The torrent of one index: pieces sorted by path, and the info hash.
pub struct Torrent {
    info_hash: InfoHash,
    paths: String,
    ends: Box<[u32]>,
    sizes: Box<[u64]>,
    hashes: Box<[[u8; 32]]>,
    total: u64,
    lookup: HashTable<Slot>,
    hasher: foldhash::fast::RandomState,
}

impl fmt::Debug for Torrent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Torrent")
            .field("info_hash", &self.info_hash)
            .field("pieces", &self.ends.len())
            .field("total", &self.total)
            .finish()
    }
}

impl Torrent {
    /// Section 2's last steps: merge identical duplicates, drop conflicting
    /// ones, sort by path bytes. `None` if nothing is left.
    pub(crate) fn from_entries(mut entries: Entries, report: &mut Report) -> Option<Torrent> {
        let arena = &entries.arena;
        let path_of = |e: &crate::parse::RawEntry| {
            let s = e.path_start as usize;
            &arena.as_bytes()[s..s + e.path_len as usize]
        };
        // Real indexes list paths almost in order (by source package), which
        // the pattern-defeating quicksort handles in near-linear time.
        entries
            .list
            .sort_unstable_by(|a, b| path_of(a).cmp(path_of(b)));

        let list = &entries.list;
        let mut keep: Vec<usize> = Vec::with_capacity(list.len());
        let mut i = 0;
        while i < list.len() {
            let mut j = i + 1;
            let mut conflict = false;
            while j < list.len() && path_of(&list[j]) == path_of(&list[i]) {
                conflict |= list[j].size != list[i].size || list[j].sha256 != list[i].sha256;
                j += 1;
            }
            let n = (j - i) as u64;
            if conflict {
                report.add_dropped(DropReason::Conflict, n);
            } else {
                report.duplicates_merged += n - 1;
                keep.push(i);
            }
            i = j;
        }
        if keep.is_empty() {
            return None;
        }
        let path_bytes: usize = keep.iter().map(|&k| list[k].path_len as usize).sum();
        let mut paths = String::with_capacity(path_bytes);
        let mut ends = Vec::with_capacity(keep.len());
        let mut sizes = Vec::with_capacity(keep.len());
        let mut hashes = Vec::with_capacity(keep.len());
        for &k in &keep {
            let e = &list[k];
            paths.push_str(entries.path(e));
            // Fits: the arena (a superset) was checked to fit in u32.
            ends.push(u32::try_from(paths.len()).unwrap_or(u32::MAX));
            sizes.push(e.size);
            hashes.push(e.sha256);
        }
        drop(entries);
        Some(Torrent::assemble(paths, ends, sizes, hashes))
    }

    /// Builds a torrent from pieces already known to be valid, sorted and unique.
    fn assemble(paths: String, ends: Vec<u32>, sizes: Vec<u64>, hashes: Vec<[u8; 32]>) -> Torrent {
        let total = sizes.iter().sum();
        let mut t = Torrent {
            info_hash: InfoHash([0; 20]),
            paths,
            ends: ends.into_boxed_slice(),
            sizes: sizes.into_boxed_slice(),
            hashes: hashes.into_boxed_slice(),
            total,
            lookup: HashTable::new(),
            hasher: foldhash::fast::RandomState::default(),
        };
        t.info_hash = t.compute_info_hash();
        t.build_lookup();
        t
    }

    fn build_lookup(&mut self) {
        let mut table = HashTable::with_capacity(self.ends.len());
        let mut start = 0;
        for (i, &end) in self.ends.iter().enumerate() {
            let slot = Slot {
                index: i as u32,
                start,
                end,
            };
            let h = self.hash_path(self.slot_path(&slot));
            table.insert_unique(h, slot, |s| self.hash_path(self.slot_path(s)));
            start = end;
        }
        self.lookup = table;
    }

    fn hash_path(&self, p: &str) -> u64 {
        use std::hash::BuildHasher;
        self.hasher.hash_one(p)
    }

    fn slot_path(&self, s: &Slot) -> &str {
        self.paths
            .get(s.start as usize..s.end as usize)
            .unwrap_or_default()
    }

    fn path_at(&self, i: u32) -> &str {
        let i = i as usize;
        let start = if i == 0 { 0 } else { self.ends[i - 1] as usize };
        self.paths
            .get(start..self.ends[i] as usize)
            .unwrap_or_default()
    }

    /// The info hash (SHA-1 of the bencoded info dict).
    pub fn info_hash(&self) -> InfoHash {
        self.info_hash
    }

    /// How many pieces (files) the torrent has.
    pub fn piece_count(&self) -> u32 {
        // The arena limit (4 GiB of paths) keeps this far below u32::MAX.
        u32::try_from(self.ends.len()).unwrap_or(u32::MAX)
    }

    /// The sum of all piece lengths.
    pub fn total_size(&self) -> u64 {
        self.total
    }

    /// Piece `index`, if it exists.
    pub fn piece(&self, index: u32) -> Option<Piece<'_>> {
        let i = index as usize;
        Some(Piece {
            index,
            path: self.path_at(index),
            size: *self.sizes.get(i)?,
            sha256: self.hashes.get(i)?,
        })
    }

    /// The piece whose path (relative to the archive root) is `path`.
    pub fn find(&self, path: &str) -> Option<Piece<'_>> {
        let h = self.hash_path(path);
        let slot = self.lookup.find(h, |s| self.slot_path(s) == path)?;
        self.piece(slot.index)
    }

    /// All pieces in order.
    pub fn pieces(&self) -> impl ExactSizeIterator<Item = Piece<'_>> + '_ {
        (0..self.ends.len()).map(move |i| Piece {
            // In range: i < len, and all columns have the same length.
            index: i as u32,
            path: self.path_at(i as u32),
            size: self.sizes[i],
            sha256: &self.hashes[i],
        })
    }

    /// Approximate heap bytes held, for status pages and budgets.
    pub fn heap_bytes(&self) -> usize {
        self.paths.capacity()
            + self.ends.len() * 4
            + self.sizes.len() * 8
            + self.hashes.len() * 32
            + self.lookup.capacity() * (std::mem::size_of::<Slot>() + 1)
    }

    /// Writes the bencoded info dict (section 3).
    pub fn write_info<W: Write>(&self, w: W) -> io::Result<()> {
        let mut b = crate::bencode::Writer::new(io::BufWriter::with_capacity(64 * 1024, w));
        b.dict().bytes(b"debtorrent").int(1).bytes(b"files").list();
        for p in self.pieces() {
            b.dict().bytes(b"length").uint(p.size).bytes(b"path").list();
            for c in p.path.split('/') {
                b.bytes(c.as_bytes());
            }
            b.end().bytes(b"sha256").bytes(p.sha256).end();
        }
        b.end().bytes(b"name").bytes(b"archive").end();
        b.finish()?.flush()
    }

    /// The bencoded info dict as bytes.
    pub fn info_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_info(&mut v);
        v
    }

    fn compute_info_hash(&self) -> InfoHash {
        struct HashWriter(Sha1);
        impl Write for HashWriter {
            fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
                self.0.update(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut hw = HashWriter(Sha1::new());
        // HashWriter never fails.
        let _ = self.write_info(&mut hw);
        InfoHash(hw.0.finalize().into())
    }

    /// Reads a dt1 info dict back (e.g. from a metainfo file). Every rule of
    /// section 2 is checked again, so a torrent read from disk or the network
    /// can never name an unsafe path; the info hash is the SHA-1 of the
    /// bytes given, as peers see it. Returns whether `raw` is the canonical
    /// encoding of the torrent (what `debtorrent-gen` would write).
    pub fn from_info_bytes(raw: &[u8]) -> Result<(Torrent, bool), crate::MetainfoError> {
        let t = crate::metainfo::decode_info(raw)?;
        let canonical = t.info_bytes() == raw;
        let mut t = t;
        t.info_hash = InfoHash(Sha1::digest(raw).into());
        Ok((t, canonical))
    }

    /// Builds a torrent from pieces read back from an info dict; they are
    /// checked for order and uniqueness here.
    pub(crate) fn from_checked_pieces(
        pieces: Vec<(String, u64, [u8; 32])>,
    ) -> Result<Torrent, crate::MetainfoError> {
        if pieces.is_empty() {
            return Err(crate::MetainfoError::Invalid("no files".into()));
        }
        let mut paths = String::new();
        let mut ends = Vec::with_capacity(pieces.len());
        let mut sizes = Vec::with_capacity(pieces.len());
        let mut hashes = Vec::with_capacity(pieces.len());
        let mut prev: Option<&str> = None;
        for (p, size, hash) in &pieces {
            if prev.is_some_and(|q| q.as_bytes() >= p.as_bytes()) {
                return Err(crate::MetainfoError::Invalid(format!(
                    "files not sorted by path or not unique at {p:?}"
                )));
            }
            prev = Some(p);
            paths.push_str(p);
            ends.push(
                u32::try_from(paths.len())
                    .map_err(|_| crate::MetainfoError::Invalid("paths too long".into()))?,
            );
            sizes.push(*size);
            hashes.push(*hash);
        }
        Ok(Torrent::assemble(paths, ends, sizes, hashes))
    }
}
