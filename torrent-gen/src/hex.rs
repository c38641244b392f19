//! Hex, both ways: SHA-256s in indexes and Release files, info hashes in
//! URLs, DHT and tracker messages. One copy for the whole workspace.

const DIGITS: &[u8; 16] = b"0123456789abcdef";

/// Lower-case hex of `bytes`.
pub fn encode_hex(bytes: &[u8]) -> String {
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 15)]));
    }
    s
}

/// Exactly `2 * N` hex digits (either case) decoded to `N` bytes.
///
/// Table-driven and branch-free in the loop: `debtorrent-gen hash` decodes
/// one SHA-256 per index entry (64 thousand on bookworm main), and a
/// `match` per digit cost an eighth of its run time.
pub fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    let mut bad = 0u8;
    for (o, pair) in out.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        bad |= hi | lo;
        *o = (hi << 4) | (lo & 15);
    }
    // Every valid digit's value is below 16; an invalid one is 0xff.
    (bad < 16).then_some(out)
}

/// The value of each byte as a hex digit, or 0xff.
const HEX_VALUE: [u8; 256] = {
    let mut t = [0xffu8; 256];
    let mut i = 0;
    while i < 10 {
        t[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        t[b'a' as usize + i] = 10 + i as u8;
        t[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    t
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_rejects() {
        assert_eq!(encode_hex(&[0x00, 0xab, 0xff]), "00abff");
        assert_eq!(decode_hex::<3>(b"00ABff"), Some([0x00, 0xab, 0xff]));
        for bad in [&b"00abf"[..], b"00abfff", b"00abfg", b"+0abff"] {
            assert_eq!(decode_hex::<3>(bad), None, "{bad:?}");
        }
    }
}
