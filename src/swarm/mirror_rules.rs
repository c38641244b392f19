//! When the mirror helps with a piece: the rules of `docs/swarm-design.md`
//! §6.3, as pure functions of what the torrent's state machine sees. The
//! machine (`machine.rs`) calls them; the mirror's I/O is `src/mirror.rs`.
//!
//! - (a) nobody can serve the piece: [`mirror_start_at`];
//! - (b) the peers on it are slower than the mirror would be: the mirror
//!   takes the tail, [`mirror_tail`];
//! - (c) a peer stalls: its blocks are freed (the machine's tick), and (a)
//!   applies to them.

/// Rule (b): should the mirror take the tail of a piece because the peers
/// are slower than the mirror would be? `rest` bytes remain, the peers on
/// it deliver `peer_rate` B/s, the mirror is estimated at `mirror_rate` B/s
/// with `latency_ms` to its first byte. Returns the byte offset (from the
/// start of the remaining part) where the mirror's tail should begin, so
/// both finish together, or `None` when the peers are faster.
pub fn mirror_tail(rest: u64, peer_rate: u64, mirror_rate: u64, latency_ms: u64) -> Option<u64> {
    if rest == 0 || mirror_rate == 0 {
        return None;
    }
    // Time for the mirror alone vs the peers alone, in ms.
    let t_mirror = latency_ms + rest.saturating_mul(1000) / mirror_rate;
    let t_peers = rest
        .saturating_mul(1000)
        .checked_div(peer_rate)
        .unwrap_or(u64::MAX);
    if t_mirror >= t_peers {
        return None;
    }
    // Peers keep the front: split so that both end together (ignoring the
    // latency, which only favours the peers).
    let front =
        (rest as u128 * peer_rate as u128 / (peer_rate as u128 + mirror_rate as u128)) as u64;
    Some(front)
}

/// The least rule (a) waits for a holder or relay that chokes us: two
/// unchoke rounds. In a herd (issue 12: a cold wave of 20 wanting one 44 MB
/// file) the holders' upload slots are shared, and a receiver that went to
/// the mirror after `mirror_ms` (9 s) cost the fleet 32-40 MB each time.
pub const BUSY_MIN_MS: u64 = 20_000;

/// What rule (a) looks at for a piece that no usable peer serves now.
#[derive(Clone, Copy, Debug, Default)]
pub struct Waiting {
    /// Now, and when apt asked for the piece (ms).
    pub now: u64,
    pub wanted_at: u64,
    /// `wanted_at` plus a random delay of up to 250 ms. (When a peer
    /// fetches it, `wanted_at` is the later of when apt asked and when
    /// that peer last delivered a block of it.)
    pub jitter_at: u64,
    /// `--peer-wait` (ms).
    pub peer_wait: u64,
    /// Refetch from the mirror at once (after a failed hash).
    pub force: bool,
    /// A connected peer holds the piece but chokes us.
    pub holders: bool,
    /// A connected peer said it is fetching the piece (`dt_wip`).
    pub fetching: bool,
    /// How long the mirror would take for the piece (ms).
    pub mirror_ms: u64,
    /// No peer connected.
    pub no_peers: bool,
    /// Connections being set up.
    pub connecting: bool,
    /// Discovery ran in the last minute (or there is none).
    pub lookup_fresh: bool,
    /// Discovery can reach nobody (`Discovery::alone`): no DHT node, no
    /// tracker, no peer named by any mechanism since the start.
    pub alone: bool,
    /// When the last lookup ended.
    pub lookup_done_at: Option<u64>,
    /// Holders a peer named (`dt_who`) are being dialled: until then.
    pub holders_due: Option<u64>,
    /// When we asked the connected peers who holds it.
    pub asked_at: Option<u64>,
}

/// Rule (a): when the mirror starts on a piece no usable peer serves.
///
/// - after a failed hash: at once (the mirror tells the bad copy apart);
/// - a peer has it but chokes us, or a peer is fetching it from the
///   mirror: wait for it, about as long as the mirror would take us plus
///   twice `--peer-wait` (at most 60 s). In a fleet the holder's upload
///   slots turn over within seconds, and every peer it served becomes a
///   holder too, so waiting beats a second copy from the mirror;
/// - holders a connected peer named (`dt_who`) are being dialled: until
///   they are up (`--peer-wait` after their names came);
/// - no peer connected and discovery can reach nobody at all (no DHT
///   node, no tracker, nobody heard on the LAN): at once, as without
///   discovery; nobody can come to meet;
/// - discovery found nobody at all: 200 ms after it ended (a peer our DHT
///   query reached may dial in);
/// - in these last two cases, and when peers lack it, a large file waits
///   at least a quarter of the mirror's time for it (at most twice
///   `--peer-wait`) after apt asked: daemons that start together meet and
///   fetch it once, and the wait costs at most a quarter of a transfer;
/// - no peer yet, discovery running, or peers lack it while more are
///   being dialled (a fleet that starts together is still meeting):
///   `--peer-wait` after apt asked;
/// - peers connected, none has it: a random delay of up to 250 ms, so that
///   daemons asking at the same moment do not all start at once (the first
///   tells the others, `dt_wip`); when we asked them who holds it, that
///   delay counts from a quarter of `--peer-wait` (at most 250 ms) after
///   the question, for the answers.
pub fn mirror_start_at(w: &Waiting) -> u64 {
    // A large file nobody offers yet: a fleet that starts together may not
    // have met. Waiting a quarter of what the mirror would take (at most
    // twice `--peer-wait`) lets the others connect and say `dt_wip`; a
    // second copy from the mirror would cost all of it.
    let meet = w.wanted_at + (w.mirror_ms / 4).min(w.peer_wait * 2);
    if w.force {
        w.now
    } else if w.holders || w.fetching {
        // A holder or relay that chokes us unchokes in turns (every 10 s,
        // `CHOKE_EVERY_MS`): wait at least two turns from the last block.
        w.wanted_at + w.peer_wait * 2 + w.mirror_ms.clamp(BUSY_MIN_MS, 60_000)
    } else if let Some(t) = w.holders_due {
        t
    } else if w.no_peers && !w.connecting && w.alone {
        w.now
    } else if w.no_peers && !w.connecting && w.lookup_fresh {
        w.lookup_done_at
            .map_or(w.now, |t| (t + 200.min(w.peer_wait)).max(meet))
    } else if w.no_peers {
        w.wanted_at + w.peer_wait
    } else if w.connecting {
        // A peer being dialled may hold it or fetch it: a fleet that
        // starts together is still meeting.
        w.jitter_at.max(w.wanted_at + w.peer_wait)
    } else {
        // The answers' time comes before the jitter, so that daemons that
        // asked at the same moment still start apart.
        let jitter = w.jitter_at.saturating_sub(w.wanted_at);
        let answers = w
            .asked_at
            .map_or(0, |t| t + (w.peer_wait / 4).min(250) + jitter);
        w.jitter_at.max(answers).max(meet)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rule_a_start_times() {
        let base = Waiting {
            now: 10_000,
            wanted_at: 9_900,
            jitter_at: 10_050,
            peer_wait: 1000,
            mirror_ms: 200,
            lookup_done_at: Some(9_950),
            ..Waiting::default()
        };
        // (what, change, expected start)
        let cases: Vec<(&str, Waiting, u64)> = vec![
            (
                "refetch after a bad hash",
                Waiting {
                    force: true,
                    holders: true,
                    ..base
                },
                10_000,
            ),
            (
                "a holder chokes us: at least two unchoke rounds",
                Waiting {
                    holders: true,
                    fetching: true,
                    mirror_ms: 5000,
                    ..base
                },
                9_900 + 2000 + BUSY_MIN_MS,
            ),
            (
                "a holder chokes us, a slow mirror: the mirror's time",
                Waiting {
                    holders: true,
                    mirror_ms: 30_000,
                    ..base
                },
                9_900 + 2000 + 30_000,
            ),
            (
                "a holder chokes us, a mirror too slow to wait for",
                Waiting {
                    holders: true,
                    mirror_ms: 10_000_000,
                    ..base
                },
                9_900 + 2000 + 60_000,
            ),
            (
                "holders named by a peer are being dialled",
                Waiting {
                    holders_due: Some(10_400),
                    asked_at: Some(9_900),
                    ..base
                },
                10_400,
            ),
            (
                "peers asked who holds it: their answers, then the jitter",
                Waiting {
                    asked_at: Some(9_950),
                    ..base
                },
                9_950 + 250 + 150,
            ),
            (
                "peers asked long ago: the jitter decides",
                Waiting {
                    asked_at: Some(5_000),
                    ..base
                },
                10_050,
            ),
            (
                "a peer fetches it",
                Waiting {
                    fetching: true,
                    mirror_ms: 5000,
                    ..base
                },
                9_900 + 2000 + BUSY_MIN_MS,
            ),
            (
                "a peer fetches a huge one",
                Waiting {
                    fetching: true,
                    mirror_ms: 10_000_000,
                    ..base
                },
                9_900 + 2000 + 60_000,
            ),
            (
                "nobody anywhere",
                Waiting {
                    no_peers: true,
                    lookup_fresh: true,
                    ..base
                },
                10_150,
            ),
            (
                "nobody can be reached: a large file does not wait to meet",
                Waiting {
                    no_peers: true,
                    alone: true,
                    mirror_ms: 5000,
                    ..base
                },
                10_000,
            ),
            (
                "nobody can be reached, but a peer is being dialled",
                Waiting {
                    no_peers: true,
                    connecting: true,
                    alone: true,
                    ..base
                },
                9_900 + 1000,
            ),
            (
                "nobody anywhere, a large file: a quarter of the mirror's time",
                Waiting {
                    no_peers: true,
                    lookup_fresh: true,
                    mirror_ms: 4000,
                    ..base
                },
                9_900 + 1000,
            ),
            (
                "peers lack a huge file: at most twice --peer-wait",
                Waiting {
                    mirror_ms: 60_000,
                    ..base
                },
                9_900 + 2000,
            ),
            (
                "nobody, no discovery at all",
                Waiting {
                    no_peers: true,
                    lookup_fresh: true,
                    lookup_done_at: None,
                    ..base
                },
                10_000,
            ),
            (
                "nobody, short peer wait",
                Waiting {
                    no_peers: true,
                    lookup_fresh: true,
                    peer_wait: 50,
                    ..base
                },
                10_000,
            ),
            (
                "no peer yet, discovery running",
                Waiting {
                    no_peers: true,
                    ..base
                },
                10_900,
            ),
            (
                "dialling the first peer",
                Waiting {
                    no_peers: true,
                    connecting: true,
                    lookup_fresh: true,
                    ..base
                },
                10_900,
            ),
            (
                "peers lack it, more being dialled: --peer-wait",
                Waiting {
                    connecting: true,
                    lookup_fresh: true,
                    ..base
                },
                10_900,
            ),
            ("peers lack it", base, 10_050),
        ];
        for (what, w, want) in cases {
            assert_eq!(mirror_start_at(&w), want, "{what}");
        }
    }

    #[test]
    fn mirror_tail_rule() {
        let m = 1_000_000u64; // 1 MB
                              // (rest, peer rate, mirror rate, latency) -> split
        let cases = [
            (10 * m, 100 * m, 10 * m, 100, None),    // peers 10x faster
            (10 * m, 0, 10 * m, 100, Some(0)),       // no peer delivers: all to the mirror
            (10 * m, m, 10 * m, 100, Some(909_090)), // peers 10x slower: they keep ~1/11
            (10 * m, 10 * m, 10 * m, 100, None),     // equal: latency favours peers
            (0, m, m, 0, None),
            (10 * m, m, 0, 0, None), // no mirror rate known
        ];
        for (rest, pr, mr, lat, want) in cases {
            assert_eq!(
                mirror_tail(rest, pr, mr, lat),
                want,
                "{rest} {pr} {mr} {lat}"
            );
        }
    }
}
