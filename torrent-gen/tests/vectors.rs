//! The normative byte-exact vectors of `docs/torrent-format.md`
//! (in `tests/data/`, with `EXPECTED`): each input must produce its exact info
//! dict, info hash, piece count and total size.

use debtorrent_gen::{build_from_bytes, read_metainfo, IndexKind, Options, Torrent};
use std::path::Path;

fn data(name: &str) -> Vec<u8> {
    let p = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name);
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

struct Expected {
    name: String,
    kind: IndexKind,
    hash: String,
    pieces: u32,
    total: u64,
}

fn expected() -> Vec<Expected> {
    let text = String::from_utf8(data("EXPECTED")).unwrap();
    let rows: Vec<Expected> = text
        .lines()
        .filter(|l| !l.starts_with('#') && !l.trim().is_empty())
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Expected {
                name: f[0].into(),
                kind: if f[1] == "sources" {
                    IndexKind::Sources
                } else {
                    IndexKind::Packages
                },
                hash: f[2].into(),
                pieces: f[3].parse().unwrap(),
                total: f[4].parse().unwrap(),
            }
        })
        .collect();
    assert_eq!(rows.len(), 3, "EXPECTED lists three vectors");
    rows
}

#[test]
fn every_vector_gives_its_exact_info_dict() {
    for e in expected() {
        let input = data(&e.name);
        let want_info = data(&format!("{}.info", e.name));
        for kind in [None, Some(e.kind)] {
            let built = build_from_bytes(
                &input,
                &Options {
                    kind,
                    ..Options::default()
                },
            )
            .unwrap_or_else(|err| panic!("{}: {err}", e.name));
            assert_eq!(built.report.kind, Some(e.kind), "{}: detected kind", e.name);
            assert_eq!(
                built.torrent.info_bytes(),
                want_info,
                "{}: info dict bytes",
                e.name
            );
            assert_eq!(
                built.torrent.info_hash().to_hex(),
                e.hash,
                "{}: info hash",
                e.name
            );
            assert_eq!(built.torrent.piece_count(), e.pieces, "{}: pieces", e.name);
            assert_eq!(built.torrent.total_size(), e.total, "{}: total", e.name);
        }
    }
}

#[test]
fn every_vector_reads_back_from_its_info_dict() {
    for e in expected() {
        let raw = data(&format!("{}.info", e.name));
        let (t, canonical) = Torrent::from_info_bytes(&raw).unwrap();
        assert!(canonical, "{}", e.name);
        assert_eq!(t.info_hash().to_hex(), e.hash);
        assert_eq!(t.piece_count(), e.pieces);
    }
}

#[test]
fn packages_small_drops_what_the_format_says() {
    use debtorrent_gen::DropReason::*;
    let built = build_from_bytes(&data("packages-small"), &Options::default()).unwrap();
    let r = &built.report;
    assert_eq!(r.dropped(BadPath), 1, "pool/../../etc/passwd");
    assert_eq!(
        r.dropped(Conflict),
        2,
        "conflict listed twice with different sizes"
    );
    assert_eq!(r.dropped(BadSize), 2, "Size: 0 and Size: 12kB");
    assert_eq!(r.duplicates_merged, 1, "apt-doc listed twice, identically");
    let t = &built.torrent;
    let apt = t
        .find("pool/main/a/apt/apt_2.6.1_amd64.deb")
        .expect("apt is a piece");
    assert_eq!(apt.size, 1371936);
    assert_eq!(t.piece(apt.index), Some(apt));
    assert!(
        t.find("pool/evil/not-a-field.deb").is_none(),
        "continuation text is no field"
    );
    assert!(t.find("pool/../../etc/passwd").is_none());
    let paths: Vec<&str> = t.pieces().map(|p| p.path).collect();
    let mut sorted = paths.clone();
    sorted.sort();
    assert_eq!(paths, sorted);
}

#[test]
fn sources_small_joins_directory_and_drops_bad_lines() {
    use debtorrent_gen::DropReason::*;
    let built = build_from_bytes(&data("sources-small"), &Options::default()).unwrap();
    assert_eq!(built.report.dropped(BadHash), 1);
    assert_eq!(built.report.dropped(BadPath), 1, "../escape.dsc");
    assert!(built
        .torrent
        .find("pool/main/h/hello/hello_2.10-3.dsc")
        .is_some());
    assert!(built
        .torrent
        .find("pool/main/b/broken/broken_1.tar.xz")
        .is_some());
}

#[test]
fn metainfo_round_trip_keeps_the_info_hash() {
    let built = build_from_bytes(&data("packages-small"), &Options::default()).unwrap();
    let mut out = Vec::new();
    debtorrent_gen::write_metainfo(
        &mut out,
        &built.torrent,
        &[
            "http://tracker.example/announce".into(),
            "udp://t2.example:6969".into(),
        ],
        &["http://deb.debian.org/debian/".into()],
        Some("dists/bookworm/main/binary-amd64/Packages"),
        Some("test"),
    )
    .unwrap();
    let m = read_metainfo(&out).unwrap();
    assert_eq!(m.torrent.info_hash(), built.torrent.info_hash());
    assert!(m.canonical);
    assert_eq!(m.trackers.len(), 2);
    assert_eq!(
        m.webseeds,
        vec!["http://deb.debian.org/debian/".to_string()]
    );
    assert_eq!(
        m.index_path.as_deref(),
        Some("dists/bookworm/main/binary-amd64/Packages")
    );
    assert_eq!(m.comment.as_deref(), Some("test"));
}
