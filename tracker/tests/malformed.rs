//! Malformed requests against the real binary: each gets a clear failure
//! (a bencoded `failure reason`, an HTTP error status, a UDP error packet,
//! or for unauthenticated UDP garbage, silence) and none changes the state
//! shown by /stats.json.

mod common;

use std::io::{Read, Write};
use std::net::{TcpStream, UdpSocket};
use std::time::Duration;

use common::*;
use debtorrent_tracker::http_proto::percent_encode;
use debtorrent_tracker::udp_proto::{self, UdpAnnounce, UdpResponse};
use debtorrent_tracker::{Event, InfoHash, PeerId};

fn enc(b: &[u8]) -> String {
    let mut s = String::new();
    percent_encode(b, &mut s);
    s
}

const HASH: [u8; 20] = [0x11; 20];

/// The parts of /stats.json that a malformed request must not change.
fn state(
    t: &TrackerProc,
) -> (
    serde_json::Value,
    serde_json::Value,
    serde_json::Value,
    u64,
    u64,
) {
    let s = t.stats();
    (
        s["torrents"].clone(),
        s["peers"].clone(),
        s["seeders"].clone(),
        s["http_announces"].as_u64().unwrap(),
        s["udp_announces"].as_u64().unwrap(),
    )
}

#[test]
fn malformed_http_announces() {
    let tmp = tempfile::tempdir().unwrap();
    let allow = tmp.path().join("allow");
    std::fs::write(&allow, format!("{}\n", InfoHash(HASH))).unwrap();
    let t = TrackerProc::start(
        &tmp.path().join("s"),
        &["--allowlist", allow.to_str().unwrap(), "--numwant-max", "5"],
    );
    let ih = enc(&HASH);
    let good = format!("info_hash={ih}&peer_id=-AB0001-000000000001&port=6881&left=0");
    // Some state: 8 peers on the allowed torrent.
    for p in 1..=8 {
        let (st, body) = t.get(&format!(
            "/announce?{}",
            good.replace("6881", &format!("{}", 7000 + p))
        ));
        assert_eq!(st, 200);
        assert!(
            body.starts_with(b"d8:complete"),
            "{}",
            String::from_utf8_lossy(&body)
        );
    }
    let before = state(&t);
    assert_eq!(before.1, 8);

    let long_value = "x".repeat(300);
    let cases: Vec<(String, &str)> = vec![
        ("/announce".into(), "missing parameter info_hash"),
        (
            "/announce?peer_id=-AB0001-000000000001&port=1&left=0".to_string(),
            "missing parameter info_hash",
        ),
        (
            format!("/announce?info_hash={ih}&port=1&left=0"),
            "missing parameter peer_id",
        ),
        (
            format!("/announce?info_hash={ih}&peer_id=-AB0001-000000000001&left=0"),
            "missing parameter port",
        ),
        (
            good.replace(&ih, &enc(&HASH[..19])),
            "info_hash must be 20 bytes",
        ),
        (
            good.replace(&ih, &enc(&[0x11; 21])),
            "info_hash must be 20 bytes",
        ),
        (good.replace(&ih, "%zz"), "info_hash must be 20 bytes"),
        (
            good.replace("-AB0001-000000000001", "short"),
            "peer_id must be 20 bytes",
        ),
        (
            format!("{good}&numwant=99999999999999999999"),
            "invalid numwant",
        ),
        (format!("{good}&numwant=-5"), "invalid numwant"),
        (good.replace("port=6881", "port=0"), "invalid port"),
        (good.replace("port=6881", "port=70000"), "invalid port"),
        (format!("{good}&event=bogus"), "invalid event"),
        (
            format!("{good}&info_hash={ih}"),
            "parameter info_hash given more than once",
        ),
        (
            format!("{good}&key={long_value}"),
            "parameter key is too long",
        ),
        (
            format!("{good}&x={}", "y".repeat(4096)),
            "query string too long",
        ),
        (
            good.replace(&ih, &enc(&[0x22; 20])),
            "info_hash not allowed on this tracker",
        ),
        ("/scrape".into(), "missing parameter info_hash"),
    ];
    for (i, (path, reason)) in cases.iter().enumerate() {
        let path = if path.starts_with('/') {
            path.clone()
        } else {
            format!("/announce?{path}")
        };
        let (status, body) = t.get(&path);
        assert_eq!(status, 200, "case {i}");
        let want = format!("d14:failure reason{}:{reason}e", reason.len());
        assert_eq!(
            String::from_utf8_lossy(&body),
            want,
            "case {i}: {path:.120}"
        );
        assert_eq!(state(&t), before, "case {i} changed state");
    }
    let failures = t.stats()["http_failures"].as_u64().unwrap();
    assert_eq!(failures, cases.len() as u64);

    // Oversized request line and headers: refused by the HTTP layer.
    for (i, req) in [
        format!(
            "GET /announce?{good}&pad={} HTTP/1.1\r\nHost: x\r\n\r\n",
            "p".repeat(20_000)
        ),
        format!(
            "GET /announce?{good} HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "h".repeat(20_000)
        ),
    ]
    .iter()
    .enumerate()
    {
        let mut s = TcpStream::connect(t.http).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let _ = s.write_all(req.as_bytes());
        let mut resp = Vec::new();
        let _ = s.read_to_end(&mut resp);
        let head = String::from_utf8_lossy(&resp);
        assert!(
            head.starts_with("HTTP/1.1 431")
                || head.starts_with("HTTP/1.1 414")
                || head.starts_with("HTTP/1.1 400"),
            "oversized case {i}: {head:.200}"
        );
        assert_eq!(state(&t), before, "oversized case {i} changed state");
    }

    // A huge (but well-formed) numwant is capped, not an error.
    let (_, body) = t.get(&format!(
        "/announce?{}&numwant=4000000000",
        good.replace("6881", "7001")
    ));
    let r = debtorrent_tracker::http_proto::parse_announce_response(&body).unwrap();
    assert_eq!(r.peers.len(), 5, "numwant capped at --numwant-max");
    assert_eq!(state(&t).1, before.1);
}

fn recv(sock: &UdpSocket) -> Option<Vec<u8>> {
    let mut buf = [0u8; 2048];
    match sock.recv(&mut buf) {
        Ok(n) => Some(buf[..n].to_vec()),
        Err(_) => None,
    }
}

fn connect(sock: &UdpSocket) -> u64 {
    let mut req = Vec::new();
    udp_proto::encode_connect_request(77, &mut req);
    sock.send(&req).unwrap();
    match udp_proto::parse_response(&recv(sock).expect("connect answer")).unwrap() {
        UdpResponse::Connect {
            transaction_id: 77,
            connection_id,
        } => connection_id,
        r => panic!("{r:?}"),
    }
}

fn announce(conn: u64, port: u16) -> Vec<u8> {
    let mut b = Vec::new();
    udp_proto::encode_announce_request(
        &UdpAnnounce {
            connection_id: conn,
            transaction_id: 5,
            info_hash: InfoHash(HASH),
            peer_id: PeerId(*b"-AB0001-000000000009"),
            downloaded: 0,
            left: 0,
            uploaded: 0,
            event: Event::Started,
            ip: 0,
            key: 0,
            num_want: -1,
            port,
        },
        &mut b,
    );
    b
}

#[test]
fn malformed_udp_packets() {
    let tmp = tempfile::tempdir().unwrap();
    let t = TrackerProc::start(&tmp.path().join("s"), &[]);
    let sock = UdpSocket::bind("127.0.0.1:0").unwrap();
    sock.connect(t.udp).unwrap();
    sock.set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();
    let other = UdpSocket::bind("127.0.0.1:0").unwrap();
    other.connect(t.udp).unwrap();
    other
        .set_read_timeout(Some(Duration::from_millis(400)))
        .unwrap();

    let conn = connect(&sock);
    sock.send(&announce(conn, 7000)).unwrap();
    assert!(matches!(
        udp_proto::parse_response(&recv(&sock).unwrap()).unwrap(),
        UdpResponse::Announce { .. }
    ));
    let before = state(&t);
    assert_eq!(before.1, 1);

    let mut bad_proto = Vec::new();
    udp_proto::encode_connect_request(1, &mut bad_proto);
    bad_proto[7] ^= 0x55;
    let mut bad_event = announce(conn, 7001);
    bad_event[83] = 9;
    let mut scrape_too_many = Vec::new();
    udp_proto::encode_scrape_request(conn, 3, &[InfoHash(HASH); 75], &mut scrape_too_many);
    let garbage = content(1400, 9);
    // (packet, sent from the socket the id was issued to?, expected answer)
    let cases: Vec<(Vec<u8>, bool, Option<&str>)> = vec![
        (vec![], true, None),
        (vec![0x41], true, None),
        (garbage[..15].to_vec(), true, None),
        (garbage[..16].to_vec(), true, None),
        (garbage[..98].to_vec(), true, None),
        (garbage.clone(), true, None),
        (bad_proto, true, None),
        // spoofed / guessed connection ids
        (announce(0x0123_4567_89ab_cdef, 7002), true, None),
        (announce(conn ^ 0x100, 7003), true, None),
        // a valid id used from another address
        (announce(conn, 7004), false, None),
        (
            announce(conn, 7004)[..97].to_vec(),
            true,
            Some("packet too"),
        ),
        (bad_event, true, Some("bad event 9")),
        (scrape_too_many, true, Some("too many info")),
        (announce(conn, 0), true, Some("invalid port")),
    ];
    for (i, (p, from_owner, want)) in cases.iter().enumerate() {
        let s = if *from_owner { &sock } else { &other };
        if p.is_empty() {
            // A zero-length datagram.
            s.send(&[]).unwrap();
        } else {
            s.send(p).unwrap();
        }
        let got = recv(s);
        match (want, got) {
            (None, None) => {}
            (Some(msg), Some(resp)) => {
                assert!(
                    resp.len() <= p.len(),
                    "case {i}: answer larger than request"
                );
                match udp_proto::parse_response(&resp).unwrap() {
                    UdpResponse::Error { message, .. } => {
                        assert!(message.starts_with(msg), "case {i}: {message}")
                    }
                    r => panic!("case {i}: {r:?}"),
                }
            }
            (w, g) => panic!("case {i}: expected {w:?}, got {g:?}"),
        }
        assert_eq!(state(&t), before, "case {i} changed state");
    }
    let s = t.stats();
    assert_eq!(s["udp_dropped"], 10, "{s}");
    assert_eq!(s["udp_errors"], 4, "{s}");
}
