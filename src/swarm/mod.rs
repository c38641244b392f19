//! The daemon as a BitTorrent peer: one task per dt2 swarm (a suite family
//! and component, `docs/torrent-format.md` §7), whatever the number of
//! index versions and suites registered for it (`torrent.rs`, the actor
//! around the pure state machine of `machine.rs`, with the swarm's
//! `catalogue.rs`), one reader and one writer task per connection
//! (`conn.rs`), the listener, and the limits and bans that span swarms.
//!
//! Pure parts: `wire` (codec), `machine` (every decision of a torrent),
//! `picker`, `mirror_rules`, `choker`, `rate`, `ban`. `service.rs` calls [`Swarm::fetch`]
//! for every pool file that is not in the store; the torrent's machine then
//! decides which peers (and when the mirror) deliver it. See `STATE.md`
//! and `docs/ARCHITECTURE.md`.

pub mod ban;
pub mod catalogue;
pub mod choker;
pub mod conn;
pub mod machine;
pub mod mirror_rules;
pub mod picker;
pub mod rate;
pub mod shared;
pub mod torrent;
pub mod wire;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;

use crate::assembly::{Download, Downloads, Failure};
use crate::discovery::{self, Discovery, DiscoveryStatus};
use crate::mirror::Mirror;
use crate::registry::{Registered, Registry};
use crate::stats::Stats;
use crate::store::Store;
use crate::types::{InfoHash, PieceIndex};
pub use shared::{Ctx, SwarmConfig};
use torrent::{Ev, Handle};
pub use torrent::{PeerStatus, TorrentStatus};

/// The swarm as `/status.json` shows it.
#[derive(Clone, Debug, serde::Serialize)]
pub struct SwarmStatus {
    pub peer_addr: String,
    pub peer_id: String,
    pub connections: usize,
    pub bans_active: usize,
    pub discovery: Option<DiscoveryStatus>,
}

/// The swarm: a task per dt2 swarm id, the listener, discovery.
pub struct Swarm {
    ctx: Arc<Ctx>,
    /// Tasks by swarm id, with the index versions last handed to each.
    torrents: Mutex<HashMap<InfoHash, Handle>>,
    versions: Mutex<HashMap<InfoHash, Vec<InfoHash>>>,
    downloads: Arc<Downloads>,
}

/// One piece of content: its SHA-256, size and store path.
#[derive(Clone, Debug)]
pub struct Content {
    pub sha256: [u8; 32],
    pub size: u64,
    pub path: String,
}

/// Options to start the swarm.
pub struct Start {
    pub cfg: SwarmConfig,
    pub peer_addr: SocketAddr,
    /// `None`: no BitTorrent at all (the mirror only).
    pub enabled: bool,
    pub discovery: Option<discovery::Config>,
    pub store: Arc<Store>,
    pub stats: Arc<Stats>,
    pub mirror: Arc<Mirror>,
    pub hold_whole: u64,
}

/// A fresh peer id: client prefix (Azureus style) and random bytes.
fn new_peer_id() -> [u8; 20] {
    let mut id = [0u8; 20];
    let prefix = b"-DT0100-";
    id[..prefix.len()].copy_from_slice(prefix);
    for b in &mut id[prefix.len()..] {
        *b = fastrand::alphanumeric() as u8;
    }
    id
}

/// A TCP listener on `[::]:port` that takes IPv6 only (`IPV6_V6ONLY`), so
/// it can sit beside the IPv4 listener on the same port whatever the
/// host's `net.ipv6.bindv6only`.
fn listen_v6_only(port: u16) -> std::io::Result<TcpListener> {
    use rustix::net::{sockopt, AddressFamily, SocketType};
    let fd = rustix::net::socket(AddressFamily::INET6, SocketType::STREAM, None)?;
    sockopt::set_ipv6_v6only(&fd, true)?;
    sockopt::set_socket_reuseaddr(&fd, true)?;
    let addr = std::net::SocketAddrV6::new(std::net::Ipv6Addr::UNSPECIFIED, port, 0, 0);
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, 1024)?;
    let l = std::net::TcpListener::from(fd);
    l.set_nonblocking(true)?;
    TcpListener::from_std(l)
}

impl Swarm {
    /// Binds the peer port, starts discovery, and follows the registry:
    /// a task per registered torrent.
    pub async fn start(opts: Start, registry: Arc<Registry>) -> anyhow::Result<Arc<Swarm>> {
        let peer_id = new_peer_id();
        let (listener, peer_addr) = if opts.enabled {
            let l = TcpListener::bind(opts.peer_addr).await.map_err(|e| {
                anyhow::anyhow!("cannot listen for peers on {}: {e}", opts.peer_addr)
            })?;
            let a = l.local_addr()?;
            (Some(l), a)
        } else {
            (None, opts.peer_addr)
        };
        // `0.0.0.0:PORT` (the default) means every address: IPv6 peers too,
        // on the same port, through a second, IPv6-only socket.
        let listener6 = match (&listener, peer_addr) {
            (Some(_), SocketAddr::V4(a)) if a.ip().is_unspecified() => {
                match listen_v6_only(a.port()) {
                    Ok(l) => Some(l),
                    Err(e) => {
                        tracing::info!(port = a.port(), error = %e, "no IPv6 peer listener (IPv6 off on this host?); IPv4 only");
                        None
                    }
                }
            }
            _ => None,
        };
        let (disc_tx, mut disc_rx) = mpsc::channel(1024);
        let disc_cfg = match (&opts.discovery, opts.enabled) {
            (Some(cfg), true) => {
                let mut cfg = cfg.clone();
                cfg.peer_addr = peer_addr;
                cfg.peer_id = peer_id;
                Some(cfg)
            }
            _ => None,
        };
        let discovery_on = disc_cfg.is_some();
        let ctx = Arc::new(Ctx::new(
            opts.cfg,
            peer_id,
            peer_addr,
            opts.store.clone(),
            opts.stats,
            opts.mirror,
            discovery_on,
        ));
        let swarm = Arc::new(Swarm {
            ctx,
            torrents: Mutex::new(HashMap::new()),
            versions: Mutex::new(HashMap::new()),
            downloads: Arc::new(Downloads::new(opts.store, opts.hold_whole)),
        });
        if opts.enabled {
            match listener6.as_ref().and_then(|l| l.local_addr().ok()) {
                Some(a6) => tracing::info!(addr = %peer_addr, also = %a6, "listening for peers"),
                None => tracing::info!(addr = %peer_addr, "listening for peers"),
            }
        }
        // Follow the registry.
        let (s2, reg2) = (swarm.clone(), registry.clone());
        tokio::spawn(async move {
            let mut rx = reg2.subscribe();
            loop {
                s2.sync(&reg2);
                if rx.changed().await.is_err() {
                    break;
                }
            }
        });
        // Discovery starts in the background; torrents registered meanwhile
        // are told when it is there.
        if let Some(cfg) = disc_cfg {
            let s5 = swarm.clone();
            tokio::spawn(async move {
                match Discovery::start(cfg, disc_tx).await {
                    Ok(d) => {
                        s5.ctx.set_discovery(Arc::new(d));
                        let handles: Vec<Handle> = s5
                            .torrents
                            .lock()
                            .map(|m| m.values().cloned().collect())
                            .unwrap_or_default();
                        for h in handles {
                            let _ = h.tx.send(Ev::DiscoveryReady).await;
                        }
                    }
                    Err(e) => {
                        tracing::error!(error = %e, "peer discovery is off: it could not start")
                    }
                }
            });
        }
        // Route discovery results to their torrent.
        let s3 = swarm.clone();
        tokio::spawn(async move {
            while let Some(ev) = disc_rx.recv().await {
                let (ih, ev) = match ev {
                    discovery::Event::Peer {
                        info_hash,
                        addr,
                        source,
                    } => (info_hash, Ev::Found(addr, source)),
                    discovery::Event::LookupDone { info_hash } => (info_hash, Ev::LookupDone),
                };
                if let Some(h) = s3.handle(&ih) {
                    let _ = h.tx.send(ev).await;
                }
            }
        });
        for l in listener.into_iter().chain(listener6) {
            let s4 = swarm.clone();
            tokio::spawn(async move { s4.accept_loop(l).await });
        }
        Ok(swarm)
    }

    fn handle(&self, ih: &InfoHash) -> Option<Handle> {
        self.torrents.lock().ok()?.get(ih).cloned()
    }

    /// Groups the registered indexes by swarm: a task per swarm, told
    /// about new index versions. A swarm whose indexes are all gone keeps
    /// its task (it still serves what the store holds of it) until the
    /// daemon stops.
    fn sync(&self, registry: &Registry) {
        let mut groups: HashMap<InfoHash, Vec<Arc<Registered>>> = HashMap::new();
        for r in registry.all() {
            groups.entry(r.swarm_key()).or_default().push(r);
        }
        let Ok(mut map) = self.torrents.lock() else {
            return;
        };
        let Ok(mut versions) = self.versions.lock() else {
            return;
        };
        for (id, mut regs) in groups {
            regs.sort_by(|a, b| a.index_path.cmp(&b.index_path));
            let mut now: Vec<InfoHash> = regs.iter().map(|r| r.torrent.info_hash()).collect();
            now.sort_unstable();
            match map.get(&id) {
                Some(h) => {
                    // A full queue drops the update; it is tried again at
                    // the next registration.
                    if versions.get(&id) != Some(&now) && h.tx.try_send(Ev::Indexes(regs)).is_ok() {
                        versions.insert(id, now);
                    }
                }
                None => {
                    map.insert(id, torrent::start(id, regs, self.ctx.clone()));
                    versions.insert(id, now);
                }
            }
        }
        self.ctx.set_swarms(map.len());
    }

    async fn accept_loop(self: Arc<Self>, l: TcpListener) {
        loop {
            let (mut s, addr) = match l.accept().await {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(error = %e, "peer accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            };
            // A dual-stack `[::]` listener reports IPv4 peers as
            // `::ffff:a.b.c.d`; limits, bans and PEX want the plain form.
            let addr = SocketAddr::new(addr.ip().to_canonical(), addr.port());
            if !self.ctx.acquire_conn_evicting(addr.ip()) {
                tracing::debug!(peer = %addr, "refused: banned or over the connection limits");
                continue;
            }
            let this = self.clone();
            // While its handshake is read, the connection may give its
            // slot up to a newcomer (`Ctx::acquire_conn_evicting`).
            let (id, kill) = self.ctx.handshake_started(addr.ip());
            tokio::spawn(async move {
                let read = tokio::select! {
                    r = conn::read_handshake(&mut s) => Some(r),
                    _ = kill.notified() => None,
                };
                // Evicted (its slot already given to another): gone.
                if !this.ctx.handshake_over(id) {
                    tracing::debug!(peer = %addr, "slow handshake evicted for a new connection");
                    return;
                }
                let Some(read) = read else {
                    this.ctx.release_conn(addr.ip());
                    return;
                };
                match read {
                    Ok(hs) => match this.handle(&hs.info_hash) {
                        Some(h) => {
                            if h.tx.send(Ev::Incoming(s, addr, hs)).await.is_ok() {
                                return;
                            }
                        }
                        None => {
                            tracing::debug!(peer = %addr, "handshake for a swarm we are not in")
                        }
                    },
                    Err(e) => tracing::debug!(peer = %addr, error = %e, "bad handshake"),
                }
                this.ctx.release_conn(addr.ip());
            });
        }
    }

    /// The task of swarm `id`, started (with `initial`) if there is none.
    fn task(&self, id: InfoHash, initial: Vec<Arc<Registered>>) -> Handle {
        // Looked up and started under the lock: two callers at once must
        // not start two tasks for one swarm (the loser would run forever,
        // never told to stop).
        let mut m = match self.torrents.lock() {
            Ok(m) => m,
            Err(e) => e.into_inner(),
        };
        let h = m
            .entry(id)
            .or_insert_with(|| torrent::start(id, initial, self.ctx.clone()))
            .clone();
        self.ctx.set_swarms(m.len());
        h
    }

    /// The download of piece `index` of `reg` (joined if it is in flight),
    /// for the pool file at `url`. Its swarm's task fetches it by content,
    /// from any peer of the swarm that holds the same SHA-256.
    pub async fn fetch(
        &self,
        reg: &Arc<Registered>,
        index: PieceIndex,
        url: String,
    ) -> Result<Arc<Download>, Failure> {
        let p = reg.torrent.piece(index).ok_or(Failure::Local)?;
        let c = Content {
            sha256: *p.sha256,
            size: p.size,
            path: p.path.to_string(),
        };
        self.fetch_content(reg.swarm_key(), vec![reg.clone()], c, url)
            .await
    }

    /// The download of `content` (joined if it is in flight) in swarm
    /// `id`, with the mirror at `url` as the fallback: a pool file, or an
    /// index file that its suite's InRelease lists.
    pub async fn fetch_content(
        &self,
        id: InfoHash,
        initial: Vec<Arc<Registered>>,
        content: Content,
        url: String,
    ) -> Result<Arc<Download>, Failure> {
        let (dl, created) =
            self.downloads
                .get_or_create(&content.path, content.sha256, content.size)?;
        if created {
            let h = self.task(id, initial);
            let want = Ev::Want {
                sha256: content.sha256,
                size: content.size,
                path: content.path,
                dl: dl.clone(),
                url,
            };
            if h.tx.send(want).await.is_err() {
                dl.fail(Failure::Local);
            }
        }
        Ok(dl)
    }

    /// `content`, verified and in the store now (an index file apt got from
    /// the mirror), joins what swarm `id` holds and announces.
    pub async fn offer(&self, id: InfoHash, content: Content) {
        let h = self.task(id, Vec::new());
        let _ = h.tx.send(Ev::Offer(content)).await;
    }

    /// After a restart: what the store holds is announced again in the
    /// swarm it was shared in (`shared`: path, swarm id), whether or not a
    /// current index still lists it (issue 11: older files stay shared for
    /// as long as they are in the store).
    pub async fn restore(&self, shared: Vec<(String, [u8; 20])>, store: &Store) {
        let mut n = 0;
        for (path, id) in shared {
            let Some(meta) = store.get_any(&path) else {
                continue;
            };
            let c = Content {
                sha256: meta.sha256,
                size: meta.size,
                path,
            };
            self.offer(InfoHash(id), c).await;
            n += 1;
        }
        if n > 0 {
            tracing::info!(pieces = n, "stored pieces shared again in their swarms");
        }
    }

    /// Per swarm (by its id): peers, discovery, bytes (for `/status.json`).
    pub fn torrent_status(&self, swarm: &InfoHash) -> Option<TorrentStatus> {
        self.handle(swarm).map(|h| h.status())
    }

    /// Every swarm task's status, by swarm id.
    pub fn swarms(&self) -> Vec<(InfoHash, TorrentStatus)> {
        let handles: Vec<(InfoHash, Handle)> = self
            .torrents
            .lock()
            .map(|m| m.iter().map(|(k, h)| (*k, h.clone())).collect())
            .unwrap_or_default();
        let mut v: Vec<(InfoHash, TorrentStatus)> =
            handles.into_iter().map(|(k, h)| (k, h.status())).collect();
        v.sort_by_key(|(k, _)| *k);
        v
    }

    /// Swarm-wide status.
    pub fn status(&self) -> SwarmStatus {
        SwarmStatus {
            peer_addr: self.ctx.peer_addr.to_string(),
            peer_id: String::from_utf8_lossy(&self.ctx.peer_id).into_owned(),
            connections: self.ctx.connections(),
            bans_active: self.ctx.bans_active(),
            discovery: self.ctx.discovery().map(|d| d.status()),
        }
    }

    /// Bytes uploaded over every torrent.
    pub fn uploaded(&self) -> u64 {
        self.torrents
            .lock()
            .map(|m| m.values().map(Handle::uploaded).sum())
            .unwrap_or(0)
    }

    /// Stops every torrent task (each closes its peer connections and
    /// fails what apt still waits for), then discovery (DHT table saved,
    /// trackers told `stopped`), within about [`discovery::SHUTDOWN_BUDGET`]
    /// plus a second.
    pub async fn shutdown(&self) {
        let handles: Vec<Handle> = self
            .torrents
            .lock()
            .map(|mut m| m.drain().map(|(_, h)| h).collect())
            .unwrap_or_default();
        for h in &handles {
            let _ = h.tx.try_send(Ev::Stop);
        }
        let all_ended = async {
            for h in &handles {
                h.ended(Duration::from_secs(1)).await;
            }
        };
        let _ = tokio::time::timeout(Duration::from_secs(1), all_ended).await;
        if let Some(d) = self.ctx.discovery() {
            d.shutdown().await;
        }
    }
}
