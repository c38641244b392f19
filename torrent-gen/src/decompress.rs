//! Compression of index files, detected by magic bytes, never by name: apt
//! stores `Packages.lz4` in its lists, mirrors offer `.gz`, `.xz`, `.bz2`
//! and `.zst`, and a file renamed by a user or a proxy still reads right.
//!
//! Every decoder is wrapped in a cap on the decompressed size, so a
//! decompression bomb stops with a clear error instead of filling memory or
//! disk. Errors from the underlying reader are tagged so that a failing disk
//! or socket is not reported as corrupt data.

use std::io::{self, BufRead, BufReader, Read};

use crate::Error;

/// A compression format of index files.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Compression {
    /// Not compressed.
    None,
    /// gzip (`.gz`), possibly several members.
    Gzip,
    /// xz (`.xz`), possibly several streams.
    Xz,
    /// bzip2 (`.bz2`), possibly several streams.
    Bzip2,
    /// LZ4 frame format (`.lz4`, as apt writes it).
    Lz4,
    /// Zstandard (`.zst`).
    Zstd,
}

impl Compression {
    /// Detects the format from the first bytes of the data (six suffice).
    pub fn detect(prefix: &[u8]) -> Compression {
        match prefix {
            [0x1f, 0x8b, ..] => Compression::Gzip,
            [0xfd, b'7', b'z', b'X', b'Z', 0x00, ..] => Compression::Xz,
            [b'B', b'Z', b'h', ..] => Compression::Bzip2,
            [0x04, 0x22, 0x4d, 0x18, ..] => Compression::Lz4,
            [0x28, 0xb5, 0x2f, 0xfd, ..] => Compression::Zstd,
            _ => Compression::None,
        }
    }

    /// The format's usual name.
    pub fn name(self) -> &'static str {
        match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Xz => "xz",
            Compression::Bzip2 => "bzip2",
            Compression::Lz4 => "lz4",
            Compression::Zstd => "zstd",
        }
    }
}

/// The default cap on decompressed index size: a real `Packages` is about
/// 50 MB and the largest `Sources` about 60 MB, so 1 GiB is generous while
/// still stopping a bomb long before it hurts.
pub const DEFAULT_MAX_SIZE: u64 = 1 << 30;

/// xz decoder memory limit: real indexes use 8 MiB dictionaries.
const XZ_MEMLIMIT: u64 = 256 << 20;

#[derive(Debug)]
struct SourceError(io::Error);

impl std::fmt::Display for SourceError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

impl std::error::Error for SourceError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.0)
    }
}

/// Marks errors of the underlying reader so they can be told apart from
/// decoder errors.
struct Tagged<R>(R);

impl<R: Read> Read for Tagged<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.0
            .read(buf)
            .map_err(|e| io::Error::new(e.kind(), SourceError(e)))
    }
}

/// Reads uncompressed index bytes from `r`, whatever its compression.
pub struct IndexReader<'a> {
    inner: Box<dyn Read + 'a>,
    format: Compression,
    limit: u64,
    read: u64,
}

/// The read size for index input: see `build_from_reader`.
pub(crate) const READ_CHUNK: usize = 64 * 1024;

impl<'a> IndexReader<'a> {
    /// Detects the compression of `r` and opens a decoder for it, capped at
    /// `max_size` decompressed bytes.
    pub fn new<R: Read + 'a>(r: R, max_size: u64) -> Result<IndexReader<'a>, Error> {
        let mut buf = BufReader::with_capacity(READ_CHUNK, Tagged(r));
        let prefix = buf.fill_buf().map_err(|e| classify(e, Compression::None))?;
        let format = Compression::detect(prefix);
        let inner: Box<dyn Read + 'a> = match format {
            Compression::None => Box::new(buf),
            Compression::Gzip => Box::new(flate2::bufread::MultiGzDecoder::new(buf)),
            Compression::Xz => {
                let stream = liblzma::stream::Stream::new_stream_decoder(
                    XZ_MEMLIMIT,
                    liblzma::stream::CONCATENATED,
                )
                .map_err(|e| Error::Decompress {
                    format: "xz",
                    source: io::Error::other(e),
                })?;
                Box::new(liblzma::bufread::XzDecoder::new_stream(buf, stream))
            }
            Compression::Bzip2 => Box::new(bzip2::bufread::MultiBzDecoder::new(buf)),
            Compression::Lz4 => Box::new(lz4_flex::frame::FrameDecoder::new(buf)),
            Compression::Zstd => Box::new(
                zstd::stream::read::Decoder::with_buffer(buf).map_err(|e| classify(e, format))?,
            ),
        };
        Ok(IndexReader {
            inner,
            format,
            limit: max_size,
            read: 0,
        })
    }

    /// The detected compression.
    pub fn format(&self) -> Compression {
        self.format
    }

    /// Reads the next chunk into `buf`; `Ok(0)` at the end.
    pub fn read_chunk(&mut self, buf: &mut [u8]) -> Result<usize, Error> {
        let n = loop {
            match self.inner.read(buf) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(classify(e, self.format)),
            }
        };
        self.read += n as u64;
        if self.read > self.limit {
            return Err(Error::TooLarge { limit: self.limit });
        }
        Ok(n)
    }
}

fn classify(e: io::Error, format: Compression) -> Error {
    let is_source = e
        .get_ref()
        .is_some_and(|inner| inner.downcast_ref::<SourceError>().is_some());
    if is_source {
        match e.into_inner().map(|b| b.downcast::<SourceError>()) {
            Some(Ok(src)) => Error::Io(src.0),
            _ => Error::Io(io::Error::other("read error")),
        }
    } else {
        Error::Decompress {
            format: format.name(),
            source: e,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn magic_bytes() {
        let cases: &[(&[u8], Compression)] = &[
            (b"\x1f\x8b\x08\x00", Compression::Gzip),
            (b"\xfd7zXZ\x00\x00", Compression::Xz),
            (b"BZh91AY", Compression::Bzip2),
            (b"\x04\x22\x4d\x18\x64", Compression::Lz4),
            (b"\x28\xb5\x2f\xfd\x00", Compression::Zstd),
            (b"Package: x\n", Compression::None),
            (b"\x1f", Compression::None),
            (b"", Compression::None),
            (b"\xfd7zXZ", Compression::None),
        ];
        for (input, want) in cases {
            assert_eq!(Compression::detect(input), *want, "{input:?}");
        }
    }
}
