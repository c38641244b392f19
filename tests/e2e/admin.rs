//! What an admin sees (issue 15): the status page rendered by Debian's
//! real Chromium (headless) against daemons that served real apt, the
//! log a daemon writes to a file, and `debtorrent status`.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::support::apt::{AptClient, Mode};
use crate::support::daemon::{binary, Daemon};
use crate::support::mirror::{Fault, Mirror};
use crate::support::repo::{repo, BIG};
use crate::support::run_with_timeout;

fn num(v: &Value) -> u64 {
    v.as_u64().unwrap_or(0)
}

fn wait_status(d: &Daemon, timeout: Duration, what: &str, cond: impl Fn(&Value) -> bool) -> Value {
    let start = Instant::now();
    loop {
        let v = d.status_json();
        if cond(&v) {
            return v;
        }
        assert!(
            start.elapsed() < timeout,
            "timed out after {timeout:?} waiting for {what}; last /status.json:\n{v:#}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Debian's chromium, if installed.
fn chromium() -> Option<PathBuf> {
    ["/usr/bin/chromium", "/usr/bin/chromium-browser"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.is_file())
}

/// Runs headless Chromium at 1280 px on `url` with `args` (a screenshot
/// or the DOM), in its own profile folder, never through a proxy.
fn chromium_run(
    chrome: &Path,
    profile: &Path,
    url: &str,
    args: &[&str],
) -> crate::support::CmdOutput {
    let mut cmd = Command::new(chrome);
    cmd.args([
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-proxy-server",
        "--no-first-run",
        "--hide-scrollbars",
        "--window-size=1280,1150",
        // Long enough for the page's first refresh from /status.json.
        "--virtual-time-budget=3000",
    ])
    .arg(format!("--user-data-dir={}", profile.display()))
    .args(args)
    .arg(url)
    .env_remove("http_proxy")
    .env_remove("https_proxy")
    .env_remove("HTTP_PROXY")
    .env_remove("HTTPS_PROXY");
    run_with_timeout(cmd, Duration::from_secs(90))
}

/// The page's text content of the element with `id` in a dumped DOM.
fn text_of(dom: &str, id: &str) -> String {
    let Some(start) = dom.find(&format!("id=\"{id}\"")) else {
        return String::new();
    };
    let rest = &dom[start..];
    let Some(gt) = rest.find('>') else {
        return String::new();
    };
    let body = &rest[gt + 1..];
    let end = body.find("</").unwrap_or(body.len());
    body[..end].trim().to_string()
}

/// The rows of one table's body in a dumped DOM (the text between
/// `<tbody>` and `</tbody>` after `id="{table}"`).
fn tbody_of<'a>(dom: &'a str, table: &str) -> &'a str {
    let Some(start) = dom.find(&format!("id=\"{table}\"")) else {
        return "";
    };
    let rest = &dom[start..];
    let (Some(a), Some(b)) = (rest.find("<tbody>"), rest.find("</tbody>")) else {
        return "";
    };
    if b < a {
        return "";
    }
    &rest[a..b]
}

/// Two daemons in a private swarm: client 1 fetches the small packages
/// through daemon 1 (from the mirror), client 2 the same through daemon 2
/// (from daemon 1, a peer). Then the mirror slows to 300 KB/s and client 2
/// fetches the 54 MB package: a live transfer. Chromium renders daemon 2's
/// page at 1280 px: a screenshot for people (target/tmp/status-page.png)
/// and the DOM for the asserts (saved share, live transfer, peer row).
#[test]
fn status_page_in_headless_chromium_shows_saved_share_and_live_transfers() {
    let Some(chrome) = chromium() else {
        eprintln!(
            "SKIPPED status_page_in_headless_chromium...: Debian's `chromium` is not installed \
             (apt-get install chromium; tests/run.sh installs it)"
        );
        return;
    };
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let small = repo.small_names();
    let d1 = Daemon::start_peer("127.0.0.151", &[mirror.port()], None, &[]);
    let d2 = Daemon::start_peer("127.0.0.152", &[mirror.port()], Some(d1.peer_addr()), &[]);

    let c1 = AptClient::new(repo, &mirror, Mode::Prefix(d1.addr()));
    c1.update_and_fetch(repo, &small, "client 1 through daemon 1");
    let c2 = AptClient::new(repo, &mirror, Mode::Prefix(d2.addr()));
    c2.update_and_fetch(repo, &small, "client 2 through daemon 2");
    let st = d2.status_json();
    assert!(
        num(&st["saved"]["total_bytes"]) > 0
            && st["saved"]["total_share"].as_f64().unwrap_or(0.0) > 0.0,
        "daemon 2 took nothing from peers: {st:#}"
    );

    // A live transfer: the big package from a slow mirror.
    mirror.set_pool_fault(Some(Fault::Throttle(300_000)));
    let mut apt = c2.spawn(&["install", "--download-only", "-y", "-q", BIG]);
    let big = repo.package(BIG);
    wait_status(
        &d2,
        Duration::from_secs(60),
        "a live transfer with bytes",
        |v| {
            v["transfers"].as_array().into_iter().flatten().any(|t| {
                t["path"]
                    .as_str()
                    .is_some_and(|p| p.ends_with(&big.file_name))
                    && num(&t["received"]) > 0
            })
        },
    );

    let out_dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    let shot = out_dir.join("status-page.png");
    let _ = std::fs::remove_file(&shot);
    let profile = tempfile::tempdir().expect("temp dir");
    let url = format!("{}/", d2.url().trim_end_matches('/'));
    let t0 = Instant::now();
    let dom = chromium_run(&chrome, profile.path(), &url, &["--dump-dom"]);
    let shot_run = chromium_run(
        &chrome,
        profile.path(),
        &url,
        &[&format!("--screenshot={}", shot.display())],
    );
    let took = t0.elapsed();
    let _ = apt.kill();
    let _ = apt.wait();
    mirror.set_pool_fault(None);

    assert!(
        dom.success(),
        "chromium --dump-dom failed:\n{}",
        dom.combined()
    );
    assert!(
        shot_run.success(),
        "chromium --screenshot failed:\n{}",
        shot_run.combined()
    );
    let png = std::fs::read(&shot).unwrap_or_default();
    assert!(
        png.len() > 10_000 && png.starts_with(b"\x89PNG"),
        "no screenshot at {} ({} bytes)",
        shot.display(),
        png.len()
    );
    eprintln!(
        "status page of daemon 2: screenshot {} ({} bytes), chromium {took:.1?}",
        shot.display(),
        png.len()
    );
    let dom = dom.stdout;
    // The headline: a share above 0 % and the bytes peers delivered.
    let share = text_of(&dom, "saved-share");
    let pct: f64 = share.trim_end_matches('%').trim().parse().unwrap_or(0.0);
    assert!(
        pct > 0.0 && share.ends_with('%'),
        "saved share {share:?} in the rendered page:\n{dom}"
    );
    assert!(
        dom.contains("from peers instead of the mirror"),
        "saved bytes line missing:\n{dom}"
    );
    // The live transfer, with its size and sources.
    let transfers = tbody_of(&dom, "transfers");
    assert!(
        transfers.contains("class=\"transfer\"") && transfers.contains(&big.file_name),
        "live transfers do not show {}:\n{transfers}",
        big.file_name
    );
    assert!(
        transfers.contains("MiB") && (transfers.contains("mirror") || transfers.contains("peers")),
        "live transfer without size or source:\n{transfers}"
    );
    // Daemon 1 in the peer table; the chart drew the bytes.
    let peers = tbody_of(&dom, "peers");
    assert!(
        peers.contains(&d1.peer_addr().ip().to_string()),
        "peer 127.0.0.151 not in the peer table:\n{peers}"
    );
    assert!(dom.contains("<rect"), "the chart drew no bar:\n{dom}");
}

/// A daemon whose output goes to a file (the e2e kit's log) writes plain
/// text, no ANSI escapes, and one info line per apt request with its path,
/// size, bytes by source and time: the first fetch of `small` from the
/// mirror, the second from the store.
#[test]
fn log_in_a_file_is_plain_with_one_line_per_apt_request() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let d = Daemon::start(&[mirror.port()]);
    let small = repo.package("small");
    for k in 1..=2 {
        let c = AptClient::new(repo, &mirror, Mode::Prefix(d.addr()));
        c.update_and_fetch(repo, &["small"], &format!("client {k}"));
        // The second client's small comes from the store once the first
        // one's is in (apt got its last byte before the commit).
        assert!(d.wait_committed(), "downloads still in tmp/ after 30 s");
    }
    // The line is written when the response ends; give the last a moment.
    let start = Instant::now();
    let lines = loop {
        let log = d.log_text();
        let lines: Vec<String> = log
            .lines()
            .filter(|l| l.contains("apt request") && l.contains(&small.file_name))
            .map(str::to_string)
            .collect();
        if lines.len() >= 2 || start.elapsed() > Duration::from_secs(10) {
            break lines;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let log = d.log_text();
    assert!(
        !log.as_bytes().contains(&0x1b),
        "ESC bytes in a log written to a file:\n{log}"
    );
    assert_eq!(lines.len(), 2, "want 2 request lines for small:\n{log}");
    let size = small.size;
    assert!(
        lines[0].contains(" INFO ")
            && lines[0].contains(&format!("size={size}"))
            && lines[0].contains(&format!("from_mirror={size}"))
            && lines[0].contains("from_peers=0")
            && lines[0].contains("from_store=0")
            && lines[0].contains("status=200")
            && lines[0].contains(" ms="),
        "first fetch (mirror): {}",
        lines[0]
    );
    assert!(
        lines[1].contains(&format!("from_store={size}")) && lines[1].contains("from_mirror=0"),
        "second fetch (store): {}",
        lines[1]
    );
    // Every apt request logs once: the index requests too.
    assert!(
        log.lines()
            .any(|l| l.contains("apt request") && l.contains("InRelease")),
        "no request line for InRelease:\n{log}"
    );
    assert!(
        !log.lines()
            .any(|l| l.contains("apt request") && l.contains("status.json")),
        "the status page's own requests are not apt requests:\n{log}"
    );
}

/// `debtorrent status` against a running daemon: the summary (address
/// from --listen, then from a config file), `--json`, and a clear error
/// when nothing listens.
#[test]
fn status_command_reads_the_running_daemon() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let d = Daemon::start(&[mirror.port()]);
    let c = AptClient::new(repo, &mirror, Mode::Prefix(d.addr()));
    c.update_and_fetch(repo, &["small", "tiny"], "client");
    let addr = d.addr().to_string();
    // The store commits each file after apt got its last byte.
    assert!(d.wait_committed(), "downloads still in tmp/ after 30 s");

    let run = |args: &[&str]| {
        let mut cmd = Command::new(binary());
        cmd.arg("status")
            .args(args)
            .env_remove("DEBTORRENT_LISTEN")
            .env_remove("DEBTORRENT_CONFIG")
            .env_remove("http_proxy")
            .env_remove("HTTP_PROXY");
        run_with_timeout(cmd, Duration::from_secs(30))
    };
    let out = run(&["--listen", &addr]);
    assert!(out.success(), "status --listen: {}", out.combined());
    for want in [
        "Peers saved the mirror",
        "From the mirror",
        "Disk",
        "Discovery",
        &format!("at http://{addr}"),
    ] {
        assert!(
            out.stdout.contains(want),
            "{want:?} missing:\n{}",
            out.stdout
        );
    }
    let st = d.status_json();
    let files = num(&st["stored_pieces"]);
    assert!(files >= 2, "stored files: {st:#}");
    assert!(
        out.stdout.contains(&format!("{files} files")),
        "summary does not show the {files} stored files:\n{}",
        out.stdout
    );

    let conf = tempfile::NamedTempFile::new().expect("temp file");
    std::fs::write(
        conf.path(),
        format!("listen = \"{addr}\"\ncache-size = \"1G\"\n"),
    )
    .expect("write config");
    let out = run(&["--config", &conf.path().display().to_string(), "--json"]);
    assert!(out.success(), "status --config --json: {}", out.combined());
    let v: Value = serde_json::from_str(&out.stdout)
        .unwrap_or_else(|e| panic!("--json is not JSON ({e}):\n{}", out.stdout));
    assert_eq!(
        v["listen"].as_str(),
        Some(format!("http://{addr}").as_str())
    );
    assert!(num(&v["bytes_from_mirror"]) > 0, "{v:#}");

    // Nothing listening: an error that says where it looked.
    let free = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let gone = free.local_addr().expect("addr").to_string();
    drop(free);
    let out = run(&["--listen", &gone]);
    assert!(
        !out.success(),
        "status against nothing succeeded: {}",
        out.combined()
    );
    assert!(
        out.stderr.contains(&gone) && out.stderr.contains("is the daemon running"),
        "error message: {}",
        out.stderr
    );
}
