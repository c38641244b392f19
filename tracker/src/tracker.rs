//! The tracker's policy: turns a request (HTTP query or UDP packet) and the
//! address it came from into a response, applying allowlists, trusted
//! proxies, numwant caps and limits, and updating the peer table. No
//! sockets here: the servers in `http_server` and `udp_server` pass bytes
//! and addresses in and send what comes out, so every rule is unit-tested
//! on plain values.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use hashbrown::HashSet;
use ipnet::IpNet;

use crate::connid::ConnectionIds;
use crate::http_proto::{self, AnnounceAnswer, RequestError, ScrapeEntry};
use crate::stats::{self, Counters, Rate, Snapshot};
use crate::swarm::{AnnounceOp, Families, PeerTable, TableLimits};
use crate::types::InfoHash;
use crate::udp_proto::{self, UdpRequest};

/// Policy settings (built from the binary's configuration).
#[derive(Debug, Clone)]
pub struct Policy {
    /// Announce interval sent to clients (seconds).
    pub interval: u32,
    /// `min interval` sent to clients (seconds).
    pub min_interval: u32,
    /// A peer that has not announced for this long is dropped (seconds).
    pub peer_timeout: u32,
    /// Peers returned when the client does not say.
    pub numwant_default: u32,
    /// Most peers returned, whatever the client asks.
    pub numwant_max: u32,
    /// Most info hashes in one HTTP scrape.
    pub max_scrape: usize,
    /// When set, only these torrents are tracked.
    pub allowed_hashes: Option<HashSet<InfoHash>>,
    /// When non-empty, only clients in these networks are served.
    pub allowed_networks: Vec<IpNet>,
    /// Requests from these networks may set the peer IP with `ip` or
    /// `X-Forwarded-For`.
    pub trusted_proxies: Vec<IpNet>,
    pub limits: TableLimits,
}

impl Default for Policy {
    fn default() -> Self {
        Policy {
            interval: 900,
            min_interval: 60,
            peer_timeout: 2 * 900 + 300,
            numwant_default: 50,
            numwant_max: 200,
            max_scrape: 64,
            allowed_hashes: None,
            allowed_networks: Vec::new(),
            trusted_proxies: Vec::new(),
            limits: TableLimits::default(),
        }
    }
}

/// An HTTP response body with its status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HttpReply {
    /// Failures are sent with status 200 too: BitTorrent clients only read
    /// the `failure reason` of a 200 response.
    pub ok: bool,
    pub body: Vec<u8>,
}

/// Shared state of a running tracker.
pub struct Tracker {
    pub policy: Policy,
    pub table: PeerTable,
    pub counters: Counters,
    pub rate: Rate,
    connids: ConnectionIds,
    started: u64,
}

/// Unmap `::ffff:a.b.c.d` (seen on dual-stack sockets) to IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    ip.to_canonical()
}

impl Tracker {
    pub fn new(policy: Policy, secret: [u8; 32], now: u64) -> Self {
        Tracker {
            table: PeerTable::new(policy.limits),
            policy,
            counters: Counters::default(),
            rate: Rate::default(),
            connids: ConnectionIds::new(secret),
            started: now,
        }
    }

    fn network_allowed(&self, ip: IpAddr) -> bool {
        self.policy.allowed_networks.is_empty()
            || self.policy.allowed_networks.iter().any(|n| n.contains(&ip))
    }

    fn hash_allowed(&self, h: &InfoHash) -> bool {
        self.policy
            .allowed_hashes
            .as_ref()
            .is_none_or(|set| set.contains(h))
    }

    fn is_trusted_proxy(&self, ip: IpAddr) -> bool {
        self.policy.trusted_proxies.iter().any(|n| n.contains(&ip))
    }

    fn numwant(&self, asked: Option<u32>) -> usize {
        asked
            .unwrap_or(self.policy.numwant_default)
            .min(self.policy.numwant_max) as usize
    }

    fn fail(&self, e: &str) -> HttpReply {
        stats::inc(&self.counters.http_failures);
        tracing::debug!(reason = e, "refused HTTP request");
        HttpReply {
            ok: false,
            body: http_proto::encode_failure(e),
        }
    }

    /// The peer's IP for an HTTP request from `remote`: the `ip` parameter
    /// or the last `X-Forwarded-For` entry, but only from a trusted proxy.
    fn http_peer_ip(
        &self,
        remote: IpAddr,
        ip_param: Option<IpAddr>,
        forwarded_for: Option<&str>,
    ) -> IpAddr {
        let remote = canonical(remote);
        if !self.is_trusted_proxy(remote) {
            return remote;
        }
        if let Some(ip) = ip_param {
            return canonical(ip);
        }
        forwarded_for
            .and_then(|h| h.rsplit(',').next())
            .and_then(|s| s.trim().parse::<IpAddr>().ok())
            .map(canonical)
            .unwrap_or(remote)
    }

    /// Handle `GET /announce?query`.
    pub fn http_announce(
        &self,
        query: &[u8],
        remote: IpAddr,
        forwarded_for: Option<&str>,
        now: u64,
        seed: u64,
    ) -> HttpReply {
        let req = match http_proto::parse_announce(query) {
            Ok(r) => r,
            Err(e) => return self.fail(&e.to_string()),
        };
        let ip = self.http_peer_ip(remote, req.ip, forwarded_for);
        if !self.network_allowed(ip) {
            stats::inc(&self.counters.refused);
            return self.fail("client network not allowed");
        }
        if !self.hash_allowed(&req.info_hash) {
            stats::inc(&self.counters.refused);
            return self.fail("info_hash not allowed on this tracker");
        }
        let op = AnnounceOp {
            info_hash: req.info_hash,
            peer: SocketAddr::new(ip, req.port),
            event: req.event,
            seeder: req.left == Some(0),
            key: req.key,
            numwant: self.numwant(req.numwant),
            now: now as u32,
            seed,
            families: Families { v4: true, v6: true },
        };
        let (mut p4, mut p6) = (Vec::new(), Vec::new());
        let r = self.table.announce(&op, &mut p4, &mut p6);
        if !r.stored && req.event != crate::types::Event::Stopped {
            stats::inc(&self.counters.limited);
        }
        stats::inc(&self.counters.http_announces);
        let mut body = Vec::with_capacity(96 + p4.len() + p6.len());
        http_proto::encode_announce(
            &AnnounceAnswer {
                complete: r.complete,
                incomplete: r.incomplete,
                interval: self.policy.interval,
                min_interval: self.policy.min_interval,
                peers4: &p4,
                peers6: &p6,
                compact: req.compact,
            },
            &mut body,
        );
        HttpReply { ok: true, body }
    }

    /// Handle `GET /scrape?query`.
    pub fn http_scrape(
        &self,
        query: &[u8],
        remote: IpAddr,
        forwarded_for: Option<&str>,
    ) -> HttpReply {
        let hashes = match http_proto::parse_scrape(query, self.policy.max_scrape) {
            Ok(h) => h,
            Err(e) => return self.fail(&e.to_string()),
        };
        let ip = self.http_peer_ip(remote, None, forwarded_for);
        if !self.network_allowed(ip) {
            stats::inc(&self.counters.refused);
            return self.fail("client network not allowed");
        }
        let mut files: Vec<(InfoHash, ScrapeEntry)> = hashes
            .into_iter()
            .filter(|h| self.hash_allowed(h))
            .map(|h| {
                let c = self.table.scrape(&h).unwrap_or_default();
                (
                    h,
                    ScrapeEntry {
                        complete: c.complete,
                        downloaded: c.downloaded,
                        incomplete: c.incomplete,
                    },
                )
            })
            .collect();
        stats::inc(&self.counters.http_scrapes);
        HttpReply {
            ok: true,
            body: http_proto::encode_scrape(&mut files),
        }
    }

    /// Handle one UDP packet from `from`. Writes the answer into `out`
    /// (cleared first); returns false when the packet gets no answer.
    pub fn udp_packet(
        &self,
        packet: &[u8],
        from: SocketAddr,
        now: u64,
        seed: u64,
        out: &mut Vec<u8>,
    ) -> bool {
        out.clear();
        let from = SocketAddr::new(canonical(from.ip()), from.port());
        let req = match udp_proto::parse_request(packet) {
            Ok(r) => r,
            Err(e) => {
                // A malformed announce or scrape that carries a connection
                // id valid for its sender gets an error (never larger than
                // the request); anything else may come from a spoofed
                // address and is dropped without an answer.
                if packet.len() >= 16 && self.network_allowed(from.ip()) {
                    let mut id = [0u8; 8];
                    id.copy_from_slice(&packet[..8]);
                    let mut tid = [0u8; 4];
                    tid.copy_from_slice(&packet[12..16]);
                    if self.connids.check(u64::from_be_bytes(id), from, now) {
                        stats::inc(&self.counters.udp_errors);
                        udp_proto::encode_error(
                            u32::from_be_bytes(tid),
                            &e.to_string(),
                            packet.len(),
                            out,
                        );
                        return true;
                    }
                }
                stats::inc(&self.counters.udp_dropped);
                tracing::trace!(%from, error = %e, "dropped UDP packet");
                return false;
            }
        };
        if !self.network_allowed(from.ip()) {
            stats::inc(&self.counters.refused);
            stats::inc(&self.counters.udp_dropped);
            return false;
        }
        let conn_ok = |id| self.connids.check(id, from, now);
        match req {
            UdpRequest::Connect { transaction_id } => {
                stats::inc(&self.counters.udp_connects);
                udp_proto::encode_connect_response(
                    transaction_id,
                    self.connids.issue(from, now),
                    out,
                );
                true
            }
            UdpRequest::Announce(a) => {
                if !conn_ok(a.connection_id) {
                    stats::inc(&self.counters.udp_dropped);
                    return false;
                }
                if !self.hash_allowed(&a.info_hash) {
                    stats::inc(&self.counters.refused);
                    stats::inc(&self.counters.udp_errors);
                    udp_proto::encode_error(
                        a.transaction_id,
                        "info_hash not allowed",
                        packet.len(),
                        out,
                    );
                    return true;
                }
                if a.port == 0 {
                    stats::inc(&self.counters.udp_errors);
                    udp_proto::encode_error(a.transaction_id, "invalid port", packet.len(), out);
                    return true;
                }
                let ip = if a.ip != 0 && self.is_trusted_proxy(from.ip()) {
                    IpAddr::V4(Ipv4Addr::from(a.ip))
                } else {
                    from.ip()
                };
                let numwant = self.numwant(if a.num_want < 0 {
                    None
                } else {
                    Some(a.num_want as u32)
                });
                // Reply with peers of the family the request came over
                // (BEP 15: 6-byte entries over IPv4, 18-byte over IPv6).
                let families = Families {
                    v4: ip.is_ipv4(),
                    v6: ip.is_ipv6(),
                };
                let op = AnnounceOp {
                    info_hash: a.info_hash,
                    peer: SocketAddr::new(ip, a.port),
                    event: a.event,
                    seeder: a.left == 0,
                    key: a.key,
                    numwant,
                    now: now as u32,
                    seed,
                    families,
                };
                udp_proto::encode_announce_header(
                    a.transaction_id,
                    self.policy.interval,
                    0,
                    0,
                    out,
                );
                let mut p6 = Vec::new();
                let r = if ip.is_ipv4() {
                    self.table.announce(&op, out, &mut p6)
                } else {
                    let mut p4 = Vec::new();
                    self.table.announce(&op, &mut p4, out)
                };
                out[12..16].copy_from_slice(&r.incomplete.to_be_bytes());
                out[16..20].copy_from_slice(&r.complete.to_be_bytes());
                if !r.stored && a.event != crate::types::Event::Stopped {
                    stats::inc(&self.counters.limited);
                }
                stats::inc(&self.counters.udp_announces);
                true
            }
            UdpRequest::Scrape {
                connection_id,
                transaction_id,
                info_hashes,
            } => {
                if !conn_ok(connection_id) {
                    stats::inc(&self.counters.udp_dropped);
                    return false;
                }
                udp_proto::encode_scrape_header(transaction_id, out);
                for h in &info_hashes {
                    let c = if self.hash_allowed(h) {
                        self.table.scrape(h).unwrap_or_default()
                    } else {
                        Default::default()
                    };
                    udp_proto::encode_scrape_entry(c.complete, c.downloaded, c.incomplete, out);
                }
                stats::inc(&self.counters.udp_scrapes);
                true
            }
        }
    }

    /// Expire old peers; called by the housekeeping task.
    pub fn housekeeping(&self, now: u64) -> usize {
        let n = self.table.expire(now as u32, self.policy.peer_timeout);
        self.counters
            .expired
            .fetch_add(n as u64, std::sync::atomic::Ordering::Relaxed);
        let c = self.counters.values();
        self.rate.sample(now, c.http_announces + c.udp_announces);
        n
    }

    pub fn stats(&self, now: u64) -> Snapshot {
        Snapshot {
            version: env!("CARGO_PKG_VERSION"),
            uptime_secs: now.saturating_sub(self.started),
            totals: self.table.totals(),
            announces_per_second: self.rate.per_second(),
            counters: self.counters.values(),
        }
    }
}

/// Parse an allowlist file: one 40-hex info hash per line (the format of
/// opentracker's whitelist); blank lines and `#` comments are skipped.
pub fn parse_allowlist(text: &str) -> Result<HashSet<InfoHash>, (usize, String)> {
    let mut set = HashSet::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.split('#').next().unwrap_or("").trim();
        if line.is_empty() {
            continue;
        }
        match InfoHash::from_hex(line) {
            Some(h) => {
                set.insert(h);
            }
            None => return Err((i + 1, line.to_string())),
        }
    }
    Ok(set)
}

impl From<RequestError> for HttpReply {
    fn from(e: RequestError) -> Self {
        HttpReply {
            ok: false,
            body: http_proto::encode_failure(&e.to_string()),
        }
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // table-driven test cases are tuples
mod tests {
    use super::*;
    use crate::types::{Event, PeerId};
    use crate::udp_proto::{UdpAnnounce, UdpResponse};

    const NOW: u64 = 1_800_000_000;

    fn q(hash: u8, port: u16, extra: &str) -> String {
        let mut s = String::from("info_hash=");
        http_proto::percent_encode(&[hash; 20], &mut s);
        format!("{s}&peer_id=-XX0001-123456789012&port={port}{extra}")
    }

    fn tracker(p: Policy) -> Tracker {
        Tracker::new(p, [1; 32], NOW)
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn http_policy() {
        let mut allowed = HashSet::new();
        allowed.insert(InfoHash([1; 20]));
        let p = Policy {
            allowed_hashes: Some(allowed),
            allowed_networks: vec!["10.0.0.0/8".parse().unwrap(), "::1/128".parse().unwrap()],
            trusted_proxies: vec!["10.9.9.9/32".parse().unwrap()],
            numwant_max: 3,
            ..Policy::default()
        };
        // (query, remote, x-forwarded-for, ok, stored peers after)
        let cases: Vec<(String, &str, Option<&str>, Result<(), &str>, usize)> = vec![
            (q(1, 1, ""), "10.0.0.1", None, Ok(()), 1),
            (
                q(2, 1, ""),
                "10.0.0.1",
                None,
                Err("info_hash not allowed on this tracker"),
                1,
            ),
            (
                q(1, 1, ""),
                "192.168.0.1",
                None,
                Err("client network not allowed"),
                1,
            ),
            (q(1, 1, ""), "::ffff:10.0.0.2", None, Ok(()), 2),
            (q(1, 1, ""), "::1", None, Ok(()), 3),
            // `ip` ignored from an untrusted client: same peer as before
            (q(1, 1, "&ip=10.5.5.5"), "10.0.0.1", None, Ok(()), 3),
            // honoured from the trusted proxy
            (q(1, 1, "&ip=10.5.5.5"), "10.9.9.9", None, Ok(()), 4),
            (
                q(1, 1, ""),
                "10.9.9.9",
                Some("1.2.3.4, 10.6.6.6"),
                Ok(()),
                5,
            ),
            // forwarded address outside the allowed networks
            (
                q(1, 1, ""),
                "10.9.9.9",
                Some("192.168.1.1"),
                Err("client network not allowed"),
                5,
            ),
            (q(1, 1, "&numwant=100000"), "10.0.0.3", None, Ok(()), 6),
            (
                q(1, 1, "&numwant=99999999999"),
                "10.0.0.4",
                None,
                Err("invalid numwant"),
                6,
            ),
            (
                "info_hash=abc".into(),
                "10.0.0.1",
                None,
                Err("info_hash must be 20 bytes"),
                6,
            ),
        ];
        let t = tracker(p);
        for (i, (query, remote, xff, want, peers)) in cases.into_iter().enumerate() {
            let r = t.http_announce(query.as_bytes(), ip(remote), xff, NOW, i as u64);
            match want {
                Ok(()) => {
                    assert!(r.ok, "case {i}: {}", String::from_utf8_lossy(&r.body));
                    let resp = http_proto::parse_announce_response(&r.body).unwrap();
                    assert!(resp.peers.len() <= 3, "case {i}: numwant cap");
                }
                Err(msg) => {
                    assert!(!r.ok, "case {i}");
                    assert_eq!(
                        http_proto::parse_announce_response(&r.body),
                        Err(http_proto::ResponseError::Failure(msg.into())),
                        "case {i}"
                    );
                }
            }
            assert_eq!(t.table.peer_count(), peers, "case {i}");
        }
        let c = t.counters.values();
        assert_eq!((c.http_announces, c.http_failures, c.refused), (7, 5, 3));
    }

    #[test]
    fn http_scrape() {
        let t = tracker(Policy::default());
        t.http_announce(q(1, 1, "&left=0").as_bytes(), ip("10.0.0.1"), None, NOW, 0);
        t.http_announce(q(1, 2, "&left=5").as_bytes(), ip("10.0.0.1"), None, NOW, 0);
        let mut s = String::new();
        http_proto::percent_encode(&[1; 20], &mut s);
        let r = t.http_scrape(
            format!("info_hash={s}&info_hash={}", "b".repeat(20)).as_bytes(),
            ip("10.0.0.1"),
            None,
        );
        let got = http_proto::parse_scrape_response(&r.body).unwrap();
        assert_eq!(got.len(), 2);
        let e = got.iter().find(|(h, _)| h.0 == [1; 20]).unwrap().1;
        assert_eq!((e.complete, e.incomplete), (1, 1));
        assert!(!t.http_scrape(b"", ip("10.0.0.1"), None).ok);
    }

    fn connect(t: &Tracker, from: SocketAddr, now: u64) -> u64 {
        let mut req = Vec::new();
        udp_proto::encode_connect_request(7, &mut req);
        let mut out = Vec::new();
        assert!(t.udp_packet(&req, from, now, 0, &mut out));
        match udp_proto::parse_response(&out).unwrap() {
            UdpResponse::Connect {
                transaction_id: 7,
                connection_id,
            } => connection_id,
            r => panic!("{r:?}"),
        }
    }

    fn udp_ann(conn: u64, hash: u8, port: u16, event: Event) -> Vec<u8> {
        let mut b = Vec::new();
        udp_proto::encode_announce_request(
            &UdpAnnounce {
                connection_id: conn,
                transaction_id: 9,
                info_hash: InfoHash([hash; 20]),
                peer_id: PeerId([b'p'; 20]),
                downloaded: 0,
                left: 10,
                uploaded: 0,
                event,
                ip: 0,
                key: 1,
                num_want: -1,
                port,
            },
            &mut b,
        );
        b
    }

    #[test]
    fn udp_flow() {
        let mut allowed = HashSet::new();
        allowed.insert(InfoHash([1; 20]));
        let t = tracker(Policy {
            allowed_hashes: Some(allowed),
            ..Policy::default()
        });
        let a: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let b: SocketAddr = "10.0.0.2:5000".parse().unwrap();
        let conn = connect(&t, a, NOW);
        let mut out = Vec::new();
        // (packet, from, now, answered, error?, peers stored after)
        let cases: Vec<(Vec<u8>, SocketAddr, u64, bool, bool, usize)> = vec![
            (
                udp_ann(conn, 1, 6881, Event::Started),
                a,
                NOW,
                true,
                false,
                1,
            ),
            // spoofed: the id was issued to a, not b
            (
                udp_ann(conn, 1, 6882, Event::Started),
                b,
                NOW,
                false,
                false,
                1,
            ),
            // expired id
            (
                udp_ann(conn, 1, 6883, Event::Started),
                a,
                NOW + 180,
                false,
                false,
                1,
            ),
            (
                udp_ann(conn ^ 4, 1, 6884, Event::Started),
                a,
                NOW,
                false,
                false,
                1,
            ),
            (
                udp_ann(conn, 2, 6885, Event::Started),
                a,
                NOW,
                true,
                true,
                1,
            ),
            (udp_ann(conn, 1, 0, Event::Started), a, NOW, true, true, 1),
            (vec![0xff; 50], a, NOW, false, false, 1),
            // malformed (bad event) with a valid id: an error answer
            (
                {
                    let mut p = udp_ann(conn, 1, 6886, Event::Started);
                    p[83] = 9;
                    p
                },
                a,
                NOW,
                true,
                true,
                1,
            ),
            // the same from another address: dropped
            (
                {
                    let mut p = udp_ann(conn, 1, 6886, Event::Started);
                    p[83] = 9;
                    p
                },
                b,
                NOW,
                false,
                false,
                1,
            ),
            (vec![], a, NOW, false, false, 1),
            (
                udp_ann(conn, 1, 6881, Event::Stopped),
                a,
                NOW,
                true,
                false,
                0,
            ),
        ];
        for (i, (p, from, now, answered, is_err, peers)) in cases.into_iter().enumerate() {
            assert_eq!(
                t.udp_packet(&p, from, now, 0, &mut out),
                answered,
                "case {i}"
            );
            if answered {
                assert!(out.len() <= p.len() || !is_err, "case {i}: amplification");
                let r = udp_proto::parse_response(&out).unwrap();
                assert_eq!(
                    matches!(r, UdpResponse::Error { .. }),
                    is_err,
                    "case {i}: {r:?}"
                );
            } else {
                assert!(out.is_empty());
            }
            assert_eq!(t.table.peer_count(), peers, "case {i}");
        }
    }

    #[test]
    fn udp_peers_exchange() {
        let t = tracker(Policy::default());
        let a: SocketAddr = "127.0.0.1:5000".parse().unwrap();
        let conn = connect(&t, a, NOW);
        let mut out = Vec::new();
        assert!(t.udp_packet(&udp_ann(conn, 1, 6881, Event::Started), a, NOW, 0, &mut out));
        assert!(t.udp_packet(&udp_ann(conn, 1, 6882, Event::Started), a, NOW, 0, &mut out));
        match udp_proto::parse_response(&out).unwrap() {
            UdpResponse::Announce {
                leechers,
                seeders,
                peers,
                ..
            } => {
                assert_eq!((leechers, seeders), (2, 0));
                assert_eq!(peers, &[127, 0, 0, 1, 0x1a, 0xe1]);
            }
            r => panic!("{r:?}"),
        }
        // scrape
        let mut req = Vec::new();
        udp_proto::encode_scrape_request(
            conn,
            3,
            &[InfoHash([1; 20]), InfoHash([5; 20])],
            &mut req,
        );
        assert!(t.udp_packet(&req, a, NOW, 0, &mut out));
        assert_eq!(
            udp_proto::parse_response(&out).unwrap(),
            UdpResponse::Scrape {
                transaction_id: 3,
                entries: vec![(0, 0, 2), (0, 0, 0)]
            }
        );
        // scrape with a spoofed id: no answer
        req[0] ^= 0x80;
        assert!(!t.udp_packet(&req, a, NOW, 0, &mut out));
    }

    #[test]
    fn allowlist_files() {
        let h = "0123456789abcdef0123456789abcdef01234567";
        let ok = format!("# comment\n\n{h}\n {} # trailing\n", h.to_uppercase());
        assert_eq!(parse_allowlist(&ok).unwrap().len(), 1);
        assert_eq!(parse_allowlist("xyz\n"), Err((1, "xyz".into())));
    }

    #[test]
    fn housekeeping_expires() {
        let t = tracker(Policy {
            peer_timeout: 100,
            ..Policy::default()
        });
        t.http_announce(q(1, 1, "").as_bytes(), ip("10.0.0.1"), None, NOW, 0);
        assert_eq!(t.housekeeping(NOW + 50), 0);
        assert_eq!(t.housekeeping(NOW + 150), 1);
        assert_eq!(t.stats(NOW + 150).counters.expired, 1);
    }
}
