//! dt2 swarm identity: one swarm for every version of a suite family's
//! component, whatever the index bytes and the mirror (see section 7 of
//! `docs/torrent-format.md`).
//!
//! dt1 names a swarm by the hash of one index's content, so every index
//! version (a new one with every security update, -updates push and point
//! release) was a swarm of its own, and neighbours on different versions
//! never met. dt2 names it by what stays the same across versions and
//! across the suites that share a pool: the Release's `Origin`, the suite
//! family (the `Codename`, or `Suite` where there is none, without its
//! `-updates`/`-security`/`-proposed`/`-backports` suffix) and the
//! component. Architecture is not part of it: pieces are addressed by
//! content (SHA-256), so peers of every architecture share the `all`
//! packages they both hold, and a daemon joins one swarm per component, not
//! one per architecture.

use sha1::{Digest, Sha1};

use crate::InfoHash;

/// Suffixes that name a suite of the same family: its files are the
/// family's files (a point release folds them into the main suite).
const FAMILY_SUFFIXES: [&str; 5] = [
    "-proposed-updates",
    "-updates",
    "-security",
    "-proposed",
    "-backports",
];

/// The suite family of a `Codename` (or `Suite`): `bookworm-updates`,
/// `bookworm-security` and `bookworm` are all `bookworm`; `jammy-updates`
/// is `jammy`; the old security layout `buster/updates` is `buster`.
/// Anything else is its own family.
pub fn family(codename: &str) -> &str {
    let c = codename.trim();
    let c = c.strip_suffix("/updates").unwrap_or(c);
    for s in FAMILY_SUFFIXES {
        if let Some(base) = c.strip_suffix(s) {
            if !base.is_empty() {
                return base;
            }
        }
    }
    c
}

/// The dt2 swarm id: SHA-1 of the bencoded dict
/// `{"component": C, "debtorrent": 2, "family": F, "origin": O}` (keys in
/// bencode's order). `family` is used as given: pass it through
/// [`family`] first.
pub fn swarm_id(origin: &str, family: &str, component: &str) -> InfoHash {
    let dict = crate::bencode::to_vec(|w| {
        w.dict()
            .bytes(b"component")
            .bytes(component.as_bytes())
            .bytes(b"debtorrent")
            .int(2)
            .bytes(b"family")
            .bytes(family.as_bytes())
            .bytes(b"origin")
            .bytes(origin.as_bytes())
            .end();
    });
    InfoHash(Sha1::digest(&dict).into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families() {
        let cases = [
            ("bookworm", "bookworm"),
            ("bookworm-updates", "bookworm"),
            ("bookworm-security", "bookworm"),
            ("bookworm-backports", "bookworm"),
            ("bookworm-proposed-updates", "bookworm"),
            ("buster/updates", "buster"),
            ("jammy-updates", "jammy"),
            ("jammy-proposed", "jammy"),
            ("sid", "sid"),
            ("unstable", "unstable"),
            // Only a suffix after a name counts.
            ("-updates", "-updates"),
            (" trixie \n", "trixie"),
        ];
        for (codename, want) in cases {
            assert_eq!(family(codename), want, "{codename:?}");
        }
    }

    #[test]
    fn vectors() {
        // The ids were computed independently, with Python's hashlib over
        // the dict written out by hand, e.g.
        // sha1(b"d9:component4:main10:debtorrenti2e6:family8:bookworm6:origin6:Debiane").
        let cases = [
            (
                ("Debian", "bookworm", "main"),
                "f9621662903b050026304cd01dabbb8e8f3ad6c2",
            ),
            (
                ("Ubuntu", "jammy", "universe"),
                "98c2a74ff29ca98b6a41a11c6aad549149d146af",
            ),
            (("", "", ""), "e8218457ffeb82b00b6d1bdf84d3d75d41a4693b"),
        ];
        for ((o, f, c), want) in cases {
            assert_eq!(swarm_id(o, f, c).to_hex(), want, "{o} {f} {c}");
        }
        assert_eq!(
            swarm_id("Debian", family("bookworm-updates"), "main"),
            swarm_id("Debian", "bookworm", "main"),
            "a suite and its -updates meet in one swarm"
        );
        assert_ne!(
            swarm_id("Debian", "bookworm", "main"),
            swarm_id("Debian", "bookworm", "contrib")
        );
    }
}
