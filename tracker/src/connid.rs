//! Stateless UDP connection ids (BEP 15).
//!
//! A connection id is a keyed hash of the client's address and a one-minute
//! time bucket: `SHA-256(secret || bucket || ip || port)`, truncated to 63
//! bits, with the bucket's parity in the low bit. The server remembers
//! nothing per client, so a flood of connects costs no memory, and an
//! attacker who cannot receive packets at an address cannot obtain an id
//! for it (the secret is 32 random bytes drawn at start). An id is accepted
//! during the minute it was issued and the next one (60 to 120 s, BEP 15
//! asks for at least one minute). The parity bit tells which bucket to
//! check, so validation costs one hash. The input has a fixed length, so
//! SHA-256's length extension does not apply and an HMAC is not needed.

use std::net::{IpAddr, SocketAddr};

use sha2::{Digest, Sha256};

/// Seconds per time bucket.
pub const BUCKET_SECS: u64 = 60;

#[derive(Clone)]
pub struct ConnectionIds {
    secret: [u8; 32],
}

impl ConnectionIds {
    pub fn new(secret: [u8; 32]) -> Self {
        ConnectionIds { secret }
    }

    fn mac(&self, addr: SocketAddr, bucket: u64) -> u64 {
        let mut h = Sha256::new();
        h.update(self.secret);
        h.update(bucket.to_be_bytes());
        match addr.ip() {
            IpAddr::V4(a) => h.update(a.to_ipv6_mapped().octets()),
            IpAddr::V6(a) => h.update(a.octets()),
        }
        h.update(addr.port().to_be_bytes());
        let d = h.finalize();
        let mut b = [0u8; 8];
        b.copy_from_slice(&d[..8]);
        (u64::from_be_bytes(b) & !1) | (bucket & 1)
    }

    /// The id for `addr` at unix time `now`.
    pub fn issue(&self, addr: SocketAddr, now: u64) -> u64 {
        self.mac(addr, now / BUCKET_SECS)
    }

    /// Is `id` valid for `addr` at unix time `now`?
    pub fn check(&self, id: u64, addr: SocketAddr, now: u64) -> bool {
        let bucket = now / BUCKET_SECS;
        let b = if id & 1 == bucket & 1 {
            bucket
        } else {
            match bucket.checked_sub(1) {
                Some(b) => b,
                None => return false,
            }
        };
        self.mac(addr, b) == id
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validity() {
        let ids = ConnectionIds::new([7; 32]);
        let a: SocketAddr = "10.0.0.1:6881".parse().unwrap();
        let t0 = 1_700_000_040; // 40 s into a bucket
        let id = ids.issue(a, t0);
        let cases: Vec<(&str, u64, SocketAddr, u64, bool)> = vec![
            ("same time", id, a, t0, true),
            ("next bucket", id, a, t0 + 60, true),
            ("two buckets later", id, a, t0 + 120, false),
            ("before issue", id, a, t0 - 60, false),
            (
                "other port",
                id,
                "10.0.0.1:6882".parse().unwrap(),
                t0,
                false,
            ),
            ("other ip", id, "10.0.0.2:6881".parse().unwrap(), t0, false),
            ("flipped bit", id ^ 2, a, t0, false),
            ("parity flipped", id ^ 1, a, t0, false),
            ("zero", 0, a, t0, false),
        ];
        for (name, id, addr, now, want) in cases {
            assert_eq!(ids.check(id, addr, now), want, "{name}");
        }
        let other = ConnectionIds::new([8; 32]);
        assert!(!other.check(id, a, t0), "other secret");
    }
}
