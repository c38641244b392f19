//! The library's tracker client against a real opentracker and against
//! debtorrent-tracker, over HTTP and UDP: two peers announce and each gets
//! the other; scrape counts them; refusals come back as typed errors.

mod common;

use std::net::SocketAddr;
use std::process::{Command, Stdio};
use std::time::Duration;

use common::*;
use debtorrent_tracker::client::{ClientConfig, ClientError, TrackerClient};
use debtorrent_tracker::http_proto::ResponseError;
use debtorrent_tracker::{AnnounceParams, Event, InfoHash, PeerId};

fn params(hash: InfoHash, port: u16, left: u64, event: Event) -> AnnounceParams {
    let mut id = *b"-DT0001-000000000000";
    id[14..].copy_from_slice(format!("{port:06}").as_bytes());
    AnnounceParams {
        info_hash: hash,
        peer_id: PeerId(id),
        port,
        uploaded: 0,
        downloaded: 0,
        left,
        event,
        numwant: Some(50),
        key: port as u32,
    }
}

fn client() -> TrackerClient {
    TrackerClient::new(ClientConfig {
        timeout: Duration::from_secs(3),
        udp_tries: 2,
        local_ip: None,
    })
}

/// Two peers announce to `url`; each must get the other. Then scrape.
async fn exchange(c: &TrackerClient, url: &str, hash: InfoHash, scrape_expected: bool) {
    let a = c
        .announce(url, &params(hash, 40001, 0, Event::Started))
        .await
        .unwrap();
    assert!(a.interval > 0, "{url}: {a:?}");
    let b = c
        .announce(url, &params(hash, 40002, 100, Event::Started))
        .await
        .unwrap();
    let pa: SocketAddr = "127.0.0.1:40001".parse().unwrap();
    let pb: SocketAddr = "127.0.0.1:40002".parse().unwrap();
    assert!(b.peers.contains(&pa), "{url}: B did not get A: {b:?}");
    assert_eq!(
        (b.complete, b.incomplete),
        (Some(1), Some(1)),
        "{url}: {b:?}"
    );
    let a2 = c
        .announce(url, &params(hash, 40001, 0, Event::None))
        .await
        .unwrap();
    assert!(a2.peers.contains(&pb), "{url}: A did not get B: {a2:?}");
    if scrape_expected {
        let s = c.scrape(url, &[hash]).await.unwrap();
        assert_eq!(s.len(), 1, "{url}: {s:?}");
        assert_eq!(
            (s[0].0, s[0].1.complete, s[0].1.incomplete),
            (hash, 1, 1),
            "{url}"
        );
    }
    // B leaves; A no longer gets it.
    c.announce(url, &params(hash, 40002, 100, Event::Stopped))
        .await
        .unwrap();
    let a3 = c
        .announce(url, &params(hash, 40001, 0, Event::None))
        .await
        .unwrap();
    assert!(
        !a3.peers.contains(&pb),
        "{url}: stopped peer still listed: {a3:?}"
    );
}

fn hash(n: u8) -> InfoHash {
    let mut h = [n; 20];
    h[0] = 0xd7;
    InfoHash(h)
}

#[tokio::test]
async fn client_against_debtorrent_tracker() {
    let tmp = tempfile::tempdir().unwrap();
    let allow = tmp.path().join("allow");
    std::fs::write(&allow, format!("{}\n{}\n", hash(1), hash(2))).unwrap();
    let t = TrackerProc::start(
        &tmp.path().join("state"),
        &["--allowlist", allow.to_str().unwrap()],
    );
    let c = client();
    exchange(&c, &t.announce_url(), hash(1), true).await;
    exchange(&c, &t.udp_url(), hash(2), true).await;
    // A torrent outside the allowlist: typed failures, over both protocols.
    match c
        .announce(&t.announce_url(), &params(hash(3), 1, 0, Event::Started))
        .await
    {
        Err(ClientError::Response(ResponseError::Failure(m))) => {
            assert!(m.contains("not allowed"), "{m}")
        }
        r => panic!("expected a failure reason, got {r:?}"),
    }
    match c
        .announce(&t.udp_url(), &params(hash(3), 1, 0, Event::Started))
        .await
    {
        Err(ClientError::Tracker(m)) => assert!(m.contains("not allowed"), "{m}"),
        r => panic!("expected a UDP error, got {r:?}"),
    }
    let s = t.stats();
    assert_eq!(s["peers"], 2, "{s}");
    assert_eq!(s["refused"], 2, "{s}");
}

/// A running opentracker; killed on drop.
struct OpenTracker {
    _guard: Guard,
    port: u16,
}

fn start_opentracker(dir: &std::path::Path, hashes: &[InfoHash]) -> OpenTracker {
    require_tool("opentracker", &["-h"], "opentracker");
    let wl = dir.join("whitelist");
    let text: String = hashes.iter().map(|h| format!("{h}\n")).collect();
    std::fs::write(&wl, text).unwrap();
    let port = free_port();
    let child = Command::new("opentracker")
        .args([
            "-i",
            "127.0.0.1",
            "-p",
            &port.to_string(),
            "-P",
            &port.to_string(),
            "-w",
        ])
        .arg(&wl)
        .current_dir(dir)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn opentracker");
    let guard = Guard(child);
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    wait_until(10, "opentracker to listen", || {
        std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
    });
    // opentracker loads its whitelist in a background thread: wait until
    // the first listed torrent is accepted. The probe must be a real
    // announce (opentracker answers `stopped` even for refused torrents);
    // its peer is removed again at once.
    let mut q = String::from("/announce?info_hash=");
    debtorrent_tracker::http_proto::percent_encode(&hashes[0].0, &mut q);
    q.push_str("&peer_id=-PROBE-0000000000000&port=9&left=0&event=");
    wait_until(10, "opentracker to load its whitelist", || {
        let (_, body) = http_get(addr, &format!("{q}started"));
        body.starts_with(b"d8:complete")
    });
    http_get(addr, &format!("{q}stopped"));

    OpenTracker {
        _guard: guard,
        port,
    }
}

#[tokio::test]
async fn client_against_opentracker() {
    let tmp = tempfile::tempdir().unwrap();
    let ot = start_opentracker(tmp.path(), &[hash(1), hash(2)]);
    let c = client();
    let http = format!("http://127.0.0.1:{}/announce", ot.port);
    let udp = format!("udp://127.0.0.1:{}", ot.port);
    exchange(&c, &http, hash(1), true).await;
    exchange(&c, &udp, hash(2), true).await;
    match c
        .announce(&http, &params(hash(3), 1, 0, Event::Started))
        .await
    {
        Err(ClientError::Response(ResponseError::Failure(m))) => {
            assert!(m.contains("not authorized"), "{m}")
        }
        r => panic!("expected a failure reason, got {r:?}"),
    }
}
