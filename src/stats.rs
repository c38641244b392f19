//! Byte and event counters, shared by every module that moves bytes; the
//! pages (`status.rs`) only read them.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry as PromRegistry;

use crate::discovery::Origin;

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
    evicted: Counter,
    refused: Counter,
    head_timeouts: Counter,
    lookups: Counter,
    who_asked: Counter,
    who_answered: Counter,
    /// Peer addresses found, by [`Origin`] (in its declaration order).
    found: [Counter; ORIGINS.len()],
    cache_bytes: Gauge,
    torrents: Gauge,
    swarms: Gauge,
    swarm_peers: Gauge,
    versions_seen: Gauge,
    prom: PromRegistry,
    persisted_to_apt: AtomicU64,
    persisted_from_mirror: AtomicU64,
    persisted_from_peers: AtomicU64,
    /// Bytes sent to apt from the store (not persisted).
    from_store: AtomicU64,
    /// Samples of the byte counters, oldest first (the status page's chart).
    history: std::sync::Mutex<History>,
}

/// How often [`Stats::sample`] is called, and how many samples are kept:
/// one hour at 10 s.
pub const SAMPLE_EVERY: std::time::Duration = std::time::Duration::from_secs(10);
const SAMPLES_KEPT: usize = 360;

#[derive(Default)]
struct History {
    samples: std::collections::VecDeque<Sample>,
    /// The UTC day (days since 1970) the `today` baseline belongs to, and
    /// the counters at its start (or at the daemon's start, if later).
    day: u64,
    day_start: Sample,
}

/// The byte counters at one moment (cumulative since the daemon started,
/// or persisted totals for peers and the mirror).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Sample {
    /// Unix time, seconds.
    pub t: u64,
    pub peers: u64,
    pub mirror: u64,
    pub store: u64,
}

/// Bytes since the start of the UTC day (or of the daemon, if later).
#[derive(Clone, Copy, Debug, Default, serde::Serialize)]
pub struct Today {
    /// Unix time the counting started.
    pub since: u64,
    pub bytes_from_peers: u64,
    pub bytes_from_mirror: u64,
    pub bytes_from_store: u64,
}

fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
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
            evicted: Counter::default(),
            refused: Counter::default(),
            head_timeouts: Counter::default(),
            lookups: Counter::default(),
            who_asked: Counter::default(),
            who_answered: Counter::default(),
            found: Default::default(),
            cache_bytes: Gauge::default(),
            torrents: Gauge::default(),
            swarms: Gauge::default(),
            swarm_peers: Gauge::default(),
            versions_seen: Gauge::default(),
            prom: PromRegistry::default(),
            persisted_to_apt: AtomicU64::new(0),
            persisted_from_mirror: AtomicU64::new(0),
            persisted_from_peers: AtomicU64::new(0),
            from_store: AtomicU64::new(0),
            history: std::sync::Mutex::new(History::default()),
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
            "apt_connections_evicted",
            "apt-side connections closed to make room (a slow head, or idle longest)",
            s.evicted.clone(),
        );
        prom.register(
            "apt_connections_refused",
            "apt-side connections or requests refused: no slot (every one serving apt)",
            s.refused.clone(),
        );
        prom.register(
            "request_head_timeouts",
            "Request heads not complete within --request-head-timeout (answered 408)",
            s.head_timeouts.clone(),
        );
        prom.register(
            "peer_lookups",
            "Peer lookups the swarms made (DHT get_peers, tracker announces)",
            s.lookups.clone(),
        );
        prom.register(
            "who_asked",
            "dt_who queries sent: who of a peer's peers holds a wanted piece",
            s.who_asked.clone(),
        );
        prom.register(
            "who_answered",
            "dt_who queries answered",
            s.who_answered.clone(),
        );
        for (o, c) in ORIGINS.iter().zip(&s.found) {
            let name = format!("peers_found_{}", format!("{o:?}").to_lowercase());
            prom.register(name, "Peer addresses found from this source", c.clone());
        }
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
        prom.register(
            "swarms",
            "dt2 swarms joined (one per suite family and component)",
            s.swarms.clone(),
        );
        prom.register(
            "swarm_peers",
            "Peer connections over all swarms",
            s.swarm_peers.clone(),
        );
        prom.register(
            "index_versions_seen",
            "Distinct index versions registered here or reported by connected peers",
            s.versions_seen.clone(),
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

    /// A front-end connection was evicted.
    pub fn evicted(&self) {
        self.evicted.inc();
    }

    /// A front-end connection or request found no slot.
    pub fn refused(&self) {
        self.refused.inc();
    }

    /// A request head missed its deadline.
    pub fn head_timeout(&self) {
        self.head_timeouts.inc();
    }

    /// A swarm looked its peers up (DHT, trackers).
    pub fn lookup(&self) {
        self.lookups.inc();
    }

    /// We asked our peers who holds a piece (`dt_who`).
    pub fn who_asked(&self) {
        self.who_asked.inc();
    }

    /// We answered a peer's `dt_who`.
    pub fn who_answered(&self) {
        self.who_answered.inc();
    }

    /// A peer address came from `origin`.
    pub fn found(&self, origin: Origin) {
        if let Some(i) = ORIGINS.iter().position(|&o| o == origin) {
            self.found[i].inc();
        }
    }

    /// Bytes sent to apt from the store.
    pub fn store_bytes(&self, n: u64) {
        self.from_store.fetch_add(n, Ordering::Relaxed);
    }

    /// The byte counters now.
    pub fn sample_now(&self) -> Sample {
        Sample {
            t: unix_now(),
            peers: self.from_peers.get(),
            mirror: self.from_mirror.get(),
            store: self.from_store.load(Ordering::Relaxed),
        }
    }

    /// Records a sample for the chart (every [`SAMPLE_EVERY`]) and moves
    /// the `today` baseline at UTC midnight.
    pub fn sample(&self) {
        let s = self.sample_now();
        let Ok(mut h) = self.history.lock() else {
            return;
        };
        let day = s.t / 86_400;
        if h.samples.is_empty() && h.day == 0 {
            // The first sample: today counts from the daemon's start.
            h.day = day;
            h.day_start = s;
        } else if day != h.day {
            h.day = day;
            h.day_start = h.samples.back().copied().unwrap_or(s);
            h.day_start.t = day * 86_400;
        }
        h.samples.push_back(s);
        while h.samples.len() > SAMPLES_KEPT {
            h.samples.pop_front();
        }
    }

    /// The samples kept, oldest first, and the current counters last.
    pub fn history(&self) -> Vec<Sample> {
        let mut v: Vec<Sample> = self
            .history
            .lock()
            .map(|h| h.samples.iter().copied().collect())
            .unwrap_or_default();
        v.push(self.sample_now());
        v
    }

    /// Bytes since the start of the UTC day (or of the daemon).
    pub fn today(&self) -> Today {
        let now = self.sample_now();
        let start = self
            .history
            .lock()
            .ok()
            .filter(|h| h.day == now.t / 86_400)
            .map(|h| h.day_start)
            .unwrap_or(Sample {
                t: now.t - now.t % 86_400,
                ..now
            });
        Today {
            since: start.t,
            bytes_from_peers: now.peers.saturating_sub(start.peers),
            bytes_from_mirror: now.mirror.saturating_sub(start.mirror),
            bytes_from_store: now.store.saturating_sub(start.store),
        }
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

    /// The counters now, for `/status.json`.
    pub fn counters(&self) -> Counters {
        Counters {
            uptime_seconds: self.started.elapsed().as_secs(),
            bytes_to_apt: self.to_apt.get(),
            bytes_from_mirror: self.from_mirror.get(),
            bytes_from_peers: self.from_peers.get(),
            bans: self.bans.get(),
            requests: self.requests.get(),
            store_hits: self.store_hits.get(),
            corrupt_downloads: self.corrupt.get(),
            apt_connections_evicted: self.evicted.get(),
            apt_connections_refused: self.refused.get(),
            request_head_timeouts: self.head_timeouts.get(),
            lookups: self.lookups.get(),
            who_asked: self.who_asked.get(),
            who_answered: self.who_answered.get(),
            peers_found: ORIGINS
                .iter()
                .zip(&self.found)
                .map(|(o, c)| (format!("{o:?}").to_lowercase(), c.get()))
                .collect(),
        }
    }

    /// The Prometheus text, with the two gauges set first.
    pub fn metrics_text(&self, cache_bytes: u64, torrents: usize, swarms: &SwarmGauges) -> String {
        let g = |n: usize| i64::try_from(n).unwrap_or(i64::MAX);
        self.swarms.set(g(swarms.swarms));
        self.swarm_peers.set(g(swarms.peers));
        self.versions_seen.set(g(swarms.versions_seen));
        self.cache_bytes
            .set(i64::try_from(cache_bytes).unwrap_or(i64::MAX));
        self.torrents
            .set(i64::try_from(torrents).unwrap_or(i64::MAX));
        let mut out = String::new();
        if encode(&mut out, &self.prom).is_err() {
            out.clear();
        }
        out
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

/// What `/metrics` shows of the swarms.
#[derive(Clone, Copy, Debug, Default)]
pub struct SwarmGauges {
    pub swarms: usize,
    pub peers: usize,
    pub versions_seen: usize,
}

/// Every source of peer addresses, in the order of [`Stats`]'s counters.
const ORIGINS: [Origin; 5] = [
    Origin::Dht,
    Origin::Tracker,
    Origin::Lsd,
    Origin::Pex,
    Origin::Who,
];

/// The counters at one moment (part of `/status.json`).
#[derive(Clone, Debug, serde::Serialize)]
pub struct Counters {
    pub uptime_seconds: u64,
    pub bytes_to_apt: u64,
    pub bytes_from_mirror: u64,
    pub bytes_from_peers: u64,
    pub bans: u64,
    pub requests: u64,
    pub store_hits: u64,
    pub corrupt_downloads: u64,
    pub apt_connections_evicted: u64,
    pub apt_connections_refused: u64,
    pub request_head_timeouts: u64,
    /// Peer lookups the swarms made (each one DHT `get_peers` and one
    /// tracker announce per tracker).
    pub lookups: u64,
    /// `dt_who` queries we sent, and answered.
    pub who_asked: u64,
    pub who_answered: u64,
    /// Peer addresses found, by where they came from (`dht`, `tracker`,
    /// `lsd`, `pex`, `who`).
    pub peers_found: std::collections::BTreeMap<String, u64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `today` counts from the first sample (the daemon's start), not from
    /// the persisted totals; the history ends with the counters now.
    #[test]
    fn today_and_history_start_at_the_first_sample() {
        let s = Stats::new(&[
            ("bytes_from_peers".to_string(), 1000),
            ("bytes_from_mirror".to_string(), 7),
        ]);
        s.sample();
        s.peer_bytes(500);
        s.mirror_bytes(20);
        s.store_bytes(3);
        let t = s.today();
        assert_eq!(
            (t.bytes_from_peers, t.bytes_from_mirror, t.bytes_from_store),
            (500, 20, 3)
        );
        let h = s.history();
        assert_eq!(h.len(), 2);
        assert_eq!((h[0].peers, h[0].mirror, h[0].store), (1000, 7, 0));
        assert_eq!((h[1].peers, h[1].mirror, h[1].store), (1500, 27, 3));
        for _ in 0..SAMPLES_KEPT + 5 {
            s.sample();
        }
        assert_eq!(s.history().len(), SAMPLES_KEPT + 1, "bounded");
    }
}
