//! debtorrent-gen: a Debian `Packages` or `Sources` index becomes the dt1
//! torrent that every peer holding the same index derives by itself.
//!
//! The format is fixed in `docs/torrent-format.md`: one file of the
//! archive is one piece, its SHA-256 from the index is the piece hash, and
//! the info hash depends on nothing but the index content. The daemon uses
//! this library for every index apt fetches, so the URL -> piece mapping it
//! serves cannot drift from what this crate's CLI prints.
//!
//! ```no_run
//! # fn main() -> Result<(), debtorrent_gen::Error> {
//! let file = std::fs::File::open("Packages.xz")?;
//! let built = debtorrent_gen::build_from_reader(file, &debtorrent_gen::Options::default())?;
//! println!("{}", built.torrent.info_hash());
//! let piece = built.torrent.find("pool/main/h/hello/hello_2.10-3_amd64.deb");
//! # Ok(()) }
//! ```

#![warn(missing_docs)]

pub mod bencode;
mod decompress;
mod hex;
mod metainfo;
mod parse;
mod swarm;
mod torrent;

use std::io::Read;

use decompress::READ_CHUNK;
pub use decompress::{Compression, IndexReader, DEFAULT_MAX_SIZE};
pub use hex::{decode_hex, encode_hex};
pub use metainfo::{read_metainfo, write_metainfo, Metainfo};
pub use parse::{check_hash, check_path, check_size, DropReason, IndexKind, Report};
pub use swarm::{family, swarm_id};
pub use torrent::{sha256_hex, InfoHash, Piece, Torrent};

/// Why an index could not become a torrent.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Reading the input failed.
    #[error("read error: {0}")]
    Io(#[from] std::io::Error),
    /// The compressed data is corrupt or truncated.
    #[error("{format} data is corrupt or truncated: {source}")]
    Decompress {
        /// The detected format.
        format: &'static str,
        /// The decoder's error.
        source: std::io::Error,
    },
    /// The uncompressed index is larger than the cap.
    #[error("uncompressed index exceeds the limit of {limit} bytes (a decompression bomb?)")]
    TooLarge {
        /// The cap that was hit.
        limit: u64,
    },
    /// A field or line is absurdly long for an index.
    #[error("a line or field is far longer than any real index holds")]
    LineTooLong,
    /// No paragraph had the fields of a Packages or Sources index.
    #[error("not a Debian Packages or Sources index: no paragraph has a Filename, Directory or Checksums-Sha256 field")]
    NotAnIndex,
    /// The index was read, but every entry was invalid.
    #[error("no valid entry: {} paragraphs read, {} entries dropped", .0.paragraphs, .0.dropped_total())]
    NoValidEntries(Box<Report>),
}

/// Why a metainfo file or info dict could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetainfoError {
    /// The bencode itself is malformed (bad lengths, nesting, key order...).
    #[error("malformed bencode: {0}")]
    Bencode(String),
    /// The bencode is fine but is not a valid dt1 torrent.
    #[error("not a valid dt1 torrent: {0}")]
    Invalid(String),
}

impl From<bendy::decoding::Error> for MetainfoError {
    fn from(e: bendy::decoding::Error) -> Self {
        MetainfoError::Bencode(e.to_string())
    }
}

/// How to read an index.
#[derive(Clone, Debug)]
pub struct Options {
    /// Force the kind; `None` detects it from the fields.
    pub kind: Option<IndexKind>,
    /// Cap on the uncompressed size.
    pub max_size: u64,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            kind: None,
            max_size: DEFAULT_MAX_SIZE,
        }
    }
}

/// A torrent and what was dropped on the way.
#[derive(Debug)]
pub struct Built {
    /// The torrent.
    pub torrent: Torrent,
    /// Counts of paragraphs, entries, duplicates and drops.
    pub report: Report,
    /// The compression the input had.
    pub compression: Compression,
}

/// An incremental builder: feed it uncompressed index bytes as they arrive
/// (from a socket, say), then [`Builder::finish`].
pub struct Builder {
    parser: parse::IndexParser,
}

impl Builder {
    /// A builder for an index of `kind` (or detected, if `None`).
    pub fn new(kind: Option<IndexKind>) -> Builder {
        Builder {
            parser: parse::IndexParser::new(kind),
        }
    }

    /// Feeds the next chunk of uncompressed bytes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), Error> {
        self.parser.feed(chunk).map_err(limit_error)
    }

    /// Builds the torrent.
    pub fn finish(self) -> Result<(Torrent, Report), Error> {
        let (entries, mut report, saw_index_field) = self.parser.finish().map_err(limit_error)?;
        if !saw_index_field {
            return Err(Error::NotAnIndex);
        }
        match Torrent::from_entries(entries, &mut report) {
            Some(t) => Ok((t, report)),
            None => Err(Error::NoValidEntries(Box::new(report))),
        }
    }
}

fn limit_error(l: parse::ParseLimit) -> Error {
    match l {
        parse::ParseLimit::FieldTooLong => Error::LineTooLong,
        parse::ParseLimit::TooManyPaths => Error::TooLarge {
            limit: u32::MAX.into(),
        },
    }
}

/// Reads an index (compressed or not) and builds its torrent.
pub fn build_from_reader<R: Read>(r: R, opts: &Options) -> Result<Built, Error> {
    let mut reader = IndexReader::new(r, opts.max_size)?;
    let mut builder = Builder::new(opts.kind);
    // As large as the IndexReader's own buffer, so that uncompressed input
    // goes from the kernel straight into this one (no second copy), and no
    // larger: measured on bookworm main (50 MB), 64 KiB reads ran the
    // whole `hash` in 81 ms, 128 or 256 KiB reads in 96 ms, and reads
    // smaller than the BufReader's buffer (a second copy) in 98 ms.
    let mut buf = vec![0u8; READ_CHUNK];
    loop {
        let n = reader.read_chunk(&mut buf)?;
        if n == 0 {
            break;
        }
        builder.feed(&buf[..n])?;
    }
    let (torrent, report) = builder.finish()?;
    Ok(Built {
        torrent,
        report,
        compression: reader.format(),
    })
}

/// Builds the torrent of an index held in memory (compressed or not).
pub fn build_from_bytes(bytes: &[u8], opts: &Options) -> Result<Built, Error> {
    build_from_reader(bytes, opts)
}
