//! IPv6 between daemons (issue 13): a daemon on the default kind of peer
//! address (`0.0.0.0:PORT`) also takes IPv6 peers on the same port, and
//! IPv6 addresses travel in PEX (`added6`). No DHT, no LSD: two trackers
//! (the debtorrent-tracker library, in-process) on `[::1]` are the only
//! other source of addresses, so each address a daemon dials is known to
//! come from one of them or from PEX.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::apt::{AptClient, Mode};
use crate::support::daemon::Daemon;
use crate::support::mirror::Mirror;
use crate::support::repo::repo;

const PACKAGES: &str = "dists/stable/main/binary-amd64/Packages";

/// A debtorrent tracker on `[::1]:0` in a thread of its own; stopped on
/// drop.
struct Tracker6 {
    addr: SocketAddr,
    stop: Option<tokio::sync::watch::Sender<bool>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Tracker6 {
    /// `None` where this host has no IPv6 loopback.
    fn start() -> Option<Tracker6> {
        let std_l = std::net::TcpListener::bind("[::1]:0").ok()?;
        std_l.set_nonblocking(true).ok()?;
        let addr = std_l.local_addr().ok()?;
        let (stop, stop_rx) = tokio::sync::watch::channel(false);
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("tracker runtime");
            rt.block_on(async move {
                let l = tokio::net::TcpListener::from_std(std_l).expect("tracker listener");
                let policy = debtorrent_tracker::tracker::Policy {
                    // Announce again soon, so late joiners are seen.
                    interval: 5,
                    min_interval: 1,
                    ..Default::default()
                };
                let t = Arc::new(debtorrent_tracker::tracker::Tracker::new(
                    policy,
                    [7; 32],
                    std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map(|d| d.as_secs())
                        .unwrap_or(0),
                ));
                let _ = debtorrent_tracker::http_server::serve(l, t, stop_rx).await;
            });
        });
        Some(Tracker6 {
            addr,
            stop: Some(stop),
            thread: Some(thread),
        })
    }

    fn url(&self) -> String {
        format!("http://{}/announce", self.addr)
    }
}

impl Drop for Tracker6 {
    fn drop(&mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(true);
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

fn torrent(d: &Daemon) -> Value {
    d.torrent_status(PACKAGES)
        .unwrap_or_else(|| panic!("no torrent for {PACKAGES} in {:#}", d.status_json()))
}

fn lists(v: &Value, addr: &str) -> bool {
    v.as_array()
        .is_some_and(|l| l.iter().any(|x| x.as_str() == Some(addr)))
}

/// A listens on `0.0.0.0:P` and is only ever told to peers as `[::1]:P`
/// (the trackers see it over IPv6), so B reaching it proves the IPv6
/// listener beside the IPv4 one. C knows only tracker T2, which never saw
/// A; C learns A from B's PEX, where an IPv6 address can only travel in
/// `added6`, and dials it.
#[test]
fn ipv6_dual_stack_listener_and_pex_added6() {
    let (Some(t1), Some(t2)) = (Tracker6::start(), Tracker6::start()) else {
        eprintln!("ipv6 test: no IPv6 loopback on this host; not run");
        return;
    };
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let pkgs = ["small", "tiny", "libfoo1"];
    let (u1, u2) = (t1.url(), t2.url());
    let common = [
        "--no-dht",
        "--no-lsd",
        "--no-upnp",
        "--max-peers-per-ip",
        "4",
    ];
    let start = |peer: &str, trackers: &[&str]| {
        let mut args = vec!["--peer-addr", peer];
        args.extend_from_slice(&common);
        for t in trackers {
            args.extend_from_slice(&["--tracker", t]);
        }
        Daemon::start_on("127.0.0.1", &[mirror.port()], &args)
    };
    let a = start("0.0.0.0:0", &[&u1]);
    let b = start("[::1]:0", &[&u1, &u2]);
    let c = start("[::1]:0", &[&u2]);
    let a_port = a.peer_addr().port();
    let a6 = format!("[::1]:{a_port}");

    let ca = AptClient::new(repo, &mirror, Mode::Prefix(a.addr()));
    ca.update_and_fetch(repo, &pkgs, "A's client");
    let before = mirror.stats();
    let cb = AptClient::new(repo, &mirror, Mode::Prefix(b.addr()));
    cb.update_and_fetch(repo, &pkgs, "B's client");
    let tb = torrent(&b);
    assert!(
        lists(&tb["discovered"]["tracker"], &a6),
        "B did not learn A as {a6} from the tracker: {tb:#}"
    );
    assert_eq!(
        mirror.stats().pool_bytes,
        before.pool_bytes,
        "B's packages came from the mirror, not from A over IPv6: {tb:#}\n---- A's log:\n{}",
        a.log_text()
    );

    // C registers the index: it meets B through T2, and B's PEX names A.
    let cc = AptClient::new(repo, &mirror, Mode::Prefix(c.addr()));
    cc.update_and_fetch(repo, &pkgs[..1], "C's client");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let tc = torrent(&c);
        let via_pex = lists(&tc["discovered"]["pex"], &a6);
        let connected = tc["peers"]
            .as_array()
            .is_some_and(|v| v.iter().any(|p| p["addr"].as_str() == Some(a6.as_str())));
        if via_pex && connected {
            assert!(
                !lists(&tc["discovered"]["tracker"], &a6),
                "T2 named A although A never announced there: {tc:#}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "C did not learn A ({a6}) by PEX and connect within 30 s (pex: {via_pex}, connected: {connected}): {tc:#}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    assert_eq!(
        mirror.stats().pool_bytes,
        before.pool_bytes,
        "C's package came from the mirror"
    );
}
