//! BEP 14 local service discovery with real multicast, inside a network
//! namespace the test creates (multicast is not loopback traffic, so it
//! never leaves that namespace): two daemons with no DHT and no tracker
//! find each other through LSD alone, and the second fetches a package
//! from the first.
//!
//! The namespace is held by a `sleep` started with `unshare -n`; every
//! other process (a python3 http.server as the mirror, the daemons, curl)
//! joins it with `nsenter`. Where namespaces cannot be created (no
//! CAP_SYS_ADMIN), the test says so and returns.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::support::daemon::binary;
use crate::support::repo::repo;

/// A process in the namespace, killed on drop.
struct Proc(Child);

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

struct Netns {
    holder: Proc,
}

impl Netns {
    fn create() -> Option<Netns> {
        let child = Command::new("unshare")
            .args(["-n", "sleep", "600"])
            .stdin(Stdio::null())
            .spawn()
            .ok()?;
        let ns = Netns {
            holder: Proc(child),
        };
        // Wait until the holder is in its own namespace.
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
        for args in [
            &["ip", "link", "set", "lo", "up"][..],
            &["ip", "link", "set", "lo", "multicast", "on"],
            &["ip", "route", "add", "239.0.0.0/8", "dev", "lo"],
        ] {
            let ok = ns.cmd(args).status().ok()?.success();
            assert!(ok, "{args:?} in the namespace failed");
        }
        Some(ns)
    }

    fn pid(&self) -> u32 {
        self.holder.0.id()
    }

    /// A command run inside the namespace.
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new("nsenter");
        c.args(["-t", &self.pid().to_string(), "-n", "--"])
            .args(args);
        c
    }

    fn spawn(&self, args: &[&str], log: &std::path::Path) -> Proc {
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

    /// GET through curl in the namespace: (HTTP status, body).
    fn get(&self, url: &str) -> (u16, Vec<u8>) {
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

    fn status(&self, daemon: &str) -> serde_json::Value {
        let (code, body) = self.get(&format!("http://{daemon}/status.json"));
        assert_eq!(code, 200, "status of {daemon}");
        serde_json::from_slice(&body).expect("status.json")
    }
}

fn wait_for(
    what: &str,
    timeout: Duration,
    mut cond: impl FnMut() -> bool,
    context: impl Fn() -> String,
) {
    let start = Instant::now();
    while !cond() {
        assert!(
            start.elapsed() < timeout,
            "{what}: not within {timeout:?}\n{}",
            context()
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

#[test]
fn lsd_finds_a_peer_on_the_lan_without_dht_or_tracker() {
    let Some(ns) = Netns::create() else {
        eprintln!(
            "lsd test: cannot create a network namespace here (needs root/CAP_SYS_ADMIN); not run"
        );
        return;
    };
    let repo = repo();
    let tmp = tempfile::tempdir().expect("tempdir");
    let mirror_port = "28080";
    let _mirror = ns.spawn(
        &[
            "python3",
            "-m",
            "http.server",
            "--bind",
            "127.0.0.1",
            "--directory",
            repo.root.to_str().expect("utf-8 path"),
            mirror_port,
        ],
        &tmp.path().join("mirror.log"),
    );
    let daemon = |ip: &str, name: &str| {
        let data = tmp.path().join(name);
        let listen = format!("{ip}:9988");
        let peer = format!("{ip}:6881");
        let p = ns.spawn(
            &[
                binary(),
                "serve",
                "--listen",
                &listen,
                "--peer-addr",
                &peer,
                "--data-dir",
                data.to_str().expect("utf-8 path"),
                "--no-dht",
                "--allow-port",
                mirror_port,
                "--log-level",
                "debug",
            ],
            &tmp.path().join(format!("{name}.log")),
        );
        (p, listen)
    };
    let (_a, a) = daemon("127.0.0.71", "a");
    let (_b, b) = daemon("127.0.0.72", "b");
    let log_of = |name: &str| {
        std::fs::read_to_string(tmp.path().join(format!("{name}.log"))).unwrap_or_default()
    };
    let lsd_lines = || {
        ["a", "b"]
            .iter()
            .map(|n| {
                let text: String = log_of(n)
                    .lines()
                    .filter(|l| l.contains("lsd") || l.contains("LSD") || l.contains("peer"))
                    .map(|l| format!("  {n}: {l}\n"))
                    .collect();
                text
            })
            .collect::<String>()
    };
    let up = || {
        ns.get(&format!("http://{a}/status.json")).0 == 200
            && ns.get(&format!("http://{b}/status.json")).0 == 200
            && ns
                .get(&format!(
                    "http://127.0.0.1:{mirror_port}/dists/stable/InRelease"
                ))
                .0
                == 200
    };
    wait_for("daemons and mirror up", Duration::from_secs(15), up, || {
        log_of("a")
    });

    // Both register the Packages torrent; A fetches a package first.
    let pkg = repo.package("small");
    let base = format!("127.0.0.1:{mirror_port}");
    for d in [&a, &b] {
        for path in [
            "dists/stable/InRelease",
            "dists/stable/main/binary-amd64/Packages",
        ] {
            let (code, _) = ns.get(&format!("http://{d}/{base}/{path}"));
            assert_eq!(code, 200, "{path} through {d}\n{}", log_of("a"));
        }
    }
    let url = |d: &str| format!("http://{d}/{base}/{}", pkg.pool_path);
    let (code, body) = ns.get(&url(&a));
    assert_eq!(code, 200, "{} through A", pkg.pool_path);
    assert_eq!(body.len() as u64, pkg.size);

    // B learns A's address by LSD and connects.
    let torrent = |st: &serde_json::Value| {
        st["torrents"]
            .as_array()
            .and_then(|v| {
                v.iter()
                    .find(|t| t["index_path"] == "dists/stable/main/binary-amd64/Packages")
                    .cloned()
            })
            .unwrap_or_default()
    };
    // One of them hears the other's LSD message (whichever announced
    // second) and dials it; B ends up connected to A.
    let (a_peer, b_peer) = ("127.0.0.71:6881", "127.0.0.72:6881");
    let lsd_knows = |st: &serde_json::Value, who: &str| {
        torrent(st)["discovered"]["lsd"]
            .as_array()
            .is_some_and(|v| v.iter().any(|x| x == who))
    };
    wait_for(
        "A and B find each other by LSD",
        Duration::from_secs(20),
        || {
            let (sa, sb) = (ns.status(&a), ns.status(&b));
            (lsd_knows(&sa, b_peer) || lsd_knows(&sb, a_peer))
                && torrent(&sb)["peers"]
                    .as_array()
                    .is_some_and(|v| v.iter().any(|p| p["addr"] == a_peer))
        },
        lsd_lines,
    );
    // B's download comes from A.
    let (code, body) = ns.get(&url(&b));
    assert_eq!(code, 200, "{} through B\n{}", pkg.pool_path, log_of("b"));
    assert_eq!(body, std::fs::read(&pkg.local).expect("the .deb"));
    let t = torrent(&ns.status(&b));
    assert!(
        t["bytes_from_peers"].as_u64().unwrap_or(0) >= pkg.size,
        "B did not take the package from A: {t:#}"
    );
    assert_eq!(t["bytes_from_mirror"].as_u64(), Some(0), "{t:#}");
}
