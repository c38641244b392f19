//! The real `debtorrent` binary: started with `serve --listen 127.0.0.1:0
//! --data-dir DIR --allow-port PORT`, ready once it prints
//! `debtorrent listening on http://IP:PORT` on stdout. Its stdout and stderr
//! are drained into a log file beside the data folder; the log is printed
//! when a test fails.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const READY_PREFIX: &str = "debtorrent listening on http://";
const READY_TIMEOUT: Duration = Duration::from_secs(10);

pub fn binary() -> &'static str {
    env!("CARGO_BIN_EXE_debtorrent")
}

pub struct Daemon {
    _tmp: tempfile::TempDir,
    child: Option<Child>,
    addr: SocketAddr,
    pub data_dir: PathBuf,
    pub log_path: PathBuf,
    allow_ports: Vec<u16>,
    extra_args: Vec<String>,
    log: Arc<Mutex<std::fs::File>>,
}

impl Daemon {
    /// Starts a daemon on a fresh data folder and a free loopback port,
    /// allowing upstream connections to `allow_ports` (the mirrors' ports).
    pub fn start(allow_ports: &[u16]) -> Daemon {
        Daemon::start_with_args(allow_ports, &[])
    }

    pub fn start_with_args(allow_ports: &[u16], extra_args: &[&str]) -> Daemon {
        Daemon::start_listen("127.0.0.1:0", allow_ports, extra_args)
    }

    /// Starts a daemon whose apt front end listens on `ip` (any loopback
    /// address, e.g. `127.0.0.12`) with a free port. For the swarm tests,
    /// pass `--peer-addr IP:PORT` in `extra_args` as well, so peers and the
    /// DHT use the same address (see [`Daemon::start_peer`]).
    pub fn start_on(ip: &str, allow_ports: &[u16], extra_args: &[&str]) -> Daemon {
        Daemon::start_listen(&format!("{ip}:0"), allow_ports, extra_args)
    }

    /// A swarm daemon on loopback address `ip`: the apt front end on
    /// `ip:0`, peers and DHT on `ip:0` (TCP and UDP, the same free port),
    /// no LSD, and the DHT bootstrapped from `dht_bootstrap` (`None`: an
    /// empty table, the first node of a private DHT). Never the public
    /// routers. `extra_args` come last.
    pub fn start_peer(
        ip: &str,
        allow_ports: &[u16],
        dht_bootstrap: Option<std::net::SocketAddr>,
        extra_args: &[&str],
    ) -> Daemon {
        let peer_addr = format!("{ip}:0");
        let boot = dht_bootstrap.map_or_else(|| "none".to_string(), |a| a.to_string());
        let mut args: Vec<&str> = vec![
            "--peer-addr",
            &peer_addr,
            "--dht-bootstrap",
            &boot,
            "--no-lsd",
        ];
        args.extend_from_slice(extra_args);
        Daemon::start_on(ip, allow_ports, &args)
    }

    fn start_listen(listen: &str, allow_ports: &[u16], extra_args: &[&str]) -> Daemon {
        let tmp = tempfile::Builder::new()
            .prefix("dt-e2e-daemon.")
            .tempdir()
            .expect("temp dir");
        let data_dir = tmp.path().join("data");
        std::fs::create_dir_all(&data_dir).unwrap();
        let log_path = tmp.path().join("daemon.log");
        let log = Arc::new(Mutex::new(std::fs::File::create(&log_path).unwrap()));
        let mut d = Daemon {
            _tmp: tmp,
            child: None,
            addr: "127.0.0.1:0".parse().unwrap(),
            data_dir,
            log_path,
            allow_ports: allow_ports.to_vec(),
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
            log,
        };
        if let Err(e) = d.launch(listen) {
            panic!("{e}\n---- daemon log:\n{}", d.log_text());
        }
        d
    }

    fn launch(&mut self, listen: &str) -> Result<(), String> {
        let mut cmd = Command::new(binary());
        cmd.arg("serve")
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(["--log-level", "debug"]);
        for p in &self.allow_ports {
            cmd.arg("--allow-port").arg(p.to_string());
        }
        cmd.args(&self.extra_args);
        if !self
            .extra_args
            .iter()
            .any(|a| a.starts_with("--peer-addr") || a.starts_with("--no-peers"))
        {
            // A lone test daemon: a private peer port on loopback, a DHT
            // that never reaches the public routers, no multicast.
            cmd.args([
                "--peer-addr",
                "127.0.0.1:0",
                "--dht-bootstrap",
                "none",
                "--no-lsd",
            ]);
        }
        cmd.env_remove("http_proxy")
            .env_remove("https_proxy")
            .env_remove("HTTP_PROXY")
            .env_remove("HTTPS_PROXY")
            .env_remove("all_proxy")
            .env_remove("ALL_PROXY")
            .env("RUST_BACKTRACE", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        {
            let mut log = self.log.lock().unwrap();
            let _ = writeln!(log, "==== e2e: starting {cmd:?}");
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot start {}: {e}", binary()))?;
        let (tx, rx) = mpsc::channel::<SocketAddr>();
        let stdout = child.stdout.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut reader = BufReader::new(stdout);
            let mut line = Vec::new();
            loop {
                line.clear();
                match reader.read_until(b'\n', &mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {}
                }
                let text = String::from_utf8_lossy(&line);
                if let Some(rest) = text.trim().strip_prefix(READY_PREFIX) {
                    if let Ok(addr) = rest.trim_end_matches('/').parse::<SocketAddr>() {
                        let _ = tx.send(addr);
                    }
                }
                let _ = log
                    .lock()
                    .unwrap()
                    .write_all(format!("[stdout] {text}").as_bytes());
            }
        });
        let stderr = child.stderr.take().unwrap();
        let log = self.log.clone();
        std::thread::spawn(move || {
            let mut r = stderr;
            let mut buf = [0u8; 16 * 1024];
            loop {
                match r.read(&mut buf) {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        let _ = log.lock().unwrap().write_all(&buf[..n]);
                    }
                }
            }
        });
        let start = Instant::now();
        loop {
            match rx.recv_timeout(Duration::from_millis(50)) {
                Ok(addr) => {
                    self.addr = addr;
                    self.child = Some(child);
                    return Ok(());
                }
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if let Ok(Some(status)) = child.try_wait() {
                        return Err(format!("daemon exited before it was ready: {status}"));
                    }
                    if start.elapsed() > READY_TIMEOUT {
                        let _ = child.kill();
                        let _ = child.wait();
                        return Err(format!(
                            "daemon did not print {READY_PREFIX:?}... within {READY_TIMEOUT:?}"
                        ));
                    }
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => {
                    let _ = child.kill();
                    let status = child.wait();
                    return Err(format!(
                        "daemon closed stdout before it was ready ({status:?})"
                    ));
                }
            }
        }
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }

    pub fn is_running(&mut self) -> bool {
        match self.child.as_mut() {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    fn signal(&mut self, sig: libc::c_int) {
        if let Some(child) = self.child.as_ref() {
            // SAFETY: plain kill(2) on our own child's pid.
            unsafe {
                libc::kill(child.id() as libc::pid_t, sig);
            }
        }
    }

    /// SIGKILL, then reap.
    pub fn kill9(&mut self) {
        self.signal(libc::SIGKILL);
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
        let _ = writeln!(self.log.lock().unwrap(), "==== e2e: sent SIGKILL");
    }

    /// SIGTERM and wait up to `timeout` for a clean exit; returns the exit
    /// status, or None if it had to be killed.
    pub fn stop(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let _ = writeln!(self.log.lock().unwrap(), "==== e2e: sending SIGTERM");
        self.signal(libc::SIGTERM);
        let mut child = self.child.take()?;
        let start = Instant::now();
        loop {
            if let Ok(Some(st)) = child.try_wait() {
                return Some(st);
            }
            if start.elapsed() > timeout {
                let _ = child.kill();
                let _ = child.wait();
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Starts the daemon again on the same data folder and the same port
    /// (retrying the bind for a few seconds while the old socket goes away).
    pub fn restart(&mut self) {
        if self.child.is_some() {
            self.kill9();
        }
        let listen = self.addr.to_string();
        let start = Instant::now();
        loop {
            match self.launch(&listen) {
                Ok(()) => return,
                Err(e) if start.elapsed() < Duration::from_secs(10) => {
                    let _ = writeln!(
                        self.log.lock().unwrap(),
                        "==== e2e: restart failed ({e}); retrying"
                    );
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!(
                    "restart on {listen}: {e}\n---- daemon log:\n{}",
                    self.log_text()
                ),
            }
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    /// Waits (up to 30 s) until no download is on its way into the store:
    /// apt gets a file's last byte before the daemon fsyncs and commits
    /// it, so a check of the store right after apt is done races with
    /// that. True once `tmp/` is empty and the daemon counts no file being
    /// stored (`storing`: that ends after the file's row, the pruning and
    /// the swarm's record of it).
    #[must_use]
    pub fn wait_committed(&self) -> bool {
        let tmp = self.data_dir.join("tmp");
        crate::support::wait_until(Duration::from_secs(30), || {
            std::fs::read_dir(&tmp).is_ok_and(|mut rd| rd.next().is_none())
                && self.status_json()["storing"].as_u64() == Some(0)
        })
    }

    /// Files under the data folder, recursively, with sizes.
    pub fn data_files(&self) -> Vec<(PathBuf, u64)> {
        fn walk(dir: &Path, out: &mut Vec<(PathBuf, u64)>) {
            let Ok(rd) = std::fs::read_dir(dir) else {
                return;
            };
            for e in rd.flatten() {
                let p = e.path();
                if p.is_dir() {
                    walk(&p, out);
                } else if let Ok(m) = e.metadata() {
                    out.push((p, m.len()));
                }
            }
        }
        let mut v = Vec::new();
        walk(&self.data_dir, &mut v);
        v.sort();
        v
    }

    /// GET /status.json, asserting 200 and JSON.
    pub fn status_json(&self) -> serde_json::Value {
        let r = super::http_get(self.addr, "/status.json", &[]);
        assert_eq!(r.status, 200, "/status.json: {}", r.summary());
        serde_json::from_slice(&r.body)
            .unwrap_or_else(|e| panic!("/status.json is not JSON ({e}): {}", r.summary()))
    }

    /// The peer address the daemon reports in `/status.json`
    /// (`swarm.peer_addr`: TCP for peers, UDP for the DHT).
    pub fn peer_addr(&self) -> SocketAddr {
        let v = self.status_json();
        v["swarm"]["peer_addr"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .unwrap_or_else(|| panic!("no swarm.peer_addr in /status.json: {v:#}"))
    }

    /// The `/status.json` entry of the torrent registered for `index_path`
    /// (e.g. `dists/stable/main/binary-amd64/Packages`), if any.
    pub fn torrent_status(&self, index_path: &str) -> Option<serde_json::Value> {
        let v = self.status_json();
        v["torrents"]
            .as_array()?
            .iter()
            .find(|t| t["index_path"] == index_path)
            .cloned()
    }

    /// URL-prefix-mode request target for a repository path on `mirror`.
    pub fn prefix_target(mirror: &super::mirror::Mirror, repo_path: &str) -> String {
        format!(
            "/{}{}/{}",
            mirror.host_port(),
            mirror.prefix(),
            super::apt_quote(repo_path)
        )
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if self.child.is_some() {
            self.signal(libc::SIGKILL);
            if let Some(mut c) = self.child.take() {
                let _ = c.wait();
            }
        }
        if std::thread::panicking() {
            let log = self.log_text();
            let lines: Vec<&str> = log.lines().collect();
            let skip = lines.len().saturating_sub(300);
            eprintln!(
                "---- daemon {} log ({}; last {} lines):",
                self.addr,
                self.log_path.display(),
                lines.len() - skip
            );
            for l in &lines[skip..] {
                eprintln!("  {l}");
            }
            if std::env::var_os("DEBTORRENT_E2E_KEEP").is_some() {
                let p = std::mem::replace(
                    &mut self._tmp,
                    tempfile::Builder::new()
                        .prefix("dt-e2e-dummy.")
                        .tempdir()
                        .unwrap(),
                );
                eprintln!("---- kept daemon folder {}", p.keep().display());
            }
        }
    }
}
