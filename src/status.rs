//! The status pages: `/` (HTML), `/status.json`, `/metrics` (Prometheus
//! text, through prometheus-client). They read the counters (`stats.rs`),
//! the registry, the store and the swarm; nothing here is written to.

use std::sync::Arc;

use crate::registry::Registry;
use crate::stats::{Counters, Stats};
use crate::store::Store;
use crate::swarm::{SwarmStatus, TorrentStatus};

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

/// `/status.json`: what the daemon holds and did, field names kept stable
/// for scripts and the tests.
#[derive(serde::Serialize)]
pub struct StatusJson {
    pub version: &'static str,
    pub listen: String,
    pub cache_bytes: u64,
    pub cache_limit: u64,
    pub stored_pieces: usize,
    pub bytes_uploaded: u64,
    #[serde(flatten)]
    pub counters: Counters,
    pub swarm: Option<SwarmStatus>,
    /// The dt2 swarms: one per suite family and component, whatever the
    /// number of index versions and suites in it.
    pub swarms: Vec<SwarmJson>,
    pub torrents: Vec<TorrentJson>,
}

/// One dt2 swarm in `/status.json`.
#[derive(serde::Serialize)]
pub struct SwarmJson {
    pub swarm_id: String,
    /// The registered indexes in it (their paths).
    pub indexes: Vec<String>,
    /// Content it numbers, and of that what we hold.
    pub catalogue: u32,
    pub pieces_held: u32,
    pub peers: usize,
    /// Index versions registered here (dt1 info hashes), and those its
    /// connected peers are on, with how many peers each.
    pub versions: Vec<String>,
    pub peer_versions: std::collections::BTreeMap<String, usize>,
    /// Connected peers by where we learnt of them (`dht`, `tracker`,
    /// `lsd`, `pex`, `who`; `incoming`: they dialled us).
    pub peers_by_origin: std::collections::BTreeMap<String, usize>,
    pub bytes_from_peers: u64,
    pub bytes_from_mirror: u64,
    pub bytes_uploaded: u64,
}

/// One registered torrent in `/status.json`.
#[derive(serde::Serialize)]
pub struct TorrentJson {
    pub info_hash: String,
    pub archive: String,
    pub index_path: String,
    pub pieces: u32,
    pub total_bytes: u64,
    pub index_file: String,
    pub registered_at: i64,
    /// The dt2 swarm of its suite family and component (every version of
    /// the index, and the family's -updates and -security suites, share
    /// it; `docs/torrent-format.md` §7).
    pub swarm_id: Option<String>,
    /// Peers, discovery and bytes, while its swarm task runs.
    #[serde(flatten)]
    pub swarm: Option<TorrentStatus>,
}

impl Pages {
    /// `/status.json`.
    pub fn status(&self) -> StatusJson {
        let torrents = self
            .registry
            .all()
            .iter()
            .map(|r| TorrentJson {
                info_hash: r.torrent.info_hash().to_hex(),
                archive: r.archive.clone(),
                index_path: r.index_path.clone(),
                pieces: r.torrent.piece_count(),
                total_bytes: r.torrent.total_size(),
                index_file: r.index_file.display().to_string(),
                registered_at: r.added,
                swarm_id: r.swarm.map(|s| s.to_hex()),
                swarm: self
                    .swarm
                    .as_ref()
                    .and_then(|w| w.torrent_status(&r.swarm_key())),
            })
            .collect();
        let all = self.registry.all();
        let swarms = self
            .swarm
            .as_ref()
            .map(|w| w.swarms())
            .unwrap_or_default()
            .into_iter()
            .map(|(id, t)| {
                let mut indexes: Vec<String> = all
                    .iter()
                    .filter(|r| r.swarm_key() == id)
                    .map(|r| r.index_path.clone())
                    .collect();
                indexes.sort();
                SwarmJson {
                    swarm_id: id.to_hex(),
                    indexes,
                    catalogue: t.catalogue,
                    pieces_held: t.pieces_held,
                    peers: t.peers.len(),
                    versions: t.versions,
                    peer_versions: t.peer_versions,
                    peers_by_origin: t.connected_by,
                    bytes_from_peers: t.bytes_from_peers,
                    bytes_from_mirror: t.bytes_from_mirror,
                    bytes_uploaded: t.bytes_uploaded,
                }
            })
            .collect();
        StatusJson {
            swarms,
            version: env!("CARGO_PKG_VERSION"),
            listen: self.listen.clone(),
            cache_bytes: self.store.total_bytes(),
            cache_limit: self.cache_limit,
            stored_pieces: self.store.piece_count(),
            bytes_uploaded: self.swarm.as_ref().map_or(0, |w| w.uploaded()),
            counters: self.stats.counters(),
            swarm: self.swarm.as_ref().map(|w| w.status()),
            torrents,
        }
    }

    /// `/status.json` as bytes.
    pub fn json(&self) -> Vec<u8> {
        let mut v = serde_json::to_vec_pretty(&self.status()).unwrap_or_default();
        v.push(b'\n');
        v
    }

    /// `/metrics`.
    pub fn metrics(&self) -> String {
        let swarms = self.swarm.as_ref().map(|w| w.swarms()).unwrap_or_default();
        let mut seen = std::collections::HashSet::new();
        for (_, t) in &swarms {
            seen.extend(t.versions.iter().cloned());
            seen.extend(t.peer_versions.keys().cloned());
        }
        let g = crate::stats::SwarmGauges {
            swarms: swarms.len(),
            peers: swarms.iter().map(|(_, t)| t.peers.len()).sum(),
            versions_seen: seen.len(),
        };
        self.stats
            .metrics_text(self.store.total_bytes(), self.registry.all().len(), &g)
    }

    /// `/`.
    pub fn html(&self) -> String {
        let j = self.status();
        let c = &j.counters;
        let mut rows = String::new();
        for t in &j.torrents {
            let sw = t.swarm.as_ref();
            rows.push_str(&format!(
                "<tr><td><code>{}</code></td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&t.info_hash),
                esc(&t.archive),
                esc(&t.index_path),
                t.pieces,
                human(t.total_bytes),
                sw.map_or(0, |s| s.peers.len()),
                human(sw.map_or(0, |s| s.bytes_from_peers)),
                human(sw.map_or(0, |s| s.bytes_from_mirror)),
                human(sw.map_or(0, |s| s.bytes_uploaded)),
            ));
        }
        let mut swarm_rows = String::new();
        for s in &j.swarms {
            let theirs: Vec<String> = s
                .peer_versions
                .iter()
                .map(|(v, n)| format!("{}&hellip; ({n})", esc(&v[..12.min(v.len())])))
                .collect();
            swarm_rows.push_str(&format!(
                "<tr><td><code>{}&hellip;</code></td><td>{}</td><td>{} of {}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td></tr>\n",
                esc(&s.swarm_id[..12.min(s.swarm_id.len())]),
                esc(&s.indexes.join(", ")),
                s.pieces_held,
                s.catalogue,
                s.peers,
                s.versions.len(),
                theirs.join(" "),
                human(s.bytes_from_peers),
            ));
        }
        let sw = j.swarm.as_ref();
        format!(
            "<!doctype html><html><head><meta charset=utf-8><title>debtorrent</title>\
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:.2em .8em;text-align:left}}</style></head><body>\
<h1>debtorrent {}</h1>\
<p>apt reaches this daemon at <code>{}</code>; peers at <code>{}</code> ({} connections, {} banned); up {} s.</p>\
<table><tr><th>cache</th><td>{} of {} ({} files)</td></tr>\
<tr><th>to apt</th><td>{}</td></tr><tr><th>from the mirror</th><td>{}</td></tr>\
<tr><th>from peers</th><td>{}</td></tr><tr><th>uploaded</th><td>{}</td></tr>\
<tr><th>requests</th><td>{} ({} from the store)</td></tr></table>\
<h2>Swarms</h2><table><tr><th>swarm</th><th>indexes</th><th>held</th><th>peers</th><th>our index versions</th><th>peers' index versions (peers)</th><th>from peers</th></tr>\n{}</table>\
<h2>Torrents</h2><table><tr><th>info hash</th><th>archive</th><th>index</th><th>pieces</th><th>size</th><th>peers</th><th>from peers</th><th>from the mirror</th><th>uploaded</th></tr>\n{}</table>\
<p><a href=\"/status.json\">status.json</a> · <a href=\"/metrics\">metrics</a></p></body></html>\n",
            j.version,
            esc(&j.listen),
            esc(sw.map_or("(off)", |s| s.peer_addr.as_str())),
            sw.map_or(0, |s| s.connections),
            sw.map_or(0, |s| s.bans_active),
            c.uptime_seconds,
            human(j.cache_bytes),
            human(j.cache_limit),
            j.stored_pieces,
            human(c.bytes_to_apt),
            human(c.bytes_from_mirror),
            human(c.bytes_from_peers),
            human(j.bytes_uploaded),
            c.requests,
            c.store_hits,
            swarm_rows,
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
