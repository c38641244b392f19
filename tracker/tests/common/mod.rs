//! Helpers for the tests with real parts: start the real binary and
//! external tools, read `/stats.json`. Everything stays on 127.0.0.1 and
//! every wait has a deadline.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_debtorrent-tracker");

/// A running debtorrent-tracker; killed on drop.
pub struct TrackerProc {
    pub child: Child,
    pub http: SocketAddr,
    pub udp: SocketAddr,
    pub data_dir: PathBuf,
}

impl TrackerProc {
    pub fn start(data_dir: &Path, extra: &[&str]) -> TrackerProc {
        let mut child = Command::new(BIN)
            .args([
                "--http-listen",
                "127.0.0.1:0",
                "--udp-listen",
                "127.0.0.1:0",
                "--data-dir",
            ])
            .arg(data_dir)
            .args(extra)
            .env("DEBTORRENT_TRACKER_LOG", "warn")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start debtorrent-tracker");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            let _ = BufReader::new(stdout).read_line(&mut line);
            let _ = tx.send(line);
        });
        let line = rx
            .recv_timeout(Duration::from_secs(20))
            .expect("tracker did not print its listening line within 20 s");
        // "debtorrent-tracker listening http=ADDR udp=ADDR"
        let field = |name: &str| -> SocketAddr {
            line.split_whitespace()
                .find_map(|w| w.strip_prefix(name))
                .unwrap_or_else(|| panic!("no {name} in {line:?}"))
                .parse()
                .unwrap()
        };
        assert!(
            line.starts_with("debtorrent-tracker listening "),
            "{line:?}"
        );
        TrackerProc {
            http: field("http="),
            udp: field("udp="),
            child,
            data_dir: data_dir.to_path_buf(),
        }
    }

    pub fn announce_url(&self) -> String {
        format!("http://{}/announce", self.http)
    }

    pub fn udp_url(&self) -> String {
        format!("udp://{}/announce", self.udp)
    }

    /// `GET path` on the HTTP port; returns (status, body).
    pub fn get(&self, path_and_query: &str) -> (u16, Vec<u8>) {
        http_get(self.http, path_and_query)
    }

    pub fn stats(&self) -> serde_json::Value {
        let (status, body) = self.get("/stats.json");
        assert_eq!(status, 200);
        serde_json::from_slice(&body).expect("stats.json is JSON")
    }

    /// SIGTERM and wait (bounded) for a clean exit.
    pub fn terminate(mut self) {
        let pid = self.child.id().to_string();
        let ok = Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .expect("run kill");
        assert!(ok.success());
        let deadline = Instant::now() + Duration::from_secs(15);
        loop {
            if let Some(st) = self.child.try_wait().expect("wait") {
                assert!(st.success(), "tracker exited with {st}");
                return;
            }
            assert!(Instant::now() < deadline, "tracker did not exit on SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for TrackerProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A minimal HTTP/1.0 GET with a 10 s timeout (test helper, not the client
/// under test).
pub fn http_get(addr: SocketAddr, path_and_query: &str) -> (u16, Vec<u8>) {
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5)).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    write!(s, "GET {path_and_query} HTTP/1.0\r\nHost: {addr}\r\n\r\n").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let head_end = buf
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .unwrap_or_else(|| panic!("no HTTP head in {:?}", String::from_utf8_lossy(&buf)));
    let head = String::from_utf8_lossy(&buf[..head_end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    (status, buf[head_end + 4..].to_vec())
}

/// Poll `f` every 100 ms until it returns true or `secs` pass.
pub fn wait_until(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(secs);
    while !f() {
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A free port on 127.0.0.1 for both TCP and UDP (best effort).
pub fn free_port() -> u16 {
    loop {
        let t = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = t.local_addr().unwrap().port();
        if UdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// Fail (not skip) when a tool the tests need is missing.
pub fn require_tool(cmd: &str, args: &[&str], package: &str) {
    match Command::new(cmd)
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
    {
        Ok(_) => {}
        Err(e) => panic!(
            "{cmd} is needed by this test but cannot be run ({e}): apt-get install {package}"
        ),
    }
}

pub fn require_libtorrent() {
    let ok = Command::new("/usr/bin/python3")
        .args(["-c", "import libtorrent"])
        .status()
        .map(|s| s.success())
        .unwrap_or(false);
    assert!(
        ok,
        "/usr/bin/python3 cannot import libtorrent: apt-get install python3-libtorrent"
    );
}

/// A child process killed on drop.
pub struct Guard(pub Child);

impl Drop for Guard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Guard {
    /// Wait for exit with a deadline; panics on timeout.
    pub fn wait_secs(&mut self, secs: u64, what: &str) -> std::process::ExitStatus {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st;
            }
            assert!(
                Instant::now() < deadline,
                "{what} did not finish within {secs} s"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// Minimal bencode writer for test torrents.
pub enum B {
    I(i64),
    S(Vec<u8>),
    D(Vec<(&'static str, B)>),
}

impl B {
    pub fn encode(&self, out: &mut Vec<u8>) {
        match self {
            B::I(i) => out.extend_from_slice(format!("i{i}e").as_bytes()),
            B::S(s) => {
                out.extend_from_slice(format!("{}:", s.len()).as_bytes());
                out.extend_from_slice(s);
            }
            B::D(items) => {
                out.push(b'd');
                let mut items: Vec<_> = items.iter().collect();
                items.sort_by_key(|(k, _)| *k);
                for (k, v) in items {
                    B::S(k.as_bytes().to_vec()).encode(out);
                    v.encode(out);
                }
                out.push(b'e');
            }
        }
    }
}

/// Write `content` as `dir/name` and a private single-file torrent for it
/// at `torrent`; returns the info hash.
pub fn make_torrent(
    dir: &Path,
    name: &str,
    content: &[u8],
    announce: &str,
    torrent: &Path,
) -> [u8; 20] {
    use sha1::{Digest, Sha1};
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(name), content).unwrap();
    let piece_len = 32 * 1024;
    let mut pieces = Vec::new();
    for chunk in content.chunks(piece_len) {
        pieces.extend_from_slice(&Sha1::digest(chunk));
    }
    let info = B::D(vec![
        ("length", B::I(content.len() as i64)),
        ("name", B::S(name.as_bytes().to_vec())),
        ("piece length", B::I(piece_len as i64)),
        ("pieces", B::S(pieces)),
        // Private: clients use only the tracker (no DHT, PEX, LSD).
        ("private", B::I(1)),
    ]);
    let mut info_bytes = Vec::new();
    info.encode(&mut info_bytes);
    let mut hash = [0u8; 20];
    hash.copy_from_slice(&Sha1::digest(&info_bytes));
    let mut t = Vec::new();
    t.extend_from_slice(b"d8:announce");
    B::S(announce.as_bytes().to_vec()).encode(&mut t);
    t.extend_from_slice(b"4:info");
    t.extend_from_slice(&info_bytes);
    t.push(b'e');
    std::fs::write(torrent, t).unwrap();
    hash
}

/// Deterministic pseudo-random content.
pub fn content(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}
