//! The piece picker: which block of which wanted piece each source fetches.
//!
//! Pure: no sockets, no clock (time comes in as milliseconds). Each
//! torrent's state machine (`machine.rs`) owns one `Picker`.
//!
//! Only pieces apt is waiting for are fetched, in the order apt asked
//! ("jobs", by sequence number): a dt1 piece is a whole package, and apt
//! wants nothing else. Within a piece a source takes the **lowest free
//! blocks**, so several peers on one piece fill it front to back and the
//! contiguous prefix (what streams to apt) grows smoothly. Once every block
//! of a piece is requested, a source with room duplicates the oldest request
//! of another source (endgame, per piece, because apt waits per piece).
//! The mirror never takes single blocks: it takes a range to the end of the
//! piece (see `mirror_rules.rs` for when, and `machine.rs` for the caller).

use std::collections::HashMap;

#[cfg(test)]
use crate::types::PieceIndex;
use crate::types::{Source, BLOCK};

/// A source: a peer or the mirror, the same way (libtorrent's web seed is a
/// peer too). Peers take single blocks ([`Picker::pick`]); the mirror takes
/// a range to the end of a piece ([`Picker::take_range`]), since an HTTP
/// request per 16 KiB would cost a round trip each.
pub type Src = Source;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Blk {
    Free,
    /// Requested from `by` at `at` ms; `dup` when a second source has it
    /// too (endgame: peers only duplicate peers' requests).
    Req {
        by: Src,
        at: u64,
        dup: Option<Src>,
    },
    Got,
}

impl Blk {
    /// Requested from a peer (not the mirror).
    fn peer_req(self) -> bool {
        matches!(
            self,
            Blk::Req {
                by: Source::Peer(_),
                ..
            }
        )
    }
}

/// A block request: piece, offset, length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Req {
    /// Piece index.
    pub piece: u32,
    /// Offset in the piece.
    pub begin: u32,
    /// Length (16 KiB except a piece's last block).
    pub len: u32,
}

/// One wanted piece.
#[derive(Debug)]
struct Wanted {
    piece: u32,
    size: u64,
    blocks: Vec<Blk>,
    /// No free block below this index.
    free_hint: usize,
}

impl Wanted {
    fn req(&self, b: usize) -> Req {
        let begin = b as u64 * u64::from(BLOCK);
        Req {
            piece: self.piece,
            begin: begin as u32,
            len: (self.size - begin).min(u64::from(BLOCK)) as u32,
        }
    }
}

/// The picker of one torrent.
///
/// It is the one record of which peer has which block requested
/// (`Blk::Req`); how many requests a peer has out is derived from it and
/// kept beside it in `outstanding`, updated by every transition here and
/// nowhere else, and recounted by [`Picker::check_invariants`].
#[derive(Debug, Default)]
pub struct Picker {
    /// In apt's order.
    jobs: Vec<Wanted>,
    /// Per peer: blocks requested from it (as first or duplicate source).
    outstanding: HashMap<Src, usize>,
}

/// Takes one request of `src` off the count.
fn dec(outstanding: &mut HashMap<Src, usize>, src: Src) {
    if let Some(n) = outstanding.get_mut(&src) {
        *n = n.saturating_sub(1);
        if *n == 0 {
            outstanding.remove(&src);
        }
    }
}

/// Releases every request a block holds (it becomes free, got or the
/// mirror's).
fn drop_reqs(outstanding: &mut HashMap<Src, usize>, x: Blk) {
    if let Blk::Req { by, dup, .. } = x {
        dec(outstanding, by);
        if let Some(d) = dup {
            dec(outstanding, d);
        }
    }
}

impl Picker {
    /// apt wants `piece` of `size` bytes. Pieces beyond 64 TiB of blocks
    /// are refused by the caller (the dt1 format caps sizes well below).
    pub fn add(&mut self, piece: u32, size: u64) {
        if self.jobs.iter().any(|j| j.piece == piece) {
            return;
        }
        let n = size.div_ceil(u64::from(BLOCK)) as usize;
        self.jobs.push(Wanted {
            piece,
            size,
            blocks: vec![Blk::Free; n],
            free_hint: 0,
        });
    }

    /// The piece is over (verified, or failed for good). Its requests are
    /// no longer counted (the caller cancels them on the wire).
    pub fn remove(&mut self, piece: u32) {
        if let Some(i) = self.jobs.iter().position(|j| j.piece == piece) {
            let j = self.jobs.remove(i);
            for x in j.blocks {
                drop_reqs(&mut self.outstanding, x);
            }
        }
    }

    /// Forgets every block state of `piece` (a retry after a failed hash).
    pub fn reset(&mut self, piece: u32) {
        let Some(i) = self.jobs.iter().position(|j| j.piece == piece) else {
            return;
        };
        let j = &mut self.jobs[i];
        for x in j.blocks.iter_mut() {
            drop_reqs(&mut self.outstanding, *x);
            *x = Blk::Free;
        }
        j.free_hint = 0;
    }

    /// The peers with requests out.
    #[cfg(test)]
    pub fn sources(&self) -> impl Iterator<Item = Src> + '_ {
        self.outstanding.keys().copied()
    }

    /// How many requests peer `src` has out.
    pub fn outstanding(&self, src: Src) -> usize {
        self.outstanding.get(&src).copied().unwrap_or(0)
    }

    /// Wanted pieces in apt's order.
    pub fn wanted(&self) -> impl Iterator<Item = u32> + '_ {
        self.jobs.iter().map(|j| j.piece)
    }

    /// Whether `piece` is wanted.
    pub fn is_wanted(&self, piece: u32) -> bool {
        self.jobs.iter().any(|j| j.piece == piece)
    }

    /// Up to `room` requests for `src`, which holds the pieces for which
    /// `has` is true. Fills from the first wanted piece on; endgame
    /// duplicates only when no free block is left in that piece.
    pub fn pick(&mut self, src: Src, has: impl Fn(u32) -> bool, room: usize, now: u64) -> Vec<Req> {
        let mut out = Vec::new();
        for j in &mut self.jobs {
            if out.len() >= room {
                break;
            }
            if !has(j.piece) {
                continue;
            }
            let mut b = j.free_hint;
            while b < j.blocks.len() && out.len() < room {
                if j.blocks[b] == Blk::Free {
                    j.blocks[b] = Blk::Req {
                        by: src,
                        at: now,
                        dup: None,
                    };
                    *self.outstanding.entry(src).or_insert(0) += 1;
                    out.push(j.req(b));
                }
                b += 1;
            }
            // Every block below `b` is taken now: move the hint forward
            // only (amortised O(1) per block, even for a 65,536-block piece).
            let mut h = b;
            while h < j.blocks.len() && j.blocks[h] != Blk::Free {
                h += 1;
            }
            j.free_hint = h;
            if out.len() >= room || j.free_hint < j.blocks.len() {
                continue;
            }
            // Endgame for this piece: duplicate the oldest requests of others.
            let mut cand: Vec<(u64, usize)> = j
                .blocks
                .iter()
                .enumerate()
                .filter_map(|(i, x)| match *x {
                    Blk::Req {
                        by: by @ Source::Peer(_),
                        at,
                        dup: None,
                    } if by != src => Some((at, i)),
                    _ => None,
                })
                .collect();
            cand.sort_unstable();
            for (_, i) in cand.into_iter().take(room - out.len()) {
                if let Blk::Req { dup, .. } = &mut j.blocks[i] {
                    *dup = Some(src);
                    *self.outstanding.entry(src).or_insert(0) += 1;
                }
                out.push(j.req(i));
            }
        }
        out
    }

    /// A block arrived from `src`. Returns the other sources that had it
    /// requested (to be cancelled there).
    pub fn got(&mut self, piece: u32, begin: u32, src: Src) -> Vec<Src> {
        let Some(j) = self.jobs.iter_mut().find(|j| j.piece == piece) else {
            return Vec::new();
        };
        let b = (begin / BLOCK) as usize;
        let Some(x) = j.blocks.get_mut(b) else {
            return Vec::new();
        };
        let others = match *x {
            Blk::Req { by, dup, .. } => [Some(by), dup]
                .into_iter()
                .flatten()
                .filter(|&s| s != src)
                .collect(),
            _ => Vec::new(),
        };
        drop_reqs(&mut self.outstanding, *x);
        *x = Blk::Got;
        others
    }

    #[cfg(test)]
    /// Marks the blocks of `[from, to)` (byte offsets, block-aligned start)
    /// as received, e.g. what the mirror delivered before it stopped.
    pub fn got_range(&mut self, piece: u32, received: impl Fn(u64, u64) -> bool) {
        if let Some(j) = self.jobs.iter_mut().find(|j| j.piece == piece) {
            for b in 0..j.blocks.len() {
                let r = j.req(b);
                let (s, e) = (u64::from(r.begin), u64::from(r.begin) + u64::from(r.len));
                if j.blocks[b] != Blk::Got && received(s, e) {
                    j.blocks[b] = Blk::Got;
                }
            }
        }
    }

    /// `src` is gone, choked us, or stalled: its requests become free
    /// again (or stay with the duplicate source). Returns how many.
    pub fn release(&mut self, src: Src) -> usize {
        self.outstanding.remove(&src);
        let mut n = 0;
        for j in &mut self.jobs {
            for (i, x) in j.blocks.iter_mut().enumerate() {
                if let Blk::Req { by, at, dup } = *x {
                    if by == src {
                        *x = match dup {
                            Some(d) => Blk::Req {
                                by: d,
                                at,
                                dup: None,
                            },
                            None => Blk::Free,
                        };
                        n += 1;
                        j.free_hint = j.free_hint.min(i);
                    } else if dup == Some(src) {
                        *x = Blk::Req { by, at, dup: None };
                        n += 1;
                    }
                }
            }
        }
        n
    }

    /// One request of `src` was rejected: the block is free again.
    /// Returns when it was requested (for an endgame duplicate, when the
    /// first copy was), or `None` when `src` had no such request out (it
    /// was cancelled, or answered by someone else).
    pub fn rejected(&mut self, r: Req, src: Src) -> Option<u64> {
        let mut sent = None;
        if let Some(j) = self.jobs.iter_mut().find(|j| j.piece == r.piece) {
            let b = (r.begin / BLOCK) as usize;
            if let Some(x) = j.blocks.get_mut(b) {
                if let Blk::Req { by, at, dup } = *x {
                    if by == src || dup == Some(src) {
                        dec(&mut self.outstanding, src);
                        sent = Some(at);
                    }
                    if by == src {
                        *x = dup.map_or(Blk::Free, |d| Blk::Req {
                            by: d,
                            at,
                            dup: None,
                        });
                        j.free_hint = j.free_hint.min(b);
                    } else if dup == Some(src) {
                        *x = Blk::Req { by, at, dup: None };
                    }
                }
            }
        }
        sent
    }

    /// Gives `src` (the mirror) every free block from block `from_block` to
    /// the end of `piece`. Returns the byte range it should fetch: from the
    /// first block it took to the end (blocks still requested from peers
    /// inside that range are fetched twice; the first copy wins). `None`
    /// when no block was free.
    pub fn take_range(
        &mut self,
        src: Src,
        piece: u32,
        from_block: usize,
        now: u64,
    ) -> Option<(u64, u64)> {
        let j = self.jobs.iter_mut().find(|j| j.piece == piece)?;
        let mut first = None;
        for b in from_block..j.blocks.len() {
            if j.blocks[b] == Blk::Free {
                j.blocks[b] = Blk::Req {
                    by: src,
                    at: now,
                    dup: None,
                };
                *self.outstanding.entry(src).or_insert(0) += 1;
                first.get_or_insert(b);
            }
        }
        j.free_hint = j
            .blocks
            .iter()
            .position(|x| *x == Blk::Free)
            .unwrap_or(j.blocks.len());
        first.map(|b| (b as u64 * u64::from(BLOCK), j.size))
    }

    /// `src`'s range of `piece` ended (done, failed or cut back): its
    /// blocks that were received are got, the others free again.
    pub fn range_stopped(&mut self, src: Src, piece: u32, received: impl Fn(u64, u64) -> bool) {
        let Some(j) = self.jobs.iter_mut().find(|j| j.piece == piece) else {
            return;
        };
        for b in 0..j.blocks.len() {
            let x = j.blocks[b];
            let Blk::Req { by, at, dup } = x else {
                continue;
            };
            if by != src {
                continue;
            }
            let r = j.req(b);
            let (s, e) = (u64::from(r.begin), u64::from(r.begin) + u64::from(r.len));
            drop_reqs(&mut self.outstanding, x);
            j.blocks[b] = if received(s, e) {
                // A duplicate holder's request is moot now.
                Blk::Got
            } else if let Some(d) = dup {
                *self.outstanding.entry(d).or_insert(0) += 1;
                Blk::Req {
                    by: d,
                    at,
                    dup: None,
                }
            } else {
                Blk::Free
            };
        }
        j.free_hint = j
            .blocks
            .iter()
            .position(|x| *x == Blk::Free)
            .unwrap_or(j.blocks.len());
    }

    /// The first block after the last one requested from a peer: where a
    /// tail for the mirror may start without duplicating peer requests.
    pub fn tail_start(&self, piece: u32) -> Option<usize> {
        let j = self.jobs.iter().find(|j| j.piece == piece)?;
        let last_req = j
            .blocks
            .iter()
            .rposition(|x| x.peer_req() || *x == Blk::Got);
        Some(last_req.map_or(0, |i| i + 1))
    }

    /// (free, requested from peers, with the mirror) block counts.
    pub fn counts(&self, piece: u32) -> (usize, usize, usize) {
        let Some(j) = self.jobs.iter().find(|j| j.piece == piece) else {
            return (0, 0, 0);
        };
        j.blocks.iter().fold((0, 0, 0), |(f, r, m), x| match x {
            Blk::Free => (f + 1, r, m),
            Blk::Req {
                by: Source::Mirror, ..
            } => (f, r, m + 1),
            Blk::Req { .. } => (f, r + 1, m),
            Blk::Got => (f, r, m),
        })
    }

    #[cfg(test)]
    /// Whether `src` has a request outstanding on `piece`.
    pub fn requested_from(&self, piece: u32, src: Src) -> bool {
        self.jobs.iter().any(|j| {
            j.piece == piece
                && j.blocks.iter().any(
                    |x| matches!(*x, Blk::Req { by, dup, .. } if by == src || dup == Some(src)),
                )
        })
    }
}

#[cfg(test)]
impl Picker {
    /// Panics if the picker's state is inconsistent: a piece wanted twice,
    /// a hint past a free block, a source that duplicates its own request,
    /// or a per-peer count that differs from a recount of the blocks.
    /// Tests call it after every step.
    pub fn check_invariants(&self) {
        let mut count: HashMap<Src, usize> = HashMap::new();
        for (i, j) in self.jobs.iter().enumerate() {
            assert!(
                !self.jobs[..i].iter().any(|o| o.piece == j.piece),
                "piece {} wanted twice",
                j.piece
            );
            assert_eq!(
                j.blocks.len() as u64,
                j.size.div_ceil(u64::from(BLOCK)),
                "piece {}: block count",
                j.piece
            );
            assert!(
                j.blocks[..j.free_hint.min(j.blocks.len())]
                    .iter()
                    .all(|b| *b != Blk::Free),
                "piece {}: a free block below the hint {}",
                j.piece,
                j.free_hint
            );
            for b in &j.blocks {
                if let Blk::Req { by, dup, .. } = *b {
                    assert_ne!(
                        Some(by),
                        dup,
                        "piece {}: a source duplicates itself",
                        j.piece
                    );
                    *count.entry(by).or_insert(0) += 1;
                    if let Some(d) = dup {
                        *count.entry(d).or_insert(0) += 1;
                    }
                }
            }
        }
        assert_eq!(count, self.outstanding, "per-peer request counts");
    }

    /// The wanted piece `piece`'s size, if it is wanted.
    pub fn size(&self, piece: PieceIndex) -> Option<u64> {
        self.jobs.iter().find(|j| j.piece == piece).map(|j| j.size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(n: u32) -> Src {
        Source::Peer(crate::types::PeerKey::new(n).expect("non-zero"))
    }

    const K: u64 = BLOCK as u64;

    fn reqs(v: &[Req]) -> Vec<(u32, u32, u32)> {
        v.iter().map(|r| (r.piece, r.begin, r.len)).collect()
    }

    #[test]
    fn picks_in_apt_order_lowest_block_first_and_short_last_block() {
        let mut p = Picker::default();
        p.add(7, 2 * K + 100);
        p.add(3, 50);
        let got = p.pick(k(1), |_| true, 10, 0);
        p.check_invariants();
        assert_eq!(
            reqs(&got),
            vec![
                (7, 0, BLOCK),
                (7, BLOCK, BLOCK),
                (7, 2 * BLOCK, 100),
                (3, 0, 50)
            ]
        );
        // Nothing free any more; a second peer duplicates (endgame),
        // oldest first, at most once per block.
        let dup = p.pick(k(2), |_| true, 2, 5);
        p.check_invariants();
        assert_eq!(reqs(&dup), vec![(7, 0, BLOCK), (7, BLOCK, BLOCK)]);
        let dup2 = p.pick(k(2), |_| true, 10, 6);
        p.check_invariants();
        assert_eq!(reqs(&dup2), vec![(7, 2 * BLOCK, 100), (3, 0, 50)]);
        assert!(
            p.pick(k(3), |_| true, 10, 7).is_empty(),
            "two copies at most"
        );
    }

    #[test]
    fn skips_pieces_the_source_lacks_and_respects_room() {
        let mut p = Picker::default();
        p.add(1, 3 * K);
        p.add(2, 3 * K);
        let got = p.pick(k(1), |i| i == 2, 2, 0);
        p.check_invariants();
        assert_eq!(reqs(&got), vec![(2, 0, BLOCK), (2, BLOCK, BLOCK)]);
        let got = p.pick(k(2), |_| true, 4, 0);
        p.check_invariants();
        assert_eq!(
            reqs(&got),
            vec![
                (1, 0, BLOCK),
                (1, BLOCK, BLOCK),
                (1, 2 * BLOCK, BLOCK),
                (2, 2 * BLOCK, BLOCK)
            ]
        );
    }

    #[test]
    fn got_returns_duplicates_to_cancel() {
        let mut p = Picker::default();
        p.add(1, K);
        p.pick(k(1), |_| true, 1, 0);
        p.check_invariants();
        p.pick(k(2), |_| true, 1, 0);
        p.check_invariants();
        assert_eq!(p.got(1, 0, k(2)), vec![k(1)]);
        assert_eq!(p.counts(1), (0, 0, 0));
        assert!(p.got(9, 0, k(2)).is_empty(), "unknown piece");
        assert!(p.got(1, 99 * BLOCK, k(2)).is_empty(), "beyond the piece");
    }

    #[test]
    fn release_frees_or_hands_over_to_the_duplicate() {
        let mut p = Picker::default();
        p.add(1, 2 * K);
        p.pick(k(1), |_| true, 2, 0);
        p.check_invariants();
        p.pick(k(2), |_| true, 1, 0); // duplicates block 0
        p.check_invariants();
        assert_eq!(p.release(k(1)), 2);
        assert_eq!(p.counts(1), (1, 1, 0));
        assert!(p.requested_from(1, k(2)));
        assert!(!p.requested_from(1, k(1)));
        let again = p.pick(k(3), |_| true, 5, 1);
        p.check_invariants();
        assert_eq!(reqs(&again), vec![(1, BLOCK, BLOCK), (1, 0, BLOCK)]);
    }

    #[test]
    fn rejected_block_is_free_again() {
        let mut p = Picker::default();
        p.add(1, 2 * K);
        let r = p.pick(k(1), |_| true, 2, 0);
        p.check_invariants();
        p.rejected(r[1], k(1));
        p.check_invariants();
        assert_eq!(p.counts(1), (1, 1, 0));
        p.rejected(r[0], k(9)); // not its request: no change
        p.check_invariants();
        assert_eq!(p.counts(1), (1, 1, 0));
    }

    #[test]
    fn mirror_takes_free_blocks_to_the_end_and_gives_back_what_it_missed() {
        let mut p = Picker::default();
        p.add(1, 4 * K + 10);
        p.pick(k(1), |_| true, 2, 0);
        p.check_invariants();
        assert_eq!(p.tail_start(1), Some(2));
        assert_eq!(
            p.take_range(Source::Mirror, 1, 0, 0),
            Some((2 * K, 4 * K + 10))
        );
        assert_eq!(p.counts(1), (0, 2, 3));
        assert_eq!(p.take_range(Source::Mirror, 1, 0, 0), None, "nothing free");
        assert!(
            p.pick(k(2), |_| true, 10, 0).len() == 2,
            "endgame only on peer blocks"
        );
        // The mirror delivered block 2 and stopped.
        p.range_stopped(Source::Mirror, 1, |s, _| s == 2 * K);
        p.check_invariants();
        assert_eq!(p.counts(1), (2, 2, 0));
    }

    #[test]
    fn got_range_marks_received_blocks() {
        let mut p = Picker::default();
        p.add(1, 3 * K);
        p.got_range(1, |s, e| s == 0 && e == K);
        p.check_invariants();
        assert_eq!(p.counts(1), (2, 0, 0));
        let r = p.pick(k(1), |_| true, 5, 0);
        p.check_invariants();
        assert_eq!(reqs(&r), vec![(1, BLOCK, BLOCK), (1, 2 * BLOCK, BLOCK)]);
    }

    #[test]
    fn reset_and_remove() {
        let mut p = Picker::default();
        p.add(1, 2 * K);
        p.add(1, 2 * K); // twice: one job
        assert_eq!(p.wanted().collect::<Vec<_>>(), vec![1]);
        p.pick(k(1), |_| true, 2, 0);
        p.check_invariants();
        p.got(1, 0, k(1));
        p.check_invariants();
        p.reset(1);
        p.check_invariants();
        assert_eq!(p.counts(1), (2, 0, 0));
        p.remove(1);
        p.check_invariants();
        assert!(!p.is_wanted(1));
    }
}
