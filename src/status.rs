//! The status pages: `/` (HTML), `/status.json`, `/metrics` (Prometheus
//! text, through prometheus-client). They read the counters (`stats.rs`),
//! the registry, the store and the swarm; nothing here is written to.

use std::sync::Arc;

use crate::registry::Registry;
use crate::stats::{Counters, Stats};
use crate::stats::{Sample, Today};
use crate::store::Store;
use crate::swarm::{SwarmStatus, TorrentStatus};
use crate::transfers::{TransferStatus, Transfers};

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
    /// apt requests in flight.
    pub transfers: Option<Arc<Transfers>>,
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
    /// Files apt already has on their way into the store or registry
    /// ([`crate::store::Store::commits_in_flight`]).
    pub storing: usize,
    pub bytes_uploaded: u64,
    #[serde(flatten)]
    pub counters: Counters,
    pub swarm: Option<SwarmStatus>,
    /// The dt2 swarms: one per suite family and component, whatever the
    /// number of index versions and suites in it.
    pub swarms: Vec<SwarmJson>,
    pub torrents: Vec<TorrentJson>,
    /// What peers saved the mirror: the headline of the status page.
    pub saved: Saved,
    /// Bytes since the start of the UTC day (or of the daemon, if later).
    pub today: Today,
    /// Bytes apt got from the store since the daemon started.
    pub bytes_from_store: u64,
    /// Byte counters sampled every `history_interval_s` seconds (the last
    /// hour), the counters now last: the chart of bytes by source.
    pub history: Vec<Sample>,
    pub history_interval_s: u64,
    /// apt requests in flight, oldest first.
    pub transfers: Vec<TransferStatus>,
    /// Every peer connection, over all swarms.
    pub peers: Vec<PeerJson>,
}

/// Bytes peers delivered instead of the mirror, and their share of all
/// bytes fetched (peers + mirror; 0 when nothing was fetched).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Saved {
    pub total_bytes: u64,
    pub total_share: f64,
    pub today_bytes: u64,
    pub today_share: f64,
}

impl Saved {
    /// From bytes by source: in total, and today.
    pub fn new(peers: u64, mirror: u64, today: &Today) -> Saved {
        let share = |p: u64, m: u64| {
            if p + m == 0 {
                0.0
            } else {
                p as f64 / (p + m) as f64
            }
        };
        Saved {
            total_bytes: peers,
            total_share: share(peers, mirror),
            today_bytes: today.bytes_from_peers,
            today_share: share(today.bytes_from_peers, today.bytes_from_mirror),
        }
    }
}

/// One peer connection in `/status.json`, with its swarm.
#[derive(serde::Serialize)]
pub struct PeerJson {
    /// The first 12 hex digits of its swarm id.
    pub swarm: String,
    #[serde(flatten)]
    pub peer: crate::swarm::PeerStatus,
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
        let swarm_list = self.swarm.as_ref().map(|w| w.swarms()).unwrap_or_default();
        let peers = swarm_list
            .iter()
            .flat_map(|(id, t)| {
                let short = id.to_hex()[..12].to_string();
                t.peers.iter().map(move |p| PeerJson {
                    swarm: short.clone(),
                    peer: p.clone(),
                })
            })
            .collect();
        let swarms = swarm_list
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
        let counters = self.stats.counters();
        let today = self.stats.today();
        StatusJson {
            saved: Saved::new(
                counters.bytes_from_peers,
                counters.bytes_from_mirror,
                &today,
            ),
            today,
            bytes_from_store: self.stats.sample_now().store,
            history: self.stats.history(),
            history_interval_s: crate::stats::SAMPLE_EVERY.as_secs(),
            transfers: self
                .transfers
                .as_ref()
                .map(|t| t.live())
                .unwrap_or_default(),
            peers,
            swarms,
            version: env!("CARGO_PKG_VERSION"),
            listen: self.listen.clone(),
            cache_bytes: self.store.total_bytes(),
            cache_limit: self.cache_limit,
            stored_pieces: self.store.piece_count(),
            storing: self.store.commits_in_flight(),
            bytes_uploaded: self.swarm.as_ref().map_or(0, |w| w.uploaded()),
            counters,
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

    /// `/`: a page that draws `/status.json` (embedded for the first
    /// paint, then fetched every 2 s) with the inline script of
    /// `status.html`; no external assets.
    pub fn html(&self) -> String {
        page(&serde_json::to_string(&self.status()).unwrap_or_else(|_| "null".into()))
    }
}

/// The page with `json` embedded for the first paint. Inside `<script>`
/// only `</` can end the element early; `<\/` is the same JSON string.
fn page(json: &str) -> String {
    PAGE.replacen("/*STATUS_JSON*/null", &json.replace("</", "<\\/"), 1)
}

/// The status page: markup, style and script in one file, so it can be
/// read and edited as HTML.
const PAGE: &str = include_str!("status.html");

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

/// The terminal summary `debtorrent status` prints, from a daemon's
/// `/status.json` (read as loose JSON: a field an older daemon lacks shows
/// as zero).
pub fn summary(v: &serde_json::Value) -> String {
    use std::fmt::Write;
    let n = |v: &serde_json::Value| v.as_u64().unwrap_or(0);
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or(0.0);
    let s = |v: &serde_json::Value| v.as_str().unwrap_or("?").to_string();
    let pct = |x: f64| format!("{:.0} %", x * 100.0);
    let mut o = String::new();
    let sw = &v["swarm"];
    let _ = writeln!(
        o,
        "debtorrent {} at {}, up {} s; peers at {}",
        s(&v["version"]),
        s(&v["listen"]),
        n(&v["uptime_seconds"]),
        sw["peer_addr"].as_str().unwrap_or("(off)")
    );
    let sv = &v["saved"];
    let _ = writeln!(
        o,
        "Peers saved the mirror  {} ({}) in total; today {} ({})",
        pct(f(&sv["total_share"])),
        human(n(&sv["total_bytes"])),
        pct(f(&sv["today_share"])),
        human(n(&sv["today_bytes"]))
    );
    let _ = writeln!(
        o,
        "From the mirror         {} (today {})",
        human(n(&v["bytes_from_mirror"])),
        human(n(&v["today"]["bytes_from_mirror"]))
    );
    let _ = writeln!(
        o,
        "From the store          {} served; {} requests, {} from the store",
        human(n(&v["bytes_from_store"])),
        n(&v["requests"]),
        n(&v["store_hits"])
    );
    let (used, limit) = (n(&v["cache_bytes"]), n(&v["cache_limit"]));
    let _ = writeln!(
        o,
        "Disk                    {} of {} ({}), {} files",
        human(used),
        human(limit),
        pct(if limit == 0 {
            0.0
        } else {
            used as f64 / limit as f64
        }),
        n(&v["stored_pieces"])
    );
    let d = &sw["discovery"];
    let mut disc = Vec::new();
    if d.is_object() {
        let dht = &d["dht"];
        disc.push(if dht["enabled"].as_bool().unwrap_or(false) {
            format!(
                "DHT {} nodes ({})",
                n(&dht["nodes"]),
                if dht["bootstrapped"].as_bool().unwrap_or(false) {
                    "bootstrapped"
                } else {
                    "not bootstrapped"
                }
            )
        } else {
            "DHT off".to_string()
        });
        for t in d["trackers"].as_array().into_iter().flatten() {
            disc.push(format!(
                "tracker {} {}",
                s(&t["url"]),
                t["last_error"].as_str().map_or_else(
                    || format!("ok ({} peers)", n(&t["peers"])),
                    |e| format!("error: {e}")
                )
            ));
        }
        disc.push(format!(
            "LSD {}",
            if d["lsd"].as_bool().unwrap_or(false) {
                "on"
            } else {
                "off"
            }
        ));
    } else {
        disc.push("off".to_string());
    }
    let _ = writeln!(o, "Discovery               {}", disc.join("; "));
    let peers = v["peers"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(
        o,
        "Peers                   {} connected in {} swarms, {} banned now",
        peers.len(),
        v["swarms"].as_array().map_or(0, Vec::len),
        n(&sw["bans_active"])
    );
    let transfers = v["transfers"].as_array().cloned().unwrap_or_default();
    let _ = writeln!(o, "\nLive transfers ({})", transfers.len());
    for t in &transfers {
        let path = s(&t["path"]);
        let name = path.rsplit('/').next().unwrap_or(&path);
        let size = n(&t["size"]);
        let done = n(&t["received"]).max(n(&t["sent"]));
        let _ = writeln!(
            o,
            "  {name:<40} {:>10} {:>5} {} {:.1} s",
            human(size),
            if size == 0 {
                "?".to_string()
            } else {
                pct((done as f64 / size as f64).min(1.0))
            },
            s(&t["source"]),
            n(&t["elapsed_ms"]) as f64 / 1000.0
        );
    }
    let _ = writeln!(o, "\nPeers ({})", peers.len());
    for p in &peers {
        let _ = writeln!(
            o,
            "  {:<22} {:<20} down {:>10}/s up {:>10}/s {}, {}",
            s(&p["addr"]),
            s(&p["client"]),
            human(n(&p["rate_from"])),
            human(n(&p["rate_to"])),
            if p["choked_us"].as_bool().unwrap_or(true) {
                "choking us"
            } else {
                "unchoked us"
            },
            if p["unchoked"].as_bool().unwrap_or(false) {
                "we unchoke"
            } else {
                "we choke"
            }
        );
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saved_share_cases() {
        let today = |p, m| Today {
            since: 0,
            bytes_from_peers: p,
            bytes_from_mirror: m,
            bytes_from_store: 0,
        };
        // (peers, mirror, today peers, today mirror) -> (total share, today share)
        for (p, m, tp, tm, share, tshare) in [
            (0, 0, 0, 0, 0.0, 0.0),
            (300, 100, 0, 0, 0.75, 0.0),
            (0, 100, 0, 100, 0.0, 0.0),
            (100, 0, 50, 0, 1.0, 1.0),
            (u64::MAX / 2, u64::MAX / 2, 1, 3, 0.5, 0.25),
        ] {
            let s = Saved::new(p, m, &today(tp, tm));
            assert_eq!(s.total_bytes, p);
            assert!((s.total_share - share).abs() < 1e-9, "{p} {m}: {s:?}");
            assert!((s.today_share - tshare).abs() < 1e-9, "{tp} {tm}: {s:?}");
        }
    }

    /// A path apt asked for with `</script>` in it stays data.
    #[test]
    fn embedded_json_cannot_close_the_script() {
        let json =
            serde_json::json!({"transfers": [{"path": "/x/</script><script>alert(1)</script>"}]});
        let html = page(&json.to_string());
        let start = html.find("id=\"status-data\"").expect("data element");
        let end = start + html[start..].find("</script>").expect("end of data");
        let embedded = &html[html[start..]
            .find('>')
            .map(|i| start + i + 1)
            .expect("open tag")..end];
        let back: serde_json::Value = serde_json::from_str(embedded).expect("still JSON");
        assert_eq!(back, json);
        assert!(!html.contains("/*STATUS_JSON*/"));
    }

    #[test]
    fn summary_of_an_empty_status_does_not_panic() {
        let text = summary(&serde_json::json!({}));
        assert!(text.contains("Peers saved the mirror  0 %"), "{text}");
    }
}
