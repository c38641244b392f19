//! BEP 14 local service discovery with real multicast, inside a network
//! namespace the test creates (multicast is not loopback traffic, so it
//! never leaves that namespace): two daemons with no DHT and no tracker
//! find each other through LSD alone, and the second fetches a package
//! from the first.
//!
//! The namespace is held by a `sleep` started with `unshare -n`; every
//! other process (a python3 http.server as the mirror, the daemons, curl)
//! joins it with `nsenter`. Where namespaces cannot be created (no
//! CAP_SYS_ADMIN), the test says so and returns.

use std::time::{Duration, Instant};

use crate::support::daemon::binary;
use crate::support::netns::{self, wait_for, Netns};
use crate::support::repo::repo;

#[test]
fn lsd_finds_a_peer_on_the_lan_without_dht_or_tracker() {
    let Some(ns) = Netns::create() else {
        eprintln!(
            "lsd test: cannot create a network namespace here (needs root/CAP_SYS_ADMIN); not run"
        );
        return;
    };
    // Multicast on the namespace's loopback (BEP 14's group is 239.x).
    ns.run(&["ip", "link", "set", "lo", "multicast", "on"]);
    ns.run(&["ip", "route", "add", "239.0.0.0/8", "dev", "lo"]);
    lan_pair(&ns, ("127.0.0.71", "127.0.0.72"), "IPv4");
}

/// The same over IPv6: the daemons' peer addresses are IPv6 only, so they
/// can meet only through BEP 14's IPv6 group `[ff15::efc0:988f]:6771`.
/// IPv6 multicast does not loop on `lo`, so the "LAN" is a veth pair
/// inside the namespace, with both addresses on one end.
#[test]
fn lsd_finds_a_peer_over_ipv6_multicast() {
    let Some(ns) = Netns::create() else {
        eprintln!(
            "lsd test: cannot create a network namespace here (needs root/CAP_SYS_ADMIN); not run"
        );
        return;
    };
    ns.run(&[
        "ip", "link", "add", "lan0", "type", "veth", "peer", "name", "lan1",
    ]);
    ns.run(&["ip", "link", "set", "lan0", "up"]);
    ns.run(&["ip", "link", "set", "lan1", "up"]);
    for a in ["fd00::71/64", "fd00::72/64"] {
        ns.run(&["ip", "-6", "addr", "add", a, "dev", "lan0", "nodad"]);
    }
    lan_pair(&ns, ("fd00::71", "fd00::72"), "IPv6");
}

/// Daemons A (`ips.0`) and B (`ips.1`), peers on `IP:6881`, no DHT and no
/// tracker, each with its apt front end on 127.0.0.71/72:9988: B finds A
/// by LSD alone and takes a package from it, not from the mirror.
fn lan_pair(ns: &Netns, ips: (&str, &str), family: &str) {
    let repo = repo();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mirror_port = "28080";
    let _mirror = ns.spawn(
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            repo.root.to_str().expect("utf-8 path"),
            mirror_port,
        ],
        &tmp.path().join("mirror.log"),
    );
    let peer_addr = |ip: &str| -> String {
        match ip.parse::<std::net::IpAddr>() {
            Ok(std::net::IpAddr::V6(_)) => format!("[{ip}]:6881"),
            _ => format!("{ip}:6881"),
        }
    };
    let daemon = |ip: &str, front: &str, name: &str| {
        let data = tmp.path().join(name);
        let listen = format!("{front}:9988");
        let peer = peer_addr(ip);
        let p = ns.spawn(
            &[
                binary(),
                "serve",
                "--listen",
                &listen,
                "--peer-addr",
                &peer,
                "--data-dir",
                data.to_str().expect("utf-8 path"),
                "--no-dht",
                "--allow-port",
                mirror_port,
                "--log-level",
                "debug",
            ],
            &tmp.path().join(format!("{name}.log")),
        );
        (p, listen)
    };
    let (_a, a) = daemon(ips.0, "127.0.0.71", "a");
    let (_b, b) = daemon(ips.1, "127.0.0.72", "b");
    let log_of = |name: &str| {
        std::fs::read_to_string(tmp.path().join(format!("{name}.log"))).unwrap_or_default()
    };
    let lsd_lines = || {
        ["a", "b"]
            .iter()
            .map(|n| {
                let text: String = log_of(n)
                    .lines()
                    .filter(|l| l.contains("lsd") || l.contains("LSD") || l.contains("peer"))
                    .map(|l| format!("  {n}: {l}\n"))
                    .collect();
                text
            })
            .collect::<String>()
    };
    let up = || {
        ns.get(&format!("http://{a}/status.json")).0 == 200
            && ns.get(&format!("http://{b}/status.json")).0 == 200
            && ns
                .get(&format!(
                    "http://127.0.0.1:{mirror_port}/dists/stable/InRelease"
                ))
                .0
                == 200
    };
    wait_for("daemons and mirror up", Duration::from_secs(15), up, || {
        log_of("a")
    });

    // Both register the Packages torrent; A fetches a package first.
    let pkg = repo.package("small");
    let base = format!("127.0.0.1:{mirror_port}");
    for d in [&a, &b] {
        for path in [
            "dists/stable/InRelease",
            "dists/stable/main/binary-amd64/Packages",
        ] {
            let (code, _) = ns.get(&format!("http://{d}/{base}/{path}"));
            assert_eq!(code, 200, "{path} through {d}\n{}", log_of("a"));
        }
    }
    let url = |d: &str| format!("http://{d}/{base}/{}", pkg.pool_path);
    let (code, body) = ns.get(&url(&a));
    assert_eq!(code, 200, "{} through A", pkg.pool_path);
    assert_eq!(body.len() as u64, pkg.size);

    // B learns A's address by LSD and connects.
    let torrent = |st: &serde_json::Value| {
        st["torrents"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|t| t["index_path"] == "dists/stable/main/binary-amd64/Packages")
                    .cloned()
            })
            .unwrap_or_default()
    };
    // One of them hears the other's LSD message (whichever announced
    // second) and dials it; B ends up connected to A.
    let (a_peer, b_peer) = (peer_addr(ips.0), peer_addr(ips.1));
    let (a_peer, b_peer) = (a_peer.as_str(), b_peer.as_str());
    let lsd_knows = |st: &serde_json::Value, who: &str| {
        torrent(st)["discovered"]["lsd"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == who))
    };
    let took = wait_for(
        "A and B find each other by LSD",
        Duration::from_secs(20),
        || {
            let (sa, sb) = (ns.status(&a), ns.status(&b));
            (lsd_knows(&sa, b_peer) || lsd_knows(&sb, a_peer))
                && torrent(&sb)["peers"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|p| p["addr"] == a_peer))
        },
        lsd_lines,
    );
    eprintln!("LSD ({family}): A and B found each other {took:.1?} after both registered");
    // B's download comes from A.
    let (code, body) = ns.get(&url(&b));
    assert_eq!(code, 200, "{} through B\n{}", pkg.pool_path, log_of("b"));
    assert_eq!(body, std::fs::read(&pkg.local).expect("the .deb"));
    let t = torrent(&ns.status(&b));
    assert!(
        t["bytes_from_peers"].as_u64().unwrap_or(0) >= pkg.size,
        "B did not take the package from A: {t:#}"
    );
    assert_eq!(t["bytes_from_mirror"].as_u64(), Some(0), "{t:#}");
}

/// Sends `count` BT-SEARCH messages for `ih` to the LSD group from
/// `src` (ports `port_base`, `port_base + 1`, ...), as fast as it can;
/// prints the seconds it took.
const SENDER: &str = r#"
import socket, sys, time
src, count, base, ih = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0))
s.setsockopt(socket.IPPROTO_IP, socket.IP_MULTICAST_IF, socket.inet_aton(src))
t = time.time()
for i in range(count):
    m = ("BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: %d\r\n"
         "Infohash: %s\r\n\r\n\r\n" % (base + i % 40000, ih)).encode()
    try:
        s.sendto(m, ("239.192.152.143", 6771))
    except OSError:
        time.sleep(0.001)
print("%.3f" % (time.time() - t))
"#;

/// BEP 14 input the daemon must not trust: messages from a non-local
/// address name no peer, and a flood is read at most
/// `IN_PER_SOURCE` (4) times a second per address while the daemon keeps
/// answering. A message from a local address (the control) is heard.
#[test]
fn lsd_flood_is_rate_limited_and_foreign_sources_are_ignored() {
    let Some(ns) = netns::Netns::create() else {
        eprintln!("lsd test: cannot create a network namespace here; not run");
        return;
    };
    ns.run(&["ip", "link", "set", "lo", "multicast", "on"]);
    ns.run(&["ip", "route", "add", "239.0.0.0/8", "dev", "lo"]);
    // A public-looking address, only inside this namespace.
    ns.run(&["ip", "addr", "add", "11.2.3.4/32", "dev", "lo"]);
    let repo = repo();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mirror_port = "28081";
    let _mirror = ns.spawn(
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            repo.root.to_str().expect("utf-8 path"),
            mirror_port,
        ],
        &tmp.path().join("mirror.log"),
    );
    let front = "127.0.0.73:9988";
    let data = tmp.path().join("a");
    let log_path = tmp.path().join("a.log");
    let _a = ns.spawn(
        &[
            binary(),
            "serve",
            "--listen",
            front,
            "--peer-addr",
            "127.0.0.73:6881",
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--no-dht",
            "--allow-port",
            mirror_port,
            "--log-level",
            "debug",
        ],
        &log_path,
    );
    let log = || std::fs::read_to_string(&log_path).unwrap_or_default();
    let base = format!("127.0.0.1:{mirror_port}");
    netns::wait_for(
        "daemon and mirror up",
        Duration::from_secs(15),
        || {
            ns.status(front).is_object()
                && ns.get(&format!("http://{base}/dists/stable/InRelease")).0 == 200
        },
        log,
    );
    for path in [
        "dists/stable/InRelease",
        "dists/stable/main/binary-amd64/Packages",
    ] {
        let (code, _) = ns.get(&format!("http://{front}/{base}/{path}"));
        assert_eq!(code, 200, "{path}\n{}", log());
    }
    let torrent = || {
        ns.status(front)["torrents"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|t| t["index_path"] == "dists/stable/main/binary-amd64/Packages")
                    .cloned()
            })
            .unwrap_or_default()
    };
    let lsd_from = |prefix: &str| -> Vec<String> {
        torrent()["discovered"]["lsd"]
            .as_array()
            .map(|v| {
                v.iter()
                    .filter_map(|x| x.as_str())
                    .filter(|x| x.starts_with(prefix))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    };
    let ih = torrent()["swarm_id"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(ih.len(), 40, "{:#}", torrent());
    let send = |src: &str, count: u32, port: u16| -> f64 {
        let out = ns
            .cmd(&[
                "python3",
                "-c",
                SENDER,
                src,
                &count.to_string(),
                &port.to_string(),
                &ih,
            ])
            .output()
            .expect("python3");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .unwrap_or(0.0)
    };

    // Control: one message from a local address is heard.
    send("127.0.0.8", 1, 7000);
    let heard = netns::wait_for(
        "a local LSD message is heard",
        Duration::from_secs(5),
        || lsd_from("127.0.0.8:") == ["127.0.0.8:7000"],
        || format!("{:#}\n{}", torrent(), log()),
    );
    eprintln!("LSD (IPv4): one local message heard in {heard:.1?} (200 ms polls)");
    // A non-local source names no peer.
    send("11.2.3.4", 3, 7100);
    std::thread::sleep(Duration::from_millis(1500));
    assert!(
        lsd_from("11.2.3.4:").is_empty(),
        "a non-local source was taken: {:?}",
        lsd_from("11.2.3.4:")
    );
    assert!(log().contains("LSD: ignoring messages from non-local addresses"));

    // A flood from one local address while /status.json keeps answering.
    let took = std::thread::scope(|s| {
        let flood = s.spawn(|| send("127.0.0.9", 50_000, 10_000));
        while !flood.is_finished() {
            let t = Instant::now();
            assert!(
                ns.status(front).is_object(),
                "status during the flood\n{}",
                log()
            );
            assert!(
                t.elapsed() < Duration::from_secs(2),
                "status took {:?}",
                t.elapsed()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        flood.join().expect("flood thread")
    });
    std::thread::sleep(Duration::from_millis(500));
    let heard = lsd_from("127.0.0.9:").len();
    let bound = 4 * (took.ceil() as usize + 2);
    eprintln!("LSD flood: 50000 messages in {took:.2} s; {heard} peers taken (bound {bound})");
    assert!(heard >= 1, "the flood's first messages should be read");
    assert!(heard <= bound, "{heard} peers from a flood of {took:.2} s");
    assert!(log().contains("LSD: more messages than the rate limit"));
}
