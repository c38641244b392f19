//! The end-to-end test kit: a real signed Debian repository (`repo`), a real
//! HTTP mirror with fault switches (`mirror`), a private apt client (`apt`)
//! and the real daemon binary (`daemon`), plus small helpers shared by them:
//! running a command with a time limit, SHA-256, HTTP dates and a raw HTTP/1.1
//! client for tests that must see the exact bytes on the wire.

#![allow(dead_code)]

pub mod apt;
pub mod daemon;
pub mod mirror;
pub mod netns;
pub mod repo;
pub mod suites;

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sha2::{Digest, Sha256};

/// Fails the test with a clear message when a host tool is missing.
pub fn require_tool(tool: &str, package: &str) {
    let found = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).any(|dir| dir.join(tool).is_file()))
        .unwrap_or(false);
    assert!(
        found,
        "the end-to-end tests need `{tool}` (Debian package `{package}`); install it with \
         `apt-get install {package}`"
    );
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex(&Sha256::digest(data))
}

pub fn sha256_file(path: &Path) -> io::Result<String> {
    let mut file = std::fs::File::open(path)?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = file.read(&mut buf)?;
        if n == 0 {
            break;
        }
        hasher.update(&buf[..n]);
    }
    Ok(hex(&hasher.finalize()))
}

pub fn hex(bytes: &[u8]) -> String {
    debtorrent_gen::encode_hex(bytes)
}

/// The outcome of a command run with [`run_with_timeout`].
#[derive(Debug, Clone)]
pub struct CmdOutput {
    pub status: Option<i32>,
    pub stdout: String,
    pub stderr: String,
    pub timed_out: bool,
    pub elapsed: Duration,
}

impl CmdOutput {
    pub fn success(&self) -> bool {
        !self.timed_out && self.status == Some(0)
    }

    pub fn combined(&self) -> String {
        format!(
            "exit status: {:?}{}; took {:.1?}\n--- stdout ---\n{}\n--- stderr ---\n{}",
            self.status,
            if self.timed_out {
                " (TIMED OUT, killed)"
            } else {
                ""
            },
            self.elapsed,
            self.stdout,
            self.stderr
        )
    }
}

/// Runs `cmd` to completion, killing it after `timeout`. stdout and stderr are
/// drained by threads so a chatty child never blocks on a full pipe.
pub fn run_with_timeout(mut cmd: Command, timeout: Duration) -> CmdOutput {
    let start = Instant::now();
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run {cmd:?}: {e}"));
    let out = drain(child.stdout.take().unwrap());
    let err = drain(child.stderr.take().unwrap());
    let mut timed_out = false;
    let status = loop {
        match child.try_wait().expect("wait for child") {
            Some(status) => break status,
            None if start.elapsed() > timeout => {
                timed_out = true;
                let _ = child.kill();
                break child.wait().expect("wait for killed child");
            }
            None => std::thread::sleep(Duration::from_millis(20)),
        }
    };
    CmdOutput {
        status: status.code(),
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
        timed_out,
        elapsed: start.elapsed(),
    }
}

fn drain<R: Read + Send + 'static>(mut r: R) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        String::from_utf8_lossy(&buf).into_owned()
    })
}

/// Runs a setup command that must succeed (fixture building).
pub fn run_ok(cmd: Command) -> CmdOutput {
    let desc = format!("{cmd:?}");
    let out = run_with_timeout(cmd, Duration::from_secs(120));
    assert!(
        out.success(),
        "fixture command failed: {desc}\n{}",
        out.combined()
    );
    out
}

// ---------------------------------------------------------------- HTTP dates

/// Formats a time as an IMF-fixdate (`Sun, 06 Nov 1994 08:49:37 GMT`).
pub fn http_date(t: SystemTime) -> String {
    let secs = t
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0) as i64;
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    const WD: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    format!(
        "{}, {:02} {} {:04} {:02}:{:02}:{:02} GMT",
        WD[days.rem_euclid(7) as usize],
        d,
        MO[(m - 1) as usize],
        y,
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Parses an IMF-fixdate into seconds since the epoch.
pub fn parse_http_date(s: &str) -> Option<i64> {
    let parts: Vec<&str> = s.split_whitespace().collect();
    if parts.len() != 6 || parts[5] != "GMT" {
        return None;
    }
    let d: i64 = parts[1].parse().ok()?;
    const MO: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let m = MO.iter().position(|x| *x == parts[2])? as i64 + 1;
    let y: i64 = parts[3].parse().ok()?;
    let hms: Vec<i64> = parts[4]
        .split(':')
        .map(|x| x.parse().ok())
        .collect::<Option<_>>()?;
    if hms.len() != 3 {
        return None;
    }
    Some(days_from_civil(y, m, d) * 86_400 + hms[0] * 3600 + hms[1] * 60 + hms[2])
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let y = yoe + era * 400;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (if m <= 2 { y + 1 } else { y }, m, d)
}

fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y.rem_euclid(400);
    let mp = if m > 2 { m - 3 } else { m + 9 };
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

/// Percent-encodes a pool path the way apt 2.6 does (`+` -> `%2b`, `~` -> `%7e`).
pub fn apt_quote(path: &str) -> String {
    let mut out = String::new();
    for b in path.bytes() {
        match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'/' | b':' => {
                out.push(b as char)
            }
            _ => out.push_str(&format!("%{b:02x}")),
        }
    }
    out
}

// ------------------------------------------------------------ raw HTTP client

#[derive(Debug, Clone)]
pub struct RawResponse {
    pub status: u16,
    pub reason: String,
    pub headers: Vec<(String, String)>,
    pub body: Vec<u8>,
}

impl RawResponse {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    pub fn summary(&self) -> String {
        let body = String::from_utf8_lossy(&self.body[..self.body.len().min(300)]).into_owned();
        format!(
            "{} {} {:?} body[{}]: {body:?}",
            self.status,
            self.reason,
            self.headers,
            self.body.len()
        )
    }
}

/// One TCP connection on which the test writes raw request bytes and parses
/// responses by hand (Content-Length, chunked, or read-to-EOF).
pub struct RawConn {
    pub stream: TcpStream,
    buf: Vec<u8>,
    eof: bool,
}

impl RawConn {
    pub fn connect(addr: SocketAddr) -> RawConn {
        let stream = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
            .unwrap_or_else(|e| panic!("connect to {addr}: {e}"));
        stream
            .set_read_timeout(Some(Duration::from_secs(60)))
            .unwrap();
        stream
            .set_write_timeout(Some(Duration::from_secs(30)))
            .unwrap();
        stream.set_nodelay(true).unwrap();
        RawConn {
            stream,
            buf: Vec::new(),
            eof: false,
        }
    }

    pub fn set_read_timeout(&self, t: Duration) {
        self.stream.set_read_timeout(Some(t)).unwrap();
    }

    /// Writes all bytes; a write error is returned, not panicked on, since a
    /// server may rightly close early on a hostile request.
    pub fn send(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)?;
        self.stream.flush()
    }

    fn fill(&mut self) -> io::Result<usize> {
        if self.eof {
            return Ok(0);
        }
        let mut chunk = [0u8; 64 * 1024];
        let n = self.stream.read(&mut chunk)?;
        if n == 0 {
            self.eof = true;
        }
        self.buf.extend_from_slice(&chunk[..n]);
        Ok(n)
    }

    fn take_line(&mut self) -> io::Result<String> {
        loop {
            if let Some(pos) = self.buf.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8_lossy(&self.buf[..pos]).into_owned();
                self.buf.drain(..pos + 2);
                return Ok(line);
            }
            if self.fill()? == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "EOF in line"));
            }
        }
    }

    fn take_exact(&mut self, n: usize) -> io::Result<Vec<u8>> {
        while self.buf.len() < n {
            if self.fill()? == 0 {
                return Err(io::Error::new(
                    io::ErrorKind::UnexpectedEof,
                    format!("EOF after {} of {n} body bytes", self.buf.len()),
                ));
            }
        }
        Ok(self.buf.drain(..n).collect())
    }

    /// Reads one response. `head` says the request was HEAD (no body).
    pub fn read_response(&mut self, head: bool) -> io::Result<RawResponse> {
        loop {
            let status_line = self.take_line()?;
            let mut it = status_line.splitn(3, ' ');
            let version = it.next().unwrap_or_default();
            if !version.starts_with("HTTP/1.") {
                return Err(io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                ));
            }
            let status: u16 = it.next().and_then(|s| s.parse().ok()).ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("bad status line {status_line:?}"),
                )
            })?;
            let reason = it.next().unwrap_or_default().to_string();
            let mut headers = Vec::new();
            loop {
                let line = self.take_line()?;
                if line.is_empty() {
                    break;
                }
                if let Some((k, v)) = line.split_once(':') {
                    headers.push((k.trim().to_string(), v.trim().to_string()));
                }
            }
            if (100..200).contains(&status) {
                continue; // interim response
            }
            let mut resp = RawResponse {
                status,
                reason,
                headers,
                body: Vec::new(),
            };
            if head || status == 204 || status == 304 {
                return Ok(resp);
            }
            let chunked = resp
                .header("transfer-encoding")
                .is_some_and(|v| v.to_ascii_lowercase().contains("chunked"));
            if chunked {
                loop {
                    let size_line = self.take_line()?;
                    let size =
                        usize::from_str_radix(size_line.split(';').next().unwrap().trim(), 16)
                            .map_err(|_| {
                                io::Error::new(
                                    io::ErrorKind::InvalidData,
                                    format!("chunk {size_line:?}"),
                                )
                            })?;
                    if size == 0 {
                        while !self.take_line()?.is_empty() {}
                        break;
                    }
                    let data = self.take_exact(size)?;
                    resp.body.extend_from_slice(&data);
                    self.take_line()?;
                }
            } else if let Some(len) = resp.header("content-length") {
                let len: usize = len.parse().map_err(|_| {
                    io::Error::new(
                        io::ErrorKind::InvalidData,
                        format!("content-length {len:?}"),
                    )
                })?;
                resp.body = self.take_exact(len)?;
            } else {
                while self.fill()? > 0 {}
                resp.body = std::mem::take(&mut self.buf);
            }
            return Ok(resp);
        }
    }
}

/// Sends one request on a fresh connection and reads one response.
pub fn raw_exchange(addr: SocketAddr, request: &[u8], head: bool) -> io::Result<RawResponse> {
    let mut conn = RawConn::connect(addr);
    // A server may answer and close before reading everything of a hostile
    // request; still try to read its answer.
    let write_result = conn.send(request);
    match conn.read_response(head) {
        Ok(r) => Ok(r),
        Err(e) => Err(io::Error::new(
            e.kind(),
            format!("{e} (writing the request: {write_result:?})"),
        )),
    }
}

/// A plain GET on a fresh connection.
pub fn http_get(addr: SocketAddr, target: &str, extra_headers: &[(&str, &str)]) -> RawResponse {
    let mut req = format!("GET {target} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    for (k, v) in extra_headers {
        req.push_str(&format!("{k}: {v}\r\n"));
    }
    req.push_str("\r\n");
    raw_exchange(addr, req.as_bytes(), false)
        .unwrap_or_else(|e| panic!("GET {target} on {addr}: {e}"))
}

/// Polls `cond` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(timeout: Duration, mut cond: impl FnMut() -> bool) -> bool {
    let start = Instant::now();
    while start.elapsed() < timeout {
        if cond() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    cond()
}

/// The usual start of a test: a mirror of the shared repository, a daemon
/// allowed to reach it, and an apt client in URL-prefix mode that has run a
/// verified `apt-get update` through the daemon.
pub struct Updated {
    pub repo: &'static repo::Repo,
    pub mirror: mirror::Mirror,
    pub daemon: daemon::Daemon,
    pub apt: apt::AptClient,
}

pub fn updated() -> Updated {
    let repo = repo::repo();
    let mirror = mirror::Mirror::start(&repo.root);
    let daemon = daemon::Daemon::start(&[mirror.port()]);
    let apt = apt::AptClient::new(repo, &mirror, apt::Mode::Prefix(daemon.addr()));
    let out = apt.update();
    apt.assert_update_verified(&out, "update");
    Updated {
        repo,
        mirror,
        daemon,
        apt,
    }
}
