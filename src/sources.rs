//! Rewrites apt's sources so apt fetches through the daemon, and back (pure:
//! text in, text out; the caller reads and writes the files).
//!
//! The daemon's URL-prefix mode names the mirror in the path:
//!
//! | mirror URI                   | through the daemon                      |
//! |------------------------------|-----------------------------------------|
//! | `http://HOST[:PORT]/PATH`    | `{daemon}/HOST[:PORT]/PATH`             |
//! | `https://HOST[:PORT]/PATH`   | `{daemon}/https/HOST[:PORT]/PATH`       |
//!
//! Only the URI tokens change. Everything else (comments, blank lines,
//! `[signed-by=... arch=...]` options, suites, components, whitespace, line
//! endings, a missing final newline) is copied byte for byte, because these
//! files belong to the admin and `--revert` must give back exactly what was
//! there: for any text without daemon URLs, `revert(rewrite(text)) == text`
//! (pinned by a table test and a property test below). The mapping is a
//! plain prefix swap, so a trailing slash (or its absence) survives as is.
//! Commented-out entries (`#deb ...`) stay as they are, being comments;
//! deb822 stanzas with `Enabled: no` are rewritten like any other, so they
//! go through the daemon if the admin turns them on later.
//!
//! URIs that cannot take the round trip or that the daemon would refuse are
//! left alone with a warning, so apt keeps fetching them directly instead of
//! failing: credentials in the URI (`user:pass@`), a missing host, and an
//! `http` mirror whose host is literally `https` (it would read back as the
//! daemon's `https/` marker).

use std::path::Path;

/// How to reach the daemon, e.g. "http://localhost:9988".
pub struct Rewriter {
    /// Base URL of the daemon; a trailing `/` is ignored. If its host is a
    /// loopback name (`localhost`, `127.0.0.1`, `[::1]`), URLs using another
    /// of those names with the same port also count as "the daemon", so a
    /// hand-written `http://127.0.0.1:9988/...` line is never wrapped twice.
    pub daemon: String,
}

/// The two syntaxes of sources.list(5).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Format {
    /// `deb [opts] URI suite [components]`, one entry a line (`*.list`).
    OneLine,
    /// RFC 822 style stanzas with a `URIs:` field (`*.sources`).
    Deb822,
}

/// The result of [`Rewriter::rewrite`] or [`Rewriter::revert`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The new file content.
    pub text: String,
    /// How many URIs were changed (not lines: a deb822 `URIs:` field may
    /// hold several). Zero means `text` equals the input.
    pub changed: usize,
    /// One human-readable line per URI that was left alone for a reason the
    /// admin should know about (or that changed but needs daemon config).
    /// Credentials are never repeated in a warning.
    pub warnings: Vec<String>,
}

impl Rewriter {
    /// Rewrites one file's text; lines/stanzas that already point at the daemon, or are not
    /// http/https URIs (file:, cdrom:, tor+http:, mirror+file:), are left byte-for-byte unchanged.
    /// Comments, blank lines, options ([signed-by=... arch=...]) and the rest of each line are kept exactly.
    #[must_use]
    pub fn rewrite(&self, text: &str, format: Format) -> Rewritten {
        self.run(text, &format, Direction::ToDaemon)
    }

    /// The reverse: turns daemon URLs back into direct mirror URLs (for `--revert` and package removal).
    #[must_use]
    pub fn revert(&self, text: &str, format: Format) -> Rewritten {
        self.run(text, &format, Direction::FromDaemon)
    }

    fn run(&self, text: &str, format: &Format, dir: Direction) -> Rewritten {
        let Some(daemon) = Daemon::parse(&self.daemon) else {
            // Rewriting against a malformed base would write URLs apt cannot
            // use; better to change nothing and say why.
            return Rewritten {
                text: text.to_owned(),
                changed: 0,
                warnings: vec![format!(
                    "daemon address {:?} is not of the form http://HOST:PORT; nothing changed",
                    self.daemon
                )],
            };
        };
        let mut pass = Pass {
            daemon: &daemon,
            dir,
            out: String::with_capacity(text.len() + text.len() / 4),
            changed: 0,
            warnings: Vec::new(),
            line_no: 0,
        };
        // Deb822 state: are we inside a `URIs:` field (its first line or a
        // continuation line)?
        let mut in_uris = false;
        for (i, raw) in text.split_inclusive('\n').enumerate() {
            pass.line_no = i + 1;
            let (body, ending) = split_line_ending(raw);
            match format {
                Format::OneLine => pass.one_line(body),
                Format::Deb822 => in_uris = pass.deb822_line(body, in_uris),
            }
            pass.out.push_str(ending);
        }
        Rewritten {
            text: pass.out,
            changed: pass.changed,
            warnings: pass.warnings,
        }
    }
}

/// Format::Deb822 for names ending in ".sources", else OneLine.
///
/// This is the rule apt itself applies to `sources.list.d/` (case-sensitive).
#[must_use]
pub fn format_for_path(path: &Path) -> Format {
    match path.file_name() {
        Some(name) if name.to_string_lossy().ends_with(".sources") => Format::Deb822,
        _ => Format::OneLine,
    }
}

#[derive(Clone, Copy)]
enum Direction {
    ToDaemon,
    FromDaemon,
}

/// Host names that all reach the daemon when it listens on loopback.
const LOOPBACK: [&str; 3] = ["localhost", "127.0.0.1", "[::1]"];

/// The daemon's base URL and the equivalent spellings of it.
struct Daemon {
    /// `http://HOST:PORT[/PATH]` without a trailing slash; used for output.
    base: String,
    /// `base` first, then loopback aliases; matched case-insensitively.
    prefixes: Vec<String>,
}

impl Daemon {
    fn parse(daemon: &str) -> Option<Daemon> {
        let base = daemon.trim().trim_end_matches('/');
        let rest = base.strip_prefix("http://")?;
        let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
        if authority.is_empty() || authority.contains(|c: char| c.is_ascii_whitespace()) {
            return None;
        }
        let (host, port) = split_host_port(authority);
        let mut prefixes = vec![base.to_owned()];
        if LOOPBACK.iter().any(|l| l.eq_ignore_ascii_case(host)) {
            for alias in LOOPBACK.iter().filter(|l| !l.eq_ignore_ascii_case(host)) {
                prefixes.push(format!("http://{alias}{port}{path}"));
            }
        }
        Some(Daemon {
            base: base.to_owned(),
            prefixes,
        })
    }

    /// If `uri` points at the daemon, the part after `{daemon}/` (empty for
    /// the bare base URL).
    fn strip<'u>(&self, uri: &'u str) -> Option<&'u str> {
        self.prefixes.iter().find_map(|p| {
            let head = uri.as_bytes().get(..p.len())?;
            if !head.eq_ignore_ascii_case(p.as_bytes()) {
                return None;
            }
            // A prefix of the host or port is not a match:
            // `http://localhost:99880/` is not `http://localhost:9988`.
            let rest = uri.get(p.len()..)?;
            match rest.strip_prefix('/') {
                Some(after) => Some(after),
                None if rest.is_empty() => Some(rest),
                None => None,
            }
        })
    }
}

/// What happens to one URI token.
struct Mapped {
    /// The new token, or `None` to keep the old one.
    replacement: Option<String>,
    warning: Option<String>,
}

impl Mapped {
    const KEEP: Mapped = Mapped {
        replacement: None,
        warning: None,
    };

    fn refuse(warning: String) -> Mapped {
        Mapped {
            replacement: None,
            warning: Some(warning),
        }
    }
}

/// Mirror URI -> daemon URL.
fn to_daemon(daemon: &Daemon, uri: &str) -> Mapped {
    if daemon.strip(uri).is_some() {
        return Mapped::KEEP;
    }
    // Exact, lowercase schemes only: apt looks methods up by the literal
    // scheme, so `HTTP://` or `tor+http://` is not plain HTTP to apt either.
    let (https, rest) = if let Some(rest) = uri.strip_prefix("http://") {
        (false, rest)
    } else if let Some(rest) = uri.strip_prefix("https://") {
        (true, rest)
    } else {
        return Mapped::KEEP;
    };
    let authority = &rest[..rest.find(['/', '?', '#']).unwrap_or(rest.len())];
    if authority.contains('@') {
        return Mapped::refuse(format!(
            "{} carries credentials (user:pass@), which the daemon refuses; left unchanged, \
             so apt fetches it directly",
            redact(uri)
        ));
    }
    if authority.is_empty() {
        return Mapped::refuse(format!("{uri} has no host; left unchanged"));
    }
    if !https && authority.eq_ignore_ascii_case("https") {
        return Mapped::refuse(format!(
            "{uri}: a host named \"https\" cannot be told apart from the daemon's https/ \
             prefix; left unchanged"
        ));
    }
    let replacement = if https {
        format!("{}/https/{rest}", daemon.base)
    } else {
        format!("{}/{rest}", daemon.base)
    };
    let (_, port) = split_host_port(authority);
    let warning = match port.strip_prefix(':') {
        Some(p) if p != "80" && p != "443" => Some(format!(
            "{uri} uses port {p}: the daemon only fetches from ports 80 and 443 unless \
             started with --allow-port {p}"
        )),
        _ => None,
    };
    Mapped {
        replacement: Some(replacement),
        warning,
    }
}

/// Daemon URL -> mirror URI: the exact inverse of [`to_daemon`].
fn from_daemon(daemon: &Daemon, uri: &str) -> Mapped {
    let Some(rest) = daemon.strip(uri) else {
        return Mapped::KEEP;
    };
    let (https, tail) = match rest.strip_prefix("https/") {
        Some(tail) => (true, tail),
        None => (false, rest),
    };
    let authority = &tail[..tail.find(['/', '?', '#']).unwrap_or(tail.len())];
    if authority.is_empty() || (!https && authority == "https") {
        return Mapped::refuse(format!(
            "{uri} is the daemon itself, not a mirror behind it; left unchanged"
        ));
    }
    let scheme = if https { "https" } else { "http" };
    Mapped {
        replacement: Some(format!("{scheme}://{tail}")),
        warning: None,
    }
}

/// One rewrite or revert over one file.
struct Pass<'d> {
    daemon: &'d Daemon,
    dir: Direction,
    out: String,
    changed: usize,
    warnings: Vec<String>,
    /// 1-based, for warnings.
    line_no: usize,
}

impl Pass<'_> {
    /// Copies one URI token to the output, mapped if it should be.
    fn token(&mut self, uri: &str) {
        let mapped = match self.dir {
            Direction::ToDaemon => to_daemon(self.daemon, uri),
            Direction::FromDaemon => from_daemon(self.daemon, uri),
        };
        if let Some(w) = mapped.warning {
            self.warnings.push(format!("line {}: {w}", self.line_no));
        }
        match mapped.replacement {
            Some(new) => {
                self.out.push_str(&new);
                self.changed += 1;
            }
            None => self.out.push_str(uri),
        }
    }

    /// Copies `seg`, mapping each whitespace-separated token and keeping the
    /// whitespace between them exactly.
    fn tokens(&mut self, seg: &str) {
        let b = seg.as_bytes();
        let mut i = 0;
        while i < b.len() {
            let start = skip_ws(b, i);
            self.out.push_str(&seg[i..start]);
            let end = skip_token(b, start);
            if end > start {
                self.token(&seg[start..end]);
            }
            i = end;
        }
    }

    /// One line of the one-line format, without its line ending.
    fn one_line(&mut self, body: &str) {
        match one_line_uri(body) {
            Ok(Some((start, end))) => {
                self.out.push_str(&body[..start]);
                self.token(&body[start..end]);
                self.out.push_str(&body[end..]);
            }
            Ok(None) => self.out.push_str(body),
            Err(why) => {
                self.warnings.push(format!("line {}: {why}", self.line_no));
                self.out.push_str(body);
            }
        }
    }

    /// One line of a deb822 file, without its line ending. Takes and returns
    /// whether we are inside a `URIs:` field.
    fn deb822_line(&mut self, body: &str, in_uris: bool) -> bool {
        if body.trim_ascii().is_empty() {
            // A blank line ends the stanza.
            self.out.push_str(body);
            return false;
        }
        if body.starts_with('#') {
            // apt drops comment lines before parsing, so a field may go on
            // after one.
            self.out.push_str(body);
            return in_uris;
        }
        if body.starts_with([' ', '\t']) {
            if in_uris {
                self.tokens(body);
            } else {
                self.out.push_str(body);
            }
            return in_uris;
        }
        match body.split_once(':') {
            Some((name, value)) if name.trim_end().eq_ignore_ascii_case("URIs") => {
                self.out.push_str(&body[..=name.len()]);
                self.tokens(value);
                true
            }
            _ => {
                self.out.push_str(body);
                false
            }
        }
    }
}

/// Byte range of the URI in a one-line entry (`deb [opts] URI suite ...`),
/// `Ok(None)` for lines that are not `deb`/`deb-src` entries (comments,
/// blank lines, anything else), `Err` for an entry we cannot read.
fn one_line_uri(body: &str) -> Result<Option<(usize, usize)>, String> {
    let b = body.as_bytes();
    let kind_start = skip_ws(b, 0);
    let kind_end = skip_token(b, kind_start);
    if !matches!(&body[kind_start..kind_end], "deb" | "deb-src") {
        return Ok(None);
    }
    let mut i = skip_ws(b, kind_end);
    if b.get(i) == Some(&b'[') {
        // Options never contain `]`; apt reads up to the first one, and the
        // URI may follow it without a space.
        match b[i..].iter().position(|&c| c == b']') {
            Some(close) => i = skip_ws(b, i + close + 1),
            None => return Err("unclosed [ options; left unchanged".to_owned()),
        }
    }
    let end = skip_token(b, i);
    Ok((end > i).then_some((i, end)))
}

fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

fn skip_token(b: &[u8], mut i: usize) -> usize {
    while i < b.len() && !b[i].is_ascii_whitespace() {
        i += 1;
    }
    i
}

/// Splits `"text\r\n"` into `("text", "\r\n")`; also `\n` and none.
fn split_line_ending(raw: &str) -> (&str, &str) {
    if let Some(body) = raw.strip_suffix("\r\n") {
        (body, "\r\n")
    } else if let Some(body) = raw.strip_suffix('\n') {
        (body, "\n")
    } else {
        (raw, "")
    }
}

/// `host:port` -> (`host`, `:port`); keeps IPv6 brackets with the host.
fn split_host_port(authority: &str) -> (&str, &str) {
    let host_end = if authority.starts_with('[') {
        authority.find(']').map_or(authority.len(), |i| i + 1)
    } else {
        authority.find(':').unwrap_or(authority.len())
    };
    authority.split_at(host_end)
}

/// The URI with its userinfo replaced by `***`, so warnings (which end up in
/// terminals and logs) never repeat a password.
fn redact(uri: &str) -> String {
    let Some((scheme, rest)) = uri.split_once("://") else {
        return uri.to_owned();
    };
    let auth_end = rest.find(['/', '?', '#']).unwrap_or(rest.len());
    match rest[..auth_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => uri.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "http://localhost:9988";

    fn rw() -> Rewriter {
        Rewriter { daemon: D.into() }
    }

    /// (mirror form, daemon form, format): rewrite maps the first to the
    /// second and revert maps it back, byte for byte.
    const PAIRS: &[(&str, &str, Format)] = &[
        (
            "deb http://deb.debian.org/debian bookworm main\n",
            "deb http://localhost:9988/deb.debian.org/debian bookworm main\n",
            Format::OneLine,
        ),
        (
            "deb http://deb.debian.org/debian/ bookworm main\n",
            "deb http://localhost:9988/deb.debian.org/debian/ bookworm main\n",
            Format::OneLine,
        ),
        (
            "deb http://deb.debian.org bookworm main",
            "deb http://localhost:9988/deb.debian.org bookworm main",
            Format::OneLine,
        ),
        (
            "deb-src https://security.debian.org/debian-security bookworm-security main\n",
            "deb-src http://localhost:9988/https/security.debian.org/debian-security bookworm-security main\n",
            Format::OneLine,
        ),
        (
            "  \tdeb  [arch=amd64 signed-by=/usr/share/keyrings/x.gpg]   http://m.example:80/d/  ./\r\n",
            "  \tdeb  [arch=amd64 signed-by=/usr/share/keyrings/x.gpg]   http://localhost:9988/m.example:80/d/  ./\r\n",
            Format::OneLine,
        ),
        (
            "deb [ arch=amd64 ] https://[2001:db8::1]:443/debian sid main # note http://x/\n",
            "deb [ arch=amd64 ] http://localhost:9988/https/[2001:db8::1]:443/debian sid main # note http://x/\n",
            Format::OneLine,
        ),
        (
            "deb [trusted=yes]http://m.example/d sid main\n",
            "deb [trusted=yes]http://localhost:9988/m.example/d sid main\n",
            Format::OneLine,
        ),
        (
            // `https:443` is a host `https` with a port: unambiguous.
            "deb http://https:443/d sid main\n",
            "deb http://localhost:9988/https:443/d sid main\n",
            Format::OneLine,
        ),
        (
            "# Debian\ndeb http://a.example/debian sid main\n\n#deb http://b.example/ sid main\ndeb file:/srv/repo ./\n",
            "# Debian\ndeb http://localhost:9988/a.example/debian sid main\n\n#deb http://b.example/ sid main\ndeb file:/srv/repo ./\n",
            Format::OneLine,
        ),
        (
            "Types: deb deb-src\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            "Types: deb deb-src\nURIs: http://localhost:9988/deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\nSigned-By: /usr/share/keyrings/debian-archive-keyring.gpg\n",
            Format::Deb822,
        ),
        (
            "Types: deb\nURIs: http://a.example/d/  https://b.example/d\tfile:/srv/x\n http://c.example/\n# comment http://no.example/\n\thttps://d.example:8443/x\nSuites: sid\n",
            "Types: deb\nURIs: http://localhost:9988/a.example/d/  http://localhost:9988/https/b.example/d\tfile:/srv/x\n http://localhost:9988/c.example/\n# comment http://no.example/\n\thttp://localhost:9988/https/d.example:8443/x\nSuites: sid\n",
            Format::Deb822,
        ),
        (
            "uris:http://a.example/d\r\nSuites: sid\r\n\r\nURIs:\r\n http://b.example/e\r\nEnabled: no",
            "uris:http://localhost:9988/a.example/d\r\nSuites: sid\r\n\r\nURIs:\r\n http://localhost:9988/b.example/e\r\nEnabled: no",
            Format::Deb822,
        ),
    ];

    /// Texts that neither rewrite nor revert may touch.
    const UNCHANGED: &[(&str, Format)] = &[
        ("", Format::OneLine),
        ("\n\n", Format::OneLine),
        ("# deb http://x.example/ sid main\n", Format::OneLine),
        ("deb file:/srv/repo ./\n", Format::OneLine),
        ("deb file:///srv/repo ./\n", Format::OneLine),
        (
            "deb cdrom:[Debian GNU/Linux 12.0.0 _Bookworm_ - Official amd64 DVD Binary-1]/ bookworm main\n",
            Format::OneLine,
        ),
        ("deb tor+http://x.onion/debian sid main\n", Format::OneLine),
        ("deb mirror+file:/etc/apt/mirrors.txt sid main\n", Format::OneLine),
        ("deb mirror+http://m.example/list sid main\n", Format::OneLine),
        ("deb HTTP://upper.example/ sid main\n", Format::OneLine),
        ("rpm http://x.example/ sid main\n", Format::OneLine),
        ("deb\n", Format::OneLine),
        ("deb [arch=amd64]\n", Format::OneLine),
        ("deb\u{a0}http://nbsp.example/ sid\n", Format::OneLine),
        ("deb http://localhost:9988/deb.debian.org/debian sid main\n", Format::Deb822),
        ("Types: deb\nX-Mirror: http://m.example/\nSuites: sid\n", Format::Deb822),
        ("Types: deb\n http://continuation.of.types.example/\n", Format::Deb822),
        ("Types: deb\nURIs: file:/srv/x cdrom:/media\n", Format::Deb822),
    ];

    #[test]
    fn rewrite_then_revert_round_trips() {
        for (mirror, daemon, format) in PAIRS {
            let fwd = rw().rewrite(mirror, format.clone());
            assert_eq!(fwd.text, *daemon, "rewrite of {mirror:?}");
            assert!(fwd.changed > 0, "{mirror:?}");
            let back = rw().revert(&fwd.text, format.clone());
            assert_eq!(back.text, *mirror, "revert of {daemon:?}");
            assert_eq!(back.changed, fwd.changed, "{mirror:?}");
            // Rewriting is idempotent: daemon URLs are left alone.
            let again = rw().rewrite(&fwd.text, format.clone());
            assert_eq!(again.text, fwd.text);
            assert_eq!(again.changed, 0);
            // Reverting a file that has no daemon URLs changes nothing.
            let noop = rw().revert(mirror, format.clone());
            assert_eq!((noop.text.as_str(), noop.changed), (*mirror, 0));
        }
    }

    #[test]
    fn whole_corpus_round_trips_as_one_file() {
        for format in [Format::OneLine, Format::Deb822] {
            let mut text = String::new();
            for (mirror, _, f) in PAIRS {
                if *f == format {
                    text.push_str(mirror);
                    text.push('\n');
                }
            }
            let fwd = rw().rewrite(&text, format.clone());
            assert_eq!(rw().revert(&fwd.text, format.clone()).text, text);
        }
    }

    #[test]
    fn unchanged_inputs() {
        for (text, format) in UNCHANGED {
            for out in [
                rw().rewrite(text, format.clone()),
                rw().revert(text, format.clone()),
            ] {
                assert_eq!(out.text, *text);
                assert_eq!(out.changed, 0, "{text:?}");
                assert!(out.warnings.is_empty(), "{text:?}: {:?}", out.warnings);
            }
        }
    }

    #[test]
    fn daemon_urls_are_recognised_in_every_spelling() {
        let cases: &[(&str, &str, &str)] = &[
            // (daemon, already-daemon line, what revert gives)
            (
                "http://localhost:9988",
                "deb http://127.0.0.1:9988/m.example/d sid\n",
                "deb http://m.example/d sid\n",
            ),
            (
                "http://localhost:9988/",
                "deb http://[::1]:9988/https/m.example/d sid\n",
                "deb https://m.example/d sid\n",
            ),
            (
                "http://127.0.0.1:9988",
                "deb http://LOCALHOST:9988/m.example/d sid\n",
                "deb http://m.example/d sid\n",
            ),
            (
                "http://apt-proxy.lan:9988",
                "deb http://apt-proxy.lan:9988/m.example/ sid\n",
                "deb http://m.example/ sid\n",
            ),
        ];
        for (daemon, line, reverted) in cases {
            let r = Rewriter {
                daemon: (*daemon).into(),
            };
            let fwd = r.rewrite(line, Format::OneLine);
            assert_eq!((fwd.text.as_str(), fwd.changed), (*line, 0), "{daemon}");
            assert_eq!(r.revert(line, Format::OneLine).text, *reverted, "{daemon}");
        }
        // A longer port or host is a different server.
        let other = "deb http://localhost:99880/m.example/ sid\n";
        assert_eq!(
            rw().rewrite(other, Format::OneLine).text,
            "deb http://localhost:9988/localhost:99880/m.example/ sid\n"
        );
        assert_eq!(rw().revert(other, Format::OneLine).changed, 0);
        // Loopback aliases only apply when the daemon is on loopback.
        let lan = Rewriter {
            daemon: "http://apt-proxy.lan:9988".into(),
        };
        assert_eq!(
            lan.rewrite("deb http://localhost:9988/x/ sid\n", Format::OneLine)
                .changed,
            1
        );
    }

    #[test]
    fn warnings() {
        // (input, format, output, warning must contain, warning must not contain)
        let cases: &[(&str, Format, &str, &str, &str)] = &[
            (
                "deb http://user:s3cret@m.example/d sid\n",
                Format::OneLine,
                "deb http://user:s3cret@m.example/d sid\n",
                "line 1: http://***@m.example/d carries credentials",
                "s3cret",
            ),
            (
                "Types: deb\nURIs: https://me@m.example/d\n",
                Format::Deb822,
                "Types: deb\nURIs: https://me@m.example/d\n",
                "line 2: https://***@m.example/d",
                "me@",
            ),
            (
                "deb http://https/debian sid\n",
                Format::OneLine,
                "deb http://https/debian sid\n",
                "host named \"https\"",
                "\u{0}",
            ),
            (
                "deb http:///debian sid\n",
                Format::OneLine,
                "deb http:///debian sid\n",
                "has no host",
                "\u{0}",
            ),
            (
                "\n\ndeb http://m.example:8080/d sid\n",
                Format::OneLine,
                "\n\ndeb http://localhost:9988/m.example:8080/d sid\n",
                "line 3: http://m.example:8080/d uses port 8080: the daemon only fetches from \
                 ports 80 and 443 unless started with --allow-port 8080",
                "\u{0}",
            ),
            (
                "deb [arch=amd64 http://m.example/d sid\n",
                Format::OneLine,
                "deb [arch=amd64 http://m.example/d sid\n",
                "unclosed [",
                "\u{0}",
            ),
        ];
        for (input, format, output, want, not) in cases {
            let out = rw().rewrite(input, format.clone());
            assert_eq!(out.text, *output);
            assert_eq!(out.warnings.len(), 1, "{input:?}: {:?}", out.warnings);
            assert!(out.warnings[0].contains(want), "{:?}", out.warnings);
            assert!(!out.warnings[0].contains(not), "{:?}", out.warnings);
        }
    }

    #[test]
    fn revert_leaves_the_bare_daemon_alone() {
        for uri in [
            "http://localhost:9988",
            "http://localhost:9988/",
            "http://localhost:9988/https",
            "http://localhost:9988/https/",
            "http://localhost:9988/?x",
        ] {
            let line = format!("deb {uri} sid\n");
            let out = rw().revert(&line, Format::OneLine);
            assert_eq!((out.text.as_str(), out.changed), (line.as_str(), 0));
            assert_eq!(out.warnings.len(), 1, "{uri}");
        }
    }

    #[test]
    fn malformed_daemon_changes_nothing() {
        for daemon in [
            "",
            "localhost:9988",
            "https://localhost:9988",
            "http://",
            "http:// x",
        ] {
            let r = Rewriter {
                daemon: daemon.into(),
            };
            let text = "deb http://m.example/d sid\n";
            let out = r.rewrite(text, Format::OneLine);
            assert_eq!((out.text.as_str(), out.changed), (text, 0), "{daemon:?}");
            assert_eq!(out.warnings.len(), 1);
        }
    }

    #[test]
    fn format_from_file_name() {
        let cases = [
            ("/etc/apt/sources.list", Format::OneLine),
            ("/etc/apt/sources.list.d/debian.sources", Format::Deb822),
            ("debian.sources", Format::Deb822),
            ("/etc/apt/sources.list.d/x.list", Format::OneLine),
            ("/etc/apt/sources.list.d/x.sources.bak", Format::OneLine),
            ("/etc/apt/sources.list.d/x.SOURCES", Format::OneLine),
            ("/etc/apt/sources.list.d/", Format::OneLine),
            ("", Format::OneLine),
        ];
        for (path, want) in cases {
            assert_eq!(format_for_path(Path::new(path)), want, "{path}");
        }
    }

    mod prop {
        use super::*;
        use proptest::prelude::*;

        fn uri() -> impl Strategy<Value = String> {
            let scheme = prop_oneof![
                Just("http://"),
                Just("https://"),
                Just("file:"),
                Just("tor+http://"),
                Just("mirror+file:"),
                Just("cdrom:"),
            ];
            let host = prop_oneof![
                "[a-z][a-z0-9.-]{0,12}",
                Just("https".to_owned()),
                Just("[2001:db8::1]".to_owned()),
                Just("u:p@m.example".to_owned()),
            ];
            let port = prop_oneof![Just(""), Just(":80"), Just(":443"), Just(":8080")];
            let path = "(/[a-zA-Z0-9._~%+-]{0,8}){0,3}/?";
            (scheme, host, port, path).prop_map(|(s, h, p, path)| format!("{s}{h}{p}{path}"))
        }

        fn ws() -> impl Strategy<Value = String> {
            "[ \t]{1,3}"
        }

        fn one_line() -> impl Strategy<Value = String> {
            let entry = (
                "[ \t]{0,2}",
                prop_oneof![Just("deb"), Just("deb-src"), Just("#deb"), Just("rpm")],
                ws(),
                prop_oneof![
                    Just(String::new()),
                    "\\[ ?(arch=amd64|signed-by=/k.gpg|trusted=yes)( [a-z]+=[a-z0-9,/.]+)? ?\\]"
                        .prop_map(|o| o + " "),
                ],
                uri(),
                ws(),
                "[a-z-]{1,10}( [a-z]{1,8}){0,3}( #.*)?",
            )
                .prop_map(|(a, t, w, o, u, w2, rest)| format!("{a}{t}{w}{o}{u}{w2}{rest}"));
            prop_oneof![4 => entry, 1 => "\\PC{0,40}"]
        }

        fn deb822() -> impl Strategy<Value = String> {
            let uris = (
                prop_oneof![Just("URIs:"), Just("uris:"), Just("X-URIs:")],
                proptest::collection::vec((ws(), uri()), 0..4),
                proptest::collection::vec((ws(), uri()), 0..3),
                prop_oneof![Just(""), Just("\n# c http://x.example/")],
            )
                .prop_map(|(f, first, cont, comment)| {
                    let mut s = f.to_owned();
                    for (w, u) in first {
                        s += &w;
                        s += &u;
                    }
                    s += comment;
                    for (w, u) in cont {
                        s += "\n";
                        s += &w;
                        s += &u;
                    }
                    s
                });
            prop_oneof![
                4 => uris,
                1 => Just("Types: deb".to_owned()),
                1 => Just(String::new()),
                1 => "\\PC{0,40}",
            ]
        }

        fn join(lines: Vec<(String, &'static str)>) -> String {
            lines.into_iter().map(|(l, e)| l + e).collect()
        }

        fn ending() -> impl Strategy<Value = &'static str> {
            prop_oneof![Just("\n"), Just("\r\n"), Just("")]
        }

        fn no_daemon_urls(text: &str) -> bool {
            !["localhost:9988", "127.0.0.1:9988", "[::1]:9988"]
                .iter()
                .any(|d| text.to_ascii_lowercase().contains(d))
        }

        proptest! {
            #[test]
            fn one_line_round_trips(lines in proptest::collection::vec((one_line(), ending()), 0..8)) {
                let text = join(lines);
                prop_assume!(no_daemon_urls(&text));
                let fwd = rw().rewrite(&text, Format::OneLine);
                let back = rw().revert(&fwd.text, Format::OneLine);
                prop_assert_eq!(&back.text, &text);
                prop_assert_eq!(back.changed, fwd.changed);
                prop_assert_eq!(rw().rewrite(&fwd.text, Format::OneLine).changed, 0);
            }

            #[test]
            fn deb822_round_trips(lines in proptest::collection::vec((deb822(), ending()), 0..8)) {
                let text = join(lines);
                prop_assume!(no_daemon_urls(&text));
                let fwd = rw().rewrite(&text, Format::Deb822);
                let back = rw().revert(&fwd.text, Format::Deb822);
                prop_assert_eq!(&back.text, &text);
                prop_assert_eq!(back.changed, fwd.changed);
                prop_assert_eq!(rw().rewrite(&fwd.text, Format::Deb822).changed, 0);
            }

            #[test]
            fn arbitrary_text_never_panics(text in "[\\PC\r\n\t]{0,300}", deb822 in any::<bool>()) {
                let format = if deb822 { Format::Deb822 } else { Format::OneLine };
                let fwd = rw().rewrite(&text, format.clone());
                let back = rw().revert(&fwd.text, format);
                if no_daemon_urls(&text) {
                    prop_assert_eq!(back.text, text);
                }
            }
        }
    }
}
