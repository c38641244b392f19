//! Counters and the status pages: `/` (HTML), `/status.json`, `/metrics`
//! (Prometheus text, through prometheus-client).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;

use crate::index::Registry;
use crate::store::Store;

/// Byte and event counters. Persisted totals are loaded at start and the
/// deltas are written to the state database every few seconds.
pub struct Stats {
    started: Instant,
    to_apt: Counter,
    from_mirror: Counter,
    requests: Counter,
    store_hits: Counter,
    corrupt: Counter,
    from_peers: Counter,
    bans: Counter,
    cache_bytes: Gauge,
    torrents: Gauge,
    prom: PromRegistry,
    persisted_to_apt: AtomicU64,
    persisted_from_mirror: AtomicU64,
    persisted_from_peers: AtomicU64,
}

impl Stats {
    /// Counters starting from persisted totals.
    pub fn new(counters: &[(String, u64)]) -> Arc<Stats> {
        let get = |n: &str| counters.iter().find(|(k, _)| k == n).map_or(0, |(_, v)| *v);
        let mut prom = PromRegistry::with_prefix("debtorrent");
        let s = Stats {
            started: Instant::now(),
            to_apt: Counter::default(),
            from_mirror: Counter::default(),
            requests: Counter::default(),
            store_hits: Counter::default(),
            corrupt: Counter::default(),
            from_peers: Counter::default(),
            bans: Counter::default(),
            cache_bytes: Gauge::default(),
            torrents: Gauge::default(),
            prom: PromRegistry::default(),
            persisted_to_apt: AtomicU64::new(0),
            persisted_from_mirror: AtomicU64::new(0),
            persisted_from_peers: AtomicU64::new(0),
        };
        s.from_peers.inc_by(get("bytes_from_peers"));
        s.persisted_from_peers
            .store(s.from_peers.get(), Ordering::Relaxed);
        s.to_apt.inc_by(get("bytes_to_apt"));
        s.from_mirror.inc_by(get("bytes_from_mirror"));
        s.persisted_to_apt.store(s.to_apt.get(), Ordering::Relaxed);
        s.persisted_from_mirror
            .store(s.from_mirror.get(), Ordering::Relaxed);
        prom.register(
            "bytes_to_apt",
            "Bytes of response bodies sent to apt",
            s.to_apt.clone(),
        );
        prom.register(
            "bytes_from_mirror",
            "Bytes received from mirrors",
            s.from_mirror.clone(),
        );
        prom.register(
            "bytes_from_peers",
            "Bytes received from peers",
            s.from_peers.clone(),
        );
        prom.register(
            "peer_bans",
            "Peers banned for corrupt data or repeated protocol violations",
            s.bans.clone(),
        );
        prom.register("requests", "Requests from apt", s.requests.clone());
        prom.register(
            "store_hits",
            "Package requests served from the store",
            s.store_hits.clone(),
        );
        prom.register(
            "corrupt_downloads",
            "Downloads whose bytes did not match the index",
            s.corrupt.clone(),
        );
        prom.register(
            "cache_bytes",
            "Bytes of verified package files in the store",
            s.cache_bytes.clone(),
        );
        prom.register(
            "torrents",
            "Registered torrents (one per index)",
            s.torrents.clone(),
        );
        Arc::new(Stats { prom, ..s })
    }

    /// Bytes sent to apt.
    pub fn apt_bytes(&self, n: u64) {
        self.to_apt.inc_by(n);
    }

    /// Bytes from a mirror.
    pub fn mirror_bytes(&self, n: u64) {
        self.from_mirror.inc_by(n);
    }

    /// New bytes from peers.
    pub fn peer_bytes(&self, n: u64) {
        self.from_peers.inc_by(n);
    }

    /// A peer was banned.
    pub fn ban(&self) {
        self.bans.inc();
    }

    /// A request from apt.
    pub fn request(&self) {
        self.requests.inc();
    }

    /// A package served from the store.
    pub fn store_hit(&self) {
        self.store_hits.inc();
    }

    /// A download that failed verification.
    pub fn corrupt(&self) {
        self.corrupt.inc();
    }

    /// Writes counter deltas to the database.
    pub fn persist(&self, db: &crate::db::Db) {
        for (name, counter, persisted) in [
            ("bytes_to_apt", &self.to_apt, &self.persisted_to_apt),
            (
                "bytes_from_mirror",
                &self.from_mirror,
                &self.persisted_from_mirror,
            ),
            (
                "bytes_from_peers",
                &self.from_peers,
                &self.persisted_from_peers,
            ),
        ] {
            let now = counter.get();
            let before = persisted.swap(now, Ordering::Relaxed);
            db.add_counter(name, now.saturating_sub(before));
        }
    }
}

/// Everything the pages show.
pub struct Pages {
    /// Counters.
    pub stats: Arc<Stats>,
    /// Torrents.
    pub registry: Arc<Registry>,
    /// Store.
    pub store: Arc<Store>,
    /// Cache size limit.
    pub cache_limit: u64,
    /// Where apt reaches the daemon.
    pub listen: String,
    /// The swarm (peers, uploads).
    pub swarm: Option<Arc<crate::swarm::Swarm>>,
}

impl Pages {
    /// `/status.json`.
    pub fn json(&self) -> serde_json::Value {
        let s = &self.stats;
        let torrents: Vec<serde_json::Value> = self
            .registry
            .all()
            .iter()
            .map(|r| {
                let mut v = serde_json::json!({
                    "info_hash": r.torrent.info_hash().to_hex(),
                    "archive": r.archive,
                    "index_path": r.index_path,
                    "pieces": r.torrent.piece_count(),
                    "total_bytes": r.torrent.total_size(),
                    "index_file": r.index_file.display().to_string(),
                    "registered_at": r.added,
                });
                if let (Some(w), Some(o)) = (&self.swarm, v.as_object_mut()) {
                    if let Some(extra) = w.torrent_status(&r.torrent.info_hash().0).as_object() {
                        o.extend(extra.clone());
                    }
                }
                v
            })
            .collect();
        serde_json::json!({
            "version": env!("CARGO_PKG_VERSION"),
            "listen": self.listen,
            "uptime_seconds": s.started.elapsed().as_secs(),
            "cache_bytes": self.store.total_bytes(),
            "cache_limit": self.cache_limit,
            "stored_pieces": self.store.piece_count(),
            "bytes_to_apt": s.to_apt.get(),
            "bytes_from_mirror": s.from_mirror.get(),
            "bytes_from_peers": s.from_peers.get(),
            "bytes_uploaded": self.swarm.as_ref().map_or(0, |w| w.uploaded()),
            "bans": s.bans.get(),
            "swarm": self.swarm.as_ref().map(|w| w.status()),
            "requests": s.requests.get(),
            "store_hits": s.store_hits.get(),
            "corrupt_downloads": s.corrupt.get(),
            "torrents": torrents,
        })
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        let s = &self.stats;
        s.cache_bytes
            .set(i64::try_from(self.store.total_bytes()).unwrap_or(i64::MAX));
        s.torrents.set(self.registry.all().len() as i64);
        let mut out = String::new();
        if encode(&mut out, &s.prom).is_err() {
            out.clear();
        }
        out
    }

    /// `/`.
    pub fn html(&self) -> String {
        let j = self.json();
        let mut rows = String::new();
        for t in j["torrents"].as_array().into_iter().flatten() {
            rows.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(t["info_hash"].as_str().unwrap_or("")),
                esc(t["archive"].as_str().unwrap_or("")),
                esc(t["index_path"].as_str().unwrap_or("")),
                t["pieces"],
                human(t["total_bytes"].as_u64().unwrap_or(0)),
                t["peers"].as_array().map_or(0, |p| p.len()),
                human(t["bytes_from_peers"].as_u64().unwrap_or(0)),
                human(t["bytes_from_mirror"].as_u64().unwrap_or(0)),
                human(t["bytes_uploaded"].as_u64().unwrap_or(0)),
            ));
        }
        let n = |k: &str| j[k].as_u64().unwrap_or(0);
        format!(
            "<!doctype html><html><head><meta charset=utf-8><title>debtorrent</title>\
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}</style></head><body>\
<h1>debtorrent {}</h1>\
<p>apt reaches this daemon at <code>{}</code>; peers at <code>{}</code> ({} connections, {} banned); up {} s.</p>\
<table><tr><th>cache</th><td>{} of {} ({} files)</td></tr>\
<tr><th>to apt</th><td>{}</td></tr><tr><th>from the mirror</th><td>{}</td></tr>\
<tr><th>from peers</th><td>{}</td></tr><tr><th>uploaded</th><td>{}</td></tr>\
<tr><th>requests</th><td>{} ({} from the store)</td></tr></table>\
<h2>Torrents</h2><table><tr><th>info hash</th><th>archive</th><th>index</th><th>pieces</th><th>size</th><th>peers</th><th>from peers</th><th>from the mirror</th><th>uploaded</th></tr>\n{}</table>\
<p><a href=\"/status.json\">status.json</a> · <a href=\"/metrics\">metrics</a></p></body></html>\n",
            env!("CARGO_PKG_VERSION"),
            esc(&self.listen),
            esc(j["swarm"]["peer_addr"].as_str().unwrap_or("(off)")),
            j["swarm"]["connections"].as_u64().unwrap_or(0),
            j["swarm"]["bans_active"].as_u64().unwrap_or(0),
            n("uptime_seconds"),
            human(n("cache_bytes")),
            human(n("cache_limit")),
            n("stored_pieces"),
            human(n("bytes_to_apt")),
            human(n("bytes_from_mirror")),
            human(n("bytes_from_peers")),
            human(n("bytes_uploaded")),
            n("requests"),
            n("store_hits"),
            rows
        )
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn human(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
