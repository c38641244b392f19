//! The workspace's one bencode writer: the dt1 info dict and metainfo
//! files here, the daemon's extension messages (`ut_pex`, `dt_wip`, the
//! extended handshake), and the tracker's responses.
//!
//! Written by hand rather than through bendy's encoder: the info dict is
//! written for every index apt fetches (60-80 thousand files), straight
//! into a hasher or a buffer, and building a tree of values first would
//! cost more than the hashing. Callers write dict keys in sorted order, as
//! bencode requires; the readers (bendy) check that on the way in.
//!
//! The first write error is kept and returned by [`Writer::finish`], so a
//! chain of calls needs no `?` after each; writing to a `Vec` never fails.

use std::io::{self, Write};

/// Writes bencode to `W`.
pub struct Writer<W: Write> {
    w: W,
    err: Option<io::Error>,
    num: itoa::Buffer,
}

impl<W: Write> Writer<W> {
    /// A writer into `w`.
    pub fn new(w: W) -> Self {
        Writer {
            w,
            err: None,
            num: itoa::Buffer::new(),
        }
    }

    /// Raw bytes, already bencoded (or a structural `d`, `l`, `e`).
    pub fn raw(&mut self, b: &[u8]) -> &mut Self {
        if self.err.is_none() {
            if let Err(e) = self.w.write_all(b) {
                self.err = Some(e);
            }
        }
        self
    }

    /// Writes `pre`, the number, then `post` (no allocation: the digits
    /// stay in the writer's own buffer).
    fn num(&mut self, pre: &[u8], n: impl itoa::Integer, post: &[u8]) -> &mut Self {
        if self.err.is_none() {
            let digits = self.num.format(n);
            let r = self
                .w
                .write_all(pre)
                .and_then(|()| self.w.write_all(digits.as_bytes()))
                .and_then(|()| self.w.write_all(post));
            if let Err(e) = r {
                self.err = Some(e);
            }
        }
        self
    }

    /// A byte string: `<len>:<bytes>`.
    pub fn bytes(&mut self, b: &[u8]) -> &mut Self {
        self.num(b"", b.len(), b":").raw(b)
    }

    /// A signed integer: `i<n>e`.
    pub fn int(&mut self, i: i64) -> &mut Self {
        self.num(b"i", i, b"e")
    }

    /// An unsigned integer: `i<n>e`.
    pub fn uint(&mut self, u: u64) -> &mut Self {
        self.num(b"i", u, b"e")
    }

    /// Starts a dict; close it with [`Writer::end`].
    pub fn dict(&mut self) -> &mut Self {
        self.raw(b"d")
    }

    /// Starts a list; close it with [`Writer::end`].
    pub fn list(&mut self) -> &mut Self {
        self.raw(b"l")
    }

    /// Ends the innermost dict or list.
    pub fn end(&mut self) -> &mut Self {
        self.raw(b"e")
    }

    /// The sink, or the first write error.
    pub fn finish(self) -> io::Result<W> {
        match self.err {
            Some(e) => Err(e),
            None => Ok(self.w),
        }
    }
}

/// Bencode written into a fresh `Vec` by `f`.
pub fn to_vec(f: impl FnOnce(&mut Writer<Vec<u8>>)) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    f(&mut w);
    // A Vec never fails a write.
    w.finish().unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_what_bencode_says() {
        let cases: &[(Vec<u8>, &[u8])] = &[
            (
                to_vec(|w| {
                    w.bytes(b"spam");
                }),
                b"4:spam",
            ),
            (
                to_vec(|w| {
                    w.bytes(b"");
                }),
                b"0:",
            ),
            (
                to_vec(|w| {
                    w.int(-3);
                }),
                b"i-3e",
            ),
            (
                to_vec(|w| {
                    w.uint(u64::MAX);
                }),
                b"i18446744073709551615e",
            ),
            (
                to_vec(|w| {
                    w.dict().bytes(b"a").list().int(1).bytes(b"b").end().end();
                }),
                b"d1:ali1e1:bee",
            ),
        ];
        for (got, want) in cases {
            assert_eq!(got.as_slice(), *want);
        }
    }

    #[test]
    fn the_first_error_is_kept() {
        struct Full(usize);
        impl Write for Full {
            fn write(&mut self, b: &[u8]) -> io::Result<usize> {
                if self.0 < b.len() {
                    return Err(io::Error::other("full"));
                }
                self.0 -= b.len();
                Ok(b.len())
            }
            fn flush(&mut self) -> io::Result<()> {
                Ok(())
            }
        }
        let mut w = Writer::new(Full(3));
        w.bytes(b"abc").int(1);
        assert_eq!(w.finish().err().map(|e| e.to_string()), Some("full".into()));
    }
}
