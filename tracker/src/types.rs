//! Protocol types shared by the tracker and its client.

use std::fmt;

/// A 20-byte BitTorrent v1 info hash: the generator's type, one for the
/// whole workspace.
pub use debtorrent_gen::InfoHash;

/// A 20-byte peer id.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PeerId(pub [u8; 20]);

impl fmt::Debug for PeerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", String::from_utf8_lossy(&self.0).escape_debug())
    }
}

/// The announce `event`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum Event {
    /// A regular (periodic) announce.
    #[default]
    None,
    Started,
    Completed,
    Stopped,
}

impl Event {
    /// The BEP 15 numbering.
    pub fn udp_code(self) -> u32 {
        match self {
            Event::None => 0,
            Event::Completed => 1,
            Event::Started => 2,
            Event::Stopped => 3,
        }
    }
    pub fn from_udp_code(c: u32) -> Option<Event> {
        Some(match c {
            0 => Event::None,
            1 => Event::Completed,
            2 => Event::Started,
            3 => Event::Stopped,
            _ => return None,
        })
    }
    /// The BEP 3 query value (`None` for a regular announce).
    pub fn http_name(self) -> Option<&'static str> {
        match self {
            Event::None => None,
            Event::Started => Some("started"),
            Event::Completed => Some("completed"),
            Event::Stopped => Some("stopped"),
        }
    }
}

/// A random 64-bit value for peer-selection seeds and transaction ids.
/// Not for secrets. std's `RandomState` is seeded from the OS once per
/// thread and differs on every call; hashing a counter with it gives cheap,
/// unpredictable-enough values without a generator crate.
pub fn random_u64() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    h.finish()
}

/// Seconds since the Unix epoch.
pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_parsing() {
        let cases = [
            ("00".repeat(20), Some([0u8; 20])),
            ("fF".repeat(20), Some([0xff; 20])),
            ("0".repeat(39), None),
            ("0".repeat(41), None),
            (format!("{}zz", "0".repeat(38)), None),
            (format!("{}é", "0".repeat(38)), None),
        ];
        for (s, want) in cases {
            assert_eq!(InfoHash::from_hex(&s).map(|h| h.0), want, "{s}");
        }
        let h = InfoHash([0xab; 20]);
        assert_eq!(InfoHash::from_hex(&h.to_string()), Some(h));
    }

    #[test]
    fn event_codes() {
        for e in [
            Event::None,
            Event::Started,
            Event::Completed,
            Event::Stopped,
        ] {
            assert_eq!(Event::from_udp_code(e.udp_code()), Some(e));
        }
        assert_eq!(Event::from_udp_code(4), None);
    }
}
