//! Section 4: the optional `.torrent` container around a dt1 info dict, and
//! reading a dt1 info dict back.
//!
//! Reading goes through bendy's decoder, which checks lengths against the
//! input and is limited in nesting depth here, so a file that lies about a
//! length or nests 100,000 lists deep is an error, not a crash.

use std::io::{self, Write};

use bendy::decoding::{Decoder, Object};

use crate::torrent::Torrent;
use crate::MetainfoError;

/// A metainfo file: the info dict plus the optional keys of section 4.
#[derive(Debug)]
pub struct Metainfo {
    /// The torrent (info dict) inside.
    pub torrent: Torrent,
    /// Whether the info dict is byte for byte what debtorrent-gen writes.
    pub canonical: bool,
    /// Tracker announce URLs, in order (`announce` then `announce-list`).
    pub trackers: Vec<String>,
    /// Archive root URLs (`url-list`), the web seeds.
    pub webseeds: Vec<String>,
    /// The index's path under the archive root (`x-index`).
    pub index_path: Option<String>,
    /// `comment`.
    pub comment: Option<String>,
    /// `created by`.
    pub created_by: Option<String>,
}

/// Deep enough for a metainfo file (dict > list > dict > list), shallow
/// enough that a hostile file cannot make the decoder work hard.
const MAX_DEPTH: usize = 8;

/// Writes a metainfo file. Keys are written in sorted order, as bencode
/// requires; none of them changes the info hash.
pub fn write_metainfo<W: Write>(
    w: &mut W,
    torrent: &Torrent,
    trackers: &[String],
    webseeds: &[String],
    index_path: Option<&str>,
    comment: Option<&str>,
) -> io::Result<()> {
    let mut b = crate::bencode::Writer::new(&mut *w);
    b.dict();
    if let Some(first) = trackers.first() {
        b.bytes(b"announce").bytes(first.as_bytes());
        // BEP 12: one tier per tracker, tried in the order given.
        b.bytes(b"announce-list").list();
        for t in trackers {
            b.list().bytes(t.as_bytes()).end();
        }
        b.end();
    }
    if let Some(c) = comment {
        b.bytes(b"comment").bytes(c.as_bytes());
    }
    b.bytes(b"created by")
        .bytes(concat!("debtorrent-gen ", env!("CARGO_PKG_VERSION")).as_bytes());
    b.bytes(b"info");
    let w = b.finish()?;
    torrent.write_info(&mut *w)?;
    let mut b = crate::bencode::Writer::new(w);
    if !webseeds.is_empty() {
        b.bytes(b"url-list").list();
        for u in webseeds {
            b.bytes(u.as_bytes());
        }
        b.end();
    }
    if let Some(p) = index_path {
        b.bytes(b"x-index").bytes(p.as_bytes());
    }
    b.end();
    b.finish().map(|_| ())
}

fn bad(msg: impl Into<String>) -> MetainfoError {
    MetainfoError::Invalid(msg.into())
}

fn utf8(b: &[u8], what: &str) -> Result<String, MetainfoError> {
    String::from_utf8(b.to_vec()).map_err(|_| bad(format!("{what} is not UTF-8")))
}

fn int(s: &str, what: &str) -> Result<u64, MetainfoError> {
    s.parse::<u64>()
        .map_err(|_| bad(format!("{what} is not a non-negative integer: {s}")))
}

/// Reads a metainfo file.
pub fn read_metainfo(data: &[u8]) -> Result<Metainfo, MetainfoError> {
    let mut dec = Decoder::new(data).with_max_depth(MAX_DEPTH);
    let (m, info) = read_top(&mut dec)?;
    if dec.next_object()?.is_some() {
        return Err(bad("trailing data after the top-level dictionary"));
    }
    let (torrent, canonical) = info.ok_or_else(|| bad("no info dictionary"))?;
    Ok(Metainfo {
        torrent,
        canonical,
        trackers: m.trackers,
        webseeds: m.webseeds,
        index_path: m.index_path,
        comment: m.comment,
        created_by: m.created_by,
    })
}

type Top = (Extras, Option<(Torrent, bool)>);

fn read_top(dec: &mut Decoder<'_>) -> Result<Top, MetainfoError> {
    let root = dec.next_object()?.ok_or_else(|| bad("empty file"))?;
    let mut dict = match root {
        Object::Dict(d) => d,
        _ => return Err(bad("top level is not a dictionary")),
    };
    let mut m = Extras::default();
    let mut info: Option<(Torrent, bool)> = None;
    while let Some((key, value)) = dict.next_pair()? {
        match (key, value) {
            (b"info", Object::Dict(d)) => {
                let raw = d.into_raw()?;
                info = Some(Torrent::from_info_bytes(raw)?);
            }
            (b"info", _) => return Err(bad("info is not a dictionary")),
            (b"announce", Object::Bytes(b)) => m.trackers.insert(0, utf8(b, "announce")?),
            (b"announce-list", Object::List(mut tiers)) => {
                while let Some(tier) = tiers.next_object()? {
                    let Object::List(mut tier) = tier else {
                        return Err(bad("announce-list tier is not a list"));
                    };
                    while let Some(url) = tier.next_object()? {
                        let url = utf8(url.try_into_bytes()?, "tracker URL")?;
                        if !m.trackers.contains(&url) {
                            m.trackers.push(url);
                        }
                    }
                }
            }
            (b"url-list", Object::List(mut l)) => {
                while let Some(u) = l.next_object()? {
                    m.webseeds
                        .push(utf8(u.try_into_bytes()?, "url-list entry")?);
                }
            }
            (b"url-list", Object::Bytes(b)) => m.webseeds.push(utf8(b, "url-list")?),
            (b"x-index", Object::Bytes(b)) => m.index_path = Some(utf8(b, "x-index")?),
            (b"comment", Object::Bytes(b)) => m.comment = Some(utf8(b, "comment")?),
            (b"created by", Object::Bytes(b)) => m.created_by = Some(utf8(b, "created by")?),
            (_, Object::List(mut l)) => l.consume_all()?,
            (_, Object::Dict(mut d)) => d.consume_all()?,
            _ => {}
        }
    }
    Ok((m, info))
}

#[derive(Default)]
struct Extras {
    trackers: Vec<String>,
    webseeds: Vec<String>,
    index_path: Option<String>,
    comment: Option<String>,
    created_by: Option<String>,
}

/// Decodes a dt1 info dict, checking every rule of sections 2 and 3.
pub(crate) fn decode_info(raw: &[u8]) -> Result<Torrent, MetainfoError> {
    let mut dec = Decoder::new(raw).with_max_depth(MAX_DEPTH);
    let Some(Object::Dict(mut dict)) = dec.next_object()? else {
        return Err(bad("info is not a dictionary"));
    };
    let mut version = None;
    let mut name = None;
    let mut pieces: Option<Vec<(String, u64, [u8; 32])>> = None;
    while let Some((key, value)) = dict.next_pair()? {
        match (key, value) {
            (b"debtorrent", Object::Integer(v)) => version = Some(int(v, "debtorrent")?),
            (b"name", Object::Bytes(b)) => name = Some(b.to_vec()),
            (b"files", Object::List(mut files)) => {
                let mut out = Vec::new();
                while let Some(f) = files.next_object()? {
                    let Object::Dict(mut fd) = f else {
                        return Err(bad("a files entry is not a dictionary"));
                    };
                    let (mut len, mut path, mut sha) = (None, None, None);
                    while let Some((k, v)) = fd.next_pair()? {
                        match (k, v) {
                            (b"length", Object::Integer(v)) => len = Some(int(v, "length")?),
                            (b"path", Object::List(mut comps)) => {
                                let mut p = Vec::new();
                                while let Some(c) = comps.next_object()? {
                                    if !p.is_empty() {
                                        p.push(b'/');
                                    }
                                    let c = c.try_into_bytes()?;
                                    if c.is_empty() || c.contains(&b'/') {
                                        return Err(bad("a path component is empty or holds '/'"));
                                    }
                                    p.extend_from_slice(c);
                                }
                                path = Some(p);
                            }
                            (b"sha256", Object::Bytes(b)) => {
                                sha = Some(
                                    <[u8; 32]>::try_from(b)
                                        .map_err(|_| bad("sha256 is not 32 bytes"))?,
                                );
                            }
                            (_, Object::List(mut l)) => l.consume_all()?,
                            (_, Object::Dict(mut d)) => d.consume_all()?,
                            _ => {}
                        }
                    }
                    let (Some(len), Some(path), Some(sha)) = (len, path, sha) else {
                        return Err(bad("a file lacks length, path or sha256"));
                    };
                    if len == 0 || len >= 1 << 63 {
                        return Err(bad(format!("file length {len} out of range")));
                    }
                    let path = crate::parse::check_path(&path)
                        .map_err(|r| bad(format!("file path rejected: {}", r.describe())))?;
                    out.push((path.to_string(), len, sha));
                }
                pieces = Some(out);
            }
            (_, Object::List(mut l)) => l.consume_all()?,
            (_, Object::Dict(mut d)) => d.consume_all()?,
            _ => {}
        }
    }
    if version != Some(1) {
        return Err(bad("not a dt1 info dict (debtorrent key is not 1)"));
    }
    if name.as_deref() != Some(b"archive".as_slice()) {
        return Err(bad("info name is not \"archive\""));
    }
    Torrent::from_checked_pieces(pieces.ok_or_else(|| bad("info has no files list"))?)
}
