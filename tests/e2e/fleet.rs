//! Fleets: many daemons that start together want the same files (issue
//! 12). The mirror must send each file once, however many want it at the
//! same moment, and newcomers must find the daemons that already hold what
//! they want. Real daemons on their own loopback addresses (127.0.3.x),
//! one private DHT, the real apt behind each, and the counting test
//! mirror, throttled like a WAN link so that a herd has time to form.
//!
//! Times are printed, never asserted (speed is measured in `bench/fleet`).

use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::apt::{AptClient, Mode};
use crate::support::daemon::Daemon;
use crate::support::mirror::{Fault, Mirror};
use crate::support::repo::{repo, BIG};

/// The last `n` lines of a log, without the chattiest debug lines.
fn tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| !l.contains(" TRACE ") && !l.contains("PutQuery") && !l.contains("Query got"))
        .collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Connected peers over all of a daemon's swarms.
fn swarm_peers(d: &Daemon) -> usize {
    d.status_json()["swarms"]
        .as_array()
        .map_or(0, |a| a.iter().map(|s| num(&s["peers"]) as usize).sum())
}

/// Waits (bounded) until every daemon has at least `n` swarm peers.
fn wait_peers(daemons: &[Daemon], n: usize, within: Duration) {
    let t0 = Instant::now();
    loop {
        let counts: Vec<usize> = daemons.iter().map(swarm_peers).collect();
        if counts.iter().all(|&c| c >= n) {
            return;
        }
        if t0.elapsed() > within {
            panic!("daemons did not reach {n} peers within {within:?}: {counts:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Six daemons that know each other want the 50 MB package at the same
/// instant, from a mirror at 8 MB/s: the mirror sends it once (one daemon
/// fetches it, the others take it from that one as it arrives), and every
/// apt gets an intact file.
#[test]
fn fleet_herd_wants_one_large_file_at_once_and_the_mirror_sends_it_once() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let big = repo.package(BIG);
    let first = Daemon::start_peer("127.0.3.1", &[mirror.port()], None, &[]);
    let boot = first.peer_addr();
    let mut daemons = vec![first];
    for k in 2..=6 {
        let ip = format!("127.0.3.{k}");
        daemons.push(Daemon::start_peer(&ip, &[mirror.port()], Some(boot), &[]));
    }
    let clients: Vec<AptClient> = daemons
        .iter()
        .map(|d| AptClient::new(repo, &mirror, Mode::Prefix(d.addr())))
        .collect();
    for (k, c) in clients.iter().enumerate() {
        let out = c.update();
        c.assert_update_verified(&out, &format!("client {k}"));
    }
    wait_peers(&daemons, 5, Duration::from_secs(60));
    mirror.set_pool_fault(Some(Fault::Throttle(8 << 20)));
    let mark = mirror.log().len();
    let before = mirror.stats().pool_bytes;

    let t0 = Instant::now();
    let failures: Vec<String> = std::thread::scope(|s| {
        let runs: Vec<_> = clients
            .iter()
            .enumerate()
            .map(|(k, c)| {
                s.spawn(move || {
                    let out = c.download_only(&[BIG]);
                    if !out.success() {
                        return Some(format!("client {k}: apt-get failed\n{}", out.combined()));
                    }
                    c.verify_archives(repo, &[BIG])
                        .err()
                        .map(|e| format!("client {k}: {e}"))
                })
            })
            .collect();
        runs.into_iter()
            .filter_map(|r| {
                r.join()
                    .unwrap_or_else(|_| Some("a client panicked".into()))
            })
            .collect()
    });
    let took = t0.elapsed();
    if !failures.is_empty() {
        if let Ok(dir) = std::env::var("FLEET_LOGS") {
            for (k, d) in daemons.iter().enumerate() {
                let _ = std::fs::write(format!("{dir}/daemon{k}.log"), d.log_text());
            }
        }
        let logs: Vec<String> = daemons
            .iter()
            .map(|d| format!("---- log of {}:\n{}", d.addr(), tail(&d.log_text(), 150)))
            .collect();
        panic!("{}\n{}", failures.join("\n"), logs.join("\n"));
    }
    mirror.set_pool_fault(None);
    let sent = mirror.stats().pool_bytes - before;
    let alone = Duration::from_secs_f64(big.size as f64 / f64::from(8u32 << 20));
    eprintln!(
        "herd of 6: {took:.1?} for {} bytes (one mirror transfer alone: {alone:.1?}); \
         the mirror sent {sent} bytes ({:.2}x)",
        big.size,
        sent as f64 / big.size as f64
    );
    let statuses: Vec<String> = daemons
        .iter()
        .map(|d| {
            let v = d.status_json();
            format!(
                "{}: from peers {}, from mirror {}, uploaded {}",
                d.addr(),
                v["bytes_from_peers"],
                v["bytes_from_mirror"],
                v["bytes_uploaded"]
            )
        })
        .collect();
    assert!(
        sent <= big.size + big.size / 20,
        "the mirror sent {sent} bytes for one {} byte file wanted by 6 daemons at once;\n\
         pool requests:\n{}\n{}",
        big.size,
        mirror.pool_log(mark),
        statuses.join("\n")
    );
}

/// Twelve daemons arrive in three waves of four, each wave at once; each
/// client wants a different mix of the packages (the first ones by
/// almost everyone, the last by few). Every apt gets intact files, and the
/// mirror sends at most 1.1 times the bytes of the distinct files wanted:
/// newcomers find the daemons that hold what they want, and a wave that
/// wants a file nobody holds fetches it once.
#[test]
fn fleet_of_twelve_in_waves_takes_each_file_from_the_mirror_about_once() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    mirror.set_pool_fault(Some(Fault::Throttle(16 << 20)));
    let mut names = repo.small_names();
    names.sort();
    // Client k wants the first package always, and package i when
    // (i + k) % (i + 1) == 0 or i < 2: a popularity ranking.
    let wants = |k: usize| -> Vec<&str> {
        let mut w: Vec<&str> = names
            .iter()
            .enumerate()
            .filter(|&(i, _)| i < 2 || (i + k) % (i + 1) == 0)
            .map(|(_, n)| *n)
            .collect();
        // The large one by clients 1, 4, 7 and 10: one in the first wave,
        // then two newcomers at once in the second, who must find its
        // holder (a cold herd, nobody holding it and nobody connected
        // yet, is `bench/fleet`'s first wave).
        if k % 3 == 1 {
            w.push(BIG);
        }
        w
    };
    let mut unique: Vec<&str> = (0..12).flat_map(wants).collect();
    unique.sort();
    unique.dedup();
    let unique_bytes: u64 = unique.iter().map(|n| repo.package(n).size).sum();

    let before = mirror.stats().pool_bytes;
    let mut daemons: Vec<Daemon> = Vec::new();
    let mut boot = None;
    let t0 = Instant::now();
    for wave in 0..3 {
        let start = daemons.len();
        for j in 0..4 {
            let ip = format!("127.0.3.{}", 20 + wave * 4 + j);
            let d = Daemon::start_peer(&ip, &[mirror.port()], boot, &[]);
            boot.get_or_insert(d.peer_addr());
            daemons.push(d);
        }
        let wave_daemons = &daemons[start..];
        std::thread::scope(|s| {
            for (j, d) in wave_daemons.iter().enumerate() {
                let k = start + j;
                let want = wants(k);
                let mirror = &mirror;
                s.spawn(move || {
                    let c = AptClient::new(repo, mirror, Mode::Prefix(d.addr()));
                    c.update_and_fetch(repo, &want, &format!("wave {wave}, client {k}"));
                });
            }
        });
        eprintln!(
            "wave {wave} done at {:.1?}: mirror pool bytes so far {}",
            t0.elapsed(),
            mirror.stats().pool_bytes - before
        );
    }
    let sent = mirror.stats().pool_bytes - before;
    let mut report = String::new();
    for d in &daemons {
        let v = d.status_json();
        let by_origin: Vec<String> = v["swarms"]
            .as_array()
            .map(|a| a.iter().map(|s| s["peers_by_origin"].to_string()).collect())
            .unwrap_or_default();
        report.push_str(&format!(
            "{}: from peers {}, from mirror {}, uploaded {}, who asked {}, peers {:?}\n",
            d.addr(),
            v["bytes_from_peers"],
            v["bytes_from_mirror"],
            v["bytes_uploaded"],
            v["who_asked"],
            by_origin
        ));
    }
    eprintln!(
        "fleet of 12: the mirror sent {sent} bytes for {unique_bytes} distinct bytes wanted ({:.3}x)\n{report}",
        sent as f64 / unique_bytes as f64
    );
    assert!(
        sent as f64 <= unique_bytes as f64 * 1.1,
        "the mirror sent {sent} bytes for {unique_bytes} distinct bytes wanted;\n\
         pool requests:\n{}\n{report}",
        mirror.pool_log(0)
    );
}
