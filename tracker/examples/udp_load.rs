//! A small, bounded UDP (BEP 15) load generator for bench/tracker/run.sh.
//!
//! usage:
//!   udp_load hashes N                      print N deterministic 40-hex info hashes
//!   udp_load fill ADDR TORRENTS PEERS      announce every peer once (then exit)
//!   udp_load load ADDR TORRENTS PEERS SECS announce random peers for SECS seconds
//!
//! Peer `i` belongs to torrent `i % TORRENTS` and announces port
//! `1024 + i / TORRENTS` (all from 127.0.0.1, so the port tells peers
//! apart). `load` keeps a window of requests in flight on a few sockets and
//! prints `announces_per_sec=N` (answers counted, not packets sent).
//! Everything is bounded: the run length, the window, and every wait.

use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use debtorrent_tracker::udp_proto::{self, UdpAnnounce, UdpResponse};
use debtorrent_tracker::{Event, InfoHash, PeerId};

/// Requests in flight per socket.
const WINDOW: usize = 48;
const SOCKETS: usize = 4;

fn splitmix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Torrent `t`'s info hash: the same in every tool of the benchmark.
fn info_hash(t: u64) -> InfoHash {
    let mut h = [0u8; 20];
    for (k, chunk) in h.chunks_mut(8).enumerate() {
        let v = splitmix(t * 3 + k as u64).to_be_bytes();
        chunk.copy_from_slice(&v[..chunk.len()]);
    }
    InfoHash(h)
}

fn announce_packet(conn: u64, tid: u32, hashes: &[InfoHash], peer: u64, out: &mut Vec<u8>) {
    let torrents = hashes.len() as u64;
    let mut id = *b"-UL0001-000000000000";
    let mut v = peer;
    for d in id[8..].iter_mut().rev() {
        *d = b'0' + (v % 10) as u8;
        v /= 10;
    }
    out.clear();
    udp_proto::encode_announce_request(
        &UdpAnnounce {
            connection_id: conn,
            transaction_id: tid,
            info_hash: hashes[(peer % torrents) as usize],
            peer_id: PeerId(id),
            downloaded: 0,
            left: if peer % 3 == 0 { 0 } else { 1000 },
            uploaded: 0,
            event: Event::None,
            ip: 0,
            key: peer as u32,
            num_want: 50,
            port: (1024 + peer / torrents) as u16,
        },
        out,
    );
}

fn connect(sock: &UdpSocket) -> Result<u64, String> {
    let mut req = Vec::new();
    udp_proto::encode_connect_request(0xc0ffee, &mut req);
    let mut buf = [0u8; 64];
    for _ in 0..20 {
        sock.send(&req).map_err(|e| e.to_string())?;
        if let Ok(n) = sock.recv(&mut buf) {
            if let Ok(UdpResponse::Connect { connection_id, .. }) =
                udp_proto::parse_response(&buf[..n])
            {
                return Ok(connection_id);
            }
        }
    }
    Err("no connect answer".into())
}

fn socket(target: SocketAddr) -> Result<(UdpSocket, u64), String> {
    let sock = UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    sock.connect(target).map_err(|e| e.to_string())?;
    sock.set_read_timeout(Some(Duration::from_millis(200)))
        .map_err(|e| e.to_string())?;
    let conn = connect(&sock)?;
    Ok((sock, conn))
}

/// Count answers: (announces, errors), printing the first error message.
fn tally(p: &[u8], ok: &mut u64, errors: &mut u64) {
    match udp_proto::parse_response(p) {
        Ok(UdpResponse::Announce { .. }) => *ok += 1,
        Ok(UdpResponse::Error { message, .. }) => {
            if *errors == 0 {
                eprintln!("udp_load: tracker error: {message}");
            }
            *errors += 1;
        }
        other => {
            if *errors == 0 {
                eprintln!("udp_load: unexpected answer: {other:?}");
            }
            *errors += 1;
        }
    }
}

fn fill(target: SocketAddr, hashes: &[InfoHash], peers: u64) -> Result<(), String> {
    let (sock, conn) = socket(target)?;
    let mut pkt = Vec::new();
    let mut buf = [0u8; 2048];
    let deadline = Instant::now() + Duration::from_secs(120);
    let (mut ok, mut errors) = (0u64, 0u64);
    // Windowed, with retries for lost packets: every peer gets an answer.
    let mut next = 0u64;
    while next < peers {
        let batch = (peers - next).min(WINDOW as u64);
        for k in 0..batch {
            announce_packet(conn, (next + k) as u32, hashes, next + k, &mut pkt);
            sock.send(&pkt).map_err(|e| e.to_string())?;
        }
        let mut got = 0;
        while got < batch {
            match sock.recv(&mut buf) {
                Ok(n) => {
                    tally(&buf[..n], &mut ok, &mut errors);
                    got += 1
                }
                Err(_) => break,
            }
        }
        if got == batch {
            next += batch;
        }
        if Instant::now() > deadline {
            return Err("fill took longer than 120 s".into());
        }
    }
    if errors > 0 {
        return Err(format!("{errors} error answers during fill"));
    }
    println!("filled={ok}");
    Ok(())
}

/// One sendmmsg/recvmmsg batch: buffers and the headers pointing at them.
/// Batching system calls keeps the generator cheaper per announce than the
/// trackers it measures, so the tracker (pinned to its own core) is the
/// bottleneck.
struct Mmsg {
    bufs: Vec<[u8; 2048]>,
    iov: Vec<libc::iovec>,
    hdr: Vec<libc::mmsghdr>,
}

impl Mmsg {
    fn new(n: usize) -> Box<Mmsg> {
        let mut m = Box::new(Mmsg {
            bufs: vec![[0u8; 2048]; n],
            iov: Vec::with_capacity(n),
            hdr: Vec::with_capacity(n),
        });
        for i in 0..n {
            let base = m.bufs[i].as_mut_ptr();
            m.iov.push(libc::iovec {
                iov_base: base.cast(),
                iov_len: 2048,
            });
        }
        for i in 0..n {
            // SAFETY: an all-zero msghdr is valid (no name, no control).
            let mut h: libc::mmsghdr = unsafe { std::mem::zeroed() };
            h.msg_hdr.msg_iov = &mut m.iov[i];
            h.msg_hdr.msg_iovlen = 1;
            m.hdr.push(h);
        }
        m
    }
}

fn load(target: SocketAddr, hashes: &[InfoHash], peers: u64, secs: u64) -> Result<(), String> {
    use std::os::fd::AsRawFd;
    let mut socks = Vec::new();
    for _ in 0..SOCKETS {
        let (s, c) = socket(target)?;
        socks.push((s, c, 0usize));
    }
    let mut tx = Mmsg::new(WINDOW);
    let mut rx = Mmsg::new(WINDOW);
    let mut pkt = Vec::with_capacity(128);
    let mut rng = 0x1234_5678u64;
    let (mut answered, mut errors) = (0u64, 0u64);
    let start = Instant::now();
    let end = start + Duration::from_secs(secs);
    let mut last_progress = Instant::now();
    let mut iter = 0u64;
    loop {
        iter += 1;
        if iter % 64 == 0 {
            let now = Instant::now();
            if now >= end {
                break;
            }
            // Lost packets would shrink the windows for good: refill them
            // when nothing came back for 50 ms.
            if now - last_progress > Duration::from_millis(50) {
                for s in socks.iter_mut() {
                    s.2 = 0;
                }
                last_progress = now;
            }
        }
        for (sock, conn, inflight) in socks.iter_mut() {
            let fd = sock.as_raw_fd();
            let room = WINDOW - *inflight;
            if room > 0 {
                for i in 0..room {
                    rng = splitmix(rng);
                    announce_packet(*conn, rng as u32, hashes, rng % peers, &mut pkt);
                    tx.bufs[i][..pkt.len()].copy_from_slice(&pkt);
                    tx.iov[i].iov_len = pkt.len();
                }
                // SAFETY: the headers point at `room` live buffers of tx.
                let r = unsafe { libc::sendmmsg(fd, tx.hdr.as_mut_ptr(), room as u32, 0) };
                if r > 0 {
                    *inflight += r as usize;
                }
            }
            loop {
                for h in rx.hdr.iter_mut() {
                    h.msg_len = 0;
                }
                // SAFETY: the headers point at WINDOW live buffers of rx.
                let r = unsafe {
                    libc::recvmmsg(
                        fd,
                        rx.hdr.as_mut_ptr(),
                        WINDOW as u32,
                        libc::MSG_DONTWAIT,
                        std::ptr::null_mut(),
                    )
                };
                if r <= 0 {
                    break;
                }
                for i in 0..r as usize {
                    let n = rx.hdr[i].msg_len as usize;
                    tally(&rx.bufs[i][..n], &mut answered, &mut errors);
                }
                *inflight = inflight.saturating_sub(r as usize);
                last_progress = Instant::now();
            }
        }
    }
    let dt = start.elapsed().as_secs_f64();
    if errors > 0 {
        return Err(format!("{errors} error answers"));
    }
    println!("announces_per_sec={:.0}", answered as f64 / dt);
    Ok(())
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    let num = |i: usize| -> u64 {
        args.get(i)
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| usage())
    };
    let result = match args.get(1).map(String::as_str) {
        Some("hashes") => {
            for t in 0..num(2) {
                println!("{}", info_hash(t));
            }
            Ok(())
        }
        Some(mode @ ("fill" | "load")) => {
            let target: SocketAddr = args
                .get(2)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| usage());
            let torrents = num(3).max(1);
            let peers = num(4).max(1);
            let hashes: Vec<InfoHash> = (0..torrents).map(info_hash).collect();
            if mode == "fill" {
                fill(target, &hashes, peers)
            } else {
                load(target, &hashes, peers, num(5).clamp(1, 600))
            }
        }
        _ => usage(),
    };
    if let Err(e) = result {
        eprintln!("udp_load: {e}");
        std::process::exit(1);
    }
}

fn usage() -> ! {
    eprintln!(
        "usage: udp_load hashes N | fill ADDR TORRENTS PEERS | load ADDR TORRENTS PEERS SECS"
    );
    std::process::exit(2);
}
