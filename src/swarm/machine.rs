//! The torrent state machine: every decision of one torrent, pure.
//!
//! Inputs (apt wants a piece, a peer connected, a block arrived, the
//! mirror finished a range, a copy was verified, a tick) go in with the
//! time and an [`Env`] snapshot; [`Effect`]s come out (send this to that
//! peer, dial, start a mirror range, commit, look up, announce). No
//! sockets, no tokio, no clock, no randomness from outside (a seeded
//! generator): `torrent.rs` is the actor that feeds it and performs its
//! effects, and the tests below drive it step by step, calling
//! [`Machine::check_invariants`] after every step. The invariants are
//! written down in `STATE.md` beside this file.
//!
//! When the mirror takes a piece (or part of one), rules from
//! `docs/swarm-design.md` §6.3:
//! - (a) nobody can serve it: no connected peer has it, after at most
//!   `--peer-wait` while discovery runs (at once if discovery found nobody
//!   at all, a short random delay when peers are connected but lack it, so
//!   that daemons asking at the same moment do not all go to the mirror;
//!   longer when a peer said it is fetching it, `dt_wip`); see
//!   [`mirror_rules::mirror_start_at`];
//! - (b) the peers on it are slower than the mirror would be: the mirror
//!   takes the tail ([`mirror_rules::mirror_tail`]);
//! - (c) a peer stalls: its blocks are freed, and (a) applies to them.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};

use super::choker::{Choker, PeerSample};
use super::mirror_rules;
use super::picker::{self, Picker};
use super::rate::Rate;
use super::wire::{self, BlockRef};
use crate::assembly::Failure;
use crate::discovery::Origin;
use crate::mirror::Estimate;
use crate::types::{PeerKey, PieceIndex, Source, BLOCK};

/// How long a stalled peer gets no requests.
pub const SNUB_MS: u64 = 30_000;
/// How long a peer that finished fetching a piece (`dt_wip` done) has to
/// verify and store it and say it holds it (`dt_hold`) before the mirror
/// takes it over.
pub const FINISH_GRACE_MS: u64 = 3_000;
/// A peer that stalls this many times in a row, with no block delivered
/// in between, is disconnected: it announced content it does not serve
/// (dt2 lets any peer announce anything; what it cannot back with bytes
/// costs us at most this many stall timeouts). Not a violation: an honest
/// peer on a saturated uplink can stall too, and may come back.
pub const MAX_STALLS: u8 = 3;
/// A peer that holds a piece and rejects our request for it while it
/// unchokes us is asked again after this pause. Such a reject is flow
/// control (its request queue was full, as libtorrent rejects beyond its
/// `reqq`), not "I cannot serve it".
pub const REFUSED_BACKOFF_MS: u64 = 500;
/// ... unless it keeps rejecting: at this many rounds of rejects in a row
/// with no block of it (that is, after `REFUSED_LIMIT - 1` pauses), it is
/// taken at its word and not asked for it again until its `dt_hold` says
/// so anew. A round is the rejects of the requests made since the last
/// round began: the late rejects of one batch, on a link whose round trip
/// is longer than the pause, count once.
pub const REFUSED_LIMIT: u8 = 3;
/// A relay (a peer that serves what it fetches from the mirror as it
/// arrives) stalls after this long without a block, whatever
/// `--stall-timeout` says.
pub const RELAY_STALL_MS: u64 = 10_000;
/// Below this many peers, a swarm that starves (apt waits on a file no
/// connected peer serves) looks up more peers every 5 s.
pub const STARVING_LOOKUP_PEERS: usize = 8;

/// Ticks come every 100 ms; one this much later than the last means the
/// task itself did not run in between (see `tick`).
pub const LATE_TICK_MS: u64 = 500;
/// A connection idle this long (no progress, no interest either way, no
/// unchoke) gives its place up to a newcomer when every slot is taken
/// (`make_room`): long enough that peers that just met can exchange their
/// holdings and requests, short against a fleet's lifetime.
pub const REDUNDANT_AFTER_MS: u64 = 10_000;
/// Connections give their places up to incoming ones at most one per this
/// long on average, with bursts of [`ROOM_BURST`]: a burst of newcomers
/// turns a peer set over slowly, and yet a wave of them that all want what
/// this peer alone holds is not turned away one a second (the fleet's wave
/// 4 dialled a full holder twice in a second, was refused both times and
/// took 21 MB from the mirror).
pub const ROOM_EVERY_MS: u64 = 1_000;
pub const ROOM_BURST: usize = 4;
/// Holders `dt_who` named that a job keeps, to dial again.
pub const NAMED_MAX: usize = 8;
/// The longest the mirror waits for a named holder to let us in.
pub const NAMED_PATIENCE_MS: u64 = 5_000;
/// A connection idle this long on both sides is closed, one a
/// [`ROOM_EVERY_MS`], while the places kept for newcomers ([`Machine`]'s
/// `spare`) are taken. Three times [`REDUNDANT_AFTER_MS`]: a peer set that
/// is busy is left alone.
pub const IDLE_TRIM_MS: u64 = 30_000;
/// A peer that came up while apt waits on pieces no connected peer offers
/// is asked who holds at most this many of them.
pub const ASK_NEW_PEER_MAX: usize = 32;
/// A `dt_who` question none of our peers could answer is kept this long:
/// when one of them starts to hold or fetch that piece meanwhile, the asker
/// is told then. Two newcomers that want the same new file at once and are
/// not connected to each other reach it through a common neighbour, and
/// one of them stops its mirror run ([`Machine`]'s `settle_fetcher`).
pub const WHO_LATER_MS: u64 = 5_000;
/// Most such questions kept (the oldest goes first).
pub const WHO_LATER_MAX: usize = 512;
/// Most contents a peer is known to hold or fetch that our catalogue does
/// not list (`Peer::foreign`); more are not recorded.
pub const FOREIGN_MAX: usize = 4096;

/// What a `dt_who` question asks about: content our catalogue lists (by
/// our number), or content it does not (by SHA-256: a newer index
/// version's files, which peers on that version hold or fetch).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Content {
    Piece(PieceIndex),
    Foreign([u8; 32]),
}

/// How long after the first `dt_who` answer the mirror waits for a named
/// holder: as long as the mirror would take to send it (waiting costs apt
/// at most that, a second mirror copy costs the fleet all of it), at least
/// `--peer-wait`, at most [`NAMED_PATIENCE_MS`].
pub fn named_patience(mirror_ms: u64, peer_wait: u64) -> u64 {
    mirror_ms.clamp(peer_wait.min(NAMED_PATIENCE_MS), NAMED_PATIENCE_MS)
}
/// Rule (b) judges the peers only after they have worked on a piece this
/// long: the mirror's tail costs mirror bytes the whole fleet shares.
pub const RULE_B_AFTER_MS: u64 = 3_000;
/// With two or more connected holders, rule (b) waits for peers that
/// would need up to this long for the rest of the piece.
pub const RULE_B_BUSY_SWARM_MS: u64 = 120_000;
/// Peers that would finish a piece within this long keep it, however
/// much faster the mirror would be: its tail would save apt at most this
/// long, and cost the fleet its bytes again (the fleet's wave 4: the one
/// holder of a 21.8 MB package sent it at 1.4 MB/s, and the mirror's tail
/// took 11.6 MB that it would have sent in another 8 s).
pub const RULE_B_PEERS_SOON_MS: u64 = 10_000;
/// How often the choker runs without a reason to.
pub const CHOKE_EVERY_MS: u64 = 10_000;
/// Addresses remembered per torrent (for `/status.json`).
pub const KNOWN_MAX: usize = 1000;
/// Pieces a peer may say it fetches (`dt_wip`) that we remember.
pub const WIP_MAX: usize = 1024;

/// The torrent's settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// How long apt may wait for a peer before the mirror starts (ms).
    pub peer_wait_ms: u64,
    /// A peer with requests out and no block for this long is snubbed (ms).
    pub stall_ms: u64,
    /// Connections (and dials) for this torrent.
    pub max_peers: usize,
    /// Regular unchoke slots (0: we do not upload).
    pub upload_slots: usize,
    /// Pieces in the torrent, and their total size.
    pub piece_count: u32,
    pub total_size: u64,
    /// Our peer id and address (to resolve double connections and to
    /// skip ourselves in discovery results).
    pub peer_id: [u8; 20],
    pub peer_addr: SocketAddr,
    /// Seed of the generator for the jitter and the optimistic unchoke.
    pub seed: u64,
}

/// What the machine reads of the world beside its inputs: a snapshot the
/// actor takes before each step.
#[derive(Clone, Copy, Debug, Default)]
pub struct Env {
    /// The mirror's measured speed.
    pub mirror: Estimate,
    /// Discovery is configured (it may still be starting).
    pub discovery_on: bool,
    /// Discovery runs: lookups and announces can be made.
    pub discovery_ready: bool,
    /// Discovery can reach nobody (`Discovery::alone`).
    pub alone: bool,
}

/// What a peer told us in its handshakes.
#[derive(Clone, Debug)]
pub struct Hello {
    pub addr: SocketAddr,
    pub peer_id: [u8; 20],
    /// We dialled it.
    pub outgoing: bool,
    pub client: String,
    /// Its pieces; `None` = all.
    pub bits: Option<Vec<u8>>,
    /// Its request queue (`reqq`), and where it listens (`p`).
    pub reqq: Option<u32>,
    pub port: Option<u16>,
    /// Its ids for our extensions.
    pub pex_id: Option<u8>,
    pub wip_id: Option<u8>,
    /// Its id for `dt_who`, and whether it relays its `dt_wip` content.
    pub who_id: Option<u8>,
    pub relay: bool,
    /// The bitfield we sent it: pieces we got since go as HAVE.
    pub sent: Vec<u8>,
}

/// The received part of an assembly when its mirror range ended: the
/// contiguous prefix and the ranges beyond it.
#[derive(Clone, Debug, Default)]
pub struct Received {
    pub prefix: u64,
    pub ranges: Vec<(u64, u64)>,
}

impl Received {
    /// Whether `[begin, end)` is received: inside the prefix, or inside a
    /// range that starts at or before the later of `begin` and the prefix.
    fn has(&self, begin: u64, end: u64) -> bool {
        end <= self.prefix
            || self
                .ranges
                .iter()
                .any(|&(s, e)| s <= begin.max(self.prefix) && end <= e)
    }
}

/// Which of two peers fetching the same content from the mirror goes on:
/// the lower rank. A mix of the peer id and the content's tag, so that the
/// same daemon does not win for every file of a herd.
pub fn fetch_rank(peer_id: &[u8; 20], tag: u64) -> u64 {
    let mut id = [0u8; 8];
    id.copy_from_slice(&peer_id[12..20]);
    // splitmix64's finaliser over the two.
    let mut z = u64::from_be_bytes(id) ^ tag.rotate_left(17);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What goes into the machine.
#[derive(Debug)]
pub enum Input {
    /// apt waits for `piece` (a new assembly of `size` bytes).
    Want {
        piece: PieceIndex,
        size: u64,
        /// The same for every peer (from the content's SHA-256): decides
        /// which of two peers fetching it from the mirror goes on.
        tag: u64,
    },
    /// The piece's old job is over (a new assembly replaces it).
    Abandon {
        piece: PieceIndex,
    },
    /// A connection came in (its handshake read, a slot taken).
    Incoming {
        addr: SocketAddr,
    },
    /// Discovery found an address.
    Found {
        addr: SocketAddr,
        origin: Origin,
    },
    /// A dial or handshake failed (its slot is given back).
    Failed {
        addr: SocketAddr,
    },
    /// A dial got no connection slot (limits or a ban).
    NoSlot {
        addr: SocketAddr,
    },
    /// A connection finished its handshakes.
    Up(Box<Hello>),
    /// A connection ended.
    Down {
        key: PeerKey,
        violation: bool,
    },
    Choked {
        key: PeerKey,
        choked: bool,
        /// The choke dropped our requests (BEP 3).
        discarded: bool,
    },
    Interest {
        key: PeerKey,
        interested: bool,
    },
    /// A block for `piece` could not be written (a full disk): the job
    /// ends with a local failure (apt's request falls back to a verified
    /// pass-through).
    WriteFailed {
        piece: PieceIndex,
    },
    /// Requests the actor could not send: free again. `unheld`: the peer
    /// gave no number for the content (it no longer holds it); else its
    /// connection's queue was full, and the next tick tries again.
    Unsent {
        key: PeerKey,
        reqs: Vec<BlockRef>,
        unheld: bool,
    },
    Rejected {
        key: PeerKey,
        req: BlockRef,
    },
    /// A block was written into its assembly; `new` bytes of it were new.
    /// Not `current`: the assembly was reset for a retry since (the
    /// block's bytes are gone; it only shows the peer is alive).
    Block {
        key: PeerKey,
        piece: PieceIndex,
        begin: u32,
        len: u32,
        new: u64,
        current: bool,
    },
    /// A peer started (`add`) and stopped (`done`) fetching these from the
    /// mirror (`dt_wip`, translated to our numbers).
    Wip {
        key: PeerKey,
        add: Vec<PieceIndex>,
        done: Vec<PieceIndex>,
    },
    /// We hold `piece` (`size` bytes) now: it got into the store outside a
    /// job of ours (an index file apt fetched from the mirror).
    Stored {
        piece: PieceIndex,
        size: u64,
    },
    /// A peer asks who of our peers holds these (its `dt_who` query, in
    /// our numbers).
    WhoQuery {
        key: PeerKey,
        asked: Vec<Content>,
    },
    /// A peer holds or fetches (`add`), or no longer (`drop`), content our
    /// catalogue does not list (its `dt_hold` and `dt_wip`, by SHA-256).
    Foreign {
        key: PeerKey,
        add: Vec<[u8; 32]>,
        drop: Vec<[u8; 32]>,
    },
    /// A peer holds these pieces now (its `dt_hold`, in our numbers).
    Holds {
        key: PeerKey,
        pieces: Vec<PieceIndex>,
    },
    /// A peer no longer holds `piece` (its `dt_hold` dropped it).
    Lost {
        key: PeerKey,
        piece: PieceIndex,
    },
    /// The swarm's catalogue grew: pieces are numbered up to `piece_count`
    /// now, and all of them make `total_size` bytes. With `scan`, the store
    /// may hold some of the new ones (a new index version came).
    Grow {
        piece_count: u32,
        total_size: u64,
        scan: bool,
    },
    /// A mirror range ended, and what of the piece is in.
    MirrorDone {
        piece: PieceIndex,
        gen: u32,
        res: Result<(), Failure>,
        received: Received,
    },
    /// The current copy of a piece was hashed; `peer_bytes` of it came
    /// from peers.
    Verified {
        piece: PieceIndex,
        ok: bool,
        peer_bytes: u64,
    },
    /// The answer to [`Effect::ResetForRetry`]: per block, its source and
    /// digest, or `None` when a reader already has bytes of it.
    RetryReset {
        piece: PieceIndex,
        suspect: Option<Vec<(Source, [u8; 32])>>,
    },
    /// A verified piece was committed (or not, `stored` false); `culprits`
    /// are the peers the smart ban proved wrong.
    Committed {
        piece: PieceIndex,
        size: u64,
        stored: bool,
        culprits: Vec<PeerKey>,
    },
    /// The pieces in the store (at start and every minute when idle), in
    /// answer to scan `gen` (0: the actor's own at start). Only the answer
    /// to the latest scan counts.
    Holding {
        gen: u64,
        bits: Vec<u8>,
        held_bytes: u64,
    },
    /// An IP got banned (a strike we made led to it).
    Banned {
        ip: IpAddr,
    },
    /// Peers of a connected peer hold (or relay) `piece`: its answer to
    /// our `dt_who`.
    Holders {
        piece: PieceIndex,
        addrs: Vec<SocketAddr>,
    },
    /// Discovery's lookup is over.
    LookupDone,
    /// Discovery runs now.
    DiscoveryReady,
    /// Every 100 ms: the writers' upload counters, and the contiguous
    /// prefix of each wanted piece's assembly.
    Tick {
        uploads: Vec<(PeerKey, u64)>,
        contiguous: Vec<(PieceIndex, u64)>,
    },
    /// The torrent is no longer registered.
    Stop,
}

/// A message to one peer's connection.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PeerMsg {
    /// Request these blocks of `piece` (the actor adds the assembly).
    Request {
        piece: PieceIndex,
        blocks: Vec<BlockRef>,
    },
    Cancel(BlockRef),
    CancelPiece(PieceIndex),
    CancelAll,
    Have(PieceIndex),
    /// What a scan of the store changed: held now, no longer held.
    Holdings {
        add: Vec<PieceIndex>,
        drop: Vec<PieceIndex>,
    },
    /// `dt_wip` with the peer's id for it: we started (`add`) or stopped
    /// (`done`) fetching these from the mirror.
    Wip {
        ext: u8,
        add: Vec<PieceIndex>,
        done: Vec<PieceIndex>,
    },
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    /// An extended message, with the peer's id for that extension.
    Extended(u8, Vec<u8>),
    Close,
}

/// What comes out of the machine, for the actor to perform in order.
#[derive(Clone, Debug, PartialEq)]
pub enum Effect {
    Send {
        key: PeerKey,
        msg: PeerMsg,
    },
    /// Dial `addr` (take a connection slot first; [`Input::NoSlot`] if
    /// there is none).
    Dial {
        addr: SocketAddr,
    },
    /// Run the handshakes of the incoming connection from `addr`.
    Accept {
        addr: SocketAddr,
    },
    /// Start the connection tasks of the peer that just came up as `key`.
    Attach {
        key: PeerKey,
        addr: SocketAddr,
    },
    /// Give a connection slot back.
    ReleaseSlot {
        ip: IpAddr,
    },
    /// A protocol violation by `ip` (repeated ones ban it).
    Violation {
        ip: IpAddr,
    },
    /// A weighted strike for corrupt data ([`Input::Banned`] if it bans).
    Strike {
        ip: IpAddr,
        weight: f64,
    },
    /// Proven corrupt: ban.
    Ban {
        ip: IpAddr,
    },
    /// Fetch `[from, to)` of `piece` from the mirror as run `gen`.
    StartMirror {
        piece: PieceIndex,
        gen: u32,
        from: u64,
        to: u64,
    },
    StopMirror {
        piece: PieceIndex,
    },
    /// The piece is verified: commit it; with `suspect`, the smart ban
    /// compares these digests of the failed copy with the good one.
    Commit {
        piece: PieceIndex,
        suspect: Option<Vec<(Source, [u8; 32])>>,
    },
    /// The piece failed its hash: reset the assembly for a retry and
    /// answer with [`Input::RetryReset`].
    ResetForRetry {
        piece: PieceIndex,
    },
    /// The job is over: forget its assembly (failing it with `failure`).
    EndJob {
        piece: PieceIndex,
        failure: Option<Failure>,
    },
    /// Discovery: look peers up, start announcing, report totals, forget.
    Lookup,
    Announce,
    /// `left` for trackers; the actor adds the byte counters.
    Totals {
        left: u64,
    },
    Forget,
    /// Read which pieces are in the store ([`Input::Holding`] with `gen`).
    ScanHolding {
        gen: u64,
    },
    /// Ask these connected peers who of their peers holds `piece`
    /// (`dt_who`, with each peer's id for it).
    AskWho {
        piece: PieceIndex,
        to: Vec<(PeerKey, u8)>,
    },
    /// Tell peer `key` (its `dt_who` id `ext`) that these peers of ours
    /// hold or fetch `content`.
    WhoAnswer {
        key: PeerKey,
        ext: u8,
        content: Content,
        peers: Vec<SocketAddr>,
    },
}

/// A connection's life once it is up. (Before, its address is in
/// `connecting`; after, it is gone.)
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Exchanging pieces.
    Active,
    /// We told it to close (a double connection, a ban); no more requests
    /// go to it, and it leaves at [`Input::Down`].
    Closing,
}

/// How a connection is being set up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Dial {
    Outgoing,
    Incoming,
}

struct Peer {
    phase: Phase,
    /// Where it listens (its address, with the port from its extended
    /// handshake), used for PEX and to avoid dialling it twice.
    listen: SocketAddr,
    peer_id: [u8; 20],
    outgoing: bool,
    client: String,
    /// Its pieces; `None` = all.
    bits: Option<Vec<u8>>,
    choked_us: bool,
    we_interested: bool,
    interested: bool,
    unchoked: bool,
    reqq: usize,
    /// When it last delivered a block, or was first asked (ms).
    last_progress: u64,
    snub_until: u64,
    /// Stalls since its last block.
    stalls: u8,
    rate: Rate,
    up_seen: u64,
    up_rate: Rate,
    wip: HashSet<PieceIndex>,
    /// Pieces its `dt_wip` said it finished fetching, and when: it holds
    /// them once it has verified and stored them and its `dt_hold` says so.
    finishing: HashMap<PieceIndex, u64>,
    pex_id: Option<u8>,
    wip_id: Option<u8>,
    who_id: Option<u8>,
    /// Content it holds or fetches that our catalogue does not list (by
    /// SHA-256; at most [`FOREIGN_MAX`]): a daemon on an older index
    /// version still tells askers who has the newer one's files.
    foreign: HashSet<[u8; 32]>,
    /// It serves what its `dt_wip` names as the mirror's bytes arrive.
    relay: bool,
    /// Pieces it holds and rejected while it unchoked us
    /// ([`REFUSED_BACKOFF_MS`], [`REFUSED_LIMIT`]).
    refused: HashMap<PieceIndex, Refusal>,
    /// Where we learnt of it (`None`: it dialled us).
    origin: Option<Origin>,
    /// Others can dial `listen`: we dialled it, or it gave its port.
    dialable: bool,
}

/// A holder's rejects of one piece while it unchokes us.
#[derive(Clone, Copy, Debug)]
struct Refusal {
    /// Rounds of rejects in a row, 1 to `REFUSED_LIMIT - 1`.
    rounds: u8,
    /// When the current round began: a reject of a request made before
    /// then belongs to it.
    since: u64,
    /// Not asked for the piece before this.
    until: u64,
}

impl Peer {
    fn has(&self, piece: PieceIndex) -> bool {
        self.bits
            .as_ref()
            .is_none_or(|b| wire::bitfield_get(b, piece))
    }

    /// It can serve `piece`: it holds it, or relays it from the mirror.
    fn serves(&self, piece: PieceIndex) -> bool {
        self.has(piece) || self.relays(piece)
    }

    /// It rejected `piece` a moment ago: not asked for it until the pause
    /// is over.
    fn refusing(&self, piece: PieceIndex, now: u64) -> bool {
        self.refused.get(&piece).is_some_and(|r| r.until > now)
    }

    /// It relays `piece` (fetches it from the mirror, and passes it on).
    fn relays(&self, piece: PieceIndex) -> bool {
        self.relay && self.wip.contains(&piece)
    }

    /// It may get requests now.
    fn usable(&self, now: u64) -> bool {
        self.phase == Phase::Active && !self.choked_us && self.snub_until <= now
    }
}

/// Where a wanted piece stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// Peers and (by the mirror rules) the mirror fetch it.
    Fetching,
    /// It failed its hash; the assembly is being reset for a retry.
    Resetting,
    /// It is verified and being committed; no source works on it.
    Committing,
}

/// The mirror's part in a job.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MirrorState {
    Idle,
    /// After a failed hash: the next fetch goes to the mirror at once.
    Forced,
    /// Range run `gen` is under way.
    Running {
        gen: u32,
    },
}

struct Job {
    state: JobState,
    mirror: MirrorState,
    size: u64,
    wanted_at: u64,
    /// Rule (a) with peers connected: start the mirror after this.
    jitter_at: u64,
    /// Its last mirror run's number (numbers are unique per torrent, so a
    /// late result of an earlier job's run is never taken for this one's).
    gen: u32,
    attempts: u8,
    /// After a failed hash: per block, its source and digest (smart ban).
    suspect: Option<Vec<(Source, [u8; 32])>>,
    peer_rate: Rate,
    peers_since: Option<u64>,
    /// Peers were told we fetch it from the mirror (`dt_wip`).
    wip_sent: bool,
    /// The same for every peer (from its SHA-256), see [`Input::Want`].
    tag: u64,
    /// We stopped our mirror run for a peer that fetches it too and goes
    /// on (the lower [`fetch_rank`]); its end is not a failure.
    yielded: bool,
    /// When a peer last delivered a block of it.
    last_block_at: u64,
    /// We asked connected peers who holds it (`dt_who`), and when; when
    /// holders they named may come up (dialled then).
    asked_at: Option<u64>,
    holders_due: Option<u64>,
    /// Holders `dt_who` named (at most [`NAMED_MAX`]), when the first was
    /// named, and when they were last dialled again. A full holder turns
    /// a newcomer away; it is dialled again each [`ROOM_EVERY_MS`], and
    /// the mirror waits for it as long as the mirror itself would take
    /// (at most [`NAMED_PATIENCE_MS`]).
    named: Vec<SocketAddr>,
    named_at: Option<u64>,
    redial_at: u64,
    /// Mirror attempts that failed, and when the next may start (ms).
    mirror_failures: u8,
    mirror_not_before: u64,
    /// Peers that delivered blocks: key -> IP (they may be gone by the
    /// time the smart ban runs).
    contributors: HashMap<PeerKey, IpAddr>,
}

impl Job {
    /// How long the mirror would take to send the whole piece.
    fn mirror_ms(&self, env: &Env) -> u64 {
        self.size.saturating_mul(1000) / env.mirror.rate.max(1)
    }

    /// Until when the mirror waits for the holders `dt_who` named.
    fn named_until(&self, env: &Env, peer_wait: u64) -> Option<u64> {
        self.named_at
            .map(|t| t + named_patience(self.mirror_ms(env), peer_wait))
    }
}

/// One peer as `/status.json` shows it (the actor adds byte counters).
#[derive(Clone, Debug)]
pub struct PeerView {
    pub key: PeerKey,
    pub listen: SocketAddr,
    pub client: String,
    pub pieces: u32,
    pub rate_from: u64,
    /// Bytes a second we upload to it (the last 10 s).
    pub rate_to: u64,
    pub choked_us: bool,
    pub unchoked: bool,
    pub interested: bool,
}

/// The state machine of one torrent.
pub struct Machine {
    cfg: Config,
    rng: fastrand::Rng,
    out: Vec<Effect>,
    picker: Picker,
    jobs: HashMap<PieceIndex, Job>,
    peers: HashMap<PeerKey, Peer>,
    next_key: PeerKey,
    connecting: HashMap<SocketAddr, Dial>,
    have: Vec<u8>,
    have_count: u32,
    /// Bytes of the pieces we hold (for trackers' `left`).
    held_bytes: u64,
    choker: Choker,
    known: HashMap<SocketAddr, Origin>,
    /// Addresses found, by where they came from (for status).
    found_by: HashMap<Origin, u64>,
    lookup_done_at: Option<u64>,
    last_choke: u64,
    last_pex: u64,
    /// When the last (up to [`ROOM_BURST`]) places were made.
    room_made: VecDeque<u64>,
    /// When an idle connection was last closed to keep places spare.
    last_trim: u64,
    last_holding: u64,
    last_report: u64,
    last_lookup: u64,
    /// When the last tick came: a late one means this task did not run.
    last_tick: u64,
    announced: bool,
    stopped: bool,
    /// The last mirror run's number, over all jobs.
    mirror_gen: u32,
    /// Pieces committed since the last [`Effect::ScanHolding`]: its answer
    /// may have missed them.
    stored_since_scan: HashMap<PieceIndex, u64>,
    /// The latest scan asked for.
    scan_gen: u64,
    /// `dt_who` questions nobody could answer yet: (asker, content, when),
    /// oldest first; see [`WHO_LATER_MS`].
    who_later: VecDeque<(PeerKey, Content, u64)>,
}

fn count_bits(b: &[u8]) -> u32 {
    b.iter().map(|x| x.count_ones()).sum()
}

impl Machine {
    /// A torrent that holds nothing yet and knows no peer.
    pub fn new(cfg: Config) -> Machine {
        Machine {
            rng: fastrand::Rng::with_seed(cfg.seed),
            out: Vec::new(),
            picker: Picker::default(),
            jobs: HashMap::new(),
            peers: HashMap::new(),
            next_key: PeerKey::FIRST,
            connecting: HashMap::new(),
            have: vec![0; wire::bitfield_len(cfg.piece_count)],
            have_count: 0,
            held_bytes: 0,
            choker: Choker::new(cfg.upload_slots, 30_000),
            known: HashMap::new(),
            found_by: HashMap::new(),
            lookup_done_at: None,
            last_choke: 0,
            last_pex: 0,
            room_made: VecDeque::new(),
            last_trim: 0,
            last_holding: 0,
            last_report: 0,
            last_lookup: 0,
            last_tick: 0,
            announced: false,
            stopped: false,
            mirror_gen: 0,
            stored_since_scan: HashMap::new(),
            scan_gen: 0,
            who_later: VecDeque::new(),
            cfg,
        }
    }

    /// Handles one input at `now` (ms since the torrent started) and
    /// returns the effects, in the order they must be performed.
    pub fn handle(&mut self, now: u64, env: &Env, input: Input) -> Vec<Effect> {
        if !self.stopped {
            self.step(now, env, input);
        }
        std::mem::take(&mut self.out)
    }

    /// Our pieces (for the bitfield a new connection gets), and how many.
    pub fn have(&self) -> (&[u8], u32) {
        (&self.have, self.have_count)
    }

    /// Pieces wanted now, in apt's order.
    pub fn wanted(&self) -> Vec<PieceIndex> {
        self.picker.wanted().collect()
    }

    /// Where the job of `piece` stands.
    #[cfg(test)]
    pub fn job_state(&self, piece: PieceIndex) -> Option<(JobState, MirrorState)> {
        self.jobs.get(&piece).map(|j| (j.state, j.mirror))
    }

    /// Peers, for the status page.
    pub fn peer_views(&self, now: u64) -> Vec<PeerView> {
        let mut v: Vec<PeerView> = self
            .peers
            .iter()
            .map(|(&key, p)| PeerView {
                key,
                listen: p.listen,
                client: p.client.clone(),
                pieces: p
                    .bits
                    .as_ref()
                    .map_or(self.cfg.piece_count, |b| count_bits(b)),
                rate_from: p.rate.per_sec(now),
                rate_to: p.up_rate.per_sec(now),
                choked_us: p.choked_us,
                unchoked: p.unchoked,
                interested: p.interested,
            })
            .collect();
        v.sort_by_key(|p| p.key);
        v
    }

    /// Addresses discovery found, by origin, sorted.
    pub fn discovered(&self) -> BTreeMap<Origin, Vec<String>> {
        let mut m: BTreeMap<Origin, Vec<String>> = BTreeMap::new();
        for (a, o) in &self.known {
            m.entry(*o).or_default().push(a.to_string());
        }
        for v in m.values_mut() {
            v.sort();
        }
        m
    }

    /// Where the connected peers other than `asker` that hold or relay
    /// `content` listen: the answer to a `dt_who` (in key order). Content
    /// our catalogue does not list counts as served when a peer named it in
    /// its `dt_hold` or `dt_wip` (whether it relays it or not).
    fn holders(&self, content: Content, asker: PeerKey) -> Vec<SocketAddr> {
        let mut v: Vec<(PeerKey, SocketAddr)> = self
            .peers
            .iter()
            .filter(|(&k, p)| {
                k != asker
                    && p.phase == Phase::Active
                    && p.dialable
                    && match content {
                        Content::Piece(piece) => p.serves(piece),
                        Content::Foreign(sha) => p.foreign.contains(&sha),
                    }
            })
            .map(|(&k, p)| (k, p.listen))
            .collect();
        v.sort_unstable();
        v.into_iter().map(|(_, a)| a).collect()
    }

    /// A peer's `dt_who` question: the peers of ours that hold or fetch
    /// each content, in a random order (different askers get different
    /// holders first), at most [`wire::MAX_WHO_PEERS`]. Content nobody
    /// serves yet is kept for [`WHO_LATER_MS`] and answered when somebody
    /// does.
    fn who_query(&mut self, key: PeerKey, asked: Vec<Content>, now: u64) {
        let Some(ext) = self.who_id(key) else {
            return;
        };
        for content in asked {
            if !self.answer_who(key, ext, content) {
                self.who_later.retain(|&(k, c, _)| (k, c) != (key, content));
                if self.who_later.len() >= WHO_LATER_MAX {
                    self.who_later.pop_front();
                }
                self.who_later.push_back((key, content, now));
            }
        }
    }

    /// Answers `key`'s question about `content` if a peer of ours serves it.
    fn answer_who(&mut self, key: PeerKey, ext: u8, content: Content) -> bool {
        let mut peers = self.holders(content, key);
        if peers.is_empty() {
            return false;
        }
        self.rng.shuffle(&mut peers);
        peers.truncate(wire::MAX_WHO_PEERS);
        self.emit(Effect::WhoAnswer {
            key,
            ext,
            content,
            peers,
        });
        true
    }

    /// The questions kept by [`Self::who_query`] that a peer of ours can
    /// answer now (it started to fetch or came to hold the content).
    fn tell_who_later(&mut self, now: u64) {
        let waiting = std::mem::take(&mut self.who_later);
        for (key, content, at) in waiting {
            if now.saturating_sub(at) >= WHO_LATER_MS {
                continue;
            }
            let Some(ext) = self.who_id(key) else {
                continue;
            };
            if !self.answer_who(key, ext, content) {
                self.who_later.push_back((key, content, at));
            }
        }
    }

    /// A connected peer's id for `dt_who`.
    pub fn who_id(&self, key: PeerKey) -> Option<u8> {
        self.peers.get(&key).and_then(|p| p.who_id)
    }

    /// How many addresses each source of addresses gave us.
    pub fn found_by(&self) -> BTreeMap<Origin, u64> {
        self.found_by.iter().map(|(&o, &n)| (o, n)).collect()
    }

    /// Connected peers by where we learnt of them (`incoming`: they
    /// dialled us).
    pub fn connected_by(&self) -> BTreeMap<String, usize> {
        let mut m = BTreeMap::new();
        for p in self.peers.values().filter(|p| p.phase == Phase::Active) {
            let k = match p.origin {
                Some(o) => format!("{o:?}").to_lowercase(),
                None => "incoming".to_string(),
            };
            *m.entry(k).or_insert(0) += 1;
        }
        m
    }

    /// Pieces held, and pieces wanted now.
    pub fn counts(&self) -> (u32, usize) {
        (self.have_count, self.jobs.len())
    }

    fn emit(&mut self, e: Effect) {
        self.out.push(e);
    }

    fn send(&mut self, key: PeerKey, msg: PeerMsg) {
        self.out.push(Effect::Send { key, msg });
    }

    fn step(&mut self, now: u64, env: &Env, input: Input) {
        match input {
            Input::Want { piece, size, tag } => self.want(piece, size, tag, now, env),
            Input::Abandon { piece } => self.end_job(piece, None),
            Input::Incoming { addr } => {
                // Full: a connection that has done nothing for either side
                // for a while gives its place up. In a swarm of hundreds the
                // holders are full of each other, and a newcomer that
                // wants what they hold must still get in.
                let full = self.peers.len() + self.connecting.len() >= self.cfg.max_peers;
                let window = ROOM_EVERY_MS * ROOM_BURST as u64;
                let may = self.room_made.len() < ROOM_BURST
                    || self
                        .room_made
                        .front()
                        .is_some_and(|&t| now.saturating_sub(t) >= window);
                let room = full && may && self.make_room(REDUNDANT_AFTER_MS, now);
                if room {
                    self.room_made.push_back(now);
                    if self.room_made.len() > ROOM_BURST {
                        self.room_made.pop_front();
                    }
                }
                if full && !room {
                    self.emit(Effect::ReleaseSlot { ip: addr.ip() });
                } else {
                    self.connecting.insert(addr, Dial::Incoming);
                    self.emit(Effect::Accept { addr });
                }
            }
            Input::Found { addr, origin } => {
                self.found(addr, origin, now);
            }
            Input::WhoQuery { key, asked } => self.who_query(key, asked, now),
            Input::Foreign { key, add, drop } => {
                if let Some(p) = self.peers.get_mut(&key) {
                    for sha in drop {
                        p.foreign.remove(&sha);
                    }
                    for sha in add {
                        if p.foreign.len() < FOREIGN_MAX {
                            p.foreign.insert(sha);
                        }
                    }
                }
            }
            Input::Holders { piece, addrs } => {
                let mut dialled = false;
                for addr in addrs {
                    dialled |= self.found(addr, Origin::Who, now);
                    if let Some(j) = self.jobs.get_mut(&piece) {
                        if !j.named.contains(&addr) && j.named.len() < NAMED_MAX {
                            j.named.push(addr);
                            j.named_at.get_or_insert(now);
                        }
                    }
                }
                if dialled {
                    if let Some(j) = self.jobs.get_mut(&piece) {
                        j.holders_due = Some(now + self.cfg.peer_wait_ms);
                    }
                }
            }
            Input::Failed { addr } => {
                self.connecting.remove(&addr);
                self.emit(Effect::ReleaseSlot { ip: addr.ip() });
                self.drive_all(now, env);
            }
            Input::NoSlot { addr } => {
                self.connecting.remove(&addr);
            }
            Input::Up(hello) => self.up(*hello, now, env),
            Input::Down { key, violation } => {
                if let Some(p) = self.peers.remove(&key) {
                    let ip = p.listen.ip();
                    self.emit(Effect::ReleaseSlot { ip });
                    if violation {
                        self.emit(Effect::Violation { ip });
                    }
                }
                self.picker.release(Source::Peer(key));
                self.choke_round(now);
                self.drive_all(now, env);
            }
            Input::Choked {
                key,
                choked,
                discarded,
            } => {
                if let Some(p) = self.peers.get_mut(&key) {
                    // Only a real unchoke restarts the stall clock: a peer
                    // cannot dodge it by repeating UNCHOKE.
                    if !choked && p.choked_us {
                        p.last_progress = now;
                    }
                    p.choked_us = choked;
                }
                if choked && discarded {
                    self.picker.release(Source::Peer(key));
                }
                self.drive_all(now, env);
            }
            Input::Interest { key, interested } => {
                if let Some(p) = self.peers.get_mut(&key) {
                    p.interested = interested;
                }
                self.choke_round(now);
            }
            Input::WriteFailed { piece } => {
                if self
                    .jobs
                    .get(&piece)
                    .is_some_and(|j| j.state != JobState::Committing)
                {
                    self.end_job(piece, Some(Failure::Local));
                }
            }
            Input::Unsent { key, reqs, unheld } => {
                let mut pieces: Vec<PieceIndex> = reqs.iter().map(|r| r.index).collect();
                pieces.dedup();
                if unheld {
                    if let Some(p) = self.peers.get_mut(&key) {
                        for &i in &pieces {
                            if let Some(b) = p.bits.as_mut() {
                                wire::bitfield_clear(b, i);
                            }
                            p.wip.remove(&i);
                            p.refused.remove(&i);
                        }
                    }
                    self.update_interest(key);
                }
                for r in reqs {
                    self.picker.rejected(
                        picker::Req {
                            piece: r.index,
                            begin: r.begin,
                            len: r.length,
                        },
                        Source::Peer(key),
                    );
                }
                if unheld {
                    for p in pieces {
                        self.drive(p, now, env);
                    }
                }
            }
            Input::Rejected { key, req } => {
                let sent = self.picker.rejected(
                    picker::Req {
                        piece: req.index,
                        begin: req.begin,
                        len: req.length,
                    },
                    Source::Peer(key),
                );
                // A choke's rejects are the BEP 6 norm. A holder that
                // rejects while it unchokes us is paused for that piece
                // (its queue was full, or a cancel crossed our request):
                // it still counts as a holder, so the mirror does not
                // start for it. One that keeps rejecting cannot serve it
                // (pruned since, or it lied): it is not asked for it
                // again until its dt_hold says so anew. Forgetting at the
                // first reject sent a leecher to the mirror for the last
                // block of a file four connected seeds held
                // (bench/install).
                // A reject of a request we no longer had out (cancelled,
                // or answered by another peer) says nothing.
                if let (Some(p), Some(sent)) = (self.peers.get_mut(&key), sent) {
                    if !p.choked_us {
                        if p.has(req.index) {
                            let until = now + REFUSED_BACKOFF_MS;
                            let rounds = match p.refused.get_mut(&req.index) {
                                // Asked again after the pause: a new round.
                                Some(r) if sent > r.since => {
                                    r.rounds += 1;
                                    r.since = now;
                                    r.until = until;
                                    r.rounds
                                }
                                // Another reject of this round's requests.
                                Some(r) => {
                                    r.until = until;
                                    r.rounds
                                }
                                None => {
                                    let r = Refusal {
                                        rounds: 1,
                                        since: now,
                                        until,
                                    };
                                    p.refused.insert(req.index, r);
                                    1
                                }
                            };
                            if rounds >= REFUSED_LIMIT {
                                p.refused.remove(&req.index);
                                if let Some(b) = p.bits.as_mut() {
                                    wire::bitfield_clear(b, req.index);
                                }
                            }
                        }
                        // A relay that rejects lost its mirror run (or
                        // let the request wait too long): not a relay of
                        // it any more.
                        p.wip.remove(&req.index);
                    }
                }
                self.update_interest(key);
                self.drive(req.index, now, env);
            }
            Input::Block {
                key,
                piece,
                begin,
                len,
                new,
                current,
            } => self.block(key, piece, begin, len, new, current, now),
            Input::Wip { key, add, done } => {
                let n = self.cfg.piece_count;
                let mut wanted = Vec::new();
                if let Some(p) = self.peers.get_mut(&key) {
                    for i in add {
                        if i < n && p.wip.len() < WIP_MAX {
                            p.wip.insert(i);
                            if self.picker.is_wanted(i) {
                                wanted.push(i);
                            }
                        }
                    }
                    p.finishing
                        .retain(|_, &mut t| now.saturating_sub(t) < FINISH_GRACE_MS);
                    for i in &done {
                        if p.wip.remove(i) && p.finishing.len() < WIP_MAX {
                            p.finishing.insert(*i, now);
                        }
                    }
                    wanted.extend(done.into_iter().filter(|&i| self.picker.is_wanted(i)));
                }
                self.update_interest(key);
                for i in wanted {
                    self.settle_fetcher(key, i);
                    self.drive(i, now, env);
                }
            }
            Input::Stored { piece, size } => {
                if piece < self.cfg.piece_count && !wire::bitfield_get(&self.have, piece) {
                    self.hold(piece, size);
                }
            }
            Input::Holds { key, pieces } => {
                let mut wanted = Vec::new();
                if let Some(p) = self.peers.get_mut(&key) {
                    for &i in &pieces {
                        if let Some(b) = p.bits.as_mut() {
                            wire::bitfield_set(b, i);
                        }
                        // Said anew: its past rejects are forgiven.
                        p.refused.remove(&i);
                        // A relay that now holds what it fetched serves at
                        // its own pace from here: rule (c)'s shorter limit
                        // starts now, not at its last block, which came at
                        // the mirror's pace (else it is snubbed the moment
                        // it holds the piece, and the mirror sends it again).
                        let relayed = p.wip.remove(&i);
                        if p.finishing.remove(&i).is_some() || relayed {
                            p.last_progress = p.last_progress.max(now);
                            // Rule (b) judges the holder it became, not the
                            // relay's mirror pace: its clock starts again.
                            if let Some(j) = self.jobs.get_mut(&i) {
                                j.peers_since = Some(now);
                                j.peer_rate = Rate::new(2000);
                            }
                        }
                        if self.picker.is_wanted(i) {
                            wanted.push(i);
                        }
                    }
                }
                if !wanted.is_empty() {
                    self.update_interest(key);
                    for i in wanted {
                        self.drive(i, now, env);
                    }
                }
            }
            Input::Lost { key, piece } => {
                if let Some(p) = self.peers.get_mut(&key) {
                    if let Some(b) = p.bits.as_mut() {
                        wire::bitfield_clear(b, piece);
                    }
                    p.refused.remove(&piece);
                }
                self.update_interest(key);
            }
            Input::Grow {
                piece_count,
                total_size,
                scan,
            } => {
                if piece_count > self.cfg.piece_count {
                    let len = wire::bitfield_len(piece_count);
                    self.have.resize(len, 0);
                    for p in self.peers.values_mut() {
                        if let Some(b) = p.bits.as_mut() {
                            b.resize(len, 0);
                        }
                    }
                    self.cfg.piece_count = piece_count;
                    if scan {
                        self.scan();
                    }
                }
                self.cfg.total_size = self.cfg.total_size.max(total_size);
            }
            Input::MirrorDone {
                piece,
                gen,
                res,
                received,
            } => self.mirror_done(piece, gen, res, &received, now, env),
            Input::Verified {
                piece,
                ok,
                peer_bytes,
            } => {
                if self
                    .jobs
                    .get(&piece)
                    .is_some_and(|j| j.state == JobState::Fetching)
                {
                    self.finish(piece, ok, peer_bytes);
                }
            }
            Input::RetryReset { piece, suspect } => self.retry(piece, suspect, now, env),
            Input::Committed {
                piece,
                size,
                stored,
                culprits,
            } => self.committed(piece, size, stored, culprits),
            Input::Holding {
                gen,
                mut bits,
                held_bytes,
            } if gen == self.scan_gen => {
                // A scan of a smaller catalogue (it grew meanwhile): the
                // pieces beyond it count as not held, until the next scan.
                bits.resize(self.have.len(), 0);
                let n = self.cfg.piece_count;
                let fresh: Vec<PieceIndex> = (0..n)
                    .filter(|&i| wire::bitfield_get(&bits, i) && !wire::bitfield_get(&self.have, i))
                    .collect();
                let gone: Vec<PieceIndex> = (0..n)
                    .filter(|&i| !wire::bitfield_get(&bits, i) && wire::bitfield_get(&self.have, i))
                    .filter(|i| !self.stored_since_scan.contains_key(i))
                    .collect();
                self.have = bits;
                // Pieces committed while the scan ran stay held.
                let mut extra = 0;
                for (i, size) in std::mem::take(&mut self.stored_since_scan) {
                    if !wire::bitfield_get(&self.have, i) {
                        wire::bitfield_set(&mut self.have, i);
                        extra += size;
                    }
                }
                self.have_count = count_bits(&self.have);
                self.held_bytes = held_bytes.saturating_add(extra).min(self.cfg.total_size);
                if !fresh.is_empty() || !gone.is_empty() {
                    self.broadcast(PeerMsg::Holdings {
                        add: fresh,
                        drop: gone,
                    });
                }
            }
            // The answer to a scan a newer one replaced.
            Input::Holding { .. } => {}
            Input::Banned { ip } => self.drop_ip(ip),
            Input::LookupDone => {
                self.lookup_done_at = Some(now);
                self.announce_once(env);
                self.drive_all(now, env);
            }
            Input::DiscoveryReady => self.start_discovery(env),
            Input::Tick {
                uploads,
                contiguous,
            } => self.tick(now, env, &uploads, &contiguous),
            Input::Stop => {
                // Connections end with the task: their slots go back now,
                // since their `Down` (or `Up`/`Failed`) will not be handled.
                self.stopped = true;
                let mut keys: Vec<PeerKey> = self.peers.keys().copied().collect();
                keys.sort_unstable();
                for k in keys {
                    self.send(k, PeerMsg::Close);
                    if let Some(p) = self.peers.get(&k) {
                        self.out.push(Effect::ReleaseSlot { ip: p.listen.ip() });
                    }
                }
                let mut connecting: Vec<SocketAddr> = self.connecting.keys().copied().collect();
                connecting.sort_unstable();
                for a in connecting {
                    self.out.push(Effect::ReleaseSlot { ip: a.ip() });
                }
                let mut pieces: Vec<PieceIndex> = self.jobs.keys().copied().collect();
                pieces.sort_unstable();
                for piece in pieces {
                    self.emit(Effect::EndJob {
                        piece,
                        failure: Some(Failure::Unreachable),
                    });
                }
                self.emit(Effect::Forget);
            }
        }
    }

    /// The first lookup, once discovery runs. Look up first and announce
    /// once that is over: mainline folds a lookup into a running query for
    /// the same info hash (its own announce's), and we saw such lookups
    /// miss peers.
    fn start_discovery(&mut self, env: &Env) {
        if env.discovery_ready {
            self.emit(Effect::Totals {
                left: self.cfg.total_size.saturating_sub(self.held_bytes),
            });
            self.emit(Effect::Lookup);
        }
    }

    /// Starts announcing this torrent (once discovery runs).
    fn announce_once(&mut self, env: &Env) {
        if !self.announced && env.discovery_ready {
            self.announced = true;
            self.emit(Effect::Announce);
        }
    }

    fn want(&mut self, piece: PieceIndex, size: u64, tag: u64, now: u64, env: &Env) {
        if self.jobs.contains_key(&piece) {
            // A new assembly of a piece whose old job is over.
            self.end_job(piece, None);
        }
        let jitter_cap = self.cfg.peer_wait_ms.min(250);
        let jitter = if jitter_cap == 0 {
            0
        } else {
            self.rng.u64(0..=jitter_cap)
        };
        self.jobs.insert(
            piece,
            Job {
                state: JobState::Fetching,
                mirror: MirrorState::Idle,
                size,
                wanted_at: now,
                jitter_at: now + jitter,
                gen: 0,
                attempts: 0,
                suspect: None,
                peer_rate: Rate::new(2000),
                peers_since: None,
                wip_sent: false,
                tag,
                yielded: false,
                last_block_at: now,
                asked_at: None,
                holders_due: None,
                named: Vec::new(),
                named_at: None,
                redial_at: now,
                mirror_failures: 0,
                mirror_not_before: 0,
                contributors: HashMap::new(),
            },
        );
        self.picker.add(piece, size);
        let holders = self.offered(piece);
        if !holders {
            // A lookup names members of the swarm, not holders of this
            // piece, and costs a walk over the DHT. Among many peers that
            // answer `dt_who`, asking them reaches further for less.
            let who_reaches = self.peers.len() >= STARVING_LOOKUP_PEERS
                && self.peers.values().any(|p| p.who_id.is_some());
            if env.discovery_ready && !who_reaches {
                self.last_lookup = now;
                self.emit(Effect::Lookup);
            }
            self.ask_who(piece, now);
        }
        self.update_interest_all();
        self.drive(piece, now, env);
    }

    /// Asks the connected peers that speak `dt_who` who of their peers
    /// holds `piece`: how a daemon connected to a few dozen of a swarm of
    /// hundreds finds a holder it is not connected to, without a DHT
    /// lookup per file.
    fn ask_who(&mut self, piece: PieceIndex, now: u64) {
        let mut to: Vec<(PeerKey, u8)> = self
            .peers
            .iter()
            .filter(|(_, p)| p.phase == Phase::Active)
            .filter_map(|(&k, p)| p.who_id.map(|id| (k, id)))
            .collect();
        if to.is_empty() {
            return;
        }
        to.sort_unstable();
        if let Some(j) = self.jobs.get_mut(&piece) {
            j.asked_at = Some(now);
        }
        self.emit(Effect::AskWho { piece, to });
    }

    /// Named holders of a job that no connected peer serves, and that still
    /// waits for them (its mirror idle): dialled again, each job at most
    /// every [`ROOM_EVERY_MS`] (a full holder makes a few places a second,
    /// `make_room`).
    fn redial_named(&mut self, now: u64, env: &Env) {
        let mut due: Vec<(PieceIndex, Vec<SocketAddr>)> = self
            .jobs
            .iter()
            .filter(|(_, j)| {
                j.state == JobState::Fetching
                    && j.mirror == MirrorState::Idle
                    && !j.named.is_empty()
                    && now.saturating_sub(j.redial_at) >= ROOM_EVERY_MS
                    && j.named_until(env, self.cfg.peer_wait_ms)
                        .is_some_and(|t| now < t)
            })
            .filter(|(&i, _)| !self.offered(i))
            .map(|(&i, j)| (i, j.named.clone()))
            .collect();
        due.sort_unstable();
        for (piece, addrs) in due {
            if let Some(j) = self.jobs.get_mut(&piece) {
                j.redial_at = now;
            }
            for addr in addrs {
                self.dial(addr, Origin::Who, now);
            }
        }
    }

    /// Two peers fetch `piece` from the mirror at once: the one with the
    /// lower [`fetch_rank`] goes on, the other stops its run and takes the
    /// piece from it as it arrives (when it relays). Both sides compute the
    /// same answer, so exactly one stops.
    fn settle_fetcher(&mut self, key: PeerKey, piece: PieceIndex) {
        let Some(p) = self.peers.get(&key) else {
            return;
        };
        if !p.relays(piece) {
            return;
        }
        let Some(j) = self.jobs.get_mut(&piece) else {
            return;
        };
        let (theirs, ours) = (
            fetch_rank(&p.peer_id, j.tag),
            fetch_rank(&self.cfg.peer_id, j.tag),
        );
        if !j.wip_sent || j.yielded || ours < theirs {
            return;
        }
        if let MirrorState::Running { .. } = j.mirror {
            tracing::info!(
                piece,
                "a peer fetches it from the mirror too and goes on: we take it from that peer"
            );
            j.yielded = true;
            j.wip_sent = false;
            self.out.push(Effect::StopMirror { piece });
            self.send_wip(vec![], vec![piece]);
        }
    }

    /// An address to dial; true when it is being dialled now.
    fn found(&mut self, addr: SocketAddr, origin: Origin, now: u64) -> bool {
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return false;
        }
        if self.known.len() < KNOWN_MAX {
            self.known.entry(addr).or_insert(origin);
        }
        *self.found_by.entry(origin).or_insert(0) += 1;
        self.dial(addr, origin, now)
    }

    /// Dials `addr` unless it is us, connected or being dialled, or no slot
    /// is free; true when it is being dialled now.
    fn dial(&mut self, addr: SocketAddr, origin: Origin, now: u64) -> bool {
        let me = self.cfg.peer_addr;
        if addr == me
            || (addr.port() == me.port() && me.ip().is_unspecified() && addr.ip().is_loopback())
        {
            return false;
        }
        if self.connecting.contains_key(&addr) || self.peers.values().any(|p| p.listen == addr) {
            return false;
        }
        // Full: a holder named by `dt_who` takes the place of any idle
        // connection. (Any address found while starving doing the same
        // turned the whole fleet's peer sets over: 5x the connections, a
        // load of 100 and 4.3x the mirror bytes in the N=100 fleet.)
        // Our own dials leave `spare` places for newcomers (their incoming
        // connections may take them); a holder `dt_who` named may take any.
        let used = self.slots_used();
        if origin == Origin::Who {
            if used >= self.cfg.max_peers && !self.make_room(0, now) {
                return false;
            }
        } else if used + self.spare() >= self.cfg.max_peers {
            return false;
        }
        self.connecting.insert(addr, Dial::Outgoing);
        self.emit(Effect::Dial { addr });
        true
    }

    /// Closes the connection that does least for either side, to make room
    /// for one that may do more: one that serves nothing we want, is not
    /// interested in us nor unchoked by us, and has had no progress for
    /// `idle_ms` at least (the longest idle first). False when every
    /// connection is busy.
    fn make_room(&mut self, idle_ms: u64, now: u64) -> bool {
        let wanted: Vec<PieceIndex> = self.picker.wanted().collect();
        let idle = self
            .peers
            .iter()
            .filter(|(_, p)| p.phase == Phase::Active && !p.unchoked && !p.interested)
            .filter(|(_, p)| now.saturating_sub(p.last_progress) >= idle_ms)
            .filter(|(_, p)| !wanted.iter().any(|&i| p.serves(i) || p.wip.contains(&i)))
            .filter(|(&k, _)| self.picker.outstanding(Source::Peer(k)) == 0)
            .min_by_key(|(&k, p)| (p.last_progress, k))
            .map(|(&k, _)| k);
        let Some(k) = idle else {
            return false;
        };
        tracing::debug!(peer = ?k, "closing an idle peer to make room");
        self.close(k);
        true
    }

    /// A connected peer serves `piece` or fetches it from the mirror.
    fn offered(&self, piece: PieceIndex) -> bool {
        self.peers
            .values()
            .any(|p| p.serves(piece) || p.wip.contains(&piece))
    }

    /// Whether apt waits on a piece no connected peer serves or fetches.
    fn starving(&self) -> bool {
        self.jobs.keys().any(|&i| !self.offered(i))
    }

    /// Places our own dials leave free for newcomers' incoming
    /// connections: a fifth of `max_peers`. In a swarm of hundreds the
    /// daemons that hold most are the old ones, and they filled their
    /// peer sets with each other by dialling; a newcomer they refuse
    /// cannot ask them who holds what it wants (the fleet's waves 3-5:
    /// holders of 40 files, up to 8 named per file, refused every
    /// newcomer, and the mirror sent each file again).
    fn spare(&self) -> usize {
        self.cfg.max_peers / 5
    }

    /// Keeps the spare places free: while they are taken, a connection
    /// idle on both sides for [`IDLE_TRIM_MS`] is closed, at most one each
    /// [`ROOM_EVERY_MS`]. Our own dials do not fill them again (`dial`).
    fn trim_idle(&mut self, now: u64) {
        let spare = self.spare();
        if spare == 0
            || self.slots_used() + spare <= self.cfg.max_peers
            || now.saturating_sub(self.last_trim) < ROOM_EVERY_MS
        {
            return;
        }
        if self.make_room(IDLE_TRIM_MS, now) {
            self.last_trim = now;
        }
    }

    /// Connections that count against `max_peers`: those up and not
    /// closing, and those being set up.
    fn slots_used(&self) -> usize {
        let up = self
            .peers
            .values()
            .filter(|p| p.phase == Phase::Active)
            .count();
        up + self.connecting.len()
    }

    fn up(&mut self, h: Hello, now: u64, env: &Env) {
        let addr = h.addr;
        if self.connecting.remove(&addr).is_none()
            && self.peers.len() + self.connecting.len() >= self.cfg.max_peers
        {
            // Not one we dialled or accepted, and no room for it.
            self.emit(Effect::ReleaseSlot { ip: addr.ip() });
            return;
        }
        // The same peer connected both ways at once: both sides keep the
        // connection dialled by the lower peer id, so they agree.
        let twin = self
            .peers
            .iter()
            .find(|(_, p)| p.peer_id == h.peer_id && p.phase == Phase::Active)
            .map(|(&k, p)| (k, p.outgoing));
        if let Some((k, old_outgoing)) = twin {
            let ours = self.cfg.peer_id;
            let dialler_of = |outgoing: bool| if outgoing { ours } else { h.peer_id };
            if old_outgoing == h.outgoing || dialler_of(old_outgoing) < dialler_of(h.outgoing) {
                self.emit(Effect::ReleaseSlot { ip: addr.ip() });
                return;
            }
            self.close(k);
        }
        let key = self.next_key;
        self.next_key = key.next();
        let listen = SocketAddr::new(addr.ip(), h.port.unwrap_or(addr.port()));
        let peer = Peer {
            phase: Phase::Active,
            listen,
            peer_id: h.peer_id,
            outgoing: h.outgoing,
            client: h.client,
            bits: h.bits,
            choked_us: true,
            we_interested: false,
            interested: false,
            unchoked: false,
            reqq: h.reqq.map_or(64, |q| (q as usize).clamp(1, 1000)),
            last_progress: now,
            snub_until: 0,
            stalls: 0,
            rate: Rate::new(5000),
            up_seen: 0,
            up_rate: Rate::new(10_000),
            wip: HashSet::new(),
            finishing: HashMap::new(),
            pex_id: h.pex_id,
            wip_id: h.wip_id,
            who_id: h.who_id,
            foreign: HashSet::new(),
            refused: HashMap::new(),
            relay: h.relay,
            origin: self.known.get(&listen).copied().filter(|_| h.outgoing),
            dialable: h.outgoing || h.port.is_some_and(|p| p != 0),
        };
        self.emit(Effect::Attach { key, addr });
        // Pieces we got between the bitfield snapshot and now.
        for i in 0..self.cfg.piece_count {
            if wire::bitfield_get(&self.have, i) && !wire::bitfield_get(&h.sent, i) {
                self.send(key, PeerMsg::Have(i));
            }
        }
        // What we are fetching from the mirror right now.
        if let Some(id) = peer.wip_id {
            let mut add: Vec<PieceIndex> = self
                .jobs
                .iter()
                .filter(|(_, j)| j.wip_sent)
                .map(|(&i, _)| i)
                .collect();
            add.sort_unstable();
            add.truncate(256);
            if !add.is_empty() {
                self.send(
                    key,
                    PeerMsg::Wip {
                        ext: id,
                        add,
                        done: vec![],
                    },
                );
            }
        }
        let who_id = peer.who_id;
        self.peers.insert(key, peer);
        // A peer that answers `dt_who` and came up while apt waits on pieces
        // no connected peer offers is asked who holds them too. The peers
        // asked when a job began are often newcomers like us, that know no
        // holder; the old peers that do came up a moment later (the
        // fleet's wave 4: libllvm14 went to the mirror again, asked only
        // of 19 newcomers, while six old peers came up 300 ms after the
        // question).
        if let Some(id) = who_id {
            let mut ask: Vec<PieceIndex> = self
                .jobs
                .iter()
                .filter(|(_, j)| j.state == JobState::Fetching && j.mirror == MirrorState::Idle)
                .map(|(&i, _)| i)
                .filter(|&i| !self.offered(i))
                .collect();
            ask.sort_unstable();
            ask.truncate(ASK_NEW_PEER_MAX);
            let wait = self.cfg.peer_wait_ms;
            for piece in ask {
                // Rule (a) waits for its answer as for the first ones, while
                // apt has waited less than `--peer-wait`.
                if let Some(j) = self.jobs.get_mut(&piece) {
                    if j.asked_at.is_none() || now < j.wanted_at + wait {
                        j.asked_at = Some(now);
                    }
                }
                self.emit(Effect::AskWho {
                    piece,
                    to: vec![(key, id)],
                });
            }
        }
        self.pex_on_connect(key);
        self.update_interest(key);
        self.choke_round(now);
        self.drive_all(now, env);
    }

    /// Tells a peer to close; it leaves at its `Down`.
    fn close(&mut self, key: PeerKey) {
        if let Some(p) = self.peers.get_mut(&key) {
            if p.phase == Phase::Active {
                p.phase = Phase::Closing;
                self.out.push(Effect::Send {
                    key,
                    msg: PeerMsg::Close,
                });
            }
        }
        self.picker.release(Source::Peer(key));
    }

    fn update_interest(&mut self, key: PeerKey) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let want = self.picker.wanted().any(|i| p.serves(i));
        if want != p.we_interested {
            p.we_interested = want;
            let msg = if want {
                PeerMsg::Interested
            } else {
                PeerMsg::NotInterested
            };
            self.out.push(Effect::Send { key, msg });
        }
    }

    fn update_interest_all(&mut self) {
        let mut keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        keys.sort_unstable();
        for k in keys {
            self.update_interest(k);
        }
    }

    /// Gives peer `key` as many requests as its queue has room for.
    fn feed(&mut self, key: PeerKey, now: u64) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        if !p.usable(now) {
            return;
        }
        // A queue sized to the link: about 200 ms of its rate, at least 64
        // blocks, at most what it accepts.
        let depth = ((p.rate.estimate(now) / 5 / u64::from(BLOCK)) as usize)
            .max(64)
            .min(p.reqq.clamp(1, 1000));
        let inflight = self.picker.outstanding(Source::Peer(key));
        // Refill in batches of a quarter of the queue: one write (and one
        // wake-up of the writer) per batch rather than per block.
        if inflight >= depth || (inflight > 0 && depth - inflight < depth / 4) {
            return;
        }
        let room = depth - inflight;
        let reqs = {
            let p = &*p;
            self.picker.pick(
                Source::Peer(key),
                |i| p.serves(i) && !p.refusing(i, now),
                room,
                now,
            )
        };
        if reqs.is_empty() {
            return;
        }
        if inflight == 0 {
            p.last_progress = now;
        }
        let mut by_piece: Vec<(PieceIndex, Vec<BlockRef>)> = Vec::new();
        for r in reqs {
            let b = BlockRef {
                index: r.piece,
                begin: r.begin,
                length: r.len,
            };
            match by_piece.last_mut() {
                Some((i, v)) if *i == r.piece => v.push(b),
                _ => by_piece.push((r.piece, vec![b])),
            }
        }
        for (piece, blocks) in by_piece {
            if let Some(j) = self.jobs.get_mut(&piece) {
                j.peers_since.get_or_insert(now);
            }
            self.out.push(Effect::Send {
                key,
                msg: PeerMsg::Request { piece, blocks },
            });
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn block(
        &mut self,
        key: PeerKey,
        piece: PieceIndex,
        begin: u32,
        len: u32,
        new: u64,
        current: bool,
        now: u64,
    ) {
        let ip = self.peers.get_mut(&key).map(|p| {
            p.last_progress = now;
            p.snub_until = 0;
            p.stalls = 0;
            p.refused.remove(&piece);
            p.rate.add(u64::from(len), now);
            p.listen.ip()
        });
        if !current {
            self.feed(key, now);
            return;
        }
        // Others that had it requested (a duplicate, or the mirror's range,
        // which fetches on and whose copy of it is moot).
        let mut others: Vec<PeerKey> = self
            .picker
            .got(piece, begin, Source::Peer(key))
            .into_iter()
            .filter_map(Source::peer)
            .collect();
        others.sort_unstable();
        for o in others {
            if self.peers.contains_key(&o) {
                self.send(
                    o,
                    PeerMsg::Cancel(BlockRef {
                        index: piece,
                        begin,
                        length: len,
                    }),
                );
            }
        }
        if let Some(j) = self.jobs.get_mut(&piece) {
            j.last_block_at = now;
            j.peer_rate.add(new, now);
            if let (Some(ip), true) = (ip, new > 0) {
                j.contributors.insert(key, ip);
            }
        }
        self.feed(key, now);
    }

    /// Decides what happens next for a wanted piece.
    fn drive(&mut self, piece: PieceIndex, now: u64, env: &Env) {
        let Some(job) = self.jobs.get(&piece) else {
            return;
        };
        if job.state != JobState::Fetching {
            return;
        }
        let (free, _, _) = self.picker.counts(piece);
        if free == 0 {
            return;
        }
        let mut usable: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.serves(piece) && p.usable(now))
            .map(|(&k, _)| k)
            .collect();
        if !usable.is_empty() && job.mirror != MirrorState::Forced {
            usable.sort_unstable();
            for k in usable {
                self.feed(k, now);
            }
            return;
        }
        if matches!(job.mirror, MirrorState::Running { .. }) {
            return;
        }
        let active = |p: &&Peer| p.phase == Phase::Active;
        let holders = self
            .peers
            .values()
            .filter(active)
            .any(|p| p.has(piece) && p.snub_until <= now);
        let wip = self.peers.values().any(|p| p.wip.contains(&piece));
        // A peer that just finished fetching it verifies and stores it, then
        // says it holds it: until then (at most FINISH_GRACE_MS) the mirror
        // waits. Without this, every receiver of a relay that had not
        // caught up went to the mirror for the rest at the moment the relay
        // finished (the fleet's wave 1: one 44 MB package sent 4-5 times).
        let finishing_until = self
            .peers
            .values()
            .filter_map(|p| p.finishing.get(&piece))
            .map(|t| t + FINISH_GRACE_MS)
            .max()
            .unwrap_or(0);
        let holders_due = job
            .holders_due
            .max(job.named_until(env, self.cfg.peer_wait_ms))
            .filter(|&t| t > now);
        let lookup_fresh = !env.discovery_on
            || self
                .lookup_done_at
                .is_some_and(|t| now.saturating_sub(t) < 60_000);
        let deadline = mirror_rules::mirror_start_at(&mirror_rules::Waiting {
            now,
            // A peer that fetches or holds it and delivered lately is
            // waited for from its last block on: a busy holder unchokes
            // in turns, and a relay's receivers become holders in turn.
            wanted_at: if wip || holders {
                job.wanted_at.max(job.last_block_at)
            } else {
                job.wanted_at
            },
            jitter_at: job.jitter_at,
            peer_wait: self.cfg.peer_wait_ms,
            force: job.mirror == MirrorState::Forced,
            holders,
            fetching: wip,
            mirror_ms: job.mirror_ms(env),
            no_peers: self.peers.is_empty(),
            connecting: !self.connecting.is_empty(),
            lookup_fresh,
            alone: env.alone,
            lookup_done_at: self.lookup_done_at,
            holders_due,
            asked_at: job.asked_at,
        });
        if now >= deadline.max(job.mirror_not_before).max(finishing_until) {
            tracing::debug!(
                piece,
                waited_ms = now.saturating_sub(job.wanted_at),
                holders,
                fetching = wip,
                peers = self.peers.len(),
                connecting = self.connecting.len(),
                asked = job.asked_at.is_some(),
                "rule (a): no peer serves it in time; the mirror starts"
            );
            self.start_mirror(piece, 0, now);
        }
    }

    fn drive_all(&mut self, now: u64, env: &Env) {
        for p in self.wanted() {
            self.drive(p, now, env);
        }
    }

    /// Gives the mirror the free blocks of `piece` from `from_block` on;
    /// false when there were none.
    fn start_mirror(&mut self, piece: PieceIndex, from_block: usize, now: u64) -> bool {
        let Some((from, to)) = self
            .picker
            .take_range(Source::Mirror, piece, from_block, now)
        else {
            return false;
        };
        let Some(job) = self.jobs.get_mut(&piece) else {
            return false;
        };
        self.mirror_gen += 1;
        let gen = self.mirror_gen;
        job.gen = gen;
        job.mirror = MirrorState::Running { gen };
        let send_wip = from == 0 && !job.wip_sent;
        job.wip_sent |= send_wip;
        self.emit(Effect::StartMirror {
            piece,
            gen,
            from,
            to,
        });
        if send_wip {
            self.send_wip(vec![piece], vec![]);
        }
        true
    }

    fn send_wip(&mut self, add: Vec<PieceIndex>, done: Vec<PieceIndex>) {
        let mut to: Vec<(PeerKey, u8)> = self
            .peers
            .iter()
            .filter_map(|(&k, p)| p.wip_id.map(|id| (k, id)))
            .collect();
        to.sort_unstable();
        for (k, ext) in to {
            self.send(
                k,
                PeerMsg::Wip {
                    ext,
                    add: add.clone(),
                    done: done.clone(),
                },
            );
        }
    }

    fn mirror_done(
        &mut self,
        piece: PieceIndex,
        gen: u32,
        res: Result<(), Failure>,
        received: &Received,
        now: u64,
        env: &Env,
    ) {
        let Some(job) = self.jobs.get_mut(&piece) else {
            return;
        };
        if job.mirror != (MirrorState::Running { gen }) {
            return;
        }
        job.mirror = MirrorState::Idle;
        self.picker
            .range_stopped(Source::Mirror, piece, |s, e| received.has(s, e));
        // We stopped it for a peer that fetches the piece too: not a
        // failure of the mirror.
        let res = if std::mem::take(&mut job.yielded) {
            Ok(())
        } else {
            res
        };
        match res {
            Ok(()) => self.drive(piece, now, env),
            Err(f) => {
                job.mirror_failures += 1;
                job.mirror_not_before = now + (1000u64 << job.mirror_failures.min(5));
                let failures = job.mirror_failures;
                let holders = self.peers.values().any(|p| p.has(piece));
                if holders && f != Failure::Local && failures < 4 {
                    tracing::info!(piece, failure = ?f, "mirror failed; peers go on");
                    self.drive(piece, now, env);
                } else {
                    tracing::info!(
                        piece,
                        failure = ?f,
                        failures,
                        holders,
                        peers = self.peers.len(),
                        "mirror failed; the download ends"
                    );
                    self.end_job(piece, Some(f));
                }
            }
        }
    }

    /// The whole piece has been hashed.
    fn finish(&mut self, piece: PieceIndex, ok: bool, peer_bytes: u64) {
        self.cancel_piece(piece);
        let Some(job) = self.jobs.get_mut(&piece) else {
            return;
        };
        let stop = matches!(job.mirror, MirrorState::Running { .. });
        job.mirror = MirrorState::Idle;
        if stop {
            self.out.push(Effect::StopMirror { piece });
            // The whole copy was hashed: whatever the mirror had is in.
            self.picker
                .range_stopped(Source::Mirror, piece, |_, _| true);
        }
        if ok {
            job.state = JobState::Committing;
            let suspect = job.suspect.take();
            self.picker.remove(piece);
            self.emit(Effect::Commit { piece, suspect });
            return;
        }
        job.attempts += 1;
        tracing::warn!(
            piece,
            attempt = job.attempts,
            from_peers = peer_bytes > 0,
            "piece failed its SHA-256"
        );
        if peer_bytes == 0 || job.attempts >= 3 {
            // The mirror's own bytes are wrong (or we tried enough): apt
            // gets the failure, as without peers.
            self.end_job(piece, Some(Failure::Corrupt));
            return;
        }
        job.state = JobState::Resetting;
        self.emit(Effect::ResetForRetry { piece });
    }

    fn retry(
        &mut self,
        piece: PieceIndex,
        suspect: Option<Vec<(Source, [u8; 32])>>,
        now: u64,
        env: &Env,
    ) {
        let Some(job) = self.jobs.get_mut(&piece) else {
            return;
        };
        if job.state != JobState::Resetting {
            return;
        }
        match suspect {
            Some(blocks) => {
                job.suspect = Some(blocks);
                job.mirror = MirrorState::Forced;
                job.state = JobState::Fetching;
                self.picker.reset(piece);
                self.drive(piece, now, env);
            }
            None => {
                // apt already has bytes of it: the response must fail. Each
                // contributing peer gets a strike by its share.
                let mut contributors: Vec<(PeerKey, IpAddr)> =
                    job.contributors.iter().map(|(&k, &ip)| (k, ip)).collect();
                contributors.sort_unstable();
                let srcs: Vec<Option<PeerKey>> =
                    contributors.iter().map(|(k, _)| Some(*k)).collect();
                let single = contributors.len() == 1;
                for (k, w) in super::ban::shares(&srcs) {
                    if let Some((_, ip)) = contributors.iter().find(|(c, _)| *c == k) {
                        let weight = if single { 1.0 } else { w };
                        self.out.push(Effect::Strike { ip: *ip, weight });
                    }
                }
                self.end_job(piece, Some(Failure::Corrupt));
            }
        }
    }

    /// Cancels every outstanding request for `piece` at every peer.
    fn cancel_piece(&mut self, piece: PieceIndex) {
        let mut keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        keys.sort_unstable();
        for k in keys {
            self.send(k, PeerMsg::CancelPiece(piece));
        }
    }

    fn end_job(&mut self, piece: PieceIndex, failure: Option<Failure>) {
        self.cancel_piece(piece);
        for p in self.peers.values_mut() {
            p.refused.remove(&piece);
        }
        self.picker.remove(piece);
        if let Some(j) = self.jobs.remove(&piece) {
            self.emit(Effect::EndJob { piece, failure });
            if j.wip_sent {
                self.send_wip(vec![], vec![piece]);
            }
        }
        self.update_interest_all();
    }

    /// A committed piece: `size` bytes, stored or not. Only a job that is
    /// committing ends here; a job started since for the same piece (a new
    /// assembly after this one was over) goes on.
    fn committed(&mut self, piece: PieceIndex, size: u64, stored: bool, culprits: Vec<PeerKey>) {
        let job = self
            .jobs
            .get(&piece)
            .filter(|j| j.state == JobState::Committing);
        let mut ips: Vec<IpAddr> = job.map_or_else(Vec::new, |j| {
            culprits
                .iter()
                .filter_map(|k| j.contributors.get(k).copied())
                .collect()
        });
        let ending = job.is_some();
        ips.sort_unstable();
        ips.dedup();
        for ip in ips {
            tracing::warn!(%ip, piece, "peer sent corrupt blocks: banned");
            self.emit(Effect::Ban { ip });
            self.drop_ip(ip);
        }
        // HAVE before dt_wip's "done" (sent by end_job): a peer waiting for
        // this piece must see that we hold it before it hears that we
        // stopped fetching it, or it would go to the mirror in between.
        if stored && piece < self.cfg.piece_count && !wire::bitfield_get(&self.have, piece) {
            self.hold(piece, size);
        }
        if ending {
            self.end_job(piece, None);
        }
    }

    /// We hold `piece` now: peers are told.
    fn hold(&mut self, piece: PieceIndex, size: u64) {
        wire::bitfield_set(&mut self.have, piece);
        self.stored_since_scan.insert(piece, size);
        self.have_count += 1;
        self.held_bytes = self
            .held_bytes
            .saturating_add(size)
            .min(self.cfg.total_size);
        self.broadcast_have(piece);
    }

    /// Asks for a scan of the store.
    fn scan(&mut self) {
        self.stored_since_scan.clear();
        self.scan_gen += 1;
        self.emit(Effect::ScanHolding { gen: self.scan_gen });
    }

    fn broadcast_have(&mut self, piece: PieceIndex) {
        self.broadcast(PeerMsg::Have(piece));
    }

    fn broadcast(&mut self, msg: PeerMsg) {
        let mut keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        keys.sort_unstable();
        for k in keys {
            self.send(k, msg.clone());
        }
    }

    fn drop_ip(&mut self, ip: IpAddr) {
        let mut keys: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(_, p)| p.listen.ip() == ip)
            .map(|(&k, _)| k)
            .collect();
        keys.sort_unstable();
        for k in keys {
            self.close(k);
        }
    }

    fn choke_round(&mut self, now: u64) {
        self.last_choke = now;
        let downloading = !self.jobs.is_empty();
        let mut samples: Vec<PeerSample> = self
            .peers
            .iter()
            .filter(|(_, p)| p.phase == Phase::Active)
            .map(|(&k, p)| PeerSample {
                id: u64::from(k.get()),
                interested: p.interested,
                down_rate: p.rate.per_sec(now),
                uploaded_recent: p.up_rate.per_sec(now),
                snubbed: p.snub_until > now,
            })
            .collect();
        samples.sort_by_key(|s| s.id);
        let r = self.rng.u64(..);
        let unchoke: HashSet<u64> = self
            .choker
            .decide(&samples, downloading, now, r)
            .into_iter()
            .collect();
        let mut keys: Vec<PeerKey> = self.peers.keys().copied().collect();
        keys.sort_unstable();
        for k in keys {
            let Some(p) = self.peers.get_mut(&k) else {
                continue;
            };
            let u = unchoke.contains(&u64::from(k.get()));
            if u != p.unchoked {
                p.unchoked = u;
                let msg = if u { PeerMsg::Unchoke } else { PeerMsg::Choke };
                self.out.push(Effect::Send { key: k, msg });
            }
        }
    }

    fn tick(
        &mut self,
        now: u64,
        env: &Env,
        uploads: &[(PeerKey, u64)],
        contiguous: &[(PieceIndex, u64)],
    ) {
        // Upload rates from the writers' counters.
        for &(k, up) in uploads {
            if let Some(p) = self.peers.get_mut(&k) {
                p.up_rate.add(up - p.up_seen.min(up), now);
                p.up_seen = up;
            }
        }
        // Time this task did not run (a starved CPU, a blocked thread) is
        // not a peer's silence: a tick that comes LATE_TICK_MS after the
        // last one moves every stall clock on by the gap, so that rule (c)
        // does not snub every peer at once for our own hiccup.
        let gap = now.saturating_sub(self.last_tick);
        self.last_tick = now;
        if gap > LATE_TICK_MS && now > gap {
            tracing::debug!(gap_ms = gap, "late tick: stall clocks moved on");
            for p in self.peers.values_mut() {
                p.last_progress = (p.last_progress + gap).min(now);
            }
        }
        // Rule (c): a peer with requests out and no block for `stall_ms`
        // is snubbed and its blocks go back to the picker. That includes a
        // BEP 6 peer that choked us and neither served nor rejected them.
        let stall = self.cfg.stall_ms;
        let mut stalled: Vec<PeerKey> = self
            .peers
            .iter()
            .filter(|(&k, p)| {
                // A relay delivers at its mirror's pace, and holds a
                // request until the mirror's bytes are in: it stalls only
                // when that mirror does.
                let limit = if p.relay && !(p.wip.is_empty() && p.finishing.is_empty()) {
                    stall.max(RELAY_STALL_MS)
                } else {
                    stall
                };
                self.picker.outstanding(Source::Peer(k)) > 0
                    && now.saturating_sub(p.last_progress) > limit
            })
            .map(|(&k, _)| k)
            .collect();
        stalled.sort_unstable();
        for k in stalled {
            let mut give_up = None;
            if let Some(p) = self.peers.get_mut(&k) {
                tracing::info!(peer = %p.listen, "peer stalled: its requests go elsewhere");
                p.snub_until = now + SNUB_MS;
                p.stalls = p.stalls.saturating_add(1);
                if p.stalls >= MAX_STALLS {
                    give_up = Some(p.listen.ip());
                }
            }
            self.send(k, PeerMsg::CancelAll);
            self.picker.release(Source::Peer(k));
            if let Some(ip) = give_up {
                tracing::info!(%ip, "peer stalled {MAX_STALLS} times in a row: disconnected");
                self.close(k);
            }
        }
        // Rule (b): the mirror takes the tail of a piece the peers are too
        // slow for.
        for piece in self.wanted() {
            let Some(j) = self.jobs.get(&piece) else {
                continue;
            };
            let Some(since) = j.peers_since else { continue };
            // A relay is as fast as its mirror: the tail from ours would
            // only cost the mirror the same bytes twice. So is one that
            // has just finished fetching it (it verifies, stores and then
            // serves it at its own pace).
            if self
                .peers
                .values()
                .any(|p| (p.relays(piece) || p.finishing.contains_key(&piece)) && !p.has(piece))
            {
                continue;
            }
            if j.mirror != MirrorState::Idle
                || j.state != JobState::Fetching
                || now.saturating_sub(since) < RULE_B_AFTER_MS
                || now < j.mirror_not_before
            {
                continue;
            }
            let Some(&(_, prefix)) = contiguous.iter().find(|(p, _)| *p == piece) else {
                continue;
            };
            let rest = j.size.saturating_sub(prefix);
            if rest < 256 * 1024 {
                continue;
            }
            // Judged only while a peer serves it to us now: when every
            // holder chokes us, rule (a) waits for their unchoke rounds
            // (`BUSY_MIN_MS` from the last block), and a rate averaged over
            // choked time says nothing about the peers' speed.
            if !self
                .peers
                .values()
                .any(|p| p.serves(piece) && p.usable(now))
            {
                continue;
            }
            // Several connected peers hold it: a slow rate means they are
            // busy (a herd shares their upload slots, or their machine is
            // loaded), and each receiver that completes adds a holder. The
            // mirror's tail would cost the fleet the bytes again, so it is
            // taken only when the peers would need over two minutes.
            let holding = self
                .peers
                .values()
                .filter(|p| p.phase == Phase::Active && p.has(piece))
                .count();
            // The peers' rate on this piece: the better of the recent rate
            // and the average since they started on it, so that a stall of
            // a few seconds (a loaded peer) does not hand the tail to the
            // mirror while a slow start that picks up still counts.
            let peer_rate = j.peer_rate.estimate(now).max(j.peer_rate.average(now));
            let peers_need_ms = rest.saturating_mul(1000) / peer_rate.max(1);
            if peers_need_ms <= RULE_B_PEERS_SOON_MS
                || (holding >= 2 && peers_need_ms <= RULE_B_BUSY_SWARM_MS)
            {
                continue;
            }
            let m = env.mirror;
            // The mirror must be four times faster: its tail costs mirror
            // bytes, which in a fleet all share (and peers on a loaded
            // machine look slow for a while).
            if let Some(front) =
                mirror_rules::mirror_tail(rest, peer_rate, m.rate / 4, m.latency_ms)
            {
                let at = ((prefix + front) / u64::from(BLOCK)) as usize;
                let from = self.picker.tail_start(piece).unwrap_or(0).max(at);
                if self.start_mirror(piece, from, now) {
                    tracing::info!(
                        piece,
                        from_block = from,
                        peer_rate,
                        mirror_rate = m.rate,
                        "peers slower than the mirror: it takes the tail"
                    );
                } else if let Some(j) = self.jobs.get_mut(&piece) {
                    // Nothing free at the tail: look again in a while.
                    j.mirror_not_before = now + 1000;
                }
            }
        }
        self.drive_all(now, env);
        if now.saturating_sub(self.last_choke) >= CHOKE_EVERY_MS {
            self.choke_round(now);
        }
        self.redial_named(now, env);
        self.tell_who_later(now);
        self.trim_idle(now);
        // Look for more peers while we have few: every 5 s while apt waits
        // on a piece nobody connected holds, every minute otherwise.
        if env.discovery_ready {
            // Starving: apt waits on a piece no connected peer serves or
            // fetches. A lookup then while we have fewer than
            // STARVING_LOOKUP_PEERS; else only while we have few peers.
            let starving = self.starving();
            // Ask again who holds what still starves (peers come and go),
            // a few pieces per round, each at most every 5 s.
            let mut again: Vec<PieceIndex> = self
                .jobs
                .iter()
                .filter(|(_, j)| {
                    j.state == JobState::Fetching
                        && matches!(j.mirror, MirrorState::Idle)
                        && j.asked_at.is_some_and(|t| now.saturating_sub(t) >= 5_000)
                })
                .map(|(&i, _)| i)
                .filter(|&i| !self.offered(i))
                .collect();
            again.sort_unstable();
            for i in again.into_iter().take(4) {
                self.ask_who(i, now);
            }

            // Starving with nobody at all: a fleet that starts together
            // is announcing right now, so look again within a second.
            let waiting = self.jobs.iter().any(|(&i, j)| {
                j.mirror == MirrorState::Idle && j.state == JobState::Fetching && !self.offered(i)
            });
            let every = match (starving, waiting && self.peers.is_empty()) {
                (true, true) => 1_000,
                (true, false) => 5_000,
                _ => 60_000,
            };
            // With many peers a lookup adds little (they are asked who
            // holds it, `dt_who`) and costs every node of the DHT.
            let few = self.peers.len() < STARVING_LOOKUP_PEERS;
            if (self.peers.len() < 4 || (starving && few))
                && now.saturating_sub(self.last_lookup) >= every
            {
                self.last_lookup = now;
                self.emit(Effect::Lookup);
            }
        }
        if now >= 10_000 {
            self.announce_once(env);
        }
        if now.saturating_sub(self.last_pex) >= 60_000 {
            self.last_pex = now;
            self.send_pex();
        }
        if now.saturating_sub(self.last_holding) >= 60_000 && self.jobs.is_empty() {
            self.last_holding = now;
            self.scan();
        }
        if now.saturating_sub(self.last_report) >= 1000 {
            self.last_report = now;
            if env.discovery_ready {
                self.emit(Effect::Totals {
                    left: self.cfg.total_size.saturating_sub(self.held_bytes),
                });
            }
        }
    }

    /// PEX at once when a peer connects: it learns our other peers, and
    /// they learn it, so a swarm joins up within a round trip of the first
    /// connection rather than at the next DHT lookup.
    fn pex_on_connect(&mut self, key: PeerKey) {
        let Some(new) = self.peers.get(&key) else {
            return;
        };
        let (new_listen, new_pex) = (new.listen, new.pex_id);
        let mut others: Vec<(PeerKey, SocketAddr, Option<u8>)> = self
            .peers
            .iter()
            .filter(|(&k, _)| k != key)
            .map(|(&k, p)| (k, p.listen, p.pex_id))
            .collect();
        others.sort_unstable();
        if let (Some(id), false) = (new_pex, others.is_empty()) {
            let msg = wire::Pex {
                added: others.iter().map(|o| o.1).take(wire::MAX_PEX).collect(),
                dropped: vec![],
            };
            self.send(key, PeerMsg::Extended(id, msg.encode()));
        }
        let about_new = wire::Pex {
            added: vec![new_listen],
            dropped: vec![],
        }
        .encode();
        for (k, _, id) in others {
            if let Some(id) = id {
                self.send(k, PeerMsg::Extended(id, about_new.clone()));
            }
        }
    }

    fn send_pex(&mut self) {
        let mut peers: Vec<(PeerKey, SocketAddr, Option<u8>)> = self
            .peers
            .iter()
            .map(|(&k, p)| (k, p.listen, p.pex_id))
            .collect();
        peers.sort_unstable();
        for &(k, listen, id) in &peers {
            let Some(id) = id else { continue };
            let added: Vec<SocketAddr> = peers
                .iter()
                .map(|o| o.1)
                .filter(|a| *a != listen)
                .take(wire::MAX_PEX)
                .collect();
            if added.is_empty() {
                continue;
            }
            let msg = wire::Pex {
                added,
                dropped: vec![],
            };
            self.out.push(Effect::Send {
                key: k,
                msg: PeerMsg::Extended(id, msg.encode()),
            });
        }
    }

    /// Panics if the state breaks an invariant of `STATE.md`. Tests call
    /// it after every step.
    #[cfg(test)]
    pub fn check_invariants(&self) {
        self.picker.check_invariants();
        for p in self.peers.values() {
            assert!(
                p.foreign.len() <= FOREIGN_MAX,
                "{} foreign",
                p.foreign.len()
            );
        }
        assert!(
            self.who_later.len() <= WHO_LATER_MAX,
            "{} dt_who questions kept",
            self.who_later.len()
        );
        // Jobs and the picker: a piece being fetched (or reset) is in the
        // picker, a committing one is not, and nothing else is.
        for piece in self.picker.wanted() {
            let j = self
                .jobs
                .get(&piece)
                .unwrap_or_else(|| panic!("piece {piece} in the picker without a job"));
            assert_ne!(
                j.state,
                JobState::Committing,
                "piece {piece}: committing yet wanted"
            );
            assert_eq!(self.picker.size(piece), Some(j.size), "piece {piece}: size");
        }
        for (&piece, j) in &self.jobs {
            assert_eq!(
                self.picker.is_wanted(piece),
                j.state != JobState::Committing,
                "piece {piece}: {:?} and the picker disagree",
                j.state
            );
            if matches!(j.mirror, MirrorState::Running { .. } | MirrorState::Forced) {
                assert_eq!(
                    j.state,
                    JobState::Fetching,
                    "piece {piece}: a mirror run outside fetching"
                );
            }
            if let MirrorState::Running { gen } = j.mirror {
                assert_eq!(
                    gen, j.gen,
                    "piece {piece}: a mirror run of an old generation"
                );
            }
            assert!(j.attempts < 3, "piece {piece}: retried past the limit");
        }
        // Requests are only out at peers we know, and never at one that
        // is closing.
        for (&k, p) in &self.peers {
            if p.phase == Phase::Closing {
                assert_eq!(
                    self.picker.outstanding(Source::Peer(k)),
                    0,
                    "{k:?}: requests while closing"
                );
            }
            assert!(p.wip.len() <= WIP_MAX, "{k:?}: dt_wip set too large");
            assert!(
                p.finishing.len() <= WIP_MAX,
                "{k:?}: finishing set too large"
            );
            assert!((1..=1000).contains(&p.reqq), "{k:?}: reqq out of range");
            assert!(
                p.refused
                    .values()
                    .all(|r| (1..REFUSED_LIMIT).contains(&r.rounds) && r.since < r.until),
                "{k:?}: a refusal count out of range"
            );
            assert!(
                p.refused
                    .keys()
                    .all(|i| p.has(*i) && self.jobs.contains_key(i)),
                "{k:?}: a refusal of a piece it does not hold, or with no job"
            );
        }
        assert!(
            self.room_made.len() <= ROOM_BURST
                && self
                    .room_made
                    .iter()
                    .zip(self.room_made.iter().skip(1))
                    .all(|(a, b)| a <= b),
            "places made: at most ROOM_BURST, in order: {:?}",
            self.room_made
        );
        // The mirror's requests belong to a running mirror run.
        for src in self.picker.sources() {
            match src {
                Source::Peer(k) => assert!(
                    self.peers.contains_key(&k),
                    "{k:?}: requests at a peer that is gone"
                ),
                Source::Mirror => {}
            }
        }
        for (&piece, j) in &self.jobs {
            if self.picker.counts(piece).2 > 0 {
                assert!(
                    matches!(j.mirror, MirrorState::Running { .. }),
                    "piece {piece}: mirror blocks with no mirror run"
                );
            }
        }
        // Connections within the limit.
        // (A peer closed to make room for a holder counts until its Down.)
        assert!(
            self.slots_used() <= self.cfg.max_peers,
            "over the per-torrent connection limit"
        );
        // What we hold.
        assert_eq!(self.have_count, count_bits(&self.have), "have count");
        assert_eq!(
            self.have.len(),
            wire::bitfield_len(self.cfg.piece_count),
            "bitfield length"
        );
        assert!(self.held_bytes <= self.cfg.total_size, "held bytes");
        // Unchoked: at most the regular slots plus the optimistic one, and
        // nobody when we do not upload.
        let unchoked = self.peers.values().filter(|p| p.unchoked).count();
        let cap = if self.cfg.upload_slots == 0 {
            0
        } else {
            self.cfg.upload_slots + 1
        };
        assert!(unchoked <= cap, "{unchoked} unchoked over {cap}");
        assert!(self.known.len() <= KNOWN_MAX, "known addresses");
        assert!(self.out.is_empty(), "effects left behind");
    }
}

#[cfg(test)]
mod tests;
