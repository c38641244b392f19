//! The kit itself, without the daemon: apt straight from the test mirror.
//! Proves the fixture is a real, apt-valid, signed repository.

use crate::support::apt::{AptClient, Mode};
use crate::support::mirror::Mirror;
use crate::support::repo::repo;
use crate::support::sha256_file;

#[test]
fn fixture_has_signed_indexes_and_by_hash() {
    let repo = repo();
    let dist = repo.root.join("dists/stable");
    for f in ["InRelease", "Release", "Release.gpg"] {
        assert!(dist.join(f).is_file(), "missing {f}");
    }
    let inrelease = std::fs::read_to_string(dist.join("InRelease")).unwrap();
    assert!(inrelease.starts_with("-----BEGIN PGP SIGNED MESSAGE-----"));
    assert!(inrelease.contains("Acquire-By-Hash: yes"));
    let pk = dist.join("main/binary-amd64/Packages.xz");
    let sha = sha256_file(&pk).unwrap();
    assert!(dist
        .join("main/binary-amd64/by-hash/SHA256")
        .join(&sha)
        .is_file());
    assert!(
        repo.big().size > 50_000_000,
        "big package is only {} bytes",
        repo.big().size
    );
    assert!(repo
        .packages
        .iter()
        .any(|p| p.file_name.contains('+') && p.file_name.contains('~')));
    let sources = std::fs::read_to_string(dist.join("main/source/Sources")).unwrap();
    assert!(
        sources.contains("Package: foo"),
        "Sources lacks foo:\n{sources}"
    );
}

#[test]
fn direct_mode_baseline() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let apt = AptClient::new(repo, &mirror, Mode::Direct);
    let all = repo.binary_names();
    apt.update_and_fetch(repo, &all, "direct");
    let s = mirror.stats();
    let total: u64 = repo.packages.iter().map(|p| p.size).sum();
    assert_eq!(
        s.pool_bytes, total,
        "mirror pool bytes {s:?} vs packages {total}"
    );

    // Source package through apt-get source --download-only.
    let out = apt.source_download_only("foo");
    assert!(out.success(), "apt-get source: {}", out.combined());
    for f in &repo.sources {
        let got = sha256_file(&apt.root.join(&f.file_name)).unwrap();
        assert_eq!(got, f.sha256, "{}", f.file_name);
    }

    // A second update: apt rechecks InRelease with a conditional request.
    let out = apt.update();
    apt.assert_update_verified(&out, "direct, second update");
    if std::env::var_os("DEBTORRENT_E2E_SHOW_LOG").is_some() {
        eprintln!("---- mirror log (direct mode):\n{}", mirror.log_text());
    }
    let log = mirror.log();
    assert!(
        log.iter().any(|e| e.target.contains("/by-hash/")),
        "apt did not use by-hash:\n{}",
        mirror.log_text()
    );
    assert!(
        log.iter()
            .any(|e| e.target.ends_with("InRelease") && e.status == 304),
        "apt's second update sent no conditional InRelease request:\n{}",
        mirror.log_text()
    );
    assert!(
        log.iter()
            .any(|e| e.target.contains("%2b") || e.target.contains("%7e")),
        "apt did not percent-encode + or ~:\n{}",
        mirror.log_text()
    );
}

/// Not a test: copies the fixture (repo/ and archive-keyring.gpg) into
/// `$DEBTORRENT_E2E_EXPORT` for bench/daemon/run.sh.
#[test]
#[ignore = "fixture export for bench/daemon/run.sh; needs DEBTORRENT_E2E_EXPORT"]
fn export_fixture_for_bench() {
    let Some(dest) = std::env::var_os("DEBTORRENT_E2E_EXPORT") else {
        panic!("set DEBTORRENT_E2E_EXPORT to a folder");
    };
    let dest = std::path::PathBuf::from(dest);
    let repo = repo();
    std::fs::create_dir_all(&dest).unwrap();
    let mut cmd = std::process::Command::new("cp");
    cmd.arg("-a").arg(&repo.root).arg(dest.join("repo"));
    crate::support::run_ok(cmd);
    std::fs::copy(&repo.keyring, dest.join("archive-keyring.gpg")).unwrap();
    let mut list = String::new();
    for p in repo.all_pool_files() {
        list.push_str(&format!(
            "{} {} {} {}\n",
            p.name, p.size, p.sha256, p.pool_path
        ));
    }
    std::fs::write(dest.join("pool-files.txt"), list).unwrap();
}

/// apt resumes a partial download with `Range` + `If-Range`; the mirror
/// honours it (the daemon's restart test depends on this behaviour).
#[test]
fn direct_mode_resume_uses_range() {
    use crate::support::mirror::Fault;
    use std::time::Duration;
    let repo = repo();
    let big = repo.big();
    let mirror = Mirror::start(&repo.root);
    let apt = AptClient::new(repo, &mirror, Mode::Direct);
    let out = apt.update();
    apt.assert_update_verified(&out, "direct");
    mirror.set_pool_fault(Some(Fault::Throttle(10_000_000)));
    let mut child = apt.spawn(&["install", "--download-only", crate::support::repo::BIG]);
    let got = crate::support::wait_until(Duration::from_secs(30), || {
        mirror.stats().pool_bytes > 5_000_000
    });
    // The mirror dies mid-transfer (as the daemon does under kill -9).
    mirror.set_down(true);
    let ended = crate::support::wait_until(Duration::from_secs(30), || {
        child.try_wait().unwrap().is_some()
    });
    if !ended {
        let _ = child.kill();
    }
    let status = child.wait().unwrap();
    assert!(got, "download never started: {}", apt.spawned_output());
    assert!(
        !status.success(),
        "apt succeeded although the mirror died: {}",
        apt.spawned_output()
    );
    mirror.heal();
    let partial = apt.archives().join("partial").join(&big.file_name);
    let partial_len = std::fs::metadata(&partial).map(|m| m.len()).unwrap_or(0);
    assert!(
        partial_len > 0,
        "apt left no partial file: {:?}",
        crate::support::apt::ls(&apt.archives().join("partial"))
    );
    let before = mirror.stats().pool_bytes;
    let out = apt.download_only(&[crate::support::repo::BIG]);
    assert!(out.success(), "{}", out.combined());
    apt.verify_archives(repo, &[crate::support::repo::BIG])
        .unwrap();
    let resumed = mirror
        .log()
        .into_iter()
        .rev()
        .find(|e| e.target.ends_with(&big.file_name))
        .expect("no request for the big package");
    eprintln!("resume request: {resumed}");
    assert_eq!(
        resumed.status, 206,
        "apt did not resume with a range: {resumed}"
    );
    assert!(
        resumed.headers.iter().any(|(k, _)| k == "if-range"),
        "no If-Range: {resumed}"
    );
    assert!(
        mirror.stats().pool_bytes - before < big.size,
        "the whole file was sent again"
    );
}
