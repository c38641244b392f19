//! The BitTorrent DHT through `mainline` 8 (see docs/swarm-design.md §2 for
//! the measurements behind every choice here).
//!
//! - Server mode whenever a bootstrap list is given: a private DHT does not
//!   form otherwise (M3).
//! - Our own bootstrap list always: the crate's default also holds a node
//!   that is not a BitTorrent router. Names are resolved here, with a time
//!   limit, so the crate's blocking resolver never runs.
//! - The routing table is saved (`to_bootstrap()`) only after
//!   `bootstrapped()` has returned: a table saved earlier is empty (M5).
//!   A seed node (`dht_bootstrap = Some(vec![])`) does not load the saved
//!   table: any bootstrap node turns off the crate's rule that lets the
//!   first node of a network learn the nodes that query it.
//! - IPv4 only (the crate's limit).

use crate::types::InfoHash;
use std::collections::HashSet;
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use mainline::async_dht::AsyncDht;
use mainline::{Dht, Id, RequestFilter, RequestSpecific, ServerSettings};
use tokio::time::Instant;

use super::{Config, Emitter, Origin};

/// Routers used when no bootstrap list is configured.
pub const PUBLIC_ROUTERS: [&str; 3] = [
    "router.bittorrent.com:6881",
    "dht.transmissionbt.com:6881",
    "dht.libtorrent.org:25401",
];
/// Per-request KRPC timeout (the crate's default is 2 s).
pub const REQUEST_TIMEOUT: Duration = Duration::from_millis(1500);
/// A lookup's time limit.
pub const LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// A torrent is announced again this often.
pub const ANNOUNCE_EVERY: Duration = Duration::from_secs(15 * 60);
/// The routing table is saved this often.
pub const SAVE_EVERY: Duration = Duration::from_secs(10 * 60);
/// Most saved nodes read back at start.
pub(crate) const MAX_SAVED: usize = 500;
const RESOLVE_TIMEOUT: Duration = Duration::from_secs(5);

/// The wait before retrying a failed announce (`failures` ≥ 1): every
/// second for the first 10 tries, then doubling from 2 s, at most 5 min.
/// A node that has just started often has an empty table for a moment, and
/// the first node of a private DHT has one until the others join: its
/// announce should land as soon as they do, since the others look it up
/// when their apt asks for a package.
pub fn announce_retry(failures: u32) -> Duration {
    if failures <= 10 {
        return Duration::from_secs(1);
    }
    Duration::from_secs(2u64 << (failures - 11).min(8)).min(Duration::from_secs(300))
}

/// Whether the early announces (10 s and 70 s after the first) are worth
/// their cost: only while the table is small (a new or tiny DHT, where the
/// first announce may have found nobody close) or has grown by half since
/// the last announce (the closest nodes have likely changed). In a settled
/// DHT they only repeat a walk, which in a fleet of 100 on one swarm costs
/// every node kilobytes (issue 12's DHT budget is 300 B/s per node).
pub fn reannounce_early(nodes_then: usize, nodes_now: usize) -> bool {
    nodes_then < EARLY_REANNOUNCE_BELOW || nodes_now >= nodes_then + nodes_then / 2
}

/// A table smaller than this is a new or tiny DHT (see [`reannounce_early`]).
pub const EARLY_REANNOUNCE_BELOW: usize = 8;

/// How often the node count is refreshed while the bootstrap runs.
const BOOTSTRAP_POLL: Duration = Duration::from_millis(100);

#[derive(Default)]
struct State {
    nodes: AtomicUsize,
    /// `bootstrapped()` has returned (successfully or not).
    bootstrap_done: AtomicBool,
    /// The routing table has held nodes.
    bootstrapped: AtomicBool,
    announced: Mutex<HashSet<InfoHash>>,
}

pub(crate) struct DhtNode {
    dht: AsyncDht,
    port: u16,
    state: State,
    save_path: PathBuf,
    watch: AnnounceWatch,
}

/// Read a saved routing table: one `ip:port` a line (IPv4 for mainline,
/// either family for the public DHT); bad lines skipped.
pub fn load_nodes<A: std::str::FromStr>(path: &Path) -> Vec<A> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Vec::new();
    };
    text.lines()
        .filter_map(|l| l.trim().parse().ok())
        .take(MAX_SAVED)
        .collect()
}

/// Writes a routing table (one address a line) atomically: to a temporary
/// file, then renamed over `path`.
pub(crate) async fn save_nodes(path: &Path, nodes: &[String]) -> std::io::Result<()> {
    let mut text = nodes.join("\n");
    text.push('\n');
    let tmp = path.with_extension("tmp");
    tokio::fs::write(&tmp, text).await?;
    tokio::fs::rename(&tmp, path).await
}

/// Resolve `host:port` names to IPv4 addresses, each within
/// [`RESOLVE_TIMEOUT`]; names that fail are logged and dropped.
async fn resolve(names: &[String]) -> Vec<SocketAddrV4> {
    let mut set = tokio::task::JoinSet::new();
    for (i, name) in names.iter().enumerate() {
        let name = name.clone();
        set.spawn(async move {
            if let Ok(a) = name.parse::<SocketAddrV4>() {
                return (i, vec![a]);
            }
            let r = tokio::time::timeout(RESOLVE_TIMEOUT, tokio::net::lookup_host(name.as_str()));
            let addrs: Vec<SocketAddrV4> = match r.await {
                Ok(Ok(it)) => it
                    .filter_map(|a| match a {
                        SocketAddr::V4(a) => Some(a),
                        SocketAddr::V6(_) => None,
                    })
                    .collect(),
                Ok(Err(e)) => {
                    tracing::warn!(node = %name, error = %e, "DHT bootstrap node does not resolve");
                    Vec::new()
                }
                Err(_) => {
                    tracing::warn!(node = %name, "DHT bootstrap node: name lookup timed out");
                    Vec::new()
                }
            };
            (i, addrs)
        });
    }
    let mut out: Vec<(usize, Vec<SocketAddrV4>)> = Vec::new();
    while let Some(r) = set.join_next().await {
        out.extend(r.ok());
    }
    out.sort_by_key(|(i, _)| *i);
    let mut seen = HashSet::new();
    out.into_iter()
        .flat_map(|(_, a)| a)
        .filter(|a| seen.insert(*a))
        .collect()
}

impl DhtNode {
    /// Start the node; `Ok(None)` when the DHT is off or cannot run here
    /// (IPv6). Only a failed bind is an error.
    pub(crate) async fn start(
        cfg: &Config,
        events: tokio::sync::mpsc::Sender<super::Event>,
    ) -> anyhow::Result<Option<Arc<DhtNode>>> {
        if !cfg.dht {
            return Ok(None);
        }
        let SocketAddr::V4(bind) = cfg.peer_addr else {
            tracing::warn!(peer_addr = %cfg.peer_addr, "DHT disabled: the mainline crate is IPv4 only");
            return Ok(None);
        };
        let seed_node = cfg.dht_bootstrap.as_ref().is_some_and(|l| l.is_empty());
        let names: Vec<String> = match &cfg.dht_bootstrap {
            None => PUBLIC_ROUTERS.iter().map(|s| s.to_string()).collect(),
            Some(l) => l.clone(),
        };
        let mut nodes = resolve(&names).await;
        if !names.is_empty() && nodes.is_empty() {
            tracing::warn!(
                ?names,
                "no DHT bootstrap node resolved; the DHT starts with only the saved table"
            );
        }
        if !seed_node {
            for a in load_nodes(&cfg.dht_state) {
                if !nodes.contains(&a) && a != bind {
                    nodes.push(a);
                }
            }
        }
        let server = cfg.dht_bootstrap.is_some();
        let (ip, port) = (*bind.ip(), bind.port());
        let list: Vec<String> = nodes.iter().map(|a| a.to_string()).collect();
        tracing::info!(%bind, bootstrap = list.len(), server, "starting the DHT");
        let watch = AnnounceWatch {
            events: Some(events),
            own: cfg.peer_addr,
            ..AnnounceWatch::default()
        };
        let w2 = watch.clone();
        let dht = tokio::task::spawn_blocking(move || build(ip, port, server, &list, w2))
            .await?
            .map_err(|e| anyhow::anyhow!("DHT: cannot bind UDP {bind}: {e}"))?;
        Ok(Some(Arc::new(DhtNode {
            dht: dht.as_async(),
            port,
            state: State::default(),
            save_path: cfg.dht_state.clone(),
            watch,
        })))
    }

    /// Wait for the bootstrap, then keep the node count fresh and save the
    /// table every [`SAVE_EVERY`]. Runs until aborted.
    pub(crate) async fn maintain(self: Arc<Self>, seed_node: bool) {
        // `bootstrapped()` returns when the crate's find_node walk is over,
        // which in a small DHT can take seconds after the first node has
        // answered. The node count is what `Discovery::alone` reads, so it
        // is refreshed every 100 ms meanwhile: a node that has reached
        // anybody never counts as alone.
        let boot = tokio::time::timeout(Duration::from_secs(60), self.dht.bootstrapped());
        tokio::pin!(boot);
        let ok = loop {
            tokio::select! {
                r = &mut boot => break r.unwrap_or(false),
                () = tokio::time::sleep(BOOTSTRAP_POLL) => {
                    self.refresh().await;
                }
            }
        };
        self.state.bootstrap_done.store(true, Ordering::Relaxed);
        self.state.bootstrapped.store(ok, Ordering::Relaxed);
        if ok {
            tracing::info!("DHT bootstrapped");
        } else if !seed_node {
            tracing::warn!("DHT could not bootstrap; lookups use whatever table it gets");
        }
        let mut last_save = Instant::now();
        loop {
            let n = self.refresh().await;
            if n > 0 && last_save.elapsed() >= SAVE_EVERY {
                self.save().await;
                last_save = Instant::now();
            }
            tokio::time::sleep(Duration::from_secs(5)).await;
        }
    }

    /// Update the node count; returns it.
    async fn refresh(&self) -> usize {
        let n = self.dht.to_bootstrap().await.len();
        self.state.nodes.store(n, Ordering::Relaxed);
        if n > 0 {
            self.state.bootstrapped.store(true, Ordering::Relaxed);
        }
        n
    }

    /// Save the routing table (atomically), unless the bootstrap has not
    /// finished yet or the table is empty (that would erase a good file).
    pub(crate) async fn save(&self) {
        if !self.state.bootstrap_done.load(Ordering::Relaxed) {
            return;
        }
        let nodes = self.dht.to_bootstrap().await;
        if nodes.is_empty() {
            return;
        }
        match save_nodes(&self.save_path, &nodes).await {
            Ok(()) => {
                tracing::debug!(nodes = nodes.len(), path = %self.save_path.display(), "DHT table saved")
            }
            Err(e) => {
                tracing::warn!(error = %e, path = %self.save_path.display(), "cannot save the DHT table")
            }
        }
    }

    /// Announce `ih` now and every [`ANNOUNCE_EVERY`] until aborted.
    pub(crate) async fn announce_loop(self: Arc<Self>, ih: InfoHash) {
        // 20 bytes always make an id; nothing to do if the crate disagrees.
        let Ok(id) = Id::from_bytes(ih.0) else { return };
        self.watch.set_ours(ih, true);
        let mut failures = 0u32;
        let mut announced = 0u32;
        // The table's size at the last announce that landed.
        let mut nodes_then = 0usize;
        loop {
            if (1..=2).contains(&announced) && failures == 0 {
                let now = self.state.nodes.load(Ordering::Relaxed);
                if !reannounce_early(nodes_then, now) {
                    // The closest nodes have not changed much: the next
                    // announce is the periodic one.
                    announced = 2;
                    tokio::time::sleep(ANNOUNCE_EVERY).await;
                }
            }
            let r = tokio::time::timeout(
                Duration::from_secs(60),
                self.dht.announce_peer(id, Some(self.port)),
            )
            .await;
            let wait = match r {
                Ok(Ok(_)) => {
                    failures = 0;
                    announced += 1;
                    nodes_then = self.state.nodes.load(Ordering::Relaxed);
                    self.state
                        .announced
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .insert(ih);
                    // Soon again at first: in a small or new DHT the
                    // closest nodes change as nodes join (whether they did
                    // is checked when the time comes, `reannounce_early`).
                    match announced {
                        1 => Duration::from_secs(10),
                        2 => Duration::from_secs(60),
                        _ => ANNOUNCE_EVERY,
                    }
                }
                Ok(Err(e)) => {
                    failures += 1;
                    tracing::debug!(error = %e, failures, "DHT announce failed");
                    announce_retry(failures)
                }
                Err(_) => {
                    failures += 1;
                    tracing::debug!(failures, "DHT announce timed out");
                    announce_retry(failures)
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    pub(crate) fn forget(&self, ih: &InfoHash) {
        self.watch.set_ours(*ih, false);
        self.state
            .announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ih);
    }

    /// `get_peers` until the query ends or [`LOOKUP_TIMEOUT`]; each new
    /// address is sent at once.
    pub(crate) async fn lookup(&self, ih: InfoHash, emit: &Emitter) {
        // 20 bytes always make an id; nothing to do if the crate disagrees.
        let Ok(id) = Id::from_bytes(ih.0) else { return };
        let mut stream = self.dht.get_peers(id);
        let deadline = Instant::now() + LOOKUP_TIMEOUT;
        let mut seen = HashSet::new();
        let mut found = 0usize;
        // Announces made to this very node first (see `AnnounceWatch`).
        for a in self.watch.peers(&ih) {
            if seen.insert(a) {
                found += 1;
                emit.peer(ih, SocketAddr::V4(a), Origin::Dht).await;
            }
        }
        while let Ok(Some(batch)) = tokio::time::timeout_at(deadline, stream.next()).await {
            for a in batch {
                if seen.insert(a) {
                    found += 1;
                    emit.peer(ih, SocketAddr::V4(a), Origin::Dht).await;
                }
            }
        }
        tracing::debug!(found, "DHT lookup done");
    }

    pub(crate) fn status(&self) -> DhtStatus {
        DhtStatus {
            enabled: true,
            nodes: self.state.nodes.load(Ordering::Relaxed),
            bootstrapped: self.state.bootstrapped.load(Ordering::Relaxed),
            announced: self
                .state
                .announced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len(),
            implementation: "mainline",
            nodes_v6: 0,
            listen: None,
        }
    }
}

/// The DHT node in `/status.json`.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct DhtStatus {
    pub enabled: bool,
    pub nodes: usize,
    pub bootstrapped: bool,
    /// Torrents we announce.
    pub announced: usize,
    /// The crate that runs the node: `mainline` or `librqbit-dht` (empty
    /// when the DHT is off).
    pub implementation: &'static str,
    /// Nodes in the IPv6 table (`librqbit-dht` only).
    pub nodes_v6: usize,
    /// The UDP address the node is bound to, when it differs from the peer
    /// address (`librqbit-dht` binds `[::]` for `0.0.0.0`).
    pub listen: Option<SocketAddr>,
}

/// Announces other nodes made to *this* node, by info hash.
///
/// Why: a DHT node never queries itself, so an announce stored only here
/// (in a private DHT of two or three nodes, the usual case is that the
/// closest node to an info hash is the one looking it up) would never be
/// found by our own lookups. mainline 8.0.1 offers no read access to its
/// peer store; its request filter sees every incoming request, so we keep
/// our own copy from there. Bounded: 2,000 info hashes, 50 addresses each,
/// entries older than 30 min ignored. The requests are seen before the
/// crate checks their token, so an entry is only a candidate to dial, which
/// the BitTorrent handshake then checks, never trusted data.
#[derive(Clone, Debug)]
pub(crate) struct AnnounceWatch {
    seen: Arc<Mutex<Announced>>,
    /// Torrents we announce: a node asking for one of them is a peer that
    /// wants it (see `looker`).
    ours: Arc<Mutex<HashSet<InfoHash>>>,
    /// Lookers already reported, with when (at most once a minute each).
    told: Arc<Mutex<Told>>,
    events: Option<tokio::sync::mpsc::Sender<super::Event>>,
    own: SocketAddr,
}

type Told = std::collections::HashMap<(InfoHash, SocketAddrV4), Instant>;

impl Default for AnnounceWatch {
    fn default() -> Self {
        AnnounceWatch {
            seen: Arc::default(),
            ours: Arc::default(),
            told: Arc::default(),
            events: None,
            own: SocketAddr::from(([0, 0, 0, 0], 0)),
        }
    }
}

/// Per info hash: who announced it to us, and when.
type Announced = std::collections::HashMap<InfoHash, Vec<(SocketAddrV4, Instant)>>;

const WATCH_TTL: Duration = Duration::from_secs(30 * 60);

impl AnnounceWatch {
    fn record(&self, ih: InfoHash, addr: SocketAddrV4) {
        let mut m = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        if m.len() >= 2000 && !m.contains_key(&ih) {
            let now = Instant::now();
            m.retain(|_, v| v.iter().any(|(_, t)| now.duration_since(*t) < WATCH_TTL));
            if m.len() >= 2000 {
                return;
            }
        }
        let v = m.entry(ih).or_default();
        v.retain(|(a, _)| *a != addr);
        if v.len() >= 50 {
            v.remove(0);
        }
        v.push((addr, Instant::now()));
    }

    /// Addresses announced to us for `ih` in the last 30 min.
    pub(crate) fn peers(&self, ih: &InfoHash) -> Vec<SocketAddrV4> {
        let m = self.seen.lock().unwrap_or_else(|e| e.into_inner());
        let now = Instant::now();
        m.get(ih)
            .map(|v| {
                v.iter()
                    .filter(|(_, t)| now.duration_since(*t) < WATCH_TTL)
                    .map(|(a, _)| *a)
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// `(info_hash, port, implied_port)` of an `announce_peer` request, read
/// from the request's `Debug` text: the crate exports neither the request
/// enum nor the announce arguments, only their `Debug` (see
/// [`AnnounceWatch`]). Anything unexpected gives `None`.
pub(crate) fn parse_announce(debug: &str) -> Option<(InfoHash, u16, bool)> {
    let rest = debug.split_once("AnnouncePeer(")?.1;
    let hex = rest.split_once("info_hash: Id(")?.1.get(..40)?;
    let ih = crate::discovery::unhex20(hex)?;
    let port: u16 = rest
        .split_once("port: ")?
        .1
        .split(|c: char| !c.is_ascii_digit())
        .next()?
        .parse()
        .ok()?;
    let implied = rest
        .split_once("implied_port: ")
        .is_some_and(|(_, r)| r.starts_with("Some(true)"));
    Some((ih, port, implied))
}

/// The info hash of a `get_peers` request, from its `Debug` text.
pub(crate) fn parse_get_peers(debug: &str) -> Option<InfoHash> {
    let rest = debug.split_once("GetPeers(")?.1;
    let hex = rest.split_once("info_hash: Id(")?.1.get(..40)?;
    crate::discovery::unhex20(hex)
}

impl AnnounceWatch {
    /// Marks a torrent as ours (announced) or not.
    pub(crate) fn set_ours(&self, ih: InfoHash, ours: bool) {
        let mut s = self.ours.lock().unwrap_or_else(|e| e.into_inner());
        if ours {
            s.insert(ih);
        } else {
            s.remove(&ih);
        }
    }

    /// A node looked up a torrent we announce: in a debtorrent swarm its
    /// DHT port is its peer port (as libtorrent's is by default), so it is
    /// reported as a peer to dial. This is what lets the first daemon of a
    /// private DHT find the second at once: the second's lookup reaches
    /// the first, whose own announce is stored nowhere yet.
    fn looker(&self, ih: InfoHash, from: SocketAddrV4) {
        if SocketAddr::V4(from) == self.own
            || !self
                .ours
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .contains(&ih)
        {
            return;
        }
        {
            let mut told = self.told.lock().unwrap_or_else(|e| e.into_inner());
            let now = Instant::now();
            if told
                .get(&(ih, from))
                .is_some_and(|t| now.duration_since(*t) < Duration::from_secs(60))
            {
                return;
            }
            if told.len() >= 10_000 {
                told.retain(|_, t| now.duration_since(*t) < Duration::from_secs(60));
            }
            told.insert((ih, from), now);
        }
        if let Some(tx) = &self.events {
            let _ = tx.try_send(super::Event::Peer {
                info_hash: ih,
                addr: SocketAddr::V4(from),
                source: Origin::Dht,
            });
        }
    }
}

impl RequestFilter for AnnounceWatch {
    fn allow_request(&self, request: &RequestSpecific, from: SocketAddrV4) -> bool {
        let text = format!("{request:?}");
        if let Some((ih, port, implied)) = parse_announce(&text) {
            let port = if implied || port == 0 {
                from.port()
            } else {
                port
            };
            self.record(ih, SocketAddrV4::new(*from.ip(), port));
        } else if let Some(ih) = parse_get_peers(&text) {
            self.looker(ih, from);
        }
        true
    }
}

fn build(
    ip: Ipv4Addr,
    port: u16,
    server: bool,
    bootstrap: &[String],
    watch: AnnounceWatch,
) -> std::io::Result<Dht> {
    let mut b = Dht::builder();
    b.bind_address(ip)
        .port(port)
        .request_timeout(REQUEST_TIMEOUT)
        .server_settings(ServerSettings {
            filter: Box::new(watch),
            ..ServerSettings::default()
        });
    if server {
        b.server_mode();
    }
    if bootstrap.is_empty() {
        b.no_bootstrap();
    } else {
        // Only IP:port strings here: nothing for the crate to resolve.
        b.bootstrap(bootstrap);
    }
    b.build()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn early_reannounce_only_while_the_table_changes() {
        for (then, now, want) in [
            (0, 0, true),
            (3, 3, true),
            (7, 30, true),
            (8, 8, false),
            (8, 11, false),
            (8, 12, true),
            (25, 30, false),
            (25, 38, true),
            (25, 10, false),
        ] {
            assert_eq!(reannounce_early(then, now), want, "{then} -> {now}");
        }
    }

    #[test]
    fn announce_requests_are_read_from_their_debug_text() {
        let ih = "0102030405060708090a0b0c0d0e0f1011121314";
        let text = |port: &str, implied: &str| {
            format!("RequestSpecific {{ requester_id: Id(aa), request_type: Put(PutRequest {{ token: [1, 2], put_request_type: AnnouncePeer(AnnouncePeerRequestArguments {{ info_hash: Id({ih}), port: {port}, implied_port: {implied} }}) }}) }}")
        };
        let want = InfoHash(std::array::from_fn(|i| i as u8 + 1));
        assert_eq!(
            parse_announce(&text("41000", "None")),
            Some((want, 41000, false))
        );
        assert_eq!(
            parse_announce(&text("0", "Some(true)")),
            Some((want, 0, true))
        );
        assert_eq!(
            parse_announce(&text("99999", "None")),
            None,
            "port out of range"
        );
        assert_eq!(
            parse_announce("RequestSpecific { request_type: Ping }"),
            None
        );
        assert_eq!(parse_announce("AnnouncePeer(x info_hash: Id(zz"), None);
        let w = AnnounceWatch::default();
        let a = SocketAddrV4::new(Ipv4Addr::new(127, 0, 0, 9), 7);
        w.record(want, a);
        w.record(want, a);
        assert_eq!(w.peers(&want), vec![a]);
        assert!(w.peers(&InfoHash([0; 20])).is_empty());
    }

    #[test]
    fn retry_schedule() {
        let r: Vec<u64> = (1..=20).map(|f| announce_retry(f).as_secs()).collect();
        assert_eq!(
            r,
            [1, 1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 4, 8, 16, 32, 64, 128, 256, 300, 300]
        );
    }

    #[test]
    fn saved_table() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dht-nodes");
        assert!(load_nodes::<SocketAddrV4>(&p).is_empty(), "missing file");
        std::fs::write(&p, "1.2.3.4:5\n garbage\n[::1]:6\n 5.6.7.8:9 \n\n").unwrap();
        assert_eq!(
            load_nodes::<SocketAddrV4>(&p),
            vec![
                "1.2.3.4:5".parse::<SocketAddrV4>().unwrap(),
                "5.6.7.8:9".parse().unwrap()
            ]
        );
    }

    #[tokio::test]
    async fn resolve_literals_and_failures() {
        let names = vec![
            "127.0.0.1:9".to_string(),
            "127.0.0.1:9".to_string(),
            "localhost:10".to_string(),
            "[::1]:5".to_string(),
        ];
        let got = resolve(&names).await;
        assert_eq!(got[0], "127.0.0.1:9".parse().unwrap());
        assert!(got.iter().all(|a| a.ip().is_loopback()), "{got:?}");
        assert!(got.len() <= 2, "{got:?}");
    }
}
