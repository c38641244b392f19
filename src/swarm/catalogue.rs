//! A dt2 swarm's catalogue: every piece of content that some index of the
//! swarm lists, or listed while the task ran, numbered by us.
//!
//! A dt2 swarm (`docs/torrent-format.md` §7) spans every version of one
//! suite family's indexes for one component: bookworm, bookworm-updates and
//! bookworm-security, Packages and Sources, every architecture. There is no
//! piece list that all peers share, so each daemon numbers the content it
//! knows by itself: a [`ContentId`] is our number for one SHA-256, handed
//! out the first time an index lists it and never reused while the swarm's
//! task runs. It is what the state machine calls a piece, what our
//! `dt_hold` announces, and what peers name in their REQUESTs to us.
//!
//! The catalogue only grows: entries of an index version that a newer one
//! replaced stay, so the files they name keep being served for as long as
//! they are in the store (issue 11, item 5), and a peer still on that
//! version still finds them here.
//!
//! Pure: no I/O. Shared between the swarm's task (which adds) and its
//! connections (which look up what a peer requests) behind a lock.

use std::collections::{HashMap, HashSet};

use crate::types::{InfoHash, PieceIndex};

/// Our number for one piece of content in a swarm.
pub type ContentId = PieceIndex;

/// One piece of content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub sha256: [u8; 32],
    pub size: u64,
    /// Its archive-relative path, where the store keeps it
    /// (`pool/main/h/hello/hello_2.10-3_amd64.deb`): the first path an
    /// index listed it under.
    pub path: Box<str>,
}

/// The catalogue of one swarm.
#[derive(Default, Debug)]
pub struct Catalogue {
    entries: Vec<Entry>,
    by_sha: HashMap<[u8; 32], ContentId>,
    total: u64,
    /// Index versions (dt1 info hashes) already folded in.
    versions: HashSet<InfoHash>,
}

impl Catalogue {
    /// Our number for `sha256`, if some index listed it.
    pub fn id(&self, sha256: &[u8; 32]) -> Option<ContentId> {
        self.by_sha.get(sha256).copied()
    }

    /// The entry numbered `id`.
    pub fn get(&self, id: ContentId) -> Option<&Entry> {
        self.entries.get(id as usize)
    }

    /// Entries, which are also the next number to be handed out.
    pub fn len(&self) -> u32 {
        self.entries.len() as u32
    }

    /// Bytes of all entries.
    pub fn total_size(&self) -> u64 {
        self.total
    }

    /// Index versions folded in.
    pub fn versions(&self) -> usize {
        self.versions.len()
    }

    /// Our number for this content, handing out the next one if it is new.
    /// Content is its SHA-256: a second path or a different size with the
    /// same hash is the same entry (the size of the first listing stands;
    /// a lying index cannot make a file bigger than its hash allows, since
    /// every piece is verified against the index that wanted it).
    pub fn intern(&mut self, sha256: [u8; 32], size: u64, path: &str) -> ContentId {
        if let Some(&id) = self.by_sha.get(&sha256) {
            return id;
        }
        let id = self.entries.len() as ContentId;
        self.entries.push(Entry {
            sha256,
            size,
            path: path.into(),
        });
        self.by_sha.insert(sha256, id);
        self.total = self.total.saturating_add(size);
        id
    }

    /// Folds in every piece of an index version (`version`: its dt1 info
    /// hash); returns false when that version was folded in already.
    pub fn add_index(&mut self, version: InfoHash, torrent: &debtorrent_gen::Torrent) -> bool {
        if !self.versions.insert(version) {
            return false;
        }
        for p in torrent.pieces() {
            self.intern(*p.sha256, p.size, p.path);
        }
        true
    }

    /// Checks the catalogue's own consistency (tests).
    #[cfg(test)]
    pub fn check_invariants(&self) {
        assert_eq!(self.by_sha.len(), self.entries.len(), "one id per hash");
        for (i, e) in self.entries.iter().enumerate() {
            assert_eq!(self.by_sha.get(&e.sha256), Some(&(i as u32)), "id of {i}");
        }
        assert_eq!(
            self.total,
            self.entries
                .iter()
                .fold(0u64, |t, e| t.saturating_add(e.size)),
            "total size"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packages(entries: &[(&str, &str)]) -> debtorrent_gen::Torrent {
        let mut text = String::new();
        for (name, body) in entries {
            let sha = debtorrent_gen::sha256_hex(&sha2_of(body));
            text.push_str(&format!(
                "Package: {name}\nFilename: pool/main/{name}.deb\nSize: {}\nSHA256: {sha}\n\n",
                body.len()
            ));
        }
        debtorrent_gen::build_from_bytes(text.as_bytes(), &Default::default())
            .expect("a valid index")
            .torrent
    }

    fn sha2_of(s: &str) -> [u8; 32] {
        use sha2::Digest;
        sha2::Sha256::digest(s.as_bytes()).into()
    }

    #[test]
    fn versions_share_numbers_for_the_same_content() {
        let v1 = packages(&[("a", "aaa"), ("b", "bbbb")]);
        // v2: b unchanged, a upgraded (new content), c added.
        let v2 = packages(&[("a", "aaa2"), ("b", "bbbb"), ("c", "c")]);
        let mut c = Catalogue::default();
        assert!(c.add_index(v1.info_hash(), &v1));
        assert!(
            !c.add_index(v1.info_hash(), &v1),
            "a version is folded in once"
        );
        let b = c.id(&sha2_of("bbbb")).expect("b listed");
        assert!(c.add_index(v2.info_hash(), &v2));
        c.check_invariants();
        // Old a, new a, b, c: b kept its number, the old a stays.
        assert_eq!(c.len(), 4);
        assert_eq!(c.versions(), 2);
        assert_eq!(c.id(&sha2_of("bbbb")), Some(b));
        assert!(c.id(&sha2_of("aaa")).is_some(), "replaced content stays");
        let a2 = c.id(&sha2_of("aaa2")).expect("new a");
        let e = c.get(a2).expect("entry");
        assert_eq!((e.size, &*e.path), (4, "pool/main/a.deb"));
        assert_eq!(c.total_size(), 3 + 4 + 4 + 1);
        assert_eq!(c.get(c.len()), None);
    }

    #[test]
    fn intern_is_by_hash_alone() {
        let mut c = Catalogue::default();
        let x = c.intern([1; 32], 10, "pool/x");
        assert_eq!(c.intern([1; 32], 99, "pool/other"), x);
        assert_eq!(c.get(x).map(|e| (e.size, &*e.path)), Some((10, "pool/x")));
        assert_eq!(c.intern([2; 32], 5, "pool/y"), x + 1);
        c.check_invariants();
    }
}
