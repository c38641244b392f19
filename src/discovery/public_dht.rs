//! The public BitTorrent DHT through `librqbit-dht` 9 (docs/swarm-design.md
//! §2.5 has the measurements behind the choice).
//!
//! Why a second crate: `mainline` 8.0.1 answers only queries whose
//! transaction id is 4 bytes long, and libtorrent (most of the public DHT)
//! sends 2. A node that answers some queries and drops others looks broken
//! to its neighbours, and `mainline` cannot be held read-only either: its
//! adaptive mode turns into a server after 15 minutes whenever it is not
//! firewalled. `librqbit-dht` echoes any transaction id and speaks IPv4 and
//! IPv6 (BEP 32) on one dual-stack socket. Its limits (§2 R1, R2, R5) only
//! bite in small networks: it never adds its bootstrap nodes or the nodes
//! that query it to its table, and announces only to nodes whose id shares
//! 16 leading bits with the info hash. On the public DHT (millions of
//! nodes) neither matters, so `mainline` stays for private DHTs.
//!
//! The crate runs its own tasks; they stop when the cancellation token is
//! cancelled, which [`PublicDht`]'s `Drop` does, so the port is freed with
//! the last discovery handle.

use crate::types::InfoHash;
use std::collections::HashSet;
use std::net::{Ipv6Addr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_lite::StreamExt;
use librqbit_dht::{DhtConfig, Id20};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::dht::{
    announce_retry, load_nodes, save_nodes, DhtStatus, ANNOUNCE_EVERY, LOOKUP_TIMEOUT, MAX_SAVED,
    SAVE_EVERY,
};
use super::{Config, Emitter, Origin};

/// How long one announce (a `get_peers` walk that ends in `announce_peer`
/// to the closest nodes) may run.
const ANNOUNCE_WALK: Duration = Duration::from_secs(30);
pub(crate) struct PublicDht {
    dht: librqbit_dht::Dht,
    port: u16,
    emit: Emitter,
    announced: Mutex<HashSet<InfoHash>>,
    save_path: PathBuf,
    cancel: CancellationToken,
    started: Instant,
}

impl Drop for PublicDht {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

/// Where the node listens: the peer address, except that `0.0.0.0` becomes
/// `[::]` (dual stack, so the node also joins the IPv6 DHT); the caller
/// falls back to the IPv4 address when IPv6 is off on this host.
pub fn listen_addrs(peer_addr: SocketAddr) -> Vec<SocketAddr> {
    match peer_addr {
        SocketAddr::V4(a) if a.ip().is_unspecified() => vec![
            SocketAddr::from((Ipv6Addr::UNSPECIFIED, a.port())),
            peer_addr,
        ],
        _ => vec![peer_addr],
    }
}

impl PublicDht {
    /// Start the node. Only a failed bind is an error; bootstrap runs in
    /// the background (the crate retries names that do not resolve).
    pub(crate) async fn start(cfg: &Config, emit: Emitter) -> anyhow::Result<Arc<PublicDht>> {
        let mut bootstrap: Vec<String> = match &cfg.dht_bootstrap {
            None => super::dht::PUBLIC_ROUTERS
                .iter()
                .map(|s| s.to_string())
                .collect(),
            Some(l) => l.clone(),
        };
        for a in load_nodes::<SocketAddr>(&cfg.dht_state) {
            let s = a.to_string();
            if !bootstrap.contains(&s) && a != cfg.peer_addr {
                bootstrap.push(s);
            }
        }
        let mut last = None;
        for addr in listen_addrs(cfg.peer_addr) {
            let cancel = CancellationToken::new();
            let r = librqbit_dht::DhtBuilder::with_config(DhtConfig {
                peer_id: Some(Id20::new(std::array::from_fn(|_| fastrand::u8(..)))),
                bootstrap_addrs: Some(bootstrap.clone()),
                listen_addr: Some(addr),
                cancellation_token: Some(cancel.clone()),
                ..DhtConfig::default()
            })
            .await;
            match r {
                Ok(dht) => {
                    tracing::info!(listen = %dht.listen_addr(), bootstrap = bootstrap.len(), "starting the public DHT (librqbit-dht)");
                    return Ok(Arc::new(PublicDht {
                        dht,
                        port: cfg.peer_addr.port(),
                        emit,
                        announced: Mutex::default(),
                        save_path: cfg.dht_state.clone(),
                        cancel,
                        started: Instant::now(),
                    }));
                }
                Err(e) => {
                    tracing::debug!(%addr, error = %e, "public DHT: cannot bind");
                    last = Some((addr, e));
                }
            }
        }
        match last {
            Some((addr, e)) => Err(anyhow::anyhow!("DHT: cannot bind UDP {addr}: {e}")),
            None => Err(anyhow::anyhow!("DHT: no address to bind")),
        }
    }

    fn nodes(&self) -> usize {
        let s = self.dht.stats();
        s.routing_table_size + s.routing_table_size_v6
    }

    /// Log when the table first holds nodes, and save it every
    /// [`SAVE_EVERY`]. Runs until aborted.
    pub(crate) async fn maintain(self: Arc<Self>) {
        let start = Instant::now();
        let mut warned = false;
        while self.nodes() == 0 {
            if !warned && start.elapsed() > Duration::from_secs(60) {
                tracing::warn!("public DHT: no node answered yet; lookups use trackers and LSD");
                warned = true;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
        tracing::info!(nodes = self.nodes(), "public DHT bootstrapped");
        loop {
            tokio::time::sleep(SAVE_EVERY).await;
            self.save().await;
        }
    }

    /// Save the routing table (both families), atomically; an empty table
    /// is not written (it would erase a good file).
    pub(crate) async fn save(&self) {
        let nodes: Vec<String> = self.dht.with_routing_tables(|v4, v6| {
            v4.iter()
                .chain(v6.iter())
                .map(|n| n.addr().to_string())
                .take(MAX_SAVED)
                .collect()
        });
        if nodes.is_empty() {
            return;
        }
        if let Err(e) = save_nodes(&self.save_path, &nodes).await {
            tracing::warn!(error = %e, path = %self.save_path.display(), "cannot save the DHT table");
        }
    }

    /// Announce `ih` now and every [`ANNOUNCE_EVERY`] until aborted. The
    /// crate announces at the end of a `get_peers` walk; peers the walk
    /// finds are reported too.
    pub(crate) async fn announce_loop(self: Arc<Self>, ih: InfoHash) {
        let mut failures = 0u32;
        loop {
            let found = self.walk(ih, Some(self.port), ANNOUNCE_WALK).await;
            let has_nodes = self.nodes() > 0;
            let wait = if has_nodes {
                failures = 0;
                self.announced
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(ih);
                tracing::debug!(found, "public DHT announce walk done");
                ANNOUNCE_EVERY
            } else {
                failures += 1;
                announce_retry(failures).max(Duration::from_secs(5))
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One `get_peers` walk (with `announce_port`: an announce too) for at
    /// most `limit`; every new address is reported. Returns how many.
    async fn walk(&self, ih: InfoHash, announce_port: Option<u16>, limit: Duration) -> usize {
        let mut stream = self.dht.get_peers(Id20::new(ih.0), announce_port);
        let deadline = Instant::now() + limit;
        let mut seen = HashSet::new();
        while let Ok(Some(a)) = tokio::time::timeout_at(deadline, stream.next()).await {
            if seen.insert(a) {
                self.emit.peer(ih, a, Origin::Dht).await;
            }
        }
        seen.len()
    }

    pub(crate) fn forget(&self, ih: &InfoHash) {
        self.announced
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(ih);
    }

    /// `get_peers` until [`LOOKUP_TIMEOUT`]; each new address is sent at
    /// once.
    pub(crate) async fn lookup(&self, ih: InfoHash) {
        // A node with no node in its table after the set-up time (its
        // bootstrap routers are unreachable: an offline machine, a LAN
        // without internet) answers at once with nothing found, rather
        // than walk for LOOKUP_TIMEOUT while apt waits.
        let grace = Duration::from_millis(super::SETUP_GRACE_MS);
        while self.nodes() == 0 {
            if self.started.elapsed() >= grace {
                tracing::debug!("public DHT lookup skipped: no node in the routing table");
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let found = self.walk(ih, None, LOOKUP_TIMEOUT).await;
        tracing::debug!(found, "public DHT lookup done");
    }

    pub(crate) fn status(&self) -> DhtStatus {
        let s = self.dht.stats();
        let nodes = s.routing_table_size + s.routing_table_size_v6;
        DhtStatus {
            enabled: true,
            nodes,
            bootstrapped: nodes > 0,
            announced: self
                .announced
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .len(),
            implementation: "librqbit-dht",
            nodes_v6: s.routing_table_size_v6,
            listen: Some(self.dht.listen_addr()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn listen_addresses() {
        let cases: [(&str, &[&str]); 4] = [
            ("0.0.0.0:6881", &["[::]:6881", "0.0.0.0:6881"]),
            ("127.0.0.1:7", &["127.0.0.1:7"]),
            ("[::]:6881", &["[::]:6881"]),
            ("[::1]:5", &["[::1]:5"]),
        ];
        for (peer, want) in cases {
            let got = listen_addrs(peer.parse().unwrap());
            let want: Vec<SocketAddr> = want.iter().map(|s| s.parse().unwrap()).collect();
            assert_eq!(got, want, "{peer}");
        }
    }

    #[test]
    fn saved_nodes_both_families() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("dht-nodes");
        assert!(load_nodes::<SocketAddr>(&p).is_empty(), "missing file");
        std::fs::write(&p, "1.2.3.4:5\n garbage\n[::1]:6\n\n").unwrap();
        let want: Vec<SocketAddr> = vec!["1.2.3.4:5".parse().unwrap(), "[::1]:6".parse().unwrap()];
        assert_eq!(load_nodes::<SocketAddr>(&p), want);
    }
}
