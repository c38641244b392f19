//! Table-driven tests of the torrent state machine. Each table is a list
//! of steps (time, input, the exact effects expected); the runner checks
//! the invariants after every step. A randomised run at the end feeds
//! thousands of arbitrary inputs and checks only the invariants.

use std::net::SocketAddr;

use super::*;
use crate::swarm::mirror_rules::BUSY_MIN_MS;

const K: u64 = BLOCK as u64;
const PIECES: u32 = 16;

fn key(n: u32) -> PeerKey {
    PeerKey::new(n).expect("test keys are not zero")
}

fn addr(n: u8) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, n], 6881))
}

fn cfg() -> Config {
    Config {
        peer_wait_ms: 1000,
        stall_ms: 2000,
        max_peers: 8,
        upload_slots: 4,
        piece_count: PIECES,
        total_size: 100 * K,
        peer_id: [b'z'; 20],
        peer_addr: addr(1),
        seed: 7,
    }
}

/// Discovery off: rule (a) sees no lookup to wait for.
fn no_discovery() -> Env {
    Env::default()
}

/// Discovery running.
fn discovery() -> Env {
    Env {
        discovery_on: true,
        discovery_ready: true,
        ..Env::default()
    }
}

/// A bitfield with `held` set.
fn bits(held: &[u32]) -> Vec<u8> {
    let mut b = vec![0; wire::bitfield_len(PIECES)];
    for &i in held {
        wire::bitfield_set(&mut b, i);
    }
    b
}

/// Peer `n` at 127.0.0.n came up (we dialled it); `has`: its pieces,
/// `None` for all.
fn hello(n: u8, has: Option<&[u32]>) -> Input {
    Input::Up(Box::new(Hello {
        addr: addr(n),
        peer_id: [n; 20],
        outgoing: true,
        client: format!("peer {n}"),
        bits: has.map(bits),
        reqq: Some(250),
        port: Some(6881),
        pex_id: None,
        wip_id: None,
        who_id: None,
        relay: false,
        sent: bits(&[]),
    }))
}

/// Peer `k` unchoked us.
fn unchoked(k: u32) -> Input {
    Input::Choked {
        key: key(k),
        choked: false,
        discarded: false,
    }
}

/// apt wants piece `P`.
/// Peer `k`'s `dt_wip`: it fetches `add` from the mirror, and `done`.
fn wip(k: u32, add: &[u32], done: &[u32]) -> Input {
    Input::Wip {
        key: key(k),
        add: add.to_vec(),
        done: done.to_vec(),
    }
}

fn want_p() -> Input {
    Input::Want {
        piece: P,
        size: SIZE,
        tag: 7,
    }
}

fn send(k: u32, msg: PeerMsg) -> Effect {
    Effect::Send { key: key(k), msg }
}

fn br(piece: u32, begin: u64, length: u64) -> BlockRef {
    BlockRef {
        index: piece,
        begin: begin as u32,
        length: length as u32,
    }
}

/// A request to peer `k` for the blocks of `piece` at these (begin, len).
fn req(k: u32, piece: u32, blocks: &[(u64, u64)]) -> Effect {
    send(
        k,
        PeerMsg::Request {
            piece,
            blocks: blocks.iter().map(|&(b, l)| br(piece, b, l)).collect(),
        },
    )
}

fn block(k: u32, piece: u32, begin: u64, len: u64) -> Input {
    Input::Block {
        key: key(k),
        piece,
        begin: begin as u32,
        len: len as u32,
        new: len,
        current: true,
    }
}

fn tick(now_contiguous: &[(u32, u64)]) -> Input {
    Input::Tick {
        uploads: Vec::new(),
        contiguous: now_contiguous.to_vec(),
    }
}

fn attach(k: u32, n: u8) -> Effect {
    Effect::Attach {
        key: key(k),
        addr: addr(n),
    }
}

/// The usual start: peer 1 (127.0.0.2, holds everything) is up and
/// unchokes us, apt wants `P`, and the peer gets every block of it.
fn one_peer_serving() -> Vec<Step> {
    vec![
        (0, hello(2, None), vec![attach(1, 2)]),
        (0, unchoked(1), vec![]),
        (
            0,
            want_p(),
            vec![send(1, PeerMsg::Interested), req(1, P, &BLOCKS)],
        ),
    ]
}

/// One step: at `now`, `input` gives exactly `effects`.
type Step = (u64, Input, Vec<Effect>);

/// Ticks every 100 ms after `from` up to and including `to`, as the
/// torrent task sends them; the effects of all of them, in order.
fn ticks(m: &mut Machine, env: &Env, from: u64, to: u64, contiguous: &[(u32, u64)]) -> Vec<Effect> {
    let mut out = Vec::new();
    let mut t = from;
    while t < to {
        t = (t + 100).min(to);
        out.extend(m.handle(t, env, tick(contiguous)));
        m.check_invariants();
    }
    out
}

fn run(m: &mut Machine, env: &Env, steps: Vec<Step>) {
    m.check_invariants();
    for (i, (now, input, want)) in steps.into_iter().enumerate() {
        let label = format!("step {i} at {now} ms: {input:?}");
        let got = m.handle(now, env, input);
        m.check_invariants();
        assert_eq!(got, want, "{label}");
    }
}

/// A piece of three and a bit blocks.
const P: u32 = 3;
const SIZE: u64 = 3 * K + 100;
const BLOCKS: [(u64, u64); 4] = [(0, K), (K, K), (2 * K, K), (3 * K, 100)];

#[test]
fn a_wanted_piece_is_requested_received_verified_and_committed() {
    let mut m = Machine::new(cfg());
    run(
        &mut m,
        &no_discovery(),
        vec![
            (0, hello(2, None), vec![attach(1, 2)]),
            (5, unchoked(1), vec![]),
            // apt asks: interest, then every block at once (queue of 64).
            (
                10,
                want_p(),
                vec![send(1, PeerMsg::Interested), req(1, P, &BLOCKS)],
            ),
            (20, block(1, P, 0, K), vec![]),
            (21, block(1, P, K, K), vec![]),
            (22, block(1, P, 2 * K, K), vec![]),
            (23, block(1, P, 3 * K, 100), vec![]),
            (
                30,
                Input::Verified {
                    piece: P,
                    ok: true,
                    peer_bytes: SIZE,
                },
                vec![
                    send(1, PeerMsg::CancelPiece(P)),
                    Effect::Commit {
                        piece: P,
                        suspect: None,
                    },
                ],
            ),
            // A second verdict for the same copy changes nothing.
            (
                31,
                Input::Verified {
                    piece: P,
                    ok: true,
                    peer_bytes: SIZE,
                },
                vec![],
            ),
            (
                40,
                Input::Committed {
                    piece: P,
                    size: SIZE,
                    stored: true,
                    culprits: vec![],
                },
                vec![
                    send(1, PeerMsg::Have(P)),
                    send(1, PeerMsg::CancelPiece(P)),
                    Effect::EndJob {
                        piece: P,
                        failure: None,
                    },
                    send(1, PeerMsg::NotInterested),
                ],
            ),
        ],
    );
    assert_eq!(m.counts(), (1, 0));
    assert_eq!(m.have().1, 1);
}

#[test]
fn choke_and_unchoke() {
    let mut m = Machine::new(cfg());
    let unchoke = |choked| Input::Choked {
        key: key(1),
        choked,
        discarded: choked,
    };
    run(
        &mut m,
        &no_discovery(),
        vec![
            (0, hello(2, None), vec![attach(1, 2)]),
            (1, unchoke(false), vec![]),
            (
                2,
                want_p(),
                vec![send(1, PeerMsg::Interested), req(1, P, &BLOCKS)],
            ),
            (3, block(1, P, 0, K), vec![]),
            // A BEP 3 choke drops the rest: nothing to ask while choked,
            // and the mirror waits (the peer holds it: --peer-wait).
            (4, unchoke(true), vec![]),
            (500, tick(&[(P, K)]), vec![]),
            // Unchoked again: the three blocks it dropped, asked again.
            (600, unchoke(false), vec![req(1, P, &BLOCKS[1..])]),
            // A fast peer's reject while it unchokes us frees one block,
            // asked again after a pause (its queue may have been full).
            (
                700,
                Input::Rejected {
                    key: key(1),
                    req: br(P, K, K),
                },
                vec![],
            ),
            (1300, tick(&[(P, K)]), vec![req(1, P, &[(K, K)])]),
        ],
    );
    // A choke that keeps the requests (BEP 6) frees nothing: the peer
    // rejects them one by one.
    let kept = m.handle(
        800,
        &no_discovery(),
        Input::Choked {
            key: key(1),
            choked: true,
            discarded: false,
        },
    );
    m.check_invariants();
    assert!(kept.is_empty(), "{kept:?}");
    assert_eq!(m.picker.outstanding(Source::Peer(key(1))), 3);
}

#[test]
fn a_stalled_peer_is_snubbed_and_rule_a_gives_its_blocks_to_the_mirror() {
    let mut m = Machine::new(cfg());
    run(
        &mut m,
        &no_discovery(),
        vec![
            (0, hello(2, None), vec![attach(1, 2)]),
            (0, unchoked(1), vec![]),
            (
                0,
                want_p(),
                vec![send(1, PeerMsg::Interested), req(1, P, &BLOCKS)],
            ),
            // Within --stall-timeout: nothing.
            (2000, tick(&[(P, 0)]), vec![]),
            // Past it: its requests are cancelled, and with no usable peer
            // the mirror takes the whole piece (peers connected, none
            // usable: after the jitter, long past).
            (
                2001,
                tick(&[(P, 0)]),
                vec![
                    send(1, PeerMsg::CancelAll),
                    Effect::StartMirror {
                        piece: P,
                        gen: 1,
                        from: 0,
                        to: SIZE,
                    },
                ],
            ),
            // The stalled peer's late block still counts; the mirror, done,
            // leaves nothing free: no new request, no second mirror run.
            (2100, block(1, P, 0, K), vec![]),
            (
                2200,
                Input::MirrorDone {
                    piece: P,
                    gen: 1,
                    res: Ok(()),
                    received: Received {
                        prefix: SIZE,
                        ranges: vec![],
                    },
                },
                vec![],
            ),
            // A result of an old run is ignored.
            (
                2300,
                Input::MirrorDone {
                    piece: P,
                    gen: 1,
                    res: Err(Failure::Timeout),
                    received: Received::default(),
                },
                vec![],
            ),
        ],
    );
    assert_eq!(
        m.job_state(P),
        Some((JobState::Fetching, MirrorState::Idle))
    );
}

/// Rule (a) in its cases: when the mirror starts on a piece nobody serves.
#[test]
fn rule_a_when_the_mirror_starts() {
    let start = |gen| Effect::StartMirror {
        piece: P,
        gen,
        from: 0,
        to: SIZE,
    };

    // Peer 1 connected, holds nothing, fetches P from the mirror (dt_wip).
    let fetching_peer = || -> Vec<Step> {
        vec![
            (0, hello(2, Some(&[])), vec![attach(1, 2)]),
            (0, wip(1, &[P], &[]), vec![]),
        ]
    };
    // (name, env, steps before apt asks, steps after)
    let cases: Vec<(&str, Env, Vec<Step>, Vec<Step>)> = vec![
        (
            "no discovery, no peers: at once",
            no_discovery(),
            vec![],
            vec![(0, want_p(), vec![start(1)])],
        ),
        (
            "discovery running, no peers: a lookup, then --peer-wait",
            discovery(),
            vec![],
            vec![
                (0, want_p(), vec![Effect::Lookup]),
                (999, tick(&[(P, 0)]), vec![]),
                // (Totals for trackers once a second.)
                (
                    1000,
                    tick(&[(P, 0)]),
                    vec![start(1), Effect::Totals { left: 100 * K }],
                ),
            ],
        ),
        (
            "the lookup found nobody: 200 ms after it ended",
            discovery(),
            vec![],
            vec![
                (0, want_p(), vec![Effect::Lookup]),
                (100, Input::LookupDone, vec![Effect::Announce]),
                (299, tick(&[(P, 0)]), vec![]),
                (300, tick(&[(P, 0)]), vec![start(1)]),
            ],
        ),
        (
            "a holder that chokes us: twice --peer-wait plus two unchoke rounds",
            no_discovery(),
            vec![(0, hello(2, None), vec![attach(1, 2)])],
            vec![
                (0, want_p(), vec![send(1, PeerMsg::Interested)]),
                (1999 + BUSY_MIN_MS, tick(&[(P, 0)]), vec![]),
                (2000 + BUSY_MIN_MS, tick(&[(P, 0)]), vec![start(1)]),
            ],
        ),
        (
            "a peer fetching it from the mirror (dt_wip): twice --peer-wait plus the mirror's time",
            no_discovery(),
            fetching_peer(),
            vec![
                (0, want_p(), vec![]),
                (1999 + BUSY_MIN_MS, tick(&[(P, 0)]), vec![]),
                (2000 + BUSY_MIN_MS, tick(&[(P, 0)]), vec![start(1)]),
            ],
        ),
        (
            "the fetcher finished (dt_wip done): the time to store it and say so",
            no_discovery(),
            fetching_peer(),
            vec![
                (0, want_p(), vec![]),
                (30_000, wip(1, &[], &[P]), vec![]),
                (29_999 + FINISH_GRACE_MS, tick(&[(P, 0)]), vec![]),
                (30_000 + FINISH_GRACE_MS, tick(&[(P, 0)]), vec![start(1)]),
            ],
        ),
        (
            "the fetcher finished and says it holds it: we ask it, not the mirror",
            no_discovery(),
            fetching_peer()
                .into_iter()
                .chain([(0, unchoked(1), vec![])])
                .collect(),
            vec![
                (0, want_p(), vec![]),
                (30_000, wip(1, &[], &[P]), vec![]),
                (
                    31_000,
                    Input::Holds {
                        key: key(1),
                        pieces: vec![P],
                    },
                    vec![send(1, PeerMsg::Interested), req(1, P, &BLOCKS)],
                ),
                (30_000 + FINISH_GRACE_MS, tick(&[(P, 0)]), vec![]),
            ],
        ),
    ];
    for (name, env, before, after) in cases {
        let mut m = Machine::new(cfg());
        run(&mut m, &env, before);
        eprintln!("case: {name}");
        run(&mut m, &env, after);
    }
}

/// Rule (b) judges only peers that serve us now: a slow holder that then
/// chokes us leaves the piece to rule (a), which waits for its unchoke
/// rounds (a herd shares its upload slots) instead of sending the tail to
/// the mirror.
#[test]
fn rule_b_waits_while_the_only_server_chokes_us() {
    let mut m = Machine::new(cfg());
    let size = 64 * K;
    let env = no_discovery();
    let mut hello2 = hello(2, None);
    if let Input::Up(h) = &mut hello2 {
        h.reqq = Some(4);
    }
    run(
        &mut m,
        &env,
        vec![
            (0, hello2, vec![attach(1, 2)]),
            (0, unchoked(1), vec![]),
            (
                0,
                Input::Want {
                    piece: P,
                    size,
                    tag: 7,
                },
                vec![
                    send(1, PeerMsg::Interested),
                    req(1, P, &[(0, K), (K, K), (2 * K, K), (3 * K, K)]),
                ],
            ),
            (1500, block(1, P, 0, K), vec![req(1, P, &[(4 * K, K)])]),
        ],
    );
    let _ = m.handle(
        1600,
        &env,
        Input::Choked {
            key: key(1),
            choked: true,
            discarded: true,
        },
    );
    m.check_invariants();
    let fx = m.handle(RULE_B_AFTER_MS + 100, &env, tick(&[(P, K)]));
    m.check_invariants();
    assert!(
        !fx.iter().any(|e| matches!(e, Effect::StartMirror { .. })),
        "{fx:?}"
    );
}

/// Rule (b): the peers are slower than the mirror, which takes the tail.
#[test]
fn rule_b_the_mirror_takes_the_tail_of_a_slow_piece() {
    let mut m = Machine::new(cfg());
    let size = 64 * K;
    let env = no_discovery();
    let mut hello2 = hello(2, None);
    if let Input::Up(h) = &mut hello2 {
        h.reqq = Some(4);
    }
    run(
        &mut m,
        &env,
        vec![
            (0, hello2, vec![attach(1, 2)]),
            (0, unchoked(1), vec![]),
            (
                0,
                Input::Want {
                    piece: P,
                    size,
                    tag: 7,
                },
                vec![
                    send(1, PeerMsg::Interested),
                    req(1, P, &[(0, K), (K, K), (2 * K, K), (3 * K, K)]),
                ],
            ),
            // One block in 1.5 s: about 11 KB/s against 10 MB/s.
            (1500, block(1, P, 0, K), vec![req(1, P, &[(4 * K, K)])]),
        ],
    );
    // Not before RULE_B_AFTER_MS: the peers get that long to show a rate.
    let effects = m.handle(RULE_B_AFTER_MS - 100, &env, tick(&[(P, K)]));
    assert_eq!(effects, vec![]);
    let effects = m.handle(RULE_B_AFTER_MS + 100, &env, tick(&[(P, K)]));
    m.check_invariants();
    // The tail starts after the peer's last request (block 5) and runs to
    // the end; the peer keeps its front.
    assert_eq!(
        effects,
        vec![Effect::StartMirror {
            piece: P,
            gen: 1,
            from: 5 * K,
            to: size,
        }]
    );
    // A fast peer keeps the piece: same start, 16 blocks in 100 ms.
    let mut m = Machine::new(cfg());
    run(
        &mut m,
        &env,
        vec![
            (0, hello(2, None), vec![attach(1, 2)]),
            (0, unchoked(1), vec![]),
        ],
    );
    let _ = m.handle(
        0,
        &env,
        Input::Want {
            piece: P,
            size,
            tag: 7,
        },
    );
    for b in 0..16u64 {
        let _ = m.handle(1000 + b * 6, &env, block(1, P, b * K, K));
        m.check_invariants();
    }
    let effects = m.handle(1100, &env, tick(&[(P, 16 * K)]));
    m.check_invariants();
    assert!(
        !effects
            .iter()
            .any(|e| matches!(e, Effect::StartMirror { .. })),
        "{effects:?}"
    );
}

/// Rule (b): a peer that would finish the piece within
/// [`RULE_B_PEERS_SOON_MS`] keeps it, although the mirror would be far
/// faster; the same peer, slower, loses the tail.
#[test]
fn rule_b_leaves_a_piece_the_peers_finish_soon() {
    let env = no_discovery();
    let size = 64 * K;
    // (what, blocks the peer sends before the judgment, the mirror takes
    // the tail); the mirror is estimated at 10 MB/s.
    let cases = [
        ("24 blocks in 3 s, 40 left: about 5 s", 24u64, false),
        ("4 blocks in 3 s, 60 left: about 45 s", 4, true),
    ];
    for (what, n, tail) in cases {
        let mut m = Machine::new(cfg());
        // Four requests at a time: the tail stays free for the mirror.
        let mut hello2 = hello(2, None);
        if let Input::Up(h) = &mut hello2 {
            h.reqq = Some(4);
        }
        run(
            &mut m,
            &env,
            vec![(0, hello2, vec![attach(1, 2)]), (0, unchoked(1), vec![])],
        );
        let _ = m.handle(
            0,
            &env,
            Input::Want {
                piece: P,
                size,
                tag: 7,
            },
        );
        // Evenly over the time rule (b) gives them, the last one just
        // before the judgment (no stall).
        for b in 0..n {
            let _ = m.handle((b + 1) * 2900 / n, &env, block(1, P, b * K, K));
            m.check_invariants();
        }
        let fx = m.handle(RULE_B_AFTER_MS + 100, &env, tick(&[(P, n * K)]));
        m.check_invariants();
        let took = fx.iter().any(|e| matches!(e, Effect::StartMirror { .. }));
        assert_eq!(took, tail, "{what}: {fx:?}");
    }
}

/// A mirror failure: peers that hold the piece go on (with a back-off
/// before the mirror is asked again); with no holder, apt gets the failure.
#[test]
fn a_mirror_failure() {
    let env = no_discovery();
    let failed = |gen, f| Input::MirrorDone {
        piece: P,
        gen,
        res: Err(f),
        received: Received::default(),
    };

    let start = |gen| Effect::StartMirror {
        piece: P,
        gen,
        from: 0,
        to: SIZE,
    };
    // No holder: the failure reaches apt.
    let mut m = Machine::new(cfg());
    run(
        &mut m,
        &env,
        vec![
            (0, want_p(), vec![start(1)]),
            (
                50,
                failed(1, Failure::Status(404)),
                vec![Effect::EndJob {
                    piece: P,
                    failure: Some(Failure::Status(404)),
                }],
            ),
        ],
    );
    // A holder that chokes us: the mirror failed, peers go on, and the
    // mirror is asked again only after 2 s.
    let mut m = Machine::new(cfg());
    run(
        &mut m,
        &env,
        vec![
            (0, hello(2, None), vec![attach(1, 2)]),
            (0, want_p(), vec![send(1, PeerMsg::Interested)]),
            (2000 + BUSY_MIN_MS, tick(&[(P, 0)]), vec![start(1)]),
            (22_100, failed(1, Failure::Timeout), vec![]),
            (24_099, tick(&[(P, 0)]), vec![]),
            (24_100, tick(&[(P, 0)]), vec![start(2)]),
        ],
    );
}

/// A corrupt piece: refetched from the mirror at once, then the smart ban
/// proves the peer wrong and bans it.
#[test]
fn a_corrupt_piece_is_refetched_and_the_sender_banned() {
    let mut m = Machine::new(cfg());
    let suspect = vec![
        (Source::Peer(key(1)), [1; 32]),
        (Source::Peer(key(1)), [2; 32]),
        (Source::Peer(key(1)), [3; 32]),
        (Source::Peer(key(1)), [4; 32]),
    ];
    let mut steps = one_peer_serving();
    for (b, l) in BLOCKS {
        steps.push((10, block(1, P, b, l), vec![]));
    }
    steps.extend([
        (
            20,
            Input::Verified {
                piece: P,
                ok: false,
                peer_bytes: SIZE,
            },
            vec![
                send(1, PeerMsg::CancelPiece(P)),
                Effect::ResetForRetry { piece: P },
            ],
        ),
        // Reset: the mirror fetches it again, at once, although the peer
        // still has it and is unchoked.
        (
            20,
            Input::RetryReset {
                piece: P,
                suspect: Some(suspect.clone()),
            },
            vec![Effect::StartMirror {
                piece: P,
                gen: 1,
                from: 0,
                to: SIZE,
            }],
        ),
        (
            60,
            Input::MirrorDone {
                piece: P,
                gen: 1,
                res: Ok(()),
                received: Received {
                    prefix: SIZE,
                    ranges: vec![],
                },
            },
            vec![],
        ),
        (
            70,
            Input::Verified {
                piece: P,
                ok: true,
                peer_bytes: 0,
            },
            vec![
                send(1, PeerMsg::CancelPiece(P)),
                Effect::Commit {
                    piece: P,
                    suspect: Some(suspect),
                },
            ],
        ),
        (
            80,
            Input::Committed {
                piece: P,
                size: SIZE,
                stored: true,
                culprits: vec![key(1)],
            },
            vec![
                Effect::Ban { ip: addr(2).ip() },
                send(1, PeerMsg::Close),
                send(1, PeerMsg::Have(P)),
                send(1, PeerMsg::CancelPiece(P)),
                Effect::EndJob {
                    piece: P,
                    failure: None,
                },
                send(1, PeerMsg::NotInterested),
            ],
        ),
        (
            90,
            Input::Down {
                key: key(1),
                violation: false,
            },
            vec![Effect::ReleaseSlot { ip: addr(2).ip() }],
        ),
    ]);
    run(&mut m, &no_discovery(), steps);
}

/// A corrupt piece that apt already streams cannot be retried: every
/// contributor gets a strike by its share, and apt gets the failure.
#[test]
fn a_corrupt_streamed_piece_fails_with_strikes() {
    let mut m = Machine::new(cfg());
    let mut steps: Vec<Step> = vec![
        (0, hello(2, None), vec![attach(1, 2)]),
        (0, hello(3, None), vec![attach(2, 3)]),
    ];
    for k in [1, 2] {
        steps.push((
            0,
            Input::Choked {
                key: key(k),
                choked: false,
                discarded: false,
            },
            vec![],
        ));
    }
    steps.push((
        0,
        want_p(),
        vec![
            send(1, PeerMsg::Interested),
            send(2, PeerMsg::Interested),
            req(1, P, &BLOCKS),
            // Endgame: the second peer duplicates the oldest requests.
            req(2, P, &BLOCKS),
        ],
    ));
    run(&mut m, &no_discovery(), steps);
    // Peer 1 sends two blocks, peer 2 the other two (each cancelled at
    // the other).
    for (k, other, (b, l)) in [
        (1, 2, BLOCKS[0]),
        (1, 2, BLOCKS[1]),
        (2, 1, BLOCKS[2]),
        (2, 1, BLOCKS[3]),
    ] {
        let e = m.handle(10, &no_discovery(), block(k, P, b, l));
        m.check_invariants();
        assert_eq!(e, vec![send(other, PeerMsg::Cancel(br(P, b, l)))]);
    }
    run(
        &mut m,
        &no_discovery(),
        vec![
            (
                20,
                Input::Verified {
                    piece: P,
                    ok: false,
                    peer_bytes: SIZE,
                },
                vec![
                    send(1, PeerMsg::CancelPiece(P)),
                    send(2, PeerMsg::CancelPiece(P)),
                    Effect::ResetForRetry { piece: P },
                ],
            ),
            (
                20,
                Input::RetryReset {
                    piece: P,
                    suspect: None,
                },
                vec![
                    Effect::Strike {
                        ip: addr(2).ip(),
                        weight: 0.5,
                    },
                    Effect::Strike {
                        ip: addr(3).ip(),
                        weight: 0.5,
                    },
                    send(1, PeerMsg::CancelPiece(P)),
                    send(2, PeerMsg::CancelPiece(P)),
                    Effect::EndJob {
                        piece: P,
                        failure: Some(Failure::Corrupt),
                    },
                    send(1, PeerMsg::NotInterested),
                    send(2, PeerMsg::NotInterested),
                ],
            ),
            // One of the strikes banned: its connections close.
            (
                30,
                Input::Banned { ip: addr(3).ip() },
                vec![send(2, PeerMsg::Close)],
            ),
        ],
    );
}

/// A peer leaves mid-piece: its blocks are free again and the next peer
/// that can serve gets them.
#[test]
fn a_peer_leaving_mid_piece_hands_its_blocks_on() {
    let mut m = Machine::new(cfg());
    let env = discovery();
    run(
        &mut m,
        &env,
        vec![
            (0, hello(2, None), vec![attach(1, 2)]),
            (0, unchoked(1), vec![]),
            (
                0,
                want_p(),
                vec![send(1, PeerMsg::Interested), req(1, P, &BLOCKS)],
            ),
            (10, block(1, P, 0, K), vec![]),
            (
                20,
                Input::Down {
                    key: key(1),
                    violation: true,
                },
                vec![
                    Effect::ReleaseSlot { ip: addr(2).ip() },
                    Effect::Violation { ip: addr(2).ip() },
                ],
            ),
            // Another holder: three blocks left, all for it.
            (
                30,
                hello(3, None),
                vec![attach(2, 3), send(2, PeerMsg::Interested)],
            ),
            (40, unchoked(2), vec![req(2, P, &BLOCKS[1..])]),
        ],
    );
}

/// The same peer connected both ways at once: both sides keep the
/// connection dialled by the lower peer id.
#[test]
fn a_double_connection_keeps_the_one_the_lower_id_dialled() {
    // Our id is "zzz…", the peer's is [2; 20]: the peer's dial wins.
    let mut m = Machine::new(cfg());
    let mut incoming = hello(2, None);
    if let Input::Up(h) = &mut incoming {
        h.outgoing = false;
    }
    run(
        &mut m,
        &no_discovery(),
        vec![
            (0, hello(2, None), vec![attach(1, 2)]),
            (1, incoming, vec![send(1, PeerMsg::Close), attach(2, 2)]),
            // Our own dial again: refused, its slot given back.
            (
                2,
                hello(2, None),
                vec![Effect::ReleaseSlot { ip: addr(2).ip() }],
            ),
        ],
    );
}

/// Discovery results: ourselves, duplicates, the connection limit and the
/// place our own dials leave for a newcomer.
#[test]
fn found_addresses_are_dialled_once_within_the_limit() {
    let mut m = Machine::new(cfg());
    let found = |n: u8| Input::Found {
        addr: addr(n),
        origin: Origin::Dht,
    };
    let mut steps: Vec<Step> = vec![
        (0, found(1), vec![]), // ourselves
        (0, found(2), vec![Effect::Dial { addr: addr(2) }]),
        (0, found(2), vec![]), // already dialling
        (0, Input::NoSlot { addr: addr(2) }, vec![]),
        (0, found(2), vec![Effect::Dial { addr: addr(2) }]),
    ];
    for n in 3..=8 {
        steps.push((0, found(n), vec![Effect::Dial { addr: addr(n) }]));
    }
    // Seven dials out: the limit less the place kept for a newcomer.
    steps.push((0, found(9), vec![]));
    steps.push((
        0,
        Input::Incoming { addr: addr(11) },
        vec![Effect::Accept { addr: addr(11) }],
    ));
    // Full now.
    steps.push((
        0,
        Input::Incoming { addr: addr(12) },
        vec![Effect::ReleaseSlot { ip: addr(12).ip() }],
    ));
    steps.push((
        0,
        Input::Failed { addr: addr(3) },
        vec![Effect::ReleaseSlot { ip: addr(3).ip() }],
    ));
    steps.push((
        0,
        Input::Incoming { addr: addr(12) },
        vec![Effect::Accept { addr: addr(12) }],
    ));
    run(&mut m, &no_discovery(), steps);
    assert_eq!(m.discovered().get(&Origin::Dht).map(Vec::len), Some(9));
}

/// Stop: every peer is told and its slot given back (its `Down` will not
/// be handled), so are the slots of connections being set up; every job
/// fails; discovery forgets us; after that, nothing happens any more.
#[test]
fn stop_closes_fails_and_forgets() {
    let mut m = Machine::new(cfg());
    run(
        &mut m,
        &no_discovery(),
        vec![
            (0, hello(2, None), vec![attach(1, 2)]),
            (
                0,
                Input::Found {
                    addr: addr(3),
                    origin: Origin::Lsd,
                },
                vec![Effect::Dial { addr: addr(3) }],
            ),
            (0, want_p(), vec![send(1, PeerMsg::Interested)]),
            (
                1,
                Input::Stop,
                vec![
                    send(1, PeerMsg::Close),
                    Effect::ReleaseSlot { ip: addr(2).ip() },
                    Effect::ReleaseSlot { ip: addr(3).ip() },
                    Effect::EndJob {
                        piece: P,
                        failure: Some(Failure::Unreachable),
                    },
                    Effect::Forget,
                ],
            ),
            (2, tick(&[]), vec![]),
        ],
    );
}

/// Thousands of arbitrary inputs, answered the way the actor would: the
/// machine must keep its invariants and never panic.
#[test]
fn random_inputs_keep_the_invariants() {
    for seed in 0..20u64 {
        let mut rng = fastrand::Rng::with_seed(seed);
        let mut m = Machine::new(Config { seed, ..cfg() });
        let mut now = 0u64;
        let mut follow: Vec<Input> = Vec::new();
        for _ in 0..1500 {
            now += rng.u64(0..300);
            let env = if rng.bool() {
                discovery()
            } else {
                no_discovery()
            };
            let k = key(rng.u32(1..12));
            let piece = rng.u32(0..PIECES);
            let size = rng.u64(1..6) * K - rng.u64(0..100);
            let input = match follow.pop() {
                Some(i) => i,
                None => match rng.u8(0..21) {
                    0 => Input::Want {
                        piece,
                        size,
                        tag: u64::from(piece),
                    },
                    1 => hello(
                        rng.u8(2..14),
                        if rng.bool() { None } else { Some(&[1, 3, 5]) },
                    ),
                    2 => Input::Down {
                        key: k,
                        violation: rng.bool(),
                    },
                    3 => Input::Choked {
                        key: k,
                        choked: rng.bool(),
                        discarded: rng.bool(),
                    },
                    4 => Input::Interest {
                        key: k,
                        interested: rng.bool(),
                    },
                    5 => Input::Holds {
                        key: k,
                        pieces: vec![piece],
                    },
                    6 => Input::Rejected {
                        key: k,
                        req: br(piece, rng.u64(0..5) * K, K),
                    },
                    7 | 8 => Input::Block {
                        key: k,
                        piece,
                        begin: (rng.u64(0..5) * K) as u32,
                        len: K as u32,
                        new: K,
                        current: rng.u8(0..10) > 0,
                    },
                    9 => Input::Verified {
                        piece,
                        ok: rng.bool(),
                        peer_bytes: rng.u64(0..2),
                    },
                    10 => Input::MirrorDone {
                        piece,
                        gen: rng.u32(0..4),
                        res: if rng.bool() {
                            Ok(())
                        } else {
                            Err(Failure::Unreachable)
                        },
                        received: Received {
                            prefix: rng.u64(0..6) * K,
                            ranges: vec![],
                        },
                    },
                    11 => Input::Found {
                        addr: addr(rng.u8(1..20)),
                        origin: Origin::Pex,
                    },
                    12 => Input::Failed {
                        addr: addr(rng.u8(1..20)),
                    },
                    13 => Input::Incoming {
                        addr: addr(rng.u8(1..20)),
                    },
                    14 => Input::Wip {
                        key: k,
                        add: vec![piece],
                        done: vec![rng.u32(0..PIECES)],
                    },
                    15 => Input::Lost { key: k, piece },
                    16 => Input::LookupDone,
                    19 => Input::WriteFailed { piece },
                    18 => Input::Unsent {
                        key: k,
                        reqs: vec![br(piece, rng.u64(0..5) * K, K)],
                        unheld: rng.bool(),
                    },
                    17 => Input::Grow {
                        piece_count: PIECES + rng.u32(0..4),
                        total_size: 0,
                        scan: rng.bool(),
                    },
                    _ => tick(&[(piece, rng.u64(0..4) * K)]),
                },
            };
            for e in m.handle(now, &env, input) {
                match e {
                    Effect::ResetForRetry { piece } => follow.push(Input::RetryReset {
                        piece,
                        suspect: rng.bool().then(Vec::new),
                    }),
                    Effect::Commit { piece, .. } => follow.push(Input::Committed {
                        piece,
                        size: K,
                        stored: rng.bool(),
                        culprits: vec![k],
                    }),
                    Effect::Dial { addr } if rng.bool() => {
                        follow.push(Input::NoSlot { addr });
                    }
                    Effect::StartMirror { piece, gen, .. } if rng.bool() => {
                        follow.push(Input::MirrorDone {
                            piece,
                            gen,
                            res: Ok(()),
                            received: Received {
                                prefix: rng.u64(0..6) * K,
                                ranges: vec![],
                            },
                        });
                    }
                    Effect::Strike { ip, .. } => follow.push(Input::Banned { ip }),
                    _ => {}
                }
            }
            m.check_invariants();
        }
    }
}

/// Regression (review of the split): a block of a copy that failed its hash
/// and was reset can be handled after the reset; it must not count as
/// received, or a failed mirror run would leave the piece stuck.
#[test]
fn a_late_block_of_a_reset_copy_is_fetched_again() {
    let mut m = Machine::new(cfg());
    let env = no_discovery();
    let mut steps = one_peer_serving();
    for (b, l) in &BLOCKS[..3] {
        steps.push((10, block(1, P, *b, *l), vec![]));
    }
    steps.extend([
        (
            20,
            Input::Verified {
                piece: P,
                ok: false,
                peer_bytes: SIZE,
            },
            vec![
                send(1, PeerMsg::CancelPiece(P)),
                Effect::ResetForRetry { piece: P },
            ],
        ),
        (
            20,
            Input::RetryReset {
                piece: P,
                suspect: Some(vec![]),
            },
            vec![Effect::StartMirror {
                piece: P,
                gen: 1,
                from: 0,
                to: SIZE,
            }],
        ),
        // The last block of the old copy, handled after the reset.
        (
            21,
            Input::Block {
                key: key(1),
                piece: P,
                begin: (3 * K) as u32,
                len: 100,
                new: 100,
                current: false,
            },
            vec![],
        ),
        // The mirror fails with nothing in: every block is free again and
        // the peer, which holds the piece, gets them all (none was taken
        // for received).
        (
            30,
            Input::MirrorDone {
                piece: P,
                gen: 1,
                res: Err(Failure::Unreachable),
                received: Received::default(),
            },
            vec![req(1, P, &BLOCKS)],
        ),
    ]);
    run(&mut m, &env, steps);
}

/// Regression (review): a commit that ends after apt asked for the piece
/// again (a new assembly) must not end the new job; the piece is held all
/// the same.
#[test]
fn a_late_commit_does_not_end_a_new_job() {
    let mut m = Machine::new(cfg());
    let env = discovery();

    run(
        &mut m,
        &env,
        vec![
            (0, want_p(), vec![Effect::Lookup]),
            (
                10,
                Input::Verified {
                    piece: P,
                    ok: true,
                    peer_bytes: 0,
                },
                vec![Effect::Commit {
                    piece: P,
                    suspect: None,
                }],
            ),
            // apt asks again before the commit is reported: a new job.
            (
                11,
                Input::Abandon { piece: P },
                vec![Effect::EndJob {
                    piece: P,
                    failure: None,
                }],
            ),
            (12, want_p(), vec![Effect::Lookup]),
            (
                13,
                Input::Committed {
                    piece: P,
                    size: SIZE,
                    stored: true,
                    culprits: vec![],
                },
                vec![],
            ),
        ],
    );
    assert_eq!(
        m.job_state(P),
        Some((JobState::Fetching, MirrorState::Idle))
    );
    assert_eq!(m.counts(), (1, 1));
}

/// Regression (review): a BEP 6 peer that chokes us and neither serves nor
/// rejects our requests stalls like an unchoked one, so its blocks go to
/// others (here the mirror).
#[test]
fn a_choking_peer_that_keeps_our_requests_stalls() {
    let mut m = Machine::new(cfg());
    run(
        &mut m,
        &no_discovery(),
        vec![
            (0, hello(2, None), vec![attach(1, 2)]),
            (0, unchoked(1), vec![]),
            (
                0,
                want_p(),
                vec![send(1, PeerMsg::Interested), req(1, P, &BLOCKS)],
            ),
            (
                100,
                Input::Choked {
                    key: key(1),
                    choked: true,
                    discarded: false,
                },
                vec![],
            ),
            (2000, tick(&[(P, 0)]), vec![]),
            (
                2001,
                tick(&[(P, 0)]),
                vec![
                    send(1, PeerMsg::CancelAll),
                    Effect::StartMirror {
                        piece: P,
                        gen: 1,
                        from: 0,
                        to: SIZE,
                    },
                ],
            ),
        ],
    );
}

/// Regression (review): mirror run numbers are unique per torrent, so a
/// late result of an abandoned job's run is not taken for the new job's.
#[test]
fn a_late_mirror_result_of_an_old_job_is_ignored() {
    let mut m = Machine::new(cfg());
    let env = no_discovery();

    let start = |gen| Effect::StartMirror {
        piece: P,
        gen,
        from: 0,
        to: SIZE,
    };
    run(
        &mut m,
        &env,
        vec![
            (0, want_p(), vec![start(1)]),
            (
                5,
                Input::Abandon { piece: P },
                vec![Effect::EndJob {
                    piece: P,
                    failure: None,
                }],
            ),
            (6, want_p(), vec![start(2)]),
            (
                7,
                Input::MirrorDone {
                    piece: P,
                    gen: 1,
                    res: Err(Failure::Status(503)),
                    received: Received::default(),
                },
                vec![],
            ),
        ],
    );
    assert_eq!(
        m.job_state(P),
        Some((JobState::Fetching, MirrorState::Running { gen: 2 }))
    );
}

/// dt2 lets a peer announce any content. One that announces and never
/// serves stalls; after [`MAX_STALLS`] stalls in a row with no block in
/// between it is disconnected (not a violation: a slow honest peer
/// stalls too). A block in between starts the count again.
#[test]
fn a_peer_that_announces_what_it_never_serves_is_dropped() {
    let env = no_discovery();
    for (name, deliver_once, dropped) in [
        ("never serves", false, true),
        ("serves a block between stalls", true, false),
    ] {
        let mut m = Machine::new(cfg());
        m.handle(0, &env, hello(2, Some(&[0, 1, 2, 3])));
        m.handle(0, &env, unchoked(1));
        let mut now = 0;
        let mut violations = 0;
        let mut closed = false;
        for (i, piece) in [0u32, 1, 2].into_iter().enumerate() {
            m.handle(
                now,
                &env,
                Input::Want {
                    piece,
                    size: SIZE,
                    tag: u64::from(piece),
                },
            );
            if deliver_once && i == 1 {
                m.handle(now + 10, &env, block(1, piece, 0, K));
            }
            // Past --stall-timeout: a stall.
            let fx = ticks(&mut m, &env, now, now + 2001, &[(piece, 0)]);
            now += 2001;
            for e in fx {
                match e {
                    Effect::Violation { .. } => violations += 1,
                    Effect::Send {
                        msg: PeerMsg::Close,
                        ..
                    } => closed = true,
                    _ => {}
                }
            }
            m.check_invariants();
            // The snub is over before the next want.
            now += SNUB_MS;
            m.handle(now, &env, tick(&[]));
        }
        assert_eq!((violations, closed), (0, dropped), "{name}");
    }
}

/// A holder that rejects a request while it unchokes us is paused for
/// that piece, not forgotten: its queue may have been full, or a cancel
/// crossed our request. It is asked again after the pause, and the mirror
/// does not start meanwhile. One that keeps rejecting is taken at its word:
/// at its [`REFUSED_LIMIT`]th round of rejects (after two pauses) it is not
/// asked again, and rule (a) gives the piece to the mirror.
#[test]
fn a_holder_that_rejects_while_unchoking_is_paused_then_taken_at_its_word() {
    let env = no_discovery();
    let mut m = Machine::new(cfg());
    m.handle(0, &env, hello(2, Some(&[P])));
    m.handle(0, &env, unchoked(1));
    let requested = |out: &[Effect]| -> Vec<BlockRef> {
        out.iter()
            .filter_map(|e| match e {
                Effect::Send {
                    msg: PeerMsg::Request { blocks, .. },
                    ..
                } => Some(blocks.clone()),
                _ => None,
            })
            .flatten()
            .collect()
    };
    let mirror = |out: &[Effect]| out.iter().any(|e| matches!(e, Effect::StartMirror { .. }));
    let mut asked = requested(&m.handle(0, &env, want_p()));
    let mut t = 0;
    for round in 1..=REFUSED_LIMIT {
        assert!(!asked.is_empty(), "round {round}: the holder was not asked");
        // It rejects everything asked, one message per block.
        t += 10;
        let mut started = false;
        for r in std::mem::take(&mut asked) {
            let out = m.handle(
                t,
                &env,
                Input::Rejected {
                    key: key(1),
                    req: r,
                },
            );
            m.check_invariants();
            assert!(
                requested(&out).is_empty(),
                "round {round}: asked again at once"
            );
            started |= mirror(&out);
        }
        if round == REFUSED_LIMIT {
            // The last straw: nobody else holds it, and --peer-wait is long
            // over.
            assert!(started, "the mirror did not take the piece");
            let out = ticks(&mut m, &env, t, t + 3000, &[(P, 0)]);
            assert!(
                requested(&out).is_empty(),
                "the peer that kept rejecting was asked again"
            );
            break;
        }
        assert!(!started, "round {round}: the mirror started on a reject");
        // During the pause: neither asked again, nor the mirror.
        let out = ticks(
            &mut m,
            &env,
            t + 100,
            t + REFUSED_BACKOFF_MS - 100,
            &[(P, 0)],
        );
        assert!(
            requested(&out).is_empty(),
            "round {round}: asked during the pause"
        );
        assert!(
            !mirror(&out),
            "round {round}: the mirror started during the pause"
        );
        // After it: asked again at the next tick.
        t += REFUSED_BACKOFF_MS;
        let out = m.handle(t, &env, tick(&[(P, 0)]));
        m.check_invariants();
        asked = requested(&out);
        assert!(!mirror(&out), "round {round}: the mirror started");
    }
    // A block from it ends the pauses: the count starts again. Each round
    // rejects what the machine asked for at the tick after the pause.
    let reject = |m: &mut Machine, t: u64, reqs: &[BlockRef]| {
        for r in reqs {
            let out = m.handle(
                t,
                &env,
                Input::Rejected {
                    key: key(1),
                    req: *r,
                },
            );
            m.check_invariants();
            assert!(!mirror(&out), "t={t}: the mirror started");
        }
    };
    let mut m = Machine::new(cfg());
    m.handle(0, &env, hello(2, Some(&[P])));
    m.handle(0, &env, unchoked(1));
    let asked = requested(&m.handle(0, &env, want_p()));
    reject(&mut m, 10, &asked);
    let asked = requested(&m.handle(520, &env, tick(&[(P, 0)])));
    assert!(!asked.is_empty(), "not asked after the first pause");
    reject(&mut m, 530, &asked);
    // Two rounds so far; a block of the third round's requests, then
    // rejects of the rest: a first round again, still a holder.
    let asked = requested(&m.handle(1040, &env, tick(&[(P, 0)])));
    let (first, rest) = asked.split_first().expect("asked after the second pause");
    m.handle(
        1050,
        &env,
        block(1, P, u64::from(first.begin), u64::from(first.length)),
    );
    reject(&mut m, 1060, rest);
    let out = ticks(&mut m, &env, 1600, 2200, &[(P, 0)]);
    assert!(!requested(&out).is_empty(), "the holder was forgotten");
    assert!(!mirror(&out), "{out:?}");
    // A link slower than the pause: the rejects of one batch arrive
    // before and after the pause ends, and count as one round. Then two
    // more rounds of requests made after a pause: only the last forgets.
    let mut m = Machine::new(cfg());
    m.handle(0, &env, hello(2, Some(&[P])));
    m.handle(0, &env, unchoked(1));
    let asked = requested(&m.handle(0, &env, want_p()));
    assert!(asked.len() >= 2, "{asked:?}");
    let (early, late) = asked.split_at(asked.len() / 2);
    reject(&mut m, 10, early);
    let again = requested(&m.handle(600, &env, tick(&[(P, 0)])));
    assert!(!again.is_empty(), "not asked after the pause");
    // The first batch's other rejects, late: the same round (they extend
    // its pause to 1200).
    reject(&mut m, 700, late);
    // The second round, after that pause.
    reject(&mut m, 1250, &again);
    let again = requested(&m.handle(1800, &env, tick(&[(P, 0)])));
    assert!(
        !again.is_empty(),
        "forgotten after two rounds: the late rejects counted as a round"
    );
    // The third: taken at its word.
    for r in &again {
        m.handle(
            1810,
            &env,
            Input::Rejected {
                key: key(1),
                req: *r,
            },
        );
        m.check_invariants();
    }
    let out = ticks(&mut m, &env, 2400, 3000, &[(P, 0)]);
    assert!(requested(&out).is_empty(), "asked after the third round");
    // A reject of a request we no longer had out (cancelled, answered)
    // says nothing.
    let mut m = Machine::new(cfg());
    m.handle(0, &env, hello(2, Some(&[P])));
    m.handle(0, &env, unchoked(1));
    m.handle(0, &env, want_p());
    for t in [10, 600, 1200] {
        m.handle(
            t,
            &env,
            Input::Rejected {
                key: key(1),
                req: br(P, 999 * K, K),
            },
        );
        m.check_invariants();
    }
    let out = ticks(&mut m, &env, 1300, 1900, &[(P, 0)]);
    assert!(!mirror(&out), "a stray reject started the mirror");
    // Requests that could not be sent for want of the peer's number: the
    // same, at once, without a loop.
    let mut m = Machine::new(cfg());
    m.handle(0, &env, hello(2, Some(&[P])));
    m.handle(0, &env, unchoked(1));
    m.handle(0, &env, want_p());
    let out = m.handle(
        5,
        &env,
        Input::Unsent {
            key: key(1),
            reqs: vec![br(P, 0, K)],
            unheld: true,
        },
    );
    m.check_invariants();
    assert!(
        !out.iter().any(|e| matches!(
            e,
            Effect::Send {
                msg: PeerMsg::Request { .. },
                ..
            }
        )),
        "{out:?}"
    );
}

/// Store scans: only the answer to the latest counts, and a piece
/// committed while a scan ran stays held (with its bytes); what a scan
/// adds and drops goes to peers as one message.
#[test]
fn store_scans_latest_answer_wins() {
    let env = no_discovery();
    let mut m = Machine::new(cfg());
    m.handle(0, &env, hello(2, Some(&[])));
    // Grow with a scan: scan 1.
    let out = m.handle(
        0,
        &env,
        Input::Grow {
            piece_count: PIECES + 8,
            total_size: 200 * K,
            scan: true,
        },
    );
    assert!(out.contains(&Effect::ScanHolding { gen: 1 }), "{out:?}");
    // Another growth before the answer: scan 2.
    let out = m.handle(
        1,
        &env,
        Input::Grow {
            piece_count: PIECES + 16,
            total_size: 300 * K,
            scan: true,
        },
    );
    assert!(out.contains(&Effect::ScanHolding { gen: 2 }), "{out:?}");
    // Piece 5 committed while scan 2 runs.
    m.handle(2, &env, Input::Stored { piece: 5, size: K });
    // Scan 1's late answer (pieces 1, 2): ignored.
    let mut b = vec![0; wire::bitfield_len(PIECES + 8)];
    wire::bitfield_set(&mut b, 1);
    wire::bitfield_set(&mut b, 2);
    let out = m.handle(
        3,
        &env,
        Input::Holding {
            gen: 1,
            bits: b,
            held_bytes: 2 * K,
        },
    );
    assert!(out.is_empty(), "{out:?}");
    assert_eq!(m.have().1, 1);
    // Scan 2's answer: pieces 1 and 20 (it missed 5, committed meanwhile).
    let mut b = vec![0; wire::bitfield_len(PIECES + 16)];
    wire::bitfield_set(&mut b, 1);
    wire::bitfield_set(&mut b, 20);
    let out = m.handle(
        4,
        &env,
        Input::Holding {
            gen: 2,
            bits: b,
            held_bytes: 2 * K,
        },
    );
    m.check_invariants();
    assert_eq!(m.have().1, 3, "1, 20 and 5");
    assert_eq!(
        out,
        vec![send(
            1,
            PeerMsg::Holdings {
                add: vec![1, 20],
                drop: vec![]
            }
        )]
    );
}

/// Peer `n` of this version: it speaks `dt_wip` and `dt_who` and relays.
fn hello_dt(n: u8, peer_id: [u8; 20], has: Option<&[u32]>) -> Input {
    Input::Up(Box::new(Hello {
        addr: addr(n),
        peer_id,
        outgoing: true,
        client: format!("peer {n}"),
        bits: has.map(bits),
        reqq: Some(250),
        port: Some(6881),
        pex_id: None,
        wip_id: Some(2),
        who_id: Some(4),
        relay: true,
        sent: bits(&[]),
    }))
}

/// A peer that fetches `P` from the mirror and relays it is a source like
/// a holder: we ask it for the blocks at once, and the mirror stays idle.
#[test]
fn a_relay_serves_the_piece_it_fetches() {
    let mut m = Machine::new(cfg());
    run(
        &mut m,
        &no_discovery(),
        vec![
            (0, hello_dt(2, [2; 20], Some(&[])), vec![attach(1, 2)]),
            (
                0,
                Input::Wip {
                    key: key(1),
                    add: vec![P],
                    done: vec![],
                },
                vec![],
            ),
            (0, unchoked(1), vec![]),
            (
                0,
                want_p(),
                vec![send(1, PeerMsg::Interested), req(1, P, &BLOCKS)],
            ),
            (1500, tick(&[(P, 0)]), vec![]),
        ],
    );
    // An older peer that does not relay only makes us wait for it.
    let mut m = Machine::new(cfg());
    run(
        &mut m,
        &no_discovery(),
        vec![
            (0, hello(2, Some(&[])), vec![attach(1, 2)]),
            (
                0,
                Input::Wip {
                    key: key(1),
                    add: vec![P],
                    done: vec![],
                },
                vec![],
            ),
            (0, unchoked(1), vec![]),
            (0, want_p(), vec![]),
        ],
    );
}

/// Two daemons fetching the same piece from the mirror at once, each
/// told of the other's `dt_wip`: exactly one stops (and takes the piece
/// from the other), whatever the content; which one depends on the
/// content, so one daemon does not fetch every file of a herd.
#[test]
fn two_fetchers_agree_on_one() {
    let ids = [[b'a'; 20], [b'b'; 20]];
    let mut stopped_by = [0u32; 2];
    for tag in 0..64u64 {
        let mut ms: Vec<Machine> = ids
            .iter()
            .enumerate()
            .map(|(i, id)| {
                let mut c = cfg();
                c.peer_id = *id;
                c.peer_addr = addr(10 + i as u8);
                Machine::new(c)
            })
            .collect();
        let env = no_discovery();
        let mut stops = Vec::new();
        for (i, m) in ms.iter_mut().enumerate() {
            let other = ids[1 - i];
            let _ = m.handle(0, &env, hello_dt(20 + i as u8, other, Some(&[])));
            let _ = m.handle(
                0,
                &env,
                Input::Want {
                    piece: P,
                    size: SIZE,
                    tag,
                },
            );
            let fx = m.handle(600, &env, tick(&[(P, 0)]));
            assert!(
                fx.iter()
                    .any(|e| matches!(e, Effect::StartMirror { piece: P, .. })),
                "tag {tag}: both start alone: {fx:?}"
            );
            m.check_invariants();
        }
        for m in ms.iter_mut() {
            let fx = m.handle(601, &env, wip(1, &[P], &[]));
            m.check_invariants();
            stops.push(fx.contains(&Effect::StopMirror { piece: P }));
        }
        assert_eq!(
            stops.iter().filter(|&&s| s).count(),
            1,
            "tag {tag}: exactly one stops: {stops:?}"
        );
        let loser = stops.iter().position(|&s| s).unwrap_or(0);
        stopped_by[loser] += 1;
        // The loser's run ends; it is no failure, and the relay serves it.
        let m = &mut ms[loser];
        let _ = m.handle(602, &env, unchoked(1));
        let fx = m.handle(
            603,
            &env,
            Input::MirrorDone {
                piece: P,
                gen: 1,
                res: Err(Failure::Local),
                received: Received::default(),
            },
        );
        m.check_invariants();
        assert!(
            fx.iter().any(|e| matches!(
                e,
                Effect::Send {
                    msg: PeerMsg::Request { piece: P, .. },
                    ..
                }
            )),
            "tag {tag}: the loser asks the relay: {fx:?}"
        );
        assert!(!fx.iter().any(|e| matches!(e, Effect::EndJob { .. })));
    }
    assert!(
        stopped_by[0] > 8 && stopped_by[1] > 8,
        "both daemons yield for some content: {stopped_by:?}"
    );
}

/// Nobody connected has `P`: we ask our peers who of theirs does
/// (`dt_who`), dial the holders they name, and give those `--peer-wait`
/// to come up before the mirror starts.
#[test]
fn who_holds_it_finds_a_holder_we_are_not_connected_to() {
    let mut m = Machine::new(cfg());
    let env = no_discovery();
    run(
        &mut m,
        &env,
        vec![
            (0, hello_dt(2, [2; 20], Some(&[])), vec![attach(1, 2)]),
            (
                0,
                want_p(),
                vec![Effect::AskWho {
                    piece: P,
                    to: vec![(key(1), 4)],
                }],
            ),
            (
                40,
                Input::Holders {
                    piece: P,
                    addrs: vec![addr(9)],
                },
                vec![Effect::Dial { addr: addr(9) }],
            ),
            (1039, tick(&[(P, 0)]), vec![]),
            (
                1040,
                tick(&[(P, 0)]),
                vec![
                    start_p(1),
                    send(
                        1,
                        PeerMsg::Wip {
                            ext: 2,
                            add: vec![P],
                            done: vec![],
                        },
                    ),
                ],
            ),
        ],
    );
    assert_eq!(m.found_by().get(&Origin::Who), Some(&1));
}

/// A peer that comes up while apt waits on a piece no connected peer
/// offers is asked who holds it too: the peers asked first may all be
/// newcomers that know no holder. One that serves it is not asked, nor
/// one that does not speak `dt_who`.
#[test]
fn a_peer_that_comes_up_is_asked_who_holds_what_starves() {
    let mut m = Machine::new(cfg());
    let ask = |k: u32| Effect::AskWho {
        piece: P,
        to: vec![(key(k), 4)],
    };
    run(
        &mut m,
        &no_discovery(),
        vec![
            (0, hello_dt(2, [2; 20], Some(&[])), vec![attach(1, 2)]),
            (0, want_p(), vec![ask(1)]),
            (300, hello(3, Some(&[])), vec![attach(2, 3)]),
            (
                400,
                hello_dt(4, [4; 20], Some(&[])),
                vec![attach(3, 4), ask(3)],
            ),
            (
                500,
                hello_dt(5, [5; 20], Some(&[P])),
                vec![attach(4, 5), send(4, PeerMsg::Interested)],
            ),
            (600, hello_dt(6, [6; 20], Some(&[])), vec![attach(5, 6)]),
        ],
    );
}

/// Full of peers that do nothing for either side: a connection idle for
/// [`IDLE_TRIM_MS`] is closed, at most one each [`ROOM_EVERY_MS`], until
/// the places kept for newcomers (a fifth) are free; our own dials leave
/// them free, and a newcomer dialling in takes one.
#[test]
fn idle_connections_give_places_back_for_newcomers() {
    let mut m = Machine::new(Config {
        max_peers: 10,
        ..cfg()
    });
    let env = no_discovery();
    let mut steps: Vec<Step> = (0..10u8)
        .map(|i| {
            (
                0,
                hello(2 + i, Some(&[])),
                vec![attach(u32::from(i) + 1, 2 + i)],
            )
        })
        .collect();
    steps.extend([
        (IDLE_TRIM_MS - 100, tick(&[]), vec![]),
        (IDLE_TRIM_MS, tick(&[]), vec![send(1, PeerMsg::Close)]),
        (IDLE_TRIM_MS + 100, tick(&[]), vec![]),
        (
            IDLE_TRIM_MS + ROOM_EVERY_MS,
            tick(&[]),
            vec![send(2, PeerMsg::Close)],
        ),
        // Two places spare: nothing more is closed.
        (IDLE_TRIM_MS + 2 * ROOM_EVERY_MS, tick(&[]), vec![]),
        (
            IDLE_TRIM_MS + 2 * ROOM_EVERY_MS,
            Input::Down {
                key: key(1),
                violation: false,
            },
            vec![Effect::ReleaseSlot { ip: addr(2).ip() }],
        ),
        (
            IDLE_TRIM_MS + 2 * ROOM_EVERY_MS,
            Input::Down {
                key: key(2),
                violation: false,
            },
            vec![Effect::ReleaseSlot { ip: addr(3).ip() }],
        ),
        // A lookup's address is not dialled into them.
        (
            IDLE_TRIM_MS + 2 * ROOM_EVERY_MS,
            Input::Found {
                addr: addr(40),
                origin: Origin::Dht,
            },
            vec![],
        ),
        // A newcomer dialling in gets one.
        (
            IDLE_TRIM_MS + 2 * ROOM_EVERY_MS,
            Input::Incoming { addr: addr(41) },
            vec![Effect::Accept { addr: addr(41) }],
        ),
    ]);
    run(&mut m, &env, steps);
}

/// Every connection taken: a holder named by `dt_who` gets the slot of
/// the connection that does least for us (the idle one that came first).
#[test]
fn who_makes_room_for_a_holder() {
    let mut m = Machine::new(cfg());
    let env = no_discovery();
    let mut steps: Vec<Step> = (0..8u8)
        .map(|i| {
            (
                0,
                hello_dt(2 + i, [2 + i; 20], Some(&[])),
                vec![attach(u32::from(i) + 1, 2 + i)],
            )
        })
        .collect();
    // Peer 1 gets a wanted piece's blocks only if it serves one: none do.
    steps.push((
        0,
        want_p(),
        vec![Effect::AskWho {
            piece: P,
            to: (1..=8).map(|k| (key(k), 4)).collect(),
        }],
    ));
    steps.push((
        40,
        Input::Holders {
            piece: P,
            addrs: vec![addr(30)],
        },
        vec![send(1, PeerMsg::Close), Effect::Dial { addr: addr(30) }],
    ));
    run(&mut m, &env, steps);
}

/// Every slot taken by peers that do nothing for us nor we for them: a
/// newcomer dialling in gets the place of the one idle longest, once it
/// has been idle [`REDUNDANT_AFTER_MS`], at most [`ROOM_BURST`] at once and
/// then one per [`ROOM_EVERY_MS`]; before that it is refused. An address found by a
/// lookup waits for a free slot.
#[test]
fn a_full_peer_set_makes_room_for_newcomers() {
    let full = || -> Vec<Step> {
        (0..8u8)
            .map(|i| {
                (
                    u64::from(i),
                    hello_dt(2 + i, [2 + i; 20], Some(&[])),
                    vec![attach(u32::from(i) + 1, 2 + i)],
                )
            })
            .collect()
    };
    let found = |n: u8| Input::Found {
        addr: addr(n),
        origin: Origin::Dht,
    };
    let late = REDUNDANT_AFTER_MS + 10;
    let cases: Vec<(&str, Vec<Step>)> = vec![
        (
            "incoming, all idle long enough: the first idle one goes",
            vec![(
                late,
                Input::Incoming { addr: addr(40) },
                vec![send(1, PeerMsg::Close), Effect::Accept { addr: addr(40) }],
            )],
        ),
        (
            "incoming, too soon: refused",
            vec![(
                REDUNDANT_AFTER_MS - 10,
                Input::Incoming { addr: addr(40) },
                vec![Effect::ReleaseSlot { ip: addr(40).ip() }],
            )],
        ),
        (
            "found, even while starving: no room made (only for dt_who holders)",
            vec![
                (
                    late,
                    want_p(),
                    vec![Effect::AskWho {
                        piece: P,
                        to: (1..=8).map(|k| (key(k), 4)).collect(),
                    }],
                ),
                (late, found(41), vec![]),
            ],
        ),
        (
            "a burst of incoming: at most ROOM_BURST places in any ROOM_BURST seconds",
            {
                let mut v: Vec<Step> = (0..ROOM_BURST as u8)
                    .map(|i| {
                        (
                            late + u64::from(i),
                            Input::Incoming { addr: addr(40 + i) },
                            vec![
                                send(u32::from(i) + 1, PeerMsg::Close),
                                Effect::Accept { addr: addr(40 + i) },
                            ],
                        )
                    })
                    .collect();
                v.push((
                    late + 10,
                    Input::Incoming { addr: addr(50) },
                    vec![Effect::ReleaseSlot { ip: addr(50).ip() }],
                ));
                let window = ROOM_EVERY_MS * ROOM_BURST as u64;
                v.push((
                    late + window - 1,
                    Input::Incoming { addr: addr(51) },
                    vec![Effect::ReleaseSlot { ip: addr(51).ip() }],
                ));
                v.push((
                    late + window,
                    Input::Incoming { addr: addr(52) },
                    vec![
                        send(ROOM_BURST as u32 + 1, PeerMsg::Close),
                        Effect::Accept { addr: addr(52) },
                    ],
                ));
                // At most ROOM_BURST in any window: the burst's second
                // place has expired too.
                v.push((
                    late + window + 10,
                    Input::Incoming { addr: addr(53) },
                    vec![
                        send(ROOM_BURST as u32 + 2, PeerMsg::Close),
                        Effect::Accept { addr: addr(53) },
                    ],
                ));
                v
            },
        ),
    ];
    for (name, steps) in cases {
        eprintln!("case: {name}");
        let mut m = Machine::new(cfg());
        let env = no_discovery();
        run(&mut m, &env, full());
        run(&mut m, &env, steps);
    }
}

fn start_p(gen: u32) -> Effect {
    Effect::StartMirror {
        piece: P,
        gen,
        from: 0,
        to: SIZE,
    }
}

/// Peer 1 (a `dt_wip` relay) fetches `P` from the mirror and unchokes
/// us; apt wants `P` and every block of it is requested from the relay.
fn relay_serving_p() -> Vec<Step> {
    vec![
        (0, hello_dt(2, [2; 20], Some(&[])), vec![attach(1, 2)]),
        (0, wip(1, &[P], &[]), vec![]),
        (0, unchoked(1), vec![]),
        (
            0,
            want_p(),
            vec![send(1, PeerMsg::Interested), req(1, P, &BLOCKS)],
        ),
    ]
}

/// A relay holds our requests until its mirror's bytes are in: it is not
/// taken for stalled after `--stall-timeout`, only after
/// [`RELAY_STALL_MS`], when its mirror must be stuck.
#[test]
fn a_relay_stalls_only_after_its_longer_limit() {
    let mut m = Machine::new(cfg());
    let env = no_discovery();
    run(&mut m, &env, relay_serving_p());
    // Far beyond --stall-timeout (2 s): still waiting on the relay.
    let fx = ticks(&mut m, &env, 0, 9_000, &[(P, 0)]);
    assert_eq!(fx, vec![], "before the relay limit");
    let fx = ticks(&mut m, &env, 9_000, RELAY_STALL_MS + 1, &[(P, 0)]);
    m.check_invariants();
    assert!(
        fx.contains(&send(1, PeerMsg::CancelAll)),
        "stalled after the relay limit: {fx:?}"
    );
}

/// A relay that finished fetching and now holds the piece (its `dt_wip`
/// done, then its `dt_hold`) is judged by `--stall-timeout` from then on,
/// not from its last block, which came at the mirror's pace: it is not
/// snubbed the moment it holds the piece (a fleet's wave 1 sent a 44 MB
/// package to the mirror twice more that way).
#[test]
fn a_relay_that_now_holds_the_piece_gets_a_fresh_stall_clock() {
    for (holds, label) in [(true, "wip done, then holds"), (false, "holds at once")] {
        let mut m = Machine::new(cfg());
        let env = no_discovery();
        run(&mut m, &env, relay_serving_p());
        // Its mirror is slow: no block for 8 s, within the relay limit.
        let fx = ticks(&mut m, &env, 0, 8_000, &[(P, 0)]);
        assert_eq!(fx, vec![], "{label}: before the relay limit");
        if holds {
            let _ = m.handle(8_000, &env, wip(1, &[], &[P]));
            m.check_invariants();
        }
        let fx = m.handle(
            8_010,
            &env,
            Input::Holds {
                key: key(1),
                pieces: vec![P],
            },
        );
        m.check_invariants();
        assert!(
            !fx.contains(&send(1, PeerMsg::CancelAll)),
            "{label}: {fx:?}"
        );
        let fx = ticks(&mut m, &env, 8_010, 10_000, &[(P, 0)]);
        assert!(
            !fx.contains(&send(1, PeerMsg::CancelAll)),
            "{label}: a holder for 2 s, not yet stalled: {fx:?}"
        );
        let fx = ticks(&mut m, &env, 10_000, 10_200, &[(P, 0)]);
        assert!(
            fx.contains(&send(1, PeerMsg::CancelAll)),
            "{label}: silent for 2 s as a holder: stalled: {fx:?}"
        );
    }
}

/// Our answer to a `dt_who`: the peers other than the asker that hold or
/// relay the piece, at the addresses they listen on.
#[test]
fn holders_names_who_holds_or_relays_but_not_the_asker() {
    let mut m = Machine::new(cfg());
    let env = no_discovery();
    let _ = m.handle(0, &env, hello_dt(2, [2; 20], Some(&[P])));
    let _ = m.handle(0, &env, hello_dt(3, [3; 20], Some(&[])));
    let _ = m.handle(0, &env, hello_dt(4, [4; 20], Some(&[P])));
    let _ = m.handle(
        0,
        &env,
        Input::Wip {
            key: key(2),
            add: vec![P],
            done: vec![],
        },
    );
    m.check_invariants();
    // (asker, want)
    let cases = [
        (key(1), vec![addr(3), addr(4)]),
        (key(2), vec![addr(2), addr(4)]),
        (key(3), vec![addr(2), addr(3)]),
    ];
    for (asker, want) in cases {
        assert_eq!(
            m.holders(Content::Piece(P), asker),
            want,
            "asked by {asker:?}"
        );
    }
    assert!(m.holders(Content::Piece(P + 1), key(1)).is_empty());
}

/// apt wants a piece no connected peer holds. With few peers we look the
/// swarm up on the DHT (and ask who holds it); among many that answer
/// `dt_who` we only ask them: a lookup names swarm members, not holders,
/// and walks the whole DHT (the fleet's DHT bytes, issue 12).
#[test]
fn a_want_nobody_holds_looks_up_only_with_few_peers() {
    // (peers connected, how many speak dt_who, a lookup expected)
    let table: [(u8, u8, bool); 5] = [
        (0, 0, true),
        (1, 1, true),
        (STARVING_LOOKUP_PEERS as u8 - 1, 7, true),
        (STARVING_LOOKUP_PEERS as u8, 0, true),
        (STARVING_LOOKUP_PEERS as u8, 1, false),
    ];
    for (n, who, lookup) in table {
        let mut c = cfg();
        c.max_peers = 16;
        let mut m = Machine::new(c);
        let env = discovery();
        for i in 0..n {
            let hi = if i < who {
                hello_dt(2 + i, [2 + i; 20], Some(&[]))
            } else {
                hello(2 + i, Some(&[]))
            };
            m.handle(0, &env, hi);
            m.check_invariants();
        }
        let got = m.handle(10, &env, want_p());
        m.check_invariants();
        assert_eq!(
            got.contains(&Effect::Lookup),
            lookup,
            "{n} peers, {who} speak dt_who: {got:?}"
        );
        let asked = got.iter().any(|e| matches!(e, Effect::AskWho { .. }));
        assert_eq!(asked, who > 0, "{n} peers, {who} speak dt_who: {got:?}");
    }
}

/// Rule (c) and our own hiccups: a peer that sends nothing for
/// `--stall-timeout` while the ticks come on time is snubbed; the same
/// silence across a gap in the ticks (this task did not run, so neither
/// did it read) is not held against the peer.
#[test]
fn a_late_tick_does_not_make_every_peer_stall() {
    let start = |m: &mut Machine, env: &Env| run(m, env, one_peer_serving());
    let env = no_discovery();
    let stalled = |fx: &[Effect]| fx.contains(&send(1, PeerMsg::CancelAll));

    // Ticks on time: stalled once 2 s have passed without a block.
    let mut m = Machine::new(cfg());
    start(&mut m, &env);
    let fx = ticks(&mut m, &env, 0, 2_000, &[(P, 0)]);
    assert!(!stalled(&fx), "not yet at 2000 ms: {fx:?}");
    let fx = ticks(&mut m, &env, 2_000, 2_100, &[(P, 0)]);
    assert!(stalled(&fx), "stalled after 2 s of ticks: {fx:?}");

    // Ticks on time to 1000 ms, then none until 3000 ms: the gap does not
    // count, so the peer has had 1 s of silence, not 3.
    let mut m = Machine::new(cfg());
    start(&mut m, &env);
    let fx = ticks(&mut m, &env, 0, 1_000, &[(P, 0)]);
    assert!(!stalled(&fx), "{fx:?}");
    let fx = m.handle(3_000, &env, tick(&[(P, 0)]));
    m.check_invariants();
    assert!(!stalled(&fx), "a late tick: {fx:?}");
    // The silence goes on with ticks on time: stalled after 2 s of them.
    let fx = ticks(&mut m, &env, 3_000, 3_900, &[(P, 0)]);
    assert!(!stalled(&fx), "{fx:?}");
    let fx = ticks(&mut m, &env, 3_900, 4_100, &[(P, 0)]);
    assert!(
        stalled(&fx),
        "stalled once the silence is 2 s of ticks: {fx:?}"
    );
}

/// Holders that `dt_who` named but that turn us away (full): we dial them
/// again each ROOM_EVERY_MS, and the mirror waits for them as long as it
/// would itself take to send the piece (at least `--peer-wait`, at most
/// NAMED_PATIENCE_MS). The fleet's wave 4 (20 newcomers at once) was
/// refused by seven holders of a 72 MB package and fetched it again from
/// the mirror 1.4 s after asking.
#[test]
fn a_named_holder_that_refuses_us_is_dialled_again_before_the_mirror() {
    // (mirror's time for the piece, when the mirror starts after the answer)
    let cases: [(u64, u64); 3] = [
        (10, 1000),                  // a small file: --peer-wait
        (3000, 3000),                // the mirror's time
        (60_000, NAMED_PATIENCE_MS), // capped
    ];
    for (mirror_ms, patience) in cases {
        assert_eq!(named_patience(mirror_ms, 1000), patience);
        let env = Env {
            mirror: crate::mirror::Estimate {
                rate: SIZE * 1000 / mirror_ms,
                ..Default::default()
            },
            ..no_discovery()
        };
        let mut m = Machine::new(cfg());
        let label = format!("mirror {mirror_ms} ms");
        let _ = m.handle(0, &env, hello_dt(2, [2; 20], Some(&[])));
        let _ = m.handle(0, &env, want_p());
        let fx = m.handle(
            40,
            &env,
            Input::Holders {
                piece: P,
                addrs: vec![addr(9)],
            },
        );
        assert_eq!(fx, vec![Effect::Dial { addr: addr(9) }], "{label}");
        // Full: it closes the connection.
        let _ = m.handle(60, &env, Input::Failed { addr: addr(9) });
        m.check_invariants();
        let mut dials = 0;
        let mut started = None;
        let mut t = 60;
        while t < 40 + NAMED_PATIENCE_MS + 500 && started.is_none() {
            t += 100;
            for e in m.handle(t, &env, tick(&[(P, 0)])) {
                match e {
                    Effect::Dial { addr: a } if a == addr(9) => {
                        dials += 1;
                        // Turned away again.
                        let _ = m.handle(t, &env, Input::Failed { addr: a });
                    }
                    Effect::StartMirror { .. } => started = Some(t),
                    _ => {}
                }
            }
            m.check_invariants();
        }
        let started = started.unwrap_or(u64::MAX);
        assert!(
            (40 + patience..40 + patience + 200).contains(&started),
            "{label}: the mirror started at {started}, expected {patience} ms after the answer"
        );
        // Dialled again about once a second while waiting.
        let expected = (patience.saturating_sub(60)) / ROOM_EVERY_MS;
        assert!(
            dials + 1 >= expected && dials <= expected + 1,
            "{label}: dialled again {dials} times in {patience} ms"
        );
    }
}

/// Rule (b) and a relay: while it fetches from the mirror, and while it
/// finishes (verifies, stores), its mirror's pace is not judged; when it
/// holds the piece, rule (b) judges the holder from then on, after
/// RULE_B_AFTER_MS. In the fleet's wave 1, three receivers of a relay took
/// the tail of a 44 MB package from the mirror 50 ms after the relay
/// finished, on the relay's rate while it fetched.
#[test]
fn rule_b_judges_a_relay_that_became_a_holder_afresh() {
    let env = Env {
        mirror: crate::mirror::Estimate {
            rate: 100_000_000,
            latency_ms: 10,
        },
        ..no_discovery()
    };
    let mut m = Machine::new(cfg());
    // Many blocks: the tail stays free for the mirror (the peer has 64
    // requests out at this rate).
    let size = 300 * K;
    for input in [
        hello_dt(2, [2; 20], Some(&[])),
        wip(1, &[P], &[]),
        unchoked(1),
        Input::Want {
            piece: P,
            size,
            tag: 7,
        },
    ] {
        let _ = m.handle(0, &env, input);
        m.check_invariants();
    }
    // One slow block every 500 ms (32 KB/s), a tick every 100 ms; the
    // relay says done at 4000 ms and holds it at 6000 ms.
    let mut started = None;
    let mut next = 0u64;
    let mut t = 0;
    while t < 12_000 && started.is_none() {
        t += 100;
        let mut inputs = Vec::new();
        if t % 500 == 0 && next < 50 {
            inputs.push(block(1, P, next * K, K));
            next += 1;
        }
        if t == 4_000 {
            inputs.push(wip(1, &[], &[P]));
        }
        if t == 6_000 {
            inputs.push(Input::Holds {
                key: key(1),
                pieces: vec![P],
            });
        }
        inputs.push(tick(&[(P, next * K)]));
        for input in inputs {
            for e in m.handle(t, &env, input) {
                if matches!(e, Effect::StartMirror { .. }) {
                    started.get_or_insert(t);
                }
            }
            m.check_invariants();
        }
    }
    let started = started.unwrap_or(u64::MAX);
    assert!(
        (6_000 + RULE_B_AFTER_MS..6_000 + RULE_B_AFTER_MS + 200).contains(&started),
        "the mirror took the tail at {started}: expected RULE_B_AFTER_MS after the relay held it"
    );
}

/// A `dt_who` question nobody can answer yet is kept: when a peer of ours
/// starts to fetch the piece (`dt_wip`), the asker is told at the next
/// tick, once; a question older than [`WHO_LATER_MS`] is not answered,
/// and one we can answer at once is answered at once.
#[test]
fn a_who_question_is_answered_later_when_a_peer_starts_to_fetch_it() {
    const Q: u32 = 5;
    let mut m = Machine::new(cfg());
    let answer = |k: u32, piece: u32, peers: Vec<SocketAddr>| Effect::WhoAnswer {
        key: key(k),
        ext: 4,
        content: Content::Piece(piece),
        peers,
    };
    let wip = |k: u32, add: &[u32]| Input::Wip {
        key: key(k),
        add: add.to_vec(),
        done: vec![],
    };
    let ask = |k: u32, pieces: &[u32]| Input::WhoQuery {
        key: key(k),
        asked: pieces.iter().map(|&p| Content::Piece(p)).collect(),
    };
    run(
        &mut m,
        &no_discovery(),
        vec![
            (0, hello_dt(2, [2; 20], Some(&[])), vec![attach(1, 2)]),
            (0, ask(1, &[P, Q]), vec![]),
            (100, hello_dt(3, [3; 20], Some(&[])), vec![attach(2, 3)]),
            (100, tick(&[]), vec![]),
            (200, wip(2, &[P]), vec![]),
            (300, tick(&[]), vec![answer(1, P, vec![addr(3)])]),
            (400, tick(&[]), vec![]),
            // Asked at once: answered at once, and the relay itself is
            // not named to itself.
            (500, ask(2, &[P]), vec![]),
            (600, hello_dt(4, [4; 20], Some(&[])), vec![attach(3, 4)]),
            (600, ask(3, &[P]), vec![answer(3, P, vec![addr(3)])]),
            // Q: a holder comes only after the question expired.
            (WHO_LATER_MS, tick(&[]), vec![]),
            (WHO_LATER_MS, wip(2, &[Q]), vec![]),
            (WHO_LATER_MS + 100, tick(&[]), vec![]),
        ],
    );
}

/// Content our catalogue does not list (a newer index version's file):
/// a peer that names it in `dt_hold` or `dt_wip` (`Input::Foreign`) is
/// named to askers, at once or later, and no longer once it drops it; a
/// peer gives at most [`FOREIGN_MAX`] such names.
#[test]
fn who_questions_about_content_we_do_not_list_are_answered_too() {
    let new = Content::Foreign([0xab; 32]);
    let mut m = Machine::new(cfg());
    let answer = |k: u32, peers: Vec<SocketAddr>| Effect::WhoAnswer {
        key: key(k),
        ext: 4,
        content: new,
        peers,
    };
    let ask = |k: u32| Input::WhoQuery {
        key: key(k),
        asked: vec![new],
    };
    let foreign = |k: u32, add: bool| Input::Foreign {
        key: key(k),
        add: if add { vec![[0xab; 32]] } else { vec![] },
        drop: if add { vec![] } else { vec![[0xab; 32]] },
    };
    run(
        &mut m,
        &no_discovery(),
        vec![
            (0, hello_dt(2, [2; 20], Some(&[])), vec![attach(1, 2)]),
            (0, hello_dt(3, [3; 20], Some(&[])), vec![attach(2, 3)]),
            (0, ask(1), vec![]),
            (100, tick(&[]), vec![]),
            // Peer 2, on the newer version, starts to fetch it.
            (150, foreign(2, true), vec![]),
            (200, tick(&[]), vec![answer(1, vec![addr(3)])]),
            (300, tick(&[]), vec![]),
            (400, hello_dt(4, [4; 20], Some(&[])), vec![attach(3, 4)]),
            (400, ask(3), vec![answer(3, vec![addr(3)])]),
            // Dropped: nobody to name any more.
            (500, foreign(2, false), vec![]),
            (500, ask(3), vec![]),
        ],
    );
    // The bound.
    let many = Input::Foreign {
        key: key(1),
        add: (0..FOREIGN_MAX as u32 + 10)
            .map(|i| {
                let mut sha = [0u8; 32];
                sha[..4].copy_from_slice(&i.to_be_bytes());
                sha
            })
            .collect(),
        drop: vec![],
    };
    assert!(m.handle(600, &no_discovery(), many).is_empty());
    m.check_invariants();
}
