//! Issue 3: a mirror that only speaks HTTPS, reached through the daemon's
//! `/https/HOST:PORT/...` prefix. The mirror is a real nginx with TLS and a
//! throwaway certificate that the daemon trusts through `--ca-file`.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::support::apt::{AptClient, Mode};
use crate::support::daemon::Daemon;
use crate::support::mirror::Mirror;
use crate::support::repo::repo;
use crate::support::{require_tool, run_ok, wait_until};

/// nginx runs as one process (`master_process off`), so killing it leaves
/// no orphaned worker holding the port.
struct Nginx(Child);

impl Drop for Nginx {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[test]
fn https_only_mirror_through_the_prefix() {
    require_tool("nginx", "nginx-light");
    require_tool("openssl", "openssl");
    let repo = repo();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    // A throwaway CA (what --ca-file trusts) and a server certificate it signed.
    let (ca, ca_key) = (d.join("ca.pem"), d.join("ca.key"));
    let (cert, key, csr) = (d.join("cert.pem"), d.join("key.pem"), d.join("cert.csr"));
    let ext = d.join("ext.cnf");
    std::fs::write(
        &ext,
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    let ec = [
        "-newkey",
        "ec",
        "-pkeyopt",
        "ec_paramgen_curve:prime256v1",
        "-nodes",
    ];
    let mut c = Command::new("openssl");
    c.args(["req", "-x509"])
        .args(ec)
        .args(["-days", "1", "-subj", "/CN=debtorrent test CA"]);
    c.arg("-keyout")
        .arg(&ca_key)
        .arg("-out")
        .arg(&ca)
        .stdout(Stdio::null());
    run_ok(c);
    let mut c = Command::new("openssl");
    c.args(["req"]).args(ec).args(["-subj", "/CN=127.0.0.1"]);
    c.arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&csr)
        .stdout(Stdio::null());
    run_ok(c);
    let mut c = Command::new("openssl");
    c.args(["x509", "-req", "-days", "1", "-CAcreateserial"])
        .arg("-in")
        .arg(&csr);
    c.arg("-CA")
        .arg(&ca)
        .arg("-CAkey")
        .arg(&ca_key)
        .arg("-extfile")
        .arg(&ext);
    c.arg("-out").arg(&cert).stdout(Stdio::null());
    run_ok(c);

    let port = free_port();
    let conf = d.join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "daemon off; master_process off; user root; worker_processes 1; pid {d}/nginx.pid; error_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}/cb; proxy_temp_path {d}/px;\n\
               fastcgi_temp_path {d}/fc; uwsgi_temp_path {d}/uw; scgi_temp_path {d}/sc;\n\
               server {{ listen 127.0.0.1:{port} ssl; ssl_certificate {cert}; ssl_certificate_key {key};\n\
                 location /debian/ {{ alias {root}/; }} }} }}\n",
            d = d.display(),
            cert = cert.display(),
            key = key.display(),
            root = repo.root.display(),
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-c")
        .arg(&conf)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    let _nginx = Nginx(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || TcpStream::connect(addr).is_ok()),
        "nginx did not listen: {}",
        std::fs::read_to_string(d.join("error.log")).unwrap_or_default()
    );

    // Without the CA the daemon refuses the mirror's certificate: apt fails.
    let untrusting = Daemon::start(&[port]);
    let placeholder = Mirror::start(&repo.root);
    let apt = AptClient::new(repo, &placeholder, Mode::Prefix(untrusting.addr()));
    let line = |daemon: &Daemon| {
        format!(
            "deb [signed-by={}] http://{}/https/127.0.0.1:{port}/debian stable main\n",
            repo.keyring.display(),
            daemon.addr()
        )
    };
    std::fs::write(apt.root.join("etc/apt/sources.list"), line(&untrusting)).unwrap();
    let out = apt.update();
    assert!(
        !out.success()
            || out.combined().contains("Err:")
            || out.combined().contains("Failed to fetch"),
        "an untrusted certificate was accepted\n{}",
        out.combined()
    );

    let daemon = Daemon::start_with_args(&[port], &["--ca-file", ca.to_str().unwrap()]);
    let apt = AptClient::new(repo, &placeholder, Mode::Prefix(daemon.addr()));
    std::fs::write(apt.root.join("etc/apt/sources.list"), line(&daemon)).unwrap();
    apt.update_and_fetch(repo, &["small", "tiny"], "https mirror");
    let st = daemon.status_json();
    assert!(
        st["torrents"].as_array().is_some_and(|t| t
            .iter()
            .any(|t| t["archive"] == format!("https://127.0.0.1:{port}/debian/"))),
        "the https archive's index became a torrent: {st:#}"
    );
    assert_eq!(
        placeholder.stats().pool_bytes,
        0,
        "nothing came from the plain-HTTP mirror"
    );
    // The second client is served from the store, once the first one's
    // files are in it.
    assert!(
        daemon.wait_committed(),
        "downloads still in tmp/ after 30 s"
    );
    let second = AptClient::new(repo, &placeholder, Mode::Prefix(daemon.addr()));
    std::fs::write(second.root.join("etc/apt/sources.list"), line(&daemon)).unwrap();
    second.update_and_fetch(repo, &["small", "tiny"], "https second client");
    assert!(daemon.status_json()["store_hits"].as_u64().unwrap_or(0) >= 2);
}
