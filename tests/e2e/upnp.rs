//! Port mapping behind NAT with a real home router (docs/swarm-design.md
//! §10.1): three network namespaces the test creates, joined by veth pairs.
//!
//! ```text
//!  LAN ns                 router ns                         WAN ns
//!  lan0 10.13.1.2 ---- rlan 10.13.1.1 | rwan 11.13.2.1 ---- wan0 11.13.2.2
//!  daemon L               miniupnpd, nftables NAT           mirror, opentracker,
//!                         (masquerade out of rwan)          daemon W
//! ```
//!
//! 11.13.2.0/24 stands for the internet: miniupnpd 2.3 refuses to map
//! ports when its external address is a private one, and no packet leaves
//! the namespaces. Daemon L maps its peer port on miniupnpd; daemon W,
//! told about L by the tracker (which sees L as 11.13.2.1), downloads a
//! package from L through the mapping, with 0 mirror bytes; after L stops
//! the mapping is gone. W has no gateway: one log line says so.
//!
//! The second test puts a gateway that answers garbage, or never answers,
//! beside a daemon: it must start, serve and stop as usual.

use std::path::Path;
use std::time::{Duration, Instant};

use crate::support::daemon::binary;
use crate::support::netns::{wait_for, Netns, Proc};
use crate::support::repo::repo;

const MIRROR_PORT: &str = "28080";
const TRACKER_PORT: &str = "26969";
const L_PEER: &str = "10.13.1.2:16881";
const L_FRONT: &str = "10.13.1.2:9988";
const W_PEER: &str = "11.13.2.2:16882";
const W_FRONT: &str = "11.13.2.2:9988";
/// How the WAN side sees L once mapped.
const L_OUTSIDE: &str = "11.13.2.1:16881";
const PACKAGES: &str = "dists/stable/main/binary-amd64/Packages";

fn have(prog: &str) -> bool {
    std::process::Command::new("sh")
        .args(["-c", &format!("command -v {prog}")])
        .stdout(std::process::Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn read(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_default()
}

fn torrent(st: &serde_json::Value) -> serde_json::Value {
    st["torrents"]
        .as_array()
        .and_then(|v| v.iter().find(|t| t["index_path"] == PACKAGES).cloned())
        .unwrap_or_default()
}

/// The router's nftables: forward and NAT, with the empty chains miniupnpd
/// fills (its defaults: table `filter`, chains `miniupnpd`,
/// `prerouting_miniupnpd`, `postrouting_miniupnpd`).
const ROUTER_NFT: &str = r#"
table inet filter {
    chain forward {
        type filter hook forward priority 0; policy drop;
        ct state established,related accept
        iifname "rlan" oifname "rwan" accept
        jump miniupnpd
    }
    chain miniupnpd {
    }
    chain prerouting {
        type nat hook prerouting priority -100; policy accept;
        jump prerouting_miniupnpd
    }
    chain postrouting {
        type nat hook postrouting priority 100; policy accept;
        jump postrouting_miniupnpd
        oifname "rwan" masquerade
    }
    chain prerouting_miniupnpd {
    }
    chain postrouting_miniupnpd {
    }
}
"#;

fn miniupnpd_conf(dir: &Path) -> String {
    format!(
        "ext_ifname=rwan\n\
         listening_ip=rlan\n\
         http_port=0\n\
         enable_natpmp=no\n\
         enable_upnp=yes\n\
         secure_mode=yes\n\
         system_uptime=yes\n\
         uuid=3b2c6a52-0d13-4e2a-9c5e-13d1e2a5f001\n\
         lease_file={}\n\
         allow 1024-65535 10.13.1.0/24 1024-65535\n\
         deny 0-65535 0.0.0.0/0 0-65535\n",
        dir.join("upnp.leases").display()
    )
}

/// The DNAT rule miniupnpd adds for `port`, if any.
fn router_maps(router: &Netns, port: &str) -> bool {
    let rules = router.output(&[
        "nft",
        "list",
        "chain",
        "inet",
        "filter",
        "prerouting_miniupnpd",
    ]);
    rules.contains(&format!("dport {port}"))
}

#[test]
fn upnp_maps_the_peer_port_behind_nat_and_a_wan_peer_downloads_through_it() {
    if !have("miniupnpd") || !have("nft") || !have("opentracker") {
        panic!("the UPnP test needs miniupnpd, nftables and opentracker (apt-get install miniupnpd nftables opentracker)");
    }
    let (Some(lan), Some(router), Some(wan)) = (Netns::create(), Netns::create(), Netns::create())
    else {
        eprintln!("upnp test: cannot create network namespaces here (needs root); not run");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    lan.veth("lan0", "10.13.1.2/24", &router, "rlan", "10.13.1.1/24");
    router.veth("rwan", "11.13.2.1/24", &wan, "wan0", "11.13.2.2/24");
    lan.run(&["ip", "route", "add", "default", "via", "10.13.1.1"]);
    router.run(&["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"]);
    std::fs::write(dir.join("router.nft"), ROUTER_NFT).expect("nft file");
    router.run(&["nft", "-f", dir.join("router.nft").to_str().expect("utf-8")]);
    std::fs::write(dir.join("miniupnpd.conf"), miniupnpd_conf(dir)).expect("conf");
    let _upnpd = router.spawn(
        &[
            "miniupnpd",
            "-d",
            "-f",
            dir.join("miniupnpd.conf").to_str().expect("utf-8"),
            "-P",
            dir.join("miniupnpd.pid").to_str().expect("utf-8"),
        ],
        &dir.join("miniupnpd.log"),
    );

    let repo = repo();
    let _mirror = wan.spawn(
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "11.13.2.2",
            "--directory",
            repo.root.to_str().expect("utf-8 path"),
            MIRROR_PORT,
        ],
        &dir.join("mirror.log"),
    );
    let swarm = debtorrent_gen::swarm_id(
        "debtorrent-e2e",
        crate::support::repo::SUITE,
        crate::support::repo::COMPONENT,
    );
    std::fs::write(
        dir.join("whitelist"),
        format!("{}\n", crate::support::hex(&swarm.0)),
    )
    .expect("whitelist");
    let _tracker = wan.spawn(
        &[
            "opentracker",
            "-i",
            "11.13.2.2",
            "-p",
            TRACKER_PORT,
            "-P",
            TRACKER_PORT,
            "-w",
            dir.join("whitelist").to_str().expect("utf-8"),
        ],
        &dir.join("tracker.log"),
    );
    let tracker = format!("http://11.13.2.2:{TRACKER_PORT}/announce");
    let daemon = |ns: &Netns, name: &str, front: &str, peer: &str, extra: &[&str]| -> Proc {
        let data = dir.join(name);
        let mut args = vec![
            binary(),
            "serve",
            "--listen",
            front,
            "--peer-addr",
            peer,
            "--data-dir",
            data.to_str().expect("utf-8 path"),
            "--no-dht",
            "--no-lsd",
            "--tracker",
            &tracker,
            "--allow-port",
            MIRROR_PORT,
            "--log-level",
            "debug",
        ];
        args.extend_from_slice(extra);
        ns.spawn(&args, &dir.join(format!("{name}.log")))
    };
    let logs = || {
        ["miniupnpd", "l", "w", "tracker"]
            .iter()
            .map(|n| format!("---- {n}.log:\n{}\n", read(&dir.join(format!("{n}.log")))))
            .collect::<String>()
    };
    // Let miniupnpd come up before L searches (a search finding nothing
    // is retried only every 5 min).
    wait_for(
        "miniupnpd listening",
        Duration::from_secs(10),
        || read(&dir.join("miniupnpd.log")).contains("HTTP listening on port"),
        logs,
    );
    wait_for(
        "mirror up",
        Duration::from_secs(10),
        || {
            wan.get(&format!(
                "http://11.13.2.2:{MIRROR_PORT}/dists/stable/InRelease"
            ))
            .0 == 200
        },
        logs,
    );
    let started = Instant::now();
    // A 10 s lease: renewed every 5 s, so the test sees renewals.
    let mut l = daemon(&lan, "l", L_FRONT, L_PEER, &["--upnp-lease", "10s"]);
    let _w = daemon(&wan, "w", W_FRONT, W_PEER, &["--peer-wait", "5s"]);

    // ---- L maps its port.
    let mapped = wait_for(
        "L maps its peer port",
        Duration::from_secs(30),
        || lan.status(L_FRONT)["swarm"]["discovery"]["upnp"]["state"] == "mapped",
        || format!("{:#}\n{}", lan.status(L_FRONT), logs()),
    );
    let up = lan.status(L_FRONT)["swarm"]["discovery"]["upnp"].clone();
    eprintln!(
        "L mapped after {:.1?} (daemon start to status; its own figure {} ms): {up}",
        started.elapsed(),
        up["mapped_in_ms"]
    );
    let _ = mapped;
    assert_eq!(up["external_ip"], "11.13.2.1", "{up:#}");
    assert_eq!(up["external_port"], 16881, "{up:#}");
    assert_eq!(up["internal"], L_PEER, "{up:#}");
    assert!(
        router_maps(&router, "16881"),
        "no DNAT rule on the router:\n{}",
        router.output(&["nft", "list", "ruleset"])
    );

    // ---- W has no gateway: one log line, nothing else.
    wait_for(
        "W gives up on UPnP",
        Duration::from_secs(20),
        || wan.status(W_FRONT)["swarm"]["discovery"]["upnp"]["state"] == "no gateway",
        || format!("{:#}\n{}", wan.status(W_FRONT), logs()),
    );
    let w_lines = read(&dir.join("w.log"))
        .lines()
        .filter(|l| l.contains("no gateway answered"))
        .count();
    assert_eq!(w_lines, 1, "W's log:\n{}", read(&dir.join("w.log")));

    // ---- L fetches a package from the mirror; W gets it from L.
    let base = format!("11.13.2.2:{MIRROR_PORT}");
    let pkg = repo.package("small");
    for (ns, front) in [(&lan, L_FRONT), (&wan, W_FRONT)] {
        for path in ["dists/stable/InRelease", PACKAGES] {
            let (code, _) = ns.get(&format!("http://{front}/{base}/{path}"));
            assert_eq!(code, 200, "{path} through {front}\n{}", logs());
        }
        if front == L_FRONT {
            let (code, body) = ns.get(&format!("http://{front}/{base}/{}", pkg.pool_path));
            assert_eq!(code, 200, "{} through L\n{}", pkg.pool_path, logs());
            assert_eq!(body.len() as u64, pkg.size);
        }
    }
    wait_for(
        "W learns L's outside address from the tracker and connects",
        Duration::from_secs(30),
        || {
            let t = torrent(&wan.status(W_FRONT));
            t["peers"]
                .as_array()
                .is_some_and(|v| v.iter().any(|p| p["addr"] == L_OUTSIDE))
        },
        || format!("{:#}\n{}", torrent(&wan.status(W_FRONT)), logs()),
    );
    let (code, body) = wan.get(&format!("http://{W_FRONT}/{base}/{}", pkg.pool_path));
    assert_eq!(code, 200, "{} through W\n{}", pkg.pool_path, logs());
    assert_eq!(body, std::fs::read(&pkg.local).expect("the .deb"));
    let t = torrent(&wan.status(W_FRONT));
    assert!(
        t["bytes_from_peers"].as_u64().unwrap_or(0) >= pkg.size,
        "W did not take the package from L: {t:#}"
    );
    assert_eq!(t["bytes_from_mirror"].as_u64(), Some(0), "{t:#}");

    // ---- Renewed while L runs (lease 10 s, renewal at 5 s).
    wait_for(
        "L renews its mapping",
        Duration::from_secs(15),
        || {
            lan.status(L_FRONT)["swarm"]["discovery"]["upnp"]["renewals"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        },
        || format!("{:#}\n{}", lan.status(L_FRONT), logs()),
    );
    assert!(router_maps(&router, "16881"), "mapping lost after renewal");

    // ---- L stops: the mapping goes with it.
    assert!(
        l.terminate(Duration::from_secs(10)),
        "L did not stop\n{}",
        logs()
    );
    assert!(
        !router_maps(&router, "16881"),
        "the mapping outlived L:\n{}\n{}",
        router.output(&["nft", "list", "ruleset"]),
        logs()
    );
    assert!(
        read(&dir.join("l.log")).contains("UPnP: mapping removed"),
        "{}",
        logs()
    );
}

/// A fake gateway beside the daemon, in a namespace of its own: SSDP
/// answers that are garbage, then ones that point at an HTTP server that
/// accepts and never answers. The daemon must start at once, answer
/// `/status.json` promptly throughout, report the failure, and stop in
/// time.
#[test]
fn upnp_gateway_that_answers_garbage_or_never_does_not_stall_the_daemon() {
    let Some(ns) = Netns::create() else {
        eprintln!("upnp test: cannot create a network namespace here (needs root); not run");
        return;
    };
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = tmp.path();
    // A non-loopback address (the mapper is off on loopback): one end of
    // a veth pair whose other end is in the same namespace.
    ns.run(&[
        "ip", "link", "add", "d0", "type", "veth", "peer", "name", "d1",
    ]);
    ns.run(&["ip", "addr", "add", "10.13.9.2/24", "dev", "d0"]);
    ns.run(&["ip", "link", "set", "d0", "up"]);
    ns.run(&["ip", "link", "set", "d1", "up"]);
    ns.run(&["ip", "link", "set", "lo", "multicast", "on"]);
    ns.run(&["ip", "route", "add", "239.0.0.0/8", "dev", "lo"]);
    let script = format!("{}/tests/e2e/bad_gateway.py", env!("CARGO_MANIFEST_DIR"));
    for (mode, name) in [("garbage", "g"), ("silent", "s")] {
        let _gw = ns.spawn(
            &["python3", &script, mode],
            &dir.join(format!("gw-{name}.log")),
        );
        let gw_log = dir.join(format!("gw-{name}.log"));
        wait_for(
            "fake gateway listening",
            Duration::from_secs(10),
            || read(&gw_log).contains("listening"),
            || read(&gw_log),
        );
        let data = dir.join(name);
        let front = "10.13.9.2:9988";
        let t0 = Instant::now();
        let mut d = ns.spawn(
            &[
                binary(),
                "serve",
                "--listen",
                front,
                "--peer-addr",
                "10.13.9.2:16881",
                "--data-dir",
                data.to_str().expect("utf-8"),
                "--no-dht",
                "--no-lsd",
                "--log-level",
                "debug",
            ],
            &dir.join(format!("{name}.log")),
        );
        let log = || {
            format!(
                "{}\n---- gateway:\n{}",
                read(&dir.join(format!("{name}.log"))),
                read(&dir.join(format!("gw-{name}.log")))
            )
        };
        wait_for(
            "daemon up",
            Duration::from_secs(10),
            || ns.status(front).is_object(),
            log,
        );
        eprintln!("{mode}: daemon up after {:.1?}", t0.elapsed());
        // Status answers within 1 s every time while the mapper struggles.
        let until = Instant::now() + Duration::from_secs(14);
        let mut last = serde_json::Value::Null;
        while Instant::now() < until {
            let t = Instant::now();
            last = ns.status(front);
            assert!(
                t.elapsed() < Duration::from_secs(1) && last.is_object(),
                "{mode}: /status.json took {:?}\n{}",
                t.elapsed(),
                log()
            );
            if last["swarm"]["discovery"]["upnp"]["state"] != "searching" {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        let up = &last["swarm"]["discovery"]["upnp"];
        eprintln!("{mode}: upnp status {up}");
        assert!(
            up["state"] == "no gateway" || up["state"] == "failed",
            "{mode}: {up:#}\n{}",
            log()
        );
        assert!(up["last_error"].is_string(), "{mode}: {up:#}");
        assert!(
            read(&dir.join(format!("gw-{name}.log"))).contains("M-SEARCH"),
            "{mode}: the fake gateway saw no search\n{}",
            log()
        );
        assert!(
            d.terminate(Duration::from_secs(5)),
            "{mode}: daemon did not stop\n{}",
            log()
        );
    }
}
