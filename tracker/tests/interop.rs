//! Real BitTorrent clients (aria2c, python3-libtorrent) use
//! debtorrent-tracker over HTTP and UDP on loopback, and find each other
//! through it: the downloader can only learn the seeder's address from the
//! tracker (private torrent: no DHT, PEX or LSD), so a completed download
//! proves the tracker handed it out.

mod common;

use std::path::Path;
use std::process::{Command, Stdio};

use common::*;

#[derive(Clone, Copy, Debug, PartialEq)]
enum Client {
    Aria2,
    Libtorrent,
}

const LT_SCRIPT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/lt_client.py");

fn spawn(client: Client, seed: bool, torrent: &Path, dir: &Path, port: u16) -> Guard {
    std::fs::create_dir_all(dir).unwrap();
    let child = match client {
        Client::Aria2 => {
            let dht_port = free_port();
            let mut c = Command::new("aria2c");
            c.arg(format!("--dir={}", dir.display()))
                .arg(format!("--listen-port={port}"))
                // aria2 sends UDP tracker requests from its DHT socket, so
                // DHT stays enabled; the torrent is private, so it is never
                // used for peers, and no bootstrap node is configured.
                .arg("--enable-dht=true")
                .arg("--enable-dht6=false")
                .arg(format!("--dht-listen-port={dht_port}"))
                .arg(format!("--dht-file-path={}", dir.join("dht.dat").display()))
                .arg("--bt-enable-lpd=false")
                .arg("--enable-peer-exchange=false")
                .arg("--file-allocation=none")
                .arg("--summary-interval=0")
                .arg("--console-log-level=warn")
                .arg("--bt-stop-timeout=60")
                .arg("--bt-tracker-connect-timeout=10")
                .arg("--bt-tracker-timeout=10");
            if seed {
                c.arg("--check-integrity=true")
                    .arg("--seed-ratio=0.0")
                    .arg("--seed-time=5");
            } else {
                c.arg("--seed-time=0");
            }
            c.arg(torrent)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::inherit());
            c.spawn().expect("spawn aria2c")
        }
        Client::Libtorrent => Command::new("/usr/bin/python3")
            .arg(LT_SCRIPT)
            .arg(if seed { "seed" } else { "leech" })
            .arg(torrent)
            .arg(dir)
            .arg(port.to_string())
            .arg("60")
            .stdin(Stdio::null())
            .spawn()
            .expect("spawn python3 libtorrent peer"),
    };
    Guard(child)
}

fn scenario(udp: bool, seeder: Client, leecher: Client) {
    require_tool("aria2c", &["--version"], "aria2");
    require_libtorrent();
    let tmp = tempfile::tempdir().unwrap();
    let tracker = TrackerProc::start(
        &tmp.path().join("state"),
        &["--interval", "30", "--min-interval", "5"],
    );
    let url = if udp {
        tracker.udp_url()
    } else {
        tracker.announce_url()
    };
    let data = content(300_000, 42 + udp as u64);
    let torrent = tmp.path().join("t.torrent");
    let seed_dir = tmp.path().join("seed");
    let leech_dir = tmp.path().join("leech");
    make_torrent(&seed_dir, "payload.bin", &data, &url, &torrent);
    let (seed_port, leech_port) = (free_port(), free_port());

    let _seed = spawn(seeder, true, &torrent, &seed_dir, seed_port);
    wait_until(30, "the seeder's announce", || {
        tracker.stats()["seeders"] == 1
    });
    let mut leech = spawn(leecher, false, &torrent, &leech_dir, leech_port);
    let st = leech.wait_secs(60, &format!("{leecher:?} download"));
    assert!(st.success(), "{leecher:?} download failed: {st}");
    assert_eq!(std::fs::read(leech_dir.join("payload.bin")).unwrap(), data);

    let stats = tracker.stats();
    let (kind, other) = if udp {
        ("udp_announces", "http_announces")
    } else {
        ("http_announces", "udp_announces")
    };
    assert!(stats[kind].as_u64().unwrap() >= 2, "{stats}");
    assert_eq!(stats[other], 0, "{stats}");
    if udp {
        assert!(stats["udp_connects"].as_u64().unwrap() >= 2, "{stats}");
    }
}

#[test]
fn http_libtorrent_seeds_aria2_downloads() {
    scenario(false, Client::Libtorrent, Client::Aria2);
}

#[test]
fn http_aria2_seeds_libtorrent_downloads() {
    scenario(false, Client::Aria2, Client::Libtorrent);
}

#[test]
fn udp_libtorrent_seeds_aria2_downloads() {
    scenario(true, Client::Libtorrent, Client::Aria2);
}

#[test]
fn udp_aria2_seeds_libtorrent_downloads() {
    scenario(true, Client::Aria2, Client::Libtorrent);
}
