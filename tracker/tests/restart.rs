//! State survives a restart: SIGTERM writes a snapshot that the next start
//! loads, and the periodic snapshot bounds what a crash (SIGKILL) loses.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use common::*;
use debtorrent_tracker::client::{ClientConfig, TrackerClient};
use debtorrent_tracker::{AnnounceParams, Event, InfoHash, PeerId};

fn params(hash: u8, port: u16, left: u64, event: Event) -> AnnounceParams {
    AnnounceParams {
        info_hash: InfoHash([hash; 20]),
        peer_id: PeerId([b'r'; 20]),
        port,
        uploaded: 0,
        downloaded: 0,
        left,
        event,
        numwant: None,
        key: 0,
    }
}

fn client() -> TrackerClient {
    TrackerClient::new(ClientConfig {
        timeout: Duration::from_secs(3),
        udp_tries: 2,
        local_ip: None,
    })
}

#[tokio::test]
async fn sigterm_snapshot_is_restored() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let c = client();
    let t = TrackerProc::start(&dir, &[]);
    // 3 torrents, 5 peers, over both protocols; one completed download.
    for (hash, port, left, udp) in [
        (1, 6001, 0, false),
        (1, 6002, 10, true),
        (2, 6003, 10, false),
        (3, 6004, 0, true),
        (3, 6005, 0, false),
    ] {
        let url = if udp { t.udp_url() } else { t.announce_url() };
        c.announce(&url, &params(hash, port, left, Event::Started))
            .await
            .unwrap();
    }
    c.announce(&t.announce_url(), &params(2, 6003, 0, Event::Completed))
        .await
        .unwrap();
    let before = t.stats();
    assert_eq!(
        (
            before["torrents"].as_u64(),
            before["peers"].as_u64(),
            before["seeders"].as_u64()
        ),
        (Some(3), Some(5), Some(4))
    );
    t.terminate();
    assert!(dir.join("state.sqlite").exists());

    let t = TrackerProc::start(&dir, &[]);
    let after = t.stats();
    for k in ["torrents", "peers", "seeders", "leechers"] {
        assert_eq!(after[k], before[k], "{k}: {after}");
    }
    // The restored peers are handed out, and the scrape counts survived.
    let r = c
        .announce(&t.announce_url(), &params(1, 6009, 10, Event::Started))
        .await
        .unwrap();
    let mut peers = r.peers.clone();
    peers.sort();
    let want: Vec<SocketAddr> = vec![
        "127.0.0.1:6001".parse().unwrap(),
        "127.0.0.1:6002".parse().unwrap(),
    ];
    assert_eq!(peers, want);
    let s = c
        .scrape(&t.announce_url(), &[InfoHash([2; 20])])
        .await
        .unwrap();
    assert_eq!((s[0].1.complete, s[0].1.downloaded), (1, 1));
    t.terminate();
}

#[tokio::test]
async fn periodic_snapshot_bounds_crash_loss() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("state");
    let c = client();
    let mut t = TrackerProc::start(&dir, &["--snapshot-interval", "1"]);
    for port in 7001..7004 {
        c.announce(&t.announce_url(), &params(1, port, 0, Event::Started))
            .await
            .unwrap();
    }
    // Housekeeping runs every 5 s; wait for a snapshot holding 3 peers,
    // then crash.
    let db = dir.join("state.sqlite");
    wait_until(15, "a periodic snapshot", || snapshot_peers(&db) == Some(3));
    t.child.kill().unwrap();
    t.child.wait().unwrap();
    let t = TrackerProc::start(&dir, &[]);
    assert_eq!(t.stats()["peers"], 3);
}

/// Peers in a snapshot file (read with the library's own loader; `None`
/// while the file is not readable yet).
fn snapshot_peers(db: &std::path::Path) -> Option<usize> {
    let swarms = debtorrent_tracker::persist::load(db, 0).ok()?;
    Some(swarms.iter().map(|(_, s)| s.len()).sum())
}
