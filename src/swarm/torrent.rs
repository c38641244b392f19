//! The swarm task: the actor around one dt2 swarm's state machine.
//!
//! One task per swarm (suite family and component,
//! `docs/torrent-format.md` §7), whatever the number of index versions and
//! suites it spans. It owns what the machine must not: the swarm's
//! [`Catalogue`] (our numbers for content, which the machine calls pieces),
//! what each peer's `dt_hold` says it holds and under which of its numbers,
//! the channels of the peer connections, the pieces' assemblies, the mirror
//! runs. It translates between our numbers and each peer's on the way out
//! (requests, cancels) and in (holdings, `dt_wip`). It turns what
//! arrives (apt's wants, connection events, mirror and verifier results,
//! a 100 ms tick) into [`Input`]s, hands them to the [`Machine`] with the
//! time and an [`Env`] snapshot, and performs the [`Effect`]s that come
//! back, in order. Every decision is the machine's; every task spawned for
//! this torrent is spawned here or in `conn.rs`. See `STATE.md`.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::catalogue::Catalogue;
use super::conn::{self, Established, Out, PeerShared};
use super::machine::{self, Content, Effect, Env, Hello, Input, Machine, PeerMsg, Received};
use super::shared::Ctx;
use super::wire::{self, Handshake};
use crate::assembly::{Download, Failure, State};
use crate::discovery::Origin;
use crate::registry::Registered;
use crate::store::Store;
use crate::types::{InfoHash, PeerKey, PieceIndex};

/// What reaches a swarm task from outside its connections.
pub enum Ev {
    /// apt waits for the content `sha256` (`size` bytes, stored at `path`);
    /// its assembly is `dl`, the mirror URL `url`.
    Want {
        sha256: [u8; 32],
        size: u64,
        path: String,
        dl: Arc<Download>,
        url: String,
    },
    /// The registered indexes of this swarm now (new versions are folded
    /// into the catalogue; nothing is taken out).
    Indexes(Vec<Arc<Registered>>),
    /// Content we hold now (in the store), to announce.
    Offer(super::Content),
    /// A connection came in for this torrent (handshake already read, a
    /// connection slot taken).
    Incoming(TcpStream, SocketAddr, Handshake),
    /// Discovery found an address.
    Found(SocketAddr, Origin),
    /// Discovery's lookup is over.
    LookupDone,
    /// Discovery has started (after this torrent did).
    DiscoveryReady,
    /// A mirror range ended, and what it moved.
    MirrorDone {
        piece: PieceIndex,
        gen: u32,
        res: Result<(), Failure>,
        moved: crate::mirror::Moved,
    },
    /// The verifier hashed a whole copy of a piece: the download
    /// (`Download::id`) and its generation.
    Verified {
        piece: PieceIndex,
        id: u64,
        gen: u64,
        ok: bool,
    },
    /// A verified piece was committed (or not); the culprits of the smart ban.
    Committed {
        piece: PieceIndex,
        stored: bool,
        culprits: Vec<PeerKey>,
    },
    /// The answer to scan `gen`: pieces held in the store now, and their
    /// bytes.
    Holding(u64, Vec<u8>, u64),
    /// The torrent is no longer registered, or the daemon stops.
    Stop,
}

/// One peer as `/status.json` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct PeerStatus {
    pub addr: String,
    pub client: String,
    pub pieces: u32,
    pub bytes_from: u64,
    pub bytes_to: u64,
    pub rate_from: u64,
    /// Bytes a second we upload to it.
    pub rate_to: u64,
    pub choked_us: bool,
    pub unchoked: bool,
    pub interested: bool,
}

/// One swarm as `/status.json` shows it.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct TorrentStatus {
    /// Content the swarm's catalogue numbers, and the index versions
    /// folded into it.
    pub catalogue: u32,
    pub index_versions: usize,
    /// The index versions registered here now (dt1 info hashes), and those
    /// the connected peers say they are on, with how many peers each.
    pub versions: Vec<String>,
    pub peer_versions: BTreeMap<String, usize>,
    pub peers: Vec<PeerStatus>,
    pub discovered: BTreeMap<Origin, Vec<String>>,
    /// Addresses found, by source; connected peers by where we learnt of
    /// them (`incoming`: they dialled us).
    pub found_by: BTreeMap<Origin, u64>,
    pub connected_by: BTreeMap<String, usize>,
    pub pieces_held: u32,
    pub pieces_wanted: usize,
    pub bytes_from_peers: u64,
    pub bytes_from_mirror: u64,
    pub bytes_uploaded: u64,
}

/// What a torrent task shows outside: byte counters and a status
/// snapshot refreshed every second and on peer and discovery events.
#[derive(Default)]
pub struct Shown {
    /// Bytes received from peers (new bytes only).
    pub from_peers: AtomicU64,
    /// Bytes received from the mirror for this torrent's pieces.
    pub from_mirror: AtomicU64,
    snapshot: Mutex<TorrentStatus>,
}

/// A handle to a running torrent task.
#[derive(Clone)]
pub struct Handle {
    pub tx: mpsc::Sender<Ev>,
    pub shown: Arc<Shown>,
    conns: Arc<conn::Context>,
    /// Turns true when the task has ended (its peers told, its jobs failed).
    ended: watch::Receiver<bool>,
}

impl Handle {
    /// Bytes uploaded to this torrent's peers.
    pub fn uploaded(&self) -> u64 {
        self.conns.uploaded.load(Ordering::Relaxed)
    }

    /// The status snapshot, with the byte counters now.
    pub fn status(&self) -> TorrentStatus {
        let mut s = self
            .shown
            .snapshot
            .lock()
            .map(|s| s.clone())
            .unwrap_or_default();
        s.bytes_from_peers = self.shown.from_peers.load(Ordering::Relaxed);
        s.bytes_from_mirror = self.shown.from_mirror.load(Ordering::Relaxed);
        s.bytes_uploaded = self.uploaded();
        s
    }

    /// Waits until the task has ended, at most `limit`.
    pub async fn ended(&self, limit: Duration) {
        let mut rx = self.ended.clone();
        let _ = tokio::time::timeout(limit, rx.wait_for(|e| *e)).await;
    }
}

/// Content a peer announced that our catalogue does not list, kept per
/// peer: what a peer on a newer index version holds beyond ours is a few
/// hundred files; more is dropped (it only costs a later request to that
/// peer).
const MAX_PENDING: usize = 4096;

/// Connection events taken before each tick (the channel's size).
const TICK_DRAIN: usize = 4096;

/// A connected peer's channel and shared counters, and what its
/// `dt_hold` and `dt_wip` messages said, in its numbers.
struct Link {
    tx: mpsc::Sender<Out>,
    shared: Arc<PeerShared>,
    /// Its numbers for the content it holds that our catalogue lists, both
    /// ways (our number -> its, its -> ours): what requests and drops need.
    theirs: HashMap<PieceIndex, u32>,
    ours: HashMap<u32, PieceIndex>,
    /// Content it holds that our catalogue does not list (yet: our next
    /// index version may), by its number; at most [`MAX_PENDING`].
    pending: HashMap<u32, [u8; 32]>,
    /// Its `dt_wip` numbers that name content our catalogue lists.
    wip: HashMap<u32, PieceIndex>,
    /// Its `dt_wip` numbers that name content our catalogue does not list;
    /// at most [`MAX_PENDING`]. With `pending`, what we can still name to
    /// askers (`Input::Foreign`).
    wip_foreign: HashMap<u32, [u8; 32]>,
    /// The index versions it is on (its `dt_idx`).
    versions: Vec<InfoHash>,
    /// Its `dt_who` queries in the current second (more are dropped).
    who_window: (Instant, u32),
}

impl Link {
    /// Keeps in `dropped` only the contents our catalogue does not list
    /// that it neither holds nor fetches any more (under another number).
    fn no_longer_offered(&self, dropped: &mut Vec<[u8; 32]>) {
        if dropped.is_empty() {
            return;
        }
        let offered: HashSet<&[u8; 32]> = self
            .pending
            .values()
            .chain(self.wip_foreign.values())
            .collect();
        dropped.retain(|sha| !offered.contains(sha));
    }
}

/// `dt_who` queries answered per peer and second; more are dropped.
const WHO_PER_SEC: u32 = 20;

/// A wanted piece's assembly, mirror URL and mirror run (its number and
/// the switch that stops it).
struct JobIo {
    dl: Arc<Download>,
    url: String,
    mirror: Option<(u32, watch::Sender<bool>)>,
}

/// The swarm task.
struct Task {
    m: Machine,
    ctx: Arc<Ctx>,
    conns: Arc<conn::Context>,
    shown: Arc<Shown>,
    /// The dt2 swarm id: what handshakes, the DHT and trackers carry.
    info_hash: InfoHash,
    cat: Arc<RwLock<Catalogue>>,
    tx: mpsc::Sender<Ev>,
    links: HashMap<PeerKey, Link>,
    jobs: HashMap<PieceIndex, JobIo>,
    /// The connection an `Up` or `Incoming` input is about, until the
    /// machine attaches or accepts it (dropped otherwise).
    pending_up: Option<Established>,
    pending_in: Option<(TcpStream, Handshake)>,
    /// Inputs that performing an effect produced besides its answer
    /// (requests that could not be sent).
    followups: Vec<Input>,
    epoch: Instant,
    last_snapshot: Instant,
}

/// Starts the task of swarm `swarm`, with the indexes registered for it
/// so far.
pub fn start(swarm: InfoHash, regs: Vec<Arc<Registered>>, ctx: Arc<Ctx>) -> Handle {
    let (tx, rx) = mpsc::channel(4096);
    let (peer_tx, peer_rx) = mpsc::channel(4096);
    let (ended_tx, ended_rx) = watch::channel(false);
    let mut cat = Catalogue::default();
    for r in &regs {
        cat.add_index(r.torrent.info_hash(), &r.torrent);
    }
    let (piece_count, total_size) = (cat.len(), cat.total_size());
    let cat = Arc::new(RwLock::new(cat));
    let conns = Arc::new(conn::Context::new(
        swarm,
        cat.clone(),
        ctx.peer_id,
        ctx.peer_addr.port(),
        ctx.store.clone(),
        peer_tx,
        ctx.upload_limit.clone(),
    ));
    let shown = Arc::new(Shown::default());
    let m = Machine::new(machine::Config {
        peer_wait_ms: ctx.cfg.peer_wait_ms,
        stall_ms: ctx.cfg.stall_ms,
        max_peers: ctx.cfg.max_peers_per_torrent,
        upload_slots: if ctx.cfg.seed {
            ctx.cfg.upload_slots
        } else {
            0
        },
        piece_count,
        total_size,
        peer_id: ctx.peer_id,
        peer_addr: ctx.peer_addr,
        seed: fastrand::u64(..),
    });
    let names: Vec<String> = regs.iter().map(|r| r.index_path.clone()).collect();
    set_versions(&conns, &regs);
    let task = Task {
        m,
        ctx,
        conns: conns.clone(),
        shown: shown.clone(),
        info_hash: swarm,
        cat,
        tx: tx.clone(),
        links: HashMap::new(),
        jobs: HashMap::new(),
        pending_up: None,
        pending_in: None,
        followups: Vec::new(),
        epoch: Instant::now(),
        last_snapshot: Instant::now(),
    };
    let span = tracing::info_span!("swarm", id = %swarm.to_hex()[..12].to_string(), first = %names.first().map_or("", |s| s.as_str()));
    tokio::spawn(
        async move {
            task.run(rx, peer_rx).await;
            let _ = ended_tx.send(true);
        }
        .instrument(span),
    );
    Handle {
        tx,
        shown,
        conns,
        ended: ended_rx,
    }
}

/// What our `dt_idx` says from now on.
fn set_versions(conns: &conn::Context, regs: &[Arc<Registered>]) {
    let mut v: Vec<InfoHash> = regs.iter().map(|r| r.torrent.info_hash()).collect();
    v.sort_unstable();
    v.dedup();
    if let Ok(mut cur) = conns.versions.lock() {
        *cur = v;
    }
}

/// The catalogue's content that is in the store, as a bitfield of our
/// numbers, and its bytes (blocking: one map lookup per entry).
fn holding(cat: &RwLock<Catalogue>, store: &Store) -> (Vec<u8>, u64) {
    let cat = cat.read().unwrap_or_else(|e| e.into_inner());
    let n = cat.len();
    let mut bits = vec![0; wire::bitfield_len(n)];
    let mut bytes = 0;
    for i in 0..n {
        if let Some(e) = cat.get(i) {
            // By content: wherever it was stored (another suite's path).
            if store.find(&e.sha256).is_some() {
                wire::bitfield_set(&mut bits, i);
                bytes += e.size;
            }
        }
    }
    (bits, bytes)
}

impl Task {
    async fn run(mut self, mut rx: mpsc::Receiver<Ev>, mut peer_rx: mpsc::Receiver<conn::Event>) {
        let (cat, store) = (self.cat.clone(), self.ctx.store.clone());
        if let Ok((bits, held_bytes)) =
            tokio::task::spawn_blocking(move || holding(&cat, &store)).await
        {
            self.feed(Input::Holding {
                gen: 0,
                bits,
                held_bytes,
            });
        }
        self.feed(Input::DiscoveryReady);
        tracing::debug!(holding = self.m.counts().0, "swarm task started");
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = rx.recv() => match ev {
                    None | Some(Ev::Stop) => break,
                    Some(ev) => self.on_ev(ev),
                },
                Some(ev) = peer_rx.recv() => self.on_peer(ev),
                _ = tick.tick() => {
                    // Time-based rules judge the freshest data: what the
                    // connections already reported goes in first (after a
                    // hiccup of this task the tick may be picked before a
                    // backlog of blocks, and every peer would look stalled).
                    for _ in 0..TICK_DRAIN {
                        match peer_rx.try_recv() {
                            Ok(ev) => self.on_peer(ev),
                            Err(_) => break,
                        }
                    }
                    self.on_tick();
                }
            }
        }
        self.feed(Input::Stop);
        // What was queued behind the stop: apt's wants fail (as the jobs
        // did), incoming connections give their slots back.
        rx.close();
        while let Ok(ev) = rx.try_recv() {
            match ev {
                Ev::Want { dl, .. } => dl.fail(Failure::Unreachable),
                Ev::Incoming(_, addr, _) => self.ctx.release_conn(addr.ip()),
                _ => {}
            }
        }
        tracing::debug!("swarm task stopped");
    }

    fn env(&self) -> Env {
        Env {
            mirror: self.ctx.mirror.estimate(),
            discovery_on: self.ctx.discovery_on(),
            discovery_ready: self.ctx.discovery().is_some(),
            alone: self.ctx.discovery().is_some_and(|d| d.alone()),
        }
    }

    /// Hands one input to the machine and performs its effects; inputs
    /// that effects answer (a refused dial, a reset, a ban) follow.
    fn feed(&mut self, input: Input) {
        let mut queue = VecDeque::from([input]);
        while let Some(input) = queue.pop_front() {
            let now = self.epoch.elapsed().as_millis() as u64;
            let env = self.env();
            for e in self.m.handle(now, &env, input) {
                if let Some(next) = self.perform(e) {
                    queue.push_back(next);
                }
                queue.extend(self.followups.drain(..));
            }
        }
    }

    fn on_ev(&mut self, ev: Ev) {
        match ev {
            Ev::Stop => {}
            Ev::Indexes(regs) => self.fold_in(&regs),
            Ev::Offer(c) => {
                let (piece, grew) = {
                    let mut cat = self.cat();
                    let before = cat.len();
                    let id = cat.intern(c.sha256, c.size, &c.path);
                    (id, cat.len() > before)
                };
                if grew {
                    self.grow(piece, false);
                }
                let held = self.ctx.store.find(&c.sha256).is_some();
                if held {
                    self.ctx.store.db().put_shared(&c.path, self.info_hash.0);
                    self.feed(Input::Stored {
                        piece,
                        size: c.size,
                    });
                }
            }
            Ev::Want {
                sha256,
                size,
                path,
                dl,
                url,
            } => {
                let (piece, grew) = {
                    let mut cat = self.cat();
                    let before = cat.len();
                    let id = cat.intern(sha256, size, &path);
                    (id, cat.len() > before)
                };
                if grew {
                    self.grow(piece, false);
                }
                if let Some(j) = self.jobs.get(&piece) {
                    if Arc::ptr_eq(&j.dl, &dl) {
                        return;
                    }
                    if !matches!(j.dl.state(), State::Done | State::Failed(_)) {
                        // The same content under a second path while the
                        // first is in flight (one job per content): this
                        // request goes to the mirror on its own rather
                        // than wait on an assembly it cannot share.
                        tracing::debug!(piece, path = %dl.rel, "content in flight under another path");
                        dl.fail(Failure::Local);
                        return;
                    }
                    self.feed(Input::Abandon { piece });
                }
                let tx = self.tx.clone();
                let id = dl.id;
                dl.on_verdict(Box::new(move |gen, ok| {
                    let tx = tx.clone();
                    tokio::spawn(async move {
                        let _ = tx.send(Ev::Verified { piece, id, gen, ok }).await;
                    });
                }));
                let size = dl.size;
                let mut tag = [0u8; 8];
                tag.copy_from_slice(&dl.sha256[..8]);
                let tag = u64::from_be_bytes(tag);
                self.jobs.insert(
                    piece,
                    JobIo {
                        dl,
                        url,
                        mirror: None,
                    },
                );
                self.feed(Input::Want { piece, size, tag });
            }
            Ev::Incoming(stream, addr, hs) => {
                self.pending_in = Some((stream, hs));
                self.feed(Input::Incoming { addr });
                self.pending_in = None;
            }
            Ev::Found(addr, origin) => {
                self.ctx.stats.found(origin);
                self.feed(Input::Found { addr, origin });
                self.snapshot();
            }
            Ev::LookupDone => self.feed(Input::LookupDone),
            Ev::DiscoveryReady => self.feed(Input::DiscoveryReady),
            Ev::MirrorDone {
                piece,
                gen,
                res,
                moved,
            } => {
                let Some(j) = self.jobs.get_mut(&piece) else {
                    return;
                };
                // Only the run the job still wants tells how fast the
                // mirror is; it is over now.
                if j.mirror.as_ref().is_some_and(|(g, _)| *g == gen) {
                    j.mirror = None;
                    if res.is_ok() {
                        self.ctx.mirror.note(&moved);
                    }
                }
                let (prefix, ranges) = j.dl.received();
                let received = Received { prefix, ranges };
                self.feed(Input::MirrorDone {
                    piece,
                    gen,
                    res,
                    received,
                });
            }
            Ev::Verified { piece, id, gen, ok } => {
                let Some(j) = self.jobs.get(&piece) else {
                    return;
                };
                if j.dl.id != id || j.dl.gen() != gen {
                    return;
                }
                let peer_bytes = j.dl.peer_bytes();
                if !ok {
                    self.ctx.stats.corrupt();
                }
                self.feed(Input::Verified {
                    piece,
                    ok,
                    peer_bytes,
                });
            }
            Ev::Committed {
                piece,
                stored,
                culprits,
            } => {
                let size = self.cat_read().get(piece).map_or(0, |e| e.size);
                // Where this job's assembly was committed.
                let path = self.jobs.get(&piece).map(|j| j.dl.rel.clone());
                if let (true, Some(p)) = (stored, path) {
                    self.ctx.store.db().put_shared(&p, self.info_hash.0);
                }
                self.feed(Input::Committed {
                    piece,
                    size,
                    stored,
                    culprits,
                });
                self.snapshot();
            }
            Ev::Holding(gen, bits, held_bytes) => self.feed(Input::Holding {
                gen,
                bits,
                held_bytes,
            }),
        }
    }

    fn on_peer(&mut self, ev: conn::Event) {
        use conn::Event as E;
        match ev {
            E::Up(est, sent) => {
                let addr = est.addr;
                if self.ctx.is_banned(addr.ip()) {
                    self.feed(Input::Failed { addr });
                    return;
                }
                let h = &est.hello;
                // What it holds comes in its dt_hold messages, after this.
                let none = vec![0; self.m.have().0.len()];
                let hello = Hello {
                    addr,
                    peer_id: h.peer_id,
                    outgoing: est.outgoing,
                    client: h.ext.v.clone().unwrap_or_default(),
                    bits: Some(none),
                    reqq: h.ext.reqq,
                    port: h.ext.p,
                    pex_id: h.ext.ext_id(wire::EXT_PEX),
                    wip_id: h.ext.ext_id(wire::EXT_WIP),
                    who_id: h.ext.ext_id(wire::EXT_WHO),
                    relay: h.ext.ext_id(wire::EXT_RELAY).is_some(),
                    sent,
                };
                tracing::info!(peer = %addr, client = %hello.client, "peer connected");
                self.pending_up = Some(*est);
                self.feed(Input::Up(Box::new(hello)));
                self.pending_up = None;
                self.snapshot();
            }
            E::Failed(addr) => self.feed(Input::Failed { addr }),
            E::Down {
                key,
                addr,
                violation,
            } => {
                self.links.remove(&key);
                if violation {
                    tracing::debug!(peer = %addr, "peer broke the protocol");
                }
                self.feed(Input::Down { key, violation });
                self.snapshot();
            }
            E::Choked {
                key,
                choked,
                discarded,
            } => self.feed(Input::Choked {
                key,
                choked,
                discarded,
            }),
            E::Interest { key, interested } => self.feed(Input::Interest { key, interested }),
            E::Hold { key, hold } => self.on_hold(key, hold),
            E::Rejected { key, req } => self.feed(Input::Rejected { key, req }),
            E::WriteFailed { piece } => {
                self.ctx.store.note_write_failure();
                self.feed(Input::WriteFailed { piece });
            }
            E::Block {
                key,
                piece,
                begin,
                len,
                new,
                id,
                gen,
            } => {
                self.shown.from_peers.fetch_add(new, Ordering::Relaxed);
                self.ctx.stats.peer_bytes(new);
                // Written into the job's assembly as it is now: not an
                // earlier assembly of the same piece, not a copy since reset.
                let current = self
                    .jobs
                    .get(&piece)
                    .is_none_or(|j| j.dl.id == id && j.dl.gen() == gen);
                self.feed(Input::Block {
                    key,
                    piece,
                    begin,
                    len,
                    new,
                    current,
                });
            }
            E::Pex { added } => {
                // One address at a time, so that one refused dial (no
                // slot) is settled before the next is considered.
                for addr in added.into_iter().take(wire::MAX_PEX) {
                    self.ctx.stats.found(Origin::Pex);
                    self.feed(Input::Found {
                        addr,
                        origin: Origin::Pex,
                    });
                }
            }
            E::Wip { key, wip } => self.on_wip(key, wip),
            E::Who { key, who } => self.on_who(key, who),
        }
    }

    /// A peer's `dt_who`: answer its query with the peers of ours that
    /// hold (or relay) the content, or take its answer to ours.
    fn on_who(&mut self, key: PeerKey, who: wire::Who) {
        match who {
            wire::Who::Query(shas) => {
                let Some(l) = self.links.get_mut(&key) else {
                    return;
                };
                let (start, n) = &mut l.who_window;
                if start.elapsed() >= Duration::from_secs(1) {
                    (*start, *n) = (Instant::now(), 0);
                }
                *n += 1;
                if *n > WHO_PER_SEC {
                    return;
                }
                let asked: Vec<Content> = {
                    let cat = self.cat_read();
                    shas.into_iter()
                        .map(|sha| cat.id(&sha).map_or(Content::Foreign(sha), Content::Piece))
                        .collect()
                };
                self.feed(Input::WhoQuery { key, asked });
                self.ctx.stats.who_answered();
            }
            wire::Who::Answer { sha256, peers } => {
                let Some(piece) = self.cat_read().id(&sha256) else {
                    return;
                };
                tracing::debug!(
                    piece,
                    holders = peers.len(),
                    "a peer named holders (dt_who)"
                );
                for _ in &peers {
                    self.ctx.stats.found(Origin::Who);
                }
                self.feed(Input::Holders {
                    piece,
                    addrs: peers,
                });
            }
        }
    }

    fn on_tick(&mut self) {
        let uploads = self
            .links
            .iter()
            .map(|(&k, l)| (k, l.shared.up.load(Ordering::Relaxed)))
            .collect();
        let contiguous = self
            .jobs
            .iter()
            .map(|(&p, j)| (p, j.dl.contiguous()))
            .collect();
        self.feed(Input::Tick {
            uploads,
            contiguous,
        });
        if self.last_snapshot.elapsed() >= Duration::from_secs(1) {
            self.snapshot();
        }
    }

    /// Performs one effect; returns the input that answers it, if any.
    fn perform(&mut self, e: Effect) -> Option<Input> {
        match e {
            Effect::Send { key, msg } => self.send(key, msg),
            Effect::Dial { addr } => {
                if !self.ctx.acquire_conn_evicting(addr.ip()) {
                    return Some(Input::NoSlot { addr });
                }
                let (bits, hold) = self.our_hold();
                conn::spawn_dial(
                    self.conns.clone(),
                    addr,
                    self.ctx.peer_addr.ip(),
                    bits,
                    hold,
                );
            }
            Effect::Accept { addr } => {
                let Some((stream, hs)) = self.pending_in.take() else {
                    return Some(Input::Failed { addr });
                };
                let (bits, hold) = self.our_hold();
                conn::spawn_accept(self.conns.clone(), stream, addr, hs, bits, hold);
            }
            Effect::Attach { key, addr } => {
                let Some(est) = self.pending_up.take().filter(|e| e.addr == addr) else {
                    return Some(Input::Down {
                        key,
                        violation: false,
                    });
                };
                self.links.insert(
                    key,
                    Link {
                        tx: est.tx.clone(),
                        shared: est.shared.clone(),
                        theirs: HashMap::new(),
                        ours: HashMap::new(),
                        pending: HashMap::new(),
                        wip_foreign: HashMap::new(),
                        wip: HashMap::new(),
                        versions: est.hello.ext.versions.clone(),
                        who_window: (Instant::now(), 0),
                    },
                );
                est.run(key, self.conns.clone());
            }
            Effect::ReleaseSlot { ip } => self.ctx.release_conn(ip),
            Effect::Violation { ip } => {
                if self.ctx.violation(ip) {
                    tracing::warn!(%ip, "banned after repeated protocol violations");
                }
            }
            Effect::Strike { ip, weight } => {
                if self.ctx.strike(ip, weight) {
                    return Some(Input::Banned { ip });
                }
            }
            Effect::Ban { ip } => self.ctx.ban(ip),
            Effect::StartMirror {
                piece,
                gen,
                from,
                to,
            } => self.start_mirror(piece, gen, from, to),
            Effect::StopMirror { piece } => {
                if let Some((_, stop)) = self.jobs.get_mut(&piece).and_then(|j| j.mirror.take()) {
                    let _ = stop.send(true);
                }
            }
            Effect::Commit { piece, suspect } => {
                if let Some(j) = self.jobs.get(&piece) {
                    let (dl, store, tx) = (j.dl.clone(), self.ctx.store.clone(), self.tx.clone());
                    let ticket = store.commit_ticket();
                    tokio::spawn(
                        async move {
                            let _ticket = ticket;
                            let culprits = match suspect {
                                Some(bad) => smart_ban(&dl, bad).await,
                                None => Vec::new(),
                            };
                            let stored = dl.commit(&store).await;
                            let _ = tx
                                .send(Ev::Committed {
                                    piece,
                                    stored,
                                    culprits,
                                })
                                .await;
                        }
                        .in_current_span(),
                    );
                }
            }
            Effect::ResetForRetry { piece } => {
                let suspect = self.jobs.get(&piece).and_then(|j| j.dl.reset_for_retry());
                return Some(Input::RetryReset { piece, suspect });
            }
            Effect::EndJob { piece, failure } => {
                self.unrelay(piece);
                if let Some(j) = self.jobs.remove(&piece) {
                    if let Some((_, stop)) = j.mirror {
                        let _ = stop.send(true);
                    }
                    if let Some(f) = failure {
                        j.dl.fail(f);
                    }
                }
            }
            Effect::Lookup => {
                self.ctx.stats.lookup();
                if let Some(d) = self.ctx.discovery() {
                    d.lookup(self.info_hash);
                }
            }
            Effect::Announce => {
                if let Some(d) = self.ctx.discovery() {
                    d.announce(self.info_hash);
                }
            }
            Effect::Totals { left } => {
                if let Some(d) = self.ctx.discovery() {
                    d.set_totals(
                        self.info_hash,
                        crate::discovery::Totals {
                            uploaded: self.conns.uploaded.load(Ordering::Relaxed),
                            downloaded: self.shown.from_peers.load(Ordering::Relaxed)
                                + self.shown.from_mirror.load(Ordering::Relaxed),
                            left,
                        },
                    );
                }
            }
            Effect::Forget => {
                if let Some(d) = self.ctx.discovery() {
                    d.forget(self.info_hash);
                }
            }
            Effect::AskWho { piece, to } => {
                if let Some(sha) = self.sha(piece) {
                    let q = wire::Who::Query(vec![sha]).encode();
                    for (key, id) in to {
                        if let Some(l) = self.links.get(&key) {
                            let _ = l.tx.try_send(Out::Extended(id, q.clone()));
                        }
                    }
                    self.ctx.stats.who_asked();
                }
            }
            Effect::WhoAnswer {
                key,
                ext,
                content,
                peers,
            } => {
                let sha = match content {
                    Content::Piece(piece) => self.sha(piece),
                    Content::Foreign(sha) => Some(sha),
                };
                if let (Some(sha256), Some(l)) = (sha, self.links.get(&key)) {
                    let a = wire::Who::Answer { sha256, peers };
                    let _ = l.tx.try_send(Out::Extended(ext, a.encode()));
                }
            }
            Effect::ScanHolding { gen } => {
                let (cat, store, tx) = (self.cat.clone(), self.ctx.store.clone(), self.tx.clone());
                tokio::task::spawn_blocking(move || {
                    let (bits, bytes) = holding(&cat, &store);
                    let _ = tx.blocking_send(Ev::Holding(gen, bits, bytes));
                });
            }
        }
        None
    }

    fn cat(&self) -> std::sync::RwLockWriteGuard<'_, Catalogue> {
        self.cat.write().unwrap_or_else(|e| e.into_inner())
    }

    fn cat_read(&self) -> std::sync::RwLockReadGuard<'_, Catalogue> {
        self.cat.read().unwrap_or_else(|e| e.into_inner())
    }

    fn sha(&self, piece: PieceIndex) -> Option<[u8; 32]> {
        self.cat_read().get(piece).map(|e| e.sha256)
    }

    /// What we hold, as the machine's bitfield and as `dt_hold` entries.
    fn our_hold(&self) -> (Vec<u8>, Vec<(u32, [u8; 32])>) {
        let (bits, _) = self.m.have();
        let cat = self.cat_read();
        let hold = (0..cat.len())
            .filter(|&i| wire::bitfield_get(bits, i))
            .filter_map(|i| cat.get(i).map(|e| (i, e.sha256)))
            .collect();
        (bits.to_vec(), hold)
    }

    /// Folds new index versions into the catalogue.
    fn fold_in(&mut self, regs: &[Arc<Registered>]) {
        set_versions(&self.conns, regs);
        let before = self.cat_read().len();
        let mut added = 0;
        for r in regs {
            if self.cat().add_index(r.torrent.info_hash(), &r.torrent) {
                added += 1;
                tracing::info!(index = %r.index_path, version = %r.torrent.info_hash(), "index version joins the swarm");
            }
        }
        if added > 0 && self.cat_read().len() > before {
            self.grow(before, true);
        }
    }

    /// The catalogue grew from `from` entries: the machine learns its new
    /// size (and, with `scan`, rescans the store), and what peers said they
    /// hold of the new content counts now.
    fn grow(&mut self, from: u32, scan: bool) {
        let (piece_count, total_size) = {
            let c = self.cat_read();
            (c.len(), c.total_size())
        };
        self.feed(Input::Grow {
            piece_count,
            total_size,
            scan,
        });
        let mut keys: Vec<PeerKey> = self.links.keys().copied().collect();
        keys.sort_unstable();
        for key in keys {
            let pieces: Vec<PieceIndex> = {
                let cat = self.cat.read().unwrap_or_else(|e| e.into_inner());
                let Some(l) = self.links.get_mut(&key) else {
                    continue;
                };
                // What it holds that we did not list until now.
                let now_known: Vec<(u32, PieceIndex)> = l
                    .pending
                    .iter()
                    .filter_map(|(&n, sha)| cat.id(sha).filter(|&id| id >= from).map(|id| (n, id)))
                    .collect();
                let mut v = Vec::with_capacity(now_known.len());
                for (n, id) in now_known {
                    l.pending.remove(&n);
                    if let Some(prev) = l.theirs.insert(id, n) {
                        l.ours.remove(&prev);
                    }
                    l.ours.insert(n, id);
                    v.push(id);
                }
                v.sort_unstable();
                v
            };
            if !pieces.is_empty() {
                self.feed(Input::Holds { key, pieces });
            }
        }
    }

    /// A peer's `dt_hold`: drops, then adds. A number it gives again
    /// names its new content; content it gives a new number is known by
    /// that one.
    fn on_hold(&mut self, key: PeerKey, hold: wire::Hold) {
        let mut lost = Vec::new();
        let mut held = Vec::new();
        let (mut foreign_add, mut foreign_drop) = (Vec::new(), Vec::new());
        {
            let cat = self.cat.read().unwrap_or_else(|e| e.into_inner());
            let Some(l) = self.links.get_mut(&key) else {
                return;
            };
            let mut forget = |l: &mut Link, n: u32, lost: &mut Vec<PieceIndex>| {
                if let Some(sha) = l.pending.remove(&n) {
                    foreign_drop.push(sha);
                }
                if let Some(id) = l.ours.remove(&n) {
                    if l.theirs.get(&id) == Some(&n) {
                        l.theirs.remove(&id);
                        lost.push(id);
                    }
                }
            };
            for n in hold.drop {
                forget(l, n, &mut lost);
            }
            for (n, sha) in hold.add {
                forget(l, n, &mut lost);
                match cat.id(&sha) {
                    Some(id) => {
                        if let Some(prev) = l.theirs.insert(id, n) {
                            l.ours.remove(&prev);
                        }
                        l.ours.insert(n, id);
                        held.push(id);
                    }
                    None if l.pending.len() < MAX_PENDING => {
                        l.pending.insert(n, sha);
                        foreign_add.push(sha);
                    }
                    None => {}
                }
            }
            l.no_longer_offered(&mut foreign_drop);
            // Only the final state counts: a piece dropped and given again
            // in one message is held; one given and replaced is not.
            lost.retain(|id| !l.theirs.contains_key(id));
            held.retain(|id| l.theirs.contains_key(id));
            lost.sort_unstable();
            lost.dedup();
            held.sort_unstable();
            held.dedup();
        }
        for piece in lost {
            self.feed(Input::Lost { key, piece });
        }
        if !held.is_empty() {
            self.feed(Input::Holds { key, pieces: held });
        }
        if !foreign_add.is_empty() || !foreign_drop.is_empty() {
            self.feed(Input::Foreign {
                key,
                add: foreign_add,
                drop: foreign_drop,
            });
        }
    }

    /// A peer's `dt_wip`, in our numbers; content we do not list is kept
    /// by its SHA-256 only to tell `dt_who` askers who fetches it.
    fn on_wip(&mut self, key: PeerKey, wip: wire::Wip) {
        let (mut add, mut done) = (Vec::new(), Vec::new());
        let (mut foreign_add, mut foreign_drop) = (Vec::new(), Vec::new());
        {
            let cat = self.cat.read().unwrap_or_else(|e| e.into_inner());
            let Some(l) = self.links.get_mut(&key) else {
                return;
            };
            for n in wip.done {
                done.extend(l.wip.remove(&n));
                foreign_drop.extend(l.wip_foreign.remove(&n));
            }
            for (n, sha) in wip.add {
                if let Some(id) = cat.id(&sha) {
                    if l.wip.len() < machine::WIP_MAX || l.wip.contains_key(&n) {
                        if let Some(old) = l.wip.insert(n, id) {
                            if old != id {
                                done.push(old);
                            }
                        }
                        add.push(id);
                    }
                } else if l.wip_foreign.len() < MAX_PENDING || l.wip_foreign.contains_key(&n) {
                    // Content of an index version we are not on: we cannot
                    // fetch it, but can tell askers who does.
                    foreign_drop.extend(l.wip_foreign.insert(n, sha).filter(|old| *old != sha));
                    foreign_add.push(sha);
                }
            }
            l.no_longer_offered(&mut foreign_drop);
        }
        tracing::debug!(%key, ?add, ?done, "a peer fetches from the mirror (dt_wip)");
        self.feed(Input::Wip { key, add, done });
        if !foreign_add.is_empty() || !foreign_drop.is_empty() {
            self.feed(Input::Foreign {
                key,
                add: foreign_add,
                drop: foreign_drop,
            });
        }
    }

    fn send(&mut self, key: PeerKey, msg: PeerMsg) {
        let Some(link) = self.links.get(&key) else {
            return;
        };
        // Our number -> the peer's, for content it announced (held, or
        // relayed: its `dt_wip`).
        let theirs = |piece: PieceIndex| -> Option<u32> {
            link.theirs.get(&piece).copied().or_else(|| {
                link.wip
                    .iter()
                    .find(|(_, &ours)| ours == piece)
                    .map(|(&n, _)| n)
            })
        };
        let out = match msg {
            PeerMsg::Request { piece, blocks } => {
                let n = theirs(piece);
                let (Some(j), Some(n)) = (self.jobs.get(&piece), n) else {
                    tracing::debug!(%key, piece, "a request that cannot be sent");
                    // Only a missing number means the peer does not hold
                    // it; a job that is gone (its download ended) says
                    // nothing about the peer.
                    self.followups.push(Input::Unsent {
                        key,
                        reqs: blocks,
                        unheld: n.is_none(),
                    });
                    return;
                };
                j.dl.mark_started();
                let wired = blocks
                    .iter()
                    .map(|b| wire::BlockRef { index: n, ..*b })
                    .collect();
                if link
                    .tx
                    .try_send(Out::Request(wired, j.dl.clone(), piece))
                    .is_err()
                {
                    // The connection's queue is full (or it is gone): the
                    // blocks are free again, not waiting on a stall.
                    self.followups.push(Input::Unsent {
                        key,
                        reqs: blocks,
                        unheld: false,
                    });
                }
                return;
            }
            PeerMsg::Cancel(r) => {
                let Some(n) = theirs(r.index) else {
                    return;
                };
                Out::Cancel(wire::BlockRef { index: n, ..r })
            }
            PeerMsg::CancelPiece(p) => Out::CancelPiece(p),
            PeerMsg::CancelAll => Out::CancelAll,
            PeerMsg::Have(i) => {
                let Some(sha) = self.sha(i) else {
                    return;
                };
                Out::Hold(wire::Hold {
                    add: vec![(i, sha)],
                    drop: Vec::new(),
                })
            }
            PeerMsg::Holdings { add, drop } => {
                let add: Vec<(u32, [u8; 32])> = {
                    let cat = self.cat_read();
                    add.iter()
                        .filter_map(|&i| cat.get(i).map(|e| (i, e.sha256)))
                        .collect()
                };
                let mut a = add.chunks(wire::MAX_HOLD);
                let mut d = drop.chunks(wire::MAX_HOLD);
                loop {
                    let (x, y) = (a.next(), d.next());
                    if x.is_none() && y.is_none() {
                        break;
                    }
                    let h = wire::Hold {
                        add: x.map(<[_]>::to_vec).unwrap_or_default(),
                        drop: y.map(<[_]>::to_vec).unwrap_or_default(),
                    };
                    let _ = link.tx.try_send(Out::Hold(h));
                }
                return;
            }
            PeerMsg::Wip { ext, add, done } => {
                let add = add
                    .into_iter()
                    .filter_map(|i| self.sha(i).map(|sha| (i, sha)))
                    .collect();
                Out::Wip(ext, wire::Wip { add, done })
            }
            PeerMsg::Choke => Out::Choke,
            PeerMsg::Unchoke => Out::Unchoke,
            PeerMsg::Interested => Out::Interested,
            PeerMsg::NotInterested => Out::NotInterested,
            PeerMsg::Extended(id, payload) => Out::Extended(id, payload),
            PeerMsg::Close => Out::Close,
        };
        let _ = link.tx.try_send(out);
    }

    /// Our connections no longer relay `piece`: its job is over. (A run we
    /// stopped for another fetcher needs nothing: our `dt_wip` said done,
    /// and an assembly that peers feed is not relayed.)
    fn unrelay(&self, piece: PieceIndex) {
        self.conns
            .relay
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&piece);
    }

    fn start_mirror(&mut self, piece: PieceIndex, gen: u32, from: u64, to: u64) {
        let Some(j) = self.jobs.get_mut(&piece) else {
            return;
        };
        tracing::debug!(piece, from, to, "mirror takes a range");
        let (stop, stop_rx) = watch::channel(false);
        if let Some((_, old)) = j.mirror.replace((gen, stop)) {
            let _ = old.send(true);
        }
        let (dl, url) = (j.dl.clone(), j.url.clone());
        if from == 0 {
            // The whole piece from the mirror: what our `dt_wip` names, and
            // what our connections may relay as it arrives.
            self.conns
                .relay
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(piece, dl.clone());
        }
        let (mirror, shown, tx) = (self.ctx.mirror.clone(), self.shown.clone(), self.tx.clone());
        tokio::spawn(
            async move {
                let (res, moved) = mirror
                    .fetch_range(
                        &url,
                        &dl,
                        from,
                        to,
                        |n| {
                            shown.from_mirror.fetch_add(n, Ordering::Relaxed);
                        },
                        &stop_rx,
                    )
                    .await;
                let _ = tx
                    .send(Ev::MirrorDone {
                        piece,
                        gen,
                        res,
                        moved,
                    })
                    .await;
            }
            .in_current_span(),
        );
    }

    fn snapshot(&mut self) {
        self.last_snapshot = Instant::now();
        let now = self.epoch.elapsed().as_millis() as u64;
        let peers = self
            .m
            .peer_views(now)
            .into_iter()
            .map(|p| {
                let (down, up) = self.links.get(&p.key).map_or((0, 0), |l| {
                    (
                        l.shared.down.load(Ordering::Relaxed),
                        l.shared.up.load(Ordering::Relaxed),
                    )
                });
                PeerStatus {
                    addr: p.listen.to_string(),
                    client: p.client,
                    pieces: p.pieces,
                    bytes_from: down,
                    bytes_to: up,
                    rate_from: p.rate_from,
                    rate_to: p.rate_to,
                    choked_us: p.choked_us,
                    unchoked: p.unchoked,
                    interested: p.interested,
                }
            })
            .collect();
        let (pieces_held, pieces_wanted) = self.m.counts();
        let (catalogue, index_versions) = {
            let c = self.cat_read();
            (c.len(), c.versions())
        };
        let mut peer_versions: BTreeMap<String, usize> = BTreeMap::new();
        for l in self.links.values() {
            for v in &l.versions {
                *peer_versions.entry(v.to_hex()).or_default() += 1;
            }
        }
        let versions = self
            .conns
            .versions
            .lock()
            .map(|v| v.iter().map(|h| h.to_hex()).collect())
            .unwrap_or_default();
        let s = TorrentStatus {
            catalogue,
            index_versions,
            versions,
            peer_versions,
            peers,
            discovered: self.m.discovered(),
            found_by: self.m.found_by(),
            connected_by: self.m.connected_by(),
            pieces_held,
            pieces_wanted,
            ..TorrentStatus::default()
        };
        if let Ok(mut snap) = self.shown.snapshot.lock() {
            *snap = s;
        }
    }
}

/// The smart ban after a retry: the blocks of the failed copy whose
/// digest differs from the good copy's prove their senders wrong.
async fn smart_ban(dl: &Arc<Download>, bad: Vec<(crate::types::Source, [u8; 32])>) -> Vec<PeerKey> {
    let dl2 = dl.clone();
    let good = tokio::task::spawn_blocking(move || dl2.block_digests())
        .await
        .unwrap_or_default();
    let srcs: Vec<Option<PeerKey>> = bad.iter().map(|(s, _)| s.peer()).collect();
    let bad_d: Vec<[u8; 32]> = bad.iter().map(|(_, d)| *d).collect();
    let (culprits, _cleared) = super::ban::smart_ban(&srcs, &bad_d, &good);
    culprits
}
