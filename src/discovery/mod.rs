//! Peer discovery: the BitTorrent DHT ([`dht`], `mainline` 8), trackers
//! ([`tracker`]) and Local Service Discovery ([`lsd`], BEP 14).
//!
//! [`Discovery`] is the handle the swarm uses. It starts one background
//! task per mechanism and per announced torrent; results come back as
//! [`Event`]s on one channel. Nothing here fails because the outside world
//! is unreachable: only a DHT port that cannot be bound is an error.
//!
//! Invariants:
//! - every [`Discovery::lookup`] call produces exactly one
//!   [`Event::LookupDone`] for its torrent (calls within [`LOOKUP_EVERY`]
//!   of the last lookup share its result instead of starting another);
//! - our own `peer_addr` is never reported as a peer;
//! - every task is aborted when the last handle is dropped, so the DHT's
//!   actor thread ends and its port is freed.

pub mod dht;
mod gate;
pub mod igd;
pub mod lsd;
pub mod public_dht;
pub mod tracker;
pub mod upnp;

use crate::types::InfoHash;
use gate::{Gate, LookupGate};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::Instrument;

/// At most one lookup per torrent this often. Short, because a lookup
/// runs only while apt waits on a piece no connected peer holds, and a
/// lookup that missed a peer (an announce that landed a moment later)
/// would otherwise send every package to the mirror for this long.
pub const LOOKUP_EVERY: Duration = Duration::from_secs(5);
/// Time allowed for [`Discovery::shutdown`].
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(2);
/// Time allowed for the tracker part of a lookup.
const TRACKER_LOOKUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Time allowed for `stopped` after [`Discovery::forget`].
const STOPPED_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a peer address came from (not to be confused with
/// [`crate::types::Source`], where a piece's bytes came from).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    Dht,
    Tracker,
    Lsd,
    Pex,
    /// A connected peer named it as a holder of what we want (`dt_who`).
    Who,
}

#[derive(Clone, Debug)]
pub enum Event {
    /// A peer address for a torrent.
    Peer {
        info_hash: InfoHash,
        addr: SocketAddr,
        source: Origin,
    },
    /// A lookup started by `lookup()` has finished on every mechanism (DHT
    /// query done / timed out, tracker answered / failed).
    LookupDone { info_hash: InfoHash },
}

#[derive(Clone, Debug)]
pub struct Config {
    /// Our TCP listen address; the DHT binds UDP on the same ip:port, and
    /// announces carry this port.
    pub peer_addr: SocketAddr,
    pub dht: bool,
    /// `None`: the public routers; `Some(vec![])`: none (a seed node,
    /// which still answers); `Some(list)`: exactly these (plus the saved
    /// table).
    pub dht_bootstrap: Option<Vec<String>>,
    /// Where the routing table persists (DATA/dht-nodes).
    pub dht_state: std::path::PathBuf,
    /// Which DHT crate runs the node.
    pub dht_impl: DhtImpl,
    pub lsd: bool,
    /// Map the peer port on a UPnP gateway (`None`: off).
    pub upnp: Option<upnp::Config>,
    /// `http://…/announce` or `udp://host:port`.
    pub trackers: Vec<String>,
    pub peer_id: [u8; 20],
}

/// Which crate runs the DHT node (docs/swarm-design.md §2.5).
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    clap::ValueEnum,
    serde::Serialize,
    serde::Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum DhtImpl {
    /// `librqbit` on the public DHT (no `--dht-bootstrap`), `mainline` for
    /// a private one.
    #[default]
    Auto,
    /// `mainline` 8: forms private DHTs of any size; answers only 4-byte
    /// transaction ids; IPv4 only.
    Mainline,
    /// `librqbit-dht` 9: answers any transaction id, IPv4 and IPv6; needs
    /// a network large enough that nodes near every info hash exist.
    Librqbit,
}

impl DhtImpl {
    /// The crate to run, given the bootstrap setting.
    pub fn resolve(self, dht_bootstrap: &Option<Vec<String>>) -> DhtImpl {
        match (self, dht_bootstrap) {
            (DhtImpl::Auto, None) => DhtImpl::Librqbit,
            (DhtImpl::Auto, Some(_)) => DhtImpl::Mainline,
            (other, _) => other,
        }
    }
}

/// The DHT node, whichever crate runs it.
#[derive(Clone)]
enum DhtNode {
    Mainline(Arc<dht::DhtNode>),
    Public(Arc<public_dht::PublicDht>),
}

impl DhtNode {
    async fn start(cfg: &Config, emit: &Emitter) -> anyhow::Result<Option<DhtNode>> {
        if !cfg.dht {
            return Ok(None);
        }
        Ok(match cfg.dht_impl.resolve(&cfg.dht_bootstrap) {
            DhtImpl::Librqbit => Some(DhtNode::Public(
                public_dht::PublicDht::start(cfg, emit.clone()).await?,
            )),
            _ => dht::DhtNode::start(cfg, emit.tx.clone())
                .await?
                .map(DhtNode::Mainline),
        })
    }
    async fn maintain(self, seed: bool) {
        match self {
            DhtNode::Mainline(d) => d.maintain(seed).await,
            DhtNode::Public(d) => d.maintain().await,
        }
    }
    async fn announce_loop(self, ih: InfoHash) {
        match self {
            DhtNode::Mainline(d) => d.announce_loop(ih).await,
            DhtNode::Public(d) => d.announce_loop(ih).await,
        }
    }
    fn forget(&self, ih: &InfoHash) {
        match self {
            DhtNode::Mainline(d) => d.forget(ih),
            DhtNode::Public(d) => d.forget(ih),
        }
    }
    async fn lookup(&self, ih: InfoHash, emit: &Emitter) {
        match self {
            DhtNode::Mainline(d) => d.lookup(ih, emit).await,
            DhtNode::Public(d) => d.lookup(ih).await,
        }
    }
    async fn save(&self) {
        match self {
            DhtNode::Mainline(d) => d.save().await,
            DhtNode::Public(d) => d.save().await,
        }
    }
    fn status(&self) -> dht::DhtStatus {
        match self {
            DhtNode::Mainline(d) => d.status(),
            DhtNode::Public(d) => d.status(),
        }
    }
}

/// Discovery in `/status.json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct DiscoveryStatus {
    pub dht: dht::DhtStatus,
    pub trackers: Vec<tracker::TrackerStatus>,
    pub lsd: bool,
    /// The port mapping behind NAT.
    pub upnp: upnp::UpnpStatus,
}

/// Totals the tracker announce needs, per torrent.
#[derive(Clone, Copy, Debug, Default)]
pub struct Totals {
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
}

/// A 20-byte hash from 40 hex digits.
pub(crate) fn unhex20(s: &str) -> Option<InfoHash> {
    InfoHash::from_hex(s)
}

/// Sends events, dropping our own address and unusable ones.
#[derive(Clone, Debug)]
pub(crate) struct Emitter {
    tx: mpsc::Sender<Event>,
    own: SocketAddr,
    /// Some mechanism has named a peer (any swarm) since the start.
    heard: Arc<AtomicBool>,
}

impl Emitter {
    pub(crate) fn new(tx: mpsc::Sender<Event>, own: SocketAddr) -> Emitter {
        Emitter {
            tx,
            own,
            heard: Arc::default(),
        }
    }
    pub(crate) async fn peer(&self, info_hash: InfoHash, addr: SocketAddr, source: Origin) {
        if addr == self.own || addr.port() == 0 || addr.ip().is_unspecified() {
            return;
        }
        self.heard.store(true, Ordering::Relaxed);
        let _ = self
            .tx
            .send(Event::Peer {
                info_hash,
                addr,
                source,
            })
            .await;
    }
    async fn done(&self, info_hash: InfoHash) {
        let _ = self.tx.send(Event::LookupDone { info_hash }).await;
    }
}

/// What discovery keeps per torrent: whether it is announced, its
/// announce tasks, and the gate that folds concurrent lookups.
#[derive(Default)]
struct Entry {
    announced: bool,
    tasks: Vec<JoinHandle<()>>,
    gate: LookupGate,
}

struct Inner {
    emit: Emitter,
    rt: tokio::runtime::Handle,
    dht: Option<DhtNode>,
    trackers: Arc<tracker::Trackers>,
    lsd: Option<mpsc::UnboundedSender<lsd::Cmd>>,
    upnp: Option<upnp::PortMapper>,
    torrents: Mutex<HashMap<InfoHash, Entry>>,
    background: Mutex<Vec<JoinHandle<()>>>,
    shut: AtomicBool,
    started: std::time::Instant,
    /// The DHT's routing table has had a node.
    dht_reached: AtomicBool,
}

/// How long after the start discovery counts as still setting up (a DHT
/// bootstrap takes a round trip or two) before [`Discovery::alone`] may
/// say that nobody can be reached, and a public-DHT lookup with an empty
/// routing table ends at once.
const SETUP_GRACE_MS: u64 = 500;

impl Drop for Inner {
    fn drop(&mut self) {
        for t in self
            .torrents
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .values()
        {
            t.tasks.iter().for_each(JoinHandle::abort);
        }
        self.background
            .get_mut()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .for_each(JoinHandle::abort);
    }
}

/// The discovery handle. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Discovery {
    inner: Arc<Inner>,
}

impl Discovery {
    /// Starts DHT (if on), tracker and LSD tasks. Never fails because the
    /// public internet is unreachable: a DHT that cannot resolve or
    /// bootstrap logs a warning and still serves lookups on whatever table
    /// it has. A failed bind of the DHT UDP socket is an error (the port is
    /// taken).
    pub async fn start(cfg: Config, events: mpsc::Sender<Event>) -> anyhow::Result<Discovery> {
        let emit = Emitter::new(events, cfg.peer_addr);
        let mut background = Vec::new();
        let dht = DhtNode::start(&cfg, &emit).await?;
        if let Some(d) = &dht {
            let seed = cfg.dht_bootstrap.as_ref().is_some_and(|l| l.is_empty());
            background.push(tokio::spawn(
                d.clone()
                    .maintain(seed)
                    .instrument(tracing::info_span!("dht")),
            ));
        }
        let lsd = if cfg.lsd {
            lsd::start(
                lsd::LsdNet::standard(cfg.peer_addr),
                cfg.peer_addr.port(),
                emit.clone(),
            )
            .map(|(tx, task)| {
                background.push(task);
                tx
            })
        } else {
            None
        };
        let local_ip = Some(cfg.peer_addr.ip()).filter(|ip| !ip.is_unspecified());
        let trackers =
            tracker::Trackers::new(cfg.trackers, cfg.peer_id, cfg.peer_addr.port(), local_ip);
        let upnp = cfg.upnp.map(|u| {
            let t = trackers.clone();
            upnp::PortMapper::start(u, Box::new(move |port| t.set_port(port)))
        });
        Ok(Discovery {
            inner: Arc::new(Inner {
                emit,
                rt: tokio::runtime::Handle::current(),
                dht,
                trackers,
                lsd,
                upnp,
                torrents: Mutex::default(),
                background: Mutex::new(background),
                shut: AtomicBool::new(false),
                started: std::time::Instant::now(),
                dht_reached: AtomicBool::new(false),
            }),
        })
    }

    /// Keep announcing this torrent (DHT at once and every 15 min; tracker
    /// `started` then every interval; LSD every 5 min) until `forget`.
    pub fn announce(&self, info_hash: InfoHash) {
        let i = &self.inner;
        if i.shut.load(Ordering::Relaxed) {
            return;
        }
        let mut torrents = i.torrents.lock().unwrap_or_else(|e| e.into_inner());
        let t = torrents.entry(info_hash).or_default();
        if t.announced {
            return;
        }
        t.announced = true;
        let h = info_hash.to_hex();
        if let Some(d) = &i.dht {
            let span = tracing::info_span!("dht_announce", info_hash = %h);
            t.tasks
                .push(i.rt.spawn(d.clone().announce_loop(info_hash).instrument(span)));
        }
        for u in 0..i.trackers.count() {
            let span = tracing::info_span!("tracker_announce", info_hash = %h, tracker = u);
            let fut = i
                .trackers
                .clone()
                .announce_loop(u, info_hash, i.emit.clone());
            t.tasks.push(i.rt.spawn(fut.instrument(span)));
        }
        if let Some(l) = &i.lsd {
            let _ = l.send(lsd::Cmd::Announce(info_hash));
        }
    }

    /// Stop announcing this torrent; trackers get `stopped`.
    pub fn forget(&self, info_hash: InfoHash) {
        let i = &self.inner;
        {
            let mut torrents = i.torrents.lock().unwrap_or_else(|e| e.into_inner());
            let Some(t) = torrents.get_mut(&info_hash) else {
                return;
            };
            t.announced = false;
            t.tasks.drain(..).for_each(|h| h.abort());
        }
        if let Some(d) = &i.dht {
            d.forget(&info_hash);
        }
        if let Some(l) = &i.lsd {
            let _ = l.send(lsd::Cmd::Forget(info_hash));
        }
        let (tr, emit) = (i.trackers.clone(), i.emit.clone());
        i.rt.spawn(async move {
            let _ = tokio::time::timeout(STOPPED_TIMEOUT, tr.stopped(Some(info_hash), &emit)).await;
        });
    }

    pub fn set_totals(&self, info_hash: InfoHash, t: Totals) {
        self.inner.trackers.set_totals(info_hash, t);
    }

    /// Look for peers now (DHT `get_peers`, tracker announce, LSD
    /// `BT-SEARCH`), at most once per torrent per [`LOOKUP_EVERY`]: a call within that
    /// window gets its `LookupDone` after the running or last lookup.
    /// Results come through the events channel. DHT lookups time out after
    /// 10 s, tracker announces too.
    pub fn lookup(&self, info_hash: InfoHash) {
        let i = &self.inner;
        let gate = if i.shut.load(Ordering::Relaxed) {
            Gate::DoneNow
        } else {
            let mut torrents = i.torrents.lock().unwrap_or_else(|e| e.into_inner());
            torrents
                .entry(info_hash)
                .or_default()
                .gate
                .request(Instant::now())
        };
        match gate {
            Gate::Join => {}
            Gate::DoneNow => {
                let emit = i.emit.clone();
                i.rt.spawn(async move { emit.done(info_hash).await });
            }
            Gate::Start => {
                let span = tracing::info_span!("lookup", info_hash = %info_hash);
                i.rt.spawn(run_lookup(i.clone(), info_hash).instrument(span));
            }
        }
    }

    /// Nobody can be reached: the set-up time is over, the DHT's routing
    /// table has never held a node (its routers are unreachable: an
    /// offline machine, a firewall that drops UDP), no tracker is
    /// configured, and no mechanism (LSD included) has named a single
    /// peer. The swarm then sends apt's requests to the mirror at once
    /// instead of waiting for peers that cannot come; one discovery that
    /// reaches somebody ends it for good.
    pub fn alone(&self) -> bool {
        let i = &self.inner;
        let now_ms = u64::try_from(i.started.elapsed().as_millis()).unwrap_or(u64::MAX);
        if now_ms < SETUP_GRACE_MS
            || i.trackers.count() > 0
            || i.emit.heard.load(Ordering::Relaxed)
            || i.dht_reached.load(Ordering::Relaxed)
        {
            return false;
        }
        if i.dht.as_ref().is_some_and(|d| d.status().nodes > 0) {
            i.dht_reached.store(true, Ordering::Relaxed);
            return false;
        }
        true
    }

    /// Status for /status.json: `{"dht": {"enabled", "nodes",
    /// "bootstrapped", "announced"}, "trackers": [{"url", "last_error",
    /// "peers", "announces"}], "lsd": bool}`.
    pub fn status(&self) -> DiscoveryStatus {
        let i = &self.inner;
        DiscoveryStatus {
            dht: i.dht.as_ref().map(|d| d.status()).unwrap_or_default(),
            trackers: i.trackers.status(),
            lsd: i.lsd.is_some(),
            upnp: i.upnp.as_ref().map(|u| u.status()).unwrap_or_default(),
        }
    }

    /// Saves the DHT routing table and sends tracker `stopped` events,
    /// within [`SHUTDOWN_BUDGET`]. Later calls to this handle do nothing
    /// (lookups just answer `LookupDone`).
    pub async fn shutdown(&self) {
        let i = &self.inner;
        if i.shut.swap(true, Ordering::Relaxed) {
            return;
        }
        for t in i
            .torrents
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values_mut()
        {
            t.tasks.drain(..).for_each(|h| h.abort());
        }
        let save = async {
            if let Some(d) = &i.dht {
                d.save().await;
            }
        };
        let stopped = i.trackers.stopped(None, &i.emit);
        let unmap = async {
            if let Some(u) = &i.upnp {
                u.shutdown().await;
            }
        };
        if tokio::time::timeout(SHUTDOWN_BUDGET, async {
            tokio::join!(save, stopped, unmap)
        })
        .await
        .is_err()
        {
            tracing::warn!("discovery shutdown: time limit reached");
        }
        i.background
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .drain(..)
            .for_each(|h| h.abort());
    }
}

async fn run_lookup(i: Arc<Inner>, ih: InfoHash) {
    if let Some(l) = &i.lsd {
        let _ = l.send(lsd::Cmd::Search(ih));
    }
    let dht = async {
        if let Some(d) = &i.dht {
            d.lookup(ih, &i.emit).await;
        }
    };
    let trackers = async {
        if i.trackers.count() > 0 {
            let _ =
                tokio::time::timeout(TRACKER_LOOKUP_TIMEOUT, i.trackers.lookup(ih, &i.emit)).await;
        }
    };
    tokio::join!(dht, trackers);
    let n = i
        .torrents
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get_mut(&ih)
        .map_or(1, |t| t.gate.finish());
    for _ in 0..n {
        i.emit.done(ih).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json(d: &Discovery) -> serde_json::Value {
        serde_json::to_value(d.status()).unwrap_or_default()
    }

    fn init_tracing() {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "warn".into()),
            )
            .with_test_writer()
            .try_init();
    }

    fn cfg(addr: SocketAddr, bootstrap: Option<Vec<String>>, state: &std::path::Path) -> Config {
        Config {
            peer_addr: addr,
            dht: bootstrap.is_some(),
            dht_bootstrap: bootstrap,
            dht_state: state.to_path_buf(),
            dht_impl: DhtImpl::Auto,
            lsd: false,
            upnp: None,
            trackers: Vec::new(),
            peer_id: [fastrand::u8(..); 20],
        }
    }

    /// A state file path in a fresh directory (removed when the guard drops).
    fn state_file(name: &str) -> (tempfile::TempDir, std::path::PathBuf) {
        let d = tempfile::tempdir().unwrap();
        let p = d.path().join(name);
        (d, p)
    }

    /// Start on `ip` at a fixed high port, trying others if it is taken.
    async fn start_on(
        ip: &str,
        bootstrap: Option<Vec<String>>,
        state: &std::path::Path,
    ) -> (Discovery, SocketAddr, mpsc::Receiver<Event>) {
        let mut last = None;
        for _ in 0..20 {
            let addr: SocketAddr = format!("{ip}:{}", fastrand::u16(41000..49000))
                .parse()
                .unwrap();
            let (tx, rx) = mpsc::channel(256);
            match Discovery::start(cfg(addr, bootstrap.clone(), state), tx).await {
                Ok(d) => return (d, addr, rx),
                Err(e) => last = Some(e),
            }
        }
        panic!("no free port on {ip}: {last:?}");
    }

    /// Wait for an event matching `f`, at most until `deadline`.
    async fn wait_for(
        rx: &mut mpsc::Receiver<Event>,
        deadline: tokio::time::Instant,
        mut f: impl FnMut(&Event) -> bool,
    ) -> Option<Event> {
        loop {
            match tokio::time::timeout_at(deadline, rx.recv()).await {
                Ok(Some(e)) if f(&e) => return Some(e),
                Ok(Some(_)) => continue,
                _ => return None,
            }
        }
    }

    async fn wait_status(d: &Discovery, secs: u64, f: impl Fn(&serde_json::Value) -> bool) -> bool {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if f(&json(d)) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        false
    }

    /// A private DHT of 3 on 127.0.0.31–33: node 2's announce is found by
    /// node 3's lookup, then LookupDone, within 10 s.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn private_dht_announce_and_lookup() {
        init_tracing();
        let (_n1, a1, _rx1) = start_on("127.0.0.31", Some(vec![]), &state_file("n1").1).await;
        let boot = Some(vec![a1.to_string()]);
        let (n2, a2, _rx2) = start_on("127.0.0.32", boot.clone(), &state_file("n2").1).await;
        let (_dir, n3_state) = state_file("n3");
        let (n3, _a3, mut rx3) = start_on("127.0.0.33", boot, &n3_state).await;
        let ih = InfoHash([0x42; 20]);
        let t0 = tokio::time::Instant::now();
        n2.announce(ih);
        assert!(
            wait_status(&n2, 10, |s| s["dht"]["announced"] == 1).await,
            "node 2 announced: {}",
            json(&n2)
        );
        n3.lookup(ih);
        let deadline = t0 + Duration::from_secs(10);
        let peer = wait_for(&mut rx3, deadline, |e| matches!(e, Event::Peer { .. })).await;
        match peer {
            Some(Event::Peer {
                info_hash,
                addr,
                source,
            }) => assert_eq!((info_hash, addr, source), (ih, a2, Origin::Dht)),
            e => panic!("no peer from node 3's lookup: {e:?}; {}", json(&n3)),
        }
        let done = wait_for(&mut rx3, deadline, |e| {
            matches!(e, Event::LookupDone { .. })
        })
        .await;
        assert!(matches!(done, Some(Event::LookupDone { info_hash }) if info_hash == ih));
        // a second call at once: LookupDone only
        n3.lookup(ih);
        let e = tokio::time::timeout(Duration::from_secs(2), rx3.recv()).await;
        assert!(matches!(e, Ok(Some(Event::LookupDone { .. }))), "{e:?}");
        // shutdown saves node 3's table (it has bootstrapped)
        assert!(wait_status(&n3, 5, |s| s["dht"]["bootstrapped"] == true).await);
        let t = tokio::time::Instant::now();
        n3.shutdown().await;
        assert!(t.elapsed() <= SHUTDOWN_BUDGET + Duration::from_millis(500));
        assert_eq!(
            dht::load_nodes::<std::net::SocketAddrV4>(&n3_state).len(),
            2,
            "node 3 saved nodes 1 and 2"
        );
        drop((n3, rx3));
        // restart (M5): a dead bootstrap node plus the saved table is enough
        let dead = Some(vec!["127.0.0.1:9".to_string()]);
        let (n4, _a4, mut rx4) = start_on("127.0.0.35", dead, &n3_state).await;
        n4.lookup(ih);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
        let peer = wait_for(&mut rx4, deadline, |e| matches!(e, Event::Peer { .. })).await;
        assert!(
            matches!(peer, Some(Event::Peer { addr, .. }) if addr == a2),
            "restarted node: {peer:?} {}",
            json(&n4)
        );
    }

    /// Bootstrap to a dead address: start works, lookups end in time.
    #[tokio::test]
    async fn dead_bootstrap_still_answers() {
        init_tracing();
        let (d, _a, mut rx) = start_on(
            "127.0.0.34",
            Some(vec!["127.0.0.1:9".into()]),
            &state_file("x").1,
        )
        .await;
        let ih = InfoHash([7; 20]);
        d.lookup(ih);
        let deadline = tokio::time::Instant::now() + dht::LOOKUP_TIMEOUT + Duration::from_secs(2);
        let e = wait_for(&mut rx, deadline, |e| matches!(e, Event::LookupDone { .. })).await;
        assert!(e.is_some(), "no LookupDone");
        assert_eq!(json(&d)["dht"]["enabled"], true);
        d.shutdown().await;
    }

    /// IPv6 peer address: the DHT is off, the rest starts.
    #[tokio::test]
    async fn ipv6_disables_dht() {
        let (tx, mut rx) = mpsc::channel(8);
        let d = Discovery::start(
            cfg(
                "[::1]:41999".parse().unwrap(),
                Some(vec![]),
                &state_file("x").1,
            ),
            tx,
        )
        .await
        .unwrap();
        assert_eq!(json(&d)["dht"]["enabled"], false);
        d.lookup(InfoHash([1; 20]));
        let e = tokio::time::timeout(Duration::from_secs(2), rx.recv()).await;
        assert!(matches!(e, Ok(Some(Event::LookupDone { .. }))), "{e:?}");
    }

    /// Two daemons and an in-process debtorrent-tracker: A announces, B's
    /// lookup gets A from the tracker; forget sends stopped.
    #[tokio::test]
    async fn tracker_announce_and_lookup() {
        use debtorrent_tracker::tracker::{Policy, Tracker};
        init_tracing();
        let listener = tokio::net::TcpListener::bind("127.0.0.41:0").await.unwrap();
        let url = format!("http://{}/announce", listener.local_addr().unwrap());
        let tracker = Arc::new(Tracker::new(
            Policy::default(),
            [7; 32],
            debtorrent_tracker::types::unix_now(),
        ));
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let server = tokio::spawn(debtorrent_tracker::http_server::serve(
            listener,
            tracker.clone(),
            stop_rx,
        ));
        let mk = |port: u16| {
            let mut c = cfg(
                format!("127.0.0.1:{port}").parse().unwrap(),
                None,
                &state_file("x").1,
            );
            c.trackers = vec![url.clone(), "udp://127.0.0.1:9".into()];
            c
        };
        let (ta, _ra) = mpsc::channel(64);
        let (tb, mut rb) = mpsc::channel(64);
        let a = Discovery::start(mk(40101), ta).await.unwrap();
        let b = Discovery::start(mk(40102), tb).await.unwrap();
        let ih = InfoHash([0x77; 20]);
        a.set_totals(
            ih,
            Totals {
                uploaded: 0,
                downloaded: 0,
                left: 0,
            },
        );
        a.announce(ih);
        assert!(
            wait_status(&a, 5, |s| s["trackers"][0]["announces"] == 1).await,
            "{}",
            json(&a)
        );
        b.lookup(ih);
        let deadline = tokio::time::Instant::now() + Duration::from_secs(15);
        let e = wait_for(&mut rb, deadline, |e| matches!(e, Event::Peer { .. })).await;
        match e {
            Some(Event::Peer {
                info_hash,
                addr,
                source,
            }) => {
                assert_eq!(
                    (info_hash, addr.port(), source),
                    (ih, 40101, Origin::Tracker)
                );
            }
            e => panic!("{e:?}"),
        }
        let done = wait_for(&mut rb, deadline, |e| matches!(e, Event::LookupDone { .. })).await;
        assert!(done.is_some());
        let st = json(&b);
        assert_eq!(
            st["trackers"][0]["last_error"],
            serde_json::Value::Null,
            "{st}"
        );
        assert!(st["trackers"][1]["last_error"].is_string(), "{st}");
        // stopped: the tracker drops A
        let peers = || {
            let s = tracker.stats(debtorrent_tracker::types::unix_now());
            serde_json::to_value(&s).unwrap()["peers"].as_u64().unwrap()
        };
        assert_eq!(peers(), 2);
        a.shutdown().await;
        assert_eq!(peers(), 1);
        let _ = stop_tx.send(true);
        let _ = tokio::time::timeout(Duration::from_secs(2), server).await;
    }
}
