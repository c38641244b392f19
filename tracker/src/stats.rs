//! Counters and their renderings (`/stats`, `/stats.json`, `/metrics`).
//! Counters are relaxed atomics bumped on the hot path; the rate is
//! computed from samples taken by the housekeeping task.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;

use serde::Serialize;

use crate::swarm::Totals;

macro_rules! counters {
    ($($(#[$m:meta])* $name:ident,)*) => {
        /// Monotonic counters.
        #[derive(Default, Debug)]
        pub struct Counters { $($(#[$m])* pub $name: AtomicU64,)* }
        /// A copy of the counters.
        #[derive(Default, Debug, Clone, Copy, Serialize, PartialEq, Eq)]
        pub struct CounterValues { $(pub $name: u64,)* }
        impl Counters {
            pub fn values(&self) -> CounterValues {
                CounterValues { $($name: self.$name.load(Ordering::Relaxed),)* }
            }
        }
        impl CounterValues {
            fn each(&self) -> Vec<(&'static str, u64)> {
                vec![$((stringify!($name), self.$name),)*]
            }
        }
    };
}

counters! {
    /// Successful HTTP announces.
    http_announces,
    /// Successful UDP announces.
    udp_announces,
    http_scrapes,
    udp_scrapes,
    udp_connects,
    /// HTTP requests refused with a failure reason (malformed or not allowed).
    http_failures,
    /// UDP packets answered with an error (valid connection id, bad request).
    udp_errors,
    /// UDP packets dropped without an answer (garbage, bad connection id).
    udp_dropped,
    /// Requests refused by the info-hash or network allowlists.
    refused,
    /// Announces whose peer was not stored because a limit was reached.
    limited,
    /// Peers removed by expiry.
    expired,
}

pub fn inc(c: &AtomicU64) {
    c.fetch_add(1, Ordering::Relaxed);
}

/// Announce-rate samples: (unix seconds, total announces).
#[derive(Default)]
pub struct Rate {
    samples: Mutex<VecDeque<(u64, u64)>>,
}

/// Window of the announces-per-second average.
pub const RATE_WINDOW_SECS: u64 = 60;

impl Rate {
    pub fn sample(&self, now: u64, total: u64) {
        let mut s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        s.push_back((now, total));
        while s.len() > 2 && s.front().is_some_and(|f| now - f.0 > RATE_WINDOW_SECS) {
            s.pop_front();
        }
    }
    pub fn per_second(&self) -> f64 {
        let s = self.samples.lock().unwrap_or_else(|e| e.into_inner());
        match (s.front(), s.back()) {
            (Some(a), Some(b)) if b.0 > a.0 => (b.1 - a.1) as f64 / (b.0 - a.0) as f64,
            _ => 0.0,
        }
    }
}

/// Everything `/stats.json` shows.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub version: &'static str,
    pub uptime_secs: u64,
    #[serde(flatten)]
    pub totals: Totals,
    pub announces_per_second: f64,
    #[serde(flatten)]
    pub counters: CounterValues,
}

pub fn render_json(s: &Snapshot) -> Vec<u8> {
    serde_json::to_vec_pretty(s).unwrap_or_else(|e| format!("{{\"error\":\"{e}\"}}").into_bytes())
}

pub fn render_metrics(s: &Snapshot) -> String {
    let mut o = String::new();
    let gauges = [
        (
            "torrents",
            "Torrents with at least one peer",
            s.totals.torrents,
        ),
        ("peers", "Stored peers", s.totals.peers),
        ("seeders", "Stored seeders", s.totals.seeders),
        ("leechers", "Stored leechers", s.totals.leechers),
    ];
    for (name, help, v) in gauges {
        let _ = writeln!(o, "# HELP debtorrent_tracker_{name} {help}.");
        let _ = writeln!(o, "# TYPE debtorrent_tracker_{name} gauge");
        let _ = writeln!(o, "debtorrent_tracker_{name} {v}");
    }
    let _ = writeln!(
        o,
        "# HELP debtorrent_tracker_announces_per_second Announces per second over the last minute.\n# TYPE debtorrent_tracker_announces_per_second gauge\ndebtorrent_tracker_announces_per_second {}",
        s.announces_per_second
    );
    for (name, v) in s.counters.each() {
        let _ = writeln!(o, "# TYPE debtorrent_tracker_{name}_total counter");
        let _ = writeln!(o, "debtorrent_tracker_{name}_total {v}");
    }
    o
}

pub fn render_html(s: &Snapshot) -> String {
    let mut o = String::from(
        "<!DOCTYPE html>\n<html><head><meta charset=\"utf-8\"><title>debtorrent-tracker</title></head><body>\n<h1>debtorrent-tracker</h1>\n<table>\n",
    );
    let rows = [
        ("torrents", s.totals.torrents.to_string()),
        ("peers", s.totals.peers.to_string()),
        ("seeders", s.totals.seeders.to_string()),
        ("leechers", s.totals.leechers.to_string()),
        (
            "announces per second (1 min)",
            format!("{:.1}", s.announces_per_second),
        ),
        ("uptime (s)", s.uptime_secs.to_string()),
    ];
    for (k, v) in rows {
        let _ = writeln!(o, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    for (k, v) in s.counters.each() {
        let _ = writeln!(o, "<tr><th>{k}</th><td>{v}</td></tr>");
    }
    o.push_str("</table>\n</body></html>\n");
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rate() {
        let r = Rate::default();
        assert_eq!(r.per_second(), 0.0);
        for (t, n) in [(100, 0), (110, 100), (120, 300)] {
            r.sample(t, n);
        }
        assert_eq!(r.per_second(), 15.0);
        r.sample(300, 300);
        assert_eq!(r.per_second(), 0.0);
    }

    #[test]
    fn renderings() {
        let c = Counters::default();
        inc(&c.http_announces);
        let s = Snapshot {
            version: "x",
            uptime_secs: 1,
            totals: Totals {
                torrents: 2,
                peers: 3,
                ..Totals::default()
            },
            announces_per_second: 0.5,
            counters: c.values(),
        };
        let j: serde_json::Value = serde_json::from_slice(&render_json(&s)).unwrap();
        assert_eq!(j["peers"], 3);
        assert_eq!(j["http_announces"], 1);
        let m = render_metrics(&s);
        assert!(m.contains("\ndebtorrent_tracker_peers 3\n"));
        assert!(m.contains("\ndebtorrent_tracker_http_announces_total 1\n"));
        assert!(render_html(&s).contains("<tr><th>torrents</th><td>2</td></tr>"));
    }
}
