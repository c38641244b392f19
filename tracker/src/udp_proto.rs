//! UDP tracker protocol (BEP 15): packet parsing and encoding for both the
//! server and the client. Pure code. Fixed layouts, so hand-written with
//! explicit length checks (the hot path of the UDP server).

use crate::types::{Event, InfoHash, PeerId};

/// The magic constant of a connect request.
pub const PROTOCOL_ID: u64 = 0x417_2710_1980;
pub const ACTION_CONNECT: u32 = 0;
pub const ACTION_ANNOUNCE: u32 = 1;
pub const ACTION_SCRAPE: u32 = 2;
pub const ACTION_ERROR: u32 = 3;
/// Most info hashes in one scrape (BEP 15: about 74 fit a packet).
pub const MAX_SCRAPE_HASHES: usize = 74;
/// Size of an announce request without BEP 41 extensions.
pub const ANNOUNCE_LEN: usize = 98;

/// Why a packet was dropped. Dropped packets get no answer at all: an
/// answer to an unauthenticated packet could be sent to a spoofed address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum PacketError {
    #[error("packet too short")]
    TooShort,
    #[error("bad protocol id in connect")]
    BadProtocolId,
    #[error("unknown action {0}")]
    UnknownAction(u32),
    #[error("bad event {0}")]
    BadEvent(u32),
    #[error("scrape packet length is not 16 + 20n")]
    BadScrapeLength,
    #[error("too many info hashes in scrape")]
    TooManyHashes,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct UdpAnnounce {
    pub connection_id: u64,
    pub transaction_id: u32,
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub downloaded: u64,
    pub left: u64,
    pub uploaded: u64,
    pub event: Event,
    /// The `ip` field (0 = use the sender's address). Ignored by our server
    /// unless the sender is a trusted proxy.
    pub ip: u32,
    pub key: u32,
    /// -1 = default.
    pub num_want: i32,
    pub port: u16,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpRequest {
    Connect {
        transaction_id: u32,
    },
    Announce(UdpAnnounce),
    Scrape {
        connection_id: u64,
        transaction_id: u32,
        info_hashes: Vec<InfoHash>,
    },
}

impl UdpRequest {
    pub fn transaction_id(&self) -> u32 {
        match self {
            UdpRequest::Connect { transaction_id } => *transaction_id,
            UdpRequest::Announce(a) => a.transaction_id,
            UdpRequest::Scrape { transaction_id, .. } => *transaction_id,
        }
    }
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_be_bytes([b[i], b[i + 1]])
}
fn u32_at(b: &[u8], i: usize) -> u32 {
    u32::from_be_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]])
}
fn u64_at(b: &[u8], i: usize) -> u64 {
    (u32_at(b, i) as u64) << 32 | u32_at(b, i + 4) as u64
}
fn arr20(b: &[u8], i: usize) -> [u8; 20] {
    let mut a = [0u8; 20];
    a.copy_from_slice(&b[i..i + 20]);
    a
}

/// Parse a request packet (server side). Every index below is guarded by
/// the length check of its branch.
pub fn parse_request(p: &[u8]) -> Result<UdpRequest, PacketError> {
    if p.len() < 16 {
        return Err(PacketError::TooShort);
    }
    let connection_id = u64_at(p, 0);
    let action = u32_at(p, 8);
    let transaction_id = u32_at(p, 12);
    match action {
        ACTION_CONNECT => {
            if connection_id != PROTOCOL_ID {
                return Err(PacketError::BadProtocolId);
            }
            Ok(UdpRequest::Connect { transaction_id })
        }
        ACTION_ANNOUNCE => {
            // Longer packets carry BEP 41 options, which we ignore.
            if p.len() < ANNOUNCE_LEN {
                return Err(PacketError::TooShort);
            }
            let ev = u32_at(p, 80);
            Ok(UdpRequest::Announce(UdpAnnounce {
                connection_id,
                transaction_id,
                info_hash: InfoHash(arr20(p, 16)),
                peer_id: PeerId(arr20(p, 36)),
                downloaded: u64_at(p, 56),
                left: u64_at(p, 64),
                uploaded: u64_at(p, 72),
                event: Event::from_udp_code(ev).ok_or(PacketError::BadEvent(ev))?,
                ip: u32_at(p, 84),
                key: u32_at(p, 88),
                num_want: u32_at(p, 92) as i32,
                port: u16_at(p, 96),
            }))
        }
        ACTION_SCRAPE => {
            let rest = p.len() - 16;
            if rest == 0 || rest % 20 != 0 {
                return Err(PacketError::BadScrapeLength);
            }
            if rest / 20 > MAX_SCRAPE_HASHES {
                return Err(PacketError::TooManyHashes);
            }
            let info_hashes = p[16..]
                .chunks_exact(20)
                .map(|c| InfoHash(arr20(c, 0)))
                .collect();
            Ok(UdpRequest::Scrape {
                connection_id,
                transaction_id,
                info_hashes,
            })
        }
        a => Err(PacketError::UnknownAction(a)),
    }
}

pub fn encode_connect_response(transaction_id: u32, connection_id: u64, out: &mut Vec<u8>) {
    out.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(&connection_id.to_be_bytes());
}

/// Announce response header; the caller appends the compact peers.
pub fn encode_announce_header(
    transaction_id: u32,
    interval: u32,
    leechers: u32,
    seeders: u32,
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    out.extend_from_slice(&interval.to_be_bytes());
    out.extend_from_slice(&leechers.to_be_bytes());
    out.extend_from_slice(&seeders.to_be_bytes());
}

pub fn encode_scrape_header(transaction_id: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
}

pub fn encode_scrape_entry(seeders: u32, completed: u32, leechers: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&seeders.to_be_bytes());
    out.extend_from_slice(&completed.to_be_bytes());
    out.extend_from_slice(&leechers.to_be_bytes());
}

/// An error response, truncated so that it is never larger than the
/// request it answers (no amplification).
pub fn encode_error(transaction_id: u32, message: &str, request_len: usize, out: &mut Vec<u8>) {
    out.extend_from_slice(&ACTION_ERROR.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    let room = request_len.saturating_sub(8);
    let mut msg = &message.as_bytes()[..message.len().min(room)];
    // Do not cut a UTF-8 sequence in half.
    while std::str::from_utf8(msg).is_err() && !msg.is_empty() {
        msg = &msg[..msg.len() - 1];
    }
    out.extend_from_slice(msg);
}

// ------------------------------------------------------------ client side

pub fn encode_connect_request(transaction_id: u32, out: &mut Vec<u8>) {
    out.extend_from_slice(&PROTOCOL_ID.to_be_bytes());
    out.extend_from_slice(&ACTION_CONNECT.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
}

pub fn encode_announce_request(a: &UdpAnnounce, out: &mut Vec<u8>) {
    out.extend_from_slice(&a.connection_id.to_be_bytes());
    out.extend_from_slice(&ACTION_ANNOUNCE.to_be_bytes());
    out.extend_from_slice(&a.transaction_id.to_be_bytes());
    out.extend_from_slice(&a.info_hash.0);
    out.extend_from_slice(&a.peer_id.0);
    out.extend_from_slice(&a.downloaded.to_be_bytes());
    out.extend_from_slice(&a.left.to_be_bytes());
    out.extend_from_slice(&a.uploaded.to_be_bytes());
    out.extend_from_slice(&a.event.udp_code().to_be_bytes());
    out.extend_from_slice(&a.ip.to_be_bytes());
    out.extend_from_slice(&a.key.to_be_bytes());
    out.extend_from_slice(&a.num_want.to_be_bytes());
    out.extend_from_slice(&a.port.to_be_bytes());
}

pub fn encode_scrape_request(
    connection_id: u64,
    transaction_id: u32,
    hashes: &[InfoHash],
    out: &mut Vec<u8>,
) {
    out.extend_from_slice(&connection_id.to_be_bytes());
    out.extend_from_slice(&ACTION_SCRAPE.to_be_bytes());
    out.extend_from_slice(&transaction_id.to_be_bytes());
    for h in hashes {
        out.extend_from_slice(&h.0);
    }
}

/// A response packet (client side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UdpResponse<'a> {
    Connect {
        transaction_id: u32,
        connection_id: u64,
    },
    Announce {
        transaction_id: u32,
        interval: u32,
        leechers: u32,
        seeders: u32,
        /// Compact peers; 6 or 18 bytes each depending on the family the
        /// request was sent over.
        peers: &'a [u8],
    },
    Scrape {
        transaction_id: u32,
        /// (seeders, completed, leechers) per requested hash, in order.
        entries: Vec<(u32, u32, u32)>,
    },
    Error {
        transaction_id: u32,
        message: String,
    },
}

pub fn parse_response(p: &[u8]) -> Result<UdpResponse<'_>, PacketError> {
    if p.len() < 8 {
        return Err(PacketError::TooShort);
    }
    let action = u32_at(p, 0);
    let transaction_id = u32_at(p, 4);
    match action {
        ACTION_CONNECT => {
            if p.len() < 16 {
                return Err(PacketError::TooShort);
            }
            Ok(UdpResponse::Connect {
                transaction_id,
                connection_id: u64_at(p, 8),
            })
        }
        ACTION_ANNOUNCE => {
            if p.len() < 20 {
                return Err(PacketError::TooShort);
            }
            Ok(UdpResponse::Announce {
                transaction_id,
                interval: u32_at(p, 8),
                leechers: u32_at(p, 12),
                seeders: u32_at(p, 16),
                peers: &p[20..],
            })
        }
        ACTION_SCRAPE => Ok(UdpResponse::Scrape {
            transaction_id,
            entries: p[8..]
                .chunks_exact(12)
                .map(|c| (u32_at(c, 0), u32_at(c, 4), u32_at(c, 8)))
                .collect(),
        }),
        ACTION_ERROR => Ok(UdpResponse::Error {
            transaction_id,
            message: String::from_utf8_lossy(&p[8..]).into_owned(),
        }),
        a => Err(PacketError::UnknownAction(a)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn announce() -> UdpAnnounce {
        UdpAnnounce {
            connection_id: 0x1122_3344_5566_7788,
            transaction_id: 42,
            info_hash: InfoHash([7; 20]),
            peer_id: PeerId([8; 20]),
            downloaded: 1,
            left: 2,
            uploaded: 3,
            event: Event::Started,
            ip: 0,
            key: 99,
            num_want: -1,
            port: 6881,
        }
    }

    #[test]
    fn request_roundtrips() {
        let mut b = Vec::new();
        encode_connect_request(5, &mut b);
        assert_eq!(
            parse_request(&b),
            Ok(UdpRequest::Connect { transaction_id: 5 })
        );
        let mut b = Vec::new();
        encode_announce_request(&announce(), &mut b);
        assert_eq!(b.len(), ANNOUNCE_LEN);
        assert_eq!(parse_request(&b), Ok(UdpRequest::Announce(announce())));
        // BEP 41 options after the fixed part are ignored.
        b.extend_from_slice(&[2, 5, b'/', b'a', b'n', b'n', b'o']);
        assert_eq!(parse_request(&b), Ok(UdpRequest::Announce(announce())));
        let mut b = Vec::new();
        encode_scrape_request(1, 2, &[InfoHash([1; 20]), InfoHash([2; 20])], &mut b);
        assert_eq!(
            parse_request(&b),
            Ok(UdpRequest::Scrape {
                connection_id: 1,
                transaction_id: 2,
                info_hashes: vec![InfoHash([1; 20]), InfoHash([2; 20])]
            })
        );
    }

    #[test]
    fn bad_requests() {
        let mut connect = Vec::new();
        encode_connect_request(5, &mut connect);
        let mut ann = Vec::new();
        encode_announce_request(&announce(), &mut ann);
        let mut bad_proto = connect.clone();
        bad_proto[0] ^= 1;
        let mut bad_event = ann.clone();
        bad_event[83] = 9;
        let mut bad_action = connect.clone();
        bad_action[11] = 7;
        let mut scrape = Vec::new();
        encode_scrape_request(1, 2, &[InfoHash([1; 20]); 75], &mut scrape);
        let cases: Vec<(Vec<u8>, PacketError)> = vec![
            (vec![], PacketError::TooShort),
            (connect[..15].to_vec(), PacketError::TooShort),
            (bad_proto, PacketError::BadProtocolId),
            (ann[..97].to_vec(), PacketError::TooShort),
            (bad_event, PacketError::BadEvent(9)),
            (bad_action, PacketError::UnknownAction(7)),
            (scrape[..16].to_vec(), PacketError::BadScrapeLength),
            (scrape[..37].to_vec(), PacketError::BadScrapeLength),
            (scrape.clone(), PacketError::TooManyHashes),
        ];
        for (i, (p, want)) in cases.into_iter().enumerate() {
            assert_eq!(parse_request(&p), Err(want), "case {i}");
        }
    }

    #[test]
    fn responses() {
        let mut b = Vec::new();
        encode_connect_response(9, 77, &mut b);
        assert_eq!(b.len(), 16);
        assert_eq!(
            parse_response(&b),
            Ok(UdpResponse::Connect {
                transaction_id: 9,
                connection_id: 77
            })
        );
        let mut b = Vec::new();
        encode_announce_header(9, 900, 2, 3, &mut b);
        b.extend_from_slice(&[127, 0, 0, 1, 0, 80]);
        assert_eq!(
            parse_response(&b),
            Ok(UdpResponse::Announce {
                transaction_id: 9,
                interval: 900,
                leechers: 2,
                seeders: 3,
                peers: &[127, 0, 0, 1, 0, 80]
            })
        );
        let mut b = Vec::new();
        encode_scrape_header(9, &mut b);
        encode_scrape_entry(1, 2, 3, &mut b);
        assert_eq!(
            parse_response(&b),
            Ok(UdpResponse::Scrape {
                transaction_id: 9,
                entries: vec![(1, 2, 3)]
            })
        );
    }

    #[test]
    fn error_never_larger_than_request() {
        for (msg, req_len, want) in [
            ("info hash not allowed", 98, "info hash not allowed"),
            ("info hash not allowed", 16, "info has"),
            ("info hash not allowed", 4, ""),
            ("héllo", 10, "h"),
        ] {
            let mut b = Vec::new();
            encode_error(1, msg, req_len, &mut b);
            assert!(b.len() <= req_len.max(8));
            assert_eq!(
                parse_response(&b),
                Ok(UdpResponse::Error {
                    transaction_id: 1,
                    message: want.into()
                })
            );
        }
    }
}
