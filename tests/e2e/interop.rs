//! DHT interop with python3-libtorrent 2.0.8 (docs/swarm-design.md §2 I1/I3
//! and §14 "libtorrent interop").
//!
//! Topology (I3): two libtorrent sessions, lt0 on 127.0.0.21 and lt1 on
//! 127.0.0.22, both bootstrap from lt0; two daemons on 127.0.0.23 and .24
//! bootstrap from lt0 as well. The other way round (libtorrent
//! bootstrapping from one of ours) cannot work: mainline 8.0.1 drops
//! queries whose transaction id is not 4 bytes, and libtorrent sends 2-byte
//! ids (M4, I2).
//!
//! The libtorrent side is `lt_dht.py`, one `/usr/bin/python3` child driven by
//! command lines on stdin and answering JSON lines on stdout; it has its own
//! time limit and is killed when the test ends.
//!
//! What is asserted is discovery, not transfer: libtorrent and our daemons
//! dial each other once they learn each other's address, and each side drops
//! the connection after the handshake (libtorrent sends no `debtorrent: 1`,
//! and we offer no `ut_metadata` for its magnet). That is expected here.
//!
//! Addresses: 127.0.0.21-.24, every port picked free at run time (also
//! used by `swarm_peer_killed_mid_transfer_others_finish`, whose private DHT
//! bootstraps from its own node on .21 with another port, so the two never
//! meet).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::apt::{AptClient, Mode};
use crate::support::daemon::Daemon;
use crate::support::mirror::Mirror;
use crate::support::repo::repo;

/// The torrent apt's `apt-get update` registers for the binary packages.
const PACKAGES: &str = "dists/stable/main/binary-amd64/Packages";
/// §14: both directions within this.
const FIND_WITHIN: Duration = Duration::from_secs(30);
/// The libtorrent child's own time limit (the whole test takes well under).
const LT_TIME_LIMIT_SECS: u32 = 240;
/// `discovery::LOOKUP_EVERY`: a lookup asked for within this long of the
/// last one shares its result instead of running again.
const LOOKUP_EVERY: Duration = Duration::from_secs(5);

const PYTHON: &str = "/usr/bin/python3";

fn script() -> String {
    format!("{}/tests/e2e/lt_dht.py", env!("CARGO_MANIFEST_DIR"))
}

/// Fails with a clear message when python3-libtorrent is missing.
fn require_libtorrent() {
    let ok = Command::new(PYTHON)
        .args(["-c", "import libtorrent"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        ok,
        "the interop test needs `{PYTHON}` with the libtorrent module (Debian package \
         `python3-libtorrent`); install it with `apt-get install python3-libtorrent`"
    );
}

/// The two libtorrent sessions (one Python process).
struct Lt {
    child: Child,
    stdin: Option<ChildStdin>,
    events: mpsc::Receiver<Value>,
    /// Everything the child printed, stdout and stderr, for failures.
    transcript: Arc<Mutex<Vec<String>>>,
    lt0: SocketAddr,
    lt1: SocketAddr,
}

impl Lt {
    fn start(ip0: &str, ip1: &str) -> Lt {
        let mut child = Command::new(PYTHON)
            .arg(script())
            .args([ip0, ip1, &LT_TIME_LIMIT_SECS.to_string()])
            .env_clear()
            .env("PATH", "/usr/bin:/bin")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {PYTHON} {}: {e}", script()));
        let transcript = Arc::new(Mutex::new(Vec::new()));
        let (tx, events) = mpsc::channel();
        let out = child.stdout.take().unwrap();
        let t = transcript.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines() {
                let Ok(line) = line else { break };
                t.lock().unwrap().push(format!("[lt] {line}"));
                if let Ok(v) = serde_json::from_str::<Value>(&line) {
                    if tx.send(v).is_err() {
                        break;
                    }
                }
            }
        });
        let mut err = child.stderr.take().unwrap();
        let t = transcript.clone();
        std::thread::spawn(move || {
            let mut s = String::new();
            let _ = err.read_to_string(&mut s);
            if !s.is_empty() {
                t.lock().unwrap().push(format!("[lt stderr] {s}"));
            }
        });
        let stdin = child.stdin.take();
        let mut lt = Lt {
            child,
            stdin,
            events,
            transcript,
            lt0: "0.0.0.0:0".parse().unwrap(),
            lt1: "0.0.0.0:0".parse().unwrap(),
        };
        let ready = lt
            .next_event(Duration::from_secs(20), |v| v["event"] == "ready")
            .unwrap_or_else(|| panic!("libtorrent did not start:\n{}", lt.transcript()));
        lt.lt0 = ready["lt0"].as_str().and_then(|s| s.parse().ok()).unwrap();
        lt.lt1 = ready["lt1"].as_str().and_then(|s| s.parse().ok()).unwrap();
        assert!(
            lt.lt0.port() != 0 && lt.lt1.port() != 0,
            "libtorrent is not listening: {ready}\n{}",
            lt.transcript()
        );
        lt
    }

    fn send(&mut self, cmd: &str) {
        let stdin = self.stdin.as_mut().expect("libtorrent stdin");
        if let Err(e) = writeln!(stdin, "{cmd}").and_then(|_| stdin.flush()) {
            panic!("libtorrent child gone ({e}):\n{}", self.transcript());
        }
    }

    /// The next event that `pred` accepts, within `within` (others are
    /// dropped; they stay in the transcript).
    fn next_event(&self, within: Duration, pred: impl Fn(&Value) -> bool) -> Option<Value> {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.events.recv_timeout(left) {
                Ok(v) if pred(&v) => return Some(v),
                Ok(_) => {}
                Err(_) => return None,
            }
        }
    }

    /// `dht_get_peers` on session `n` every second (bounded by `within`)
    /// until a reply lists `want`; returns the time that took and every
    /// peer seen, or None and every peer seen.
    fn lookup_until(
        &mut self,
        n: u8,
        ih: &str,
        want: SocketAddr,
        within: Duration,
    ) -> (Option<Duration>, Vec<String>) {
        let start = Instant::now();
        let want = want.to_string();
        let mut seen: Vec<String> = Vec::new();
        while start.elapsed() < within {
            self.send(&format!("lookup {n} {ih}"));
            let round_end = Instant::now() + Duration::from_secs(1);
            while let Some(v) = self
                .next_event(round_end.saturating_duration_since(Instant::now()), |v| {
                    v["event"] == "peers" && v["session"] == n && v["info_hash"] == ih
                })
            {
                for p in v["peers"].as_array().into_iter().flatten() {
                    let p = p.as_str().unwrap_or_default().to_string();
                    if !seen.contains(&p) {
                        seen.push(p);
                    }
                }
                if seen.contains(&want) {
                    return (Some(start.elapsed()), seen);
                }
            }
        }
        (None, seen)
    }

    fn transcript(&self) -> String {
        self.transcript.lock().unwrap().join("\n")
    }
}

impl Drop for Lt {
    fn drop(&mut self) {
        // End of stdin makes it quit; kill it anyway, then reap.
        drop(self.stdin.take());
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- libtorrent transcript:\n{}", self.transcript());
        }
    }
}

/// The Packages torrent's `/status.json` entry. Registration follows apt's
/// index download and the status list is refreshed on its own, so give it a
/// few seconds to show.
fn packages_torrent(d: &Daemon) -> Value {
    let start = Instant::now();
    loop {
        if let Some(t) = d.torrent_status(PACKAGES) {
            return t;
        }
        if start.elapsed() > Duration::from_secs(10) {
            panic!("no torrent for {PACKAGES} in {:#}", d.status_json());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn discovered_dht(t: &Value) -> Vec<String> {
    t["discovered"]["dht"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|x| x.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

/// §14 libtorrent interop, both directions, within 30 s each.
#[test]
fn dht_interop_with_libtorrent_both_directions() {
    require_libtorrent();
    let t0 = Instant::now();
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let mut lt = Lt::start("127.0.0.21", "127.0.0.22");
    eprintln!("libtorrent: lt0 {} lt1 {}", lt.lt0, lt.lt1);

    // Our daemons bootstrap from lt0 (I1/I3).
    let d23 = Daemon::start_peer("127.0.0.23", &[mirror.port()], Some(lt.lt0), &[]);
    let d24 = Daemon::start_peer("127.0.0.24", &[mirror.port()], Some(lt.lt0), &[]);
    let a23 = AptClient::new(repo, &mirror, Mode::Prefix(d23.addr()));
    let a24 = AptClient::new(repo, &mirror, Mode::Prefix(d24.addr()));
    let out = a23.update();
    a23.assert_update_verified(&out, "update via .23");
    let out = a24.update();
    a24.assert_update_verified(&out, "update via .24");
    // Registering the Packages torrent started its DHT announce and a first
    // lookup on .24; LOOKUP_EVERY is counted from here.
    let d24_registered = Instant::now();

    let t23 = packages_torrent(&d23);
    // The DHT carries the dt2 swarm id (docs/torrent-format.md §7).
    let ih = t23["swarm_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no swarm_id: {t23:#}"))
        .to_string();
    assert_eq!(ih.len(), 40, "swarm_id {ih:?}");
    assert_eq!(
        packages_torrent(&d24)["swarm_id"].as_str(),
        Some(ih.as_str()),
        "the two daemons put the Packages index in different swarms"
    );
    let p23 = d23.peer_addr();
    let p24 = d24.peer_addr();
    eprintln!("Packages torrent {ih}; daemon .23 peers on {p23}, .24 on {p24}");

    // ---- Direction 1: libtorrent finds us. lt1 looks the daemon's real
    // hash up (dht_get_peers, no torrent, so it never dials us); .23 has
    // announced it to lt0/lt1 since registration.
    let (found, seen) = lt.lookup_until(1, &ih, p23, FIND_WITHIN);
    let Some(took) = found else {
        panic!(
            "libtorrent (lt1) did not find daemon .23 ({p23}) for {ih} within {FIND_WITHIN:?}; \
             peers it saw: {seen:?}\n.23 status: {:#}",
            d23.status_json()
        );
    };
    eprintln!("direction 1: lt1 found .23 ({p23}) in {took:.1?}; peers seen {seen:?}");

    // ---- Direction 2: we find libtorrent. lt0 announces the hash by adding
    // its magnet (the 2.0.8 bindings cannot call dht_announce with flags),
    // with dht_announce_interval 5. First make sure the announce is in the
    // DHT: lt1's lookup must return lt0's own address.
    lt.send(&format!("announce 0 {ih}"));
    let (found, seen) = lt.lookup_until(1, &ih, lt.lt0, FIND_WITHIN);
    let Some(took) = found else {
        panic!(
            "lt0's magnet announce of {ih} never showed in lt1's lookups within \
             {FIND_WITHIN:?}; peers seen: {seen:?}"
        );
    };
    eprintln!("lt0's announce visible to lt1 after {took:.1?}");
    let libtorrent = [lt.lt0.to_string(), lt.lt1.to_string()];
    let before = discovered_dht(&packages_torrent(&d24));
    eprintln!(".24 discovered.dht before the trigger: {before:?}");

    // What makes .24 look up now: apt asking it for a package. Registration
    // did one lookup (before libtorrent announced), and the next periodic one
    // comes only after 60 s; a second `apt-get update` re-registers the same
    // index and does not restart the torrent task. But a piece apt waits on
    // that no connected peer holds (.23 holds none: it only ran `update`)
    // starts a lookup at once, and another every 5 s while apt waits. apt
    // gets the package from the mirror after --peer-wait (1 s), whatever
    // libtorrent does, and then the 5 s lookups stop. So: let LOOKUP_EVERY
    // pass since registration (else the request would share the
    // registration lookup's old result), download one package through .24
    // and watch /status.json for 10 s. Should that lookup have missed, the
    // next attempt asks for another package (a new piece, a new lookup), at
    // most 3 attempts and FIND_WITHIN in all.
    if let Some(rest) =
        (LOOKUP_EVERY + Duration::from_millis(500)).checked_sub(d24_registered.elapsed())
    {
        std::thread::sleep(rest);
    }
    let trigger = Instant::now();
    let mut found_at = None;
    let mut last = Value::Null;
    let mut fetched = Vec::new();
    for pkg in ["tiny", "fill0", "fill1"] {
        if found_at.is_some() || trigger.elapsed() >= FIND_WITHIN {
            break;
        }
        let attempt = Instant::now();
        let apt_out = std::thread::scope(|s| {
            let apt = s.spawn(|| a24.download_only(&[pkg]));
            while attempt.elapsed() < Duration::from_secs(10) && trigger.elapsed() < FIND_WITHIN {
                last = packages_torrent(&d24);
                let dht = discovered_dht(&last);
                if let Some(a) = dht.iter().find(|a| libtorrent.contains(a)) {
                    found_at = Some((trigger.elapsed(), a.clone(), pkg));
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            apt.join().expect("apt thread")
        });
        // libtorrent's connections are dropped after the handshake; apt is
        // not disturbed by that.
        assert!(
            apt_out.success(),
            "apt-get install --download-only {pkg} via .24:\n{}",
            apt_out.combined()
        );
        fetched.push(pkg);
    }
    let Some((took, addr, pkg)) = found_at else {
        panic!(
            "daemon .24 did not discover libtorrent ({libtorrent:?}) by DHT within \
             {FIND_WITHIN:?} of apt asking for {fetched:?}; its Packages torrent: {last:#}\n\
             .24 status: {:#}",
            d24.status_json()
        );
    };
    eprintln!(
        "direction 2: .24 discovered libtorrent {addr} by DHT {took:.1?} after apt asked for \
         {pkg} ({} attempt(s)); discovered {}",
        fetched.len(),
        last["discovered"]
    );
    a24.verify_archives(repo, &fetched)
        .unwrap_or_else(|e| panic!("apt via .24: {e}"));
    for d in [&d23, &d24] {
        let st = d.status_json();
        assert!(
            st["swarm"].is_object(),
            "daemon {} lost its swarm status: {st:#}",
            d.addr()
        );
    }
    let transcript = lt.transcript();
    let dials = transcript
        .lines()
        .filter(|l| l.contains("connection to peer"))
        .count();
    eprintln!(
        "interop test done in {:.1?} ({dials} peer connection events on the libtorrent \
         side; they end after the handshake, as expected)",
        t0.elapsed()
    );
    if std::env::var_os("DEBTORRENT_E2E_SHOW_LOG").is_some() {
        eprintln!("---- libtorrent transcript:\n{transcript}");
        for (name, d) in [(".23", &d23), (".24", &d24)] {
            eprintln!("---- daemon {name} log lines about 127.0.0.21/.22:");
            for l in d.log_text().lines().filter(|l| {
                (l.contains("127.0.0.21:") || l.contains("127.0.0.22:")) && !l.contains("No values")
            }) {
                eprintln!("  {l}");
            }
        }
    }
}

impl Lt {
    /// Starts one more libtorrent session on `ip` that bootstraps only from
    /// `boot`; returns its number and address.
    fn start_session(&mut self, ip: &str, boot: SocketAddr) -> (u8, SocketAddr) {
        self.send(&format!("start {ip} {boot}"));
        let v = self
            .next_event(Duration::from_secs(20), |v| v["event"] == "started")
            .unwrap_or_else(|| panic!("no new libtorrent session:\n{}", self.transcript()));
        let n = v["session"].as_u64().unwrap_or(0) as u8;
        let addr = v["addr"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("bad started event {v}"));
        (n, addr)
    }

    /// Session `n`'s DHT routing table size.
    fn nodes(&mut self, n: u8) -> u64 {
        self.send(&format!("nodes {n}"));
        self.next_event(Duration::from_secs(5), |v| {
            v["event"] == "nodes" && v["session"] == n
        })
        .and_then(|v| v["nodes"].as_u64())
        .unwrap_or(0)
    }
}

/// docs/swarm-design.md §2.5: a libtorrent node that bootstraps *only* from
/// a debtorrent node running the public-DHT crate (`librqbit-dht`) joins
/// the DHT through it and finds libtorrent's announces (the I2 topology,
/// which partitions with `mainline`); and the daemon finds that node's
/// announce by DHT.
///
/// Topology: lt0 (.21) and lt1 (.22) bootstrap from lt0; daemon .25
/// (`--dht-impl librqbit`) bootstraps from lt0; lt2 (.26) bootstraps from
/// the daemon alone. Not asserted: libtorrent finding the daemon's own
/// announce. librqbit-dht announces only to nodes whose id shares 16
/// leading bits with the info hash (§2 R5), which a network of four nodes
/// never has; the public DHT always has.
#[test]
fn dht_libtorrent_bootstraps_from_a_public_mode_daemon() {
    require_libtorrent();
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let mut lt = Lt::start("127.0.0.21", "127.0.0.22");
    let lt0 = lt.lt0;
    // As on the public DHT, the router the daemon bootstraps from already
    // knows nodes (librqbit-dht adds the nodes a router names, never the
    // router itself, §2 R2).
    let start = Instant::now();
    while lt.nodes(0) == 0 {
        assert!(
            start.elapsed() < FIND_WITHIN,
            "lt0 never learned lt1:\n{}",
            lt.transcript()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let d = Daemon::start_peer(
        "127.0.0.25",
        &[mirror.port()],
        Some(lt0),
        &["--dht-impl", "librqbit"],
    );
    let dp = d.peer_addr();
    // The daemon's table fills from lt0's answers (lt0 knows lt1).
    let start = Instant::now();
    let mut dht = Value::Null;
    while start.elapsed() < FIND_WITHIN {
        dht = d.status_json()["swarm"]["discovery"]["dht"].clone();
        if dht["nodes"].as_u64().unwrap_or(0) > 0 {
            break;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(dht["implementation"], "librqbit-dht", "{dht:#}");
    assert!(
        dht["nodes"].as_u64().unwrap_or(0) > 0,
        "daemon .25 never got a DHT node from lt0: {dht:#}\n{}",
        d.log_text()
    );
    eprintln!(
        "daemon .25 ({dp}) DHT up after {:.1?}: {dht}",
        start.elapsed()
    );

    let (n2, lt2) = lt.start_session("127.0.0.26", dp);
    eprintln!("lt2 = session {n2} on {lt2}, bootstrapping from {dp} only");

    // ---- libtorrent routes through us: lt0 announces a hash, lt2 finds it.
    let ih: String = (0..40)
        .map(|_| char::from_digit(fastrand::u32(..16), 16).unwrap_or('0'))
        .collect();
    lt.send(&format!("announce 0 {ih}"));
    let (found, seen) = lt.lookup_until(n2, &ih, lt0, FIND_WITHIN);
    let nodes = lt.nodes(n2);
    let Some(took) = found else {
        panic!(
            "lt2, bootstrapped from daemon .25, did not find lt0's announce of {ih} within \
             {FIND_WITHIN:?}; peers seen {seen:?}; lt2 table {nodes}\n.25 status {:#}\n{}",
            d.status_json(),
            d.log_text()
        );
    };
    eprintln!("lt2 found lt0's announce through .25 in {took:.1?}; lt2 table {nodes} nodes");

    // ---- We find libtorrent: lt2 announces the daemon's Packages hash,
    // then apt asks the daemon for packages (each a lookup, §14).
    let a = AptClient::new(repo, &mirror, Mode::Prefix(d.addr()));
    let out = a.update();
    a.assert_update_verified(&out, "update via .25");
    let registered = Instant::now();
    let swarm = packages_torrent(&d)["swarm_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(swarm.len(), 40, "swarm_id {swarm:?}");
    lt.send(&format!("announce {n2} {swarm}"));
    let (found, seen) = lt.lookup_until(0, &swarm, lt2, FIND_WITHIN);
    assert!(
        found.is_some(),
        "lt2's announce of {swarm} never reached lt0: {seen:?}"
    );
    if let Some(rest) =
        (LOOKUP_EVERY + Duration::from_millis(500)).checked_sub(registered.elapsed())
    {
        std::thread::sleep(rest);
    }
    let trigger = Instant::now();
    let mut found_at = None;
    let mut last = Value::Null;
    for pkg in ["tiny", "fill0", "fill1"] {
        if found_at.is_some() || trigger.elapsed() >= FIND_WITHIN {
            break;
        }
        let attempt = Instant::now();
        let apt_out = std::thread::scope(|s| {
            let apt = s.spawn(|| a.download_only(&[pkg]));
            while attempt.elapsed() < Duration::from_secs(10) && trigger.elapsed() < FIND_WITHIN {
                last = packages_torrent(&d);
                if discovered_dht(&last).contains(&lt2.to_string()) {
                    found_at = Some(trigger.elapsed());
                    break;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
            apt.join().expect("apt thread")
        });
        assert!(
            apt_out.success(),
            "apt via .25 ({pkg}):\n{}",
            apt_out.combined()
        );
    }
    let Some(took) = found_at else {
        panic!(
            "daemon .25 did not discover lt2 ({lt2}) by DHT within {FIND_WITHIN:?}: {last:#}\n{}",
            d.log_text()
        );
    };
    eprintln!("daemon .25 found lt2's announce by DHT {took:.1?} after apt asked");
}
