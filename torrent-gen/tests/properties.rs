//! Properties of the format that must hold for any index, not just the
//! vectors: peers whose mirrors order paragraphs differently still meet in
//! one swarm, and any real change to the set of files is a new swarm.

use debtorrent_gen::{build_from_bytes, Options};
use proptest::prelude::*;
use std::io::Write;

mod common;

#[derive(Clone, Debug)]
struct Entry {
    path: String,
    size: u64,
    hash: [u8; 32],
    filler: String,
}

fn entry() -> impl Strategy<Value = Entry> {
    (
        "[a-z0-9]{1,3}",
        "[a-z0-9+~.-]{1,12}",
        1u64..(1 << 40),
        any::<[u8; 32]>(),
        "[A-Za-z ]{0,40}",
    )
        .prop_map(|(dir, name, size, hash, filler)| Entry {
            path: format!("pool/main/{dir}/{name}_all.deb"),
            size,
            hash,
            filler,
        })
}

fn unique(entries: Vec<Entry>) -> Vec<Entry> {
    let mut seen = std::collections::HashSet::new();
    entries
        .into_iter()
        .filter(|e| seen.insert(e.path.clone()))
        .collect()
}

fn render(entries: &[Entry], upper_hex: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for e in entries {
        let mut hex: String = e.hash.iter().map(|b| format!("{b:02x}")).collect();
        if upper_hex {
            hex = hex.to_uppercase();
        }
        write!(
            out,
            "Package: p\nDescription: {}\n continued Filename: nope\nFilename: {}\nSize: {}\nSHA256: {}\n\n",
            e.filler, e.path, e.size, hex
        )
        .unwrap();
    }
    out
}

fn hash_of(index: &[u8]) -> String {
    build_from_bytes(index, &Options::default())
        .unwrap()
        .torrent
        .info_hash()
        .to_hex()
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    #[test]
    fn reordering_paragraphs_never_changes_the_info_hash(
        entries in prop::collection::vec(entry(), 1..40),
        seed in any::<u64>(),
    ) {
        let entries = unique(entries);
        let mut shuffled = entries.clone();
        // A deterministic shuffle from the seed.
        let mut s = seed | 1;
        for i in (1..shuffled.len()).rev() {
            s ^= s << 13; s ^= s >> 7; s ^= s << 17;
            shuffled.swap(i, (s % (i as u64 + 1)) as usize);
        }
        prop_assert_eq!(hash_of(&render(&entries, false)), hash_of(&render(&shuffled, true)));
    }

    #[test]
    fn adding_a_valid_entry_always_changes_the_info_hash(
        entries in prop::collection::vec(entry(), 1..40),
        extra in entry(),
    ) {
        let entries = unique(entries);
        prop_assume!(entries.iter().all(|e| e.path != extra.path));
        let mut more = entries.clone();
        more.push(extra);
        let before = build_from_bytes(&render(&entries, false), &Options::default()).unwrap();
        let after = build_from_bytes(&render(&more, false), &Options::default()).unwrap();
        prop_assert_ne!(before.torrent.info_hash(), after.torrent.info_hash());
        prop_assert_eq!(after.torrent.piece_count(), before.torrent.piece_count() + 1);
    }

    #[test]
    fn every_listed_path_is_found_and_nothing_else(
        entries in prop::collection::vec(entry(), 1..40),
        probe in "[a-z/._-]{0,30}",
    ) {
        let entries = unique(entries);
        let built = build_from_bytes(&render(&entries, false), &Options::default()).unwrap();
        for e in &entries {
            let p = built.torrent.find(&e.path).unwrap();
            prop_assert_eq!(p.size, e.size);
            prop_assert_eq!(p.sha256, &e.hash);
        }
        let listed = entries.iter().any(|e| e.path == probe);
        prop_assert_eq!(built.torrent.find(&probe).is_some(), listed);
    }

    #[test]
    fn parser_never_panics_on_arbitrary_bytes(data in prop::collection::vec(any::<u8>(), 0..2000)) {
        let _ = build_from_bytes(&data, &Options::default());
    }
}

#[test]
fn every_compression_gives_the_same_torrent() {
    let plain = std::fs::read(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/data/packages-small"
    ))
    .unwrap();
    let want = hash_of(&plain);
    for (name, data) in common::compressed(&plain) {
        let built =
            build_from_bytes(&data, &Options::default()).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(built.compression.name(), name);
        assert_eq!(built.torrent.info_hash().to_hex(), want, "{name}");
    }
}

/// The section 2 path rule, written the obvious way; `check_path` is a
/// one-pass version of it and must agree on every input.
fn path_ok_reference(p: &[u8]) -> bool {
    let Ok(s) = std::str::from_utf8(p) else {
        return false;
    };
    let unsafe_text = s.is_empty() || s.starts_with('/') || s.contains(['\\', '\0']);
    let bad_component = s.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    !unsafe_text && !bad_component
}

proptest! {
    #[test]
    fn check_path_agrees_with_the_rule(p in proptest::collection::vec(
        prop_oneof![Just(b'/'), Just(b'.'), Just(b'a'), Just(b'\\'), Just(0u8), Just(0xffu8), Just(b' ')],
        0..12,
    )) {
        prop_assert_eq!(debtorrent_gen::check_path(&p).is_ok(), path_ok_reference(&p));
    }

    #[test]
    fn hex_decodes_exactly_the_hex_digits(s in proptest::collection::vec(any::<u8>(), 6)) {
        let want = s.iter().all(u8::is_ascii_hexdigit).then(|| {
            let t = std::str::from_utf8(&s).unwrap_or_default();
            [0, 2, 4].map(|i| u8::from_str_radix(&t[i..i + 2], 16).unwrap_or_default())
        });
        prop_assert_eq!(debtorrent_gen::decode_hex::<3>(&s), want);
    }
}
