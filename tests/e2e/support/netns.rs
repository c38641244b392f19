//! Network namespaces a test creates, each held by a `sleep` started with
//! `unshare -n`; commands join one with `nsenter`. Every namespace and the
//! links in it disappear when its holder is killed (on drop). Where
//! namespaces cannot be created (no CAP_SYS_ADMIN), [`Netns::create`]
//! returns `None` and the test says so.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A process, killed on drop.
pub struct Proc(pub Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Proc {
    /// Sends SIGTERM and waits up to `timeout` for the exit; true if it
    /// exited in time.
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        let _ = Command::new("kill")
            .args(["-TERM", &self.0.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < timeout {
            if let Ok(Some(_)) = self.0.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        false
    }
}

pub struct Netns {
    holder: Proc,
}

impl Netns {
    /// A new namespace with `lo` up.
    pub fn create() -> Option<Netns> {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "900"])
            .stdin(Stdio::null())
            .spawn()
            .ok()?;
        let ns = Netns {
            holder: Proc(child),
        };
        let me = std::fs::read_link("/proc/self/ns/net").ok()?;
        let start = Instant::now();
        loop {
            let theirs = std::fs::read_link(format!("/proc/{}/ns/net", ns.pid())).ok();
            if theirs.as_ref().is_some_and(|t| *t != me) {
                break;
            }
            if start.elapsed() > Duration::from_secs(5) {
                return None;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        ns.run(&["ip", "link", "set", "lo", "up"]);
        Some(ns)
    }

    pub fn pid(&self) -> u32 {
        self.holder.0.id()
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid().to_string(), "-n", "--"])
            .args(args);
        c
    }

    /// Runs a command in the namespace, asserting success.
    pub fn run(&self, args: &[&str]) {
        let out = self
            .cmd(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{args:?}: {e}"));
        assert!(
            out.status.success(),
            "{args:?} in namespace {} failed: {}{}",
            self.pid(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// A command's stdout (empty on failure).
    pub fn output(&self, args: &[&str]) -> String {
        self.cmd(args)
            .stdin(Stdio::null())
            .output()
            .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
            .unwrap_or_default()
    }

    /// Starts a process in the namespace, its stdout and stderr in `log`.
    pub fn spawn(&self, args: &[&str], log: &std::path::Path) -> Proc {
        let out = std::fs::File::create(log).expect("log file");
        let err = out.try_clone().expect("log file");
        Proc(
            self.cmd(args)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("spawn in the namespace"),
        )
    }

    /// A veth pair: `name` here with `addr` (CIDR), `peer_name` in `peer`
    /// with `peer_addr`; both up.
    pub fn veth(&self, name: &str, addr: &str, peer: &Netns, peer_name: &str, peer_addr: &str) {
        let ok = Command::new("ip")
            .args([
                "link",
                "add",
                name,
                "netns",
                &self.pid().to_string(),
                "type",
                "veth",
                "peer",
                "name",
                peer_name,
                "netns",
                &peer.pid().to_string(),
            ])
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "cannot create veth {name}/{peer_name}");
        self.run(&["ip", "addr", "add", addr, "dev", name]);
        self.run(&["ip", "link", "set", name, "up"]);
        peer.run(&["ip", "addr", "add", peer_addr, "dev", peer_name]);
        peer.run(&["ip", "link", "set", peer_name, "up"]);
    }

    /// GET through curl in the namespace: (HTTP status, body).
    pub fn get(&self, url: &str) -> (u16, Vec<u8>) {
        let out = self
            .cmd(&[
                "curl",
                "-s",
                "-m",
                "20",
                "-o",
                "-",
                "-w",
                "\n%{http_code}",
                url,
            ])
            .output()
            .expect("curl");
        let mut body = out.stdout;
        let cut = body.iter().rposition(|&b| b == b'\n').unwrap_or(0);
        let code = std::str::from_utf8(&body[cut..])
            .ok()
            .and_then(|s| s.trim().parse().ok())
            .unwrap_or(0);
        body.truncate(cut);
        (code, body)
    }

    /// `/status.json` of the daemon whose front end is `addr` (ip:port).
    pub fn status(&self, addr: &str) -> serde_json::Value {
        let (code, body) = self.get(&format!("http://{addr}/status.json"));
        if code != 200 {
            return serde_json::Value::Null;
        }
        serde_json::from_slice(&body).unwrap_or_default()
    }
}

/// Polls `cond` every 200 ms until it holds; panics with `context()` after
/// `timeout`. Returns the time it took.
pub fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) -> Duration {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    start.elapsed()
}
