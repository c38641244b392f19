//! The owner task of one torrent: peers, the picker, the choker, the
//! mirror as a source, and discovery results, all in one place.
//!
//! Everything that changes the torrent's swarm state arrives here as an
//! [`Ev`] and is handled in order, so no lock guards the policy state. The
//! connection tasks own their sockets and the assemblies verify the bytes;
//! this task only decides who fetches what, and when the mirror helps.
//!
//! When the mirror takes a piece (or part of one), rules from
//! `docs/swarm-design.md` §6.3:
//! - (a) nobody can serve it: no connected peer has it, after at most
//!   `--peer-wait` while discovery runs (at once if discovery found nobody
//!   at all, a short random delay when peers are connected but lack it, so
//!   that daemons asking at the same moment do not all go to the mirror;
//!   longer when a peer said it is fetching it, `dt_wip`);
//! - (b) the peers on it are slower than the mirror would be: the mirror
//!   takes the tail;
//! - (c) a peer stalls: its blocks are freed, and (a) applies to them.

use std::collections::{HashMap, HashSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::net::TcpStream;
use tokio::sync::{mpsc, watch};
use tracing::Instrument;

use super::choker::{Choker, PeerSample};
use super::conn::{self, Established, Out, PeerShared};
use super::picker::{self, Picker};
use super::rate::{Rate, TokenBucket};
use super::wire::{self, BlockRef, Handshake};
use super::Ctx;
use crate::discovery::Source;
use crate::fetch::{Download, Failure, Put};
use crate::index::Registered;
use crate::store::Store;

/// What reaches a torrent task.
pub enum Ev {
    /// apt waits for `piece`; its assembly is `dl`, the mirror URL `url`.
    Want {
        piece: u32,
        dl: Arc<Download>,
        url: String,
    },
    /// A connection came in for this torrent (handshake already read).
    Incoming(TcpStream, SocketAddr, Handshake),
    /// A connection finished its handshakes.
    Up(Box<Established>, Vec<u8>),
    /// A dial or handshake failed.
    Failed(SocketAddr),
    Down {
        key: u32,
        addr: SocketAddr,
        violation: bool,
    },
    Choked {
        key: u32,
        choked: bool,
    },
    Interest {
        key: u32,
        interested: bool,
    },
    Have {
        key: u32,
        piece: u32,
    },
    /// A bitfield that came after the extended handshake (`None`: all).
    Bits {
        key: u32,
        bits: Option<Vec<u8>>,
    },
    Rejected {
        key: u32,
        req: BlockRef,
    },
    Block {
        key: u32,
        piece: u32,
        begin: u32,
        len: u32,
        put: Put,
    },
    Pex {
        added: Vec<SocketAddr>,
    },
    Wip {
        key: u32,
        wip: wire::Wip,
    },
    /// A mirror range ended.
    MirrorDone {
        piece: u32,
        gen: u32,
        res: Result<(), Failure>,
        bytes: u64,
        ms: u64,
    },
    /// A verified piece was committed (or not, `stored` false); `culprits`
    /// are the peers the smart ban proved wrong.
    Committed {
        piece: u32,
        stored: bool,
        culprits: Vec<u32>,
    },
    /// Pieces held in the store now (a periodic refresh).
    Holding(Vec<u8>),
    /// Discovery found an address.
    Found(SocketAddr, Source),
    /// Discovery's lookup is over.
    LookupDone,
    /// Discovery has started (after this torrent did).
    DiscoveryReady,
    /// The verifier hashed a whole copy of a piece.
    Verified {
        piece: u32,
        /// The download (`Download::id`) and its generation.
        id: u64,
        gen: u64,
        ok: bool,
    },
    /// The torrent is no longer registered.
    Stop,
}

/// What the connection tasks of a torrent share with it.
pub struct Shared {
    pub info_hash: [u8; 20],
    pub peer_id: [u8; 20],
    pub listen_port: u16,
    pub piece_count: u32,
    pub reg: Arc<Registered>,
    pub store: Arc<Store>,
    pub events: mpsc::Sender<Ev>,
    pub upload_limit: Arc<Mutex<TokenBucket>>,
    /// Bytes uploaded to peers.
    pub uploaded: AtomicU64,
    /// Bytes received from peers (new bytes only).
    pub from_peers: AtomicU64,
    /// Bytes received from the mirror for this torrent's pieces.
    pub from_mirror: AtomicU64,
    /// The status snapshot, refreshed every second.
    pub status: Mutex<serde_json::Value>,
    epoch: Instant,
}

impl Shared {
    /// Milliseconds since the torrent task started.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Whether a request lies inside its piece (dt1: at most 16 KiB, and
    /// `begin + length` within the piece's length).
    pub fn valid_block(&self, r: BlockRef) -> bool {
        let Some(p) = self.reg.torrent.piece(r.index) else {
            return false;
        };
        r.length > 0
            && r.length <= wire::BLOCK
            && u64::from(r.begin) + u64::from(r.length) <= p.size
    }

    /// Reads a block for upload, only if the piece is in the store now.
    pub fn read_block(
        &self,
        r: BlockRef,
        file: &mut Option<(u32, std::fs::File)>,
        buf: &mut [u8],
    ) -> Option<usize> {
        let p = self.reg.torrent.piece(r.index)?;
        if file.as_ref().is_none_or(|(i, _)| *i != r.index) {
            self.store.get(p.path, p.sha256)?;
        }
        conn::read_stored(&self.store.piece_path(p.path), r, file, buf)
    }
}

/// A handle to a running torrent task.
#[derive(Clone)]
pub struct Handle {
    pub tx: mpsc::Sender<Ev>,
    pub shared: Arc<Shared>,
}

struct Peer {
    /// Where it listens (its address, with the port from its extended
    /// handshake), used for PEX and to avoid dialling it twice.
    listen: SocketAddr,
    peer_id: [u8; 20],
    outgoing: bool,
    client: String,
    tx: mpsc::Sender<Out>,
    shared: Arc<PeerShared>,
    /// Its pieces; `None` = all.
    bits: Option<Vec<u8>>,
    choked_us: bool,
    we_interested: bool,
    interested: bool,
    unchoked: bool,
    inflight: usize,
    reqq: usize,
    /// When it last delivered a block, or was first asked (ms).
    last_progress: u64,
    snub_until: u64,
    rate: Rate,
    up_seen: u64,
    up_rate: Rate,
    wip: HashSet<u32>,
    pex_id: Option<u8>,
    wip_id: Option<u8>,
}

impl Peer {
    /// Cancels our outstanding requests at this peer: those for `piece`,
    /// or all of them.
    fn cancel(&mut self, piece: Option<u32>) {
        let mine: Vec<BlockRef> = self
            .shared
            .outstanding
            .lock()
            .map(|o| {
                o.iter()
                    .filter(|((i, _), _)| piece.is_none_or(|p| p == *i))
                    .map(|((index, begin), (length, _))| BlockRef {
                        index: *index,
                        begin: *begin,
                        length: *length,
                    })
                    .collect()
            })
            .unwrap_or_default();
        for r in mine {
            self.inflight = self.inflight.saturating_sub(1);
            let _ = self.tx.try_send(Out::Cancel(r));
        }
    }

    fn has(&self, piece: u32) -> bool {
        self.bits
            .as_ref()
            .is_none_or(|b| wire::bitfield_get(b, piece))
    }
}

struct MirrorRun {
    stop: watch::Sender<bool>,
}

struct Job {
    dl: Arc<Download>,
    url: String,
    wanted_at: u64,
    /// Rule (a) with peers connected: start the mirror after this.
    jitter_at: u64,
    mirror: Option<MirrorRun>,
    gen: u32,
    attempts: u8,
    /// After a failed hash: per block, its source and digest (smart ban).
    suspect: Option<Vec<(u32, [u8; 32])>>,
    /// After a failed hash: refetch from the mirror at once.
    force_mirror: bool,
    peer_rate: Rate,
    peers_since: Option<u64>,
    committing: bool,
    wip_sent: bool,
    /// Mirror attempts that failed, and when the next may start (ms).
    mirror_failures: u8,
    mirror_not_before: u64,
    /// Peers that delivered blocks: key -> IP (they may be gone by the
    /// time the smart ban runs).
    contributors: HashMap<u32, IpAddr>,
}

/// The torrent task.
pub struct Torrent {
    sh: Arc<Shared>,
    ctx: Arc<Ctx>,
    rx: mpsc::Receiver<Ev>,
    picker: Picker,
    jobs: HashMap<u32, Job>,
    peers: HashMap<u32, Peer>,
    next_key: u32,
    have: Vec<u8>,
    have_count: u32,
    choker: Choker,
    connecting: HashSet<SocketAddr>,
    known: HashMap<SocketAddr, Source>,
    lookup_done_at: Option<u64>,
    last_choke: u64,
    last_pex: u64,
    last_holding: u64,
    last_snapshot: u64,
    last_lookup: u64,
    announced: bool,
    /// Bytes of the pieces we hold (for trackers' `left`).
    held_bytes: u64,
}

/// Starts the task of a registered torrent.
pub fn start(reg: Arc<Registered>, ctx: Arc<Ctx>) -> Handle {
    let (tx, rx) = mpsc::channel(4096);
    let info_hash = reg.torrent.info_hash().0;
    let sh = Arc::new(Shared {
        info_hash,
        peer_id: ctx.peer_id,
        listen_port: ctx.peer_addr.port(),
        piece_count: reg.torrent.piece_count(),
        reg: reg.clone(),
        store: ctx.store.clone(),
        events: tx.clone(),
        upload_limit: ctx.upload_limit.clone(),
        uploaded: AtomicU64::new(0),
        from_peers: AtomicU64::new(0),
        from_mirror: AtomicU64::new(0),
        status: Mutex::new(serde_json::json!({"peers": [], "discovered": {}})),
        epoch: Instant::now(),
    });
    let t = Torrent {
        sh: sh.clone(),
        choker: Choker::new(
            if ctx.cfg.seed {
                ctx.cfg.upload_slots
            } else {
                0
            },
            30_000,
        ),
        ctx,
        rx,
        picker: Picker::default(),
        jobs: HashMap::new(),
        peers: HashMap::new(),
        next_key: 1,
        have: vec![0; wire::bitfield_len(sh.piece_count)],
        have_count: 0,
        connecting: HashSet::new(),
        known: HashMap::new(),
        lookup_done_at: None,
        last_choke: 0,
        last_pex: 0,
        last_holding: 0,
        last_snapshot: 0,
        last_lookup: 0,
        announced: false,
        held_bytes: 0,
    };
    let span = tracing::info_span!("torrent", ih = %reg.torrent.info_hash().to_hex()[..12].to_string(), index = %reg.index_path);
    tokio::spawn(t.run().instrument(span));
    Handle { tx, shared: sh }
}

/// The pieces of `reg` that are in the store (blocking: one map lookup
/// per piece).
fn holding(reg: &Registered, store: &Store) -> Vec<u8> {
    let n = reg.torrent.piece_count();
    let mut bits = vec![0; wire::bitfield_len(n)];
    for p in reg.torrent.pieces() {
        if store.get(p.path, p.sha256).is_some() {
            wire::bitfield_set(&mut bits, p.index);
        }
    }
    bits
}

fn count_bits(b: &[u8]) -> u32 {
    b.iter().map(|x| x.count_ones()).sum()
}

impl Torrent {
    fn now(&self) -> u64 {
        self.sh.now_ms()
    }

    async fn run(mut self) {
        let (reg, store) = (self.sh.reg.clone(), self.sh.store.clone());
        if let Ok(bits) = tokio::task::spawn_blocking(move || holding(&reg, &store)).await {
            self.have_count = count_bits(&bits);
            self.have = bits;
            self.held_bytes = self.bytes_of(&self.have);
        }
        self.start_discovery();
        tracing::debug!(holding = self.have_count, "torrent task started");
        let mut tick = tokio::time::interval(Duration::from_millis(100));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                ev = self.rx.recv() => match ev {
                    None | Some(Ev::Stop) => break,
                    Some(ev) => self.on_event(ev),
                },
                _ = tick.tick() => self.on_tick(),
            }
        }
        for p in self.peers.values() {
            let _ = p.tx.try_send(Out::Close);
        }
        for j in self.jobs.values() {
            if let Some(m) = &j.mirror {
                let _ = m.stop.send(true);
            }
            j.dl.fail(Failure::Unreachable);
        }
        if let Some(d) = self.ctx.discovery() {
            d.forget(self.sh.info_hash);
        }
        tracing::debug!("torrent task stopped");
    }

    fn on_event(&mut self, ev: Ev) {
        let now = self.now();
        // Events that change what /status.json shows refresh it at once.
        let refresh = matches!(
            ev,
            Ev::Up(..) | Ev::Down { .. } | Ev::Found(..) | Ev::Committed { .. }
        );
        self.handle_event(ev, now);
        if refresh {
            self.snapshot(now);
        }
    }

    fn handle_event(&mut self, ev: Ev, now: u64) {
        match ev {
            Ev::Stop => {}
            Ev::Want { piece, dl, url } => self.want(piece, dl, url, now),
            Ev::Incoming(stream, addr, hs) => self.incoming(stream, addr, hs),
            Ev::Up(est, sent) => self.up(*est, sent, now),
            Ev::Failed(addr) => {
                self.connecting.remove(&addr);
                self.ctx.release_conn(addr.ip());
                self.drive_all(now);
            }
            Ev::Down {
                key,
                addr,
                violation,
            } => {
                if let Some(p) = self.peers.remove(&key) {
                    self.ctx.release_conn(p.listen.ip());
                    if violation && self.ctx.violation(p.listen.ip()) {
                        tracing::warn!(peer = %addr, "banned after repeated protocol violations");
                    }
                }
                self.picker.release(key);
                self.choke_round(now);
                self.drive_all(now);
            }
            Ev::Choked { key, choked } => {
                if let Some(p) = self.peers.get_mut(&key) {
                    p.choked_us = choked;
                    if choked {
                        p.inflight = p.shared.outstanding.lock().map(|o| o.len()).unwrap_or(0);
                    } else {
                        p.last_progress = now;
                    }
                }
                if choked && self.peers.get(&key).is_none_or(|p| p.inflight == 0) {
                    self.picker.release(key);
                }
                self.drive_all(now);
            }
            Ev::Interest { key, interested } => {
                if let Some(p) = self.peers.get_mut(&key) {
                    p.interested = interested;
                }
                self.choke_round(now);
            }
            Ev::Have { key, piece } => {
                if let Some(p) = self.peers.get_mut(&key) {
                    if let Some(b) = p.bits.as_mut() {
                        wire::bitfield_set(b, piece);
                    }
                    p.wip.remove(&piece);
                }
                if self.picker.is_wanted(piece) {
                    self.update_interest(key);
                    self.drive(piece, now);
                }
            }
            Ev::Bits { key, bits } => {
                if let Some(p) = self.peers.get_mut(&key) {
                    p.bits = match (bits, p.bits.take()) {
                        (None, _) | (_, None) => None,
                        (Some(mut new), Some(old)) => {
                            for (a, b) in new.iter_mut().zip(old) {
                                *a |= b;
                            }
                            Some(new)
                        }
                    };
                }
                self.update_interest(key);
                self.drive_all(now);
            }
            Ev::Rejected { key, req } => {
                if let Some(p) = self.peers.get_mut(&key) {
                    p.inflight = p.inflight.saturating_sub(1);
                }
                self.picker.rejected(
                    picker::Req {
                        piece: req.index,
                        begin: req.begin,
                        len: req.length,
                    },
                    key,
                );
                self.drive(req.index, now);
            }
            Ev::Block {
                key,
                piece,
                begin,
                len,
                put,
            } => self.block(key, piece, begin, len, put, now),
            Ev::Pex { added } => {
                for a in added.into_iter().take(50) {
                    self.found(a, Source::Pex);
                }
            }
            Ev::Wip { key, wip } => {
                tracing::debug!(key, add = ?wip.add, done = ?wip.done, "a peer fetches from the mirror (dt_wip)");
                if let Some(p) = self.peers.get_mut(&key) {
                    for i in wip.add {
                        if i < self.sh.piece_count && p.wip.len() < 1024 {
                            p.wip.insert(i);
                        }
                    }
                    for i in &wip.done {
                        p.wip.remove(i);
                    }
                    for i in wip.done {
                        if self.picker.is_wanted(i) {
                            self.drive(i, now);
                        }
                    }
                }
            }
            Ev::MirrorDone {
                piece,
                gen,
                res,
                bytes,
                ms,
            } => self.mirror_done(piece, gen, res, bytes, ms, now),
            Ev::Committed {
                piece,
                stored,
                culprits,
            } => self.committed(piece, stored, culprits),
            Ev::Holding(bits) => {
                let fresh: Vec<u32> = (0..self.sh.piece_count)
                    .filter(|&i| wire::bitfield_get(&bits, i) && !wire::bitfield_get(&self.have, i))
                    .collect();
                self.have_count = count_bits(&bits);
                self.held_bytes = self.bytes_of(&bits);
                self.have = bits;
                for i in fresh {
                    self.broadcast_have(i);
                }
            }
            Ev::Found(addr, source) => self.found(addr, source),
            Ev::DiscoveryReady => self.start_discovery(),
            Ev::Verified { piece, id, gen, ok } => {
                let current = self
                    .jobs
                    .get(&piece)
                    .is_some_and(|j| j.dl.id == id && j.dl.gen() == gen && !j.committing);
                if current {
                    self.finish(piece, ok, now);
                }
            }
            Ev::LookupDone => {
                self.lookup_done_at = Some(now);
                self.announce_once();
                self.drive_all(now);
            }
        }
    }

    /// The first lookup, once discovery runs.
    fn start_discovery(&mut self) {
        if let Some(d) = self.ctx.discovery() {
            d.set_totals(
                self.sh.info_hash,
                crate::discovery::Totals {
                    uploaded: 0,
                    downloaded: 0,
                    left: self
                        .sh
                        .reg
                        .torrent
                        .total_size()
                        .saturating_sub(self.held_bytes),
                },
            );
            // Look up first and announce once that is over: mainline folds a
            // lookup into a running query for the same info hash (its own
            // announce's), and we saw such lookups miss peers.
            d.lookup(self.sh.info_hash);
        }
    }

    /// Starts announcing this torrent (once).
    fn announce_once(&mut self) {
        if self.announced {
            return;
        }
        self.announced = true;
        if let Some(d) = self.ctx.discovery() {
            d.announce(self.sh.info_hash);
        }
    }

    fn bytes_of(&self, bits: &[u8]) -> u64 {
        self.sh
            .reg
            .torrent
            .pieces()
            .filter(|p| wire::bitfield_get(bits, p.index))
            .map(|p| p.size)
            .sum()
    }

    fn want(&mut self, piece: u32, dl: Arc<Download>, url: String, now: u64) {
        if let Some(j) = self.jobs.get(&piece) {
            if Arc::ptr_eq(&j.dl, &dl) {
                return;
            }
            // A new download of a piece whose old one is over.
            self.end_job(piece);
        }
        let size = dl.size;
        let tx = self.sh.events.clone();
        let id = dl.id;
        dl.on_verdict(Box::new(move |gen, ok| {
            let tx = tx.clone();
            tokio::spawn(async move {
                let _ = tx.send(Ev::Verified { piece, id, gen, ok }).await;
            });
        }));
        let jitter_cap = self.ctx.cfg.peer_wait_ms.min(250);
        let jitter = if jitter_cap == 0 {
            0
        } else {
            fastrand::u64(0..=jitter_cap)
        };
        self.jobs.insert(
            piece,
            Job {
                dl,
                url,
                wanted_at: now,
                jitter_at: now + jitter,
                mirror: None,
                gen: 0,
                attempts: 0,
                suspect: None,
                force_mirror: false,
                peer_rate: Rate::new(2000),
                peers_since: None,
                committing: false,
                wip_sent: false,
                mirror_failures: 0,
                mirror_not_before: 0,
                contributors: HashMap::new(),
            },
        );
        self.picker.add(piece, size);
        let holders = self.peers.values().any(|p| p.has(piece));
        if !holders {
            if let Some(d) = self.ctx.discovery() {
                d.lookup(self.sh.info_hash);
            }
        }
        let keys: Vec<u32> = self.peers.keys().copied().collect();
        for k in keys {
            self.update_interest(k);
        }
        self.drive(piece, now);
    }

    fn incoming(&mut self, stream: TcpStream, addr: SocketAddr, hs: Handshake) {
        if self.peers.len() + self.connecting.len() >= self.ctx.cfg.max_peers_per_torrent {
            self.ctx.release_conn(addr.ip());
            return;
        }
        self.spawn_establish(stream, addr, Some(hs));
    }

    fn spawn_establish(&mut self, stream: TcpStream, addr: SocketAddr, hs: Option<Handshake>) {
        let sh = self.sh.clone();
        let bits = self.have.clone();
        let count = self.have_count;
        self.connecting.insert(addr);
        tokio::spawn(async move {
            match conn::establish(stream, addr, &sh, hs, bits.clone(), count).await {
                Ok(est) => {
                    let _ = sh.events.send(Ev::Up(Box::new(est), bits)).await;
                }
                Err(e) => {
                    tracing::debug!(peer = %addr, error = %e, "handshake failed");
                    let _ = sh.events.send(Ev::Failed(addr)).await;
                }
            }
        });
    }

    fn found(&mut self, addr: SocketAddr, source: Source) {
        if addr.ip().is_unspecified() || addr.port() == 0 {
            return;
        }
        if self.known.len() < 1000 {
            self.known.entry(addr).or_insert(source);
        }
        let me = self.ctx.peer_addr;
        if addr == me
            || (addr.port() == me.port() && me.ip().is_unspecified() && addr.ip().is_loopback())
        {
            return;
        }
        if self.connecting.contains(&addr) || self.peers.values().any(|p| p.listen == addr) {
            return;
        }
        if self.peers.len() + self.connecting.len() >= self.ctx.cfg.max_peers_per_torrent {
            return;
        }
        if !self.ctx.acquire_conn(addr.ip()) {
            return;
        }
        self.connecting.insert(addr);
        let sh = self.sh.clone();
        let bits = self.have.clone();
        let count = self.have_count;
        let bind = self.ctx.peer_addr.ip();
        tokio::spawn(async move {
            let dial = async {
                let sock = if addr.is_ipv4() {
                    tokio::net::TcpSocket::new_v4()?
                } else {
                    tokio::net::TcpSocket::new_v6()?
                };
                // Dial from our own address, so peers see the IP we listen on.
                if !bind.is_unspecified() && bind.is_ipv4() == addr.is_ipv4() {
                    sock.bind(SocketAddr::new(bind, 0))?;
                }
                sock.connect(addr).await
            };
            let res = match tokio::time::timeout(Duration::from_secs(5), dial).await {
                Ok(Ok(s)) => conn::establish(s, addr, &sh, None, bits.clone(), count)
                    .await
                    .map_err(|e| e.to_string()),
                Ok(Err(e)) => Err(e.to_string()),
                Err(_) => Err("connect timed out".to_string()),
            };
            match res {
                Ok(est) => {
                    let _ = sh.events.send(Ev::Up(Box::new(est), bits)).await;
                }
                Err(e) => {
                    tracing::debug!(peer = %addr, error = %e, "cannot connect");
                    let _ = sh.events.send(Ev::Failed(addr)).await;
                }
            }
        });
    }

    fn up(&mut self, est: Established, sent: Vec<u8>, now: u64) {
        let addr = est.addr;
        self.connecting.remove(&addr);
        if self.ctx.is_banned(addr.ip()) {
            self.ctx.release_conn(addr.ip());
            return;
        }
        // The same peer connected both ways at once: both sides keep the
        // connection dialled by the lower peer id, so they agree.
        let twin = self
            .peers
            .iter()
            .find(|(_, p)| p.peer_id == est.hello.peer_id)
            .map(|(&k, p)| (k, p.outgoing));
        if let Some((k, old_outgoing)) = twin {
            let dialler_of = |outgoing: bool| {
                if outgoing {
                    self.sh.peer_id
                } else {
                    est.hello.peer_id
                }
            };
            if old_outgoing == est.outgoing || dialler_of(old_outgoing) < dialler_of(est.outgoing) {
                self.ctx.release_conn(addr.ip());
                return;
            }
            if let Some(p) = self.peers.get(&k) {
                let _ = p.tx.try_send(Out::Close);
            }
        }
        let key = self.next_key;
        self.next_key = self.next_key.wrapping_add(1).max(1);
        let listen = SocketAddr::new(addr.ip(), est.hello.ext.p.unwrap_or(addr.port()));
        let peer = Peer {
            listen,
            peer_id: est.hello.peer_id,
            outgoing: est.outgoing,
            client: est.hello.ext.v.clone().unwrap_or_default(),
            tx: est.tx.clone(),
            shared: est.shared.clone(),
            bits: est.hello.bitfield.clone(),
            choked_us: true,
            we_interested: false,
            interested: false,
            unchoked: false,
            inflight: 0,
            reqq: est
                .hello
                .ext
                .reqq
                .map_or(64, |q| (q as usize).clamp(1, 1000)),
            last_progress: now,
            snub_until: 0,
            rate: Rate::new(5000),
            up_seen: 0,
            up_rate: Rate::new(10_000),
            wip: HashSet::new(),
            pex_id: est.hello.ext.ext_id(wire::EXT_PEX),
            wip_id: est.hello.ext.ext_id(wire::EXT_WIP),
        };
        tracing::info!(peer = %addr, client = %peer.client, has = peer.bits.as_ref().map_or(self.sh.piece_count, |b| count_bits(b)), "peer connected");
        // Pieces we got between the bitfield snapshot and now.
        for i in 0..self.sh.piece_count {
            if wire::bitfield_get(&self.have, i) && !wire::bitfield_get(&sent, i) {
                let _ = peer.tx.try_send(Out::Have(i));
            }
        }
        // What we are fetching from the mirror right now.
        if let Some(id) = peer.wip_id {
            let add: Vec<u32> = self
                .jobs
                .iter()
                .filter(|(_, j)| j.wip_sent)
                .map(|(&i, _)| i)
                .take(256)
                .collect();
            if !add.is_empty() {
                let w = wire::Wip { add, done: vec![] };
                let _ = peer.tx.try_send(Out::Extended(id, w.encode()));
            }
        }
        self.peers.insert(key, peer);
        est.run(key, self.sh.clone());
        self.pex_on_connect(key);
        self.update_interest(key);
        self.choke_round(now);
        self.drive_all(now);
    }

    fn update_interest(&mut self, key: u32) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        let want = self.picker.wanted().any(|i| p.has(i));
        if want != p.we_interested {
            p.we_interested = want;
            let _ = p.tx.try_send(if want {
                Out::Interested
            } else {
                Out::NotInterested
            });
        }
    }

    /// Gives peer `key` as many requests as its queue has room for.
    fn feed(&mut self, key: u32, now: u64) {
        let Some(p) = self.peers.get_mut(&key) else {
            return;
        };
        if p.choked_us || p.snub_until > now {
            return;
        }
        // A queue sized to the link: about 200 ms of its rate, at least 32
        // blocks, at most what it accepts.
        let depth = ((p.rate.estimate(now) / 5 / u64::from(wire::BLOCK)) as usize)
            .max(64)
            .min(p.reqq.clamp(1, 1000));
        // Refill in batches of a quarter of the queue: one write (and one
        // wake-up of the writer) per batch rather than per block.
        if p.inflight >= depth || (p.inflight > 0 && depth - p.inflight < depth / 4) {
            return;
        }
        let room = depth - p.inflight;
        let reqs = {
            let p = &*p;
            self.picker.pick(key, |i| p.has(i), room, now)
        };
        if reqs.is_empty() {
            return;
        }
        if p.inflight == 0 {
            p.last_progress = now;
        }
        p.inflight += reqs.len();
        let mut by_piece: Vec<(u32, Vec<BlockRef>)> = Vec::new();
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
                j.dl.mark_started();
                j.peers_since.get_or_insert(now);
                let _ = p.tx.try_send(Out::Request(blocks, j.dl.clone()));
            }
        }
    }

    fn block(&mut self, key: u32, piece: u32, begin: u32, len: u32, put: Put, now: u64) {
        let ip = if let Some(p) = self.peers.get_mut(&key) {
            p.inflight = p.inflight.saturating_sub(1);
            p.last_progress = now;
            p.snub_until = 0;
            p.rate.add(u64::from(len), now);
            Some(p.listen.ip())
        } else {
            None
        };
        let others = self.picker.got(piece, begin, key);
        for o in others {
            if let Some(p) = self.peers.get(&o) {
                let _ = p.tx.try_send(Out::Cancel(BlockRef {
                    index: piece,
                    begin,
                    length: len,
                }));
            }
            if let Some(p) = self.peers.get_mut(&o) {
                p.inflight = p.inflight.saturating_sub(1);
            }
        }
        let new = match put {
            Put::Progress { new } => new,
            Put::Duplicate => 0,
        };
        self.sh.from_peers.fetch_add(new, Ordering::Relaxed);
        self.ctx.stats.peer_bytes(new);
        if let Some(j) = self.jobs.get_mut(&piece) {
            j.peer_rate.add(new, now);
            if let (Some(ip), true) = (ip, new > 0) {
                j.contributors.insert(key, ip);
            }
        }
        self.feed(key, now);
    }

    /// Decides what happens next for a wanted piece.
    fn drive(&mut self, piece: u32, now: u64) {
        let Some(job) = self.jobs.get(&piece) else {
            return;
        };
        if job.committing {
            return;
        }
        let (free, _, _) = self.picker.counts(piece);
        if free == 0 {
            return;
        }
        let usable: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, p)| p.has(piece) && !p.choked_us && p.snub_until <= now)
            .map(|(&k, _)| k)
            .collect();
        if !usable.is_empty() && !job.force_mirror {
            for k in usable {
                self.feed(k, now);
            }
            return;
        }
        if job.mirror.is_some() {
            return;
        }
        let peer_wait = self.ctx.cfg.peer_wait_ms;
        let holders = self
            .peers
            .values()
            .any(|p| p.has(piece) && p.snub_until <= now);
        let wip = self.peers.values().any(|p| p.wip.contains(&piece));
        let lookup_fresh = !self.ctx.discovery_on()
            || self
                .lookup_done_at
                .is_some_and(|t| now.saturating_sub(t) < 60_000);
        let deadline = picker::mirror_start_at(&picker::Waiting {
            now,
            wanted_at: job.wanted_at,
            jitter_at: job.jitter_at,
            peer_wait,
            force: job.force_mirror,
            holders,
            fetching: wip,
            mirror_ms: job.dl.size.saturating_mul(1000) / self.ctx.mirror_rate().max(1),
            no_peers: self.peers.is_empty(),
            connecting: !self.connecting.is_empty(),
            lookup_fresh,
            lookup_done_at: self.lookup_done_at,
        });
        if now >= deadline.max(job.mirror_not_before) {
            let _ = self.start_mirror(piece, 0, now);
        }
    }

    fn drive_all(&mut self, now: u64) {
        let pieces: Vec<u32> = self.picker.wanted().collect();
        for p in pieces {
            self.drive(p, now);
        }
    }

    /// Gives the mirror the free blocks of `piece` from `from_block` on;
    /// false when there were none.
    fn start_mirror(&mut self, piece: u32, from_block: usize, now: u64) -> bool {
        let Some(range) = self.picker.mirror_take(piece, from_block) else {
            return false;
        };
        let peers = self.peers.len();
        let fetching = self
            .peers
            .values()
            .filter(|p| p.wip.contains(&piece))
            .count();
        let Some(job) = self.jobs.get_mut(&piece) else {
            return false;
        };
        job.force_mirror = false;
        job.gen += 1;
        let (stop, stop_rx) = watch::channel(false);
        job.mirror = Some(MirrorRun { stop });
        let whole = range.0 == 0;
        tracing::debug!(
            piece,
            from = range.0,
            to = range.1,
            waited_ms = now - job.wanted_at,
            peers,
            fetching,
            "mirror takes a range"
        );
        let (gen, dl, url) = (job.gen, job.dl.clone(), job.url.clone());
        let send_wip = whole && !job.wip_sent;
        if send_wip {
            job.wip_sent = true;
        }
        let (ctx, sh) = (self.ctx.clone(), self.sh.clone());
        tokio::spawn(
            async move {
                let t0 = Instant::now();
                let mut bytes = 0u64;
                let res = crate::fetch::mirror_range(
                    &ctx.client,
                    &url,
                    &dl,
                    range.0,
                    range.1,
                    ctx.timeout,
                    |n| {
                        bytes += n;
                        ctx.stats.mirror_bytes(n);
                        sh.from_mirror.fetch_add(n, Ordering::Relaxed);
                    },
                    &stop_rx,
                )
                .await;
                let ms = t0.elapsed().as_millis() as u64;
                let _ = sh
                    .events
                    .send(Ev::MirrorDone {
                        piece,
                        gen,
                        res,
                        bytes,
                        ms,
                    })
                    .await;
            }
            .in_current_span(),
        );
        if send_wip {
            self.send_wip(vec![piece], vec![]);
        }
        true
    }

    fn send_wip(&self, add: Vec<u32>, done: Vec<u32>) {
        let w = wire::Wip { add, done };
        let payload = w.encode();
        for p in self.peers.values() {
            if let Some(id) = p.wip_id {
                let _ = p.tx.try_send(Out::Extended(id, payload.clone()));
            }
        }
    }

    fn mirror_done(
        &mut self,
        piece: u32,
        gen: u32,
        res: Result<(), Failure>,
        bytes: u64,
        ms: u64,
        now: u64,
    ) {
        let Some(job) = self.jobs.get_mut(&piece) else {
            return;
        };
        if job.gen != gen {
            return;
        }
        job.mirror = None;
        if res.is_ok() && bytes > 256 * 1024 {
            self.ctx.note_mirror_rate(bytes, ms);
        }
        let dl = job.dl.clone();
        match res {
            Ok(()) => {
                self.picker.mirror_stopped(piece, |s, e| dl.has_range(s, e));
                self.drive(piece, now);
            }
            Err(f) => {
                self.picker.mirror_stopped(piece, |s, e| dl.has_range(s, e));
                job.mirror_failures += 1;
                job.mirror_not_before = now + (1000u64 << job.mirror_failures.min(5));
                let holders = self.peers.values().any(|p| p.has(piece));
                if holders && f != Failure::Local && job.mirror_failures < 4 {
                    tracing::info!(piece, failure = ?f, "mirror failed; peers go on");
                    self.drive(piece, now);
                } else {
                    self.end_job(piece);
                    dl.fail(f);
                }
            }
        }
    }

    /// The whole piece has been hashed.
    fn finish(&mut self, piece: u32, ok: bool, now: u64) {
        self.picker_cancel(piece);
        let Some(job) = self.jobs.get_mut(&piece) else {
            return;
        };
        if let Some(m) = job.mirror.take() {
            let _ = m.stop.send(true);
        }
        if ok {
            job.committing = true;
            self.picker.remove(piece);
            let (dl, store, sh) = (job.dl.clone(), self.sh.store.clone(), self.sh.clone());
            let suspect = job.suspect.take();
            tokio::spawn(async move {
                let culprits = match suspect {
                    Some(bad) => {
                        let dl2 = dl.clone();
                        let good = tokio::task::spawn_blocking(move || dl2.block_digests())
                            .await
                            .unwrap_or_default();
                        let srcs: Vec<Option<u32>> = bad
                            .iter()
                            .map(|(s, _)| (*s != crate::fetch::MIRROR).then_some(*s))
                            .collect();
                        let bad_d: Vec<[u8; 32]> = bad.iter().map(|(_, d)| *d).collect();
                        let (culprits, _cleared) = super::ban::smart_ban(&srcs, &bad_d, &good);
                        culprits
                    }
                    None => Vec::new(),
                };
                let stored = dl.commit(&store).await;
                let _ = sh
                    .events
                    .send(Ev::Committed {
                        piece,
                        stored,
                        culprits,
                    })
                    .await;
            });
            return;
        }
        // A failed hash.
        self.ctx.stats.corrupt();
        job.attempts += 1;
        let peer_part = job.dl.peer_bytes() > 0;
        tracing::warn!(
            piece,
            attempt = job.attempts,
            from_peers = peer_part,
            "piece failed its SHA-256"
        );
        if !peer_part || job.attempts >= 3 {
            // The mirror's own bytes are wrong (or we tried enough): apt
            // gets the failure, as without peers.
            let dl = job.dl.clone();
            self.end_job(piece);
            dl.fail(Failure::Corrupt);
            return;
        }
        match job.dl.reset_for_retry() {
            Some(blocks) => {
                job.suspect = Some(blocks);
                job.force_mirror = true;
                self.picker.reset(piece);
                self.drive(piece, now);
            }
            None => {
                // apt already has bytes of it: the response must fail. Each
                // contributing peer gets a strike by its share.
                let srcs: Vec<Option<u32>> = job.contributors.keys().map(|k| Some(*k)).collect();
                let contributors = job.contributors.clone();
                let dl = job.dl.clone();
                for (k, w) in super::ban::shares(&srcs) {
                    if let Some(ip) = contributors.get(&k) {
                        let weight = if contributors.len() == 1 { 1.0 } else { w };
                        if self.ctx.strike(*ip, weight) {
                            self.drop_ip(*ip);
                        }
                    }
                }
                self.end_job(piece);
                dl.fail(Failure::Corrupt);
            }
        }
    }

    /// Cancels every outstanding request for `piece`.
    fn picker_cancel(&mut self, piece: u32) {
        for p in self.peers.values_mut() {
            p.cancel(Some(piece));
        }
    }

    fn end_job(&mut self, piece: u32) {
        self.picker_cancel(piece);
        self.picker.remove(piece);
        if let Some(j) = self.jobs.remove(&piece) {
            if let Some(m) = j.mirror {
                let _ = m.stop.send(true);
            }
            if j.wip_sent {
                self.send_wip(vec![], vec![piece]);
            }
        }
        let keys: Vec<u32> = self.peers.keys().copied().collect();
        for k in keys {
            self.update_interest(k);
        }
    }

    fn committed(&mut self, piece: u32, stored: bool, culprits: Vec<u32>) {
        let ips: Vec<IpAddr> = self
            .jobs
            .get(&piece)
            .map(|j| {
                culprits
                    .iter()
                    .filter_map(|k| j.contributors.get(k).copied())
                    .collect()
            })
            .unwrap_or_default();
        for ip in ips {
            tracing::warn!(%ip, piece, "peer sent corrupt blocks: banned");
            self.ctx.ban(ip);
            self.drop_ip(ip);
        }
        // HAVE before dt_wip's "done" (sent by end_job): a peer waiting for
        // this piece must see that we hold it before it hears that we
        // stopped fetching it, or it would go to the mirror in between.
        if stored && !wire::bitfield_get(&self.have, piece) {
            wire::bitfield_set(&mut self.have, piece);
            self.have_count += 1;
            self.held_bytes += self.sh.reg.torrent.piece(piece).map_or(0, |p| p.size);
            self.broadcast_have(piece);
        }
        self.end_job(piece);
    }

    fn broadcast_have(&self, piece: u32) {
        for p in self.peers.values() {
            let _ = p.tx.try_send(Out::Have(piece));
        }
    }

    fn drop_ip(&mut self, ip: IpAddr) {
        for p in self.peers.values().filter(|p| p.listen.ip() == ip) {
            let _ = p.tx.try_send(Out::Close);
        }
    }

    fn choke_round(&mut self, now: u64) {
        self.last_choke = now;
        let downloading = !self.jobs.is_empty();
        let samples: Vec<PeerSample> = self
            .peers
            .iter()
            .map(|(&k, p)| PeerSample {
                id: u64::from(k),
                interested: p.interested,
                down_rate: p.rate.per_sec(now),
                uploaded_recent: p.up_rate.per_sec(now),
                snubbed: p.snub_until > now,
            })
            .collect();
        let unchoke: HashSet<u64> = self
            .choker
            .decide(&samples, downloading, now, fastrand::u64(..))
            .into_iter()
            .collect();
        for (&k, p) in self.peers.iter_mut() {
            let u = unchoke.contains(&u64::from(k));
            if u != p.unchoked {
                p.unchoked = u;
                let _ = p.tx.try_send(if u { Out::Unchoke } else { Out::Choke });
            }
        }
    }

    fn on_tick(&mut self) {
        let now = self.now();
        // Upload rates from the writers' counters.
        for p in self.peers.values_mut() {
            let up = p.shared.up.load(Ordering::Relaxed);
            p.up_rate.add(up - p.up_seen.min(up), now);
            p.up_seen = up;
        }
        // Rule (c): a peer with requests out and no block for 2 s is snubbed
        // and its blocks go back to the picker.
        let stall = self.ctx.cfg.stall_ms;
        let stalled: Vec<u32> = self
            .peers
            .iter()
            .filter(|(_, p)| {
                p.inflight > 0 && !p.choked_us && now.saturating_sub(p.last_progress) > stall
            })
            .map(|(&k, _)| k)
            .collect();
        for k in stalled {
            if let Some(p) = self.peers.get_mut(&k) {
                tracing::info!(peer = %p.listen, "peer stalled: its requests go elsewhere");
                p.snub_until = now + 30_000;
                p.cancel(None);
                p.inflight = 0;
            }
            self.picker.release(k);
        }
        // Rule (b): the mirror takes the tail of a piece the peers are too
        // slow for.
        let pieces: Vec<u32> = self.picker.wanted().collect();
        for piece in &pieces {
            let Some(j) = self.jobs.get(piece) else {
                continue;
            };
            let Some(since) = j.peers_since else { continue };
            if j.mirror.is_some()
                || j.committing
                || now.saturating_sub(since) < 1000
                || now < j.mirror_not_before
            {
                continue;
            }
            let contiguous = j.dl.contiguous();
            let rest = j.dl.size.saturating_sub(contiguous);
            if rest < 256 * 1024 {
                continue;
            }
            let (mr, lat) = self.ctx.mirror_estimate();
            // The peers' rate on this piece since they started on it; the
            // mirror must win clearly (by half) before it costs mirror bytes.
            let peer_rate = j.peer_rate.estimate(now);
            if let Some(front) = picker::mirror_tail(rest, peer_rate, mr * 2 / 3, lat) {
                let at = ((contiguous + front) / u64::from(picker::BLOCK)) as usize;
                let from = self.picker.tail_start(*piece).unwrap_or(0).max(at);
                if self.start_mirror(*piece, from, now) {
                    tracing::info!(
                        piece,
                        from_block = from,
                        peer_rate,
                        mirror_rate = mr,
                        "peers slower than the mirror: it takes the tail"
                    );
                } else if let Some(j) = self.jobs.get_mut(piece) {
                    // Nothing free at the tail: look again in a while.
                    j.mirror_not_before = now + 1000;
                }
            }
        }
        self.drive_all(now);
        if now.saturating_sub(self.last_choke) >= 10_000 {
            self.choke_round(now);
        }
        // Look for more peers while we have few: every 5 s while apt waits
        // on a piece nobody connected holds, every minute otherwise.
        if let Some(d) = self.ctx.discovery() {
            let starving = self
                .jobs
                .keys()
                .any(|&i| !self.peers.values().any(|p| p.has(i)));
            let every = if starving { 5_000 } else { 60_000 };
            if self.peers.len() < 4 && now.saturating_sub(self.last_lookup) >= every {
                self.last_lookup = now;
                d.lookup(self.sh.info_hash);
            }
        }
        if now >= 10_000 {
            self.announce_once();
        }
        if now.saturating_sub(self.last_pex) >= 60_000 {
            self.last_pex = now;
            self.send_pex();
        }
        if now.saturating_sub(self.last_holding) >= 60_000 && self.jobs.is_empty() {
            self.last_holding = now;
            let (reg, store, tx) = (
                self.sh.reg.clone(),
                self.sh.store.clone(),
                self.sh.events.clone(),
            );
            tokio::task::spawn_blocking(move || {
                let bits = holding(&reg, &store);
                let _ = tx.blocking_send(Ev::Holding(bits));
            });
        }
        if now.saturating_sub(self.last_snapshot) >= 1000 {
            self.last_snapshot = now;
            self.snapshot(now);
            if let Some(d) = self.ctx.discovery() {
                let left = self
                    .sh
                    .reg
                    .torrent
                    .total_size()
                    .saturating_sub(self.held_bytes);
                d.set_totals(
                    self.sh.info_hash,
                    crate::discovery::Totals {
                        uploaded: self.sh.uploaded.load(Ordering::Relaxed),
                        downloaded: self.sh.from_peers.load(Ordering::Relaxed)
                            + self.sh.from_mirror.load(Ordering::Relaxed),
                        left,
                    },
                );
            }
        }
    }

    /// PEX at once when a peer connects: it learns our other peers, and
    /// they learn it, so a swarm joins up within a round trip of the first
    /// connection rather than at the next DHT lookup.
    fn pex_on_connect(&self, key: u32) {
        let Some(new) = self.peers.get(&key) else {
            return;
        };
        let others: Vec<SocketAddr> = self
            .peers
            .iter()
            .filter(|(&k, _)| k != key)
            .map(|(_, p)| p.listen)
            .take(50)
            .collect();
        if let (Some(id), false) = (new.pex_id, others.is_empty()) {
            let msg = wire::Pex {
                added: others,
                dropped: vec![],
            };
            let _ = new.tx.try_send(Out::Extended(id, msg.encode()));
        }
        let about_new = wire::Pex {
            added: vec![new.listen],
            dropped: vec![],
        }
        .encode();
        for (&k, p) in &self.peers {
            if let (true, Some(id)) = (k != key, p.pex_id) {
                let _ = p.tx.try_send(Out::Extended(id, about_new.clone()));
            }
        }
    }

    fn send_pex(&self) {
        let listens: Vec<SocketAddr> = self.peers.values().map(|p| p.listen).collect();
        for p in self.peers.values() {
            let Some(id) = p.pex_id else { continue };
            let added: Vec<SocketAddr> = listens
                .iter()
                .filter(|a| **a != p.listen)
                .take(50)
                .copied()
                .collect();
            if added.is_empty() {
                continue;
            }
            let msg = wire::Pex {
                added,
                dropped: vec![],
            };
            let _ = p.tx.try_send(Out::Extended(id, msg.encode()));
        }
    }

    fn snapshot(&self, now: u64) {
        let peers: Vec<serde_json::Value> = self
            .peers
            .values()
            .map(|p| {
                serde_json::json!({
                    "addr": p.listen.to_string(),
                    "client": p.client,
                    "pieces": p.bits.as_ref().map_or(self.sh.piece_count, |b| count_bits(b)),
                    "bytes_from": p.shared.down.load(Ordering::Relaxed),
                    "bytes_to": p.shared.up.load(Ordering::Relaxed),
                    "rate_from": p.rate.per_sec(now),
                    "choked_us": p.choked_us,
                    "unchoked": p.unchoked,
                    "interested": p.interested,
                })
            })
            .collect();
        let mut discovered: HashMap<&'static str, Vec<String>> = HashMap::new();
        for (a, s) in &self.known {
            let k = match s {
                Source::Dht => "dht",
                Source::Tracker => "tracker",
                Source::Lsd => "lsd",
                Source::Pex => "pex",
            };
            discovered.entry(k).or_default().push(a.to_string());
        }
        for v in discovered.values_mut() {
            v.sort();
        }
        let v = serde_json::json!({
            "peers": peers,
            "discovered": discovered,
            "pieces_held": self.have_count,
            "pieces_wanted": self.jobs.len(),
        });
        if let Ok(mut s) = self.sh.status.lock() {
            *s = v;
        }
    }
}
