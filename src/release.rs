//! `Release` / `InRelease` files (pure): which index files a suite lists,
//! with their sizes and SHA256 (and SHA512, for `by-hash/SHA512/...`).
//!
//! The daemon registers a torrent only for a `Packages`/`Sources` file
//! whose bytes match the hash its suite's Release lists. It never checks
//! the OpenPGP signature itself: apt does that, and an index that apt
//! rejects is never asked for by path afterwards. What a lying mirror can
//! achieve is documented in docs/ARCHITECTURE.md.

use std::collections::HashMap;

use crate::types::InfoHash;

/// One file listed in a Release.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Listed {
    /// Path relative to the suite directory, e.g. `main/binary-amd64/Packages.xz`.
    pub name: String,
    /// Size in bytes.
    pub size: u64,
}

/// The parsed hash lists of a Release file, and the fields that name its
/// suite.
#[derive(Clone, Debug, Default)]
pub struct Release {
    /// `Origin`, `Codename` and `Suite`, where present.
    origin: Option<String>,
    codename: Option<String>,
    suite: Option<String>,
    sha256: HashMap<String, ([u8; 32], u64)>,
    by_sha256: HashMap<[u8; 32], Listed>,
    by_sha512: HashMap<[u8; 64], Listed>,
}

impl Release {
    /// Parses a Release or InRelease (clearsigned) text. Unknown fields and
    /// malformed lines are skipped: apt is the judge of the file's validity.
    pub fn parse(text: &[u8]) -> Release {
        let text = String::from_utf8_lossy(text);
        let body = strip_clearsign(&text);
        let mut r = Release::default();
        let mut section = None;
        for line in body.lines() {
            let line = line.trim_end_matches('\r');
            if let Some(rest) = line.strip_prefix([' ', '\t']) {
                let mut f = rest.split_whitespace();
                let (Some(hash), Some(size), Some(name), None) =
                    (f.next(), f.next(), f.next(), f.next())
                else {
                    continue;
                };
                let Ok(size) = size.parse::<u64>() else {
                    continue;
                };
                match section {
                    Some(Section::Sha256) => {
                        if let Some(h) = hex::<32>(hash) {
                            let listed = Listed {
                                name: name.to_string(),
                                size,
                            };
                            r.sha256.insert(name.to_string(), (h, size));
                            r.by_sha256.insert(h, listed);
                        }
                    }
                    Some(Section::Sha512) => {
                        if let Some(h) = hex::<64>(hash) {
                            r.by_sha512.insert(
                                h,
                                Listed {
                                    name: name.to_string(),
                                    size,
                                },
                            );
                        }
                    }
                    None => {}
                }
                continue;
            }
            // A top-level field: one of the suite's names, or the start
            // of a hash list.
            let Some((k, v)) = line.split_once(':') else {
                section = None;
                continue;
            };
            let (k, v) = (k.trim(), v.trim());
            let slot = match k {
                k if k.eq_ignore_ascii_case("Origin") => Some(&mut r.origin),
                k if k.eq_ignore_ascii_case("Codename") => Some(&mut r.codename),
                k if k.eq_ignore_ascii_case("Suite") => Some(&mut r.suite),
                _ => None,
            };
            if let (Some(slot), false) = (slot, v.is_empty()) {
                slot.get_or_insert_with(|| v.to_string());
            }
            section = match k {
                k if k.eq_ignore_ascii_case("SHA256") => Some(Section::Sha256),
                k if k.eq_ignore_ascii_case("SHA512") => Some(Section::Sha512),
                _ => None,
            };
        }
        r
    }

    /// The SHA256 and size listed for `name` (relative to the suite).
    pub fn sha256_of(&self, name: &str) -> Option<([u8; 32], u64)> {
        self.sha256.get(name).copied()
    }

    /// Every name the SHA256 section lists (relative to the suite).
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.sha256.keys().map(|k| k.as_str())
    }

    /// The file listed with this SHA256.
    pub fn by_sha256(&self, h: &[u8; 32]) -> Option<&Listed> {
        self.by_sha256.get(h)
    }

    /// The file listed with this SHA512.
    pub fn by_sha512(&self, h: &[u8; 64]) -> Option<&Listed> {
        self.by_sha512.get(h)
    }

    /// The dt2 swarm of `component` in this suite (`docs/torrent-format.md`
    /// §7): its `Origin`, the family of its `Codename` (its `Suite` when it
    /// has none), and the component. The same for every version of the
    /// suite's indexes and for its -updates and -security suites.
    pub fn swarm_id(&self, component: &str) -> InfoHash {
        let name = self
            .codename
            .as_deref()
            .or(self.suite.as_deref())
            .unwrap_or("");
        debtorrent_gen::swarm_id(
            self.origin.as_deref().unwrap_or(""),
            debtorrent_gen::family(name),
            component,
        )
    }

    /// How many files the SHA256 section lists.
    pub fn len(&self) -> usize {
        self.sha256.len()
    }
}

#[derive(Clone, Copy)]
enum Section {
    Sha256,
    Sha512,
}

/// The signed text of a clearsigned message, or the whole text.
fn strip_clearsign(text: &str) -> &str {
    let Some(start) = text.find("-----BEGIN PGP SIGNED MESSAGE-----") else {
        return text;
    };
    let after = &text[start..];
    // Armor headers ("Hash: SHA512") end at the first empty line.
    let body_start = after
        .find("\n\n")
        .map(|i| i + 2)
        .or_else(|| after.find("\r\n\r\n").map(|i| i + 4))
        .unwrap_or(after.len());
    let body = &after[body_start..];
    match body.find("-----BEGIN PGP SIGNATURE-----") {
        Some(end) => &body[..end],
        None => body,
    }
}

/// Decodes `N` bytes of hex (the workspace's one hex decoder).
pub fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    debtorrent_gen::decode_hex(s.as_bytes())
}

/// Which kind of index a Release-relative name is, if it is one the daemon
/// turns into a torrent: `.../Packages[.ext]` or `.../Sources[.ext]`.
pub fn index_kind(name: &str) -> Option<debtorrent_gen::IndexKind> {
    let base = name.rsplit('/').next()?;
    let stem = base.split('.').next()?;
    let ext_ok = match base.split_once('.') {
        None => true,
        Some((_, ext)) => matches!(ext, "gz" | "xz" | "bz2" | "lz4" | "zst" | "lzma"),
    };
    match stem {
        "Packages" if ext_ok => Some(debtorrent_gen::IndexKind::Packages),
        "Sources" if ext_ok => Some(debtorrent_gen::IndexKind::Sources),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn swarm_id_from_the_suite_fields() {
        let text = |fields: &str| {
            format!(
                "{fields}SHA256:\n {} 1 main/binary-amd64/Packages\n",
                "ab".repeat(32)
            )
        };
        let bookworm =
            Release::parse(text("Origin: Debian\nSuite: stable\nCodename: bookworm\n").as_bytes());
        let updates = Release::parse(
            text("Origin: Debian\nLabel: Debian\nSuite: stable-updates\nCodename: bookworm-updates\n").as_bytes(),
        );
        let no_codename =
            Release::parse(text("Origin: Debian\nSuite: bookworm-security\n").as_bytes());
        let want = debtorrent_gen::swarm_id("Debian", "bookworm", "main");
        assert_eq!(bookworm.swarm_id("main"), want);
        assert_eq!(updates.swarm_id("main"), want);
        assert_eq!(no_codename.swarm_id("main"), want);
        assert_ne!(bookworm.swarm_id("contrib"), want);
        // The fields of the signed part only; a field in the hash list is
        // not a field.
        assert_eq!(bookworm.len(), 1);
        assert_eq!(
            Release::parse(b"").swarm_id(""),
            debtorrent_gen::swarm_id("", "", "")
        );
    }

    const H1: &str = "1111111111111111111111111111111111111111111111111111111111111111";
    const H2: &str = "2222222222222222222222222222222222222222222222222222222222222222";

    #[test]
    fn parses_plain_and_clearsigned() {
        let plain = format!(
            "Origin: Debian\nSuite: stable\nMD5Sum:\n 00000000000000000000000000000000 10 main/binary-amd64/Packages\nSHA256:\n {H1} 1234 main/binary-amd64/Packages\n {H2}   99 main/binary-amd64/Packages.xz\n bad line\nAcquire-By-Hash: yes\n"
        );
        let signed = format!(
            "-----BEGIN PGP SIGNED MESSAGE-----\nHash: SHA512\n\n{plain}-----BEGIN PGP SIGNATURE-----\n\nabc\n {H1} 5 evil/Packages\n-----END PGP SIGNATURE-----\n"
        );
        for text in [plain.clone(), signed] {
            let r = Release::parse(text.as_bytes());
            assert_eq!(r.len(), 2);
            assert_eq!(
                r.sha256_of("main/binary-amd64/Packages.xz").map(|x| x.1),
                Some(99)
            );
            assert_eq!(
                r.sha256_of("main/binary-amd64/Packages").map(|x| x.1),
                Some(1234)
            );
            assert!(
                r.sha256_of("evil/Packages").is_none(),
                "signature block is not content"
            );
            let h2 = hex::<32>(H2).unwrap();
            assert_eq!(
                r.by_sha256(&h2).map(|l| l.name.as_str()),
                Some("main/binary-amd64/Packages.xz")
            );
        }
    }

    #[test]
    fn sha512_section() {
        let h = "ab".repeat(64);
        let r = Release::parse(format!("SHA512:\n {h} 7 main/source/Sources.xz\n").as_bytes());
        let key = hex::<64>(&h).unwrap();
        assert_eq!(r.by_sha512(&key).map(|l| l.size), Some(7));
        assert_eq!(r.len(), 0);
    }

    #[test]
    fn index_kinds() {
        use debtorrent_gen::IndexKind::*;
        let cases = [
            ("main/binary-amd64/Packages", Some(Packages)),
            ("main/binary-amd64/Packages.xz", Some(Packages)),
            ("main/binary-all/Packages.gz", Some(Packages)),
            ("main/source/Sources.zst", Some(Sources)),
            (
                "main/debian-installer/binary-amd64/Packages.lz4",
                Some(Packages),
            ),
            ("main/i18n/Translation-en.bz2", None),
            ("main/Contents-amd64.gz", None),
            ("main/binary-amd64/Packages.diff/Index", None),
            ("main/binary-amd64/Release", None),
            ("main/binary-amd64/Packages.xz.asc", None),
        ];
        for (name, want) in cases {
            assert_eq!(index_kind(name), want, "{name}");
        }
    }
}
