//! The swarm with real parts: several daemons on their own loopback
//! addresses (127.0.0.x) that find each other through a private DHT, the
//! real apt behind each one, the counting test mirror, and hand-written test
//! peers built on the daemon's own codec (`src/swarm/wire.rs`) for the
//! hostile cases. See docs/swarm-design.md §14.
//!
//! Every daemon here runs `--no-lsd` and `--dht-bootstrap none|<first
//! daemon>` (never the public routers); every address is on 127.0.0.0/8;
//! every wait has a time limit. Each test has its own block of loopback
//! addresses so tests running in parallel never meet.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};

use bytes::BytesMut;
use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::support::apt::{AptClient, Mode};
use crate::support::daemon::Daemon;
use crate::support::mirror::Mirror;
use crate::support::repo::repo;

// The daemon's own codec, from its library.
use debtorrent::wire::{self, ExtHandshake, Handshake, Msg};

/// The torrent apt's `apt-get update` registers for the binary packages.
const PACKAGES: &str = "dists/stable/main/binary-amd64/Packages";

// ------------------------------------------------------------------ status

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

/// The Packages torrent's entry in `/status.json` (panics if missing).
fn torrent(d: &Daemon) -> Value {
    d.torrent_status(PACKAGES)
        .unwrap_or_else(|| panic!("no torrent for {PACKAGES} in {:#}", d.status_json()))
}

/// The dt2 swarm the Packages index belongs to (what handshakes carry).
fn info_hash(d: &Daemon) -> debtorrent_gen::InfoHash {
    let t = torrent(d);
    let hex = t["swarm_id"]
        .as_str()
        .unwrap_or_else(|| panic!("no swarm_id: {t:#}"));
    debtorrent_gen::InfoHash::from_hex(hex)
        .unwrap_or_else(|| panic!("swarm_id {hex:?} is not 40 hex digits"))
}

/// `dt_hold` entries for every pool file of the fixture, numbered from 0:
/// what a peer that claims to hold everything announces.
fn hold_all(repo: &crate::support::repo::Repo) -> Vec<(u32, [u8; 32])> {
    repo.all_pool_files()
        .enumerate()
        .map(|(i, p)| {
            let mut sha = [0u8; 32];
            for (k, b) in sha.iter_mut().enumerate() {
                *b = u8::from_str_radix(&p.sha256[2 * k..2 * k + 2], 16)
                    .unwrap_or_else(|e| panic!("sha256 {:?}: {e}", p.sha256));
            }
            (i as u32, sha)
        })
        .collect()
}

fn peer_count(t: &Value) -> usize {
    t["peers"].as_array().map_or(0, |a| a.len())
}

/// Polls `/status.json` every 100 ms until `cond` holds; panics with the
/// last status after `timeout`.
fn wait_status(d: &Daemon, timeout: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = d.status_json();
        if cond(&v) {
            return v;
        }
        if start.elapsed() > timeout {
            panic!(
                "{what}: not within {timeout:?}; last /status.json of {}:\n{v:#}",
                d.addr()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn packages_torrent_of(v: &Value) -> Option<&Value> {
    v["torrents"]
        .as_array()?
        .iter()
        .find(|t| t["index_path"] == PACKAGES)
}

fn sizes(repo: &crate::support::repo::Repo, names: &[&str]) -> u64 {
    names.iter().map(|n| repo.package(n).size).sum()
}

// ------------------------------------------------------------ test peers

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("test peer runtime")
}

fn test_peer_id(tag: u8) -> [u8; 20] {
    let mut id = *b"-HX0001-000000000000";
    id[19] = b'a' + tag % 26;
    id[18] = b'a' + (tag / 26) % 26;
    id
}

/// A raw peer connection from a chosen loopback source address.
struct RawPeer {
    s: TcpStream,
    buf: Vec<u8>,
    /// The daemon's id for `dt_hold` (from its extended handshake).
    hold_id: u8,
    /// The daemon's id for `dt_who` (0: it offers none).
    who_id: u8,
}

/// How a read ended when no frame came.
#[derive(Debug)]
enum End {
    /// The daemon closed the connection (EOF or reset).
    Closed(String),
    /// Nothing within the time allowed.
    Timeout,
}

impl RawPeer {
    async fn connect(src: &str, to: SocketAddr) -> io::Result<RawPeer> {
        let src: IpAddr = src.parse().unwrap();
        let sock = tokio::net::TcpSocket::new_v4()?;
        sock.bind(SocketAddr::new(src, 0))?;
        let s = tokio::time::timeout(Duration::from_secs(5), sock.connect(to))
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect timed out"))??;
        s.set_nodelay(true)?;
        Ok(RawPeer {
            s,
            buf: Vec::new(),
            hold_id: 0,
            who_id: 0,
        })
    }

    async fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.s.write_all(bytes).await?;
        self.s.flush().await
    }

    async fn send_msgs(&mut self, msgs: &[Msg<'_>]) -> io::Result<()> {
        let mut out = BytesMut::new();
        for m in msgs {
            wire::encode(m, &mut out);
        }
        self.send(&out).await
    }

    /// Reads more bytes into the buffer, until `deadline`.
    async fn fill(&mut self, deadline: tokio::time::Instant) -> Result<(), End> {
        self.buf.reserve(64 * 1024);
        match tokio::time::timeout_at(deadline, self.s.read_buf(&mut self.buf)).await {
            Err(_) => Err(End::Timeout),
            Ok(Ok(0)) => Err(End::Closed("EOF".into())),
            Ok(Ok(_)) => Ok(()),
            Ok(Err(e)) => Err(End::Closed(format!("{e}"))),
        }
    }

    async fn read_handshake(&mut self, within: Duration) -> Result<Handshake, End> {
        let deadline = tokio::time::Instant::now() + within;
        while self.buf.len() < wire::HANDSHAKE_LEN {
            self.fill(deadline).await?;
        }
        let b: [u8; wire::HANDSHAKE_LEN] = self.buf[..wire::HANDSHAKE_LEN].try_into().unwrap();
        self.buf.drain(..wire::HANDSHAKE_LEN);
        Handshake::decode(&b)
            .map_err(|e| End::Closed(format!("bad handshake from the daemon: {e}")))
    }

    /// One whole frame (length prefix included), as sent by the daemon.
    async fn frame(&mut self, within: Duration) -> Result<Vec<u8>, End> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if self.buf.len() >= 4 {
                let len = u32::from_be_bytes(self.buf[..4].try_into().unwrap()) as usize;
                assert!(len <= 1 << 20, "the daemon sent a frame of {len} bytes");
                if self.buf.len() >= 4 + len {
                    return Ok(self.buf.drain(..4 + len).collect());
                }
            }
            self.fill(deadline).await?;
        }
    }

    /// Reads (and drops) whatever comes until the daemon closes the
    /// connection; the time that took, or None if it stayed open.
    async fn closed_within(&mut self, within: Duration) -> Option<Duration> {
        let start = Instant::now();
        let deadline = tokio::time::Instant::now() + within;
        loop {
            self.buf.clear();
            match self.fill(deadline).await {
                Ok(()) => {}
                Err(End::Closed(_)) => return Some(start.elapsed()),
                Err(End::Timeout) => return None,
            }
        }
    }

    /// The connection is still open after `dur` (data may arrive; it is kept).
    async fn stays_open(&mut self, dur: Duration) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + dur;
        loop {
            match self.fill(deadline).await {
                Ok(()) => {}
                Err(End::Timeout) => return Ok(()),
                Err(End::Closed(e)) => return Err(e),
            }
        }
    }
}

/// Decodes one whole frame with the daemon's codec. The piece count is only
/// needed to size-check a BITFIELD; taking it from the frame's own length
/// (8 pieces per byte, so no padding bits) accepts any bitfield.
fn decode_frame(frame: &[u8]) -> Msg<'_> {
    let piece_count = if frame.len() > 4 && frame[4] == 5 {
        (frame.len() as u32 - 5) * 8
    } else {
        1
    };
    match wire::decode(frame, &wire::Limits { piece_count }) {
        Ok(Some((msg, used))) if used == frame.len() => msg,
        other => panic!("the daemon sent a frame its own codec refuses: {other:?} {frame:02x?}"),
    }
}

/// Our test peer's id for `dt_hold` (what the daemon's holdings come as).
const TEST_HOLD_ID: u8 = 3;
/// Our test peer's id for `dt_who` (only peers built with `who`).
const TEST_WHO_ID: u8 = 4;

fn ext_handshake(client: &str, who: bool) -> Vec<u8> {
    let mut m = vec![
        (wire::EXT_PEX.to_string(), 1),
        (wire::EXT_WIP.to_string(), 2),
        (wire::EXT_HOLD.to_string(), TEST_HOLD_ID),
    ];
    if who {
        m.push((wire::EXT_WHO.to_string(), TEST_WHO_ID));
    }
    ExtHandshake {
        m,
        p: Some(6999),
        v: Some(client.to_string()),
        reqq: Some(250),
        debtorrent: Some(wire::DT_VERSION),
        yourip: None,
        versions: Vec::new(),
    }
    .encode()
}

/// Connects from `src` and completes both handshakes as a dt2 debtorrent
/// peer, then announces `hold` (its numbers and SHA-256s) in `dt_hold`;
/// returns once the daemon's extended handshake has arrived.
async fn join_swarm(
    src: &str,
    to: SocketAddr,
    ih: debtorrent_gen::InfoHash,
    tag: u8,
    hold: Vec<(u32, [u8; 32])>,
) -> Result<RawPeer, String> {
    join_swarm_as(src, to, ih, tag, hold, false).await
}

/// [`join_swarm`], speaking `dt_who` too when `who` is set.
async fn join_swarm_as(
    src: &str,
    to: SocketAddr,
    ih: debtorrent_gen::InfoHash,
    tag: u8,
    hold: Vec<(u32, [u8; 32])>,
    who: bool,
) -> Result<RawPeer, String> {
    let mut p = RawPeer::connect(src, to)
        .await
        .map_err(|e| format!("connect {src} -> {to}: {e}"))?;
    p.send(&Handshake::new(ih, test_peer_id(tag)).encode())
        .await
        .map_err(|e| format!("send handshake: {e}"))?;
    let hs = p
        .read_handshake(Duration::from_secs(5))
        .await
        .map_err(|e| format!("the daemon's handshake: {e:?}"))?;
    if hs.info_hash != ih {
        return Err(format!("the daemon answered for {}", hs.info_hash));
    }
    let ext = ext_handshake(&format!("hx-test {tag}"), who);
    p.send_msgs(&[
        Msg::HaveNone,
        Msg::Extended {
            id: 0,
            payload: &ext,
        },
    ])
    .await
    .map_err(|e| format!("send HAVE_NONE + extended handshake: {e}"))?;
    loop {
        let f = p
            .frame(Duration::from_secs(5))
            .await
            .map_err(|e| format!("waiting for the daemon's extended handshake: {e:?}"))?;
        if let Msg::Extended { id: 0, payload } = decode_frame(&f) {
            let theirs = ExtHandshake::decode(payload)
                .map_err(|e| format!("the daemon's extended handshake: {e}"))?;
            if theirs.debtorrent != Some(wire::DT_VERSION) {
                return Err(format!(
                    "the daemon's extended handshake lacks debtorrent: 2: {theirs:?}"
                ));
            }
            let id = theirs
                .ext_id(wire::EXT_HOLD)
                .ok_or_else(|| format!("the daemon offers no dt_hold: {theirs:?}"))?;
            p.hold_id = id;
            p.who_id = theirs.ext_id(wire::EXT_WHO).unwrap_or(0);
            for chunk in hold.chunks(wire::MAX_HOLD) {
                let h = wire::Hold {
                    add: chunk.to_vec(),
                    drop: Vec::new(),
                }
                .encode();
                p.send_msgs(&[Msg::Extended { id, payload: &h }])
                    .await
                    .map_err(|e| format!("send dt_hold: {e}"))?;
            }
            return Ok(p);
        }
    }
}

/// Reads frames until the daemon's `dt_hold` arrives; its entries.
async fn daemon_hold(p: &mut RawPeer, within: Duration) -> Result<wire::Hold, String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = p
            .frame(left)
            .await
            .map_err(|e| format!("waiting for the daemon's dt_hold: {e:?}"))?;
        if let Msg::Extended {
            id: TEST_HOLD_ID,
            payload,
        } = decode_frame(&f)
        {
            return wire::Hold::decode(payload).map_err(|e| format!("the daemon's dt_hold: {e}"));
        }
    }
}

// ------------------------------------------------------------------- tests

/// §14: five daemons in a private DHT; only the first client's daemon
/// touches the mirror's pool, the other four get every package from peers.
#[test]
fn swarm_five_daemons_second_clients_take_zero_mirror_bytes() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let all = repo.binary_names();
    let total = sizes(repo, &all);

    let d1 = Daemon::start_peer("127.0.0.11", &[mirror.port()], None, &[]);
    let boot = d1.peer_addr();
    assert_eq!(boot.ip().to_string(), "127.0.0.11", "peer_addr {boot}");
    let mut daemons = vec![d1];
    for k in 2..=5 {
        let ip = format!("127.0.0.1{k}");
        let d = Daemon::start_peer(&ip, &[mirror.port()], Some(boot), &[]);
        assert_eq!(d.peer_addr().ip().to_string(), ip);
        daemons.push(d);
    }

    let c1 = AptClient::new(repo, &mirror, Mode::Prefix(daemons[0].addr()));
    c1.update_and_fetch(repo, &all, "client 1 through daemon 1");
    let first = mirror.stats();
    assert!(
        first.pool_bytes >= total,
        "client 1 came from the mirror: {first:?}, packages {total} bytes"
    );
    let log_mark = mirror.log().len();

    for (k, daemon) in daemons.iter().enumerate().skip(1) {
        let t0 = Instant::now();
        let c = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
        c.update_and_fetch(
            repo,
            &all,
            &format!("client {} through daemon {}", k + 1, k + 1),
        );
        let now = mirror.stats();
        let st = daemon.status_json();
        assert_eq!(
            now.pool_bytes,
            first.pool_bytes,
            "client {} caused {} pool bytes from the mirror; pool requests since client 1:\n{}\
             status of daemon {}:\n{st:#}",
            k + 1,
            now.pool_bytes - first.pool_bytes,
            mirror.pool_log(log_mark),
            k + 1
        );
        let from_peers = num(&st["bytes_from_peers"]);
        assert!(
            from_peers >= total,
            "daemon {} got {from_peers} bytes from peers for {total} bytes of packages:\n{st:#}",
            k + 1
        );
        let t = packages_torrent_of(&st).cloned().unwrap_or_default();
        assert!(
            num(&t["bytes_from_peers"]) > 0,
            "per-torrent bytes_from_peers: {t:#}"
        );
        assert_eq!(
            num(&t["bytes_from_mirror"]),
            0,
            "per-torrent bytes_from_mirror: {t:#}"
        );
        eprintln!(
            "client {} via daemon {}: {:.1?}, {from_peers} bytes from peers, peers {:?}, discovered {}",
            k + 1,
            k + 1,
            t0.elapsed(),
            t["peers"]
                .as_array()
                .map(|a| a.iter().map(|p| p["addr"].to_string()).collect::<Vec<_>>()),
            t["discovered"]
        );
    }
    // Somebody uploaded all that.
    let uploaded: u64 = daemons
        .iter()
        .map(|d| num(&d.status_json()["bytes_uploaded"]))
        .sum();
    assert!(uploaded >= 4 * total, "uploaded {uploaded} for 4 x {total}");
}

/// §14 fault: one of two seeds is killed (-9) while the big package flows;
/// the other seed (or the mirror) finishes and apt gets an intact file.
#[test]
fn swarm_peer_killed_mid_transfer_others_finish() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let big = repo.big();
    let port = mirror.port();
    // Seeds upload at 8 MB/s each so the 54 MB transfer lasts a few seconds.
    let mut s1 = Daemon::start_peer("127.0.0.81", &[port], None, &["--upload-rate", "8M"]);
    let boot = s1.peer_addr();
    let mut s2 = Daemon::start_peer("127.0.0.82", &[port], Some(boot), &["--upload-rate", "8M"]);
    let leech = Daemon::start_peer("127.0.0.83", &[port], Some(boot), &[]);

    let a1 = AptClient::new(repo, &mirror, Mode::Prefix(s1.addr()));
    a1.update_and_fetch(repo, &[big.name.as_str()], "seed 1's client");
    let a2 = AptClient::new(repo, &mirror, Mode::Prefix(s2.addr()));
    a2.update_and_fetch(repo, &[big.name.as_str()], "seed 2's client");
    for s in [&s1, &s2] {
        assert!(s.wait_committed(), "downloads still in tmp/ after 30 s");
        let t = torrent(s);
        assert!(num(&t["pieces_held"]) >= 1, "seed holds the package: {t:#}");
    }

    let c = AptClient::new(repo, &mirror, Mode::Prefix(leech.addr()));
    let out = c.update();
    c.assert_update_verified(&out, "leecher's client");
    wait_status(
        &leech,
        Duration::from_secs(20),
        "the leecher connects to both seeds",
        |v| {
            packages_torrent_of(v).is_some_and(|t| {
                t["peers"]
                    .as_array()
                    .is_some_and(|a| a.iter().filter(|p| num(&p["pieces"]) >= 1).count() >= 2)
            })
        },
    );

    let (at_kill, killed) = std::thread::scope(|scope| {
        let apt = scope.spawn(|| c.download_only(&[big.name.as_str()]));
        // Kill a seed once 8 MB have come from peers.
        let start = Instant::now();
        let mut at_kill = None;
        while start.elapsed() < Duration::from_secs(60) && !apt.is_finished() {
            let v = leech.status_json();
            let got = num(&v["bytes_from_peers"]);
            if got >= 8 << 20 {
                let up1 = num(&s1.status_json()["bytes_uploaded"]);
                let up2 = num(&s2.status_json()["bytes_uploaded"]);
                // The one that sent more: surely on the piece right now.
                let which = if up1 >= up2 { 1 } else { 2 };
                if which == 1 {
                    s1.kill9()
                } else {
                    s2.kill9()
                }
                eprintln!(
                    "killed seed {which} after {:.1?}: leecher had {got} bytes from peers \
                     (seed uploads {up1} / {up2})",
                    start.elapsed()
                );
                at_kill = Some((got, which));
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let out = apt.join().expect("apt thread");
        assert!(
            out.success(),
            "the leecher's apt failed after a seed was killed\n{}\nleecher status:\n{:#}",
            out.combined(),
            leech.status_json()
        );
        let (got, which) = at_kill.unwrap_or_else(|| {
            panic!(
                "no seed was killed: the leecher never reached 8 MB from peers while apt ran \
                 ({:.1?}); status:\n{:#}",
                start.elapsed(),
                leech.status_json()
            )
        });
        (got, which)
    });
    assert!(
        at_kill < big.size,
        "the transfer had finished ({at_kill} bytes) before the kill: not mid-transfer"
    );
    if let Err(e) = c.verify_archives(repo, &[big.name.as_str()]) {
        panic!("{e}");
    }
    let v = leech.status_json();
    let from_peers = num(&v["bytes_from_peers"]);
    let from_mirror = num(&v["bytes_from_mirror"]);
    eprintln!(
        "leecher: {from_peers} bytes from peers ({at_kill} before seed {killed} died), \
         {from_mirror} from the mirror"
    );
    assert!(
        from_peers > at_kill,
        "after the kill nothing more came from the surviving seed:\n{v:#}"
    );
    assert!(
        from_peers + from_mirror >= big.size,
        "the package's bytes are accounted for:\n{v:#}"
    );
}

/// What the hostile peer saw.
#[derive(Debug, Default)]
struct HostileReport {
    requests: u64,
    bytes_sent: u64,
    /// Time from the first REQUEST to the daemon closing the connection.
    closed_after: Option<Duration>,
    error: Option<String>,
}

/// A peer that claims every pool file (`hold`), unchokes at once and
/// answers each REQUEST with a block of the right length and the wrong
/// bytes, or (`answer` false) never answers at all.
async fn hostile_peer(
    src: &str,
    to: SocketAddr,
    ih: debtorrent_gen::InfoHash,
    hold: Vec<(u32, [u8; 32])>,
    answer: bool,
    ready: std::sync::mpsc::Sender<()>,
    give_up: Duration,
) -> HostileReport {
    let mut rep = HostileReport::default();
    let mut p = match join_swarm(src, to, ih, 1, hold).await {
        Ok(p) => p,
        Err(e) => {
            rep.error = Some(e);
            let _ = ready.send(());
            return rep;
        }
    };
    if let Err(e) = p.send_msgs(&[Msg::Unchoke]).await {
        rep.error = Some(format!("send unchoke: {e}"));
    }
    let _ = ready.send(());
    let start = tokio::time::Instant::now();
    let mut first_request: Option<Instant> = None;
    loop {
        let left = give_up.saturating_sub(start.elapsed());
        match p.frame(left).await {
            Ok(f) => {
                if let Msg::Request(r) = decode_frame(&f) {
                    rep.requests += 1;
                    first_request.get_or_insert_with(Instant::now);
                    if !answer {
                        continue;
                    }
                    let junk = vec![0x5a ^ (r.begin as u8); r.length as usize];
                    let msg = Msg::Piece {
                        index: r.index,
                        begin: r.begin,
                        data: &junk,
                    };
                    if p.send_msgs(&[msg]).await.is_err() {
                        rep.closed_after = Some(first_request.unwrap().elapsed());
                        return rep;
                    }
                    rep.bytes_sent += u64::from(r.length);
                }
            }
            Err(End::Closed(_)) => {
                rep.closed_after = Some(first_request.map_or(Duration::ZERO, |t| t.elapsed()));
                return rep;
            }
            Err(End::Timeout) => return rep,
        }
    }
}

/// Starts [`hostile_peer`] from `src` against daemon `d`, claiming every
/// pool file, in a thread of its own; returns once `d` lists it as a peer.
fn start_hostile(
    d: &Daemon,
    src: &'static str,
    answer: bool,
    give_up: Duration,
) -> std::thread::JoinHandle<HostileReport> {
    let (ih, peer_addr) = (info_hash(d), d.peer_addr());
    let all = hold_all(repo());
    let (tx, rx) = std::sync::mpsc::channel();
    let h = std::thread::spawn(move || {
        rt().block_on(hostile_peer(src, peer_addr, ih, all, answer, tx, give_up))
    });
    rx.recv_timeout(Duration::from_secs(15))
        .expect("the hostile peer did not get going");
    wait_status(
        d,
        Duration::from_secs(10),
        "the daemon lists the hostile peer",
        |v| packages_torrent_of(v).is_some_and(|t| peer_count(t) >= 1),
    );
    h
}

/// §14 fault: a peer that sends corrupt blocks is banned, and apt still
/// gets intact files (small pieces are held whole until verified, and the
/// failed pieces are refetched from the mirror).
#[test]
fn swarm_corrupt_peer_is_banned_and_apt_gets_correct_files() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let pkgs = ["small", "tiny", "libfoo1"];
    let d = Daemon::start_peer("127.0.0.31", &[mirror.port()], None, &["--peer-wait", "5s"]);
    let apt = AptClient::new(repo, &mirror, Mode::Prefix(d.addr()));
    let out = apt.update();
    apt.assert_update_verified(&out, "update");
    let (ih, peer_addr) = (info_hash(&d), d.peer_addr());
    let again_hold = hold_all(repo);
    let hostile = start_hostile(&d, "127.0.0.32", true, Duration::from_secs(120));

    let out = apt.download_only(&pkgs);
    assert!(
        out.success(),
        "apt failed with a corrupt peer in the swarm\n{}\n{:#}",
        out.combined(),
        d.status_json()
    );
    if let Err(e) = apt.verify_archives(repo, &pkgs) {
        panic!("{e}");
    }
    let v = wait_status(&d, Duration::from_secs(10), "bans >= 1", |v| {
        num(&v["bans"]) >= 1
    });
    assert!(
        num(&v["corrupt_downloads"]) >= 1,
        "corrupt_downloads: {v:#}"
    );
    let rep = hostile.join().expect("hostile thread");
    eprintln!("hostile peer: {rep:?}");
    assert!(rep.error.is_none(), "hostile peer: {rep:?}");
    assert!(
        rep.requests >= 1,
        "the daemon never asked the hostile peer for a block (so the test proves nothing): \
         {rep:?}\n{v:#}"
    );
    let closed = rep
        .closed_after
        .unwrap_or_else(|| panic!("the daemon kept the corrupt peer's connection: {rep:?}"));
    assert!(
        closed < Duration::from_secs(30),
        "closed only after {closed:?}"
    );
    let t = packages_torrent_of(&v).cloned().unwrap_or_default();
    assert!(
        num(&t["bytes_from_mirror"]) > 0,
        "the failed pieces came from the mirror: {t:#}"
    );

    // Banned: a new connection from the same address is turned away.
    let again = rt().block_on(async {
        match join_swarm("127.0.0.32", peer_addr, ih, 2, again_hold).await {
            Err(e) => Ok(e),
            Ok(mut p) => match p.closed_within(Duration::from_secs(5)).await {
                Some(t) => Ok(format!("closed after {t:?}")),
                None => Err(()),
            },
        }
    });
    match again {
        Ok(how) => eprintln!("reconnect from the banned address: {how}"),
        Err(()) => panic!("the banned address could connect again and stay connected"),
    }
}

/// dt2 lets a peer announce any content: one that announces every pool
/// file, unchokes and then never sends a byte costs apt one
/// `--stall-timeout`, after which the mirror delivers (and after a few
/// such stalls in a row the peer is dropped: the machine's table test
/// `a_peer_that_announces_what_it_never_serves_is_dropped`).
#[test]
fn swarm_peer_announcing_what_it_never_serves_costs_one_stall() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let pkgs = ["small", "tiny", "libfoo1"];
    let d = Daemon::start_peer(
        "127.0.0.33",
        &[mirror.port()],
        None,
        &["--stall-timeout", "2s"],
    );
    let apt = AptClient::new(repo, &mirror, Mode::Prefix(d.addr()));
    let out = apt.update();
    apt.assert_update_verified(&out, "update");
    let liar = start_hostile(&d, "127.0.0.34", false, Duration::from_secs(10));
    let t0 = Instant::now();
    let out = apt.download_only(&pkgs);
    let took = t0.elapsed();
    assert!(
        out.success(),
        "apt failed with a lying peer in the swarm\n{}\n{:#}",
        out.combined(),
        d.status_json()
    );
    if let Err(e) = apt.verify_archives(repo, &pkgs) {
        panic!("{e}");
    }
    let st = d.status_json();
    eprintln!("apt with a peer that never serves: {took:.1?}; status {st:#}");
    assert!(
        took < Duration::from_secs(20),
        "apt took {took:?} with a peer that never serves (one 2 s stall expected)"
    );
    assert!(
        num(&st["bytes_from_mirror"]) >= sizes(repo, &pkgs),
        "the mirror delivered: {st:#}"
    );
    let rep = liar.join().expect("liar thread");
    assert!(rep.error.is_none(), "lying peer: {rep:?}");
    assert!(
        rep.requests >= 1,
        "the daemon never asked the lying peer (so the test proves nothing): {rep:?}"
    );
}

/// §14 fault: the only peer with the packages disappears; the mirror takes
/// over after `--peer-wait` and apt finishes in bounded time.
#[test]
fn swarm_all_peers_gone_mirror_takes_over() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let pkgs = ["small", "tiny", "libfoo1", "libstd++x1"];
    let mut a = Daemon::start_peer("127.0.0.41", &[mirror.port()], None, &[]);
    let boot = a.peer_addr();
    let b = Daemon::start_peer("127.0.0.42", &[mirror.port()], Some(boot), &[]);
    let ca = AptClient::new(repo, &mirror, Mode::Prefix(a.addr()));
    ca.update_and_fetch(repo, &pkgs, "A's client");

    let cb = AptClient::new(repo, &mirror, Mode::Prefix(b.addr()));
    let out = cb.update();
    cb.assert_update_verified(&out, "B's client");
    wait_status(&b, Duration::from_secs(20), "B connects to A", |v| {
        packages_torrent_of(v).is_some_and(|t| {
            t["peers"]
                .as_array()
                .is_some_and(|a| a.iter().any(|p| num(&p["pieces"]) >= 1))
        })
    });
    a.kill9();
    let before = mirror.stats();
    let out = cb.download_only(&pkgs);
    assert!(
        out.success(),
        "B's client with A gone\n{}\n{:#}",
        out.combined(),
        b.status_json()
    );
    if let Err(e) = cb.verify_archives(repo, &pkgs) {
        panic!("{e}");
    }
    assert!(
        out.elapsed < Duration::from_secs(30),
        "apt took {:?} with every peer gone",
        out.elapsed
    );
    let after = mirror.stats();
    assert!(
        after.pool_bytes - before.pool_bytes >= sizes(repo, &pkgs),
        "the mirror served the packages: {before:?} -> {after:?}"
    );
    eprintln!("B's client with A gone: {:.1?}", out.elapsed);
}

/// §14 fault: the mirror goes away after apt has its indexes; a peer that
/// holds the packages serves them alone.
#[test]
fn swarm_mirror_gone_peers_alone_serve() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let pkgs = ["small", "tiny", "libfoo1", "libstd++x1"];
    let a = Daemon::start_peer("127.0.0.51", &[mirror.port()], None, &[]);
    let boot = a.peer_addr();
    let b = Daemon::start_peer("127.0.0.52", &[mirror.port()], Some(boot), &[]);
    let ca = AptClient::new(repo, &mirror, Mode::Prefix(a.addr()));
    ca.update_and_fetch(repo, &pkgs, "A's client");

    let cb = AptClient::new(repo, &mirror, Mode::Prefix(b.addr()));
    let out = cb.update();
    cb.assert_update_verified(&out, "B's client (indexes from the mirror)");
    mirror.set_down(true);
    let before = mirror.stats();
    let out = cb.download_only(&pkgs);
    assert!(
        out.success(),
        "B's client with the mirror down\n{}\n{:#}",
        out.combined(),
        b.status_json()
    );
    if let Err(e) = cb.verify_archives(repo, &pkgs) {
        panic!("{e}");
    }
    assert_eq!(mirror.stats().pool_bytes, before.pool_bytes);
    let v = b.status_json();
    assert!(
        num(&v["bytes_from_peers"]) >= sizes(repo, &pkgs),
        "B got the packages from A: {v:#}"
    );
    eprintln!("B's client with the mirror down: {:.1?}", out.elapsed);
}

/// Reads frames for `within`: the first `dt_who` answer that comes (its
/// SHA-256 and peers), or None.
async fn who_answer(
    p: &mut RawPeer,
    within: Duration,
) -> Result<Option<([u8; 32], Vec<SocketAddr>)>, String> {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let f = match p.frame(left).await {
            Ok(f) => f,
            Err(End::Timeout) => return Ok(None),
            Err(End::Closed(e)) => return Err(format!("the daemon closed the connection: {e}")),
        };
        if let Msg::Extended {
            id: TEST_WHO_ID,
            payload,
        } = decode_frame(&f)
        {
            match wire::Who::decode(payload) {
                Ok(wire::Who::Answer { sha256, peers }) => return Ok(Some((sha256, peers))),
                Ok(q) => return Err(format!("the daemon asked us instead: {q:?}")),
                Err(e) => return Err(format!("the daemon's dt_who: {e}")),
            }
        }
    }
}

/// `docs/torrent-format.md` §7.6: a `dt_who` question that none of the
/// daemon's peers can answer yet is kept, and answered unasked as soon as
/// a peer that holds the content connects. (Two newcomers that want a new
/// file at once and are not connected to each other learn of each other's
/// mirror run this way, through a common neighbour.) The same holds for
/// content the daemon's own index does not list (a newer index version's
/// file): a daemon on the older version still names who holds it.
#[test]
fn swarm_who_question_is_answered_once_a_holder_comes() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let d = Daemon::start_peer("127.0.0.161", &[mirror.port()], None, &[]);
    let apt = AptClient::new(repo, &mirror, Mode::Prefix(d.addr()));
    let out = apt.update();
    apt.assert_update_verified(&out, "the daemon's client");
    let ih = info_hash(&d);
    let to = d.peer_addr();
    let (n, sha) = hold_all(repo)[0];
    type Answers = (Vec<SocketAddr>, Vec<SocketAddr>);
    let res: Result<Answers, String> = rt().block_on(async move {
        let mut asker = join_swarm_as("127.0.0.162", to, ih, 162, Vec::new(), true).await?;
        if asker.who_id == 0 {
            return Err("the daemon offers no dt_who".to_string());
        }
        let q = wire::Who::Query(vec![sha]).encode();
        let id = asker.who_id;
        asker
            .send_msgs(&[Msg::Extended { id, payload: &q }])
            .await
            .map_err(|e| format!("send dt_who: {e}"))?;
        // Nobody holds it yet: no answer.
        if let Some(a) = who_answer(&mut asker, Duration::from_millis(700)).await? {
            return Err(format!("answered before any holder came: {a:?}"));
        }
        let _holder = join_swarm("127.0.0.163", to, ih, 163, vec![(n, sha)]).await?;
        let listed = match who_answer(&mut asker, Duration::from_secs(4)).await? {
            Some((h, peers)) if h == sha => peers,
            other => {
                return Err(format!(
                    "no answer for the content within 4 s of its holder coming: {other:?}"
                ))
            }
        };
        // A file the daemon's index does not list.
        let newer = [0x5a; 32];
        let q = wire::Who::Query(vec![newer]).encode();
        asker
            .send_msgs(&[Msg::Extended { id, payload: &q }])
            .await
            .map_err(|e| format!("send dt_who: {e}"))?;
        if let Some(a) = who_answer(&mut asker, Duration::from_millis(500)).await? {
            return Err(format!(
                "answered before any holder of the newer file came: {a:?}"
            ));
        }
        let _newer_holder = join_swarm("127.0.0.164", to, ih, 164, vec![(9, newer)]).await?;
        match who_answer(&mut asker, Duration::from_secs(4)).await? {
            Some((h, peers)) if h == newer => Ok((listed, peers)),
            other => Err(format!(
                "no answer for the unlisted file within 4 s of its holder coming: {other:?}"
            )),
        }
    });
    let (listed, unlisted) = res.unwrap_or_else(|e| panic!("{e}\n{:#}", d.status_json()));
    let holder = SocketAddr::from(([127, 0, 0, 163], 6999));
    assert_eq!(
        listed,
        vec![holder],
        "the answer names the holder where it listens"
    );
    let newer_holder = SocketAddr::from(([127, 0, 0, 164], 6999));
    assert_eq!(
        unlisted,
        vec![newer_holder],
        "the answer for the unlisted file names its holder"
    );
}

/// §9/§14 limits, with raw peers each from its own loopback address: an
/// oversize frame, handshakes that never complete, requests outside the
/// piece or above 16 KiB, and a third connection from one IP.
#[test]
fn swarm_protocol_limits_close_hostile_connections() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let d = Daemon::start_peer("127.0.0.61", &[mirror.port()], None, &[]);
    let apt = AptClient::new(repo, &mirror, Mode::Prefix(d.addr()));
    apt.update_and_fetch(repo, &["small"], "update + small");
    let ih = info_hash(&d);
    let to = d.peer_addr();

    let results: Vec<(&str, Result<String, String>)> = rt().block_on(async move {
        let oversize = async {
            let mut p = join_swarm("127.0.0.62", to, ih, 62, Vec::new()).await?;
            p.stays_open(Duration::from_millis(500))
                .await
                .map_err(|e| format!("closed before the bad frame: {e}"))?;
            // An EXTENDED frame announcing 1 GiB, and a little of its body.
            let mut bad = (1u32 << 30).to_be_bytes().to_vec();
            bad.push(20);
            bad.extend_from_slice(&[0u8; 1000]);
            let _ = p.send(&bad).await;
            match p.closed_within(Duration::from_secs(5)).await {
                Some(t) => Ok(format!("closed after {t:?}")),
                None => Err("still open 5 s after a 1 GiB length prefix".to_string()),
            }
        };
        let partial_handshake = async {
            let mut p = RawPeer::connect("127.0.0.63", to)
                .await
                .map_err(|e| e.to_string())?;
            let hs = Handshake::new(ih, test_peer_id(63)).encode();
            p.send(&hs[..30]).await.map_err(|e| e.to_string())?;
            match p.closed_within(Duration::from_secs(15)).await {
                Some(t) => Ok(format!("closed after {t:?}")),
                None => Err("30 bytes of a handshake: still open after 15 s".to_string()),
            }
        };
        let silent = async {
            let mut p = RawPeer::connect("127.0.0.64", to)
                .await
                .map_err(|e| e.to_string())?;
            match p.closed_within(Duration::from_secs(15)).await {
                Some(t) => Ok(format!("closed after {t:?}")),
                None => Err("a connection that sends nothing: still open after 15 s".to_string()),
            }
        };
        let no_extended_handshake = async {
            let mut p = RawPeer::connect("127.0.0.65", to)
                .await
                .map_err(|e| e.to_string())?;
            p.send(&Handshake::new(ih, test_peer_id(65)).encode())
                .await
                .map_err(|e| e.to_string())?;
            p.read_handshake(Duration::from_secs(5))
                .await
                .map_err(|e| format!("the daemon's handshake: {e:?}"))?;
            match p.closed_within(Duration::from_secs(15)).await {
                Some(t) => Ok(format!("closed after {t:?}")),
                None => Err(
                    "BitTorrent handshake but no extended handshake: still open after 15 s"
                        .to_string(),
                ),
            }
        };
        let beyond_piece = async {
            let mut p = join_swarm("127.0.0.66", to, ih, 66, Vec::new()).await?;
            // The daemon's number for what it holds (the package "small").
            let held = daemon_hold(&mut p, Duration::from_secs(5)).await?;
            let &(index, _) = held
                .add
                .first()
                .ok_or_else(|| format!("the daemon announced nothing: {held:?}"))?;
            p.stays_open(Duration::from_millis(500))
                .await
                .map_err(|e| format!("closed before the bad request: {e}"))?;
            p.send_msgs(&[Msg::Request(wire::BlockRef {
                index,
                begin: 0x7fff_c000,
                length: wire::BLOCK,
            })])
            .await
            .map_err(|e| e.to_string())?;
            match p.closed_within(Duration::from_secs(5)).await {
                Some(t) => Ok(format!("closed after {t:?}")),
                None => Err("still open 5 s after a request 2 GiB into piece 0".to_string()),
            }
        };
        let huge_block = async {
            let mut p = join_swarm("127.0.0.67", to, ih, 67, Vec::new()).await?;
            p.stays_open(Duration::from_millis(500))
                .await
                .map_err(|e| format!("closed before the bad request: {e}"))?;
            // wire::encode writes it as given; the daemon's decoder must refuse it.
            p.send_msgs(&[Msg::Request(wire::BlockRef {
                index: 0,
                begin: 0,
                length: 1 << 20,
            })])
            .await
            .map_err(|e| e.to_string())?;
            match p.closed_within(Duration::from_secs(5)).await {
                Some(t) => Ok(format!("closed after {t:?}")),
                None => Err("still open 5 s after a request for a 1 MiB block".to_string()),
            }
        };
        let third_from_one_ip = async {
            let mut a = join_swarm("127.0.0.68", to, ih, 68, Vec::new()).await?;
            let mut b = join_swarm("127.0.0.68", to, ih, 69, Vec::new()).await?;
            let third = match join_swarm("127.0.0.68", to, ih, 70, Vec::new()).await {
                Err(e) => format!("refused: {e}"),
                Ok(mut c) => match c.closed_within(Duration::from_secs(5)).await {
                    Some(t) => format!("dropped after {t:?}"),
                    None => return Err("a third connection from one IP stayed open".to_string()),
                },
            };
            a.stays_open(Duration::from_millis(300))
                .await
                .map_err(|e| format!("the first connection from the IP closed: {e}"))?;
            b.stays_open(Duration::from_millis(300))
                .await
                .map_err(|e| format!("the second connection from the IP closed: {e}"))?;
            Ok(third)
        };
        // dt2: content is named in dt_hold, by each peer's own numbers.
        let unannounced = async {
            let mut p = join_swarm("127.0.0.69", to, ih, 71, Vec::new()).await?;
            p.stays_open(Duration::from_millis(500))
                .await
                .map_err(|e| format!("closed before the bad request: {e}"))?;
            p.send_msgs(&[Msg::Request(wire::BlockRef {
                index: 0x00ab_cdef,
                begin: 0,
                length: wire::BLOCK,
            })])
            .await
            .map_err(|e| e.to_string())?;
            match p.closed_within(Duration::from_secs(5)).await {
                Some(t) => Ok(format!("closed after {t:?}")),
                None => {
                    Err("still open 5 s after a request for content never announced".to_string())
                }
            }
        };
        let hold_over_limit = async {
            // 65,537 distinct entries: one more than a peer may announce.
            let many: Vec<(u32, [u8; 32])> = (0..65_537u32)
                .map(|n| {
                    let mut sha = [0x77u8; 32];
                    sha[..4].copy_from_slice(&n.to_be_bytes());
                    (n, sha)
                })
                .collect();
            let mut p = join_swarm("127.0.0.70", to, ih, 72, Vec::new()).await?;
            for chunk in many.chunks(wire::MAX_HOLD) {
                let h = wire::Hold {
                    add: chunk.to_vec(),
                    drop: Vec::new(),
                }
                .encode();
                let id = p.hold_id;
                if p.send_msgs(&[Msg::Extended { id, payload: &h }])
                    .await
                    .is_err()
                {
                    return Ok("closed while the entries were sent".to_string());
                }
            }
            match p.closed_within(Duration::from_secs(5)).await {
                Some(t) => Ok(format!("closed after {t:?}")),
                None => Err("still open 5 s after a dt_hold of 65,537 entries".to_string()),
            }
        };
        let numbered_have = async {
            let mut p = join_swarm("127.0.0.60", to, ih, 73, Vec::new()).await?;
            p.stays_open(Duration::from_millis(500))
                .await
                .map_err(|e| format!("closed before the HAVE: {e}"))?;
            p.send_msgs(&[Msg::Have(0)])
                .await
                .map_err(|e| e.to_string())?;
            match p.closed_within(Duration::from_secs(5)).await {
                Some(t) => Ok(format!("closed after {t:?}")),
                None => Err("still open 5 s after a HAVE (dt2 has no shared numbers)".to_string()),
            }
        };
        let (r1, r2, r3, r4, r5, r6, r7) = tokio::join!(
            Box::pin(oversize),
            Box::pin(partial_handshake),
            Box::pin(silent),
            Box::pin(no_extended_handshake),
            Box::pin(beyond_piece),
            Box::pin(huge_block),
            Box::pin(third_from_one_ip)
        );
        let (r8, r9, r10) = tokio::join!(
            Box::pin(unannounced),
            Box::pin(hold_over_limit),
            Box::pin(numbered_have)
        );
        vec![
            ("1 GiB frame", r1),
            ("partial handshake", r2),
            ("silent connection", r3),
            ("no extended handshake", r4),
            ("request beyond the piece", r5),
            ("1 MiB request", r6),
            ("third connection from one IP", r7),
            ("request for content not announced", r8),
            ("dt_hold over the limit", r9),
            ("HAVE with a piece number", r10),
        ]
    });
    let mut failed = Vec::new();
    for (what, r) in &results {
        eprintln!("{what}: {r:?}");
        if r.is_err() {
            failed.push(format!("{what}: {r:?}"));
        }
    }
    assert!(failed.is_empty(), "{failed:#?}");
    // The daemon is still fine.
    let apt2 = AptClient::new(repo, &mirror, Mode::Prefix(d.addr()));
    apt2.update_and_fetch(repo, &["small"], "a client after the hostile peers");
}

/// A running opentracker (Debian's, built with a whitelist); killed on drop.
struct OpenTracker {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for OpenTracker {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn start_opentracker(info_hash: &[u8; 20]) -> OpenTracker {
    let dir = tempfile::tempdir().expect("tempdir");
    let wl = dir.path().join("whitelist");
    let hex = crate::support::hex(info_hash);
    std::fs::write(&wl, format!("{hex}\n")).expect("whitelist");
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port();
    let child = std::process::Command::new("opentracker")
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
        .current_dir(dir.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("opentracker (apt-get install opentracker)");
    let t = OpenTracker {
        child,
        port,
        _dir: dir,
    };
    let addr: SocketAddr = ([127, 0, 0, 1], port).into();
    let start = Instant::now();
    while std::net::TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "opentracker did not listen"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    // It loads the whitelist in a background thread: give it a moment.
    std::thread::sleep(Duration::from_millis(500));
    t
}

/// The dt2 swarm id of the fixture's suite and component (its Release
/// says Origin `debtorrent-e2e`, Codename `stable`), as every daemon
/// derives it: what they announce to the tracker.
fn packages_swarm_id() -> [u8; 20] {
    debtorrent_gen::swarm_id(
        "debtorrent-e2e",
        crate::support::repo::SUITE,
        crate::support::repo::COMPONENT,
    )
    .0
}

/// Discovery through a tracker alone (no DHT): the daemons announce to a
/// real opentracker from their own addresses, and the second daemon's
/// client gets every package from the first daemon.
#[test]
fn swarm_tracker_alone_finds_peers() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let pkgs = ["small", "tiny", "libfoo1", "libstd++x1"];
    let tracker = start_opentracker(&packages_swarm_id());
    let url = format!("http://127.0.0.1:{}/announce", tracker.port);
    let args = ["--no-dht", "--no-lsd", "--tracker", url.as_str()];
    let a = Daemon::start_on(
        "127.0.0.61",
        &[mirror.port()],
        &[&["--peer-addr", "127.0.0.61:0"], &args[..]].concat(),
    );
    let b = Daemon::start_on(
        "127.0.0.62",
        &[mirror.port()],
        &[&["--peer-addr", "127.0.0.62:0"], &args[..]].concat(),
    );
    let ca = AptClient::new(repo, &mirror, Mode::Prefix(a.addr()));
    ca.update_and_fetch(repo, &pkgs, "A's client");
    let before = mirror.stats();
    let cb = AptClient::new(repo, &mirror, Mode::Prefix(b.addr()));
    cb.update_and_fetch(repo, &pkgs, "B's client");
    let after = mirror.stats();
    assert_eq!(
        after.pool_bytes,
        before.pool_bytes,
        "B's packages came from the mirror; B's status:\n{:#}",
        b.status_json()
    );
    let t = torrent(&b);
    let a_peer = a.peer_addr().to_string();
    assert!(
        t["discovered"]["tracker"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x.as_str() == Some(a_peer.as_str()))),
        "B did not learn A's address {a_peer} from the tracker: {t:#}"
    );
    assert!(num(&t["bytes_from_peers"]) >= sizes(repo, &pkgs), "{t:#}");
}

/// Issue 16, the peer port: a peer that requests a big file and never
/// reads what we send holds no slot for long. The daemon's writes stall
/// once the socket buffers are full, and it closes the connection about
/// 30 s later (`conn.rs`, `WRITE_STALL`), although the peer keeps sending
/// keep-alives.
#[test]
fn swarm_peer_that_never_reads_is_closed() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let d = Daemon::start_peer("127.0.0.35", &[mirror.port()], None, &[]);
    let apt = AptClient::new(repo, &mirror, Mode::Prefix(d.addr()));
    let big = crate::support::repo::BIG;
    apt.update_and_fetch(repo, &[big], "the daemon holds the big package");
    let ih = info_hash(&d);
    let to = d.peer_addr();
    let size = repo.big().size;
    let big_sha = repo.big().sha256.clone();
    let res: Result<Duration, String> = rt().block_on(async move {
        let mut p = join_swarm("127.0.0.36", to, ih, 36, Vec::new()).await?;
        // The first dt_hold lists what the daemon held when we came; the
        // big package may still have been on its way into the store (apt
        // got it before the fsync), and then a later one adds it.
        let deadline = Instant::now() + Duration::from_secs(10);
        let index = loop {
            let held = daemon_hold(&mut p, deadline.saturating_duration_since(Instant::now()))
                .await
                .map_err(|e| format!("the daemon did not announce the big package: {e}"))?;
            if let Some(&(index, _)) = held
                .add
                .iter()
                .find(|(_, sha)| crate::support::hex(sha) == big_sha)
            {
                break index;
            }
        };
        p.send_msgs(&[Msg::Interested])
            .await
            .map_err(|e| e.to_string())?;
        // Wait for the unchoke (the daemon has free upload slots).
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let f = p
                .frame(left)
                .await
                .map_err(|e| format!("no unchoke: {e:?}"))?;
            if matches!(decode_frame(&f), Msg::Unchoke) {
                break;
            }
        }
        // 1000 blocks (16 MB) of the big package, then never read again.
        let t0 = Instant::now();
        let blocks = (size / u64::from(wire::BLOCK)).min(1000);
        for b in 0..blocks {
            let m = Msg::Request(wire::BlockRef {
                index,
                begin: (b * u64::from(wire::BLOCK)) as u32,
                length: wire::BLOCK,
            });
            if p.send_msgs(&[m]).await.is_err() {
                return Ok(t0.elapsed());
            }
        }
        // Keep-alives only, never a read, until the daemon closes.
        let mut s = p.s;
        loop {
            if t0.elapsed() > Duration::from_secs(90) {
                return Err("still open after 90 s".to_string());
            }
            tokio::time::sleep(Duration::from_secs(2)).await;
            if s.write_all(&[0, 0, 0, 0]).await.is_err() {
                return Ok(t0.elapsed());
            }
        }
    });
    let took = res.unwrap_or_else(|e| panic!("{e}\n{:#}", d.status_json()));
    eprintln!("a peer that never reads was closed after {took:.1?}");
    assert!(took < Duration::from_secs(60), "{took:?}");
    // The daemon still serves.
    let apt2 = AptClient::new(repo, &mirror, Mode::Prefix(d.addr()));
    apt2.update_and_fetch(repo, &["small"], "a client afterwards");
}

/// Issue 16, the peer port: slow handshakes cannot keep a good peer out.
/// A (`--max-peers 16`) has every slot taken by connections from 8
/// addresses that send 30 bytes of a handshake and then nothing
/// (reconnecting when closed); B's client still gets every package from A,
/// not from the mirror: the handshake in progress for longest gives its
/// slot up to a new connection.
#[test]
fn swarm_slow_handshakes_cannot_keep_a_good_peer_out() {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let pkgs = ["small", "tiny", "libfoo1"];
    let a = Daemon::start_peer("127.0.0.39", &[mirror.port()], None, &["--max-peers", "16"]);
    let ca = AptClient::new(repo, &mirror, Mode::Prefix(a.addr()));
    ca.update_and_fetch(repo, &pkgs, "A's client");
    let ih = info_hash(&a);
    let to = a.peer_addr();
    let stop = Arc::new(AtomicBool::new(false));
    let stop2 = stop.clone();
    let attack = std::thread::spawn(move || {
        rt().block_on(async move {
            let mut tasks = Vec::new();
            for i in 0..16u8 {
                let stop = stop2.clone();
                tasks.push(tokio::spawn(async move {
                    let src = format!("127.0.2.{}", 10 + i / 2);
                    let end = Instant::now() + Duration::from_secs(90);
                    while !stop.load(Ordering::Relaxed) && Instant::now() < end {
                        let Ok(mut p) = RawPeer::connect(&src, to).await else {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                            continue;
                        };
                        let hs = Handshake::new(ih, test_peer_id(100 + i)).encode();
                        let _ = p.send(&hs[..30]).await;
                        let _ = p.closed_within(Duration::from_secs(30)).await;
                    }
                }));
            }
            for t in tasks {
                let _ = t.await;
            }
        })
    });
    // Let the slow handshakes take every slot.
    std::thread::sleep(Duration::from_secs(3));
    let b = Daemon::start_peer("127.0.0.40", &[mirror.port()], Some(to), &[]);
    let before = mirror.stats();
    let cb = AptClient::new(repo, &mirror, Mode::Prefix(b.addr()));
    let t0 = Instant::now();
    cb.update_and_fetch(repo, &pkgs, "B's client while A's slots are held");
    let took = t0.elapsed();
    let after = mirror.stats();
    stop.store(true, Ordering::Relaxed);
    let _ = attack.join();
    let st = b.status_json();
    eprintln!(
        "B with A's slots held by slow handshakes: {took:.1?}, pool bytes from the mirror {}, \
         from peers {}",
        after.pool_bytes - before.pool_bytes,
        st["bytes_from_peers"]
    );
    assert_eq!(
        after.pool_bytes,
        before.pool_bytes,
        "B went to the mirror: A's slots kept it out\nB: {st:#}\nA: {:#}",
        a.status_json()
    );
}
