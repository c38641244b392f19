//! Issue 3, tests 1 and 2: apt through the daemon in URL-prefix mode and in
//! proxy mode gets a verified repository and intact packages; a second apt
//! client then gets the same set with zero pool bytes from the mirror.

use crate::support::apt::{AptClient, Mode};
use crate::support::daemon::Daemon;
use crate::support::mirror::Mirror;
use crate::support::repo::repo;
use crate::support::sha256_file;

fn two_clients(proxy: bool) {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let daemon = Daemon::start(&[mirror.port()]);
    let mode = if proxy {
        Mode::Proxy(daemon.addr())
    } else {
        Mode::Prefix(daemon.addr())
    };
    let all = repo.binary_names();
    let total: u64 = repo.packages.iter().map(|p| p.size).sum();

    let first = AptClient::new(repo, &mirror, mode);
    first.update_and_fetch(repo, &all, "first client");
    let out = first.source_download_only("foo");
    assert!(
        out.success(),
        "first client: apt-get source --download-only foo\n{}",
        out.combined()
    );
    for f in &repo.sources {
        assert_eq!(
            sha256_file(&first.root.join(&f.file_name)).unwrap(),
            f.sha256,
            "{}",
            f.file_name
        );
    }
    let after_first = mirror.stats();
    assert!(
        after_first.pool_bytes >= total,
        "the mirror sent {} pool bytes for {} bytes of packages: {after_first:?}",
        after_first.pool_bytes,
        total
    );
    daemon.status_json();

    let second = AptClient::new(repo, &mirror, mode);
    second.update_and_fetch(repo, &all, "second client");
    let out = second.source_download_only("foo");
    assert!(
        out.success(),
        "second client: apt-get source --download-only foo\n{}",
        out.combined()
    );
    for f in &repo.sources {
        assert_eq!(
            sha256_file(&second.root.join(&f.file_name)).unwrap(),
            f.sha256,
            "{}",
            f.file_name
        );
    }
    let after_second = mirror.stats();
    assert_eq!(
        after_second.pool_bytes, after_first.pool_bytes,
        "the second client caused pool bytes from the mirror (before {after_first:?}, after \
         {after_second:?})"
    );
    let status = daemon.status_json();
    eprintln!("status.json after two clients: {status}");

    // The daemon never changes a byte of an index: apt's stored InRelease and
    // raw fetches of the indexes are identical to the mirror's files.
    let stored: Vec<_> = std::fs::read_dir(second.lists())
        .unwrap()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.to_string_lossy().ends_with("_dists_stable_InRelease"))
        .collect();
    assert_eq!(stored.len(), 1, "{:?}", second.list_files());
    assert_eq!(
        std::fs::read(&stored[0]).unwrap(),
        std::fs::read(repo.root.join("dists/stable/InRelease")).unwrap(),
        "apt's InRelease differs from the mirror's"
    );
    for rel in [
        "dists/stable/InRelease",
        "dists/stable/Release",
        "dists/stable/Release.gpg",
        "dists/stable/main/binary-amd64/Packages.xz",
        "dists/stable/main/binary-amd64/Packages.gz",
        "dists/stable/main/source/Sources.xz",
    ] {
        let target = if proxy {
            format!("{}/{rel}", mirror.base_url())
        } else {
            Daemon::prefix_target(&mirror, rel)
        };
        let r = crate::support::http_get(daemon.addr(), &target, &[]);
        assert_eq!(r.status, 200, "{rel}: {}", r.summary());
        assert!(
            r.body == std::fs::read(repo.root.join(rel)).unwrap(),
            "{rel} changed on its way through the daemon"
        );
    }
}

#[test]
fn prefix_mode_two_clients() {
    two_clients(false);
}

#[test]
fn proxy_mode_two_clients() {
    two_clients(true);
}

#[test]
fn status_pages_count_what_apt_got() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let daemon = Daemon::start(&[mirror.port()]);
    let apt = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    apt.update_and_fetch(repo, &["small", "tiny"], "status");
    let small = repo.package("small");
    let v = daemon.status_json();
    let to_apt = v["bytes_to_apt"].as_u64().unwrap_or(0);
    let from_mirror = v["bytes_from_mirror"].as_u64().unwrap_or(0);
    assert!(to_apt >= small.size, "bytes_to_apt counts packages: {v:#}");
    assert!(
        from_mirror >= small.size,
        "bytes_from_mirror counts packages: {v:#}"
    );
    assert!(
        v["cache_bytes"].as_u64().unwrap_or(0) >= small.size,
        "{v:#}"
    );
    let torrents = v["torrents"].as_array().cloned().unwrap_or_default();
    assert!(
        torrents
            .iter()
            .any(|t| t["index_path"] == "dists/stable/main/binary-amd64/Packages"),
        "the Packages torrent is listed: {v:#}"
    );
    let metrics = crate::support::http_get(daemon.addr(), "/metrics", &[]);
    assert_eq!(metrics.status, 200);
    let text = String::from_utf8_lossy(&metrics.body);
    let line = text
        .lines()
        .find(|l| l.starts_with("debtorrent_bytes_to_apt_total "))
        .unwrap_or_else(|| panic!("no bytes_to_apt counter in /metrics:\n{text}"));
    let n: u64 = line
        .rsplit(' ')
        .next()
        .and_then(|x| x.parse().ok())
        .unwrap_or(0);
    assert!(n >= small.size, "{line}");
    assert!(text.contains("debtorrent_torrents "), "{text}");
    let html = crate::support::http_get(daemon.addr(), "/", &[]);
    assert_eq!(html.status, 200);
    let page = String::from_utf8_lossy(&html.body);
    assert!(
        page.contains("<h2>Torrents</h2>") && page.contains("binary-amd64/Packages"),
        "{page}"
    );
}
