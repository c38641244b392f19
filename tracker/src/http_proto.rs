//! HTTP tracker protocol (BEP 3, BEP 23 compact peers, BEP 7 `peers6`,
//! BEP 48 scrape): query parsing and bencoded responses, for both the server
//! and the client. Pure code: bytes in, bytes out.
//!
//! The query parser and the response encoder are hand-written: they run on
//! every announce, decode straight into fixed-size arrays without
//! allocating, and enforce our size limits while scanning. A general URL or
//! bencode crate would allocate a map per request. The client side parses
//! tracker responses (not a hot path) with `bendy`.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use crate::types::{Event, InfoHash, PeerId};

/// Longest query string accepted.
pub const MAX_QUERY_LEN: usize = 4096;
/// Longest single (encoded) parameter value.
pub const MAX_VALUE_LEN: usize = 256;
/// Most parameters in one query.
pub const MAX_PARAMS: usize = 128;

/// Why a request was refused. The `Display` text is the bencoded
/// `failure reason` sent to the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RequestError {
    #[error("query string too long")]
    QueryTooLong,
    #[error("too many parameters")]
    TooManyParams,
    #[error("parameter {0} is too long")]
    ValueTooLong(&'static str),
    #[error("bad percent-encoding in {0}")]
    BadEncoding(&'static str),
    #[error("missing parameter {0}")]
    Missing(&'static str),
    #[error("parameter {0} given more than once")]
    Duplicate(&'static str),
    #[error("info_hash must be 20 bytes")]
    BadInfoHash,
    #[error("peer_id must be 20 bytes")]
    BadPeerId,
    #[error("invalid {0}")]
    Invalid(&'static str),
    #[error("too many info_hash values in scrape (max {0})")]
    TooManyHashes(usize),
}

/// A parsed HTTP announce.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnnounceRequest {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    /// Bytes left; `None` when not sent (counted as a leecher, not a seeder).
    pub left: Option<u64>,
    pub event: Event,
    /// As sent; the policy caps it.
    pub numwant: Option<u32>,
    /// A 32-bit digest of the `key` parameter (0 if absent).
    pub key: u32,
    /// `compact=0` asks for the dictionary peer list.
    pub compact: bool,
    /// The `ip` parameter, honoured only from trusted proxies.
    pub ip: Option<IpAddr>,
}

fn hexval(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// Percent-decode `raw` into `out`; returns the decoded length, or `None`
/// on bad encoding or if it does not fit.
fn decode_into(raw: &[u8], out: &mut [u8]) -> Option<usize> {
    let mut i = 0;
    let mut n = 0;
    while i < raw.len() {
        let b = match raw[i] {
            b'%' => {
                let hi = hexval(*raw.get(i + 1)?)?;
                let lo = hexval(*raw.get(i + 2)?)?;
                i += 3;
                hi << 4 | lo
            }
            c => {
                i += 1;
                c
            }
        };
        *out.get_mut(n)? = b;
        n += 1;
    }
    Some(n)
}

fn decode_20(raw: &[u8], err: RequestError) -> Result<[u8; 20], RequestError> {
    let mut out = [0u8; 20];
    // Decode into a 21-byte buffer so that "too long" is detected.
    let mut buf = [0u8; 21];
    match decode_into(raw, &mut buf) {
        Some(20) => {
            out.copy_from_slice(&buf[..20]);
            Ok(out)
        }
        _ => Err(err),
    }
}

fn decode_str<'a>(
    raw: &[u8],
    buf: &'a mut [u8; MAX_VALUE_LEN],
    name: &'static str,
) -> Result<&'a str, RequestError> {
    let n = decode_into(raw, buf).ok_or(RequestError::BadEncoding(name))?;
    std::str::from_utf8(&buf[..n]).map_err(|_| RequestError::Invalid(name))
}

fn parse_u64(raw: &[u8], name: &'static str) -> Result<u64, RequestError> {
    if raw.is_empty() || raw.len() > 20 || !raw.iter().all(u8::is_ascii_digit) {
        return Err(RequestError::Invalid(name));
    }
    let mut v: u64 = 0;
    for &c in raw {
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add((c - b'0') as u64))
            .ok_or(RequestError::Invalid(name))?;
    }
    Ok(v)
}

/// Split a query into (key, raw value) pairs, enforcing the size limits.
/// A query parameter: (name, raw value).
type Param<'a> = (&'a [u8], &'a [u8]);

fn pairs(query: &[u8]) -> Result<Vec<Param<'_>>, RequestError> {
    if query.len() > MAX_QUERY_LEN {
        return Err(RequestError::QueryTooLong);
    }
    let mut out = Vec::with_capacity(16);
    for part in query.split(|&c| c == b'&') {
        if part.is_empty() {
            continue;
        }
        if out.len() == MAX_PARAMS {
            return Err(RequestError::TooManyParams);
        }
        let (k, v) = match memchr::memchr(b'=', part) {
            Some(i) => (&part[..i], &part[i + 1..]),
            None => (part, &b""[..]),
        };
        out.push((k, v));
    }
    Ok(out)
}

fn set<T>(slot: &mut Option<T>, v: T, name: &'static str) -> Result<(), RequestError> {
    if slot.is_some() {
        return Err(RequestError::Duplicate(name));
    }
    *slot = Some(v);
    Ok(())
}

/// FNV-1a: a stable 32-bit digest of the `key` parameter.
fn key_digest(raw: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in raw {
        h ^= b as u32;
        h = h.wrapping_mul(0x0100_0193);
    }
    h.max(1)
}

/// Parse an announce query string (the part after `?`).
pub fn parse_announce(query: &[u8]) -> Result<AnnounceRequest, RequestError> {
    let mut info_hash = None;
    let mut peer_id = None;
    let mut port = None;
    let mut uploaded = None;
    let mut downloaded = None;
    let mut left = None;
    let mut event = None;
    let mut numwant = None;
    let mut key = None;
    let mut compact = None;
    let mut ip = None;
    for (k, v) in pairs(query)? {
        let name: &'static str = match k {
            b"info_hash" => "info_hash",
            b"peer_id" => "peer_id",
            b"port" => "port",
            b"uploaded" => "uploaded",
            b"downloaded" => "downloaded",
            b"left" => "left",
            b"event" => "event",
            b"numwant" | b"num_want" => "numwant",
            b"key" => "key",
            b"compact" => "compact",
            b"ip" => "ip",
            // Clients send many extensions (no_peer_id, supportcrypto,
            // corrupt, trackerid, ...): ignored, but still size-limited.
            _ => {
                if v.len() > MAX_VALUE_LEN {
                    return Err(RequestError::ValueTooLong("parameter"));
                }
                continue;
            }
        };
        if v.len() > MAX_VALUE_LEN {
            return Err(RequestError::ValueTooLong(name));
        }
        match name {
            "info_hash" => set(
                &mut info_hash,
                InfoHash(decode_20(v, RequestError::BadInfoHash)?),
                name,
            )?,
            "peer_id" => set(
                &mut peer_id,
                PeerId(decode_20(v, RequestError::BadPeerId)?),
                name,
            )?,
            "port" => {
                let p = parse_u64(v, name)?;
                let p = u16::try_from(p).map_err(|_| RequestError::Invalid(name))?;
                set(&mut port, p, name)?
            }
            "uploaded" => set(&mut uploaded, parse_u64(v, name)?, name)?,
            "downloaded" => set(&mut downloaded, parse_u64(v, name)?, name)?,
            "left" => set(&mut left, parse_u64(v, name)?, name)?,
            "numwant" => {
                let n = parse_u64(v, name)?;
                let n = u32::try_from(n).map_err(|_| RequestError::Invalid(name))?;
                set(&mut numwant, n, name)?
            }
            "event" => {
                let e = match v {
                    b"started" => Event::Started,
                    b"completed" => Event::Completed,
                    b"stopped" => Event::Stopped,
                    b"" | b"empty" | b"paused" => Event::None,
                    _ => return Err(RequestError::Invalid(name)),
                };
                set(&mut event, e, name)?
            }
            "key" => set(&mut key, key_digest(v), name)?,
            "compact" => {
                let c = match v {
                    b"1" => true,
                    b"0" => false,
                    _ => return Err(RequestError::Invalid(name)),
                };
                set(&mut compact, c, name)?
            }
            "ip" => {
                let mut buf = [0u8; MAX_VALUE_LEN];
                let s = decode_str(v, &mut buf, name)?;
                let a: IpAddr = s.parse().map_err(|_| RequestError::Invalid(name))?;
                set(&mut ip, a, name)?
            }
            _ => {}
        }
    }
    Ok(AnnounceRequest {
        info_hash: info_hash.ok_or(RequestError::Missing("info_hash"))?,
        peer_id: peer_id.ok_or(RequestError::Missing("peer_id"))?,
        port: match port.ok_or(RequestError::Missing("port"))? {
            0 => return Err(RequestError::Invalid("port")),
            p => p,
        },
        uploaded: uploaded.unwrap_or(0),
        downloaded: downloaded.unwrap_or(0),
        left,
        event: event.unwrap_or_default(),
        numwant,
        key: key.unwrap_or(0),
        compact: compact.unwrap_or(true),
        ip,
    })
}

/// Parse a scrape query: one or more `info_hash`, at most `max`.
pub fn parse_scrape(query: &[u8], max: usize) -> Result<Vec<InfoHash>, RequestError> {
    let mut out = Vec::new();
    for (k, v) in pairs(query)? {
        if k != b"info_hash" {
            continue;
        }
        if v.len() > MAX_VALUE_LEN {
            return Err(RequestError::ValueTooLong("info_hash"));
        }
        if out.len() == max {
            return Err(RequestError::TooManyHashes(max));
        }
        out.push(InfoHash(decode_20(v, RequestError::BadInfoHash)?));
    }
    if out.is_empty() {
        // No full scrapes: they would list every torrent to anyone.
        return Err(RequestError::Missing("info_hash"));
    }
    Ok(out)
}

// ---------------------------------------------------------------- encoding

// Through the workspace's one bencode writer (`debtorrent_gen::bencode`).
use debtorrent_gen::bencode::Writer;

/// A bencoded failure response.
pub fn encode_failure(reason: &str) -> Vec<u8> {
    debtorrent_gen::bencode::to_vec(|w| {
        w.dict()
            .bytes(b"failure reason")
            .bytes(reason.as_bytes())
            .end();
    })
}

/// Fields of an announce response.
#[derive(Debug, Clone, Copy)]
pub struct AnnounceAnswer<'a> {
    pub complete: u32,
    pub incomplete: u32,
    pub interval: u32,
    pub min_interval: u32,
    /// Compact IPv4 peers (6 bytes each).
    pub peers4: &'a [u8],
    /// Compact IPv6 peers (18 bytes each).
    pub peers6: &'a [u8],
    /// `compact=0`: peers as a list of dictionaries.
    pub compact: bool,
}

/// Encode an announce response (keys in bencode's sorted order).
pub fn encode_announce(a: &AnnounceAnswer<'_>, out: &mut Vec<u8>) {
    let mut w = Writer::new(out);
    w.dict()
        .bytes(b"complete")
        .uint(u64::from(a.complete))
        .bytes(b"incomplete")
        .uint(u64::from(a.incomplete))
        .bytes(b"interval")
        .uint(u64::from(a.interval))
        .bytes(b"min interval")
        .uint(u64::from(a.min_interval));
    if a.compact {
        w.bytes(b"peers").bytes(a.peers4);
        if !a.peers6.is_empty() {
            w.bytes(b"peers6").bytes(a.peers6);
        }
    } else {
        w.bytes(b"peers").list();
        let v4 = a.peers4.chunks_exact(6).map(|c| {
            let ip = IpAddr::V4(Ipv4Addr::new(c[0], c[1], c[2], c[3]));
            (ip, u16::from_be_bytes([c[4], c[5]]))
        });
        let v6 = a.peers6.chunks_exact(18).map(|c| {
            let mut b = [0u8; 16];
            b.copy_from_slice(&c[..16]);
            (
                IpAddr::V6(Ipv6Addr::from(b)),
                u16::from_be_bytes([c[16], c[17]]),
            )
        });
        for (ip, port) in v4.chain(v6) {
            w.dict()
                .bytes(b"ip")
                .bytes(ip.to_string().as_bytes())
                .bytes(b"port")
                .uint(u64::from(port))
                .end();
        }
        w.end();
    }
    w.end();
}

/// Scrape counts for one torrent, as encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ScrapeEntry {
    pub complete: u32,
    pub downloaded: u32,
    pub incomplete: u32,
}

/// Encode a scrape response; `files` need not be sorted.
pub fn encode_scrape(files: &mut [(InfoHash, ScrapeEntry)]) -> Vec<u8> {
    files.sort_by_key(|a| a.0);
    let mut w = Writer::new(Vec::with_capacity(16 + files.len() * 80));
    w.dict().bytes(b"files").dict();
    for (h, e) in files.iter() {
        w.bytes(&h.0)
            .dict()
            .bytes(b"complete")
            .uint(u64::from(e.complete))
            .bytes(b"downloaded")
            .uint(u64::from(e.downloaded))
            .bytes(b"incomplete")
            .uint(u64::from(e.incomplete))
            .end();
    }
    w.end().end();
    // A Vec never fails a write.
    w.finish().unwrap_or_default()
}

// ------------------------------------------------------------ client side

/// Percent-encode every byte that is not unreserved (RFC 3986).
pub fn percent_encode(bytes: &[u8], out: &mut String) {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    for &b in bytes {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push('%');
            out.push(HEX[(b >> 4) as usize] as char);
            out.push(HEX[(b & 15) as usize] as char);
        }
    }
}

/// What the client sends in an announce.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct AnnounceParams {
    pub info_hash: InfoHash,
    pub peer_id: PeerId,
    pub port: u16,
    pub uploaded: u64,
    pub downloaded: u64,
    pub left: u64,
    pub event: Event,
    /// `None`: let the tracker choose.
    pub numwant: Option<u32>,
    pub key: u32,
}

/// Build the announce query string (without `?`).
pub fn announce_query(p: &AnnounceParams) -> String {
    let mut q = String::with_capacity(256);
    q.push_str("info_hash=");
    percent_encode(&p.info_hash.0, &mut q);
    q.push_str("&peer_id=");
    percent_encode(&p.peer_id.0, &mut q);
    q.push_str(&format!(
        "&port={}&uploaded={}&downloaded={}&left={}&compact=1&key={:08x}",
        p.port, p.uploaded, p.downloaded, p.left, p.key
    ));
    if let Some(e) = p.event.http_name() {
        q.push_str("&event=");
        q.push_str(e);
    }
    if let Some(n) = p.numwant {
        q.push_str(&format!("&numwant={n}"));
    }
    q
}

/// Build a scrape query string.
pub fn scrape_query(hashes: &[InfoHash]) -> String {
    let mut q = String::new();
    for (i, h) in hashes.iter().enumerate() {
        if i > 0 {
            q.push('&');
        }
        q.push_str("info_hash=");
        percent_encode(&h.0, &mut q);
    }
    q
}

/// A tracker's announce answer, as the client sees it.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct AnnounceResponse {
    pub interval: u32,
    pub min_interval: Option<u32>,
    pub complete: Option<u32>,
    pub incomplete: Option<u32>,
    pub peers: Vec<SocketAddr>,
    pub warning: Option<String>,
}

/// Why a tracker response could not be used.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResponseError {
    #[error("tracker failure: {0}")]
    Failure(String),
    #[error("malformed tracker response: {0}")]
    Malformed(String),
}

fn malformed(e: impl std::fmt::Display) -> ResponseError {
    ResponseError::Malformed(e.to_string())
}

/// Decode compact IPv4 (6-byte) or IPv6 (18-byte) peers.
pub fn decode_compact(bytes: &[u8], v6: bool, out: &mut Vec<SocketAddr>) {
    if v6 {
        for c in bytes.chunks_exact(18) {
            let mut b = [0u8; 16];
            b.copy_from_slice(&c[..16]);
            out.push(SocketAddr::new(
                Ipv6Addr::from(b).into(),
                u16::from_be_bytes([c[16], c[17]]),
            ));
        }
    } else {
        for c in bytes.chunks_exact(6) {
            out.push(SocketAddr::new(
                Ipv4Addr::new(c[0], c[1], c[2], c[3]).into(),
                u16::from_be_bytes([c[4], c[5]]),
            ));
        }
    }
}

fn int(o: bendy::decoding::Object<'_, '_>) -> Result<i64, ResponseError> {
    match o {
        bendy::decoding::Object::Integer(s) => s.parse().map_err(malformed),
        _ => Err(malformed("expected an integer")),
    }
}

fn u32_of(o: bendy::decoding::Object<'_, '_>) -> Result<u32, ResponseError> {
    u32::try_from(int(o)?.max(0)).map_err(malformed)
}

/// Parse a bencoded announce response.
pub fn parse_announce_response(body: &[u8]) -> Result<AnnounceResponse, ResponseError> {
    use bendy::decoding::{Decoder, Object};
    let mut dec = Decoder::new(body).with_max_depth(4);
    let Some(Object::Dict(mut dict)) = dec.next_object().map_err(malformed)? else {
        return Err(malformed("not a dictionary"));
    };
    let mut r = AnnounceResponse::default();
    let mut have_interval = false;
    while let Some((k, v)) = dict.next_pair().map_err(malformed)? {
        match k {
            b"failure reason" => {
                let Object::Bytes(b) = v else {
                    return Err(malformed("failure reason"));
                };
                return Err(ResponseError::Failure(
                    String::from_utf8_lossy(b).into_owned(),
                ));
            }
            b"warning message" => {
                if let Object::Bytes(b) = v {
                    r.warning = Some(String::from_utf8_lossy(b).into_owned());
                }
            }
            b"interval" => {
                r.interval = u32_of(v)?;
                have_interval = true;
            }
            b"min interval" => r.min_interval = Some(u32_of(v)?),
            b"complete" => r.complete = Some(u32_of(v)?),
            b"incomplete" => r.incomplete = Some(u32_of(v)?),
            b"peers" => match v {
                Object::Bytes(b) => decode_compact(b, false, &mut r.peers),
                Object::List(mut l) => {
                    while let Some(p) = l.next_object().map_err(malformed)? {
                        let Object::Dict(mut d) = p else {
                            return Err(malformed("peer entry"));
                        };
                        let (mut ip, mut port) = (None, None);
                        while let Some((k, v)) = d.next_pair().map_err(malformed)? {
                            match (k, v) {
                                (b"ip", Object::Bytes(b)) => {
                                    ip = std::str::from_utf8(b)
                                        .ok()
                                        .and_then(|s| s.parse::<IpAddr>().ok())
                                }
                                (b"port", v) => port = u16::try_from(int(v)?).ok(),
                                _ => {}
                            }
                        }
                        if let (Some(ip), Some(port)) = (ip, port) {
                            r.peers.push(SocketAddr::new(ip, port));
                        }
                    }
                }
                _ => return Err(malformed("peers")),
            },
            b"peers6" => {
                if let Object::Bytes(b) = v {
                    decode_compact(b, true, &mut r.peers)
                }
            }
            _ => {}
        }
    }
    if !have_interval {
        return Err(malformed("no interval"));
    }
    Ok(r)
}

/// Parse a bencoded scrape response, returning the entries for `hashes`
/// that the tracker listed.
pub fn parse_scrape_response(body: &[u8]) -> Result<Vec<(InfoHash, ScrapeEntry)>, ResponseError> {
    use bendy::decoding::{Decoder, Object};
    let mut dec = Decoder::new(body).with_max_depth(4);
    let Some(Object::Dict(mut dict)) = dec.next_object().map_err(malformed)? else {
        return Err(malformed("not a dictionary"));
    };
    let mut out = Vec::new();
    while let Some((k, v)) = dict.next_pair().map_err(malformed)? {
        match (k, v) {
            (b"failure reason", Object::Bytes(b)) => {
                return Err(ResponseError::Failure(
                    String::from_utf8_lossy(b).into_owned(),
                ))
            }
            (b"files", Object::Dict(mut files)) => {
                while let Some((h, v)) = files.next_pair().map_err(malformed)? {
                    let h: [u8; 20] = h.try_into().map_err(|_| malformed("info hash"))?;
                    let Object::Dict(mut d) = v else {
                        return Err(malformed("file entry"));
                    };
                    let mut e = ScrapeEntry::default();
                    while let Some((k, v)) = d.next_pair().map_err(malformed)? {
                        match k {
                            b"complete" => e.complete = u32_of(v)?,
                            b"downloaded" => e.downloaded = u32_of(v)?,
                            b"incomplete" => e.incomplete = u32_of(v)?,
                            _ => {}
                        }
                    }
                    out.push((InfoHash(h), e));
                }
            }
            _ => {}
        }
    }
    Ok(out)
}

#[cfg(test)]
#[allow(clippy::type_complexity)] // table-driven test cases are tuples
mod tests {
    use super::*;

    const IH: &str = "%124Vx%9A%BC%DE%F1%23Eg%89%AB%CD%EF%124Vx%9A";
    const IH_BYTES: [u8; 20] = [
        0x12, 0x34, 0x56, 0x78, 0x9a, 0xbc, 0xde, 0xf1, 0x23, 0x45, 0x67, 0x89, 0xab, 0xcd, 0xef,
        0x12, 0x34, 0x56, 0x78, 0x9a,
    ];
    const PID: &str = "-DT0001-abcdefghijkl";

    fn q(extra: &str) -> String {
        format!("info_hash={IH}&peer_id={PID}&port=6881{extra}")
    }

    #[test]
    fn announce_ok() {
        let cases: Vec<(String, Box<dyn Fn(&AnnounceRequest) -> bool>)> = vec![
            (
                q(""),
                Box::new(|r| {
                    r.info_hash.0 == IH_BYTES
                        && r.port == 6881
                        && r.event == Event::None
                        && r.compact
                        && r.numwant.is_none()
                }),
            ),
            (
                q("&event=started&left=0&numwant=30"),
                Box::new(|r| {
                    r.event == Event::Started && r.left == Some(0) && r.numwant == Some(30)
                }),
            ),
            (
                q("&event=stopped&compact=0&key=abcd"),
                Box::new(|r| r.event == Event::Stopped && !r.compact && r.key != 0),
            ),
            (
                q("&numwant=4294967295&supportcrypto=1&no_peer_id=1&&"),
                Box::new(|r| r.numwant == Some(u32::MAX)),
            ),
            (
                q("&ip=10.1.2.3&left=18446744073709551615"),
                Box::new(|r| r.ip == Some("10.1.2.3".parse().unwrap()) && r.left == Some(u64::MAX)),
            ),
            (
                q("&ip=%3A%3A1"),
                Box::new(|r| r.ip == Some("::1".parse().unwrap())),
            ),
        ];
        for (query, check) in cases {
            let r = parse_announce(query.as_bytes()).unwrap_or_else(|e| panic!("{query}: {e}"));
            assert!(check(&r), "{query}: {r:?}");
        }
    }

    #[test]
    fn announce_errors() {
        let long = "a".repeat(MAX_QUERY_LEN + 1);
        let many = "x=1&".repeat(MAX_PARAMS + 1);
        let cases: Vec<(String, RequestError)> = vec![
            (
                format!("peer_id={PID}&port=1"),
                RequestError::Missing("info_hash"),
            ),
            (
                format!("info_hash={IH}&port=1"),
                RequestError::Missing("peer_id"),
            ),
            (
                format!("info_hash={IH}&peer_id={PID}"),
                RequestError::Missing("port"),
            ),
            (q("").replace(IH, "abc"), RequestError::BadInfoHash),
            (
                q("").replace(IH, &format!("{IH}x")),
                RequestError::BadInfoHash,
            ),
            (
                q("").replace(IH, "%zz34567890123456789"),
                RequestError::BadInfoHash,
            ),
            (q("").replace(IH, "%1"), RequestError::BadInfoHash),
            (q("").replace(PID, "short"), RequestError::BadPeerId),
            (q("").replace("6881", "0"), RequestError::Invalid("port")),
            (
                q("").replace("6881", "65536"),
                RequestError::Invalid("port"),
            ),
            (q("").replace("6881", "-1"), RequestError::Invalid("port")),
            (q("&numwant=4294967296"), RequestError::Invalid("numwant")),
            (
                q("&numwant=99999999999999999999999"),
                RequestError::Invalid("numwant"),
            ),
            (q("&numwant=-1"), RequestError::Invalid("numwant")),
            (
                q("&left=18446744073709551616"),
                RequestError::Invalid("left"),
            ),
            (q("&event=bogus"), RequestError::Invalid("event")),
            (q("&compact=2"), RequestError::Invalid("compact")),
            (q("&ip=not-an-ip"), RequestError::Invalid("ip")),
            (
                q(&format!("&info_hash={IH}")),
                RequestError::Duplicate("info_hash"),
            ),
            (q("&port=1"), RequestError::Duplicate("port")),
            (
                q(&format!("&key={}", "k".repeat(300))),
                RequestError::ValueTooLong("key"),
            ),
            (
                q(&format!("&foo={}", "k".repeat(300))),
                RequestError::ValueTooLong("parameter"),
            ),
            (long, RequestError::QueryTooLong),
            (many, RequestError::TooManyParams),
            (String::new(), RequestError::Missing("info_hash")),
        ];
        for (query, want) in cases {
            assert_eq!(parse_announce(query.as_bytes()), Err(want), "{query}");
        }
    }

    #[test]
    fn scrape_parsing() {
        let two = format!("info_hash={IH}&info_hash={}", "a".repeat(20));
        let cases: Vec<(String, Result<usize, RequestError>)> = vec![
            (format!("info_hash={IH}"), Ok(1)),
            (two.clone(), Ok(2)),
            (String::new(), Err(RequestError::Missing("info_hash"))),
            ("info_hash=abc".into(), Err(RequestError::BadInfoHash)),
            (
                format!("{two}&info_hash={IH}"),
                Err(RequestError::TooManyHashes(2)),
            ),
        ];
        for (query, want) in cases {
            assert_eq!(
                parse_scrape(query.as_bytes(), 2).map(|v| v.len()),
                want,
                "{query}"
            );
        }
    }

    #[test]
    fn roundtrip_announce() {
        let peers4 = [127, 0, 0, 1, 0x1a, 0xe1, 10, 0, 0, 2, 0, 80];
        let peers6 =
            crate::swarm::compact_v6("2001:db8::1".parse::<Ipv6Addr>().unwrap().octets(), 7);
        for compact in [true, false] {
            let mut out = Vec::new();
            encode_announce(
                &AnnounceAnswer {
                    complete: 3,
                    incomplete: 4,
                    interval: 900,
                    min_interval: 60,
                    peers4: &peers4,
                    peers6: &peers6,
                    compact,
                },
                &mut out,
            );
            let r = parse_announce_response(&out).unwrap();
            assert_eq!(r.interval, 900);
            assert_eq!(r.min_interval, Some(60));
            assert_eq!((r.complete, r.incomplete), (Some(3), Some(4)));
            let want: Vec<SocketAddr> = vec![
                "127.0.0.1:6881".parse().unwrap(),
                "10.0.0.2:80".parse().unwrap(),
                "[2001:db8::1]:7".parse().unwrap(),
            ];
            assert_eq!(r.peers, want, "compact {compact}");
        }
        let exact = {
            let mut out = Vec::new();
            encode_announce(
                &AnnounceAnswer {
                    complete: 1,
                    incomplete: 0,
                    interval: 5,
                    min_interval: 2,
                    peers4: &[],
                    peers6: &[],
                    compact: true,
                },
                &mut out,
            );
            out
        };
        assert_eq!(
            exact,
            b"d8:completei1e10:incompletei0e8:intervali5e12:min intervali2e5:peers0:e"
        );
    }

    #[test]
    fn failure_roundtrip() {
        let body = encode_failure("info_hash must be 20 bytes");
        assert_eq!(body, b"d14:failure reason26:info_hash must be 20 bytese");
        assert_eq!(
            parse_announce_response(&body),
            Err(ResponseError::Failure("info_hash must be 20 bytes".into()))
        );
        for bad in [
            &b""[..],
            b"le",
            b"d",
            b"i3e",
            b"d8:intervali-e",
            b"d5:peersi3ee",
        ] {
            assert!(
                matches!(
                    parse_announce_response(bad),
                    Err(ResponseError::Malformed(_))
                ),
                "{bad:?}"
            );
        }
    }

    #[test]
    fn scrape_roundtrip() {
        let e = ScrapeEntry {
            complete: 1,
            downloaded: 2,
            incomplete: 3,
        };
        let mut files = vec![(InfoHash([9; 20]), e), (InfoHash([1; 20]), e)];
        let body = encode_scrape(&mut files);
        let got = parse_scrape_response(&body).unwrap();
        assert_eq!(got, vec![(InfoHash([1; 20]), e), (InfoHash([9; 20]), e)]);
    }

    #[test]
    fn client_query_is_parsed_by_server() {
        let p = AnnounceParams {
            info_hash: InfoHash(IH_BYTES),
            peer_id: PeerId(*b"-DT0001-\x00\xff%&=+ abcde"),
            port: 51413,
            uploaded: 1,
            downloaded: 2,
            left: 3,
            event: Event::Completed,
            numwant: Some(12),
            key: 0xdead_beef,
        };
        let r = parse_announce(announce_query(&p).as_bytes()).unwrap();
        assert_eq!(r.info_hash, p.info_hash);
        assert_eq!(r.peer_id, p.peer_id);
        assert_eq!(
            (r.port, r.uploaded, r.downloaded, r.left),
            (51413, 1, 2, Some(3))
        );
        assert_eq!((r.event, r.numwant), (Event::Completed, Some(12)));
        let s = parse_scrape(
            scrape_query(&[p.info_hash, InfoHash([0; 20])]).as_bytes(),
            8,
        );
        assert_eq!(s.unwrap(), vec![p.info_hash, InfoHash([0; 20])]);
    }

    proptest::proptest! {
        #[test]
        fn parsers_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..600)) {
            let _ = parse_announce(&bytes);
            let _ = parse_scrape(&bytes, 8);
            let _ = parse_announce_response(&bytes);
            let _ = parse_scrape_response(&bytes);
        }
    }
}
