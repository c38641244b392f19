//! dt2 (docs/torrent-format.md §7): peers meet in one swarm per (Release
//! Origin, suite family, component) and pieces are named by SHA-256, so a
//! file one peer fetched through one index is served to a peer that lists
//! it in another: the next version of the same suite's index, or another
//! suite of the family (`-updates`).
//!
//! Each test builds its own signed repository (`support::suites`: the shared
//! fixture's small `.deb`s, plus packages built here with `dpkg-deb`;
//! indexes from `apt-ftparchive` with Origin, Suite and Codename), serves it
//! from its own counting mirror, and runs two daemons on its own block of
//! loopback addresses in a private DHT (the first with `--dht-bootstrap
//! none`, the second bootstrapping from it; `--no-lsd`), each behind its own
//! real apt. Blocks: 127.0.0.91-99, .101-109, .111-119.

use crate::support::apt::{AptClient, Mode};
use crate::support::daemon::Daemon;
use crate::support::mirror::{percent_decode, Mirror, Stats};
use crate::support::repo::{repo, Package};
use crate::support::suites::{names, total_size, SuiteRepo};

/// The Release `Origin` of every repository here (not the shared
/// fixture's, so these swarms are never the fixture's).
const ORIGIN: &str = "debtorrent-e2e-dt2";

/// At most this share of the bytes a peer holds may still come from the
/// mirror (a piece or two refetched after a slow or refused peer request).
const SLACK_PERCENT: u64 = 5;

fn num(v: &serde_json::Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// Pool requests in the mirror's log after the first `skip` entries.
fn pool_log(mirror: &Mirror, skip: usize) -> String {
    mirror
        .log()
        .iter()
        .skip(skip)
        .filter(|e| e.target.contains("/pool/"))
        .map(|e| format!("  {e}\n"))
        .collect()
}

/// The dt2 swarm ids of the daemon's registered indexes (`swarm_id` of each
/// entry of `torrents` in `/status.json`).
fn swarm_ids(d: &Daemon) -> Vec<String> {
    let v = d.status_json();
    let mut ids: Vec<String> = v["torrents"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["swarm_id"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    ids.sort();
    ids.dedup();
    ids
}

/// Both daemons registered their index in the same dt2 swarm (when both
/// report swarm ids at all; the byte counts are the real check).
fn assert_same_swarm(a: &Daemon, b: &Daemon, ctx: &str) {
    let (ia, ib) = (swarm_ids(a), swarm_ids(b));
    eprintln!("{ctx}: swarm ids A {ia:?}, B {ib:?}");
    if !ia.is_empty() && !ib.is_empty() {
        assert!(
            ia.iter().any(|id| ib.contains(id)),
            "{ctx}: A and B are in no common dt2 swarm: A {ia:?}, B {ib:?}\nA: {:#}\nB: {:#}",
            a.status_json(),
            b.status_json()
        );
    }
}

fn pool_bytes_since(mirror: &Mirror, before: &Stats) -> u64 {
    mirror.stats().pool_bytes - before.pool_bytes
}

/// A's client fetches through daemon A with `a_suites`; then B's client
/// (a fresh apt root, only ever seeing `b_suites`) fetches `b_set` through
/// daemon B. Returns the pool bytes the mirror sent while B's client ran,
/// and the mirror log length when it started.
#[allow(clippy::too_many_arguments)]
fn b_after_a(
    mirror: &Mirror,
    a: &Daemon,
    b: &Daemon,
    a_view: &crate::support::repo::Repo,
    a_suites: &[&str],
    a_set: &[&str],
    republish: impl FnOnce() -> crate::support::repo::Repo,
    b_suites: &[&str],
    b_set: &[&str],
) -> (u64, usize) {
    let ca = AptClient::with_suites(a_view, mirror, Mode::Prefix(a.addr()), a_suites, false);
    ca.update_and_fetch(a_view, a_set, &format!("A's client ({a_suites:?})"));
    let after_a = mirror.stats();
    let a_bytes: u64 = a_set.iter().map(|n| a_view.package(n).size).sum();
    assert!(
        after_a.pool_bytes >= a_bytes,
        "A's client came from the mirror: {after_a:?}, packages {a_bytes} bytes"
    );

    let b_view = republish();
    let mark = mirror.log().len();
    let before = mirror.stats();
    let cb = AptClient::with_suites(&b_view, mirror, Mode::Prefix(b.addr()), b_suites, false);
    cb.update_and_fetch(&b_view, b_set, &format!("B's client ({b_suites:?})"));
    (pool_bytes_since(mirror, &before), mark)
}

/// A peer that fetched its files through version 1 of a suite's index
/// serves the files that version 2 still lists to a peer that has only
/// ever seen version 2 (the security-update / -updates push case: one
/// package added, one upgraded, the rest the same files).
#[test]
fn dt2_index_v1_to_v2_peers_serve_unchanged_files() {
    const UPGRADED: &str = "fill3";
    const NEW: &str = "newpkg";
    let fixture = repo();
    let mut r = SuiteRepo::new("dt2-v1v2", ORIGIN);
    let v1 = r.link_from(fixture, &fixture.small_names());
    assert!(
        v1.iter().any(|p| p.name == UPGRADED),
        "the fixture has no {UPGRADED}"
    );
    // Version 2: UPGRADED 1.3-1 replaced by 1.3-2 (a new file), NEW added.
    let upgraded = r.build_deb(UPGRADED, "1.3-2", "all", 24_500, 2001);
    let new = r.build_deb(NEW, "1.0-1", "amd64", 21_000, 2002);
    let common: Vec<Package> = v1.iter().filter(|p| p.name != UPGRADED).cloned().collect();
    let mut v2 = common.clone();
    v2.push(upgraded.clone());
    v2.push(new.clone());
    let sha_v1 = r.publish("stable", "dtidx", &v1);

    let mirror = Mirror::start(&r.root);
    let a = Daemon::start_peer("127.0.0.91", &[mirror.port()], None, &[]);
    let boot = a.peer_addr();
    assert_eq!(boot.ip().to_string(), "127.0.0.91", "peer_addr {boot}");
    let b = Daemon::start_peer("127.0.0.92", &[mirror.port()], Some(boot), &[]);
    assert_eq!(b.peer_addr().ip().to_string(), "127.0.0.92");

    let v1_view = r.view(&v1);
    let mut sha_v2 = String::new();
    let (b_pool, mark) = b_after_a(
        &mirror,
        &a,
        &b,
        &v1_view,
        &["stable"],
        &names(&v1),
        || {
            // Republish in place: same Origin, Suite and Codename.
            sha_v2 = r.publish("stable", "dtidx", &v2);
            r.view(&v2)
        },
        &["stable"],
        &names(&v2),
    );
    assert_ne!(sha_v1, sha_v2, "index v2 is the same bytes as v1");

    let common_bytes = total_size(&common);
    let fresh = new.size + upgraded.size;
    let allowed = common_bytes * SLACK_PERCENT / 100 + fresh;
    let st_b = b.status_json();
    eprintln!(
        "index v1 -> v2: B's client took {b_pool} pool bytes from the mirror; files both \
         versions list: {} ({common_bytes} bytes), new + upgraded: {fresh} bytes, allowed \
         {allowed}; B bytes_from_peers {}, A bytes_uploaded {}",
        common.len(),
        num(&st_b["bytes_from_peers"]),
        num(&a.status_json()["bytes_uploaded"]),
    );
    assert!(
        b_pool <= allowed,
        "B (index v2) took {b_pool} pool bytes from the mirror, more than {allowed} ({SLACK_PERCENT}% \
         of the {common_bytes} bytes A holds and v2 still lists, plus {fresh} bytes of new \
         files); pool requests since B's client started:\n{}B's status:\n{st_b:#}",
        pool_log(&mirror, mark)
    );
    assert_same_swarm(&a, &b, "index v1 -> v2");
}

/// A peer that fetched through a suite serves the same files to a peer
/// that lists only the family's `-updates` suite (same Origin, Codename
/// `X` and `X-updates`): the point-release / -updates case, one swarm.
#[test]
fn dt2_two_suites_share_pool_files() {
    let fixture = repo();
    let mut r = SuiteRepo::new("dt2-suites", ORIGIN);
    let all = r.link_from(fixture, &fixture.small_names());
    // -updates lists a subset of the main suite's files, byte for byte.
    let updates: Vec<Package> = all
        .iter()
        .filter(|p| p.name != "tiny" && p.name != "fill0")
        .cloned()
        .collect();
    r.publish("stable", "dttest", &all);
    r.publish("stable-updates", "dttest-updates", &updates);

    let mirror = Mirror::start(&r.root);
    let a = Daemon::start_peer("127.0.0.101", &[mirror.port()], None, &[]);
    let boot = a.peer_addr();
    assert_eq!(boot.ip().to_string(), "127.0.0.101", "peer_addr {boot}");
    let b = Daemon::start_peer("127.0.0.102", &[mirror.port()], Some(boot), &[]);
    assert_eq!(b.peer_addr().ip().to_string(), "127.0.0.102");

    let view = r.view(&all);
    let set = names(&updates);
    let (b_pool, mark) = b_after_a(
        &mirror,
        &a,
        &b,
        &view,
        &["stable"],
        &set,
        || r.view(&all),
        &["stable-updates"],
        &set,
    );

    let set_bytes = total_size(&updates);
    let allowed = set_bytes * SLACK_PERCENT / 100;
    let st_b = b.status_json();
    eprintln!(
        "stable -> stable-updates: B's client took {b_pool} pool bytes from the mirror for {} \
         files ({set_bytes} bytes), allowed {allowed}; B bytes_from_peers {}, A bytes_uploaded {}",
        updates.len(),
        num(&st_b["bytes_from_peers"]),
        num(&a.status_json()["bytes_uploaded"]),
    );
    assert!(
        b_pool <= allowed,
        "B (stable-updates only) took {b_pool} pool bytes from the mirror, more than {allowed} \
         ({SLACK_PERCENT}% of the {set_bytes} bytes A holds through stable); pool requests since \
         B's client started:\n{}B's status:\n{st_b:#}",
        pool_log(&mirror, mark)
    );
    assert_same_swarm(&a, &b, "stable -> stable-updates");
}

/// A second daemon's `apt-get update` takes from the mirror only the
/// suite's signed Release (`InRelease`, or `Release` + `Release.gpg`); the
/// index files it lists come from a peer that has them.
#[test]
fn dt2_second_update_takes_no_index_bytes_from_mirror() {
    let fixture = repo();
    let mut r = SuiteRepo::new("dt2-index", ORIGIN);
    let all = r.link_from(fixture, &fixture.small_names());
    r.publish("stable", "dtidxp", &all);

    let mirror = Mirror::start(&r.root);
    let a = Daemon::start_peer("127.0.0.111", &[mirror.port()], None, &[]);
    let boot = a.peer_addr();
    assert_eq!(boot.ip().to_string(), "127.0.0.111", "peer_addr {boot}");
    let b = Daemon::start_peer("127.0.0.112", &[mirror.port()], Some(boot), &[]);
    assert_eq!(b.peer_addr().ip().to_string(), "127.0.0.112");

    let view = r.view(&all);
    let set = names(&all);
    let ca = AptClient::with_suites(&view, &mirror, Mode::Prefix(a.addr()), &["stable"], false);
    ca.update_and_fetch(&view, &set, "A's client");

    let mark = mirror.log().len();
    let before = mirror.stats();
    let cb = AptClient::with_suites(&view, &mirror, Mode::Prefix(b.addr()), &["stable"], false);
    let out = cb.update();
    cb.assert_update_verified(&out, "B's client");
    let after = mirror.stats();
    let log = mirror.log();
    let b_log = log.get(mark..).unwrap_or_default();
    let from_mirror: Vec<String> = b_log
        .iter()
        .filter(|e| {
            let path = percent_decode(e.target.split('?').next().unwrap_or_default());
            path.contains("/dists/")
                && !["/InRelease", "/Release", "/Release.gpg"]
                    .iter()
                    .any(|tail| path.ends_with(tail))
        })
        .map(|e| format!("  {e}\n"))
        .collect();
    eprintln!(
        "B's apt-get update: {} index bytes in {} index requests to the mirror ({} requests in \
         all)",
        after.index_bytes - before.index_bytes,
        after.index_requests - before.index_requests,
        b_log.len()
    );
    assert!(
        from_mirror.is_empty(),
        "B's apt-get update took index files other than the signed Release from the mirror:\n{}\
         every request since B's update started:\n{}B's status:\n{:#}",
        from_mirror.concat(),
        b_log.iter().map(|e| format!("  {e}\n")).collect::<String>(),
        b.status_json()
    );
}
