//! Penalties for peers that send corrupt data or break the protocol (§8).
//! Pure: time comes in as `now_ms`.
//!
//! Bans are by IP, because a peer chooses its own peer id. The mirror never
//! appears here: callers pass `None` for its blocks.
//!
//! Memory is bounded: at most `cap` IPs are remembered (bans, strikes and
//! violation counts together), and the one written least recently is
//! forgotten first. Forgetting can free a bad peer early, but an attacker who
//! can use 10,000 addresses can change address anyway, so a bigger table would
//! buy nothing.

use std::collections::{BTreeSet, HashMap};
use std::net::IpAddr;

/// How long a strike counts (§8, **[assumed]**).
pub const STRIKE_MS: u64 = 3_600_000;
/// Violations (dropped connections) counted together (§8, **[assumed]**).
pub const VIOLATION_WINDOW_MS: u64 = 600_000;
/// Violations within [`VIOLATION_WINDOW_MS`] that mean a ban.
pub const VIOLATIONS_TO_BAN: usize = 3;

#[derive(Clone, Debug, Default)]
struct Entry {
    /// Order key in `Bans::order`.
    seq: u64,
    banned_until: Option<u64>,
    /// Strikes in thousandths, so weights add up exactly.
    strikes_milli: u64,
    /// When the first strike of the current tally came.
    strikes_since: u64,
    /// The last `VIOLATIONS_TO_BAN - 1` violations, oldest first.
    violations: Vec<u64>,
}

/// Bans by IP, and the strikes and violations that lead to them.
///
/// Strikes expire [`STRIKE_MS`] after the first strike of a tally: the tally
/// restarts at the next strike after that. This needs one counter per IP and
/// never lets a strike count longer than an hour; it can forget a strike a
/// little early, which errs towards not banning.
#[derive(Clone, Debug)]
pub struct Bans {
    ban_ms: u64,
    strikes_to_ban: u32,
    cap: usize,
    entries: HashMap<IpAddr, Entry>,
    /// `(seq, ip)`: the least recently written entry first.
    order: BTreeSet<(u64, IpAddr)>,
    next_seq: u64,
}

impl Bans {
    /// Bans last `ban_ms`; `strikes_to_ban` full strikes (0 acts as 1) mean a
    /// ban; at most `cap` IPs remembered (0 acts as 1).
    pub fn new(ban_ms: u64, strikes_to_ban: u32, cap: usize) -> Self {
        Bans {
            ban_ms,
            strikes_to_ban: strikes_to_ban.max(1),
            cap: cap.max(1),
            entries: HashMap::new(),
            order: BTreeSet::new(),
            next_seq: 0,
        }
    }

    /// The entry for `ip`, created if needed (evicting the oldest when full)
    /// and moved to the back of the eviction order.
    fn touch(&mut self, ip: IpAddr) -> &mut Entry {
        let seq = self.next_seq;
        self.next_seq += 1;
        if let Some(old) = self.entries.get(&ip).map(|e| e.seq) {
            self.order.remove(&(old, ip));
        } else {
            while self.entries.len() >= self.cap {
                let Some((_, victim)) = self.order.pop_first() else {
                    break;
                };
                self.entries.remove(&victim);
            }
        }
        self.order.insert((seq, ip));
        let e = self.entries.entry(ip).or_default();
        e.seq = seq;
        e
    }

    fn remove(&mut self, ip: IpAddr) {
        if let Some(e) = self.entries.remove(&ip) {
            self.order.remove(&(e.seq, ip));
        }
    }

    /// Whether `ip` is banned at `now_ms`; forgets the ban once it expired.
    pub fn is_banned(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        match self.entries.get(&ip).and_then(|e| e.banned_until) {
            Some(until) if now_ms < until => true,
            // A ban cleared the strikes and violations, and none are recorded
            // while banned, so nothing else is lost.
            Some(_) => {
                self.remove(ip);
                false
            }
            None => false,
        }
    }

    /// Bans `ip` for `ban_ms` from `now_ms` (again, if already banned).
    pub fn ban(&mut self, ip: IpAddr, now_ms: u64) {
        let until = now_ms.saturating_add(self.ban_ms);
        let e = self.touch(ip);
        *e = Entry {
            seq: e.seq,
            banned_until: Some(until),
            ..Entry::default()
        };
    }

    /// Adds a strike of weight 0.0..=1.0 (clamped; NaN counts as 0); returns
    /// true if this made the IP banned. Strikes on a banned IP are ignored.
    pub fn strike(&mut self, ip: IpAddr, weight: f64, now_ms: u64) -> bool {
        if self.is_banned(ip, now_ms) {
            return false;
        }
        let milli = if weight.is_nan() {
            0
        } else {
            (weight.clamp(0.0, 1.0) * 1000.0).round() as u64
        };
        let need = u64::from(self.strikes_to_ban) * 1000;
        let e = self.touch(ip);
        if e.strikes_milli == 0 || now_ms.saturating_sub(e.strikes_since) >= STRIKE_MS {
            e.strikes_milli = 0;
            e.strikes_since = now_ms;
        }
        e.strikes_milli += milli;
        if e.strikes_milli >= need {
            self.ban(ip, now_ms);
            return true;
        }
        false
    }

    /// A protocol violation (the connection was dropped): 3 within 10 min
    /// mean a ban. Returns true if the IP is banned now (already or by this).
    pub fn violation(&mut self, ip: IpAddr, now_ms: u64) -> bool {
        if self.is_banned(ip, now_ms) {
            return true;
        }
        let e = self.touch(ip);
        e.violations
            .retain(|&t| now_ms.saturating_sub(t) < VIOLATION_WINDOW_MS);
        if e.violations.len() + 1 >= VIOLATIONS_TO_BAN {
            self.ban(ip, now_ms);
            return true;
        }
        e.violations.push(now_ms);
        false
    }

    /// Bans recorded, counting expired ones not yet noticed by
    /// [`is_banned`](Self::is_banned) or [`expire`](Self::expire).
    pub fn banned_count(&self) -> usize {
        self.entries
            .values()
            .filter(|e| e.banned_until.is_some())
            .count()
    }

    /// Forgets everything that no longer counts at `now_ms`: expired bans,
    /// old strikes, old violations. Call it now and then (e.g. each minute).
    pub fn expire(&mut self, now_ms: u64) {
        let order = &mut self.order;
        self.entries.retain(|ip, e| {
            if e.banned_until.is_some_and(|u| now_ms >= u) {
                e.banned_until = None;
            }
            if now_ms.saturating_sub(e.strikes_since) >= STRIKE_MS {
                e.strikes_milli = 0;
            }
            e.violations
                .retain(|&t| now_ms.saturating_sub(t) < VIOLATION_WINDOW_MS);
            let keep = e.banned_until.is_some() || e.strikes_milli > 0 || !e.violations.is_empty();
            if !keep {
                order.remove(&(e.seq, *ip));
            }
            keep
        });
    }
}

/// Smart ban (libtorrent's idea): a piece failed its SHA-256; later a good
/// copy was verified. `sources[b]` is the source that delivered block `b` of
/// the failed copy (`None` = not received, or from the mirror, which is never
/// banned); `bad_blocks[b]` and `good_blocks[b]` are digests of block `b` in
/// each copy.
///
/// Returns `(culprits, cleared)`: sources that sent at least one differing
/// block (proven bad), and sources whose every block was compared and
/// matched. A source with a block that has no digest in either copy is in
/// neither list. Both sorted and deduplicated.
pub fn smart_ban<S: Copy + Ord, D: PartialEq>(
    sources: &[Option<S>],
    bad_blocks: &[D],
    good_blocks: &[D],
) -> (Vec<S>, Vec<S>) {
    let mut culprits = Vec::new();
    let mut unsure = Vec::new();
    let mut all = Vec::new();
    for (b, src) in sources.iter().enumerate() {
        let Some(s) = *src else { continue };
        all.push(s);
        match (bad_blocks.get(b), good_blocks.get(b)) {
            (Some(x), Some(y)) if x == y => {}
            (Some(_), Some(_)) => culprits.push(s),
            _ => unsure.push(s),
        }
    }
    for v in [&mut culprits, &mut unsure, &mut all] {
        v.sort_unstable();
        v.dedup();
    }
    all.retain(|s| culprits.binary_search(s).is_err() && unsure.binary_search(s).is_err());
    (culprits, all)
}

/// When nothing can be compared: each contributing source's share of the
/// blocks it and the other peers delivered, as a strike weight (a sole
/// contributor gets 1.0, i.e. it counts as proven bad). Mirror blocks
/// (`None`) are left out: the mirror is trusted. Sorted by source.
pub fn shares<S: Copy + Ord>(sources: &[Option<S>]) -> Vec<(S, f64)> {
    let mut ids: Vec<S> = sources.iter().flatten().copied().collect();
    let total = ids.len() as f64;
    ids.sort_unstable();
    let mut out: Vec<(S, f64)> = Vec::new();
    for s in ids {
        match out.last_mut() {
            Some((last, n)) if *last == s => *n += 1.0,
            _ => out.push((s, 1.0)),
        }
    }
    for (_, w) in &mut out {
        *w /= total;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    fn ip(n: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, 0, n))
    }

    const H: u64 = STRIKE_MS;
    const M: u64 = 60_000;

    /// One step of a script; `bool` and `usize` are the expected answers.
    enum Op {
        Ban(u8, u64),
        Strike(u8, f64, u64, bool),
        Violation(u8, u64, bool),
        Banned(u8, u64, bool),
        Count(usize),
        Expire(u64),
    }
    use Op::*;

    /// (name, ban_ms, strikes_to_ban, cap, script)
    type Case = (&'static str, u64, u32, usize, &'static [Op]);

    #[test]
    fn bans_table() {
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("ban expires after ban_ms", H, 2, 10,
             &[Ban(1, 0), Banned(1, H - 1, true), Count(1), Banned(1, H, false), Count(0), Banned(2, 0, false)]),
            ("cap evicts the least recently written", H, 2, 2,
             &[Ban(1, 0), Ban(2, 1), Ban(1, 2), Ban(3, 3), Banned(2, 4, false), Banned(1, 4, true), Banned(3, 4, true), Count(2)]),
            ("weighted strikes accumulate", H, 2, 10,
             &[Strike(1, 0.5, 0, false), Strike(1, 0.5, 1, false), Strike(2, 1.0, 2, false), Strike(1, 1.0, 3, true),
               Banned(1, 4, true), Banned(2, 4, false)]),
            ("thirds add up exactly", H, 1, 10,
             &[Strike(1, 1.0 / 3.0, 0, false), Strike(1, 1.0 / 3.0, 0, false), Strike(1, 1.0 / 3.0, 0, false),
               Strike(1, 0.001, 0, true)]),
            ("strikes expire after 1 h", H, 2, 10,
             &[Strike(1, 1.0, 0, false), Strike(1, 1.0, H, false), Strike(1, 1.0, H + 1, true)]),
            ("strike on banned IP ignored; ban clears strikes", 10, 2, 10,
             &[Strike(1, 1.0, 0, false), Ban(1, 0), Strike(1, 1.0, 5, false), Banned(1, 10, false), Strike(1, 1.0, 11, false)]),
            ("weights clamped, NaN is 0", H, 1, 10,
             &[Strike(1, f64::NAN, 0, false), Strike(1, -3.0, 0, false), Strike(1, 7.0, 0, true)]),
            ("3 violations in 10 min ban", H, 2, 10,
             &[Violation(1, 0, false), Violation(1, 5 * M, false), Violation(1, 10 * M, false),
               Violation(1, 10 * M + 1, true), Violation(1, 10 * M + 2, true), Banned(1, 10 * M + 2, true)]),
            ("expire forgets stale state", M, 2, 10,
             &[Ban(1, 0), Strike(2, 1.0, 0, false), Violation(3, 0, false), Count(1), Expire(M), Count(0),
               Strike(2, 1.0, H, false), Violation(3, 20 * M, false), Violation(3, 20 * M, false)]),
        ];
        for &(name, ban_ms, strikes, cap, script) in cases {
            let mut b = Bans::new(ban_ms, strikes, cap);
            for (i, op) in script.iter().enumerate() {
                match *op {
                    Ban(n, t) => b.ban(ip(n), t),
                    Strike(n, w, t, want) => {
                        assert_eq!(b.strike(ip(n), w, t), want, "{name}: op {i}")
                    }
                    Violation(n, t, want) => {
                        assert_eq!(b.violation(ip(n), t), want, "{name}: op {i}")
                    }
                    Banned(n, t, want) => assert_eq!(b.is_banned(ip(n), t), want, "{name}: op {i}"),
                    Count(want) => assert_eq!(b.banned_count(), want, "{name}: op {i}"),
                    Expire(t) => b.expire(t),
                }
            }
            assert!(
                b.entries.len() <= cap && b.order.len() == b.entries.len(),
                "{name}"
            );
        }
    }

    #[test]
    fn expire_drops_entries() {
        let mut b = Bans::new(M, 2, 10);
        b.ban(ip(1), 0);
        b.strike(ip(2), 0.5, 0);
        b.violation(ip(3), 0);
        b.expire(10 * M);
        assert_eq!(
            (b.entries.len(), b.order.len()),
            (1, 1),
            "strike still counts"
        );
        b.expire(H);
        assert_eq!((b.entries.len(), b.order.len()), (0, 0));
    }

    #[test]
    fn v4_and_v6_are_distinct_and_cap_holds() {
        let mut b = Bans::new(H, 2, 100);
        let v6 = IpAddr::V6(Ipv6Addr::LOCALHOST);
        b.ban(v6, 0);
        assert!(b.is_banned(v6, 1) && !b.is_banned(ip(1), 1));
        for i in 0..1000u32 {
            b.violation(IpAddr::V4(Ipv4Addr::from(i)), u64::from(i));
        }
        assert_eq!((b.entries.len(), b.order.len()), (100, 100));
        assert!(!b.is_banned(v6, 2), "oldest evicted");
    }

    const A: Option<u8> = Some(b'a');
    const B: Option<u8> = Some(b'b');
    const C: Option<u8> = Some(b'c');

    /// (name, sources, bad digests, good digests, culprits, cleared)
    type SmartCase = (
        &'static str,
        &'static [Option<u8>],
        &'static [u64],
        &'static [u64],
        &'static [u8],
        &'static [u8],
    );

    #[test]
    fn smart_ban_table() {
        #[rustfmt::skip]
        let cases: &[SmartCase] = &[
            ("single culprit among 3",   &[A, A, B, B, C, C], &[1, 2, 3, 9, 5, 6], &[1, 2, 3, 4, 5, 6], b"b", b"ac"),
            ("mirror blocks ignored",    &[None, A, None, B], &[9, 2, 9, 4], &[1, 2, 3, 4], b"", b"ab"),
            ("all matched, all cleared", &[C, A, B, A], &[1, 2, 3, 4], &[1, 2, 3, 4], b"", b"abc"),
            ("one bad block is enough",  &[A, A, A, B], &[1, 2, 0, 4], &[1, 2, 3, 4], b"a", b"b"),
            ("two culprits",             &[A, B, C], &[0, 2, 0], &[1, 2, 3], b"ac", b"b"),
            ("no digest: neither list",  &[A, B, C], &[1, 2, 3], &[1, 2], b"", b"ab"),
            ("nothing received",         &[None, None], &[1, 2], &[3, 4], b"", b""),
        ];
        for &(name, sources, bad, good, culprits, cleared) in cases {
            let want = (culprits.to_vec(), cleared.to_vec());
            assert_eq!(smart_ban(sources, bad, good), want, "{name}");
        }
    }

    #[test]
    fn smart_ban_with_hash_digests() {
        let (bad, good) = ([[1u8; 20], [2; 20]], [[1u8; 20], [3; 20]]);
        assert_eq!(
            smart_ban(&[Some(7u32), Some(9)], &bad, &good),
            (vec![9], vec![7])
        );
    }

    /// (name, sources, want (source, weight))
    type SharesCase = (&'static str, &'static [Option<u32>], &'static [(u32, f64)]);

    #[test]
    fn shares_table() {
        #[rustfmt::skip]
        let cases: &[SharesCase] = &[
            ("split by blocks",             &[Some(2), Some(1), Some(2), None], &[(1, 1.0 / 3.0), (2, 2.0 / 3.0)]),
            ("sole peer beside the mirror", &[None, Some(7), None, Some(7)], &[(7, 1.0)]),
            ("even split",                  &[Some(1), Some(2), Some(3), Some(4)], &[(1, 0.25), (2, 0.25), (3, 0.25), (4, 0.25)]),
            ("mirror only",                 &[None, None], &[]),
            ("empty",                       &[], &[]),
        ];
        for &(name, sources, want) in cases {
            let got = shares(sources);
            assert_eq!(got.len(), want.len(), "{name}");
            for (g, w) in got.iter().zip(want) {
                assert!(g.0 == w.0 && (g.1 - w.1).abs() < 1e-12, "{name}: {got:?}");
            }
        }
    }
}
