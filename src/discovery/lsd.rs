//! Local Service Discovery (BEP 14): `BT-SEARCH` messages on the multicast
//! groups 239.192.152.143:6771 (IPv4) and [ff15::efc0:988f]:6771 (IPv6).
//!
//! Pure parts: the codec ([`encode_search`], [`parse_search`]) and the send
//! schedule ([`Schedule`]: 1 message per torrent per minute at most, an
//! announce of every held torrent every 5 minutes). The socket task at the
//! bottom only moves bytes between them.
//!
//! Multicast is not loopback traffic: tests drive the socket task with
//! unicast addresses on 127.0.0.0/8 instead of the group ([`LsdNet`]).

use crate::types::InfoHash;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tracing::Instrument;

use super::{Emitter, Origin};

/// The BEP 14 IPv4 multicast group.
pub const GROUP: Ipv4Addr = Ipv4Addr::new(239, 192, 152, 143);
/// The BEP 14 IPv6 multicast group (site-local scope).
pub const GROUP6: Ipv6Addr = Ipv6Addr::new(0xff15, 0, 0, 0, 0, 0, 0xefc0, 0x988f);
/// The BEP 14 port.
pub const PORT: u16 = 6771;
/// Largest datagram read; BEP 14 asks senders to stay under 1400 bytes.
pub const MAX_MSG: usize = 2048;
/// Info hashes per message we send (50 bytes a line: about 1.1 KB).
pub const MAX_HASHES_PER_MSG: usize = 20;
/// Info hashes accepted from one message.
const MAX_HASHES_IN: usize = 64;
/// At most one message naming a torrent per this long.
pub const RATE: Duration = Duration::from_secs(60);
/// Torrents we hold are announced this often.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(5 * 60);
/// A torrent we only searched for is remembered (its answers accepted)
/// this long after our last message.
pub const SEARCH_MEMORY: Duration = Duration::from_secs(10 * 60);

/// A parsed `BT-SEARCH` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Search {
    pub port: u16,
    pub info_hashes: Vec<InfoHash>,
    pub cookie: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LsdError {
    #[error("message longer than {MAX_MSG} bytes")]
    TooLong,
    #[error("not a BT-SEARCH message")]
    NotSearch,
    #[error("malformed header line")]
    BadHeader,
    #[error("missing or invalid Port")]
    BadPort,
    #[error("invalid Infohash")]
    BadInfohash,
    #[error("no Infohash")]
    NoInfohash,
}

/// Encode one `BT-SEARCH` message to `host` (the group it is sent to,
/// `239.192.152.143:6771` or `[ff15::efc0:988f]:6771`) naming
/// `info_hashes` (the caller keeps it under [`MAX_HASHES_PER_MSG`]).
pub fn encode_search(
    host: SocketAddr,
    port: u16,
    info_hashes: &[InfoHash],
    cookie: &str,
) -> Vec<u8> {
    let mut s = format!("BT-SEARCH * HTTP/1.1\r\nHost: {host}\r\nPort: {port}\r\n");
    for ih in info_hashes {
        s.push_str("Infohash: ");
        s.push_str(&ih.to_hex());
        s.push_str("\r\n");
    }
    if !cookie.is_empty() {
        s.push_str("cookie: ");
        s.push_str(cookie);
        s.push_str("\r\n");
    }
    s.push_str("\r\n\r\n");
    s.into_bytes()
}

/// 40 hex digits, through the workspace's one strict decoder (no sign, no
/// space, either case).
fn parse_hash(v: &str) -> Option<InfoHash> {
    InfoHash::from_hex(v)
}

/// Parse a `BT-SEARCH` message. Header names are case-insensitive, lines
/// may end in CRLF or LF, unknown headers are ignored, repeated info
/// hashes are kept once.
pub fn parse_search(msg: &[u8]) -> Result<Search, LsdError> {
    if msg.len() > MAX_MSG {
        return Err(LsdError::TooLong);
    }
    let text = std::str::from_utf8(msg).map_err(|_| LsdError::NotSearch)?;
    let mut lines = text.split('\n').map(|l| l.strip_suffix('\r').unwrap_or(l));
    if lines.next() != Some("BT-SEARCH * HTTP/1.1") {
        return Err(LsdError::NotSearch);
    }
    let (mut port, mut hashes, mut cookie) = (None, Vec::new(), None);
    for line in lines {
        if line.is_empty() {
            break;
        }
        let (name, value) = line.split_once(':').ok_or(LsdError::BadHeader)?;
        let value = value.trim();
        match name.trim().to_ascii_lowercase().as_str() {
            "port" => {
                // Digits only: `u16::from_str` would take a leading `+`.
                port = Some(
                    Some(value)
                        .filter(|v| !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()))
                        .and_then(|v| v.parse::<u16>().ok())
                        .filter(|&p| p != 0)
                        .ok_or(LsdError::BadPort)?,
                )
            }
            "infohash" => {
                let h = parse_hash(value).ok_or(LsdError::BadInfohash)?;
                if !hashes.contains(&h) && hashes.len() < MAX_HASHES_IN {
                    hashes.push(h);
                }
            }
            "cookie" => cookie = Some(value.to_string()),
            _ => {}
        }
    }
    let port = port.ok_or(LsdError::BadPort)?;
    if hashes.is_empty() {
        return Err(LsdError::NoInfohash);
    }
    Ok(Search {
        port,
        info_hashes: hashes,
        cookie,
    })
}

#[derive(Debug, Default)]
struct Entry {
    announced: bool,
    wanted: bool,
    last_sent: Option<Instant>,
}

/// Which torrents the next message names. Pure: time comes in as `now`.
#[derive(Debug, Default)]
pub struct Schedule {
    entries: HashMap<InfoHash, Entry>,
}

impl Schedule {
    /// We hold this torrent: name it now (rate permitting) and every
    /// [`ANNOUNCE_EVERY`].
    pub fn announce(&mut self, ih: InfoHash) {
        let e = self.entries.entry(ih).or_default();
        e.announced = true;
        e.wanted = true;
    }
    pub fn forget(&mut self, ih: InfoHash) {
        self.entries.remove(&ih);
    }
    /// Name this torrent once, as soon as the rate allows.
    pub fn search(&mut self, ih: InfoHash) {
        self.entries.entry(ih).or_default().wanted = true;
    }
    /// Whether answers about this torrent interest us.
    pub fn knows(&self, ih: &InfoHash) -> bool {
        self.entries.contains_key(ih)
    }
    pub fn is_announced(&self, ih: &InfoHash) -> bool {
        self.entries.get(ih).is_some_and(|e| e.announced)
    }
    /// The torrents to name now; marks them sent.
    pub fn due(&mut self, now: Instant) -> Vec<InfoHash> {
        let since = |t: Option<Instant>| t.map(|t| now.saturating_duration_since(t));
        let mut out = Vec::new();
        self.entries.retain(|ih, e| {
            let age = since(e.last_sent);
            let rate_ok = age.is_none_or(|a| a >= RATE);
            let periodic = e.announced && age.is_none_or(|a| a >= ANNOUNCE_EVERY);
            if rate_ok && (e.wanted || periodic) {
                out.push(*ih);
                e.last_sent = Some(now);
                e.wanted = false;
                return true;
            }
            e.announced || e.wanted || age.is_some_and(|a| a < SEARCH_MEMORY)
        });
        out.sort_unstable();
        out
    }
}

/// Whether a message from `ip` may name a peer. BEP 14 is for the local
/// network: multicast with TTL 1 never crosses a router, so a message from
/// a public address is forged or misrouted, and dialling it would let
/// anyone who can reach port 6771 point us at any host. Accepted: private
/// (RFC 1918), shared (RFC 6598, 100.64/10), link-local and loopback IPv4;
/// unique-local (fc00::/7), link-local and loopback IPv6.
pub fn is_local_source(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => {
            let o = a.octets();
            a.is_private()
                || a.is_link_local()
                || a.is_loopback()
                || (o[0] == 100 && (o[1] & 0xc0) == 64)
        }
        IpAddr::V6(a) => {
            if let Some(v4) = a.to_ipv4_mapped() {
                return is_local_source(IpAddr::V4(v4));
            }
            let s0 = a.segments()[0];
            a.is_loopback() || (s0 & 0xffc0) == 0xfe80 || (s0 & 0xfe00) == 0xfc00
        }
    }
}

/// Messages read per second from one address; more are dropped unread.
pub const IN_PER_SOURCE: u32 = 4;
/// Messages read per second from all addresses together.
pub const IN_TOTAL: u32 = 32;
/// Addresses tracked per second (a flood from many addresses hits
/// [`IN_TOTAL`] first; this bounds the map).
const IN_SOURCES: usize = 256;

/// The inbound rate limit: a flood of LSD messages costs a counter check
/// each, and at most [`IN_TOTAL`] a second reach the parser and the swarm.
/// Pure: time comes in as `now`.
#[derive(Debug, Default)]
pub struct InboundLimit {
    window: Option<Instant>,
    total: u32,
    per_source: HashMap<IpAddr, u32>,
    /// Messages dropped since start (for the log).
    pub dropped: u64,
}

impl InboundLimit {
    /// Whether a message from `ip` arriving at `now` is read.
    pub fn allow(&mut self, ip: IpAddr, now: Instant) -> bool {
        if self
            .window
            .is_none_or(|w| now.saturating_duration_since(w) >= Duration::from_secs(1))
        {
            self.window = Some(now);
            self.total = 0;
            self.per_source.clear();
        }
        let full = self.per_source.len() >= IN_SOURCES && !self.per_source.contains_key(&ip);
        let n = self.per_source.get(&ip).copied().unwrap_or(0);
        if self.total >= IN_TOTAL || full || n >= IN_PER_SOURCE {
            self.dropped += 1;
            return false;
        }
        self.per_source.insert(ip, n + 1);
        self.total += 1;
        true
    }
}

/// Commands from [`super::Discovery`] to the socket task.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Cmd {
    Announce(InfoHash),
    Forget(InfoHash),
    Search(InfoHash),
}

/// One way the socket task listens and sends: IPv4 or IPv6.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LsdPath {
    /// Where the receiving socket is bound.
    pub bind: SocketAddr,
    /// Where messages go: the group, or a unicast address in tests.
    pub dest: SocketAddr,
    /// Group membership and the sending side; `None`: plain unicast.
    pub multicast: Option<Multicast>,
}

/// How a path joins its group and sends to it.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Multicast {
    /// Join [`GROUP`] on this interface address (UNSPECIFIED: the
    /// kernel's choice), and send from it: IPv4 picks the source address
    /// from the multicast interface.
    V4 { iface: Ipv4Addr },
    /// Join [`GROUP6`] (interface index 0: the kernel's choice by route)
    /// and send from a second socket bound to `send_from`, since IPv6 picks
    /// the source address by its own rules and the receivers dial the
    /// source address of the message (UNSPECIFIED: the kernel's choice,
    /// fine when we listen on every address).
    V6 { send_from: Ipv6Addr },
}

/// Where the socket task listens and sends: one path per address family.
#[derive(Debug, Clone)]
pub(crate) struct LsdNet {
    pub paths: Vec<LsdPath>,
}

impl LsdNet {
    /// BEP 14 for a peer address: IPv4 for an IPv4 address, IPv6
    /// ([`GROUP6`]) for an IPv6 one, both for an unspecified address (the
    /// peer port then listens on both families).
    pub(crate) fn standard(peer_addr: SocketAddr) -> LsdNet {
        let v4 = |iface: Ipv4Addr| LsdPath {
            bind: SocketAddr::from((Ipv4Addr::UNSPECIFIED, PORT)),
            dest: SocketAddr::from((GROUP, PORT)),
            multicast: Some(Multicast::V4 { iface }),
        };
        let v6 = |send_from: Ipv6Addr| LsdPath {
            bind: SocketAddr::from((Ipv6Addr::UNSPECIFIED, PORT)),
            dest: SocketAddr::from((GROUP6, PORT)),
            multicast: Some(Multicast::V6 { send_from }),
        };
        let paths = match peer_addr.ip() {
            IpAddr::V4(a) if a.is_unspecified() => vec![v4(a), v6(Ipv6Addr::UNSPECIFIED)],
            IpAddr::V6(a) if a.is_unspecified() => vec![v4(Ipv4Addr::UNSPECIFIED), v6(a)],
            IpAddr::V4(a) => vec![v4(a)],
            IpAddr::V6(a) => vec![v6(a)],
        };
        LsdNet { paths }
    }
}

/// A path's sockets: where it receives, and where it sends from (the same
/// socket, except for IPv6 multicast from a given address).
struct Bound {
    recv: Arc<tokio::net::UdpSocket>,
    send: Arc<tokio::net::UdpSocket>,
    dest: SocketAddr,
}

fn udp_socket(bind: SocketAddr, reuse: bool) -> std::io::Result<std::net::UdpSocket> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let family = match bind {
        SocketAddr::V4(_) => AddressFamily::INET,
        SocketAddr::V6(_) => AddressFamily::INET6,
    };
    let fd = rustix::net::socket(family, SocketType::DGRAM, None)?;
    if bind.is_ipv6() {
        // `[::]:6771` beside the IPv4 socket on `0.0.0.0:6771`.
        sockopt::set_ipv6_v6only(&fd, true)?;
    }
    if reuse {
        // Other BitTorrent clients on this host listen on 6771 too.
        sockopt::set_socket_reuseaddr(&fd, true)?;
    }
    rustix::net::bind(&fd, &bind)?;
    let sock = std::net::UdpSocket::from(fd);
    sock.set_nonblocking(true)?;
    Ok(sock)
}

fn bind(path: &LsdPath) -> std::io::Result<Bound> {
    use rustix::net::sockopt;
    let sock = udp_socket(path.bind, true)?;
    let mut send = None;
    match path.multicast {
        None => {}
        Some(Multicast::V4 { iface }) => {
            if let Err(e) = sock.join_multicast_v4(&GROUP, &iface) {
                tracing::warn!(error = %e, %iface, "LSD: cannot join the IPv4 multicast group");
            }
            if !iface.is_unspecified() {
                if let Err(e) = sockopt::set_ip_multicast_if(&sock, &iface) {
                    tracing::debug!(error = %e, %iface, "LSD: cannot set the multicast interface");
                }
            }
            let _ = sock.set_multicast_ttl_v4(1);
            let _ = sock.set_multicast_loop_v4(true);
        }
        Some(Multicast::V6 { send_from }) => {
            // No IPv6 group membership means no IPv6 LSD (the IPv4 path
            // may still run): an error, unlike IPv4 where a host without a
            // multicast route still hears unicast answers.
            sock.join_multicast_v6(&GROUP6, 0)?;
            let from = if send_from.is_unspecified() {
                &sock
            } else {
                send = Some(udp_socket(SocketAddr::from((send_from, 0)), false)?);
                send.as_ref().unwrap_or(&sock)
            };
            let _ = sockopt::set_ipv6_multicast_hops(from, 1);
            let _ = from.set_multicast_loop_v6(true);
        }
    }
    let recv = Arc::new(tokio::net::UdpSocket::from_std(sock)?);
    let send = match send {
        Some(s) => Arc::new(tokio::net::UdpSocket::from_std(s)?),
        None => recv.clone(),
    };
    Ok(Bound {
        recv,
        send,
        dest: path.dest,
    })
}

/// Bind the sockets and start the task. A path that cannot bind is a
/// warning (the others run); with none, the daemon runs without LSD.
pub(crate) fn start(
    net: LsdNet,
    our_port: u16,
    emit: Emitter,
) -> Option<(mpsc::UnboundedSender<Cmd>, tokio::task::JoinHandle<()>)> {
    let mut bound = Vec::new();
    for path in &net.paths {
        match bind(path) {
            Ok(b) => bound.push(b),
            Err(e) => {
                tracing::warn!(error = %e, bind = %path.bind, dest = %path.dest, "LSD: this path is off")
            }
        }
    }
    if bound.is_empty() {
        tracing::warn!("LSD disabled: no socket could be bound");
        return None;
    }
    let (tx, rx) = mpsc::unbounded_channel();
    let cookie = format!("dt{:016x}", fastrand::u64(..));
    let task =
        tokio::spawn(run(bound, our_port, cookie, rx, emit).instrument(tracing::info_span!("lsd")));
    Some((tx, task))
}

/// Reads one socket: each datagram passes the shared inbound limit before
/// it is copied, then goes to the task's loop.
async fn read_socket(
    sock: Arc<tokio::net::UdpSocket>,
    limit: Arc<std::sync::Mutex<InboundLimit>>,
    out: mpsc::Sender<(Vec<u8>, SocketAddr)>,
) {
    let mut buf = vec![0u8; MAX_MSG + 1];
    let mut told_flood = false;
    loop {
        let (n, from) = match sock.recv_from(&mut buf).await {
            Ok(x) => x,
            Err(e) => {
                tracing::debug!(error = %e, "LSD recv");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let from = SocketAddr::new(from.ip().to_canonical(), from.port());
        let allowed = limit
            .lock()
            .map(|mut l| l.allow(from.ip(), Instant::now()))
            .unwrap_or(false);
        if !allowed {
            if !told_flood {
                tracing::info!(%from, "LSD: more messages than the rate limit; dropping the excess");
                told_flood = true;
            }
            continue;
        }
        let msg = buf.get(..n).unwrap_or_default().to_vec();
        if out.send((msg, from)).await.is_err() {
            return;
        }
    }
}

async fn run(
    bound: Vec<Bound>,
    our_port: u16,
    cookie: String,
    mut rx: mpsc::UnboundedReceiver<Cmd>,
    emit: Emitter,
) {
    let mut sched = Schedule::default();
    let mut tick = tokio::time::interval(Duration::from_secs(5));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut send_errors = 0u32;
    let limit = Arc::new(std::sync::Mutex::new(InboundLimit::default()));
    let mut told_foreign = false;
    // The readers end with this task (a JoinSet aborts its tasks on drop).
    let mut readers = tokio::task::JoinSet::new();
    let (in_tx, mut in_rx) = mpsc::channel(IN_TOTAL as usize);
    for b in &bound {
        readers.spawn(read_socket(b.recv.clone(), limit.clone(), in_tx.clone()).in_current_span());
    }
    drop(in_tx);
    loop {
        tokio::select! {
            cmd = rx.recv() => match cmd {
                None => return,
                Some(Cmd::Announce(ih)) => sched.announce(ih),
                Some(Cmd::Forget(ih)) => { sched.forget(ih); continue; }
                Some(Cmd::Search(ih)) => sched.search(ih),
            },
            got = in_rx.recv() => {
                let Some((msg, from)) = got else { return };
                if !is_local_source(from.ip()) {
                    if !told_foreign {
                        tracing::info!(%from, "LSD: ignoring messages from non-local addresses");
                        told_foreign = true;
                    }
                    continue;
                }
                let s = match parse_search(&msg) {
                    Ok(s) => s,
                    Err(e) => { tracing::trace!(%from, error = %e, "LSD: ignored"); continue; }
                };
                if s.cookie.as_deref() == Some(cookie.as_str()) {
                    continue;
                }
                let addr = SocketAddr::new(from.ip(), s.port);
                for ih in s.info_hashes {
                    if sched.knows(&ih) {
                        emit.peer(ih, addr, Origin::Lsd).await;
                    }
                    // Answer a search for a torrent we hold with our own
                    // announce (the rate limit keeps this from echoing).
                    if sched.is_announced(&ih) {
                        sched.search(ih);
                    }
                }
            }
            _ = tick.tick() => {}
        }
        for chunk in sched.due(Instant::now()).chunks(MAX_HASHES_PER_MSG) {
            for b in &bound {
                let msg = encode_search(b.dest, our_port, chunk, &cookie);
                if let Err(e) = b.send.send_to(&msg, b.dest).await {
                    send_errors += 1;
                    if send_errors == 1 {
                        tracing::warn!(error = %e, dest = %b.dest, "LSD: send failed");
                    } else {
                        tracing::debug!(error = %e, dest = %b.dest, "LSD: send failed");
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const G4: SocketAddr = SocketAddr::new(IpAddr::V4(GROUP), PORT);
    const G6: SocketAddr = SocketAddr::new(IpAddr::V6(GROUP6), PORT);

    /// Regression (found reading the fuzz target): `u8::from_str_radix`
    /// took a leading `+`, so `+a+b...` passed as an info hash.
    #[test]
    fn infohash_is_strict_hex() {
        let good = "ab".repeat(20);
        assert_eq!(parse_hash(&good), Some(InfoHash([0xab; 20])));
        assert_eq!(parse_hash(&good.to_uppercase()), Some(InfoHash([0xab; 20])));
        for bad in [
            "+a".repeat(20),
            " a".repeat(20),
            "ab".repeat(19),
            "zz".repeat(20),
        ] {
            assert_eq!(parse_hash(&bad), None, "{bad:?}");
        }
    }

    #[test]
    fn port_is_digits_only() {
        let msg = |port: &str| {
            format!(
                "BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: {port}\r\nInfohash: {}\r\n\r\n\r\n",
                "ab".repeat(20)
            )
        };
        assert_eq!(
            parse_search(msg("6881").as_bytes()).map(|s| s.port),
            Ok(6881)
        );
        for bad in ["+6881", "68 81", "", "0", "65536", "-1"] {
            assert!(parse_search(msg(bad).as_bytes()).is_err(), "{bad:?}");
        }
    }

    const A: InfoHash = InfoHash([0xab; 20]);
    const B: InfoHash = InfoHash([0x01; 20]);

    #[test]
    fn local_sources() {
        let cases = [
            ("10.1.2.3", true),
            ("172.16.0.1", true),
            ("172.32.0.1", false),
            ("192.168.1.9", true),
            ("100.64.0.1", true),
            ("100.128.0.1", false),
            ("169.254.3.4", true),
            ("127.0.0.71", true),
            ("8.8.8.8", false),
            ("11.2.3.4", false),
            ("fe80::1", true),
            ("fd00::5", true),
            ("::1", true),
            ("2001:db8::1", false),
            ("::ffff:192.168.1.2", true),
            ("::ffff:1.2.3.4", false),
        ];
        for (ip, want) in cases {
            assert_eq!(is_local_source(ip.parse().unwrap()), want, "{ip}");
        }
    }

    #[test]
    fn inbound_limit() {
        let t0 = Instant::now();
        let a: IpAddr = "10.0.0.1".parse().unwrap();
        let mut l = InboundLimit::default();
        let got: Vec<bool> = (0..6).map(|_| l.allow(a, t0)).collect();
        assert_eq!(got, [true, true, true, true, false, false], "per source");
        // A new second starts afresh.
        assert!(l.allow(a, t0 + Duration::from_millis(1000)));
        // Many sources: the total caps them.
        let mut l = InboundLimit::default();
        let allowed = (0..1000u32)
            .filter(|i| l.allow(IpAddr::from(std::net::Ipv4Addr::from(0x0a00_0000 + i)), t0))
            .count();
        assert_eq!(allowed, IN_TOTAL as usize);
        assert_eq!(l.dropped, 1000 - IN_TOTAL as u64);
    }

    #[test]
    fn encode_golden() {
        let m = encode_search(G4, 6881, &[A], "c1");
        let want = format!(
            "BT-SEARCH * HTTP/1.1\r\nHost: 239.192.152.143:6771\r\nPort: 6881\r\nInfohash: {}\r\ncookie: c1\r\n\r\n\r\n",
            "ab".repeat(20)
        );
        assert_eq!(String::from_utf8(m).unwrap(), want);
        let m6 = encode_search(G6, 6881, &[A], "");
        let want6 = format!(
            "BT-SEARCH * HTTP/1.1\r\nHost: [ff15::efc0:988f]:6771\r\nPort: 6881\r\nInfohash: {}\r\n\r\n\r\n",
            "ab".repeat(20)
        );
        assert_eq!(String::from_utf8(m6).unwrap(), want6);
        let big: Vec<InfoHash> = (0..MAX_HASHES_PER_MSG as u8)
            .map(|i| InfoHash([i; 20]))
            .collect();
        assert!(encode_search(G6, 65535, &big, "dt0123456789abcdef").len() <= 1400);
    }

    #[test]
    fn round_trip() {
        let m = encode_search(G4, 1234, &[A, B], "xyz");
        let s = parse_search(&m).unwrap();
        assert_eq!(
            s,
            Search {
                port: 1234,
                info_hashes: vec![A, B],
                cookie: Some("xyz".into())
            }
        );
        let s = parse_search(&encode_search(G6, 1, &[A], "")).unwrap();
        assert_eq!(s.cookie, None);
    }

    #[test]
    fn parse_table() {
        let h = "ab".repeat(20);
        let hu = "AB".repeat(20);
        let ok = |port: u16, hashes: Vec<InfoHash>, cookie: Option<&str>| {
            Ok(Search {
                port,
                info_hashes: hashes,
                cookie: cookie.map(String::from),
            })
        };
        let cases: Vec<(String, Result<Search, LsdError>)> = vec![
            // libtorrent's form, LF only, odd case, repeated hash
            (
                format!("BT-SEARCH * HTTP/1.1\nhost: x\nPORT: 7\ninfohash: {hu}\nInfohash: {h}\n\n"),
                ok(7, vec![A], None),
            ),
            (
                format!("BT-SEARCH * HTTP/1.1\r\nPort:  99 \r\nInfohash: {h}\r\nX-Other: y\r\ncookie: k\r\n\r\n"),
                ok(99, vec![A], Some("k")),
            ),
            // headers after the blank line are not read
            (
                format!("BT-SEARCH * HTTP/1.1\r\nPort: 9\r\n\r\nInfohash: {h}\r\n"),
                Err(LsdError::NoInfohash),
            ),
            (format!("BT-SEARCH * HTTP/1.1\r\nInfohash: {h}\r\n\r\n"), Err(LsdError::BadPort)),
            (format!("BT-SEARCH * HTTP/1.1\r\nPort: 0\r\nInfohash: {h}\r\n"), Err(LsdError::BadPort)),
            (format!("BT-SEARCH * HTTP/1.1\r\nPort: 70000\r\nInfohash: {h}\r\n"), Err(LsdError::BadPort)),
            (format!("BT-SEARCH * HTTP/1.1\r\nPort: -1\r\nInfohash: {h}\r\n"), Err(LsdError::BadPort)),
            ("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: abcd\r\n".into(), Err(LsdError::BadInfohash)),
            (
                format!("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: {}zz\r\n", "ab".repeat(19)),
                Err(LsdError::BadInfohash),
            ),
            // 40 bytes but a multi-byte character
            (
                format!("BT-SEARCH * HTTP/1.1\r\nPort: 1\r\nInfohash: é{}\r\n", "a".repeat(38)),
                Err(LsdError::BadInfohash),
            ),
            ("BT-SEARCH * HTTP/1.1\r\nPort 1\r\n".into(), Err(LsdError::BadHeader)),
            ("NOTIFY * HTTP/1.1\r\nPort: 1\r\n".into(), Err(LsdError::NotSearch)),
            ("M-SEARCH * HTTP/1.1\r\n\r\n".into(), Err(LsdError::NotSearch)),
            (String::new(), Err(LsdError::NotSearch)),
        ];
        for (msg, want) in cases {
            assert_eq!(parse_search(msg.as_bytes()), want, "{msg:?}");
        }
        // garbage
        assert_eq!(parse_search(&[0xff, 0xfe, 0]), Err(LsdError::NotSearch));
        assert_eq!(parse_search(&[b'B'; MAX_MSG + 1]), Err(LsdError::TooLong));
        let mut many = String::from("BT-SEARCH * HTTP/1.1\r\nPort: 5\r\n");
        for i in 0..30u8 {
            many.push_str(&format!(
                "Infohash: {}\r\n",
                debtorrent_gen::encode_hex(&[i; 20])
            ));
        }
        assert_eq!(parse_search(many.as_bytes()).unwrap().info_hashes.len(), 30);
        for seed in 0..200u64 {
            let mut rng = fastrand::Rng::with_seed(seed);
            let len = rng.usize(0..300);
            let junk: Vec<u8> = (0..len).map(|_| rng.u8(..)).collect();
            let _ = parse_search(&junk);
            let mut prefixed = b"BT-SEARCH * HTTP/1.1\r\n".to_vec();
            prefixed.extend_from_slice(&junk);
            let _ = parse_search(&prefixed);
        }
    }

    #[test]
    fn schedule_rate_and_period() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut sc = Schedule::default();
        assert!(sc.due(t0).is_empty());
        sc.announce(A);
        assert_eq!(sc.due(t0), vec![A]);
        assert!(sc.due(s(1)).is_empty(), "nothing new");
        // a search within the minute waits for the rate limit
        sc.search(A);
        sc.search(B);
        assert_eq!(sc.due(s(10)), vec![B]);
        assert!(sc.due(s(59)).is_empty());
        assert_eq!(sc.due(s(60)), vec![A], "the held-back search");
        // periodic announce after 5 min; B (search only) is not repeated
        assert!(sc.due(s(200)).is_empty());
        assert_eq!(sc.due(s(360)), vec![A]);
        assert!(sc.knows(&B));
        // a searched-only torrent is forgotten after SEARCH_MEMORY
        assert!(sc.due(s(10 + 600)).is_empty());
        assert!(!sc.knows(&B));
        assert!(sc.knows(&A));
        sc.forget(A);
        assert!(!sc.knows(&A));
        assert!(sc.due(s(2000)).is_empty());
    }

    /// The socket task with unicast addresses (multicast does not run on
    /// loopback): a search from one node makes the other report it as a
    /// peer. Over IPv4, and over IPv6 (`::1`), where the messages name the
    /// IPv6 group.
    #[tokio::test]
    async fn socket_task_unicast() {
        unicast_pair("127.0.0.51", "127.0.0.52").await;
        if std::net::UdpSocket::bind("[::1]:0").is_ok() {
            unicast_pair("::1", "::1").await;
        }
    }

    async fn unicast_pair(ip_a: &str, ip_b: &str) {
        let ip_a: IpAddr = ip_a.parse().unwrap();
        let ip_b: IpAddr = ip_b.parse().unwrap();
        let (tx_a, mut ev_a) = mpsc::channel(16);
        let (tx_b, mut ev_b) = mpsc::channel(16);
        let own_a = SocketAddr::new(ip_a, 7001);
        let own_b = SocketAddr::new(ip_b, 7002);
        // find two free UDP ports
        let pa = std::net::UdpSocket::bind((ip_a, 0)).unwrap();
        let pb = std::net::UdpSocket::bind((ip_b, 0)).unwrap();
        let (la, lb) = (pa.local_addr().unwrap(), pb.local_addr().unwrap());
        drop((pa, pb));
        let net = |bind, dest| LsdNet {
            paths: vec![LsdPath {
                bind,
                dest,
                multicast: None,
            }],
        };
        let (ca, _ta) = start(net(la, lb), 7001, Emitter::new(tx_a, own_a)).unwrap();
        let (cb, _tb) = start(net(lb, la), 7002, Emitter::new(tx_b, own_b)).unwrap();
        cb.send(Cmd::Announce(A)).unwrap();
        // B's announce reaches A, which does not know A yet: no event.
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(ev_a.try_recv().is_err());
        // A searches; B reports A and answers (its own announce was sent
        // just now, so the answer waits for the rate limit: not tested).
        ca.send(Cmd::Search(A)).unwrap();
        let ev = tokio::time::timeout(Duration::from_secs(5), ev_b.recv())
            .await
            .expect("B saw A's search")
            .unwrap();
        match ev {
            super::super::Event::Peer {
                info_hash,
                addr,
                source,
            } => {
                assert_eq!(
                    (info_hash, addr, source),
                    (A, SocketAddr::new(ip_a, 7001), Origin::Lsd)
                );
            }
            e => panic!("{e:?}"),
        }
    }

    #[test]
    fn standard_paths_follow_the_peer_address() {
        let kinds = |a: &str| -> Vec<(bool, String)> {
            LsdNet::standard(a.parse().unwrap())
                .paths
                .iter()
                .map(|p| (p.dest.is_ipv6(), format!("{:?}", p.multicast)))
                .collect()
        };
        assert_eq!(
            kinds("10.0.0.5:6881"),
            vec![(false, "Some(V4 { iface: 10.0.0.5 })".to_string())]
        );
        assert_eq!(
            kinds("[fd00::5]:6881"),
            vec![(true, "Some(V6 { send_from: fd00::5 })".to_string())]
        );
        for any in ["0.0.0.0:6881", "[::]:6881"] {
            let k = kinds(any);
            assert_eq!(k.len(), 2, "{any}");
            assert_eq!((k[0].0, k[1].0), (false, true), "{any}");
        }
    }
}
