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
//! real apt (three in the three-versions test). Blocks: 127.0.0.91-99,
//! .101-109, .111-119, .121-129, .131-139, .141-149.

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
    assert_same_swarm_named((a, "A"), (b, "B"), ctx);
}

/// [`assert_same_swarm`] for daemons named otherwise than A and B.
fn assert_same_swarm_named((a, na): (&Daemon, &str), (b, nb): (&Daemon, &str), ctx: &str) {
    let (ia, ib) = (swarm_ids(a), swarm_ids(b));
    eprintln!("{ctx}: swarm ids {na} {ia:?}, {nb} {ib:?}");
    assert!(
        ia.iter().any(|id| ib.contains(id)),
        "{ctx}: {na} and {nb} are in no common dt2 swarm: {na} {ia:?}, {nb} {ib:?}\n{na}: \
         {:#}\n{nb}: {:#}",
        a.status_json(),
        b.status_json()
    );
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
    // B's pieces are counted as held once committed, after apt's last byte.
    assert!(b.wait_committed(), "B: downloads still in tmp/ after 30 s");
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
        mirror.pool_log(mark)
    );
    assert_same_swarm(&a, &b, "index v1 -> v2");
    // B's status shows the index versions in its swarm: its own (v2) and
    // A's (v1), which A told it in its extended handshake (`dt_idx`).
    let sw = st_b["swarms"]
        .as_array()
        .and_then(|a| a.iter().find(|s| num(&s["peers"]) >= 1))
        .unwrap_or_else(|| panic!("B shows no swarm with a peer: {st_b:#}"));
    let ours: Vec<&str> = sw["versions"]
        .as_array()
        .map(|a| a.iter().filter_map(|v| v.as_str()).collect())
        .unwrap_or_default();
    let theirs: Vec<&String> = sw["peer_versions"]
        .as_object()
        .map(|m| m.keys().collect())
        .unwrap_or_default();
    eprintln!("index v1 -> v2: B's versions {ours:?}, its peers' {theirs:?}");
    assert_eq!(ours.len(), 1, "B registered one Packages version: {sw:#}");
    assert!(
        theirs.iter().any(|v| !ours.contains(&v.as_str())),
        "B's swarm shows no peer on another index version: {sw:#}"
    );
    assert!(
        num(&sw["catalogue"]) >= num(&sw["pieces_held"]) && num(&sw["pieces_held"]) >= 11,
        "B's swarm: catalogue and held: {sw:#}"
    );
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
        mirror.pool_log(mark)
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

/// A point release folds the files peers fetched through `-updates` into
/// the main suite: a peer that lists only the new main suite gets them
/// from a peer that fetched them through `-updates` (one family, one
/// swarm, same pool files byte for byte).
#[test]
fn dt2_point_release_files_fetched_through_updates_come_from_peers() {
    let fixture = repo();
    let mut r = SuiteRepo::new("dt2-point", ORIGIN);
    let base = r.link_from(fixture, &fixture.small_names());
    // -updates: newer versions of three of them (new pool files; one with
    // a `+` in its version, as Debian's stable updates have).
    let upgrades = vec![
        r.build_deb("fill1", "1.1-2", "all", 40_000, 2101),
        r.build_deb("fill4", "1.4-1+deb1u1", "all", 60_000, 2102),
        r.build_deb("small", "2.3-2", "amd64", 80_000, 2103),
    ];
    // The point release: the main suite lists the -updates versions in
    // place of the old ones, the rest unchanged.
    let point: Vec<Package> = base
        .iter()
        .map(|p| {
            upgrades
                .iter()
                .find(|u| u.name == p.name)
                .unwrap_or(p)
                .clone()
        })
        .collect();
    let sha_before = r.publish("stable", "dtpr", &base);
    r.publish("stable-updates", "dtpr-updates", &upgrades);

    let mirror = Mirror::start(&r.root);
    let a = Daemon::start_peer("127.0.0.121", &[mirror.port()], None, &[]);
    let boot = a.peer_addr();
    assert_eq!(boot.ip().to_string(), "127.0.0.121", "peer_addr {boot}");
    let b = Daemon::start_peer("127.0.0.122", &[mirror.port()], Some(boot), &[]);
    assert_eq!(b.peer_addr().ip().to_string(), "127.0.0.122");

    // A's apt sees both suites: the candidates of the upgraded packages
    // are the -updates versions.
    let view = r.view(&point);
    let set = names(&upgrades);
    let mut sha_after = String::new();
    let (b_pool, mark) = b_after_a(
        &mirror,
        &a,
        &b,
        &view,
        &["stable", "stable-updates"],
        &set,
        || {
            sha_after = r.publish("stable", "dtpr", &point);
            r.view(&point)
        },
        &["stable"],
        &set,
    );
    assert_ne!(
        sha_before, sha_after,
        "the point release left stable's index unchanged"
    );

    let set_bytes = total_size(&upgrades);
    let allowed = set_bytes * SLACK_PERCENT / 100;
    let st_b = b.status_json();
    eprintln!(
        "point release (stable-updates -> stable): B's client took {b_pool} pool bytes from the \
         mirror for {} upgraded files ({set_bytes} bytes), allowed {allowed}; B bytes_from_peers \
         {}, A bytes_uploaded {}",
        upgrades.len(),
        num(&st_b["bytes_from_peers"]),
        num(&a.status_json()["bytes_uploaded"]),
    );
    assert!(
        b_pool <= allowed,
        "B (the point release's stable only) took {b_pool} pool bytes from the mirror, more than \
         {allowed} ({SLACK_PERCENT}% of the {set_bytes} bytes A holds through stable-updates); \
         pool requests since B's client started:\n{}B's status:\n{st_b:#}",
        mirror.pool_log(mark)
    );
    assert_same_swarm(&a, &b, "point release");
}

/// Waits (at most `limit`) for a spawned apt-get; kills it when the time
/// is up. Returns whether it exited 0, and how long it ran.
fn wait_spawned(
    child: &mut std::process::Child,
    limit: std::time::Duration,
    started: std::time::Instant,
) -> (bool, std::time::Duration) {
    loop {
        if let Some(st) = child.try_wait().expect("wait for apt-get") {
            return (st.success(), started.elapsed());
        }
        if started.elapsed() >= limit {
            let _ = child.kill();
            let _ = child.wait();
            return (false, started.elapsed());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

/// Three peers whose apt saw three versions of one suite's index (each
/// republish adds a package and keeps the rest): A fetched the files v1
/// lists; then B (index v2) and C (index v3) fetch the files all three
/// list at the same time, from A and from each other, not the mirror.
#[test]
fn dt2_three_index_versions_in_one_swarm_concurrent_clients() {
    use std::time::{Duration, Instant};
    const LIMIT: Duration = Duration::from_secs(90);

    let fixture = repo();
    let mut r = SuiteRepo::new("dt2-three", ORIGIN);
    let mut common = r.link_from(fixture, &fixture.small_names());
    // One file of many blocks, so B and C ask for pieces of it at once.
    common.push(r.build_deb("sharedbig", "1.0-1", "amd64", 1_500_000, 2201));
    let v1 = common.clone();
    let mut v2 = v1.clone();
    v2.push(r.build_deb("newv2", "1.0-1", "amd64", 20_000, 2202));
    let mut v3 = v2.clone();
    v3.push(r.build_deb("newv3", "1.0-1", "all", 22_000, 2203));

    let mirror = Mirror::start(&r.root);
    let a = Daemon::start_peer("127.0.0.131", &[mirror.port()], None, &[]);
    let boot = a.peer_addr();
    assert_eq!(boot.ip().to_string(), "127.0.0.131", "peer_addr {boot}");
    let b = Daemon::start_peer("127.0.0.132", &[mirror.port()], Some(boot), &[]);
    assert_eq!(b.peer_addr().ip().to_string(), "127.0.0.132");
    let c = Daemon::start_peer("127.0.0.133", &[mirror.port()], Some(boot), &[]);
    assert_eq!(c.peer_addr().ip().to_string(), "127.0.0.133");

    let set = names(&common);
    let common_bytes = total_size(&common);

    // v1: A's client updates and fetches the common set (from the mirror).
    let sha1 = r.publish("stable", "dtthree", &v1);
    let view1 = r.view(&v1);
    let ca = AptClient::with_suites(&view1, &mirror, Mode::Prefix(a.addr()), &["stable"], false);
    ca.update_and_fetch(&view1, &set, "A's client (index v1)");
    let after_a = mirror.stats();
    assert!(
        after_a.pool_bytes >= common_bytes,
        "A's client came from the mirror: {after_a:?}, packages {common_bytes} bytes"
    );

    // v2: B's client updates; v3: C's client updates.
    let sha2 = r.publish("stable", "dtthree", &v2);
    let view2 = r.view(&v2);
    let cb = AptClient::with_suites(&view2, &mirror, Mode::Prefix(b.addr()), &["stable"], false);
    let out = cb.update();
    cb.assert_update_verified(&out, "B's client (index v2)");
    let sha3 = r.publish("stable", "dtthree", &v3);
    let view3 = r.view(&v3);
    let cc = AptClient::with_suites(&view3, &mirror, Mode::Prefix(c.addr()), &["stable"], false);
    let out = cc.update();
    cc.assert_update_verified(&out, "C's client (index v3)");
    assert!(
        sha1 != sha2 && sha2 != sha3 && sha1 != sha3,
        "the three index versions are not three: {sha1} {sha2} {sha3}"
    );

    // B and C fetch the common set at the same time.
    let mark = mirror.log().len();
    let before = mirror.stats();
    let mut args = vec!["install", "--download-only"];
    args.extend_from_slice(&set);
    let started = Instant::now();
    let mut pb = cb.spawn(&args);
    let mut pc = cc.spawn(&args);
    let (ok_b, took_b) = wait_spawned(&mut pb, LIMIT, started);
    let (ok_c, took_c) = wait_spawned(&mut pc, LIMIT, started);
    let phase_pool = pool_bytes_since(&mirror, &before);
    assert!(
        ok_b,
        "B's client (index v2) failed or ran over {LIMIT:?} ({took_b:?})\n{}\nB's status:\n{:#}",
        cb.spawned_output(),
        b.status_json()
    );
    assert!(
        ok_c,
        "C's client (index v3) failed or ran over {LIMIT:?} ({took_c:?})\n{}\nC's status:\n{:#}",
        cc.spawned_output(),
        c.status_json()
    );
    if let Err(e) = cb.verify_archives(&view2, &set) {
        panic!("B's client (index v2): {e}\n{}", cb.spawned_output());
    }
    if let Err(e) = cc.verify_archives(&view3, &set) {
        panic!("C's client (index v3): {e}\n{}", cc.spawned_output());
    }

    let allowed = 2 * common_bytes * SLACK_PERCENT / 100;
    let (st_a, st_b, st_c) = (a.status_json(), b.status_json(), c.status_json());
    eprintln!(
        "three index versions, B (v2) and C (v3) at once: {} common files ({common_bytes} bytes \
         each); B took {took_b:?}, C {took_c:?}; the mirror sent {phase_pool} pool bytes, \
         allowed {allowed}; bytes_from_peers B {} C {}; bytes_uploaded A {} B {} C {}",
        common.len(),
        num(&st_b["bytes_from_peers"]),
        num(&st_c["bytes_from_peers"]),
        num(&st_a["bytes_uploaded"]),
        num(&st_b["bytes_uploaded"]),
        num(&st_c["bytes_uploaded"]),
    );
    assert!(
        phase_pool <= allowed,
        "B (index v2) and C (index v3) took {phase_pool} pool bytes from the mirror, more than \
         {allowed} ({SLACK_PERCENT}% of 2 x the {common_bytes} bytes A holds and all three \
         versions list); pool requests since they started:\n{}B's status:\n{st_b:#}\nC's \
         status:\n{st_c:#}",
        mirror.pool_log(mark)
    );
    assert_same_swarm(&a, &b, "three versions");
    assert_same_swarm_named((&a, "A"), (&c, "C"), "three versions");
}

/// Older files stay shared (issue 11, item 5), across a restart: A fetched
/// `tiny` through version 1 of `stable`; version 2 no longer lists it, A's
/// apt updates to it, and A restarts, so no index A has registered lists
/// `tiny` any more. B lists only `stable-updates`, which still does: B gets
/// it from A, which announced it again from its store's record of the
/// swarm the file was shared in.
#[test]
fn dt2_file_no_current_index_lists_is_shared_after_restart() {
    const GONE: &str = "tiny";
    let fixture = repo();
    let mut r = SuiteRepo::new("dt2-gone", ORIGIN);
    let v1 = r.link_from(fixture, &fixture.small_names());
    let v2: Vec<Package> = v1.iter().filter(|p| p.name != GONE).cloned().collect();
    let gone: Vec<Package> = v1.iter().filter(|p| p.name == GONE).cloned().collect();
    assert_eq!(gone.len(), 1, "the fixture has no {GONE}");
    r.publish("stable", "dtgone", &v1);

    let mirror = Mirror::start(&r.root);
    let mut a = Daemon::start_peer("127.0.0.141", &[mirror.port()], None, &[]);
    let v1_view = r.view(&v1);
    let ca = AptClient::with_suites(
        &v1_view,
        &mirror,
        Mode::Prefix(a.addr()),
        &["stable"],
        false,
    );
    ca.update_and_fetch(&v1_view, &names(&v1), "A's client (stable v1)");

    // Version 2 of stable drops GONE; stable-updates lists it.
    r.publish("stable", "dtgone", &v2);
    r.publish("stable-updates", "dtgone-updates", &gone);
    let v2_view = r.view(&v2);
    let out = ca.update();
    ca.assert_update_verified(&out, "A's client (stable v2)");
    let listed = |d: &Daemon| -> Vec<String> {
        d.status_json()["torrents"]
            .as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|t| t["index_path"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    a.stop(std::time::Duration::from_secs(10));
    a.restart();
    // The previous run's indexes load in the background after a restart.
    crate::support::wait_until(std::time::Duration::from_secs(20), || {
        !listed(&a).is_empty()
    });
    let a_indexes = listed(&a);
    assert!(
        !a_indexes.is_empty() && a_indexes.iter().all(|p| !p.contains("updates")),
        "A registers stable only: {a_indexes:?}"
    );
    let b = Daemon::start_peer("127.0.0.142", &[mirror.port()], Some(a.peer_addr()), &[]);
    let gone_view = r.view(&gone);
    let before = mirror.stats();
    let mark = mirror.log().len();
    let cb = AptClient::with_suites(
        &gone_view,
        &mirror,
        Mode::Prefix(b.addr()),
        &["stable-updates"],
        false,
    );
    cb.update_and_fetch(&gone_view, &[GONE], "B's client (stable-updates)");
    let b_pool = pool_bytes_since(&mirror, &before);
    let st_b = b.status_json();
    eprintln!(
        "{GONE} after A's index dropped it and A restarted: B took {b_pool} pool bytes from the \
         mirror for {} bytes; B bytes_from_peers {}; A's indexes {a_indexes:?}",
        gone[0].size,
        num(&st_b["bytes_from_peers"]),
    );
    assert_eq!(
        b_pool,
        0,
        "B fetched {GONE} from the mirror although A holds it; pool requests:\n{}B's status:\n\
         {st_b:#}\nA's status:\n{:#}",
        mirror.pool_log(mark),
        a.status_json()
    );
    assert!(num(&st_b["bytes_from_peers"]) >= gone[0].size, "{st_b:#}");
    drop(v2_view);
}
