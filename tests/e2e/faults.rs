//! Issue 3, tests 3 to 5 (and a stalled mirror): a mirror that is down,
//! sends corrupt bytes, answers 404/500/503 or hangs. apt gets the cached
//! copies or an error, never wrong data, and nothing bad is stored.

use std::time::{Duration, Instant};

use crate::support::apt::{check_debs, AptClient, Mode};
use crate::support::daemon::Daemon;
use crate::support::mirror::{Fault, Mirror};
use crate::support::repo::repo;
use crate::support::{http_get, sha256_hex, updated, Updated};

#[test]
fn mirror_down_serves_cached_copies() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let daemon = Daemon::start(&[mirror.port()]);
    let pkgs = repo.small_names();

    let first = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    first.update_and_fetch(repo, &pkgs, "first client, mirror up");

    mirror.set_down(true);
    let before = mirror.stats();
    let second = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    second.update_and_fetch(repo, &pkgs, "second client, mirror down");
    assert_eq!(mirror.stats().pool_bytes, before.pool_bytes);

    // The first client's next update also works from the last good copies.
    let out = first.update();
    first.assert_update_verified(&out, "first client, update with the mirror down");

    // The mirror is up again but answers 503 (then 500) for every index
    // file: the last good copies are served.
    mirror.set_down(false);
    for code in [503u16, 500] {
        mirror.set_index_fault(Some(Fault::Status(code)));
        let client = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
        let out = client.update();
        client.assert_update_verified(
            &out,
            &format!("update while the mirror answers {code} for indexes"),
        );
    }
    mirror.set_index_fault(None);
    mirror.set_down(true);

    // And proxy mode against the same daemon gets the same cached copies.
    let third = AptClient::new(repo, &mirror, Mode::Proxy(daemon.addr()));
    let out = third.update();
    if out.success() {
        third.assert_update_verified(&out, "proxy-mode client, mirror down");
    } else {
        // The daemon may key its cache by URL form; then proxy mode has no
        // copy yet, which is acceptable — but it must fail cleanly.
        eprintln!(
            "note: proxy-mode update with the mirror down failed:\n{}",
            out.combined()
        );
    }
}

#[test]
fn corrupt_pool_bytes_are_never_stored_or_served() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let daemon = Daemon::start(&[mirror.port()]);
    let victim = repo.package("small");

    let first = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    let out = first.update();
    first.assert_update_verified(&out, "first client");

    mirror.set_pool_fault(Some(Fault::Corrupt));
    for attempt in 1..=2 {
        let out = first.download_only(&["small"]);
        assert!(
            !out.success(),
            "attempt {attempt}: apt accepted a package while the mirror sent corrupt bytes\n{}",
            out.combined()
        );
        check_debs(&first.archived_debs(), repo)
            .unwrap_or_else(|e| panic!("attempt {attempt}: {e}"));
        assert!(
            first.archived_debs().is_empty(),
            "attempt {attempt}: apt kept {:?}",
            first.archived_debs()
        );
    }
    // A raw GET through the daemon must not return the corrupt bytes as good.
    let target = Daemon::prefix_target(&mirror, &victim.pool_path);
    let mut conn = crate::support::RawConn::connect(daemon.addr());
    let req = format!(
        "GET {target} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
        daemon.addr()
    );
    let _ = conn.send(req.as_bytes());
    // A response cut short (Err) is fine; a complete 200 is not.
    if let Ok(r) = conn.read_response(false) {
        assert!(
            !(r.status == 200 && r.body.len() as u64 == victim.size),
            "the daemon served a complete 200 of corrupt data: {}",
            r.summary()
        );
    }

    let fetched_before = mirror.body_requests_for(&victim.file_name);
    let bytes_before = mirror.stats().pool_bytes;
    mirror.heal();
    let second = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    second.update_and_fetch(repo, &["small"], "second client after the fault is cleared");
    assert!(
        mirror.body_requests_for(&victim.file_name) > fetched_before,
        "the package was not refetched from the mirror after the corrupt download"
    );
    assert!(mirror.stats().pool_bytes >= bytes_before + victim.size);

    // Now it is stored: served intact with no further mirror traffic.
    let bytes_before = mirror.stats().pool_bytes;
    let r = http_get(daemon.addr(), &target, &[]);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(sha256_hex(&r.body), victim.sha256);
    assert_eq!(mirror.stats().pool_bytes, bytes_before);
}

#[test]
fn mirror_error_statuses_reach_apt() {
    let Updated {
        repo,
        mirror,
        daemon,
        apt,
    } = updated();

    for (code, pkg) in [(404u16, "fill0"), (500, "fill1"), (503, "fill2")] {
        mirror.set_pool_fault(Some(Fault::Status(code)));
        let out = apt.download_only(&[pkg]);
        assert!(
            !out.success(),
            "mirror {code}: apt succeeded\n{}",
            out.combined()
        );
        let text = out.combined();
        if code == 404 {
            assert!(
                text.contains("404"),
                "mirror 404: apt did not see a 404\n{text}"
            );
        } else {
            assert!(
                ["500", "502", "503", "504"]
                    .iter()
                    .any(|c| text.contains(c)),
                "mirror {code}: apt did not see a 5xx status\n{text}"
            );
        }
        assert!(
            apt.archived_debs().is_empty(),
            "mirror {code}: apt kept {:?}",
            apt.archived_debs()
        );

        // The same on a raw request: the status is passed on, not a 200.
        let p = repo.package("fill3");
        let r = http_get(
            daemon.addr(),
            &Daemon::prefix_target(&mirror, &p.pool_path),
            &[],
        );
        if code == 404 {
            assert_eq!(r.status, 404, "{}", r.summary());
        } else {
            assert!(
                (500..600).contains(&r.status),
                "mirror {code}: {}",
                r.summary()
            );
        }
    }
    // Index files that the mirror does not have: 404 passed through.
    mirror.heal();
    let r = http_get(
        daemon.addr(),
        &format!("/{}/debian/dists/nosuchsuite/InRelease", mirror.host_port()),
        &[],
    );
    assert_eq!(r.status, 404, "{}", r.summary());

    // No error was cached: with the mirror healthy, all three arrive intact.
    let out = apt.download_only(&["fill0", "fill1", "fill2", "fill3"]);
    assert!(out.success(), "after healing:\n{}", out.combined());
    apt.verify_archives(repo, &["fill0", "fill1", "fill2", "fill3"])
        .unwrap();
}

#[test]
fn stalled_mirror_fails_cleanly_and_recovers() {
    let Updated {
        repo,
        mirror,
        daemon: _daemon,
        apt,
    } = updated();

    mirror.set_pool_fault(Some(Fault::Stall));
    let out = apt.download_only(&["fill4"]);
    assert!(
        !out.timed_out,
        "apt hung on a stalled mirror (Acquire::http::Timeout is 10 s)"
    );
    assert!(
        !out.success(),
        "apt succeeded on a stalled mirror\n{}",
        out.combined()
    );
    assert!(apt.archived_debs().is_empty());

    mirror.heal();
    // Another package works at once; the stalled one within the daemon's
    // upstream timeout (we give it 90 s).
    let out = apt.download_only(&["fill5"]);
    assert!(out.success(), "after healing, fill5:\n{}", out.combined());
    let start = Instant::now();
    loop {
        let out = apt.download_only(&["fill4"]);
        if out.success() {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "the stalled package never became available again\n{}",
            out.combined()
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    apt.verify_archives(repo, &["fill4", "fill5"]).unwrap();
}
