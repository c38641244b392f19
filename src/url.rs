//! apt request target -> upstream URL (pure).
//!
//! Two forms reach the front end:
//! - URL-prefix mode, `GET /HOST[:PORT]/PATH`, from sources lines like
//!   `deb http://localhost:9988/deb.debian.org/debian bookworm main`;
//!   `GET /https/HOST[:PORT]/PATH` for mirrors that only speak HTTPS;
//! - proxy mode, `GET http://HOST[:PORT]/PATH`, when
//!   `Acquire::http::Proxy` points at the daemon.
//!
//! Everything that decides whether a request may leave the machine lives
//! here, so it can be tested exhaustively: the host syntax, the port
//! allowlist, the optional host allowlist, and path rules that make
//! traversal impossible whether or not it is percent-encoded.

use std::fmt;

/// Largest request target accepted (apt's longest are by-hash URLs of about
/// 200 bytes).
pub const MAX_TARGET: usize = 8192;

/// Upstream scheme.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Scheme {
    /// Plain HTTP.
    Http,
    /// HTTPS (TLS via rustls).
    Https,
}

impl Scheme {
    fn default_port(self) -> u16 {
        match self {
            Scheme::Http => 80,
            Scheme::Https => 443,
        }
    }
}

/// Where a request goes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Target {
    /// The daemon's own pages: `/`, `/status.json`, `/metrics`.
    Local(LocalPage),
    /// A file on a mirror.
    Upstream(UpstreamUrl),
}

/// The daemon's own pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LocalPage {
    /// HTML status.
    Status,
    /// JSON status.
    StatusJson,
    /// Prometheus text.
    Metrics,
}

/// A validated upstream URL.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpstreamUrl {
    /// http or https.
    pub scheme: Scheme,
    /// Lower-case host name or IP literal (IPv6 in brackets).
    pub host: String,
    /// The port (default filled in).
    pub port: u16,
    /// The path as apt sent it (still percent-encoded), starting with `/`.
    pub raw_path: String,
    /// The decoded path, starting with `/`; guaranteed free of `.`/`..`
    /// segments, NUL and backslash.
    pub path: String,
}

impl UpstreamUrl {
    /// The URL to fetch from the mirror.
    pub fn url(&self) -> String {
        format!("{}{}", self.origin(), self.raw_path)
    }

    /// `scheme://host[:port]`, with the port only when not the default.
    pub fn origin(&self) -> String {
        let scheme = match self.scheme {
            Scheme::Http => "http",
            Scheme::Https => "https",
        };
        if self.port == self.scheme.default_port() {
            format!("{scheme}://{}", self.host)
        } else {
            format!("{scheme}://{}:{}", self.host, self.port)
        }
    }

    /// Splits the decoded path at the archive root: `/debian/pool/main/x.deb`
    /// gives (`/debian/`, `pool/main/x.deb`). The root is what precedes the
    /// first `dists` or `pool` segment (section 3 of the torrent format).
    pub fn split_archive(&self) -> Option<(&str, &str, Area)> {
        let mut at = 0;
        for seg in self.path.split('/') {
            let area = match seg {
                "dists" => Some(Area::Dists),
                "pool" => Some(Area::Pool),
                _ => None,
            };
            if let Some(area) = area {
                if at > 0 {
                    return Some((&self.path[..at], &self.path[at..], area));
                }
            }
            at += seg.len() + 1;
        }
        None
    }

    /// The archive root as a key: `scheme://host[:port]/root/`.
    pub fn archive_key(&self) -> Option<String> {
        let (root, _, _) = self.split_archive()?;
        Some(format!("{}{}", self.origin(), root))
    }
}

/// The part of an archive a path lies in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Area {
    /// `dists/...`: Release files and indexes.
    Dists,
    /// `pool/...`: package files.
    Pool,
}

/// Why a request target was refused.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refusal {
    /// Malformed: 400.
    BadRequest(&'static str),
    /// Over [`MAX_TARGET`]: 414.
    TooLong,
    /// Not allowed by policy: 403.
    Forbidden(String),
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Refusal::BadRequest(why) => write!(f, "bad request: {why}"),
            Refusal::TooLong => write!(f, "request target too long"),
            Refusal::Forbidden(why) => write!(f, "forbidden: {why}"),
        }
    }
}

/// What upstreams the daemon may reach.
#[derive(Clone, Debug)]
pub struct Policy {
    /// Ports allowed upstream (80 and 443 plus `--allow-port`).
    pub ports: Vec<u16>,
    /// If non-empty, the only hosts allowed upstream.
    pub hosts: Vec<String>,
}

impl Policy {
    fn check(&self, u: &UpstreamUrl) -> Result<(), Refusal> {
        if !self.ports.contains(&u.port) {
            return Err(Refusal::Forbidden(format!(
                "upstream port {} is not allowed (allowed: {:?}; see --allow-port)",
                u.port, self.ports
            )));
        }
        if !self.hosts.is_empty() && !self.hosts.iter().any(|h| h.eq_ignore_ascii_case(&u.host)) {
            return Err(Refusal::Forbidden(format!(
                "host {} is not in the mirror allowlist (see --allow-host)",
                u.host
            )));
        }
        Ok(())
    }
}

/// Parses and checks a request target.
pub fn parse_target(target: &str, policy: &Policy) -> Result<Target, Refusal> {
    if target.len() > MAX_TARGET {
        return Err(Refusal::TooLong);
    }
    if target.contains('?') || target.contains('#') {
        return Err(Refusal::BadRequest(
            "query strings are not part of a Debian archive",
        ));
    }
    let (scheme, rest) = if let Some(rest) = strip_prefix_ci(target, "http://") {
        (Scheme::Http, rest)
    } else if let Some(rest) = strip_prefix_ci(target, "https://") {
        (Scheme::Https, rest)
    } else if let Some(rest) = target.strip_prefix('/') {
        match rest {
            "" => return Ok(Target::Local(LocalPage::Status)),
            "status.json" => return Ok(Target::Local(LocalPage::StatusJson)),
            "metrics" => return Ok(Target::Local(LocalPage::Metrics)),
            _ => {}
        }
        match rest.strip_prefix("https/") {
            Some(r) => (Scheme::Https, r),
            None => (Scheme::Http, rest),
        }
    } else {
        return Err(Refusal::BadRequest(
            "request target is neither /HOST/PATH nor http://HOST/PATH",
        ));
    };
    let (authority, raw_path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let (host, port) = parse_authority(authority, scheme)?;
    let path = decode_path(raw_path)?;
    let u = UpstreamUrl {
        scheme,
        host,
        port,
        raw_path: raw_path.to_string(),
        path,
    };
    policy.check(&u)?;
    Ok(Target::Upstream(u))
}

fn strip_prefix_ci<'a>(s: &'a str, prefix: &str) -> Option<&'a str> {
    let head = s.get(..prefix.len())?;
    head.eq_ignore_ascii_case(prefix)
        .then(|| &s[prefix.len()..])
}

fn parse_authority(a: &str, scheme: Scheme) -> Result<(String, u16), Refusal> {
    if a.is_empty() {
        return Err(Refusal::BadRequest("no host"));
    }
    if a.contains('@') {
        return Err(Refusal::BadRequest("credentials in URLs are not forwarded"));
    }
    let (host, port) = if let Some(v6) = a.strip_prefix('[') {
        let end = v6
            .find(']')
            .ok_or(Refusal::BadRequest("unterminated IPv6 literal"))?;
        let addr = &v6[..end];
        addr.parse::<std::net::Ipv6Addr>()
            .map_err(|_| Refusal::BadRequest("bad IPv6 literal"))?;
        let after = &v6[end + 1..];
        let port = match after.strip_prefix(':') {
            Some(p) => Some(p),
            None if after.is_empty() => None,
            None => return Err(Refusal::BadRequest("junk after IPv6 literal")),
        };
        (format!("[{}]", addr.to_ascii_lowercase()), port)
    } else {
        let (h, p) = match a.rsplit_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (a, None),
        };
        let valid = !h.is_empty()
            && h.len() <= 253
            && h.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'.' || b == b'_')
            && !h.starts_with(['.', '-'])
            && !h.contains("..");
        if !valid {
            return Err(Refusal::BadRequest("invalid host name"));
        }
        (h.to_ascii_lowercase(), p)
    };
    let port = match port {
        None => scheme.default_port(),
        Some(p) => {
            if p.is_empty() || p.len() > 5 || !p.bytes().all(|b| b.is_ascii_digit()) {
                return Err(Refusal::BadRequest("invalid port"));
            }
            match p.parse::<u16>() {
                Ok(n) if n > 0 => n,
                _ => return Err(Refusal::BadRequest("invalid port")),
            }
        }
    };
    Ok((host, port))
}

/// Percent-decodes a path and rejects anything that could step outside
/// the archive: `.`/`..` segments (encoded or not), an encoded `/` or `\`,
/// NUL, backslash, control characters, and invalid UTF-8.
fn decode_path(raw: &str) -> Result<String, Refusal> {
    if !raw.starts_with('/') {
        return Err(Refusal::BadRequest("path must start with /"));
    }
    let mut out = Vec::with_capacity(raw.len());
    let b = raw.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let hex = b
                .get(i + 1..i + 3)
                .ok_or(Refusal::BadRequest("truncated percent escape"))?;
            let v = std::str::from_utf8(hex)
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or(Refusal::BadRequest("bad percent escape"))?;
            if v == b'/' || v == b'\\' {
                return Err(Refusal::BadRequest("encoded slash or backslash in path"));
            }
            out.push(v);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    let s = String::from_utf8(out).map_err(|_| Refusal::BadRequest("path is not UTF-8"))?;
    if s.bytes().any(|c| c < 0x20 || c == 0x7f || c == b'\\') {
        return Err(Refusal::BadRequest(
            "control character or backslash in path",
        ));
    }
    if s.split('/').any(|seg| seg == "." || seg == "..") {
        return Err(Refusal::BadRequest("dot segments are not allowed"));
    }
    Ok(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy() -> Policy {
        Policy {
            ports: vec![80, 443, 8080],
            hosts: vec![],
        }
    }

    fn up(target: &str) -> Result<UpstreamUrl, Refusal> {
        match parse_target(target, &policy())? {
            Target::Upstream(u) => Ok(u),
            Target::Local(p) => panic!("{target} gave local page {p:?}"),
        }
    }

    #[test]
    fn accepted_targets() {
        // (target, expected URL, expected decoded path)
        let cases = [
            (
                "/deb.debian.org/debian/dists/bookworm/InRelease",
                "http://deb.debian.org/debian/dists/bookworm/InRelease",
                "/debian/dists/bookworm/InRelease",
            ),
            (
                "/Deb.Debian.ORG:8080/debian/pool/x.deb",
                "http://deb.debian.org:8080/debian/pool/x.deb",
                "/debian/pool/x.deb",
            ),
            (
                "/https/deb.debian.org/debian/pool/x.deb",
                "https://deb.debian.org/debian/pool/x.deb",
                "/debian/pool/x.deb",
            ),
            (
                "http://deb.debian.org/debian/pool/a%2bb_1%7e2.deb",
                "http://deb.debian.org/debian/pool/a%2bb_1%7e2.deb",
                "/debian/pool/a+b_1~2.deb",
            ),
            (
                "HTTP://127.0.0.1:8080/debian/",
                "http://127.0.0.1:8080/debian/",
                "/debian/",
            ),
            (
                "/[::1]:8080/debian/pool/x.deb",
                "http://[::1]:8080/debian/pool/x.deb",
                "/debian/pool/x.deb",
            ),
            ("/deb.debian.org", "http://deb.debian.org/", "/"),
            (
                "/deb.debian.org/debian//dists/x",
                "http://deb.debian.org/debian//dists/x",
                "/debian//dists/x",
            ),
            (
                "/deb.debian.org/debian/pool/...deb",
                "http://deb.debian.org/debian/pool/...deb",
                "/debian/pool/...deb",
            ),
        ];
        for (target, url, path) in cases {
            let u = up(target).unwrap_or_else(|e| panic!("{target}: {e}"));
            assert_eq!(u.url(), url, "{target}");
            assert_eq!(u.path, path, "{target}");
        }
    }

    #[test]
    fn refused_targets() {
        use Refusal::*;
        let long = format!("/h/{}", "a".repeat(MAX_TARGET));
        let cases: Vec<(&str, fn(&Refusal) -> bool)> = vec![
            ("/deb.debian.org/debian/../../etc/passwd", |r| {
                matches!(r, BadRequest(_))
            }),
            ("/deb.debian.org/debian/%2e%2e/%2E%2E/etc/passwd", |r| {
                matches!(r, BadRequest(_))
            }),
            ("/deb.debian.org/debian/.%2e/x", |r| {
                matches!(r, BadRequest(_))
            }),
            ("/deb.debian.org/debian/%2f..%2fx", |r| {
                matches!(r, BadRequest(_))
            }),
            ("/deb.debian.org/debian/..%5cx", |r| {
                matches!(r, BadRequest(_))
            }),
            ("/deb.debian.org/debian/./x", |r| matches!(r, BadRequest(_))),
            ("/deb.debian.org/debian/x%00y", |r| {
                matches!(r, BadRequest(_))
            }),
            ("/deb.debian.org/debian/x%zz", |r| {
                matches!(r, BadRequest(_))
            }),
            ("/deb.debian.org/debian/x%2", |r| matches!(r, BadRequest(_))),
            ("/deb.debian.org/debian/x%ff", |r| {
                matches!(r, BadRequest(_))
            }),
            ("/deb.debian.org/debian/x?y=1", |r| {
                matches!(r, BadRequest(_))
            }),
            ("/user:pw@deb.debian.org/debian/x", |r| {
                matches!(r, BadRequest(_))
            }),
            ("/deb.debian.org:22/x", |r| matches!(r, Forbidden(_))),
            ("http://127.0.0.1:22/", |r| matches!(r, Forbidden(_))),
            ("/deb.debian.org:0/x", |r| matches!(r, BadRequest(_))),
            ("/deb.debian.org:99999/x", |r| matches!(r, BadRequest(_))),
            ("/deb.debian.org:/x", |r| matches!(r, BadRequest(_))),
            ("/.evil/x", |r| matches!(r, BadRequest(_))),
            ("/a..b/x", |r| matches!(r, BadRequest(_))),
            ("/ho st/x", |r| matches!(r, BadRequest(_))),
            ("/[::1/x", |r| matches!(r, BadRequest(_))),
            ("/[zz]/x", |r| matches!(r, BadRequest(_))),
            ("deb.debian.org/x", |r| matches!(r, BadRequest(_))),
            ("*", |r| matches!(r, BadRequest(_))),
            ("ftp://deb.debian.org/x", |r| matches!(r, BadRequest(_))),
            ("//x", |r| matches!(r, BadRequest(_))),
            (&long, |r| matches!(r, TooLong)),
        ];
        for (target, ok) in cases {
            let r = parse_target(target, &policy());
            match r {
                Err(e) => assert!(ok(&e), "{target}: wrong refusal {e:?}"),
                Ok(t) => panic!("{target} was accepted as {t:?}"),
            }
        }
    }

    #[test]
    fn host_allowlist() {
        let p = Policy {
            ports: vec![80],
            hosts: vec!["deb.debian.org".into()],
        };
        assert!(parse_target("/deb.debian.org/debian/x", &p).is_ok());
        assert!(parse_target("/DEB.debian.org/debian/x", &p).is_ok());
        assert!(matches!(
            parse_target("/evil.example/debian/x", &p),
            Err(Refusal::Forbidden(_))
        ));
    }

    #[test]
    fn local_pages() {
        let cases = [
            ("/", LocalPage::Status),
            ("/status.json", LocalPage::StatusJson),
            ("/metrics", LocalPage::Metrics),
        ];
        for (t, want) in cases {
            assert_eq!(parse_target(t, &policy()), Ok(Target::Local(want)));
        }
    }

    #[test]
    fn archive_split() {
        let cases = [
            (
                "/h/debian/pool/main/h/hello/x.deb",
                Some(("/debian/", "pool/main/h/hello/x.deb", Area::Pool)),
            ),
            (
                "/h/debian/dists/bookworm/InRelease",
                Some(("/debian/", "dists/bookworm/InRelease", Area::Dists)),
            ),
            ("/h/pool/x.deb", Some(("/", "pool/x.deb", Area::Pool))),
            (
                "/h/a/b/dists/pool/x",
                Some(("/a/b/", "dists/pool/x", Area::Dists)),
            ),
            ("/h/debian/poolx/x.deb", None),
            ("/h/debian/", None),
        ];
        for (t, want) in cases {
            let u = up(t).unwrap();
            assert_eq!(u.split_archive(), want, "{t}");
        }
        assert_eq!(
            up("/h:8080/debian/pool/x")
                .unwrap()
                .archive_key()
                .as_deref(),
            Some("http://h:8080/debian/")
        );
    }
}
