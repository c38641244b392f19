//! The peer wire codec (pure: no sockets, no tokio, no clock).
//!
//! Byte-exact BEP 3 framing plus BEP 6 (fast), BEP 10 (extension protocol),
//! BEP 11 (`ut_pex`) and our own `dt_wip` extension; see
//! `docs/swarm-design.md` §3 for why this is hand-written rather than taken
//! from librqbit, and §9 for the limits enforced here.
//!
//! Rules every parser here keeps:
//! - it never panics and never indexes past the input, whatever the bytes;
//! - a frame's length prefix is judged against the largest size its id may
//!   have *before* the body is awaited, so a peer cannot make us buffer
//!   megabytes by announcing a huge frame and trickling it in;
//! - decoded messages borrow from the read buffer (no copies); the caller
//!   drops `consumed` bytes once it is done with the message.
//!
//! What is *not* checked here: whether a request lies inside its piece, or
//! whether a PIECE was asked for. Those need the torrent's piece lengths and
//! the connection's state, so they belong to the peer state machine.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use bendy::decoding::{Decoder, Object};
use bytes::{BufMut, BytesMut};

/// The protocol string of the BEP 3 handshake (its length, 19, comes first).
pub const PROTOCOL: &[u8; 19] = b"BitTorrent protocol";
/// Length of the handshake: pstrlen, pstr, reserved, info hash, peer id.
pub const HANDSHAKE_LEN: usize = 68;
/// Largest block a REQUEST may ask for and a PIECE may carry (dt1 rule).
pub use crate::types::BLOCK;
/// Largest EXTENDED frame body (extended id + payload); also the cap on
/// frames with ids we do not know, which are skipped.
pub const MAX_EXTENDED: usize = 64 * 1024;
/// Extended message id of the BEP 10 handshake.
pub const EXT_HANDSHAKE: u8 = 0;
/// Extension name of BEP 11 peer exchange.
pub const EXT_PEX: &str = "ut_pex";
/// Extension name of our "pieces being fetched now" message (§6.4).
pub const EXT_WIP: &str = "dt_wip";
/// Most peers per PEX list, sent or taken (BEP 11 suggests 50).
pub const MAX_PEX: usize = 50;
/// Extension name of the dt2 holdings message (`docs/torrent-format.md`
/// §7): what a peer holds, by SHA-256, with its own number for each.
pub const EXT_HOLD: &str = "dt_hold";
/// Extension name of the "who holds this?" message (`docs/torrent-format.md`
/// §7.6): a query for SHA-256s, answered with the addresses of the
/// answerer's peers that hold (or relay) them.
pub const EXT_WHO: &str = "dt_who";
/// Extension name that says "I serve the content of my `dt_wip` as it
/// arrives" (relay, §7.7). A capability only: no message is ever sent
/// under it.
pub const EXT_RELAY: &str = "dt_relay";
/// Most SHA-256s per `dt_who` query, and most peers per answer.
pub const MAX_WHO: usize = 16;
pub const MAX_WHO_PEERS: usize = 32;
/// The `"debtorrent"` value of our extended handshake: dt2, pieces named
/// by content (`docs/torrent-format.md` §7).
pub const DT_VERSION: i64 = 2;
/// Most entries per `dt_hold` list: 36 bytes each, so a full list of adds
/// and one of drops fit in one extended message ([`MAX_EXTENDED`]). A peer
/// that holds more sends several messages.
pub const MAX_HOLD: usize = 1600;
/// Most piece indexes per `dt_wip` list.
pub const MAX_WIP: usize = 256;

/// Bencode nesting allowed in extension payloads. Ours need 2 (dict in a
/// dict, or a list in a dict); the slack lets peers add small unknown keys,
/// while deep nesting (a stack or CPU bomb) is refused.
const MAX_DEPTH: usize = 4;

const ID_CHOKE: u8 = 0;
const ID_UNCHOKE: u8 = 1;
const ID_INTERESTED: u8 = 2;
const ID_NOT_INTERESTED: u8 = 3;
const ID_HAVE: u8 = 4;
const ID_BITFIELD: u8 = 5;
const ID_REQUEST: u8 = 6;
const ID_PIECE: u8 = 7;
const ID_CANCEL: u8 = 8;
const ID_PORT: u8 = 9;
const ID_SUGGEST: u8 = 13;
const ID_HAVE_ALL: u8 = 14;
const ID_HAVE_NONE: u8 = 15;
const ID_REJECT: u8 = 16;
const ID_ALLOWED_FAST: u8 = 17;
const ID_EXTENDED: u8 = 20;

/// Why a frame or payload was refused. Every one of these is a protocol
/// error by the peer: the connection should be dropped.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The handshake does not start with `\x13BitTorrent protocol`.
    #[error("not a BitTorrent handshake")]
    BadProtocol,
    /// The length prefix (which counts the id byte) is above the largest
    /// size allowed for this id.
    #[error("frame id {id} too long: length prefix {len}")]
    FrameTooLong { id: u8, len: u32 },
    /// The length prefix is below the size this id needs (fixed-size ids
    /// must match exactly; PIECE needs at least one data byte).
    #[error("frame id {id} has bad length prefix {len}")]
    BadLength { id: u8, len: u32 },
    /// A BITFIELD of the wrong size or with padding bits set (BEP 3).
    #[error("bad bitfield: {0}")]
    BadBitfield(BitfieldError),
    /// A REQUEST for an empty block or one above [`BLOCK`].
    #[error("request for a bad block: {0:?}")]
    BadRequest(BlockRef),
    /// An extension payload that is not bencode, not a dict at the top,
    /// nested too deep, has unsorted keys or trailing bytes.
    #[error("bad bencode: {0}")]
    BadBencode(String),
    /// A known key of an extension payload has the wrong type or shape.
    #[error("bad value for key {key:?}: {reason}")]
    BadField {
        key: &'static str,
        reason: &'static str,
    },
    /// A `dt_wip` list longer than [`MAX_WIP`].
    #[error("key {key:?} has more than {max} entries")]
    TooMany { key: &'static str, max: usize },
}

/// What is wrong with a bitfield.
#[derive(Clone, Copy, Debug, thiserror::Error, PartialEq, Eq)]
pub enum BitfieldError {
    #[error("{got} bytes, expected {expected}")]
    Length { expected: usize, got: usize },
    #[error("padding bits set")]
    Padding,
}

/// The 68-byte BEP 3 handshake.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Handshake {
    pub reserved: [u8; 8],
    pub info_hash: crate::types::InfoHash,
    pub peer_id: [u8; 20],
}

impl Handshake {
    /// Our handshake: announces BEP 10 (bit 20: byte 5, 0x10), BEP 6 fast
    /// (bit 2: byte 7, 0x04) and BEP 5 DHT (bit 0: byte 7, 0x01), counting
    /// bits from the low end of the 64-bit field.
    pub fn new(info_hash: crate::types::InfoHash, peer_id: [u8; 20]) -> Self {
        let mut reserved = [0u8; 8];
        reserved[5] |= 0x10;
        reserved[7] |= 0x04 | 0x01;
        Handshake {
            reserved,
            info_hash,
            peer_id,
        }
    }

    pub fn encode(&self) -> [u8; HANDSHAKE_LEN] {
        let mut out = [0u8; HANDSHAKE_LEN];
        out[0] = PROTOCOL.len() as u8;
        out[1..20].copy_from_slice(PROTOCOL);
        out[20..28].copy_from_slice(&self.reserved);
        out[28..48].copy_from_slice(&self.info_hash.0);
        out[48..68].copy_from_slice(&self.peer_id);
        out
    }

    /// Checks pstrlen and the protocol string; the info hash is the
    /// caller's to check (it knows which torrents it serves).
    pub fn decode(b: &[u8; HANDSHAKE_LEN]) -> Result<Self, WireError> {
        if usize::from(b[0]) != PROTOCOL.len() || &b[1..20] != PROTOCOL {
            return Err(WireError::BadProtocol);
        }
        let mut h = Handshake {
            reserved: [0; 8],
            info_hash: crate::types::InfoHash([0; 20]),
            peer_id: [0; 20],
        };
        h.reserved.copy_from_slice(&b[20..28]);
        h.info_hash.0.copy_from_slice(&b[28..48]);
        h.peer_id.copy_from_slice(&b[48..68]);
        Ok(h)
    }

    /// BEP 10 extension protocol.
    pub fn extensions(&self) -> bool {
        self.reserved[5] & 0x10 != 0
    }
    /// BEP 6 fast extension.
    pub fn fast(&self) -> bool {
        self.reserved[7] & 0x04 != 0
    }
    /// BEP 5 DHT (the peer may send PORT).
    #[cfg(test)]
    pub fn dht(&self) -> bool {
        self.reserved[7] & 0x01 != 0
    }
}

/// Per-torrent facts the decoder needs.
#[derive(Clone, Copy, Debug)]
pub struct Limits {
    /// Number of pieces (files); a BITFIELD payload must be exactly
    /// `ceil(piece_count / 8)` bytes.
    pub piece_count: u32,
}

/// A block: `length` bytes at offset `begin` of piece `index`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockRef {
    pub index: u32,
    pub begin: u32,
    pub length: u32,
}

/// One peer wire message, borrowing its payload from the read buffer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Msg<'a> {
    KeepAlive,
    Choke,
    Unchoke,
    Interested,
    NotInterested,
    Have(u32),
    Bitfield(&'a [u8]),
    Request(BlockRef),
    Piece {
        index: u32,
        begin: u32,
        data: &'a [u8],
    },
    Cancel(BlockRef),
    /// BEP 5: the peer's DHT port.
    Port(u16),
    Suggest(u32),
    HaveAll,
    HaveNone,
    Reject(BlockRef),
    AllowedFast(u32),
    /// BEP 10: `id` is the extended message id (0 = extended handshake).
    Extended {
        id: u8,
        payload: &'a [u8],
    },
    /// A message id we do not know, with `len` payload bytes (the prefix
    /// minus the id byte). Already consumed; the caller just ignores it.
    Unknown {
        id: u8,
        len: u32,
    },
}

/// Allowed range of the length prefix (which counts the id byte) per id.
fn frame_bounds(id: u8, lim: &Limits) -> (u32, u32) {
    const MAX_EXT: u32 = 1 + MAX_EXTENDED as u32;
    match id {
        ID_CHOKE | ID_UNCHOKE | ID_INTERESTED | ID_NOT_INTERESTED | ID_HAVE_ALL | ID_HAVE_NONE => {
            (1, 1)
        }
        ID_HAVE | ID_SUGGEST | ID_ALLOWED_FAST => (5, 5),
        ID_REQUEST | ID_CANCEL | ID_REJECT => (13, 13),
        ID_PORT => (3, 3),
        ID_PIECE => (10, 9 + BLOCK),
        ID_BITFIELD => {
            // At most 2^29 for u32::MAX pieces, so this cannot overflow.
            let n = 1 + bitfield_len(lim.piece_count) as u32;
            (n, n)
        }
        ID_EXTENDED => (2, MAX_EXT),
        _ => (1, MAX_EXT),
    }
}

fn be32(body: &[u8], at: usize, id: u8, len: u32) -> Result<u32, WireError> {
    body.get(at..)
        .and_then(|s| s.first_chunk::<4>())
        .map(|c| u32::from_be_bytes(*c))
        .ok_or(WireError::BadLength { id, len })
}

fn block_ref(body: &[u8], id: u8, len: u32) -> Result<BlockRef, WireError> {
    Ok(BlockRef {
        index: be32(body, 0, id, len)?,
        begin: be32(body, 4, id, len)?,
        length: be32(body, 8, id, len)?,
    })
}

/// Decodes one frame from the front of `buf`.
///
/// Returns `Ok(None)` until the whole frame is in `buf` (the caller reads
/// more and calls again), `Ok(Some((msg, consumed)))` once it is.
///
/// The length prefix is checked as soon as the prefix and the id byte are
/// buffered (5 bytes), before waiting for the body: fixed-size ids must
/// match exactly, PIECE may carry 1..=[`BLOCK`] data bytes, BITFIELD must be
/// exactly `1 + ceil(piece_count/8)`, EXTENDED and unknown ids at most
/// `1 + MAX_EXTENDED`. So the read buffer never needs to grow past one
/// PIECE frame, and a hostile 4 GiB prefix costs us 5 bytes, not 4 GiB.
/// Unknown ids are returned as [`Msg::Unknown`] and consumed: BEP 3 peers
/// may send messages from extensions we did not announce.
pub fn decode<'a>(buf: &'a [u8], lim: &Limits) -> Result<Option<(Msg<'a>, usize)>, WireError> {
    let Some(prefix) = buf.first_chunk::<4>() else {
        return Ok(None);
    };
    let len = u32::from_be_bytes(*prefix);
    if len == 0 {
        return Ok(Some((Msg::KeepAlive, 4)));
    }
    let Some(&id) = buf.get(4) else {
        return Ok(None);
    };
    let (min, max) = frame_bounds(id, lim);
    if id == ID_BITFIELD && len != min {
        return Err(WireError::BadBitfield(BitfieldError::Length {
            expected: min as usize - 1,
            got: len as usize - 1,
        }));
    }
    if len > max {
        return Err(WireError::FrameTooLong { id, len });
    }
    if len < min {
        return Err(WireError::BadLength { id, len });
    }
    let total = 4 + len as usize;
    let Some(body) = buf.get(5..total) else {
        return Ok(None);
    };
    let msg = match id {
        ID_CHOKE => Msg::Choke,
        ID_UNCHOKE => Msg::Unchoke,
        ID_INTERESTED => Msg::Interested,
        ID_NOT_INTERESTED => Msg::NotInterested,
        ID_HAVE => Msg::Have(be32(body, 0, id, len)?),
        ID_BITFIELD => {
            bitfield_check(body, lim.piece_count).map_err(WireError::BadBitfield)?;
            Msg::Bitfield(body)
        }
        ID_REQUEST => {
            let r = block_ref(body, id, len)?;
            if r.length == 0 || r.length > BLOCK {
                return Err(WireError::BadRequest(r));
            }
            Msg::Request(r)
        }
        ID_PIECE => Msg::Piece {
            index: be32(body, 0, id, len)?,
            begin: be32(body, 4, id, len)?,
            data: body.get(8..).unwrap_or_default(),
        },
        ID_CANCEL => Msg::Cancel(block_ref(body, id, len)?),
        ID_PORT => match body.first_chunk::<2>() {
            Some(p) => Msg::Port(u16::from_be_bytes(*p)),
            None => return Err(WireError::BadLength { id, len }),
        },
        ID_SUGGEST => Msg::Suggest(be32(body, 0, id, len)?),
        ID_HAVE_ALL => Msg::HaveAll,
        ID_HAVE_NONE => Msg::HaveNone,
        ID_REJECT => Msg::Reject(block_ref(body, id, len)?),
        ID_ALLOWED_FAST => Msg::AllowedFast(be32(body, 0, id, len)?),
        ID_EXTENDED => match body.split_first() {
            Some((&id, payload)) => Msg::Extended { id, payload },
            None => return Err(WireError::BadLength { id, len }),
        },
        _ => Msg::Unknown { id, len: len - 1 },
    };
    Ok(Some((msg, total)))
}

fn put_header(out: &mut BytesMut, len: usize, id: u8) {
    // Our own frames are bounded by BLOCK / MAX_EXTENDED / the bitfield.
    debug_assert!(u32::try_from(len).is_ok(), "frame length {len}");
    out.put_u32(len as u32);
    out.put_u8(id);
}

fn put_block(out: &mut BytesMut, id: u8, r: &BlockRef) {
    put_header(out, 13, id);
    out.put_u32(r.index);
    out.put_u32(r.begin);
    out.put_u32(r.length);
}

/// Appends one frame. No limits are checked: we only encode what we built.
/// [`Msg::Unknown`] is written with `len` zero bytes of payload (for tests).
pub fn encode(msg: &Msg<'_>, out: &mut BytesMut) {
    match *msg {
        Msg::KeepAlive => out.put_u32(0),
        Msg::Choke => put_header(out, 1, ID_CHOKE),
        Msg::Unchoke => put_header(out, 1, ID_UNCHOKE),
        Msg::Interested => put_header(out, 1, ID_INTERESTED),
        Msg::NotInterested => put_header(out, 1, ID_NOT_INTERESTED),
        Msg::Have(i) => {
            put_header(out, 5, ID_HAVE);
            out.put_u32(i);
        }
        Msg::Bitfield(bits) => {
            put_header(out, 1 + bits.len(), ID_BITFIELD);
            out.put_slice(bits);
        }
        Msg::Request(r) => put_block(out, ID_REQUEST, &r),
        Msg::Piece { index, begin, data } => {
            encode_piece_header(index, begin, data.len() as u32, out);
            out.put_slice(data);
        }
        Msg::Cancel(r) => put_block(out, ID_CANCEL, &r),
        Msg::Port(p) => {
            put_header(out, 3, ID_PORT);
            out.put_u16(p);
        }
        Msg::Suggest(i) => {
            put_header(out, 5, ID_SUGGEST);
            out.put_u32(i);
        }
        Msg::HaveAll => put_header(out, 1, ID_HAVE_ALL),
        Msg::HaveNone => put_header(out, 1, ID_HAVE_NONE),
        Msg::Reject(r) => put_block(out, ID_REJECT, &r),
        Msg::AllowedFast(i) => {
            put_header(out, 5, ID_ALLOWED_FAST);
            out.put_u32(i);
        }
        Msg::Extended { id, payload } => {
            put_header(out, 2 + payload.len(), ID_EXTENDED);
            out.put_u8(id);
            out.put_slice(payload);
        }
        Msg::Unknown { id, len } => {
            put_header(out, 1 + len as usize, id);
            out.put_bytes(0, len as usize);
        }
    }
}

/// Appends the 13 bytes that precede a block of `len` bytes in a PIECE
/// frame. Written apart from the data so the connection can hand the body
/// to `writev`/`sendfile` without copying it into the write buffer.
pub fn encode_piece_header(index: u32, begin: u32, len: u32, out: &mut BytesMut) {
    debug_assert!(len <= BLOCK, "block of {len} bytes");
    put_header(out, 9 + len as usize, ID_PIECE);
    out.put_u32(index);
    out.put_u32(begin);
}

/// Bytes in a bitfield for `piece_count` pieces.
pub fn bitfield_len(piece_count: u32) -> usize {
    (piece_count as usize).div_ceil(8)
}

/// Whether bit `index` is set (high bit of byte 0 is piece 0); false past
/// the end.
pub fn bitfield_get(bits: &[u8], index: u32) -> bool {
    bits.get(index as usize / 8)
        .is_some_and(|b| b & (0x80 >> (index % 8)) != 0)
}

/// Sets bit `index`; does nothing past the end (a daemon must not panic on
/// a bad index; the caller sized `bits` with [`bitfield_len`]).
pub fn bitfield_set(bits: &mut [u8], index: u32) {
    if let Some(b) = bits.get_mut(index as usize / 8) {
        *b |= 0x80 >> (index % 8);
    }
}

/// Clears bit `index`; does nothing past the end.
pub fn bitfield_clear(bits: &mut [u8], index: u32) {
    if let Some(b) = bits.get_mut(index as usize / 8) {
        *b &= !(0x80 >> (index % 8));
    }
}

/// Checks a peer's bitfield: exact size, and the spare bits of the last
/// byte zero (BEP 3 says peers sending set padding bits are to be dropped).
pub fn bitfield_check(bits: &[u8], piece_count: u32) -> Result<(), BitfieldError> {
    let expected = bitfield_len(piece_count);
    if bits.len() != expected {
        return Err(BitfieldError::Length {
            expected,
            got: bits.len(),
        });
    }
    let spare = (8 - piece_count % 8) % 8;
    match bits.last() {
        Some(&last) if spare > 0 && last & ((1u8 << spare) - 1) != 0 => Err(BitfieldError::Padding),
        _ => Ok(()),
    }
}

// ---- bencode ---------------------------------------------------------------
//
// Encoding goes through the workspace's one bencode writer
// (`debtorrent_gen::bencode`): our payloads are a few known keys, written in
// sorted order (bencode requires it, and bendy rejects unsorted dicts).
// Decoding walks bendy `Object`s with a small depth limit.

use debtorrent_gen::bencode::to_vec as bencode;

fn ben_err(e: bendy::decoding::Error) -> WireError {
    WireError::BadBencode(e.to_string())
}

/// Bendy has already checked the syntax (`-?[0-9]+`, no leading zeros);
/// out of `i64` range gives `None`.
fn ben_parse_int(s: &str) -> Option<i64> {
    s.parse().ok()
}

/// Calls `f` on each pair of the top-level dict in `b`. Errors if `b` is not
/// exactly one well-formed dict (keys sorted, depth at most [`MAX_DEPTH`]).
fn walk_dict<'a>(
    b: &'a [u8],
    mut f: impl FnMut(&'a [u8], Object<'_, 'a>) -> Result<(), WireError>,
) -> Result<(), WireError> {
    let mut dec = Decoder::new(b).with_max_depth(MAX_DEPTH);
    match dec.next_object().map_err(ben_err)? {
        Some(Object::Dict(mut d)) => {
            while let Some((k, v)) = d.next_pair().map_err(ben_err)? {
                f(k, v)?;
            }
        }
        Some(_) => return Err(WireError::BadBencode("top level is not a dict".into())),
        None => return Err(WireError::BadBencode("empty payload".into())),
    }
    if dec.next_object().map_err(ben_err)?.is_some() {
        return Err(WireError::BadBencode(
            "trailing bytes after the dict".into(),
        ));
    }
    Ok(())
}

/// The BEP 10 extended handshake (extended message id 0).
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ExtHandshake {
    /// Extension name -> the id the sender wants to *receive* it under.
    /// Id 0 means "disabled" and is never stored. Decoded lists come out
    /// sorted by name; `encode` sorts and drops duplicate names.
    pub m: Vec<(String, u8)>,
    /// The sender's listen port (0 is ignored).
    pub p: Option<u16>,
    /// Client name and version.
    pub v: Option<String>,
    /// How many outstanding requests the sender accepts.
    pub reqq: Option<u32>,
    /// Our key: `1` means the peer knows the dt1 piece layout (one file =
    /// one piece), so we may exchange pieces with it.
    pub debtorrent: Option<i64>,
    /// Our address as the sender sees it (4 or 16 bytes; else ignored).
    pub yourip: Option<Vec<u8>>,
    /// Our key `dt_idx` (dt2): the index versions (dt1 info hashes of the
    /// Packages/Sources files) the sender has registered in this swarm, at
    /// most [`MAX_IDX`], as one string of 20-byte hashes. Informational
    /// (status pages show which versions the swarm's peers are on); a
    /// malformed value is ignored.
    pub versions: Vec<crate::types::InfoHash>,
}

/// Most index versions a `dt_idx` carries.
pub const MAX_IDX: usize = 64;

impl ExtHandshake {
    pub fn encode(&self) -> Vec<u8> {
        let mut m: Vec<&(String, u8)> = self.m.iter().filter(|(_, id)| *id != 0).collect();
        m.sort_by(|a, b| a.0.as_bytes().cmp(b.0.as_bytes()));
        m.dedup_by(|a, b| a.0 == b.0);
        bencode(|w| {
            w.dict();
            if let Some(d) = self.debtorrent {
                w.bytes(b"debtorrent").int(d);
            }
            if !self.versions.is_empty() {
                let v: Vec<u8> = self
                    .versions
                    .iter()
                    .take(MAX_IDX)
                    .flat_map(|h| h.0)
                    .collect();
                w.bytes(b"dt_idx").bytes(&v);
            }
            w.bytes(b"m").dict();
            for (name, id) in m {
                w.bytes(name.as_bytes()).int(i64::from(*id));
            }
            w.end();
            if let Some(p) = self.p {
                w.bytes(b"p").int(i64::from(p));
            }
            if let Some(q) = self.reqq {
                w.bytes(b"reqq").int(i64::from(q));
            }
            if let Some(v) = &self.v {
                w.bytes(b"v").bytes(v.as_bytes());
            }
            if let Some(ip) = &self.yourip {
                w.bytes(b"yourip").bytes(ip);
            }
            w.end();
        })
    }

    /// Lenient on values (clients differ): unknown keys, wrong types and
    /// out-of-range integers leave the field unset. Strict on structure:
    /// not bencode, not a dict, too deep or trailing bytes is an error.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let mut h = ExtHandshake::default();
        walk_dict(b, |key, val| {
            match (key, val) {
                (b"m", Object::Dict(mut d)) => {
                    while let Some((name, id)) = d.next_pair().map_err(ben_err)? {
                        let id = match id {
                            Object::Integer(s) => {
                                ben_parse_int(s).and_then(|i| u8::try_from(i).ok())
                            }
                            _ => None,
                        };
                        if let (Ok(name), Some(id @ 1..)) = (std::str::from_utf8(name), id) {
                            h.m.push((name.to_owned(), id));
                        }
                    }
                }
                (b"p", Object::Integer(s)) => {
                    h.p = ben_parse_int(s)
                        .and_then(|i| u16::try_from(i).ok())
                        .filter(|&p| p != 0);
                }
                (b"v", Object::Bytes(v)) => h.v = Some(String::from_utf8_lossy(v).into_owned()),
                (b"reqq", Object::Integer(s)) => {
                    h.reqq = ben_parse_int(s).and_then(|i| u32::try_from(i).ok());
                }
                (b"debtorrent", Object::Integer(s)) => h.debtorrent = ben_parse_int(s),
                (b"dt_idx", Object::Bytes(v)) if v.len() % 20 == 0 && v.len() <= 20 * MAX_IDX => {
                    h.versions = v
                        .chunks_exact(20)
                        .filter_map(|c| <[u8; 20]>::try_from(c).ok())
                        .map(crate::types::InfoHash)
                        .collect();
                }
                (b"yourip", Object::Bytes(ip)) if ip.len() == 4 || ip.len() == 16 => {
                    h.yourip = Some(ip.to_vec());
                }
                _ => {}
            }
            Ok(())
        })?;
        Ok(h)
    }

    /// The id the peer wants extension `name` sent under, if it has it.
    pub fn ext_id(&self, name: &str) -> Option<u8> {
        self.m.iter().find(|(n, _)| n == name).map(|&(_, id)| id)
    }
}

/// A BEP 11 `ut_pex` message.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Pex {
    pub added: Vec<SocketAddr>,
    pub dropped: Vec<SocketAddr>,
}

fn compact_put(v4: &mut Vec<u8>, v6: &mut Vec<u8>, a: &SocketAddr) {
    match a.ip() {
        IpAddr::V4(ip) => {
            v4.extend_from_slice(&ip.octets());
            v4.extend_from_slice(&a.port().to_be_bytes());
        }
        IpAddr::V6(ip) => {
            v6.extend_from_slice(&ip.octets());
            v6.extend_from_slice(&a.port().to_be_bytes());
        }
    }
}

/// Parses up to `room` compact peers of `N` bytes (6: IPv4, 18: IPv6).
fn compact_get<const N: usize>(
    key: &'static str,
    b: &[u8],
    room: usize,
    out: &mut Vec<SocketAddr>,
) -> Result<(), WireError> {
    let chunks = b.chunks_exact(N);
    if !chunks.remainder().is_empty() {
        return Err(WireError::BadField {
            key,
            reason: "length is not a whole number of peers",
        });
    }
    for c in chunks.take(room) {
        let Some((ip, port)) = c.split_last_chunk::<2>() else {
            continue;
        };
        let port = u16::from_be_bytes(*port);
        let ip = match <[u8; 4]>::try_from(ip) {
            Ok(v4) => IpAddr::V4(Ipv4Addr::from(v4)),
            Err(_) => match <[u8; 16]>::try_from(ip) {
                Ok(v6) => IpAddr::V6(Ipv6Addr::from(v6)),
                Err(_) => continue,
            },
        };
        out.push(SocketAddr::new(ip, port));
    }
    Ok(())
}

impl Pex {
    /// Writes at most [`MAX_PEX`] peers per list (the first ones), IPv4
    /// under `added`/`dropped`, IPv6 under `added6`/`dropped6`, with an
    /// all-zero flag byte per added peer (we claim nothing about them).
    pub fn encode(&self) -> Vec<u8> {
        let (mut a4, mut a6, mut d4, mut d6) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for a in self.added.iter().take(MAX_PEX) {
            compact_put(&mut a4, &mut a6, a);
        }
        for a in self.dropped.iter().take(MAX_PEX) {
            compact_put(&mut d4, &mut d6, a);
        }
        bencode(|w| {
            w.dict()
                .bytes(b"added")
                .bytes(&a4)
                .bytes(b"added.f")
                .bytes(&vec![0; a4.len() / 6])
                .bytes(b"added6")
                .bytes(&a6)
                .bytes(b"added6.f")
                .bytes(&vec![0; a6.len() / 18])
                .bytes(b"dropped")
                .bytes(&d4)
                .bytes(b"dropped6")
                .bytes(&d6)
                .end();
        })
    }

    /// Takes at most [`MAX_PEX`] peers per list (IPv4 first, then IPv6) and
    /// ignores the rest; a compact string that is not a whole number of
    /// peers is an error. Flags and unknown keys are ignored.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let (mut a4, mut a6, mut d4, mut d6) = (None, None, None, None);
        walk_dict(b, |key, val| {
            let (slot, name) = match key {
                b"added" => (&mut a4, "added"),
                b"added6" => (&mut a6, "added6"),
                b"dropped" => (&mut d4, "dropped"),
                b"dropped6" => (&mut d6, "dropped6"),
                _ => return Ok(()),
            };
            match val {
                Object::Bytes(v) => *slot = Some(v),
                _ => {
                    return Err(WireError::BadField {
                        key: name,
                        reason: "not a byte string",
                    })
                }
            }
            Ok(())
        })?;
        let mut pex = Pex::default();
        compact_get::<6>("added", a4.unwrap_or_default(), MAX_PEX, &mut pex.added)?;
        let room = MAX_PEX - pex.added.len();
        compact_get::<18>("added6", a6.unwrap_or_default(), room, &mut pex.added)?;
        compact_get::<6>("dropped", d4.unwrap_or_default(), MAX_PEX, &mut pex.dropped)?;
        let room = MAX_PEX - pex.dropped.len();
        compact_get::<18>("dropped6", d6.unwrap_or_default(), room, &mut pex.dropped)?;
        Ok(pex)
    }
}

/// Our `dt_wip` message (§6.4): which content the sender started and
/// stopped fetching, so peers that want the same file wait for it and fetch
/// it from the sender instead of each hitting the mirror. In dt2 the
/// sender does not hold that content yet, so no `dt_hold` number names it:
/// an added entry carries its SHA-256 with the sender's number, and `done`
/// names those numbers. Same layout as [`Hold`]: `{"a": <4-byte number +
/// 32-byte SHA-256, repeated>, "d": <4-byte numbers>}`, at most
/// [`MAX_WIP`] entries each.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Wip {
    /// Content now being fetched: (the sender's number, SHA-256).
    pub add: Vec<(u32, [u8; 32])>,
    /// Numbers no longer being fetched, whether done or abandoned.
    pub done: Vec<u32>,
}

impl Wip {
    /// Writes at most [`MAX_WIP`] entries per list (the first ones), since
    /// peers refuse longer lists; the caller sends the rest in a later one.
    pub fn encode(&self) -> Vec<u8> {
        pairs_encode(&self.add, &self.done, MAX_WIP)
    }

    /// Strict, since it is our own format: a missing list is empty; a list
    /// that is not a whole number of entries, or longer than [`MAX_WIP`], is
    /// an error. Unknown keys are ignored (room for later versions).
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let (add, done) = pairs_decode(b, MAX_WIP)?;
        Ok(Wip { add, done })
    }
}

/// A `dt_who` message: a query (`{"q": <32-byte SHA-256s>}`, at most
/// [`MAX_WHO`]) or one answer per content that has holders (`{"h":
/// <SHA-256>, "p": <compact IPv4 peers>, "p6": <compact IPv6 peers>}`, at
/// most [`MAX_WHO_PEERS`] in all).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Who {
    Query(Vec<[u8; 32]>),
    Answer {
        sha256: [u8; 32],
        peers: Vec<SocketAddr>,
    },
}

impl Who {
    /// Writes at most [`MAX_WHO`] hashes or [`MAX_WHO_PEERS`] peers (the
    /// first ones).
    pub fn encode(&self) -> Vec<u8> {
        match self {
            Who::Query(q) => {
                let q: Vec<u8> = q.iter().take(MAX_WHO).flatten().copied().collect();
                bencode(|w| {
                    w.dict().bytes(b"q").bytes(&q).end();
                })
            }
            Who::Answer { sha256, peers } => {
                let (mut p4, mut p6) = (Vec::new(), Vec::new());
                for a in peers.iter().take(MAX_WHO_PEERS) {
                    compact_put(&mut p4, &mut p6, a);
                }
                bencode(|w| {
                    w.dict()
                        .bytes(b"h")
                        .bytes(sha256)
                        .bytes(b"p")
                        .bytes(&p4)
                        .bytes(b"p6")
                        .bytes(&p6)
                        .end();
                })
            }
        }
    }

    /// Strict, as our own format: a query longer than [`MAX_WHO`], a hash
    /// that is not 32 bytes or peers that are not whole entries are errors;
    /// peers beyond [`MAX_WHO_PEERS`] are dropped; unknown keys ignored.
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let (mut q, mut h, mut peers) = (None, None, Vec::new());
        walk_dict(b, |key, val| {
            let name = match key {
                b"q" => "q",
                b"h" => "h",
                b"p" => "p",
                b"p6" => "p6",
                _ => return Ok(()),
            };
            let Object::Bytes(v) = val else {
                return Err(WireError::BadField {
                    key: name,
                    reason: "not a byte string",
                });
            };
            match name {
                "q" => {
                    let c = v.chunks_exact(32);
                    if !c.remainder().is_empty() || v.len() / 32 > MAX_WHO {
                        return Err(WireError::BadField {
                            key: "q",
                            reason: "not at most 16 whole SHA-256s",
                        });
                    }
                    q = Some(c.filter_map(|x| <[u8; 32]>::try_from(x).ok()).collect());
                }
                "h" => {
                    h = Some(<[u8; 32]>::try_from(v).map_err(|_| WireError::BadField {
                        key: "h",
                        reason: "not a SHA-256",
                    })?);
                }
                "p" => {
                    let room = MAX_WHO_PEERS.saturating_sub(peers.len());
                    compact_get::<6>("p", v, room, &mut peers)?;
                }
                _ => {
                    let room = MAX_WHO_PEERS.saturating_sub(peers.len());
                    compact_get::<18>("p6", v, room, &mut peers)?;
                }
            }
            Ok(())
        })?;
        match (q, h) {
            (Some(q), None) => Ok(Who::Query(q)),
            (None, Some(sha256)) => Ok(Who::Answer { sha256, peers }),
            _ => Err(WireError::BadField {
                key: "q",
                reason: "neither one query nor one answer",
            }),
        }
    }
}

/// A `dt_hold` message (dt2): content the sender now holds, each with the
/// sender's own number for it (what REQUESTs to the sender name), and the
/// numbers it no longer holds. `{"a": <4-byte big-endian number + 32-byte
/// SHA-256, repeated>, "d": <4-byte big-endian numbers>}`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Hold {
    /// Added: (number, SHA-256).
    pub add: Vec<(u32, [u8; 32])>,
    /// Dropped numbers.
    pub drop: Vec<u32>,
}

impl Hold {
    /// Writes at most [`MAX_HOLD`] entries per list (the first ones); the
    /// caller sends the rest in later messages.
    pub fn encode(&self) -> Vec<u8> {
        pairs_encode(&self.add, &self.drop, MAX_HOLD)
    }

    /// Strict, since it is our own format: a missing list is empty; a list
    /// that is not a whole number of entries, or longer than [`MAX_HOLD`],
    /// is an error. Unknown keys are ignored (room for later versions).
    pub fn decode(b: &[u8]) -> Result<Self, WireError> {
        let (add, drop) = pairs_decode(b, MAX_HOLD)?;
        Ok(Hold { add, drop })
    }
}

/// `{"a": (number, SHA-256)*, "d": number*}`, at most `max` of each.
fn pairs_encode(add: &[(u32, [u8; 32])], drop: &[u32], max: usize) -> Vec<u8> {
    let mut a = Vec::with_capacity(36 * add.len().min(max));
    for (n, h) in add.iter().take(max) {
        a.extend_from_slice(&n.to_be_bytes());
        a.extend_from_slice(h);
    }
    let mut d = Vec::with_capacity(4 * drop.len().min(max));
    for n in drop.iter().take(max) {
        d.extend_from_slice(&n.to_be_bytes());
    }
    bencode(|w| {
        w.dict().bytes(b"a").bytes(&a).bytes(b"d").bytes(&d).end();
    })
}

type Pairs = (Vec<(u32, [u8; 32])>, Vec<u32>);

fn pairs_decode(b: &[u8], max: usize) -> Result<Pairs, WireError> {
    let (mut add, mut drop) = (Vec::new(), Vec::new());
    walk_dict(b, |key, val| {
        let (name, size) = match key {
            b"a" => ("a", 36),
            b"d" => ("d", 4),
            _ => return Ok(()),
        };
        let Object::Bytes(v) = val else {
            return Err(WireError::BadField {
                key: name,
                reason: "not a byte string",
            });
        };
        if v.len() % size != 0 {
            return Err(WireError::BadField {
                key: name,
                reason: "not a whole number of entries",
            });
        }
        if v.len() / size > max {
            return Err(WireError::TooMany { key: name, max });
        }
        for e in v.chunks_exact(size) {
            let n = u32::from_be_bytes([e[0], e[1], e[2], e[3]]);
            if size == 36 {
                let mut sha = [0u8; 32];
                sha.copy_from_slice(&e[4..]);
                add.push((n, sha));
            } else {
                drop.push(n);
            }
        }
        Ok(())
    })?;
    Ok((add, drop))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIM: Limits = Limits { piece_count: 12 };

    fn enc(m: &Msg<'_>) -> Vec<u8> {
        let mut out = BytesMut::new();
        encode(m, &mut out);
        out.to_vec()
    }

    fn br(index: u32, begin: u32, length: u32) -> BlockRef {
        BlockRef {
            index,
            begin,
            length,
        }
    }

    /// Decodes and keeps only the consumed count (owned, for tables).
    fn used(buf: &[u8], lim: &Limits) -> Result<Option<usize>, WireError> {
        decode(buf, lim).map(|o| o.map(|(_, n)| n))
    }

    /// Prefix + id byte, no body.
    fn head(len: u32, id: u8) -> Vec<u8> {
        let mut v = len.to_be_bytes().to_vec();
        v.push(id);
        v
    }

    #[test]
    fn golden_frames_encode_and_decode() {
        #[rustfmt::skip]
        let table: &[(Msg<'_>, &[u8])] = &[
            (Msg::KeepAlive, &[0, 0, 0, 0]),
            (Msg::Choke, &[0, 0, 0, 1, 0]),
            (Msg::Unchoke, &[0, 0, 0, 1, 1]),
            (Msg::Interested, &[0, 0, 0, 1, 2]),
            (Msg::NotInterested, &[0, 0, 0, 1, 3]),
            (Msg::Have(0x0102_0304), &[0, 0, 0, 5, 4, 1, 2, 3, 4]),
            (Msg::Bitfield(&[0xff, 0xf0]), &[0, 0, 0, 3, 5, 0xff, 0xf0]),
            (Msg::Request(br(1, 0x4000, 0x4000)),
             &[0, 0, 0, 13, 6, 0, 0, 0, 1, 0, 0, 0x40, 0, 0, 0, 0x40, 0]),
            (Msg::Piece { index: 1, begin: 2, data: b"abc" },
             &[0, 0, 0, 12, 7, 0, 0, 0, 1, 0, 0, 0, 2, b'a', b'b', b'c']),
            (Msg::Cancel(br(3, 4, 5)), &[0, 0, 0, 13, 8, 0, 0, 0, 3, 0, 0, 0, 4, 0, 0, 0, 5]),
            (Msg::Port(6881), &[0, 0, 0, 3, 9, 0x1a, 0xe1]),
            (Msg::Suggest(7), &[0, 0, 0, 5, 13, 0, 0, 0, 7]),
            (Msg::HaveAll, &[0, 0, 0, 1, 14]),
            (Msg::HaveNone, &[0, 0, 0, 1, 15]),
            (Msg::Reject(br(0xffff_ffff, 0, 1)),
             &[0, 0, 0, 13, 16, 0xff, 0xff, 0xff, 0xff, 0, 0, 0, 0, 0, 0, 0, 1]),
            (Msg::AllowedFast(9), &[0, 0, 0, 5, 17, 0, 0, 0, 9]),
            (Msg::Extended { id: 0, payload: b"de" }, &[0, 0, 0, 4, 20, 0, b'd', b'e']),
            (Msg::Extended { id: 3, payload: b"" }, &[0, 0, 0, 2, 20, 3]),
            (Msg::Unknown { id: 42, len: 2 }, &[0, 0, 0, 3, 42, 0, 0]),
            (Msg::Unknown { id: 10, len: 0 }, &[0, 0, 0, 1, 10]),
        ];
        for (msg, bytes) in table {
            assert_eq!(enc(msg), *bytes, "encode {msg:?}");
            let got = decode(bytes, &LIM).expect("decodes").expect("complete");
            assert_eq!(&got.0, msg, "decode {bytes:?}");
            assert_eq!(got.1, bytes.len());
        }
    }

    #[test]
    fn piece_header_is_the_first_13_bytes_of_a_piece_frame() {
        let data = [7u8; 100];
        let mut out = BytesMut::new();
        encode_piece_header(5, 16384, 100, &mut out);
        assert_eq!(&out[..], &[0, 0, 0, 109, 7, 0, 0, 0, 5, 0, 0, 0x40, 0]);
        let whole = enc(&Msg::Piece {
            index: 5,
            begin: 16384,
            data: &data,
        });
        assert_eq!(&whole[..13], &out[..]);
        assert_eq!(&whole[13..], &data);
    }

    #[test]
    fn handshake_golden_and_flags() {
        let h = Handshake::new(crate::types::InfoHash([0xaa; 20]), [0xbb; 20]);
        assert_eq!(h.reserved, [0, 0, 0, 0, 0, 0x10, 0, 0x05]);
        assert!(h.extensions() && h.fast() && h.dht());
        let b = h.encode();
        assert_eq!(b[0], 19);
        assert_eq!(&b[1..20], b"BitTorrent protocol");
        assert_eq!(&b[20..28], &[0, 0, 0, 0, 0, 0x10, 0, 0x05]);
        assert_eq!(&b[28..48], &[0xaa; 20]);
        assert_eq!(&b[48..68], &[0xbb; 20]);
        assert_eq!(Handshake::decode(&b), Ok(h));

        let plain = Handshake {
            reserved: [0; 8],
            ..h
        };
        let p = Handshake::decode(&plain.encode()).unwrap();
        assert!(!p.extensions() && !p.fast() && !p.dht());

        let mut bad = b;
        bad[0] = 18;
        assert_eq!(Handshake::decode(&bad), Err(WireError::BadProtocol));
        let mut bad = b;
        bad[19] = b'X';
        assert_eq!(Handshake::decode(&bad), Err(WireError::BadProtocol));
    }

    #[test]
    fn every_split_of_two_frames_waits_for_the_whole_frame() {
        let payload: Vec<u8> = (0..100).collect();
        let pairs: Vec<(Msg<'_>, Msg<'_>)> = vec![
            (
                Msg::Piece {
                    index: 1,
                    begin: 0,
                    data: &payload,
                },
                Msg::Have(3),
            ),
            (
                Msg::Bitfield(&[0x80, 0x10]),
                Msg::Extended {
                    id: 1,
                    payload: &payload,
                },
            ),
            (Msg::KeepAlive, Msg::Request(br(0, 0, BLOCK))),
            (Msg::Unknown { id: 99, len: 7 }, Msg::Choke),
            (Msg::Port(1), Msg::KeepAlive),
        ];
        for (a, b) in &pairs {
            let (ea, eb) = (enc(a), enc(b));
            let buf = [ea.clone(), eb.clone()].concat();
            for k in 0..=buf.len() {
                let got = decode(&buf[..k], &LIM).unwrap();
                if k < ea.len() {
                    assert_eq!(got, None, "{a:?} cut at {k}");
                } else {
                    assert_eq!(got, Some((*a, ea.len())), "{a:?} cut at {k}");
                    let rest = &buf[ea.len()..k];
                    let got = decode(rest, &LIM).unwrap();
                    if rest.len() < eb.len() {
                        assert_eq!(got, None, "{b:?} cut at {k}");
                    } else {
                        assert_eq!(got, Some((*b, eb.len())));
                    }
                }
            }
        }
    }

    #[test]
    fn limits_are_checked_from_the_prefix_and_id_alone() {
        const EXT: u32 = 1 + MAX_EXTENDED as u32;
        // (id, smallest prefix, largest prefix); LIM has 12 pieces -> 2 bytes.
        let table: &[(u8, u32, u32)] = &[
            (0, 1, 1),
            (1, 1, 1),
            (2, 1, 1),
            (3, 1, 1),
            (4, 5, 5),
            (5, 3, 3),
            (6, 13, 13),
            (7, 10, 9 + BLOCK),
            (8, 13, 13),
            (9, 3, 3),
            (13, 5, 5),
            (14, 1, 1),
            (15, 1, 1),
            (16, 13, 13),
            (17, 5, 5),
            (20, 2, EXT),
            (10, 1, EXT),
            (21, 1, EXT),
            (255, 1, EXT),
        ];
        for &(id, min, max) in table {
            // At the max: accepted, and waits for the body if it has one.
            let got = used(&head(max, id), &LIM);
            let want = if max == 1 { Some(5) } else { None };
            assert_eq!(got, Ok(want), "id {id} at max");
            // The whole frame at the max decodes and is consumed exactly.
            let mut full = head(max, id);
            full.resize(4 + max as usize, 0);
            if id == ID_REQUEST {
                full[13..17].copy_from_slice(&BLOCK.to_be_bytes());
            }
            assert_eq!(used(&full, &LIM), Ok(Some(full.len())), "id {id} full");
            // One over the max: refused before the body arrives.
            let got = used(&head(max + 1, id), &LIM);
            let want = if id == ID_BITFIELD {
                WireError::BadBitfield(BitfieldError::Length {
                    expected: 2,
                    got: 3,
                })
            } else {
                WireError::FrameTooLong { id, len: max + 1 }
            };
            assert_eq!(got, Err(want), "id {id} over max");
            // One under the min (0 would be a keep-alive).
            if min > 1 {
                let got = used(&head(min - 1, id), &LIM);
                assert!(
                    matches!(
                        got,
                        Err(WireError::BadLength { .. } | WireError::BadBitfield(_))
                    ),
                    "id {id} under min: {got:?}"
                );
            }
        }
    }

    #[test]
    fn a_huge_prefix_needs_only_the_id_byte_to_be_refused() {
        let mut b = u32::MAX.to_be_bytes().to_vec();
        assert_eq!(decode(&b, &LIM), Ok(None));
        b.push(ID_PIECE);
        assert_eq!(
            decode(&b, &LIM),
            Err(WireError::FrameTooLong {
                id: ID_PIECE,
                len: u32::MAX
            })
        );
        assert_eq!(decode(&[], &LIM), Ok(None));
        assert_eq!(decode(&[0, 0], &LIM), Ok(None));
    }

    #[test]
    fn unknown_ids_are_skipped_with_the_right_consumed_count() {
        let mut buf = vec![0, 0, 0, 4, 42, 9, 9, 9];
        buf.extend(enc(&Msg::Have(7)));
        let (m, n) = decode(&buf, &LIM).unwrap().unwrap();
        assert_eq!((m, n), (Msg::Unknown { id: 42, len: 3 }, 8));
        assert_eq!(decode(&buf[n..], &LIM), Ok(Some((Msg::Have(7), 9))));
    }

    #[test]
    fn bitfield_wrong_size_or_padding_is_refused() {
        let lim = Limits { piece_count: 12 };
        let bad = |b: &[u8]| used(&[&head(1 + b.len() as u32, 5)[..], b].concat(), &lim);
        let len_err = |got| {
            Err(WireError::BadBitfield(BitfieldError::Length {
                expected: 2,
                got,
            }))
        };
        assert_eq!(bad(&[0xff]), len_err(1));
        assert_eq!(bad(&[0xff, 0xf0, 0]), len_err(3));
        assert_eq!(bad(&[]), len_err(0));
        for pad in [0x01, 0x02, 0x04, 0x08] {
            assert_eq!(
                bad(&[0, pad]),
                Err(WireError::BadBitfield(BitfieldError::Padding)),
                "pad {pad:#x}"
            );
        }
        assert_eq!(bad(&[0xff, 0xf0]), Ok(Some(7)));
        // A multiple of 8 has no padding; 0 pieces means an empty bitfield.
        let lim16 = Limits { piece_count: 16 };
        let b = [&head(3, 5)[..], &[0xff, 0xff]].concat();
        assert_eq!(
            decode(&b, &lim16),
            Ok(Some((Msg::Bitfield(&[0xff, 0xff]), 7)))
        );
        let lim0 = Limits { piece_count: 0 };
        assert_eq!(
            decode(&head(1, 5), &lim0),
            Ok(Some((Msg::Bitfield(&[]), 5)))
        );
    }

    #[test]
    fn requests_for_empty_or_oversized_blocks_are_refused() {
        for length in [0, BLOCK + 1, u32::MAX] {
            let b = enc(&Msg::Request(br(1, 2, length)));
            assert_eq!(
                decode(&b, &LIM),
                Err(WireError::BadRequest(br(1, 2, length)))
            );
        }
        let b = enc(&Msg::Request(br(1, 2, 1)));
        assert!(decode(&b, &LIM).unwrap().is_some());
    }

    #[test]
    fn bitfield_helpers() {
        for (n, len) in [
            (0, 0),
            (1, 1),
            (8, 1),
            (9, 2),
            (63_000, 7875),
            (u32::MAX, 1 << 29),
        ] {
            assert_eq!(bitfield_len(n), len, "{n} pieces");
        }
        let mut bits = vec![0u8; bitfield_len(12)];
        for i in [0, 7, 8, 11] {
            bitfield_set(&mut bits, i);
        }
        assert_eq!(bits, [0x81, 0x90]);
        assert!(bitfield_get(&bits, 0) && bitfield_get(&bits, 11));
        assert!(!bitfield_get(&bits, 1) && !bitfield_get(&bits, 12));
        assert!(!bitfield_get(&bits, u32::MAX));
        bitfield_set(&mut bits, 16); // past the end: no-op, no panic
        assert_eq!(bits, [0x81, 0x90]);
        assert_eq!(bitfield_check(&bits, 12), Ok(()));
        assert_eq!(bitfield_check(&bits, 11), Err(BitfieldError::Padding));
    }

    // ---- extension payloads ----

    fn ours() -> ExtHandshake {
        ExtHandshake {
            m: vec![("ut_pex".into(), 1), ("dt_wip".into(), 2)],
            p: Some(6881),
            v: Some("debtorrent 0.1.0".into()),
            reqq: Some(250),
            debtorrent: Some(2),
            yourip: Some(vec![10, 0, 0, 1]),
            versions: vec![crate::types::InfoHash([0x61; 20])],
        }
    }

    #[test]
    fn ext_handshake_golden_and_round_trip() {
        let h = ours();
        let b = h.encode();
        assert_eq!(
            std::str::from_utf8(&b).unwrap(),
            "d10:debtorrenti2e6:dt_idx20:aaaaaaaaaaaaaaaaaaaa1:md6:dt_wipi2e6:ut_pexi1ee\
             1:pi6881e4:reqqi250e1:v16:debtorrent 0.1.06:yourip4:\x0a\x00\x00\x01e"
        );
        let back = ExtHandshake::decode(&b).unwrap();
        assert_eq!(back.m, vec![("dt_wip".into(), 2), ("ut_pex".into(), 1)]);
        assert_eq!(back.ext_id(EXT_WIP), Some(2));
        assert_eq!(back.ext_id(EXT_PEX), Some(1));
        assert_eq!(back.ext_id("ut_metadata"), None);
        assert_eq!(back.debtorrent, Some(2));
        assert_eq!(back.versions, h.versions);
        // A dt_idx that is not whole hashes, or too long, is ignored.
        for bad in [&b"d6:dt_idx3:abce"[..], &b"d6:dt_idx0:e"[..]] {
            assert_eq!(ExtHandshake::decode(bad).map(|h| h.versions), Ok(vec![]));
        }
        let long = debtorrent_gen::bencode::to_vec(|w| {
            w.dict()
                .bytes(b"dt_idx")
                .bytes(&vec![1; 20 * (MAX_IDX + 1)])
                .end();
        });
        assert_eq!(ExtHandshake::decode(&long).map(|h| h.versions), Ok(vec![]));
        assert_eq!((back.p, back.reqq), (h.p, h.reqq));
        assert_eq!((back.v, back.yourip), (h.v, h.yourip));
        assert_eq!(ExtHandshake::default().encode(), b"d1:mdee");
        // Disabled (0) and duplicate names are left out of what we send.
        let dup = ExtHandshake {
            m: vec![("b".into(), 2), ("a".into(), 0), ("b".into(), 3)],
            ..Default::default()
        };
        assert_eq!(dup.encode(), b"d1:md1:bi2eee");
    }

    #[test]
    fn ext_handshake_from_libtorrent() {
        // "libtorrent 2.0.8.0" is 18 bytes. The same vector with `v17:` (as
        // once written in a brief) is not bencode, and must be refused.
        let bad =
            b"d1:md11:ut_metadatai2e6:ut_pexi1ee1:pi6881e4:reqqi500e1:v17:libtorrent 2.0.8.0e";
        assert!(matches!(
            ExtHandshake::decode(bad),
            Err(WireError::BadBencode(_))
        ));
        let b = b"d1:md11:ut_metadatai2e6:ut_pexi1ee1:pi6881e4:reqqi500e1:v18:libtorrent 2.0.8.0e";
        let h = ExtHandshake::decode(b).unwrap();
        assert_eq!(
            h,
            ExtHandshake {
                m: vec![("ut_metadata".into(), 2), ("ut_pex".into(), 1)],
                p: Some(6881),
                v: Some("libtorrent 2.0.8.0".into()),
                reqq: Some(500),
                debtorrent: None,
                yourip: None,
                versions: vec![],
            }
        );
    }

    #[test]
    fn ext_handshake_ignores_odd_values() {
        let b = b"d1:ai1e10:debtorrent3:yes1:md1:ai0e1:bi300e1:ci-1e1:dle1:ei7ee\
                  1:pi70000e4:reqqi-1e1:vi3e6:yourip3:abce";
        assert_eq!(
            ExtHandshake::decode(b),
            Ok(ExtHandshake {
                m: vec![("e".into(), 7)],
                ..Default::default()
            })
        );
        assert_eq!(
            ExtHandshake::decode(b"d1:pi0e4:reqqi99999999999999999999ee"),
            Ok(ExtHandshake::default())
        );
        // Shallow nesting under an unknown key is skipped.
        assert_eq!(
            ExtHandshake::decode(b"d1:allleee1:pi1ee").map(|h| h.p),
            Ok(Some(1))
        );
    }

    #[test]
    fn ext_handshake_refuses_bad_structure() {
        let deep = format!("d1:x{}{}e", "l".repeat(64), "e".repeat(64));
        let cases: &[&[u8]] = &[
            b"",
            b"garbage",
            b"le",
            b"i1e",
            b"3:abc",
            b"d1:pi1e",                    // unterminated
            b"d1:pe",                      // key without value
            b"di1ei2ee",                   // integer key
            b"d1:pi1e1:ai2ee",             // unsorted keys
            b"d1:pi1e1:pi2ee",             // duplicate key
            b"d1:pi01ee",                  // leading zero
            b"d1:pi-0ee",                  // negative zero
            b"d1:p99999999999999999999:e", // absurd string length
            b"d1:pi1eeXYZ",                // trailing bytes
            b"dede",
            deep.as_bytes(),
        ];
        for c in cases {
            let got = ExtHandshake::decode(c);
            assert!(
                matches!(got, Err(WireError::BadBencode(_))),
                "{:?}: {got:?}",
                String::from_utf8_lossy(c)
            );
        }
    }

    fn v4(a: [u8; 4], port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::from(a)), port)
    }
    fn v6(a: [u8; 16], port: u16) -> SocketAddr {
        SocketAddr::new(IpAddr::V6(Ipv6Addr::from(a)), port)
    }

    #[test]
    fn pex_golden_and_round_trip() {
        let mut six = [0u8; 16];
        six[0] = 0x20;
        six[1] = 0x01;
        six[15] = 1;
        let pex = Pex {
            added: vec![v4([1, 2, 3, 4], 0x1ae1), v6(six, 2)],
            dropped: vec![v4([5, 6, 7, 8], 1)],
        };
        let b = pex.encode();
        let mut want = b"d5:added6:\x01\x02\x03\x04\x1a\xe17:added.f1:\x006:added618:".to_vec();
        want.extend_from_slice(&six);
        want.extend_from_slice(b"\x00\x028:added6.f1:\x007:dropped6:\x05\x06\x07\x08\x00\x01");
        want.extend_from_slice(b"8:dropped60:e");
        assert_eq!(b, want);
        assert_eq!(Pex::decode(&b), Ok(pex));
        assert_eq!(Pex::decode(b"de"), Ok(Pex::default()));
    }

    #[test]
    fn pex_refuses_bad_lengths_and_types() {
        let cases: &[(&[u8], &str)] = &[
            (b"d5:added5:abcdee", "added"),
            (b"d5:added7:abcdefge", "added"),
            (b"d6:added617:aaaaaaaaaaaaaaaaae", "added6"),
            (b"d7:dropped1:xe", "dropped"),
            (b"d8:dropped66:abcdefe", "dropped6"),
            (b"d5:addedi1ee", "added"),
            (b"d7:droppedlee", "dropped"),
        ];
        for (c, key) in cases {
            assert!(
                matches!(Pex::decode(c), Err(WireError::BadField { key: k, .. }) if k == *key),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
        assert!(matches!(Pex::decode(b"l"), Err(WireError::BadBencode(_))));
        // Flags and unknown keys are ignored.
        assert_eq!(
            Pex::decode(b"d1:0i1e5:added0:7:added.f3:xyze"),
            Ok(Pex::default())
        );
    }

    #[test]
    fn pex_caps_lists_at_50() {
        let many: Vec<SocketAddr> = (0..80u8).map(|i| v4([10, 0, 0, i], 1)).collect();
        let pex = Pex {
            added: many.clone(),
            dropped: many.iter().map(|a| v6([a.port() as u8; 16], 9)).collect(),
        };
        let back = Pex::decode(&pex.encode()).unwrap();
        assert_eq!(back.added, many[..MAX_PEX]);
        assert_eq!(back.dropped.len(), MAX_PEX);
        // On decode: 60 v4 + 10 v6 -> the first 50 v4.
        let mut b = b"d5:added360:".to_vec();
        b.extend(many[..60].iter().flat_map(|_| [1, 1, 1, 1, 0, 1]));
        b.extend_from_slice(b"6:added6180:");
        b.extend(std::iter::repeat_n(0u8, 180));
        b.push(b'e');
        let got = Pex::decode(&b).unwrap();
        assert_eq!(got.added.len(), MAX_PEX);
        assert!(got.added.iter().all(|a| a.is_ipv4()));
    }

    #[test]
    fn wip_golden_and_round_trip() {
        let w = Wip {
            add: vec![(7, [0xab; 32])],
            done: vec![3],
        };
        let b = w.encode();
        let mut want = b"d1:a36:".to_vec();
        want.extend_from_slice(&[0, 0, 0, 7]);
        want.extend_from_slice(&[0xab; 32]);
        want.extend_from_slice(b"1:d4:");
        want.extend_from_slice(&[0, 0, 0, 3]);
        want.push(b'e');
        assert_eq!(b, want);
        assert_eq!(Wip::decode(&b), Ok(w));
        assert_eq!(Wip::decode(b"de"), Ok(Wip::default()));
        assert_eq!(Wip::default().encode(), b"d1:a0:1:d0:e");
        assert_eq!(
            Wip::decode(b"d1:d4:\0\0\0\x011:zi0ee").map(|w| w.done),
            Ok(vec![1])
        );
    }

    #[test]
    fn hold_golden_and_limits() {
        let h = Hold {
            add: vec![(7, [0xab; 32])],
            drop: vec![1, 258],
        };
        let mut want = b"d1:a36:".to_vec();
        want.extend_from_slice(&[0, 0, 0, 7]);
        want.extend_from_slice(&[0xab; 32]);
        want.extend_from_slice(b"1:d8:");
        want.extend_from_slice(&[0, 0, 0, 1, 0, 0, 1, 2]);
        want.push(b'e');
        assert_eq!(h.encode(), want);
        assert_eq!(Hold::decode(&want), Ok(h));
        assert_eq!(Hold::default().encode(), b"d1:a0:1:d0:e");
        assert_eq!(Hold::decode(b"de"), Ok(Hold::default()));
        // Unknown keys are room for later versions.
        assert_eq!(Hold::decode(b"d1:d0:1:zi1ee"), Ok(Hold::default()));
        let bad: &[(&[u8], &str)] = &[
            (b"d1:a3:abce", "a partial entry"),
            (b"d1:d5:abcdee", "a partial number"),
            (b"d1:ai1ee", "not a byte string"),
            (b"l1:ae", "not a dict"),
        ];
        for (b, why) in bad {
            assert!(Hold::decode(b).is_err(), "{why}");
        }
        // At most MAX_HOLD entries each way: more is refused, and encode
        // writes only the first MAX_HOLD.
        let many = Hold {
            add: (0..MAX_HOLD as u32 + 5).map(|n| (n, [1; 32])).collect(),
            drop: (0..MAX_HOLD as u32 + 5).collect(),
        };
        let enc = many.encode();
        assert!(enc.len() < MAX_EXTENDED, "{} bytes", enc.len());
        let back = Hold::decode(&enc).expect("what we write we read");
        assert_eq!((back.add.len(), back.drop.len()), (MAX_HOLD, MAX_HOLD));
        let over = bencode(|w| {
            w.dict()
                .bytes(b"d")
                .bytes(&vec![0; 4 * (MAX_HOLD + 1)])
                .end();
        });
        assert!(matches!(
            Hold::decode(&over),
            Err(WireError::TooMany { key: "d", .. })
        ));
    }

    #[test]
    fn who_golden_round_trip_and_limits() {
        // Golden bytes: a query for one hash, an answer with one IPv4 and
        // one IPv6 peer.
        let q = Who::Query(vec![[0xab; 32]]);
        let mut golden = b"d1:q32:".to_vec();
        golden.extend_from_slice(&[0xab; 32]);
        golden.push(b'e');
        assert_eq!(q.encode(), golden);
        assert_eq!(Who::decode(&golden), Ok(q));
        let v4: SocketAddr = "10.1.2.3:6881".parse().expect("literal");
        let v6: SocketAddr = "[::1]:7000".parse().expect("literal");
        let a = Who::Answer {
            sha256: [7; 32],
            peers: vec![v4, v6],
        };
        let mut golden = b"d1:h32:".to_vec();
        golden.extend_from_slice(&[7; 32]);
        golden.extend_from_slice(b"1:p6:\x0a\x01\x02\x03\x1a\xe12:p618:");
        golden.extend_from_slice(&[0; 15]);
        golden.extend_from_slice(&[1, 0x1b, 0x58]);
        golden.push(b'e');
        assert_eq!(a.encode(), golden);
        assert_eq!(Who::decode(&golden), Ok(a));
        // At most MAX_WHO hashes are written; more are refused on reading.
        let many = Who::Query(vec![[1; 32]; MAX_WHO + 5]);
        assert_eq!(
            Who::decode(&many.encode()),
            Ok(Who::Query(vec![[1; 32]; MAX_WHO]))
        );
        let over = bencode(|w| {
            w.dict().bytes(b"q").bytes(&[1; 32 * (MAX_WHO + 1)]).end();
        });
        assert!(Who::decode(&over).is_err());
        // Peers beyond MAX_WHO_PEERS are dropped, not an error.
        let crowd = Who::Answer {
            sha256: [7; 32],
            peers: (0..40u16)
                .map(|i| SocketAddr::from(([10, 0, 0, 1], i)))
                .collect(),
        };
        let wide = crowd.encode();
        assert_eq!(
            Who::decode(&wide).map(|w| match w {
                Who::Answer { peers, .. } => peers.len(),
                Who::Query(_) => 0,
            }),
            Ok(MAX_WHO_PEERS)
        );
        // Malformed: short hash, ragged peers, both or neither part.
        let bad: &[&[u8]] = &[
            b"d1:h3:abce",
            b"d1:q33:123456789012345678901234567890123e",
            b"de",
            b"d1:p5:12345e",
            b"d1:qi1ee",
        ];
        for c in bad {
            assert!(Who::decode(c).is_err(), "{:?}", String::from_utf8_lossy(c));
        }
    }

    #[test]
    fn wip_limits() {
        let nums = |n: usize| -> Vec<u8> {
            bencode(|w| {
                w.dict().bytes(b"d").bytes(&vec![0; 4 * n]).end();
            })
        };
        assert_eq!(
            Wip::decode(&nums(MAX_WIP)).map(|w| w.done.len()),
            Ok(MAX_WIP)
        );
        assert_eq!(
            Wip::decode(&nums(MAX_WIP + 1)),
            Err(WireError::TooMany {
                key: "d",
                max: MAX_WIP
            })
        );
        let big = Wip {
            add: (0..300).map(|n| (n, [2; 32])).collect(),
            done: vec![],
        };
        assert_eq!(Wip::decode(&big.encode()).map(|w| w.add.len()), Ok(MAX_WIP));
        let bad: &[&[u8]] = &[b"d1:ali1eee", b"d1:a3:abce", b"d1:ai1ee", b"d1:d3:abce"];
        for c in bad {
            assert!(
                matches!(Wip::decode(c), Err(WireError::BadField { .. })),
                "{:?}",
                String::from_utf8_lossy(c)
            );
        }
    }

    // ---- properties ----

    /// An owned message, so proptest can generate it; `msg()` borrows it.
    #[derive(Clone, Debug)]
    enum Owned {
        Fixed(u8, u32, u32, u32),
        Bitfield([u8; 3]),
        Piece(u32, u32, Vec<u8>),
        Ext(u8, Vec<u8>),
        Unknown(u8, u32),
    }

    /// 21 pieces: 3 bitfield bytes, 3 padding bits.
    const PLIM: Limits = Limits { piece_count: 21 };

    impl Owned {
        fn msg(&self) -> Msg<'_> {
            match self {
                &Owned::Fixed(k, a, b, c) => {
                    let r = br(a, b, c % BLOCK + 1);
                    match k {
                        0 => Msg::KeepAlive,
                        1 => Msg::Choke,
                        2 => Msg::Unchoke,
                        3 => Msg::Interested,
                        4 => Msg::NotInterested,
                        5 => Msg::Have(a),
                        6 => Msg::Request(r),
                        7 => Msg::Cancel(br(a, b, c)),
                        8 => Msg::Port(a as u16),
                        9 => Msg::Suggest(a),
                        10 => Msg::HaveAll,
                        11 => Msg::HaveNone,
                        12 => Msg::Reject(br(a, b, c)),
                        _ => Msg::AllowedFast(a),
                    }
                }
                Owned::Bitfield(b) => Msg::Bitfield(b),
                Owned::Piece(index, begin, data) => Msg::Piece {
                    index: *index,
                    begin: *begin,
                    data,
                },
                Owned::Ext(id, payload) => Msg::Extended { id: *id, payload },
                &Owned::Unknown(id, len) => Msg::Unknown { id, len },
            }
        }
    }

    fn owned() -> impl Strategy<Value = Owned> {
        prop_oneof![
            4 => (0u8..14, any::<u32>(), any::<u32>(), any::<u32>())
                .prop_map(|(k, a, b, c)| Owned::Fixed(k, a, b, c)),
            1 => any::<[u8; 3]>().prop_map(|[a, b, c]| Owned::Bitfield([a, b, c & 0xf8])),
            1 => (any::<u32>(), any::<u32>(), prop::collection::vec(any::<u8>(), 1..=BLOCK as usize))
                .prop_map(|(i, b, d)| Owned::Piece(i, b, d)),
            1 => (any::<u8>(), prop::collection::vec(any::<u8>(), 0..2000))
                .prop_map(|(i, p)| Owned::Ext(i, p)),
            1 => (any::<u8>().prop_filter("unknown id", |i| matches!(i, 10..=12 | 18 | 19 | 21..)),
                  0u32..1000)
                .prop_map(|(i, l)| Owned::Unknown(i, l)),
        ]
    }

    fn addr() -> impl Strategy<Value = SocketAddr> {
        prop_oneof![
            (any::<[u8; 4]>(), any::<u16>()).prop_map(|(a, p)| v4(a, p)),
            (any::<[u8; 16]>(), any::<u16>()).prop_map(|(a, p)| v6(a, p)),
        ]
    }

    /// Bytes that look like bencode, so the decoders get past the first byte.
    fn bencodeish() -> impl Strategy<Value = Vec<u8>> {
        "d[dlie0-9:a-z.-]{0,80}e?".prop_map(String::into_bytes)
    }

    proptest! {
        #[test]
        fn hold_roundtrips(add in prop::collection::vec((any::<u32>(), any::<[u8; 32]>()), 0..40), drop in prop::collection::vec(any::<u32>(), 0..40)) {
            let h = Hold { add, drop };
            prop_assert_eq!(Hold::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn decode_never_panics(buf in prop::collection::vec(any::<u8>(), 0..200), n in any::<u32>()) {
            let lim = Limits { piece_count: n % 2000 };
            if let Ok(Some((_, used))) = decode(&buf, &lim) {
                prop_assert!((4..=buf.len()).contains(&used));
            }
        }

        #[test]
        fn decode_never_panics_on_plausible_frames(id in any::<u8>(), len in 0u32..40, body in prop::collection::vec(any::<u8>(), 0..40)) {
            let buf = [&head(len, id)[..], &body].concat();
            if let Ok(Some((_, used))) = decode(&buf, &PLIM) {
                prop_assert!(used <= buf.len());
            }
        }

        #[test]
        fn extension_decoders_never_panic(b in prop::collection::vec(any::<u8>(), 0..200), c in bencodeish()) {
            for x in [&b, &c] {
                let _ = ExtHandshake::decode(x);
                let _ = Pex::decode(x);
                let _ = Wip::decode(x);
                let _ = Hold::decode(x);
            }
        }

        #[test]
        fn msg_round_trip(m in owned()) {
            let msg = m.msg();
            let b = enc(&msg);
            prop_assert_eq!(decode(&b, &PLIM), Ok(Some((m.msg(), b.len()))));
        }

        #[test]
        fn stream_round_trip(ms in prop::collection::vec(owned(), 0..12)) {
            let mut out = BytesMut::new();
            for m in &ms {
                encode(&m.msg(), &mut out);
            }
            let mut at = 0;
            for m in &ms {
                let (got, used) = decode(&out[at..], &PLIM).unwrap().unwrap();
                prop_assert_eq!(got, m.msg());
                at += used;
            }
            prop_assert_eq!(at, out.len());
            prop_assert_eq!(decode(&out[at..], &PLIM), Ok(None));
        }

        #[test]
        fn ext_handshake_round_trip(
            m in prop::collection::btree_map("[a-z_.]{1,12}", 1u8..=255, 0..6),
            p in proptest::option::of(1u16..),
            v in proptest::option::of(".{0,20}"),
            reqq in proptest::option::of(any::<u32>()),
            debtorrent in proptest::option::of(any::<i64>()),
            yourip in proptest::option::of(prop_oneof![
                prop::collection::vec(any::<u8>(), 4),
                prop::collection::vec(any::<u8>(), 16),
            ]),
        ) {
            let versions = vec![];
            let h = ExtHandshake { m: m.into_iter().collect(), p, v, reqq, debtorrent, yourip, versions };
            prop_assert_eq!(ExtHandshake::decode(&h.encode()), Ok(h));
        }

        #[test]
        fn pex_round_trip(
            added in prop::collection::vec(addr(), 0..=MAX_PEX),
            dropped in prop::collection::vec(addr(), 0..=MAX_PEX),
        ) {
            let pex = Pex { added, dropped };
            let back = Pex::decode(&pex.encode()).unwrap();
            // Decoding groups IPv4 before IPv6; order within a family holds.
            let sorted = |v: &[SocketAddr]| {
                let mut v = v.to_vec();
                v.sort_by_key(|a| a.is_ipv6());
                v
            };
            prop_assert_eq!(back.added, sorted(&pex.added));
            prop_assert_eq!(back.dropped, sorted(&pex.dropped));
        }

        #[test]
        fn wip_round_trip(
            add in prop::collection::vec((any::<u32>(), any::<[u8; 32]>()), 0..=MAX_WIP),
            done in prop::collection::vec(any::<u32>(), 0..=MAX_WIP),
        ) {
            let w = Wip { add, done };
            prop_assert_eq!(Wip::decode(&w.encode()), Ok(w));
        }
    }
}
