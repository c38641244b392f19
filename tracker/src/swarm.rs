//! The peer table: swarms of peers keyed by info hash, with expiry,
//! per-torrent and total limits, and locality-first peer selection.
//!
//! Pure data structures: no sockets, no async. The table is sharded by info
//! hash, each shard behind its own `std::sync::Mutex`. This is the hot path
//! (every announce over HTTP and UDP touches exactly one swarm), and a
//! sharded lock lets the UDP worker threads and the HTTP tasks update
//! different torrents in parallel without a message round trip per announce;
//! a critical section is a binary search and a copy of at most `numwant`
//! addresses. See docs/tracker.md for the measurements behind the choice.
//!
//! Each swarm keeps its IPv4 and IPv6 peers in two vectors sorted by the
//! compact address (IP then port, big-endian). Sorting gives O(log n) lookup
//! without a per-peer hash-map entry (memory: 16 bytes per IPv4 peer), and it
//! makes "peers in my subnet" a contiguous range found by two binary
//! searches, which is how locality costs nothing extra.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard};

use hashbrown::HashMap;

use crate::types::{Event, InfoHash};

/// Number of shards; a power of two.
const SHARDS: usize = 64;

/// One stored peer. `N` is 6 (IPv4 compact) or 18 (IPv6 compact).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Peer<const N: usize> {
    /// Compact address: IP bytes then port, big-endian.
    pub addr: [u8; N],
    /// Unix time of the last announce, in seconds.
    pub last_seen: u32,
    /// The announce `key` (0 when the client sent none).
    pub key: u32,
    /// `left == 0` at the last announce.
    pub seeder: bool,
}

/// The peers of one torrent.
#[derive(Default, Debug, Clone)]
pub struct PeerSet {
    pub v4: Vec<Peer<6>>,
    pub v6: Vec<Peer<18>>,
    /// Seeders among `v4` and `v6`.
    pub seeders: u32,
    /// Number of `completed` events seen (scrape's `downloaded`).
    pub downloaded: u32,
}

impl PeerSet {
    pub fn len(&self) -> usize {
        self.v4.len() + self.v6.len()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn leechers(&self) -> u32 {
        (self.len() as u32).saturating_sub(self.seeders)
    }
}

/// Limits and locality settings of the table.
#[derive(Clone, Copy, Debug)]
pub struct TableLimits {
    pub max_peers_per_torrent: usize,
    pub max_peers_total: usize,
    /// Prefix length (bits) of the announcer's IPv4 subnet for locality.
    pub locality_v4: u8,
    /// Prefix length (bits) of the announcer's IPv6 subnet for locality.
    pub locality_v6: u8,
}

impl Default for TableLimits {
    fn default() -> Self {
        TableLimits {
            max_peers_per_torrent: 10_000,
            max_peers_total: 5_000_000,
            locality_v4: 24,
            locality_v6: 64,
        }
    }
}

/// Which address families the caller wants in the answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Families {
    pub v4: bool,
    pub v6: bool,
}

/// A validated announce, as the table sees it.
#[derive(Clone, Copy, Debug)]
pub struct AnnounceOp {
    pub info_hash: InfoHash,
    /// The peer's address (IP the tracker trusts, port from the request).
    pub peer: SocketAddr,
    pub event: Event,
    pub seeder: bool,
    pub key: u32,
    /// Already capped by policy.
    pub numwant: usize,
    pub now: u32,
    /// Random seed for the starting point of the non-local peers.
    pub seed: u64,
    pub families: Families,
}

/// What the announce did, and the answer's counts.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AnnounceResult {
    pub complete: u32,
    pub incomplete: u32,
    /// The peer was stored (new or refreshed); false when a limit refused it
    /// or the event was `stopped`.
    pub stored: bool,
}

/// Scrape counts for one torrent.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ScrapeCounts {
    pub complete: u32,
    pub downloaded: u32,
    pub incomplete: u32,
}

/// Totals over the whole table.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub struct Totals {
    pub torrents: usize,
    pub peers: usize,
    pub seeders: usize,
    pub leechers: usize,
    pub peers_v4: usize,
    pub peers_v6: usize,
}

type Shard = HashMap<InfoHash, PeerSet>;

/// The sharded peer table.
pub struct PeerTable {
    shards: Vec<Mutex<Shard>>,
    total: AtomicUsize,
    limits: TableLimits,
}

fn lock(m: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    // A panic while holding a shard lock cannot leave a swarm half-updated
    // in a way that breaks memory safety; keep serving.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

/// Compact encoding of a socket address.
pub fn compact_v4(ip: [u8; 4], port: u16) -> [u8; 6] {
    let p = port.to_be_bytes();
    [ip[0], ip[1], ip[2], ip[3], p[0], p[1]]
}

pub fn compact_v6(ip: [u8; 16], port: u16) -> [u8; 18] {
    let mut out = [0u8; 18];
    out[..16].copy_from_slice(&ip);
    out[16..].copy_from_slice(&port.to_be_bytes());
    out
}

/// Mask `ip` to its first `prefix` bits; returns (first, last) address of the net.
fn net_range<const L: usize>(ip: &[u8], prefix: u8) -> ([u8; L], [u8; L]) {
    let mut lo = [0u8; L];
    let mut hi = [0xffu8; L];
    let prefix = (prefix as usize).min(L * 8);
    for i in 0..L {
        let bits = prefix.saturating_sub(i * 8).min(8);
        let mask: u8 = if bits == 0 { 0 } else { 0xffu8 << (8 - bits) };
        lo[i] = ip[i] & mask;
        hi[i] = ip[i] | !mask;
    }
    (lo, hi)
}

/// Peer selection in one family vector. Generic over the compact length
/// `N` and the IP length `L` (= N - 2).
struct Family;

impl Family {
    /// Append peers of `part` (except `me`) to `out` until `want` in total.
    fn emit<const N: usize>(
        part: &[Peer<N>],
        me: &[u8; N],
        want: usize,
        mut n: usize,
        out: &mut Vec<u8>,
    ) -> usize {
        for p in part {
            if n == want {
                break;
            }
            if &p.addr != me {
                out.extend_from_slice(&p.addr);
                n += 1;
            }
        }
        n
    }

    /// Select up to `want` peers (excluding `me`) into `out`, locals first.
    fn select<const N: usize, const L: usize>(
        peers: &[Peer<N>],
        me: &[u8; N],
        prefix: u8,
        want: usize,
        seed: u64,
        out: &mut Vec<u8>,
    ) -> usize {
        if want == 0 || peers.is_empty() {
            return 0;
        }
        let (lo_net, hi_net) = net_range::<L>(&me[..L], prefix);
        let lo = peers.partition_point(|p| p.addr[..L] < lo_net[..]);
        let hi = peers.partition_point(|p| p.addr[..L] <= hi_net[..]);
        let mut n = 0;
        // Locals first, starting at a random point so that a large office
        // subnet spreads its load; then the others, as one virtual array of
        // the two outer ranges, also from a random point. Each walk is split
        // into plain slices (no modulo per peer: this is the hot loop).
        let local = hi - lo;
        if local > 0 {
            let start = lo + (seed as usize) % local;
            for part in [&peers[start..hi], &peers[lo..start]] {
                n = Self::emit(part, me, want, n, out);
            }
        }
        let others = peers.len() - local;
        if others > 0 && n < want {
            let v = ((seed >> 32) as usize) % others;
            // Virtual index v maps to peers[v] below lo, else peers[v + local].
            let (first, second): (&[Peer<N>], &[Peer<N>]) = if v < lo {
                (&peers[v..lo], &peers[hi..])
            } else {
                (&peers[v + local..], &[])
            };
            let wrap: (&[Peer<N>], &[Peer<N>]) = if v < lo {
                (&peers[..v], &[])
            } else {
                (&peers[..lo], &peers[hi..v + local])
            };
            for part in [first, second, wrap.0, wrap.1] {
                n = Self::emit(part, me, want, n, out);
            }
        }
        n
    }
}

/// Outcome of updating one family vector.
enum Update {
    /// Removed an existing peer (was it a seeder?).
    Removed {
        was_seeder: bool,
    },
    /// Refreshed an existing peer.
    Refreshed {
        was_seeder: bool,
    },
    Inserted,
    /// Nothing changed (stopped for an unknown peer, key mismatch, or limit).
    Unchanged,
    Refused,
}

fn update<const N: usize>(
    peers: &mut Vec<Peer<N>>,
    addr: [u8; N],
    op: &AnnounceOp,
    room: bool,
) -> Update {
    match peers.binary_search_by(|p| p.addr.cmp(&addr)) {
        Ok(i) => {
            let p = &mut peers[i];
            if op.event == Event::Stopped {
                // A `stopped` with a different key is not from this peer.
                if p.key != 0 && op.key != p.key {
                    return Update::Unchanged;
                }
                let was_seeder = p.seeder;
                peers.remove(i);
                return Update::Removed { was_seeder };
            }
            let was_seeder = p.seeder;
            p.last_seen = op.now;
            p.key = op.key;
            p.seeder = op.seeder;
            Update::Refreshed { was_seeder }
        }
        Err(i) => {
            if op.event == Event::Stopped {
                return Update::Unchanged;
            }
            if !room {
                return Update::Refused;
            }
            // Grow by a quarter instead of doubling: most swarms are small
            // and long-lived, and doubling would leave a third of the peer
            // memory unused on average. Still amortised O(1).
            if peers.len() == peers.capacity() {
                peers.reserve_exact((peers.len() / 4).max(2));
            }
            peers.insert(
                i,
                Peer {
                    addr,
                    last_seen: op.now,
                    key: op.key,
                    seeder: op.seeder,
                },
            );
            Update::Inserted
        }
    }
}

impl PeerTable {
    pub fn new(limits: TableLimits) -> Self {
        PeerTable {
            shards: (0..SHARDS).map(|_| Mutex::new(Shard::default())).collect(),
            total: AtomicUsize::new(0),
            limits,
        }
    }

    pub fn limits(&self) -> TableLimits {
        self.limits
    }

    fn shard(&self, h: &InfoHash) -> &Mutex<Shard> {
        // Info hashes are SHA-1 outputs: their first byte is uniform.
        &self.shards[(h.0[0] as usize ^ (h.0[19] as usize) << 1) % SHARDS]
    }

    /// Number of stored peers.
    pub fn peer_count(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }

    /// Apply an announce and write the selected peers into `out4` (compact
    /// IPv4) and `out6` (compact IPv6), according to `op.families`.
    pub fn announce(
        &self,
        op: &AnnounceOp,
        out4: &mut Vec<u8>,
        out6: &mut Vec<u8>,
    ) -> AnnounceResult {
        let mut shard = lock(self.shard(&op.info_hash));
        let room_total = self.total.load(Ordering::Relaxed) < self.limits.max_peers_total;
        let swarm = match shard.get_mut(&op.info_hash) {
            Some(s) => s,
            None => {
                if op.event == Event::Stopped || !room_total {
                    return AnnounceResult::default();
                }
                shard.entry(op.info_hash).or_default()
            }
        };
        let room = room_total && swarm.len() < self.limits.max_peers_per_torrent;
        let numwant = if op.event == Event::Stopped {
            0
        } else {
            op.numwant
        };
        // Select before updating, excluding the announcer itself.
        let (res, n) = match op.peer {
            SocketAddr::V4(a) => {
                let addr = compact_v4(a.ip().octets(), a.port());
                let mut n = 0;
                if op.families.v4 {
                    n += Family::select::<6, 4>(
                        &swarm.v4,
                        &addr,
                        self.limits.locality_v4,
                        numwant,
                        op.seed,
                        out4,
                    );
                }
                if op.families.v6 {
                    let none = [0u8; 18];
                    n += Family::select::<18, 16>(&swarm.v6, &none, 0, numwant - n, op.seed, out6);
                }
                (update(&mut swarm.v4, addr, op, room), n)
            }
            SocketAddr::V6(a) => {
                let addr = compact_v6(a.ip().octets(), a.port());
                let mut n = 0;
                if op.families.v6 {
                    n += Family::select::<18, 16>(
                        &swarm.v6,
                        &addr,
                        self.limits.locality_v6,
                        numwant,
                        op.seed,
                        out6,
                    );
                }
                if op.families.v4 {
                    let none = [0u8; 6];
                    n += Family::select::<6, 4>(&swarm.v4, &none, 0, numwant - n, op.seed, out4);
                }
                (update(&mut swarm.v6, addr, op, room), n)
            }
        };
        let _ = n;
        let mut stored = false;
        match res {
            Update::Removed { was_seeder } => {
                if was_seeder {
                    swarm.seeders -= 1;
                }
                self.total.fetch_sub(1, Ordering::Relaxed);
            }
            Update::Refreshed { was_seeder } => {
                stored = true;
                match (was_seeder, op.seeder) {
                    (false, true) => swarm.seeders += 1,
                    (true, false) => swarm.seeders -= 1,
                    _ => {}
                }
                if op.event == Event::Completed && !was_seeder {
                    swarm.downloaded = swarm.downloaded.saturating_add(1);
                }
            }
            Update::Inserted => {
                stored = true;
                if op.seeder {
                    swarm.seeders += 1;
                }
                if op.event == Event::Completed {
                    swarm.downloaded = swarm.downloaded.saturating_add(1);
                }
                self.total.fetch_add(1, Ordering::Relaxed);
            }
            Update::Unchanged | Update::Refused => {}
        }
        let result = AnnounceResult {
            complete: swarm.seeders,
            incomplete: swarm.leechers(),
            stored,
        };
        if swarm.is_empty() && swarm.downloaded == 0 {
            shard.remove(&op.info_hash);
        }
        result
    }

    /// Scrape counts; `None` for an unknown torrent.
    pub fn scrape(&self, h: &InfoHash) -> Option<ScrapeCounts> {
        let shard = lock(self.shard(h));
        shard.get(h).map(|s| ScrapeCounts {
            complete: s.seeders,
            downloaded: s.downloaded,
            incomplete: s.leechers(),
        })
    }

    /// Drop peers whose last announce is older than `now - timeout`, and
    /// swarms left empty. Returns the number of peers removed.
    pub fn expire(&self, now: u32, timeout: u32) -> usize {
        let cutoff = now.saturating_sub(timeout);
        let mut removed = 0;
        for m in &self.shards {
            let mut shard = lock(m);
            shard.retain(|_, s| {
                let before = s.len();
                s.v4.retain(|p| p.last_seen >= cutoff);
                s.v6.retain(|p| p.last_seen >= cutoff);
                if s.v4.capacity() > 2 * s.v4.len() + 4 {
                    s.v4.shrink_to_fit();
                }
                if s.v6.capacity() > 2 * s.v6.len() + 4 {
                    s.v6.shrink_to_fit();
                }
                removed += before - s.len();
                s.seeders = (s.v4.iter().filter(|p| p.seeder).count()
                    + s.v6.iter().filter(|p| p.seeder).count()) as u32;
                !s.is_empty()
            });
        }
        self.total.fetch_sub(removed, Ordering::Relaxed);
        removed
    }

    /// Totals over all swarms (walks the table: for stats, not the hot path).
    pub fn totals(&self) -> Totals {
        let mut t = Totals::default();
        for m in &self.shards {
            let shard = lock(m);
            t.torrents += shard.len();
            for s in shard.values() {
                t.peers += s.len();
                t.peers_v4 += s.v4.len();
                t.peers_v6 += s.v6.len();
                t.seeders += s.seeders as usize;
                t.leechers += s.leechers() as usize;
            }
        }
        t
    }

    /// Copy of the whole table, one shard at a time (for snapshots).
    pub fn snapshot(&self) -> Vec<(InfoHash, PeerSet)> {
        let mut out = Vec::new();
        for m in &self.shards {
            let shard = lock(m);
            out.extend(shard.iter().map(|(h, s)| (*h, s.clone())));
        }
        out
    }

    /// Restore swarms (from a snapshot), respecting the limits. Peers are
    /// sorted and deduplicated here, so a hand-edited snapshot cannot break
    /// the table's invariants.
    pub fn restore(&self, swarms: Vec<(InfoHash, PeerSet)>) {
        for (h, mut s) in swarms {
            s.v4.sort_by_key(|a| a.addr);
            s.v4.dedup_by(|a, b| a.addr == b.addr);
            s.v6.sort_by_key(|a| a.addr);
            s.v6.dedup_by(|a, b| a.addr == b.addr);
            let room = self
                .limits
                .max_peers_total
                .saturating_sub(self.total.load(Ordering::Relaxed))
                .min(self.limits.max_peers_per_torrent);
            s.v4.truncate(room);
            s.v6.truncate(room - s.v4.len());
            s.seeders = (s.v4.iter().filter(|p| p.seeder).count()
                + s.v6.iter().filter(|p| p.seeder).count()) as u32;
            if s.is_empty() {
                continue;
            }
            let mut shard = lock(self.shard(&h));
            if let Some(old) = shard.insert(h, s.clone()) {
                self.total.fetch_sub(old.len(), Ordering::Relaxed);
            }
            self.total.fetch_add(s.len(), Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // table-driven test cases are tuples
mod tests {
    use super::*;

    fn h(n: u8) -> InfoHash {
        InfoHash([n; 20])
    }

    fn op(hash: u8, peer: &str, event: Event, seeder: bool) -> AnnounceOp {
        AnnounceOp {
            info_hash: h(hash),
            peer: peer.parse().unwrap(),
            event,
            seeder,
            key: 0,
            numwant: 50,
            now: 1000,
            seed: 0,
            families: Families { v4: true, v6: true },
        }
    }

    fn peers4(buf: &[u8]) -> Vec<String> {
        buf.chunks(6)
            .map(|c| {
                format!(
                    "{}.{}.{}.{}:{}",
                    c[0],
                    c[1],
                    c[2],
                    c[3],
                    u16::from_be_bytes([c[4], c[5]])
                )
            })
            .collect()
    }

    fn run(t: &PeerTable, o: &AnnounceOp) -> (AnnounceResult, Vec<String>, usize) {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let r = t.announce(o, &mut a, &mut b);
        (r, peers4(&a), b.len() / 18)
    }

    #[test]
    fn announce_sequences() {
        // (steps, expected complete, incomplete, table peers after)
        type Step = (&'static str, Event, bool);
        let cases: Vec<(Vec<Step>, u32, u32, usize)> = vec![
            (vec![("10.0.0.1:1", Event::Started, false)], 0, 1, 1),
            (vec![("10.0.0.1:1", Event::Started, true)], 1, 0, 1),
            (
                vec![
                    ("10.0.0.1:1", Event::Started, false),
                    ("10.0.0.1:1", Event::Completed, true),
                ],
                1,
                0,
                1,
            ),
            (
                vec![
                    ("10.0.0.1:1", Event::Started, false),
                    ("10.0.0.1:1", Event::Stopped, false),
                ],
                0,
                0,
                0,
            ),
            // stopped for an unknown peer changes nothing
            (vec![("10.0.0.1:1", Event::Stopped, false)], 0, 0, 0),
            (
                vec![
                    ("10.0.0.1:1", Event::Started, false),
                    ("10.0.0.2:1", Event::None, true),
                    ("[2001:db8::1]:5", Event::None, false),
                ],
                1,
                2,
                3,
            ),
            // same IP, distinct ports are distinct peers (loopback tests)
            (
                vec![
                    ("127.0.0.1:6881", Event::Started, false),
                    ("127.0.0.1:6882", Event::Started, false),
                ],
                0,
                2,
                2,
            ),
        ];
        for (i, (steps, c, inc, n)) in cases.into_iter().enumerate() {
            let t = PeerTable::new(TableLimits::default());
            let mut last = AnnounceResult::default();
            for (p, e, s) in steps {
                last = run(&t, &op(1, p, e, s)).0;
            }
            assert_eq!((last.complete, last.incomplete), (c, inc), "case {i}");
            assert_eq!(t.peer_count(), n, "case {i}");
            assert_eq!(t.totals().peers, n, "case {i}");
        }
    }

    #[test]
    fn completed_counts_downloads_once() {
        let t = PeerTable::new(TableLimits::default());
        run(&t, &op(1, "10.0.0.1:1", Event::Started, false));
        run(&t, &op(1, "10.0.0.1:1", Event::Completed, true));
        run(&t, &op(1, "10.0.0.1:1", Event::Completed, true));
        assert_eq!(t.scrape(&h(1)).unwrap().downloaded, 1);
        assert_eq!(t.scrape(&h(2)), None);
    }

    #[test]
    fn stopped_with_other_key_is_ignored() {
        let t = PeerTable::new(TableLimits::default());
        let mut o = op(1, "10.0.0.1:1", Event::Started, false);
        o.key = 7;
        run(&t, &o);
        o.event = Event::Stopped;
        o.key = 8;
        run(&t, &o);
        assert_eq!(t.peer_count(), 1);
        o.key = 7;
        run(&t, &o);
        assert_eq!(t.peer_count(), 0);
    }

    #[test]
    fn answer_excludes_self_and_respects_numwant() {
        let t = PeerTable::new(TableLimits::default());
        for port in 1..=10 {
            run(
                &t,
                &op(1, &format!("10.0.0.1:{port}"), Event::Started, false),
            );
        }
        for (numwant, expect) in [(0, 0), (3, 3), (9, 9), (50, 9)] {
            let mut o = op(1, "10.0.0.1:5", Event::None, false);
            o.numwant = numwant;
            let (_, got, _) = run(&t, &o);
            assert_eq!(got.len(), expect, "numwant {numwant}");
            assert!(!got.contains(&"10.0.0.1:5".to_string()));
        }
        // stopped gets no peers
        let (_, got, _) = run(&t, &op(1, "10.0.0.1:5", Event::Stopped, false));
        assert!(got.is_empty());
    }

    #[test]
    fn locality_first() {
        let t = PeerTable::new(TableLimits::default());
        for p in [
            "10.0.0.9:1",
            "192.168.1.5:1",
            "10.0.1.1:1",
            "192.168.1.6:1",
            "172.16.0.1:1",
            "192.168.2.1:1",
        ] {
            run(&t, &op(1, p, Event::Started, false));
        }
        for seed in [0u64, 1, 2, 3, 0xdead_beef_0000_0005] {
            let mut o = op(1, "192.168.1.200:9", Event::Started, false);
            o.seed = seed;
            o.numwant = 3;
            let (_, got, _) = run(&t, &o);
            assert_eq!(got.len(), 3);
            let mut first: Vec<_> = got[..2].to_vec();
            first.sort();
            assert_eq!(first, vec!["192.168.1.5:1", "192.168.1.6:1"], "seed {seed}");
            assert!(!got[2].starts_with("192.168.1."));
            t.announce(
                &AnnounceOp {
                    event: Event::Stopped,
                    ..o
                },
                &mut Vec::new(),
                &mut Vec::new(),
            );
        }
    }

    #[test]
    fn locality_prefix_lengths() {
        for (prefix, expect_local) in [(24u8, 1usize), (16, 2), (8, 3), (0, 4), (32, 0)] {
            let t = PeerTable::new(TableLimits {
                locality_v4: prefix,
                ..TableLimits::default()
            });
            for p in ["10.1.2.3:1", "10.1.9.9:1", "10.7.0.1:1", "11.0.0.1:1"] {
                run(&t, &op(1, p, Event::Started, false));
            }
            let (lo, hi) = net_range::<4>(&[10, 1, 2, 200], prefix);
            let (_, got, _) = run(&t, &op(1, "10.1.2.200:1", Event::Started, false));
            let local = got
                .iter()
                .take_while(|s| {
                    let ip: std::net::Ipv4Addr = s.split(':').next().unwrap().parse().unwrap();
                    ip.octets() >= lo && ip.octets() <= hi
                })
                .count();
            assert!(local >= expect_local, "prefix {prefix}: {got:?}");
        }
    }

    #[test]
    fn families_and_v6() {
        let t = PeerTable::new(TableLimits::default());
        run(&t, &op(1, "10.0.0.1:1", Event::Started, false));
        run(&t, &op(1, "[2001:db8::1]:1", Event::Started, false));
        let mut o = op(1, "[2001:db8::2]:1", Event::Started, false);
        o.families = Families {
            v4: false,
            v6: true,
        };
        let (_, v4, v6) = run(&t, &o);
        assert_eq!((v4.len(), v6), (0, 1));
        o.families = Families { v4: true, v6: true };
        let (_, v4, v6) = run(&t, &o);
        assert_eq!((v4.len(), v6), (1, 1));
    }

    #[test]
    fn limits() {
        let t = PeerTable::new(TableLimits {
            max_peers_per_torrent: 2,
            max_peers_total: 3,
            ..TableLimits::default()
        });
        let cases = [
            (1, "10.0.0.1:1", true),
            (1, "10.0.0.2:1", true),
            (1, "10.0.0.3:1", false), // torrent full
            (2, "10.0.0.3:1", true),
            (3, "10.0.0.4:1", false), // table full
            (1, "10.0.0.1:1", true),  // refresh still works
        ];
        for (hash, p, stored) in cases {
            let (r, _, _) = run(&t, &op(hash, p, Event::Started, false));
            assert_eq!(r.stored, stored, "{hash} {p}");
        }
        assert_eq!(t.peer_count(), 3);
        assert_eq!(t.totals().torrents, 2);
    }

    #[test]
    fn expiry() {
        let t = PeerTable::new(TableLimits::default());
        let mut o = op(1, "10.0.0.1:1", Event::Started, true);
        o.now = 100;
        run(&t, &o);
        o.peer = "10.0.0.2:1".parse().unwrap();
        o.now = 200;
        run(&t, &o);
        o.info_hash = h(2);
        o.now = 100;
        run(&t, &o);
        for (now, removed, left) in [(150, 0, 3), (250, 2, 1), (400, 1, 0)] {
            assert_eq!(t.expire(now, 100), removed, "now {now}");
            assert_eq!(t.peer_count(), left);
            assert_eq!(t.totals().peers, left);
        }
        assert_eq!(t.totals().torrents, 0);
    }

    #[test]
    fn snapshot_roundtrip() {
        let t = PeerTable::new(TableLimits::default());
        run(&t, &op(1, "10.0.0.1:1", Event::Started, true));
        run(&t, &op(1, "[::1]:1", Event::Started, false));
        run(&t, &op(2, "10.0.0.1:1", Event::Started, false));
        let snap = t.snapshot();
        let u = PeerTable::new(TableLimits::default());
        u.restore(snap);
        assert_eq!(u.totals(), t.totals());
    }

    #[test]
    fn net_ranges() {
        let cases: [(&[u8], u8, [u8; 4], [u8; 4]); 4] = [
            (&[10, 1, 2, 3], 24, [10, 1, 2, 0], [10, 1, 2, 255]),
            (&[10, 1, 2, 3], 20, [10, 1, 0, 0], [10, 1, 15, 255]),
            (&[10, 1, 2, 3], 0, [0; 4], [255; 4]),
            (&[10, 1, 2, 3], 200, [10, 1, 2, 3], [10, 1, 2, 3]),
        ];
        for (ip, p, lo, hi) in cases {
            assert_eq!(net_range::<4>(ip, p), (lo, hi), "{ip:?}/{p}");
        }
    }

    proptest::proptest! {
        /// Selection returns distinct peers, never the announcer, as many as
        /// asked for (or all others), with every local peer before any
        /// other one when there is room for them.
        #[test]
        fn selection_invariants(
            ips in proptest::collection::vec((0u8..4, 0u8..4, 1u16..4), 0..40),
            me in (0u8..4, 0u8..4, 1u16..4),
            want in 0usize..50,
            seed in proptest::prelude::any::<u64>(),
        ) {
            let mut peers: Vec<Peer<6>> = ips
                .iter()
                .map(|&(a, b, port)| Peer { addr: compact_v4([10, a, b, 1], port), last_seen: 0, key: 0, seeder: false })
                .collect();
            peers.sort_by_key(|p| p.addr);
            peers.dedup_by_key(|p| p.addr);
            let me = compact_v4([10, me.0, me.1, 1], me.2);
            let mut out = Vec::new();
            let n = Family::select::<6, 4>(&peers, &me, 16, want, seed, &mut out);
            let got: Vec<[u8; 6]> = out.chunks(6).map(|c| c.try_into().unwrap()).collect();
            let others = peers.iter().filter(|p| p.addr != me).count();
            proptest::prop_assert_eq!(n, got.len());
            proptest::prop_assert_eq!(n, want.min(others));
            let mut uniq = got.clone();
            uniq.sort();
            uniq.dedup();
            proptest::prop_assert_eq!(uniq.len(), got.len());
            proptest::prop_assert!(!got.contains(&me));
            let is_local = |a: &[u8; 6]| a[1] == me[1];
            let locals = peers.iter().filter(|p| p.addr != me && is_local(&p.addr)).count();
            let first_nonlocal = got.iter().position(|a| !is_local(a)).unwrap_or(got.len());
            proptest::prop_assert_eq!(first_nonlocal, locals.min(n));
        }
    }
}
