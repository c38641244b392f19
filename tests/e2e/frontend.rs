//! Issue 3, tests 1 and 2: apt through the daemon in URL-prefix mode and in
//! proxy mode gets a verified repository and intact packages; a second apt
//! client then gets the same set with zero pool bytes from the mirror.

use std::time::Duration;

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
    // The store commits each file after apt got its last byte.
    crate::support::wait_until(Duration::from_secs(10), || {
        daemon.status_json()["cache_bytes"].as_u64().unwrap_or(0) >= small.size
    });
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
    // The page carries its first /status.json for the first paint (what
    // it renders is checked in a real browser: admin.rs).
    assert!(
        page.contains("id=\"saved-share\"")
            && page.contains("id=\"status-data\"")
            && page.contains("binary-amd64/Packages"),
        "{page}"
    );
}

/// Issue 16: the slowloris attack. 300 connections (the daemon's limit is
/// 64) each send half a request head, then one more header line every
/// second, reconnecting (after up to a second) whenever the daemon closes
/// them. Meanwhile apt
/// updates and fetches packages, and `/status.json` answers: a head has a
/// deadline from its first byte (`--request-head-timeout`, 2 s here), and
/// a full daemon evicts the connection doing least instead of refusing
/// the new one.
#[test]
fn slow_request_heads_cannot_starve_apt_or_the_status_page() {
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use std::sync::Arc;
    use std::time::Instant;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const SLOW: usize = 300;
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let daemon = Daemon::start_with_args(
        &[mirror.port()],
        &["--max-connections", "64", "--request-head-timeout", "2s"],
    );
    let addr = daemon.addr();
    // The deadline alone: one connection that sends a header line every
    // 500 ms is answered 408 and closed about 2 s after its first byte,
    // though it never stops sending.
    {
        use std::io::{Read, Write};
        let mut s = std::net::TcpStream::connect(addr).expect("connect");
        s.set_read_timeout(Some(Duration::from_millis(500)))
            .expect("timeout");
        let t0 = Instant::now();
        s.write_all(b"GET /status.json HTTP/1.1\r\nHost: x\r\n")
            .expect("write");
        let mut got = Vec::new();
        let mut buf = [0u8; 256];
        while t0.elapsed() < Duration::from_secs(10) {
            match s.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => got.extend_from_slice(&buf[..n]),
                Err(_) => {
                    if s.write_all(b"X-Slow: 1\r\n").is_err() {
                        break;
                    }
                }
            }
        }
        let took = t0.elapsed();
        let text = String::from_utf8_lossy(&got);
        eprintln!("a dribbling head: {took:.2?}: {:?}", text.lines().next());
        assert!(text.starts_with("HTTP/1.1 408"), "{text:?}");
        assert!(
            took >= Duration::from_millis(1900) && took < Duration::from_secs(4),
            "408 after {took:?} (deadline 2 s)"
        );
    }
    let stop = Arc::new(AtomicBool::new(false));
    let (opened, closed, got_408) = (
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
        Arc::new(AtomicU64::new(0)),
    );
    let attack = {
        let (stop, opened, closed, got_408) = (
            stop.clone(),
            opened.clone(),
            closed.clone(),
            got_408.clone(),
        );
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(async move {
                let mut tasks = Vec::new();
                for i in 0..SLOW {
                    let (stop, opened, closed, got_408) = (
                        stop.clone(),
                        opened.clone(),
                        closed.clone(),
                        got_408.clone(),
                    );
                    tasks.push(tokio::spawn(async move {
                        // Bounded: the test sets `stop`, and 90 s at most.
                        let end = Instant::now() + Duration::from_secs(90);
                        while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                            let Ok(Ok(mut s)) = tokio::time::timeout(
                                Duration::from_secs(2),
                                tokio::net::TcpStream::connect(addr),
                            )
                            .await
                            else {
                                tokio::time::sleep(Duration::from_millis(200)).await;
                                continue;
                            };
                            opened.fetch_add(1, Ordering::Relaxed);
                            let head = format!("GET /slow/{i} HTTP/1.1\r\nHost: x\r\n");
                            if s.write_all(head.as_bytes()).await.is_err() {
                                closed.fetch_add(1, Ordering::Relaxed);
                                continue;
                            }
                            let mut buf = [0u8; 512];
                            loop {
                                if stop.load(Ordering::Relaxed) || Instant::now() >= end {
                                    return;
                                }
                                // One header line a second; a close or a
                                // 408 ends this connection.
                                match tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf))
                                    .await
                                {
                                    Ok(Ok(0)) | Ok(Err(_)) => break,
                                    Ok(Ok(n)) => {
                                        if buf[..n].starts_with(b"HTTP/1.1 408") {
                                            got_408.fetch_add(1, Ordering::Relaxed);
                                        }
                                        break;
                                    }
                                    Err(_) => {}
                                }
                                if s.write_all(b"X-Slow: 1\r\n").await.is_err() {
                                    break;
                                }
                            }
                            closed.fetch_add(1, Ordering::Relaxed);
                            let pause = (i as u64 * 7919 + closed.load(Ordering::Relaxed)) % 2000;
                            tokio::time::sleep(Duration::from_millis(pause)).await;
                        }
                    }));
                }
                for t in tasks {
                    let _ = t.await;
                }
            });
        })
    };
    // Let the attack fill every slot.
    std::thread::sleep(Duration::from_secs(3));
    let t0 = Instant::now();
    let r = crate::support::http_get(addr, "/status.json", &[]);
    let status_time = t0.elapsed();
    assert_eq!(r.status, 200, "/status.json under attack: {}", r.summary());
    let t1 = Instant::now();
    let client = AptClient::new(repo, &mirror, Mode::Prefix(addr));
    let pkgs = ["small", "tiny", "libfoo1"];
    client.update_and_fetch(repo, &pkgs, "apt under a slowloris attack");
    let apt_time = t1.elapsed();
    let t2 = Instant::now();
    let r = crate::support::http_get(addr, "/status.json", &[]);
    let status_time2 = t2.elapsed();
    stop.store(true, Ordering::Relaxed);
    let _ = attack.join();
    let (o, c, t) = (
        opened.load(Ordering::Relaxed),
        closed.load(Ordering::Relaxed),
        got_408.load(Ordering::Relaxed),
    );
    eprintln!(
        "slowloris ({SLOW} connections, limit 64): status.json in {status_time:.2?} and \
         {status_time2:.2?}, apt update + 3 packages in {apt_time:.1?}; the attack opened {o} \
         connections, {c} were closed ({t} with a 408, the rest evicted)"
    );
    assert_eq!(r.status, 200, "/status.json after apt: {}", r.summary());
    let st: serde_json::Value = serde_json::from_slice(&r.body).expect("status.json");
    eprintln!(
        "front end counters: evicted {}, refused {}, head timeouts {}",
        st["apt_connections_evicted"], st["apt_connections_refused"], st["request_head_timeouts"]
    );
    assert!(
        st["request_head_timeouts"].as_u64() >= Some(1),
        "the dribbling head was not counted: {st:#}"
    );
    assert!(
        st["apt_connections_evicted"].as_u64() >= Some(1),
        "nothing was evicted under the attack: {st:#}"
    );
    assert!(status_time < Duration::from_secs(5), "{status_time:?}");
    assert!(apt_time < Duration::from_secs(60), "apt took {apt_time:?}");
    assert!(
        c as usize >= SLOW,
        "the slow connections were not closed: {c} of {o}"
    );
}
