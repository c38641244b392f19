//! Who we upload to (§11): tit-for-tat regular slots plus one optimistic slot,
//! as in BEP 3 and libtorrent. Pure: the torrent's state machine calls [`Choker::decide`]
//! every 10 s (and when peers come or go) with a snapshot of its peers, the
//! time and a random number, and sends CHOKE/UNCHOKE for the difference.
//!
//! Invariants (kept by `decide`):
//! - with `slots == 0` nobody is unchoked, not even optimistically (`--no-seed`);
//! - only interested peers are unchoked (uploading to others is wasted);
//! - at most `slots` regular peers plus one optimistic peer, no id twice;
//! - snubbed peers never hold a regular slot (they may be picked
//!   optimistically, which is how a snubbed peer gets another chance).

use std::cmp::Reverse;
use std::collections::HashMap;

/// What the choker needs to know about one peer at decision time.
#[derive(Clone, Copy, Debug)]
pub struct PeerSample {
    /// The state machine's id for this connection (its `PeerKey`).
    pub id: u64,
    /// The peer wants something we have.
    pub interested: bool,
    /// Bytes/s the peer sends us.
    pub down_rate: u64,
    /// Bytes we sent the peer recently (e.g. a decaying counter or the last minute).
    pub uploaded_recent: u64,
    /// The peer has sent us nothing for a while although we have requests out.
    pub snubbed: bool,
}

/// The unchoke policy's memory between rounds.
#[derive(Clone, Debug)]
pub struct Choker {
    slots: usize,
    optimistic_ms: u64,
    /// The optimistic peer and when it got the slot.
    optimistic: Option<(u64, u64)>,
    /// When each present peer last held a slot: the tie-break that makes equal
    /// peers take turns (libtorrent's "waited longest to be unchoked").
    last_served: HashMap<u64, u64>,
}

impl Choker {
    /// `slots` regular unchoke slots (0 = seeding off: nobody is ever
    /// unchoked), plus 1 optimistic slot rotated every `optimistic_ms` (30_000).
    pub fn new(slots: usize, optimistic_ms: u64) -> Self {
        Choker {
            slots,
            optimistic_ms,
            optimistic: None,
            last_served: HashMap::new(),
        }
    }

    /// The peer holding the optimistic slot, if any.
    pub fn optimistic(&self) -> Option<u64> {
        self.optimistic.map(|(id, _)| id)
    }

    /// Returns the ids to unchoke now, sorted; every other peer is choked.
    /// Ids in `peers` must be unique. Cost: O(n²) in the peer count, which is
    /// at most 50 per torrent (§9).
    ///
    /// `downloading`: we are downloading from peers, so regular slots go to
    /// the interested peers that send us the most (tit-for-tat: reward those
    /// who help us). Otherwise we are only seeding and nothing they send
    /// matters, so slots go to the peers we uploaded least to lately
    /// (`uploaded_recent` ascending): whoever was served drops back in line
    /// and every interested leecher gets turns, as with libtorrent's
    /// `round_robin`. Ties go to the peer that has
    /// waited longest for a slot, then the lower id.
    ///
    /// The optimistic slot goes to an interested peer without a regular slot,
    /// picked by `rand` (from the caller, so tests are deterministic). It is
    /// kept for `optimistic_ms`, or until the peer leaves or loses interest,
    /// and it does not compete for regular slots meanwhile: otherwise a good
    /// peer found optimistically would just move to a regular slot and the
    /// optimistic slot would be re-drawn every round.
    pub fn decide(
        &mut self,
        peers: &[PeerSample],
        downloading: bool,
        now_ms: u64,
        rand: u64,
    ) -> Vec<u64> {
        if self.slots == 0 {
            self.optimistic = None;
            self.last_served.clear();
            return Vec::new();
        }
        self.last_served
            .retain(|id, _| peers.iter().any(|p| p.id == *id));
        let kept = self.optimistic.filter(|&(id, since)| {
            now_ms.saturating_sub(since) < self.optimistic_ms
                && peers.iter().any(|p| p.id == id && p.interested)
        });
        let kept_id = kept.map(|(id, _)| id);

        let mut regular: Vec<&PeerSample> = peers
            .iter()
            .filter(|p| p.interested && !p.snubbed && Some(p.id) != kept_id)
            .collect();
        let served = |id: u64| self.last_served.get(&id).copied();
        if downloading {
            regular.sort_by_key(|p| (Reverse(p.down_rate), served(p.id), p.id));
        } else {
            regular.sort_by_key(|p| (p.uploaded_recent, served(p.id), p.id));
        }
        let mut out: Vec<u64> = regular.iter().take(self.slots).map(|p| p.id).collect();

        self.optimistic = kept.or_else(|| {
            let prev = self.optimistic.map(|(id, _)| id);
            let mut cands: Vec<u64> = peers
                .iter()
                .filter(|p| p.interested && !out.contains(&p.id))
                .map(|p| p.id)
                .collect();
            cands.sort_unstable();
            cands.dedup();
            // Rotate: the expired holder goes last in line if anyone else waits.
            if cands.len() > 1 {
                cands.retain(|&id| Some(id) != prev);
            }
            let len = u64::try_from(cands.len()).ok().filter(|&n| n > 0)?;
            let pick = usize::try_from(rand % len).ok()?;
            cands.get(pick).map(|&id| (id, now_ms))
        });
        out.extend(self.optimistic());
        out.sort_unstable();
        out.dedup();
        for &id in &out {
            self.last_served.insert(id, now_ms);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const Y: bool = true;
    const N: bool = false;

    /// (id, interested, down_rate, uploaded_recent, snubbed)
    type Row = (u64, bool, u64, u64, bool);

    fn peers(rows: &[Row]) -> Vec<PeerSample> {
        rows.iter()
            .map(
                |&(id, interested, down_rate, uploaded_recent, snubbed)| PeerSample {
                    id,
                    interested,
                    down_rate,
                    uploaded_recent,
                    snubbed,
                },
            )
            .collect()
    }

    /// (name, slots, downloading, rand, peers, want unchoked, want optimistic)
    type Case = (
        &'static str,
        usize,
        bool,
        u64,
        &'static [Row],
        &'static [u64],
        Option<u64>,
    );

    #[test]
    fn first_round_table() {
        #[rustfmt::skip]
        let cases: &[Case] = &[
            ("tit-for-tat: best down_rate, rest optimistic", 2, Y, 0,
             &[(1, Y, 10, 0, N), (2, Y, 50, 0, N), (3, Y, 30, 0, N), (4, N, 99, 0, N)], &[1, 2, 3], Some(1)),
            ("downloading ignores uploaded_recent", 1, Y, 0,
             &[(1, Y, 10, 0, N), (2, Y, 20, 9_999, N)], &[1, 2], Some(1)),
            ("snubbed never regular (rand 1: optimistic is 3)", 1, Y, 1,
             &[(1, Y, 100, 0, Y), (2, Y, 5, 0, N), (3, Y, 1, 0, N)], &[2, 3], Some(3)),
            ("snubbed may be optimistic (rand 0)", 1, Y, 0,
             &[(1, Y, 100, 0, Y), (2, Y, 5, 0, N), (3, Y, 1, 0, N)], &[1, 2], Some(1)),
            ("seeding: least uploaded_recent first", 2, N, 0,
             &[(1, Y, 0, 500, N), (2, Y, 0, 0, N), (3, Y, 0, 100, N), (4, Y, 900, 1000, N)], &[1, 2, 3], Some(1)),
            ("not interested never unchoked", 4, Y, 0,
             &[(1, N, 100, 0, N), (2, N, 0, 0, N)], &[], None),
            ("slots 0: nobody, not even optimistic", 0, N, 0,
             &[(1, Y, 100, 0, N), (2, Y, 0, 0, N)], &[], None),
            ("fewer peers than slots: all, no optimistic", 8, Y, 0,
             &[(1, Y, 0, 0, N), (2, Y, 0, 0, N), (3, N, 0, 0, N)], &[1, 2], None),
            ("only snubbed peers: one optimistic", 8, Y, 5,
             &[(1, Y, 0, 0, Y), (2, Y, 0, 0, Y)], &[2], Some(2)),
            ("no peers", 8, Y, 0, &[], &[], None),
        ];
        for &(name, slots, downloading, rand, rows, want, want_opt) in cases {
            let mut c = Choker::new(slots, 30_000);
            assert_eq!(c.decide(&peers(rows), downloading, 0, rand), want, "{name}");
            assert_eq!(c.optimistic(), want_opt, "{name}: optimistic");
        }
    }

    /// Runs `(now_ms, downloading, rand, want)` rounds on one choker.
    fn rounds(c: &mut Choker, ps: &[PeerSample], script: &[(u64, bool, u64, &[u64])]) {
        for &(t, downloading, rand, want) in script {
            assert_eq!(c.decide(ps, downloading, t, rand), want, "t={t}");
        }
    }

    #[test]
    fn optimistic_kept_30s_then_rotates() {
        let mut c = Choker::new(1, 30_000);
        let ps = peers(&[
            (1, Y, 100, 0, N),
            (2, Y, 0, 0, N),
            (3, Y, 0, 0, N),
            (4, Y, 0, 0, N),
        ]);
        // Kept whatever rand says until 30 s passed; then redrawn among the
        // others, the old holder excluded.
        #[rustfmt::skip]
        rounds(&mut c, &ps, &[(0, Y, 1, &[1, 3]), (10_000, Y, 0, &[1, 3]), (29_999, Y, 0, &[1, 3]),
                              (30_000, Y, 1, &[1, 4]), (40_000, Y, 0, &[1, 4])]);
    }

    #[test]
    fn optimistic_dropped_when_uninterested_or_gone() {
        let mut c = Choker::new(1, 30_000);
        let mut ps = peers(&[(1, Y, 100, 0, N), (2, Y, 0, 0, N), (3, Y, 0, 0, N)]);
        assert_eq!(c.decide(&ps, Y, 0, 0), [1, 2]);
        ps[1].interested = false;
        assert_eq!(c.decide(&ps, Y, 10_000, 0), [1, 3]);
        ps.remove(2);
        assert_eq!(c.decide(&ps, Y, 20_000, 0), [1]);
        assert_eq!(c.optimistic(), None);
    }

    #[test]
    fn optimistic_not_duplicated_with_regular() {
        let mut c = Choker::new(1, 30_000);
        let mut ps = peers(&[(1, Y, 10, 0, N), (2, Y, 100, 0, N), (3, Y, 0, 0, N)]);
        assert_eq!(c.decide(&ps, Y, 0, 0), [1, 2]);
        assert_eq!(c.optimistic(), Some(1));
        // Peer 1 becomes the best uploader while optimistic: it keeps the
        // optimistic slot and the regular slot still goes to someone else.
        ps[0].down_rate = 1000;
        assert_eq!(c.decide(&ps, Y, 10_000, 0), [1, 2]);
        // Expired: it earns the regular slot and the optimistic one moves on.
        assert_eq!(c.decide(&ps, Y, 30_000, 1), [1, 3]);
        assert_eq!(c.optimistic(), Some(3));
    }

    #[test]
    fn seeding_round_robin_serves_everyone() {
        // 2 regular slots, 6 leechers; the caller's uploaded_recent grows for
        // whoever was unchoked. Everyone must be served within a few rounds.
        let mut c = Choker::new(2, 30_000);
        let mut ps = peers(&[(1, Y, 0, 0, N), (2, Y, 0, 0, N), (3, Y, 0, 0, N)]);
        ps.extend(peers(&[(4, Y, 0, 0, N), (5, Y, 0, 0, N), (6, Y, 0, 0, N)]));
        let mut served = [0u32; 7];
        for round in 0..6u64 {
            let out = c.decide(&ps, N, round * 10_000, round);
            assert_eq!(out.len(), 3, "round {round}");
            for p in ps.iter_mut().filter(|p| out.contains(&p.id)) {
                p.uploaded_recent += 1_000_000;
                served[p.id as usize] += 1;
            }
        }
        assert!(served[1..].iter().all(|&n| n >= 2), "{served:?}");
    }

    #[test]
    fn ties_take_turns() {
        // Equal peers (nothing uploaded, no rates): the one that waited
        // longest wins, so regular slots rotate even without byte counts.
        let mut c = Choker::new(1, 1_000_000);
        let ps = peers(&[(1, Y, 0, 0, N), (2, Y, 0, 0, N), (3, Y, 0, 0, N)]);
        #[rustfmt::skip]
        rounds(&mut c, &ps, &[(0, N, 1, &[1, 3]), (10_000, N, 0, &[2, 3]), (20_000, N, 0, &[1, 3]),
                              (30_000, Y, 0, &[2, 3])]);
    }
}
