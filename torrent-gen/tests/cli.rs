//! The `debtorrent-gen` binary as scripts use it: exact stdout, exit codes,
//! and one clear line on stderr for every kind of bad input.

use std::io::Write;

mod common;
use common::compressed;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

fn bin() -> Command {
    Command::new(env!("CARGO_BIN_EXE_debtorrent-gen"))
}

fn data(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/data")
        .join(name)
}

fn tmpdir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("dtgen-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn run_stdin(args: &[&str], input: &[u8]) -> Output {
    let mut child = bin()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    let input = input.to_vec();
    let writer = std::thread::spawn(move || {
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output().unwrap();
    writer.join().unwrap();
    out
}

/// Asserts a failure with `code` and a single stderr line containing `needle`.
fn assert_fails(out: &Output, code: i32, needle: &str) {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(code), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "one line on stderr, got: {err}");
    assert!(err.starts_with("debtorrent-gen: "), "{err}");
    assert!(err.contains(needle), "{err:?} should mention {needle:?}");
    assert!(out.stdout.is_empty(), "nothing on stdout on failure");
}

#[test]
fn swarm_id_prints_the_dt2_id_of_the_suite_family() {
    let id = |suite: &str| {
        let out = bin()
            .args(["swarm-id", "--origin", "Debian", "--suite", suite])
            .args(["--component", "main"])
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    // The vector of docs/torrent-format.md section 7.
    assert_eq!(id("bookworm"), "f9621662903b050026304cd01dabbb8e8f3ad6c2\n");
    assert_eq!(id("bookworm-updates"), id("bookworm"));
    assert_eq!(id("bookworm-security"), id("bookworm"));
    assert_ne!(id("trixie"), id("bookworm"));
    let out = bin()
        .args(["swarm-id", "--suite", "bookworm"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "--origin is required");
}

#[test]
fn hash_prints_the_info_hash_and_nothing_else() {
    let out = bin()
        .arg("hash")
        .arg(data("sources-small"))
        .output()
        .unwrap();
    assert!(out.status.success());
    assert_eq!(out.stdout, b"f397be2616df34f6ade95e3d9efe594a046053a5\n");
    let out = run_stdin(
        &["hash", "-"],
        &std::fs::read(data("packages-crlf")).unwrap(),
    );
    assert_eq!(out.stdout, b"fdbcb221afeae983c0cd4dc1f42214ab26cf6fb2\n");
}

#[test]
fn make_then_show_round_trips() {
    let dir = tmpdir("make");
    let torrent = dir.join("p.torrent");
    let out = bin()
        .args(["make"])
        .arg(data("packages-small"))
        .arg("-o")
        .arg(&torrent)
        .args(["--tracker", "http://127.0.0.1:6969/announce"])
        .args(["--webseed", "http://deb.debian.org/debian/"])
        .args(["--index-path", "dists/bookworm/main/binary-amd64/Packages"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = String::from_utf8(out.stdout).unwrap();
    assert!(
        summary.contains("info hash: 1b314d87d8452c24c68e8829d4d5f8d6a90c363c"),
        "{summary}"
    );
    assert!(summary.contains("pieces:    4"), "{summary}");
    assert!(summary.contains("bytes:     1539069"), "{summary}");
    assert!(summary.contains("1  unsafe or invalid path"), "{summary}");
    assert!(
        summary.contains("2  same path listed with different size or hash"),
        "{summary}"
    );

    let out = bin()
        .arg("show")
        .arg(&torrent)
        .arg("--json")
        .output()
        .unwrap();
    assert!(out.status.success());
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["info_hash"], "1b314d87d8452c24c68e8829d4d5f8d6a90c363c");
    assert_eq!(v["files"].as_array().unwrap().len(), 4);
    assert_eq!(v["trackers"][0], "http://127.0.0.1:6969/announce");
    assert_eq!(v["index_path"], "dists/bookworm/main/binary-amd64/Packages");
    assert_eq!(v["canonical"], true);
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn strict_turns_drops_into_exit_4() {
    let out = bin()
        .args(["hash", "--strict"])
        .arg(data("packages-small"))
        .output()
        .unwrap();
    assert_fails(&out, 4, "--strict: 5 entries dropped");
    let out = bin()
        .args(["hash", "--strict"])
        .arg(data("packages-crlf"))
        .output()
        .unwrap();
    assert!(out.status.success());
}

#[test]
fn kind_can_be_forced() {
    let out = bin()
        .args(["hash", "--kind", "packages"])
        .arg(data("sources-small"))
        .output()
        .unwrap();
    assert_fails(&out, 3, "no valid entry");
}

#[test]
fn bad_inputs_get_one_clear_line_and_a_nonzero_exit() {
    let plain = std::fs::read(data("packages-small")).unwrap();
    let mut garbage = vec![0u8; 4096];
    let mut s: u32 = 12345;
    for b in garbage.iter_mut() {
        s = s.wrapping_mul(1664525).wrapping_add(1013904223);
        *b = (s >> 24) as u8;
    }
    let cases: Vec<(&str, Vec<u8>, i32, &str)> = vec![
        ("empty input", vec![], 3, "not a Debian Packages or Sources index"),
        ("binary garbage", garbage, 3, "not a Debian Packages or Sources index"),
        ("NUL bytes everywhere", vec![0u8; 10000], 3, "not a Debian Packages or Sources index"),
        (
            "only invalid entries (NUL and invalid UTF-8 in paths)",
            b"Filename: pool/a\0b\nSize: 1\nSHA256: 0000000000000000000000000000000000000000000000000000000000000000\n\nFilename: pool/\xff\nSize: 1\nSHA256: 0000000000000000000000000000000000000000000000000000000000000000\n".to_vec(),
            3,
            "no valid entry: 2 paragraphs read, 2 entries dropped",
        ),
    ];
    for (name, input, code, needle) in cases {
        let out = run_stdin(&["hash", "-"], &input);
        eprintln!("case: {name}");
        assert_fails(&out, code, needle);
    }
    for (format, mut data) in compressed(&plain) {
        let full = data.clone();
        data.truncate(data.len() / 2);
        let out = run_stdin(&["hash", "-"], &data);
        eprintln!("case: truncated {format}");
        assert_fails(&out, 3, &format!("{format} data is corrupt or truncated"));
        let mut bad = full.clone();
        let mid = bad.len() / 2;
        for b in &mut bad[mid..mid + 8] {
            *b ^= 0x5a;
        }
        let out = run_stdin(&["hash", "-"], &bad);
        eprintln!(
            "case: corrupt {format}: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        assert_eq!(
            out.status.code(),
            Some(3),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn decompression_bomb_stops_at_the_cap() {
    // 64 MiB of zeros packs into a few KiB of zstd and gzip.
    let zeros = vec![0u8; 64 << 20];
    let bomb = zstd::encode_all(&zeros[..], 19).unwrap();
    assert!(bomb.len() < 64 << 10);
    let out = run_stdin(&["hash", "--max-size", "16777216", "-"], &bomb);
    assert_fails(&out, 3, "exceeds the limit of 16777216 bytes");
}

#[test]
fn io_errors_exit_1() {
    let out = bin()
        .args(["hash", "/nonexistent/Packages"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "cannot open /nonexistent/Packages");
    let out = bin()
        .args(["make"])
        .arg(data("packages-small"))
        .args(["-o", "/nonexistent/dir/out.torrent"])
        .output()
        .unwrap();
    assert_fails(&out, 1, "cannot write /nonexistent/dir/out.torrent");
}

#[test]
fn hostile_metainfo_files_are_rejected_cleanly() {
    let dir = tmpdir("show");
    let info = std::fs::read(data("packages-small.info")).unwrap();
    let mut good = b"d4:info".to_vec();
    good.extend_from_slice(&info);
    good.push(b'e');
    let mut lying = b"d4:info".to_vec();
    lying.extend_from_slice(&info[..40]);
    lying.extend_from_slice(b"99999999:abc");
    let mut traversal =
        b"d4:infod10:debtorrenti1e5:filesld6:lengthi1e4:pathl2:..6:passwde6:sha25632:".to_vec();
    traversal.extend_from_slice(&[0u8; 32]);
    traversal.extend_from_slice(b"ee4:name7:archiveee");
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        ("lies about a length", lying, "malformed bencode"),
        (
            "nests 100,000 deep",
            b"l".repeat(100_000),
            "top level is not a dictionary",
        ),
        (
            "nests 100,000 deep in info",
            [b"d4:infod1:x".to_vec(), b"l".repeat(100_000)].concat(),
            "malformed bencode",
        ),
        (
            "nests 100,000 deep beside info",
            [b"d1:a".to_vec(), b"l".repeat(100_000)].concat(),
            "malformed bencode",
        ),
        ("not bencode", b"hello world".to_vec(), "malformed bencode"),
        ("empty", vec![], "empty file"),
        (
            "no info",
            b"d8:announce3:urle".to_vec(),
            "no info dictionary",
        ),
        ("traversal path", traversal, "file path rejected"),
        (
            "trailing data",
            [good.clone(), b"de".to_vec()].concat(),
            "trailing data",
        ),
        (
            "trailing junk",
            [good.clone(), b"junk".to_vec()].concat(),
            "malformed bencode",
        ),
        (
            "standard torrent",
            b"d4:infod6:lengthi1e4:name1:x12:piece lengthi16384e6:pieces20:aaaaaaaaaaaaaaaaaaaaee"
                .to_vec(),
            "not a dt1 info dict",
        ),
    ];
    for (name, bytes, needle) in cases {
        let f = dir.join("x.torrent");
        std::fs::write(&f, &bytes).unwrap();
        let out = bin().arg("show").arg(&f).output().unwrap();
        eprintln!("case: {name}");
        assert_fails(&out, 3, needle);
    }
    let f = dir.join("good.torrent");
    std::fs::write(&f, &good).unwrap();
    let out = bin().arg("show").arg(&f).output().unwrap();
    assert!(out.status.success());
    std::fs::remove_dir_all(dir).unwrap();
}
