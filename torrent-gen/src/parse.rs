//! Streaming reader for Debian index files (`Packages`, `Sources`): the
//! deb822 rules of section 1 of `docs/torrent-format.md` and the
//! entry rules of section 2.
//!
//! Pure code: bytes in, entries out. The parser takes the input in chunks of
//! any size, so the daemon can feed it an index while it streams in from the
//! mirror and the CLI can read a 50 MB file with a small, fixed buffer. It
//! keeps only the handful of fields it needs from the current paragraph and
//! copies each valid path once into an arena; everything else (descriptions,
//! dependencies, ...) is skipped at the cost of one `memchr` per line.

use memchr::memchr;

/// What kind of index the input is. `Packages` lists binary packages
/// (`Filename`, `Size`, `SHA256`); `Sources` lists source packages
/// (`Directory` plus `Checksums-Sha256` lines).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IndexKind {
    /// A `Packages` index.
    Packages,
    /// A `Sources` index.
    Sources,
}

impl IndexKind {
    /// The lower-case name used on the command line and in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            IndexKind::Packages => "packages",
            IndexKind::Sources => "sources",
        }
    }
}

/// Why an entry was left out of the torrent.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum DropReason {
    /// The path is not valid UTF-8, is absolute, or has a `\`, a NUL, or an
    /// empty, `.` or `..` component.
    BadPath,
    /// The size is not decimal digits, is 0, or is 2^63 or more.
    BadSize,
    /// The hash is not exactly 64 hexadecimal digits.
    BadHash,
    /// A `Checksums-Sha256` line does not split into hash, size and name.
    BadChecksumLine,
    /// The same path appears with different sizes or hashes.
    Conflict,
}

impl DropReason {
    /// Every reason, in report order.
    pub const ALL: [DropReason; 5] = [
        DropReason::BadPath,
        DropReason::BadSize,
        DropReason::BadHash,
        DropReason::BadChecksumLine,
        DropReason::Conflict,
    ];

    /// A short phrase for reports.
    pub fn describe(self) -> &'static str {
        match self {
            DropReason::BadPath => "unsafe or invalid path",
            DropReason::BadSize => "size not a positive decimal below 2^63",
            DropReason::BadHash => "SHA256 not 64 hex digits",
            DropReason::BadChecksumLine => "Checksums-Sha256 line not `hash size name`",
            DropReason::Conflict => "same path listed with different size or hash",
        }
    }

    /// A stable identifier for JSON output.
    pub fn key(self) -> &'static str {
        match self {
            DropReason::BadPath => "bad_path",
            DropReason::BadSize => "bad_size",
            DropReason::BadHash => "bad_hash",
            DropReason::BadChecksumLine => "bad_checksum_line",
            DropReason::Conflict => "conflict",
        }
    }
}

/// Counts of what the parser saw; the CLI prints it and `--strict` checks it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Report {
    /// The kind the index was read as (`None` if no paragraph told).
    pub kind: Option<IndexKind>,
    /// Paragraphs read.
    pub paragraphs: u64,
    /// Entries that passed validation, before duplicates were merged.
    pub valid_entries: u64,
    /// Identical repeated entries merged into one.
    pub duplicates_merged: u64,
    dropped: [u64; 5],
}

impl Report {
    /// How many entries were dropped for `reason`.
    pub fn dropped(&self, reason: DropReason) -> u64 {
        self.dropped[reason as usize]
    }

    /// How many entries were dropped for any reason.
    pub fn dropped_total(&self) -> u64 {
        self.dropped.iter().sum()
    }

    pub(crate) fn add_dropped(&mut self, reason: DropReason, n: u64) {
        self.dropped[reason as usize] += n;
    }
}

/// One valid entry, as stored in [`Entries`]: the path lives in the arena.
#[derive(Clone, Copy, Debug)]
pub(crate) struct RawEntry {
    pub(crate) path_start: u32,
    pub(crate) path_len: u32,
    pub(crate) size: u64,
    pub(crate) sha256: [u8; 32],
}

/// The valid entries of an index, unsorted and not yet de-duplicated.
#[derive(Debug, Default)]
pub(crate) struct Entries {
    pub(crate) arena: String,
    pub(crate) list: Vec<RawEntry>,
}

impl Entries {
    pub(crate) fn path(&self, e: &RawEntry) -> &str {
        let start = e.path_start as usize;
        self.arena
            .get(start..start + e.path_len as usize)
            .unwrap_or_default()
    }
}

/// The paragraph fields the parser keeps; every other field is skipped.
#[derive(Clone, Copy)]
enum Field {
    Filename = 0,
    Size = 1,
    Sha256 = 2,
    Directory = 3,
    ChecksumsSha256 = 4,
}

const FIELD_COUNT: usize = 5;

fn field_of(name: &[u8]) -> Option<Field> {
    // Dispatch on length first: almost every line of a real index names a
    // field we skip, and this rejects them without a string compare.
    let (field, want): (Field, &[u8]) = match name.len() {
        8 => (Field::Filename, b"filename"),
        4 => (Field::Size, b"size"),
        6 => (Field::Sha256, b"sha256"),
        9 => (Field::Directory, b"directory"),
        16 => (Field::ChecksumsSha256, b"checksums-sha256"),
        _ => return None,
    };
    name.eq_ignore_ascii_case(want).then_some(field)
}

/// Above this, one paragraph's kept fields are an error rather than memory:
/// a real `Checksums-Sha256` field is a few hundred bytes.
pub(crate) const MAX_FIELD_BYTES: usize = 1 << 20;

/// Errors the parser itself can raise (everything else is a dropped entry).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseLimit {
    /// A kept field grew beyond [`MAX_FIELD_BYTES`].
    FieldTooLong,
    /// The paths of all entries do not fit in 4 GiB.
    TooManyPaths,
}

/// Incremental index parser. Feed it chunks, then call [`IndexParser::finish`].
pub(crate) struct IndexParser {
    kind: Option<IndexKind>,
    carry: Vec<u8>,
    vals: [Vec<u8>; FIELD_COUNT],
    present: u8,
    /// The kept field that continuation lines extend, if any.
    cont: Option<usize>,
    in_paragraph: bool,
    saw_index_field: bool,
    entries: Entries,
    report: Report,
    limit: Option<ParseLimit>,
    /// Reused buffer for `Directory/name` joins.
    scratch: Vec<u8>,
}

impl IndexParser {
    /// A parser for `kind`, or one that decides from the fields when `None`.
    pub(crate) fn new(kind: Option<IndexKind>) -> Self {
        IndexParser {
            kind,
            carry: Vec::new(),
            vals: Default::default(),
            present: 0,
            cont: None,
            in_paragraph: false,
            saw_index_field: false,
            entries: Entries::default(),
            report: Report {
                kind,
                ..Report::default()
            },
            limit: None,
            scratch: Vec::new(),
        }
    }

    /// Feeds the next chunk of uncompressed index bytes.
    pub(crate) fn feed(&mut self, mut data: &[u8]) -> Result<(), ParseLimit> {
        if !self.carry.is_empty() {
            match memchr(b'\n', data) {
                Some(i) => {
                    let mut carry = std::mem::take(&mut self.carry);
                    carry.extend_from_slice(&data[..i]);
                    self.line(&carry);
                    carry.clear();
                    self.carry = carry;
                    data = &data[i + 1..];
                }
                None => {
                    self.carry.extend_from_slice(data);
                    return self.check();
                }
            }
        }
        let mut start = 0;
        for nl in memchr::memchr_iter(b'\n', data) {
            self.line(&data[start..nl]);
            start = nl + 1;
        }
        self.carry.extend_from_slice(&data[start..]);
        self.check()
    }

    fn check(&mut self) -> Result<(), ParseLimit> {
        if self.carry.len() > MAX_FIELD_BYTES * 64 && self.limit.is_none() {
            // One line of 64 MiB is no index; the caller's size cap would
            // catch it too, but this keeps memory bounded per line.
            self.limit = Some(ParseLimit::FieldTooLong);
        }
        match &self.limit {
            Some(l) => Err(l.clone()),
            None => Ok(()),
        }
    }

    /// Ends the input: the last line need not end in `\n`.
    pub(crate) fn finish(mut self) -> Result<(Entries, Report, bool), ParseLimit> {
        if !self.carry.is_empty() {
            let carry = std::mem::take(&mut self.carry);
            self.line(&carry);
        }
        self.end_paragraph();
        if let Some(l) = self.limit {
            return Err(l);
        }
        Ok((self.entries, self.report, self.saw_index_field))
    }

    fn line(&mut self, mut l: &[u8]) {
        if let [rest @ .., b'\r'] = l {
            l = rest;
        }
        let Some(&first) = l.first() else {
            self.end_paragraph();
            return;
        };
        if first == b' ' || first == b'\t' {
            let text = trim(l);
            if text.is_empty() {
                self.end_paragraph();
            } else if let Some(f) = self.cont {
                let v = &mut self.vals[f];
                if v.len() + text.len() < MAX_FIELD_BYTES {
                    v.push(b'\n');
                    v.extend_from_slice(text);
                } else {
                    self.limit = Some(ParseLimit::FieldTooLong);
                }
            }
            return;
        }
        self.in_paragraph = true;
        self.cont = None;
        let Some(colon) = memchr(b':', l) else {
            return;
        };
        let Some(field) = field_of(trim(&l[..colon])) else {
            return;
        };
        let bit = 1u8 << field as u8;
        if self.present & bit != 0 {
            return; // the first occurrence wins
        }
        self.present |= bit;
        let v = &mut self.vals[field as usize];
        v.clear();
        v.extend_from_slice(trim(&l[colon + 1..]));
        self.cont = Some(field as usize);
    }

    fn has(&self, f: Field) -> bool {
        self.present & (1 << f as u8) != 0
    }

    fn end_paragraph(&mut self) {
        if !self.in_paragraph && self.present == 0 {
            return;
        }
        self.report.paragraphs += 1;
        let packages = self.has(Field::Filename);
        let sources = self.has(Field::Directory) || self.has(Field::ChecksumsSha256);
        if packages || sources {
            self.saw_index_field = true;
        }
        if self.kind.is_none() {
            self.kind = if packages {
                Some(IndexKind::Packages)
            } else if sources {
                Some(IndexKind::Sources)
            } else {
                None
            };
            self.report.kind = self.kind;
        }
        match self.kind {
            Some(IndexKind::Packages) => self.emit_package(),
            Some(IndexKind::Sources) => self.emit_sources(),
            None => {}
        }
        self.present = 0;
        self.cont = None;
        self.in_paragraph = false;
    }

    fn emit_package(&mut self) {
        if !(self.has(Field::Filename) && self.has(Field::Size) && self.has(Field::Sha256)) {
            return;
        }
        let [filename, size, sha, ..] = &self.vals;
        let checked = check_size(size)
            .and_then(|size| Ok((size, check_hash(sha)?)))
            .and_then(|(size, hash)| Ok((check_path(filename)?, size, hash)));
        match checked {
            Ok((path, size, hash)) => push_entry(
                &mut self.entries,
                &mut self.report,
                &mut self.limit,
                path,
                size,
                hash,
            ),
            Err(reason) => self.report.add_dropped(reason, 1),
        }
    }

    fn emit_sources(&mut self) {
        if !(self.has(Field::Directory) && self.has(Field::ChecksumsSha256)) {
            return;
        }
        let dir = &self.vals[Field::Directory as usize];
        for line in self.vals[Field::ChecksumsSha256 as usize].split(|&b| b == b'\n') {
            let mut fields = line
                .split(|&b| b == b' ' || b == b'\t')
                .filter(|f| !f.is_empty());
            let (Some(hash), Some(size), Some(name), None) =
                (fields.next(), fields.next(), fields.next(), fields.next())
            else {
                if !trim(line).is_empty() {
                    self.report.add_dropped(DropReason::BadChecksumLine, 1);
                }
                continue;
            };
            let checked = check_hash(hash).and_then(|h| Ok((h, check_size(size)?)));
            let (hash, size) = match checked {
                Ok(v) => v,
                Err(reason) => {
                    self.report.add_dropped(reason, 1);
                    continue;
                }
            };
            let joined = &mut self.scratch;
            joined.clear();
            joined.extend_from_slice(dir);
            joined.push(b'/');
            joined.extend_from_slice(name);
            match check_path(joined) {
                Ok(path) => push_entry(
                    &mut self.entries,
                    &mut self.report,
                    &mut self.limit,
                    path,
                    size,
                    hash,
                ),
                Err(reason) => self.report.add_dropped(reason, 1),
            }
        }
    }
}

fn push_entry(
    entries: &mut Entries,
    report: &mut Report,
    limit: &mut Option<ParseLimit>,
    path: &str,
    size: u64,
    sha256: [u8; 32],
) {
    let (Ok(path_start), Ok(path_len)) = (
        u32::try_from(entries.arena.len()),
        u32::try_from(path.len()),
    ) else {
        *limit = Some(ParseLimit::TooManyPaths);
        return;
    };
    if path_start.checked_add(path_len).is_none() {
        *limit = Some(ParseLimit::TooManyPaths);
        return;
    }
    entries.arena.push_str(path);
    entries.list.push(RawEntry {
        path_start,
        path_len,
        size,
        sha256,
    });
    report.valid_entries += 1;
}

/// Removes leading and trailing spaces and tabs (and nothing else).
pub(crate) fn trim(mut s: &[u8]) -> &[u8] {
    while let [b' ' | b'\t', rest @ ..] = s {
        s = rest;
    }
    while let [rest @ .., b' ' | b'\t'] = s {
        s = rest;
    }
    s
}

/// Section 2: valid UTF-8, relative, no `\` or NUL, no empty, `.` or `..`
/// component. This is what keeps an index from naming a file outside the
/// archive root, on disk or in a URL.
pub fn check_path(p: &[u8]) -> Result<&str, DropReason> {
    let s = std::str::from_utf8(p).map_err(|_| DropReason::BadPath)?;
    // One pass over the bytes (every index entry's path goes through here):
    // each component, up to a `/` or the end, must be non-empty and not
    // `.` or `..`; no byte may be `\\` or NUL. An empty path is one empty
    // component, and a leading `/` makes the first component empty.
    let mut start = 0;
    for (i, &b) in p
        .iter()
        .enumerate()
        .chain(std::iter::once((p.len(), &b'/')))
    {
        match b {
            b'\\' | 0 => return Err(DropReason::BadPath),
            b'/' => {
                if matches!(&p[start..i], b"" | b"." | b"..") {
                    return Err(DropReason::BadPath);
                }
                start = i + 1;
            }
            _ => {}
        }
    }
    Ok(s)
}

/// Section 2: ASCII digits only, greater than 0, below 2^63.
pub fn check_size(s: &[u8]) -> Result<u64, DropReason> {
    if s.is_empty() {
        return Err(DropReason::BadSize);
    }
    let mut v: u64 = 0;
    for &b in s {
        if !b.is_ascii_digit() {
            return Err(DropReason::BadSize);
        }
        v = v
            .checked_mul(10)
            .and_then(|v| v.checked_add(u64::from(b - b'0')))
            .filter(|&v| v < 1 << 63)
            .ok_or(DropReason::BadSize)?;
    }
    if v == 0 {
        return Err(DropReason::BadSize);
    }
    Ok(v)
}

/// Section 2: exactly 64 hex digits, either case, decoded to 32 bytes.
pub fn check_hash(s: &[u8]) -> Result<[u8; 32], DropReason> {
    crate::hex::decode_hex(s).ok_or(DropReason::BadHash)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn path_rules() {
        let cases: &[(&[u8], bool)] = &[
            (b"pool/main/h/hello/hello_1_all.deb", true),
            (b"pool/main/h/hello/a b\nc.deb", true),
            (b"/etc/passwd", false),
            (b"pool/../etc/passwd", false),
            (b"pool/./x", false),
            (b"pool//x", false),
            (b"pool/x/", false),
            (b"..", false),
            (b"pool\\x", false),
            (b"pool/x\0y", false),
            (b"pool/\xff.deb", false),
            (b"", false),
            (b"pool/...", true),
            (b".", false),
            (b"./pool", false),
            (b"pool/.", false),
            (b"pool/..", false),
            (b"a", true),
            (b".a/b..", true),
        ];
        for (input, ok) in cases {
            assert_eq!(
                check_path(input).is_ok(),
                *ok,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn size_rules() {
        let cases: &[(&[u8], Option<u64>)] = &[
            (b"1", Some(1)),
            (b"007", Some(7)),
            (b"9223372036854775807", Some((1 << 63) - 1)),
            (b"9223372036854775808", None),
            (b"99999999999999999999999", None),
            (b"0", None),
            (b"000", None),
            (b"", None),
            (b"+5", None),
            (b"-5", None),
            (b"12kB", None),
            (b"1 2", None),
        ];
        for (input, want) in cases {
            assert_eq!(
                check_size(input).ok(),
                *want,
                "{:?}",
                String::from_utf8_lossy(input)
            );
        }
    }

    #[test]
    fn hash_rules() {
        let lower = [b'a'; 64];
        let upper = [b'A'; 64];
        assert_eq!(check_hash(&lower), Ok([0xaa; 32]));
        assert_eq!(check_hash(&upper), Ok([0xaa; 32]));
        assert!(check_hash(&lower[..63]).is_err());
        assert!(check_hash(&[b'g'; 64]).is_err());
        assert!(check_hash(&[b'a'; 66]).is_err());
    }

    #[test]
    fn trim_only_spaces_and_tabs() {
        assert_eq!(trim(b" \t x \t"), b"x");
        assert_eq!(trim(b"\x0bx\x0b"), b"\x0bx\x0b");
        assert_eq!(trim(b"   "), b"");
    }

    fn parse(input: &[u8], kind: Option<IndexKind>) -> (Vec<(String, u64)>, Report) {
        let mut p = IndexParser::new(kind);
        p.feed(input).unwrap();
        let (e, r, _) = p.finish().unwrap();
        let v = e
            .list
            .iter()
            .map(|x| (e.path(x).to_string(), x.size))
            .collect();
        (v, r)
    }

    #[test]
    fn paragraph_rules() {
        let h = "a".repeat(64);
        // (name, input, expected entries)
        type Case = (&'static str, String, Vec<(&'static str, u64)>);
        let cases: Vec<Case> = vec![
            (
                "basic",
                format!("Filename: p/a\nSize: 1\nSHA256: {h}\n"),
                vec![("p/a", 1)],
            ),
            (
                "no trailing newline",
                format!("Filename: p/a\nSize: 1\nSHA256: {h}"),
                vec![("p/a", 1)],
            ),
            (
                "first occurrence wins",
                format!("Filename: p/a\nFilename: p/b\nSize: 1\nSize: 2\nSHA256: {h}\n"),
                vec![("p/a", 1)],
            ),
            (
                "whitespace-only line ends a paragraph",
                format!("Filename: p/a\n \t\nSize: 1\nSHA256: {h}\n"),
                vec![],
            ),
            (
                "continuation of a kept field joins with newline",
                format!("Filename: p/a\n b\nSize: 1\nSHA256: {h}\n"),
                vec![("p/a\nb", 1)],
            ),
            (
                "continuation of a skipped field is ignored",
                format!("Description: x\n Filename: p/z\nFilename: p/a\nSize: 1\nSHA256: {h}\n"),
                vec![("p/a", 1)],
            ),
            (
                "a line without colon ends continuation",
                format!("Filename: p/a\nnocolon\n b\nSize: 1\nSHA256: {h}\n"),
                vec![("p/a", 1)],
            ),
            (
                "repeated field's continuation is ignored",
                format!("Size: 1\nSize: 2\n 3\nFilename: p/a\nSHA256: {h}\n"),
                vec![("p/a", 1)],
            ),
            (
                "field name trimmed and case-insensitive",
                format!("filename : p/a\nSIZE:1\nsha256\t:\t{h}\t\n"),
                vec![("p/a", 1)],
            ),
            (
                "crlf",
                format!("Filename: p/a\r\nSize: 1\r\nSHA256: {h}\r\n\r\n"),
                vec![("p/a", 1)],
            ),
            (
                "only one trailing CR is removed",
                format!("Filename: p/a\r\r\nSize: 1\nSHA256: {h}\n"),
                vec![("p/a\r", 1)],
            ),
        ];
        for (name, input, want) in cases {
            let (got, _) = parse(input.as_bytes(), Some(IndexKind::Packages));
            let want: Vec<(String, u64)> = want.into_iter().map(|(p, s)| (p.into(), s)).collect();
            assert_eq!(got, want, "{name}");
        }
    }

    #[test]
    fn kind_detection() {
        let h = "b".repeat(64);
        let pk = format!("Package: x\n\nFilename: p/a\nSize: 1\nSHA256: {h}\n");
        let (_, r) = parse(pk.as_bytes(), None);
        assert_eq!(r.kind, Some(IndexKind::Packages));
        let src = format!("Directory: d\nChecksums-Sha256:\n {h} 5 f.dsc\n");
        let (e, r) = parse(src.as_bytes(), None);
        assert_eq!(r.kind, Some(IndexKind::Sources));
        assert_eq!(e, vec![("d/f.dsc".to_string(), 5)]);
        // Forcing the other kind finds nothing.
        let (e, _) = parse(src.as_bytes(), Some(IndexKind::Packages));
        assert!(e.is_empty());
    }

    #[test]
    fn sources_lines() {
        let h = "c".repeat(64);
        let src = format!(
            "Directory: d\nChecksums-Sha256: {h} 1 first\n {h}\t 2 \t second\n {h} 3\n {h} 4 a b\n xyz 5 c\n"
        );
        let (e, r) = parse(src.as_bytes(), Some(IndexKind::Sources));
        assert_eq!(
            e,
            vec![("d/first".to_string(), 1), ("d/second".to_string(), 2)]
        );
        assert_eq!(r.dropped(DropReason::BadChecksumLine), 2);
        assert_eq!(r.dropped(DropReason::BadHash), 1);
    }

    #[test]
    fn chunking_does_not_matter() {
        let h = "d".repeat(64);
        let input = format!(
            "Filename: p/a\r\nSize: 10\r\nSHA256: {h}\r\n\r\nFilename: p/b\n x\nSize: 2\nSHA256: {h}\n"
        );
        let whole = parse(input.as_bytes(), None);
        for chunk in 1..input.len() {
            let mut p = IndexParser::new(None);
            for c in input.as_bytes().chunks(chunk) {
                p.feed(c).unwrap();
            }
            let (e, r, _) = p.finish().unwrap();
            let got: Vec<(String, u64)> = e
                .list
                .iter()
                .map(|x| (e.path(x).to_string(), x.size))
                .collect();
            assert_eq!((got, r), whole, "chunk size {chunk}");
        }
    }
}
