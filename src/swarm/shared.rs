//! What every torrent task of the swarm shares: the settings, our peer
//! id and address, the store, the counters, the mirror, discovery once it
//! runs, the upload limit, and the limits and bans that span torrents.
//! Each lock here is taken alone, never while another is held.

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Instant;

use super::ban::Bans;
use super::rate::TokenBucket;
use crate::discovery::Discovery;
use crate::mirror::Mirror;
use crate::stats::Stats;
use crate::store::Store;

/// Swarm settings (from `debtorrent serve`'s options).
#[derive(Clone, Debug)]
pub struct SwarmConfig {
    /// How long apt may wait for a peer before the mirror starts (ms).
    pub peer_wait_ms: u64,
    /// A peer with requests out and no block for this long is snubbed (ms).
    pub stall_ms: u64,
    /// Connections in total, per IP (per swarm: an IP may hold this many
    /// in each swarm we are in, since a dt2 connection carries one swarm
    /// and two daemons often share several) and per swarm.
    pub max_peers: usize,
    pub max_peers_per_ip: usize,
    pub max_peers_per_torrent: usize,
    /// Regular unchoke slots per torrent.
    pub upload_slots: usize,
    /// Upload limit in bytes/s (0 = none).
    pub upload_rate: u64,
    /// Whether we upload at all.
    pub seed: bool,
    pub ban_ms: u64,
    pub ban_strikes: u32,
}

/// An incoming handshake in progress: since when, its slot's IP, and what
/// tells it to give up.
type Handshaking = (Instant, IpAddr, Arc<tokio::sync::Notify>);

/// What every torrent task shares.
pub struct Ctx {
    pub cfg: SwarmConfig,
    pub peer_id: [u8; 20],
    /// Our BitTorrent address (TCP; the DHT uses the same port over UDP).
    pub peer_addr: SocketAddr,
    pub store: Arc<Store>,
    pub stats: Arc<Stats>,
    /// The mirror: the web seed of every torrent.
    pub mirror: Arc<Mirror>,
    /// Set once discovery has started (in the background: resolving the
    /// public DHT routers may take seconds, and apt must not wait for it).
    discovery: std::sync::OnceLock<Arc<Discovery>>,
    /// Whether discovery is configured at all.
    discovery_on: bool,
    pub upload_limit: Arc<Mutex<TokenBucket>>,
    bans: Mutex<Bans>,
    conns: Mutex<HashMap<IpAddr, usize>>,
    total: AtomicUsize,
    /// Swarms we are in (the per-IP limit scales with it).
    swarms: AtomicUsize,
    /// Incoming connections still in their handshake, with their slot's
    /// IP: when every slot is taken, the oldest of them gives its slot to a
    /// newcomer (a slow handshake must not keep a good peer out).
    handshaking: Mutex<HashMap<u64, Handshaking>>,
    next_handshake: std::sync::atomic::AtomicU64,
    epoch: Instant,
}

impl Ctx {
    /// The context of a swarm that has no discovery yet.
    pub fn new(
        cfg: SwarmConfig,
        peer_id: [u8; 20],
        peer_addr: SocketAddr,
        store: Arc<Store>,
        stats: Arc<Stats>,
        mirror: Arc<Mirror>,
        discovery_on: bool,
    ) -> Ctx {
        Ctx {
            peer_id,
            peer_addr,
            store,
            stats,
            mirror,
            discovery: std::sync::OnceLock::new(),
            discovery_on,
            // A quarter of a second of burst: smooth enough for the link,
            // and one 16 KiB block always fits.
            upload_limit: Arc::new(Mutex::new(TokenBucket::new(
                cfg.upload_rate,
                (cfg.upload_rate / 4).max(64 * 1024),
            ))),
            bans: Mutex::new(Bans::new(cfg.ban_ms, cfg.ban_strikes, 10_000)),
            conns: Mutex::new(HashMap::new()),
            total: AtomicUsize::new(0),
            swarms: AtomicUsize::new(0),
            handshaking: Mutex::new(HashMap::new()),
            next_handshake: std::sync::atomic::AtomicU64::new(0),
            epoch: Instant::now(),
            cfg,
        }
    }

    /// Discovery has started.
    pub fn set_discovery(&self, d: Arc<Discovery>) {
        let _ = self.discovery.set(d);
    }

    fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Discovery, once it runs.
    pub fn discovery(&self) -> Option<&Arc<Discovery>> {
        self.discovery.get()
    }

    /// Whether discovery is configured (it may still be starting).
    pub fn discovery_on(&self) -> bool {
        self.discovery_on
    }

    /// Whether `ip` is banned.
    pub fn is_banned(&self, ip: IpAddr) -> bool {
        let now = self.now_ms();
        self.bans
            .lock()
            .map(|mut b| b.is_banned(ip, now))
            .unwrap_or(false)
    }

    /// Bans `ip` (proven to have sent corrupt data).
    pub fn ban(&self, ip: IpAddr) {
        let now = self.now_ms();
        if let Ok(mut b) = self.bans.lock() {
            b.ban(ip, now);
        }
        self.stats.ban();
    }

    /// A weighted strike; true when it led to a ban.
    pub fn strike(&self, ip: IpAddr, weight: f64) -> bool {
        let now = self.now_ms();
        let banned = self
            .bans
            .lock()
            .map(|mut b| b.strike(ip, weight, now))
            .unwrap_or(false);
        if banned {
            self.stats.ban();
        }
        banned
    }

    /// A protocol violation; true when the IP is banned now.
    pub fn violation(&self, ip: IpAddr) -> bool {
        let now = self.now_ms();
        self.bans
            .lock()
            .map(|mut b| b.violation(ip, now))
            .unwrap_or(false)
    }

    /// Sets how many swarms we are in.
    pub fn set_swarms(&self, n: usize) {
        self.swarms.store(n, Ordering::Relaxed);
    }

    /// Takes a connection slot for `ip` (total and per-IP limits, bans).
    /// The per-IP limit is `max_peers_per_ip` per swarm we are in: the
    /// slot is taken before the handshake says which swarm a connection is
    /// for, and a neighbour that shares our four components needs a
    /// connection in each.
    pub fn acquire_conn(&self, ip: IpAddr) -> bool {
        if self.is_banned(ip) {
            return false;
        }
        let Ok(mut c) = self.conns.lock() else {
            return false;
        };
        let per_ip = self
            .cfg
            .max_peers_per_ip
            .saturating_mul(self.swarms.load(Ordering::Relaxed).max(1));
        let n = c.entry(ip).or_insert(0);
        if *n >= per_ip || self.total.load(Ordering::Relaxed) >= self.cfg.max_peers {
            if *n == 0 {
                c.remove(&ip);
            }
            return false;
        }
        *n += 1;
        self.total.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// An incoming connection holding a slot for `ip` starts its
    /// handshake: its number, and what fires if it is evicted.
    pub fn handshake_started(&self, ip: IpAddr) -> (u64, Arc<tokio::sync::Notify>) {
        let id = self.next_handshake.fetch_add(1, Ordering::Relaxed);
        let kill = Arc::new(tokio::sync::Notify::new());
        if let Ok(mut h) = self.handshaking.lock() {
            h.insert(id, (Instant::now(), ip, kill.clone()));
        }
        (id, kill)
    }

    /// The handshake `id` is over; false when it was evicted (its slot
    /// already went to another connection).
    pub fn handshake_over(&self, id: u64) -> bool {
        self.handshaking
            .lock()
            .map(|mut h| h.remove(&id).is_some())
            .unwrap_or(false)
    }

    /// A slot for `ip` ([`Ctx::acquire_conn`]); when every slot is taken,
    /// the incoming handshake in progress for longest (at least a second)
    /// gives its slot up first.
    pub fn acquire_conn_evicting(&self, ip: IpAddr) -> bool {
        if self.acquire_conn(ip) {
            return true;
        }
        if self.is_banned(ip) || !self.full() {
            return false;
        }
        let victim = self.handshaking.lock().ok().and_then(|mut h| {
            let id = h
                .iter()
                .filter(|(_, (t, _, _))| t.elapsed() >= std::time::Duration::from_secs(1))
                .min_by_key(|(id, (t, _, _))| (*t, **id))
                .map(|(id, _)| *id)?;
            h.remove(&id)
        });
        let Some((_, vip, kill)) = victim else {
            return false;
        };
        self.release_conn(vip);
        kill.notify_one();
        tracing::debug!(%vip, "a slow handshake gave its slot up");
        self.acquire_conn(ip)
    }

    /// Whether every connection slot is taken.
    pub fn full(&self) -> bool {
        self.total.load(Ordering::Relaxed) >= self.cfg.max_peers
    }

    /// Gives a connection slot back.
    pub fn release_conn(&self, ip: IpAddr) {
        if let Ok(mut c) = self.conns.lock() {
            if let Some(n) = c.get_mut(&ip) {
                *n -= 1;
                if *n == 0 {
                    c.remove(&ip);
                }
                self.total.fetch_sub(1, Ordering::Relaxed);
            }
        }
    }

    /// Bans in force now.
    pub fn bans_active(&self) -> usize {
        let now = self.now_ms();
        self.bans
            .lock()
            .map(|mut b| {
                b.expire(now);
                b.banned_count()
            })
            .unwrap_or(0)
    }

    /// Connections open now.
    pub fn connections(&self) -> usize {
        self.total.load(Ordering::Relaxed)
    }
}
