//! Issue 3, test 6: kill -9 in the middle of a 50 MB download, restart on the
//! same data folder and port, and apt completes with an intact file; a
//! graceful stop (SIGTERM) keeps the store and finishes what is in flight.

use std::time::{Duration, Instant};

use crate::support::apt::{check_debs, AptClient, Mode};
use crate::support::daemon::Daemon;
use crate::support::mirror::{Fault, Mirror};
use crate::support::repo::{repo, BIG, SMALL};
use crate::support::{http_get, sha256_hex, wait_until, RawConn};

#[test]
fn kill9_during_big_download_then_restart() {
    let repo = repo();
    let big = repo.big();
    let mirror = Mirror::start(&repo.root);
    let mut daemon = Daemon::start(&[mirror.port()]);
    let apt = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    let out = apt.update();
    apt.assert_update_verified(&out, "update");

    mirror.set_pool_fault(Some(Fault::Throttle(5_000_000)));
    let mut child = apt.spawn(&["install", "--download-only", BIG]);
    let mid = wait_until(Duration::from_secs(30), || {
        mirror.stats().pool_bytes > 8_000_000
    });
    assert!(
        mid,
        "the big download never got going: {:?}\n{}",
        mirror.stats(),
        apt.spawned_output()
    );
    daemon.kill9();

    // apt notices the dead connection and fails (or, if it somehow finished,
    // its file must be intact).
    let start = Instant::now();
    let status = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if start.elapsed() > Duration::from_secs(60) {
            let _ = child.kill();
            break child.wait().unwrap();
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    eprintln!("apt after kill -9: {status}\n{}", apt.spawned_output());
    check_debs(&apt.archived_debs(), repo).unwrap();
    let partial = crate::support::apt::ls(&apt.archives().join("partial"));
    eprintln!("apt partial/ after kill -9: {partial:?}");

    daemon.restart();
    daemon.status_json();

    // With the mirror down, whatever the daemon kept of the interrupted
    // download must not be served as the package.
    mirror.set_down(true);
    let target = Daemon::prefix_target(&mirror, &big.pool_path);
    let mut conn = RawConn::connect(daemon.addr());
    conn.set_read_timeout(Duration::from_secs(30));
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        daemon.addr()
    );
    conn.send(req.as_bytes()).unwrap();
    if let Ok(r) = conn.read_response(false) {
        assert!(
            (r.status != 200 && r.status != 206) || sha256_hex(&r.body) == big.sha256,
            "after kill -9, with the mirror down, the daemon served {} bytes that are not the package: {:?}",
            r.body.len(),
            r.headers
        );
        eprintln!(
            "GET of the interrupted package with the mirror down: {}",
            r.status
        );
    }
    mirror.heal();
    // The same client resumes (apt sends Range + If-Range for its partial file).
    let out = apt.download_only(&[BIG]);
    assert!(out.success(), "after restart:\n{}", out.combined());
    apt.verify_archives(repo, &[BIG]).unwrap();

    // The store after the restart serves the whole file to a fresh client
    // (and no partial file is ever served as the package).
    let before = mirror.stats();
    let fresh = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    fresh.update_and_fetch(repo, &[BIG], "fresh client after restart");
    let after = mirror.stats();
    assert!(
        after.pool_bytes - before.pool_bytes <= big.size,
        "more than one copy of the big package came from the mirror: {before:?} -> {after:?}"
    );
    // Another restart: now it must come from the store alone, once it is
    // in (apt got its last byte before the fsync).
    assert!(
        daemon.wait_committed(),
        "downloads still in tmp/ after 30 s"
    );
    daemon.kill9();
    daemon.restart();
    let before = mirror.stats();
    let again = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    again.update_and_fetch(repo, &[BIG], "client after a second kill -9 and restart");
    assert_eq!(
        mirror.stats().pool_bytes,
        before.pool_bytes,
        "the stored big package was fetched again"
    );
}

#[test]
fn sigterm_then_restart_keeps_the_store() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let mut daemon = Daemon::start(&[mirror.port()]);
    // The big package is still being fsynced when SIGTERM comes: shutdown
    // waits for the commits in flight.
    let pkgs = ["tiny", "small", "libstd++x1", BIG];
    let first = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    first.update_and_fetch(repo, &pkgs, "before SIGTERM");

    // Every index of the suite names the dt2 swarm of its family and
    // component, from the signed Release (docs/torrent-format.md section 7).
    let want = debtorrent_gen::swarm_id(
        "debtorrent-e2e",
        debtorrent_gen::family(crate::support::repo::SUITE),
        crate::support::repo::COMPONENT,
    )
    .to_hex();
    let swarm_ids = |d: &Daemon| -> Vec<String> {
        let st = d.status_json();
        st["torrents"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .map(|t| t["swarm_id"].as_str().unwrap_or("none").to_string())
                    .collect()
            })
            .unwrap_or_default()
    };
    let before_ids = swarm_ids(&daemon);
    assert!(!before_ids.is_empty(), "no torrent registered");
    assert!(
        before_ids.iter().all(|s| *s == want),
        "{before_ids:?} != {want}"
    );

    let status = daemon.stop(Duration::from_secs(10));
    assert!(
        status.is_some(),
        "the daemon did not exit within 10 s of SIGTERM"
    );
    daemon.restart();
    // Rebuilt at start-up from the cached index and Release.
    let ok = wait_until(Duration::from_secs(10), || {
        let ids = swarm_ids(&daemon);
        !ids.is_empty() && ids.iter().all(|s| *s == want)
    });
    assert!(ok, "after restart: {:?}", swarm_ids(&daemon));
    let before = mirror.stats();
    let second = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    second.update_and_fetch(repo, &pkgs, "after restart");
    assert_eq!(
        mirror.stats().pool_bytes,
        before.pool_bytes,
        "the store was lost over a restart"
    );
}

/// Graceful shutdown (mini-redis style): SIGTERM while apt's download of a
/// package is in flight from a slow mirror. The daemon stops accepting,
/// lets the response that is already flowing finish (it fits in the 2 s
/// drain), and exits 0 within 5 s; the counters it flushed on the way out
/// are there after a restart.
#[test]
fn sigterm_finishes_the_response_in_flight_and_exits_within_5_s() {
    let mut u = crate::support::updated();
    let p = u.repo.package(SMALL).clone();
    // About 53 KB at 60 KB/s: the response takes about a second.
    u.mirror.set_pool_fault(Some(Fault::Throttle(60_000)));
    let target = Daemon::prefix_target(&u.mirror, &p.pool_path);
    let addr = u.daemon.addr();
    let get = std::thread::spawn(move || http_get(addr, &target, &[]));
    // The request is in flight once the mirror has sent its first bytes.
    let started = wait_until(Duration::from_secs(10), || {
        u.mirror.body_requests_for(&p.file_name) > 0
    });
    assert!(started, "the mirror never saw the request");
    std::thread::sleep(Duration::from_millis(200));
    let t0 = Instant::now();
    let status = u.daemon.stop(Duration::from_secs(10));
    let took = t0.elapsed();
    let r = get.join().expect("the client thread");
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(
        sha256_hex(&r.body),
        p.sha256,
        "the response in flight was cut at shutdown"
    );
    let status = status.expect("the daemon did not exit within 10 s of SIGTERM");
    assert!(status.success(), "exit status {status:?}");
    assert!(took < Duration::from_secs(5), "shutdown took {took:?}");
    // What it counted reached the database before it exited.
    u.mirror.heal();
    u.daemon.restart();
    let st = u.daemon.status_json();
    assert!(
        st["bytes_to_apt"].as_u64().unwrap_or(0) >= p.size,
        "counters lost over a graceful stop: {st:#}"
    );
    // Its log went to a file: plain text, no terminal colour codes.
    let log = u.daemon.log_text();
    assert!(log.contains("shutting down"), "no shutdown line in the log");
    assert!(!log.contains('\x1b'), "escape sequences in a log file");
}
