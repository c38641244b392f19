//! Tracker announces through `debtorrent_tracker::client::TrackerClient`.
//!
//! One task per torrent per tracker URL while the torrent is announced:
//! `started`, then a regular announce every interval the tracker asks for
//! ([`next_interval`]), with backoff after failures ([`backoff`]). A lookup
//! is one extra announce to every tracker. Failures are logged and counted
//! in the status, never passed up: a dead tracker must not stop anything.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use debtorrent_tracker::client::{ClientConfig, ClientError, TrackerClient};
use debtorrent_tracker::{AnnounceParams, Event as TEvent, InfoHash, PeerId};

use super::{Emitter, Origin, Totals};

/// Shortest and longest wait between two announces of one torrent.
pub const MIN_INTERVAL: Duration = Duration::from_secs(30);
pub const MAX_INTERVAL: Duration = Duration::from_secs(3600);
/// Peers asked for.
pub const NUMWANT: u32 = 50;

/// The wait before the next regular announce: the tracker's `interval`,
/// at least its `min interval`, clamped to 30 s ..= 1 h.
pub fn next_interval(interval: u32, min_interval: Option<u32>) -> Duration {
    let secs = interval.max(min_interval.unwrap_or(0));
    Duration::from_secs(secs.into()).clamp(MIN_INTERVAL, MAX_INTERVAL)
}

/// The wait after `failures` failed announces in a row (1, 2, …): 30 s,
/// doubling, at most 1 h.
pub fn backoff(failures: u32) -> Duration {
    let secs = 30u64 << failures.saturating_sub(1).min(7);
    Duration::from_secs(secs).min(MAX_INTERVAL)
}

#[derive(Debug, Default)]
struct UrlStatus {
    last_error: Option<String>,
    announces: u64,
    /// Peers in the last answer, per torrent.
    peers: HashMap<InfoHash, usize>,
}

/// Every tracker of the daemon.
pub(crate) struct Trackers {
    urls: Vec<String>,
    client: TrackerClient,
    peer_id: [u8; 20],
    /// The port announced: the peer port, or the external port of a UPnP
    /// mapping once one is made.
    port: std::sync::atomic::AtomicU16,
    key: u32,
    totals: Mutex<HashMap<InfoHash, Totals>>,
    status: Vec<Mutex<UrlStatus>>,
    /// (torrent, URL index) pairs that got a successful `started`.
    started: Mutex<HashSet<(InfoHash, usize)>>,
}

impl Trackers {
    pub(crate) fn new(
        urls: Vec<String>,
        peer_id: [u8; 20],
        port: u16,
        local_ip: Option<std::net::IpAddr>,
    ) -> Arc<Trackers> {
        Arc::new(Trackers {
            status: urls.iter().map(|_| Mutex::default()).collect(),
            urls,
            client: TrackerClient::new(ClientConfig {
                timeout: Duration::from_secs(5),
                udp_tries: 2,
                local_ip,
            }),
            peer_id,
            port: std::sync::atomic::AtomicU16::new(port),
            key: fastrand::u32(..),
            totals: Mutex::default(),
            started: Mutex::default(),
        })
    }

    /// Announce `port` from now on (a UPnP mapping's external port).
    pub(crate) fn set_port(&self, port: u16) {
        self.port.store(port, std::sync::atomic::Ordering::Relaxed);
    }

    pub(crate) fn count(&self) -> usize {
        self.urls.len()
    }

    pub(crate) fn set_totals(&self, ih: InfoHash, t: Totals) {
        self.totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(ih, t);
    }

    async fn announce_once(
        &self,
        i: usize,
        ih: InfoHash,
        event: TEvent,
        emit: &Emitter,
    ) -> Result<Duration, ClientError> {
        // Without totals from the swarm we say we are a leecher (left = 1):
        // a false seeder would draw peers that expect data.
        let t = self
            .totals
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&ih)
            .copied()
            .unwrap_or(Totals {
                left: 1,
                ..Totals::default()
            });
        let params = AnnounceParams {
            info_hash: ih,
            peer_id: PeerId(self.peer_id),
            port: self.port.load(std::sync::atomic::Ordering::Relaxed),
            uploaded: t.uploaded,
            downloaded: t.downloaded,
            left: t.left,
            event,
            numwant: (event != TEvent::Stopped).then_some(NUMWANT),
            key: self.key,
        };
        let r = self.client.announce(&self.urls[i], &params).await;
        {
            let mut st = self.status[i].lock().unwrap_or_else(|e| e.into_inner());
            match &r {
                Ok(resp) => {
                    st.last_error = None;
                    st.announces += 1;
                    st.peers.insert(ih, resp.peers.len());
                }
                Err(e) => st.last_error = Some(e.to_string()),
            }
        }
        let resp = r?;
        if event == TEvent::Started {
            self.started
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert((ih, i));
        }
        if event == TEvent::Stopped {
            self.status[i]
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .peers
                .remove(&ih);
        } else {
            for addr in resp.peers {
                emit.peer(ih, addr, Origin::Tracker).await;
            }
        }
        Ok(next_interval(resp.interval, resp.min_interval))
    }

    /// Announce `ih` to tracker `i` until aborted.
    pub(crate) async fn announce_loop(self: Arc<Self>, i: usize, ih: InfoHash, emit: Emitter) {
        let mut event = TEvent::Started;
        let mut failures = 0u32;
        loop {
            let wait = match self.announce_once(i, ih, event, &emit).await {
                Ok(wait) => {
                    failures = 0;
                    event = TEvent::None;
                    wait
                }
                Err(e) => {
                    failures += 1;
                    let wait = backoff(failures);
                    if failures == 1 {
                        tracing::warn!(url = %self.urls[i], error = %e, retry_in = ?wait, "tracker announce failed");
                    } else {
                        tracing::debug!(url = %self.urls[i], error = %e, failures, retry_in = ?wait, "tracker announce failed");
                    }
                    wait
                }
            };
            tokio::time::sleep(wait).await;
        }
    }

    /// One announce to every tracker at once (a lookup); returns when all
    /// answered or failed.
    pub(crate) async fn lookup(self: &Arc<Self>, ih: InfoHash, emit: &Emitter) {
        let mut set = tokio::task::JoinSet::new();
        for i in 0..self.urls.len() {
            let (me, emit) = (self.clone(), emit.clone());
            set.spawn(async move {
                if let Err(e) = me.announce_once(i, ih, TEvent::None, &emit).await {
                    tracing::debug!(url = %me.urls[i], error = %e, "tracker lookup failed");
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    /// Send `stopped` for `ih` (`None`: every torrent) to every tracker that
    /// got its `started`. Unbounded: the caller sets the time limit.
    pub(crate) async fn stopped(self: &Arc<Self>, ih: Option<InfoHash>, emit: &Emitter) {
        let pairs: Vec<_> = {
            let mut started = self.started.lock().unwrap_or_else(|e| e.into_inner());
            let pairs: Vec<_> = started
                .iter()
                .filter(|(h, _)| ih.is_none_or(|x| x == *h))
                .copied()
                .collect();
            for p in &pairs {
                started.remove(p);
            }
            pairs
        };
        let mut set = tokio::task::JoinSet::new();
        for (h, i) in pairs {
            let (me, emit) = (self.clone(), emit.clone());
            set.spawn(async move {
                if let Err(e) = me.announce_once(i, h, TEvent::Stopped, &emit).await {
                    tracing::debug!(url = %me.urls[i], error = %e, "tracker stopped failed");
                }
            });
        }
        while set.join_next().await.is_some() {}
    }

    pub(crate) fn status(&self) -> Vec<TrackerStatus> {
        self.urls
            .iter()
            .zip(&self.status)
            .map(|(url, st)| {
                let st = st.lock().unwrap_or_else(|e| e.into_inner());
                TrackerStatus {
                    url: url.clone(),
                    last_error: st.last_error.clone(),
                    peers: st.peers.values().sum::<usize>(),
                    announces: st.announces,
                }
            })
            .collect()
    }
}

/// One tracker in `/status.json`.
#[derive(Clone, Debug, serde::Serialize)]
pub struct TrackerStatus {
    pub url: String,
    pub last_error: Option<String>,
    pub peers: usize,
    pub announces: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn intervals() {
        let s = Duration::from_secs;
        let cases = [
            (1800, None, s(1800)),
            (1800, Some(60), s(1800)),
            (10, Some(60), s(60)),
            (0, None, s(30)),
            (5, Some(10), s(30)),
            (7200, None, s(3600)),
            (u32::MAX, Some(u32::MAX), s(3600)),
        ];
        for (i, m, want) in cases {
            assert_eq!(next_interval(i, m), want, "{i} {m:?}");
        }
        let b: Vec<u64> = (1..=10).map(|f| backoff(f).as_secs()).collect();
        assert_eq!(b, [30, 60, 120, 240, 480, 960, 1920, 3600, 3600, 3600]);
        assert_eq!(backoff(0).as_secs(), 30);
        assert_eq!(backoff(u32::MAX).as_secs(), 3600);
    }
}
