//! Raw BEP 5 queries to a daemon's DHT node (docs/swarm-design.md §2.5):
//! every transaction-id length, as libtorrent (2 bytes), mainline (4) and
//! others send them, plus malformed packets. The node must neither stall nor
//! crash, and the public-DHT node (`librqbit-dht`) must answer every well
//! formed query, echoing its transaction id.
//!
//! Addresses: 127.0.0.41 (librqbit-dht) and .42 (mainline); the probe
//! socket on 127.0.0.1. The librqbit node bootstraps from 127.0.0.43:9,
//! where nothing listens: the crate keeps retrying in the background (an
//! empty bootstrap list would end its task, §2 R1) and never leaves
//! loopback.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use crate::support::daemon::Daemon;

/// Tx id lengths sent: libtorrent uses 2, mainline 4; BEP 5 allows any.
const TID_LENGTHS: [usize; 7] = [0, 1, 2, 3, 4, 8, 16];
const QUERIES: [&str; 3] = ["ping", "find_node", "get_peers"];

fn bstr(out: &mut Vec<u8>, b: &[u8]) {
    out.extend_from_slice(format!("{}:", b.len()).as_bytes());
    out.extend_from_slice(b);
}

/// A KRPC query, bencoded by hand (keys in sorted order).
fn query(q: &str, tid: &[u8]) -> Vec<u8> {
    let mut out = b"d1:ad2:id".to_vec();
    bstr(&mut out, &[0x11; 20]);
    match q {
        "find_node" => {
            out.extend_from_slice(b"6:target");
            bstr(&mut out, &[0x22; 20]);
        }
        "get_peers" => {
            out.extend_from_slice(b"9:info_hash");
            bstr(&mut out, &[0x33; 20]);
        }
        _ => {}
    }
    out.extend_from_slice(b"e1:q");
    bstr(&mut out, q.as_bytes());
    out.extend_from_slice(b"1:t");
    bstr(&mut out, tid);
    out.extend_from_slice(b"1:y1:qe");
    out
}

/// Whether `reply` carries transaction id `tid` (its `1:t<len>:<tid>`).
fn echoes(reply: &[u8], tid: &[u8]) -> bool {
    let mut want = b"1:t".to_vec();
    bstr(&mut want, tid);
    reply.windows(want.len()).any(|w| w == want.as_slice())
}

/// The probe's own address: loopback of the node's family.
fn local_for(to: SocketAddr) -> &'static str {
    if to.is_ipv6() {
        "[::1]:0"
    } else {
        "127.0.0.1:0"
    }
}

/// Sends `packet` and waits for a reply from `to` that `tid` is echoed
/// in: up to 1 s, sent again (at most `tries` times in all) when none
/// came. A late reply to an earlier query is skipped, not taken for this
/// one's.
fn ask(sock: &UdpSocket, to: SocketAddr, packet: &[u8], tid: &[u8], tries: usize) -> bool {
    let mut buf = [0u8; 4096];
    for _ in 0..tries {
        sock.send_to(packet, to).expect("send");
        let end = Instant::now() + Duration::from_secs(1);
        while Instant::now() < end {
            match sock.recv_from(&mut buf) {
                Ok((n, from)) if from == to && echoes(&buf[..n], tid) => return true,
                Ok(_) => continue,
                Err(_) => break,
            }
        }
    }
    false
}

/// Per query and tid length: (query, length, answered with the same id).
/// `tries`: sends per query (3 where every query must be answered, so
/// that a lost datagram under load is not taken for a refusal; 1 where
/// most go unanswered by design, to keep the test short).
fn probe(to: SocketAddr, tries: usize) -> Vec<(&'static str, usize, bool)> {
    let sock = UdpSocket::bind(local_for(to)).expect("bind");
    sock.set_read_timeout(Some(Duration::from_millis(1000)))
        .unwrap();
    let mut out = Vec::new();
    // The first byte numbers the query, so that a late reply to one query
    // is never taken for the next one's of the same length.
    let mut k: u8 = 0x30;
    for q in QUERIES {
        for n in TID_LENGTHS {
            k += 1;
            let tid: Vec<u8> = (0..n)
                .map(|i| if i == 0 { k } else { 0xa0 + i as u8 })
                .collect();
            let ok = ask(&sock, to, &query(q, &tid), &tid, tries);
            out.push((q, n, ok));
        }
    }
    out
}

/// Malformed packets: truncated, not bencode, a huge length prefix, a
/// response with an unknown id, deep nesting, an empty datagram.
fn garbage(to: SocketAddr) {
    let sock = UdpSocket::bind(local_for(to)).expect("bind");
    let mut bad: Vec<Vec<u8>> = vec![
        Vec::new(),
        b"d1:ad2:id20:".to_vec(),
        b"hello".to_vec(),
        b"d1:t99999999999:xe".to_vec(),
        b"d1:rd2:id20:aaaaaaaaaaaaaaaaaaaae1:t2:zz1:y1:re".to_vec(),
        b"d1:eli201e5:oopse1:t2:zz1:y1:ee".to_vec(),
        [b"l".repeat(5000), b"e".repeat(5000)].concat(),
        vec![0xff; 1400],
    ];
    let long_tid = query("ping", &[7u8; 600]);
    bad.push(long_tid);
    for _ in 0..20 {
        for p in &bad {
            let _ = sock.send_to(p, to);
        }
    }
}

fn daemon(ip: &str, imp: &str, boot: &str) -> Daemon {
    let peer = format!("{ip}:0");
    Daemon::start_on(
        ip,
        &[],
        &[
            "--peer-addr",
            &peer,
            "--dht-bootstrap",
            boot,
            "--dht-impl",
            imp,
            "--no-lsd",
        ],
    )
}

fn table(rows: &[(&str, usize, bool)]) -> String {
    rows.iter()
        .map(|(q, n, ok)| format!("{q}/{n}:{}", if *ok { "answered" } else { "-" }))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The public-DHT node answers every query whatever its transaction-id
/// length, survives garbage, and still answers afterwards.
#[test]
fn dht_answers_every_transaction_id_length() {
    let mut d = daemon("127.0.0.41", "librqbit", "127.0.0.43:9");
    let to = d.peer_addr();
    let st = d.status_json();
    let dht = &st["swarm"]["discovery"]["dht"];
    assert_eq!(
        dht["implementation"],
        "librqbit-dht",
        "status: {st:#}\n{}",
        d.log_text()
    );
    let rows = probe(to, 3);
    eprintln!("librqbit-dht node {to}: {}", table(&rows));
    let missing: Vec<_> = rows.iter().filter(|r| !r.2).collect();
    assert!(
        missing.is_empty(),
        "queries left unanswered: {missing:?}\n{}",
        d.log_text()
    );
    garbage(to);
    // The crate paces its own sends (answers to the garbage use its
    // budget): give it a moment, then every query must be answered again.
    std::thread::sleep(Duration::from_secs(2));
    let again = probe(to, 3);
    assert!(
        again.iter().all(|r| r.2),
        "after garbage: {}\n{}",
        table(&again),
        d.log_text()
    );
    assert!(d.is_running(), "daemon died:\n{}", d.log_text());
    assert_eq!(
        d.status_json()["swarm"]["discovery"]["dht"]["enabled"],
        true
    );
}

/// The private-DHT node (`mainline` 8.0.1) answers only 4-byte ids (§2
/// M4); what is pinned here is that no length and no garbage stalls or
/// crashes it, and that it still answers afterwards.
#[test]
fn dht_private_node_survives_every_transaction_id_length() {
    let mut d = daemon("127.0.0.42", "mainline", "none");
    let to = d.peer_addr();
    let rows = probe(to, 1);
    eprintln!("mainline node {to}: {}", table(&rows));
    for (q, n, ok) in &rows {
        if *n == 4 {
            assert!(ok, "{q} with a 4-byte id unanswered\n{}", d.log_text());
        }
    }
    garbage(to);
    let again = probe(to, 1);
    assert_eq!(again, rows, "answers changed after garbage");
    assert!(d.is_running(), "daemon died:\n{}", d.log_text());
    assert_eq!(
        d.status_json()["swarm"]["discovery"]["dht"]["implementation"],
        "mainline"
    );
}

/// IPv6 (BEP 32): the public-DHT node on `[::1]` answers too, and a daemon
/// whose peer address is IPv6 keeps its DHT (mainline would turn it off).
#[test]
fn dht_public_node_answers_over_ipv6() {
    let mut d = daemon("[::1]", "librqbit", "[::1]:9");
    let to = d.peer_addr();
    assert!(to.is_ipv6(), "{to}");
    let st = d.status_json();
    assert_eq!(
        st["swarm"]["discovery"]["dht"]["implementation"], "librqbit-dht",
        "{st:#}"
    );
    let rows = probe(to, 3);
    eprintln!("librqbit-dht node {to}: {}", table(&rows));
    assert!(
        rows.iter().all(|r| r.2),
        "unanswered over IPv6: {}\n{}",
        table(&rows),
        d.log_text()
    );
    assert!(d.is_running());
}
