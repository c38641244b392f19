//! Issue 3, tests 7 to 9 over raw TCP: pipelining (10 requests on one
//! connection answered in order), hostile requests (traversal, open proxy,
//! CONNECT, huge URL and headers), and Range / If-Range / If-Modified-Since /
//! HEAD on a cached package.

use std::time::{Duration, Instant};

use crate::support::apt::{AptClient, Mode};
use crate::support::daemon::Daemon;
use crate::support::mirror::{Fault, Mirror};
use crate::support::repo::repo;
use crate::support::{raw_exchange, sha256_hex, updated, RawConn, Updated};

#[test]
fn pipelined_requests_answered_in_order() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let daemon = Daemon::start(&[mirror.port()]);
    let apt = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    let cached = ["fill0", "fill1", "fill2", "fill3", "fill4", "fill5", "tiny"];
    apt.update_and_fetch(repo, &cached, "caching");

    // Uncached ones come slowly from the mirror; `small` (53 KB) takes ~2.6 s.
    mirror.set_pool_fault(Some(Fault::Throttle(20_000)));
    let order = [
        "small",
        "fill0",
        "fill1",
        "libfoo1",
        "fill2",
        "fill3",
        "tiny",
        "fill4",
        "libstd++x1",
        "fill5",
    ];
    let mut batch = String::new();
    for name in order {
        let p = repo.package(name);
        batch.push_str(&format!(
            "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: e2e-pipeline\r\n\r\n",
            Daemon::prefix_target(&mirror, &p.pool_path),
            daemon.addr()
        ));
    }
    let start = Instant::now();
    let mut conn = RawConn::connect(daemon.addr());
    conn.set_read_timeout(Duration::from_secs(30));
    conn.send(batch.as_bytes()).unwrap();
    for (i, name) in order.iter().enumerate() {
        let p = repo.package(name);
        let r = conn.read_response(false).unwrap_or_else(|e| {
            panic!(
                "response {} ({name}) after {:?}: {e}",
                i + 1,
                start.elapsed()
            )
        });
        assert_eq!(
            r.status,
            200,
            "response {} ({name}): {}",
            i + 1,
            r.summary()
        );
        assert_eq!(
            r.body.len() as u64,
            p.size,
            "response {} ({name}) length",
            i + 1
        );
        assert_eq!(
            sha256_hex(&r.body),
            p.sha256,
            "response {} is not {name} (out of order?)",
            i + 1
        );
    }
    let elapsed = start.elapsed();
    eprintln!("10 pipelined responses in {elapsed:?}");
    assert!(elapsed < Duration::from_secs(30));

    // The uncached ones behind the slow one were fetched at once, not after it.
    let log = mirror.log();
    let at = |name: &str| {
        let f = &repo.package(name).file_name;
        log.iter()
            .filter(|e| crate::support::mirror::percent_decode(&e.target).ends_with(f.as_str()))
            .map(|e| e.at_ms)
            .max()
            .unwrap_or_else(|| panic!("the mirror never saw {name}:\n{}", mirror.log_text()))
    };
    let (slow, later) = (at("small"), at("libstd++x1").max(at("libfoo1")));
    assert!(
        later < slow + 1500,
        "the daemon fetched the pipelined requests one after another (small at {slow} ms, the \
         last one behind it at {later} ms); it should start them all at once:\n{}",
        mirror.log_text()
    );
}

/// Must be an error status in 400..=499 (or one of `allowed`), and must not
/// carry content from outside the mirror.
fn assert_refused(daemon: &Daemon, what: &str, request: &[u8], allowed: &[u16]) -> u16 {
    let r = raw_exchange(daemon.addr(), request, false)
        .unwrap_or_else(|e| panic!("{what}: no HTTP answer: {e}"));
    let ok = if allowed.is_empty() {
        (400..500).contains(&r.status)
    } else {
        allowed.contains(&r.status)
    };
    assert!(
        ok,
        "{what}: expected {}, got {}",
        if allowed.is_empty() {
            "4xx".to_string()
        } else {
            format!("{allowed:?}")
        },
        r.summary()
    );
    let body = String::from_utf8_lossy(&r.body);
    assert!(
        !body.contains("root:x:0:0") && !body.contains("/bin/bash"),
        "{what}: leaked a host file: {}",
        r.summary()
    );
    r.status
}

#[test]
fn hostile_requests_are_refused() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let daemon = Daemon::start(&[mirror.port()]);
    let hp = mirror.host_port();
    let host = format!("Host: {}\r\n", daemon.addr());
    let get = |target: &str| {
        format!("GET {target} HTTP/1.1\r\n{host}Connection: close\r\n\r\n").into_bytes()
    };

    let traversal = [
        format!("/{hp}/debian/../../../etc/passwd"),
        format!("/{hp}/debian/dists/stable/../../../../../../etc/passwd"),
        format!("/{hp}/debian/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
        format!("/{hp}/debian/%2E%2E/%2E%2E/%2E%2E/etc/passwd"),
        format!("/{hp}/debian/..%2f..%2f..%2fetc%2fpasswd"),
        format!("/{hp}/debian/%2e%2e%2f%2e%2e%2f%2e%2e%2fetc%2fpasswd"),
        format!("/{hp}/debian/pool/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
        format!("/{hp}/debian/..\\..\\..\\etc\\passwd"),
        "/../../../../etc/passwd".to_string(),
        "/etc/passwd".to_string(),
        "/%2e%2e/%2e%2e/etc/passwd".to_string(),
        format!("http://{hp}/debian/../../../etc/passwd"),
        format!("http://{hp}/debian/%2e%2e/%2e%2e/%2e%2e/etc/passwd"),
    ];
    for t in &traversal {
        assert_refused(&daemon, &format!("traversal GET {t}"), &get(t), &[]);
    }

    // Open-proxy attempts: ports that are not allowed.
    assert_refused(
        &daemon,
        "absolute-form to port 22",
        &get("http://127.0.0.1:22/"),
        &[403],
    );
    assert_refused(
        &daemon,
        "absolute-form to port 25",
        &get("http://127.0.0.1:25/etc/passwd"),
        &[403],
    );
    assert_refused(
        &daemon,
        "prefix-form to port 22",
        &get("/127.0.0.1:22/"),
        &[403],
    );
    assert_refused(
        &daemon,
        "prefix-form to [::1]:22",
        &get("/[::1]:22/"),
        &[400, 403],
    );
    assert_refused(
        &daemon,
        "userinfo trick",
        &get(&format!("/{hp}@127.0.0.1:22/")),
        &[],
    );
    assert_refused(
        &daemon,
        "userinfo trick, absolute",
        &get(&format!("http://{hp}@127.0.0.1:22/")),
        &[],
    );
    assert_refused(
        &daemon,
        "CONNECT",
        b"CONNECT 127.0.0.1:443 HTTP/1.1\r\nHost: 127.0.0.1:443\r\n\r\n",
        &[403, 405],
    );
    assert_refused(
        &daemon,
        "CONNECT to the mirror",
        format!("CONNECT {hp} HTTP/1.1\r\nHost: {hp}\r\n\r\n").as_bytes(),
        &[403, 405],
    );
    assert_refused(&daemon, "POST", format!("POST /{hp}/debian/dists/stable/InRelease HTTP/1.1\r\n{host}Content-Length: 0\r\nConnection: close\r\n\r\n").as_bytes(), &[403, 405]);

    // Size bounds.
    let long = format!("/{hp}/debian/{}", "a".repeat(64 * 1024));
    assert_refused(&daemon, "64 KiB URL", &get(&long), &[400, 414, 431]);
    let big_header = format!(
        "GET /{hp}/debian/dists/stable/InRelease HTTP/1.1\r\n{host}X-Pad: {}\r\nConnection: close\r\n\r\n",
        "b".repeat(128 * 1024)
    );
    assert_refused(
        &daemon,
        "128 KiB header",
        big_header.as_bytes(),
        &[400, 431],
    );

    // Nothing of this reached the mirror as a traversal.
    for e in mirror.log() {
        let decoded = crate::support::mirror::percent_decode(&e.target);
        assert!(
            !decoded.contains("..") && !decoded.contains("passwd"),
            "forwarded to the mirror: {e}"
        );
    }
    // And the daemon still works afterwards.
    daemon.status_json();
}

#[test]
fn range_if_range_ims_and_head_on_a_cached_package() {
    let repo = repo();
    let mirror = Mirror::start(&repo.root);
    let daemon = Daemon::start(&[mirror.port()]);
    let apt = AptClient::new(repo, &mirror, Mode::Prefix(daemon.addr()));
    apt.update_and_fetch(repo, &["small", "tiny"], "caching");
    let p = repo.package("small");
    let data = repo.read(p);
    let size = p.size;
    let target = Daemon::prefix_target(&mirror, &p.pool_path);
    let before = mirror.stats();
    let get = |extra: &[(&str, &str)]| crate::support::http_get(daemon.addr(), &target, extra);

    let full = get(&[]);
    assert_eq!(full.status, 200, "{}", full.summary());
    assert_eq!(
        full.header("content-length"),
        Some(size.to_string().as_str())
    );
    assert_eq!(sha256_hex(&full.body), p.sha256);
    let lm = full
        .header("last-modified")
        .expect("no Last-Modified on a cached package")
        .to_string();
    assert!(
        crate::support::parse_http_date(&lm).is_some(),
        "Last-Modified is not an HTTP date: {lm}"
    );

    let r = get(&[("Range", "bytes=100-199")]);
    assert_eq!(r.status, 206, "{}", r.summary());
    assert_eq!(
        r.header("content-range"),
        Some(format!("bytes 100-199/{size}").as_str())
    );
    assert_eq!(r.body, &data[100..200]);

    let r = get(&[("Range", "bytes=1000-")]);
    assert_eq!(r.status, 206, "{}", r.summary());
    assert_eq!(r.body, &data[1000..]);

    let r = get(&[("Range", "bytes=-100")]);
    assert_eq!(r.status, 206, "{}", r.summary());
    assert_eq!(r.body, &data[data.len() - 100..]);

    let r = get(&[("Range", &format!("bytes={size}-"))]);
    assert_eq!(r.status, 416, "{}", r.summary());

    // If-Range with the current Last-Modified: the range; with another date: all.
    let r = get(&[("Range", "bytes=100-199"), ("If-Range", &lm)]);
    assert_eq!(r.status, 206, "{}", r.summary());
    assert_eq!(r.body, &data[100..200]);
    let r = get(&[
        ("Range", "bytes=100-199"),
        ("If-Range", "Thu, 01 Jan 1970 00:00:00 GMT"),
    ]);
    assert_eq!(r.status, 200, "If-Range with a stale date: {}", r.summary());
    assert_eq!(sha256_hex(&r.body), p.sha256);

    let r = get(&[("If-Modified-Since", &lm)]);
    assert_eq!(r.status, 304, "{}", r.summary());
    assert!(r.body.is_empty());
    let r = get(&[("If-Modified-Since", "Thu, 01 Jan 1970 00:00:00 GMT")]);
    assert_eq!(r.status, 200, "{}", r.summary());
    assert_eq!(sha256_hex(&r.body), p.sha256);

    // HEAD then GET on one connection: HEAD has the length and no body, so
    // the GET's answer follows at once.
    let mut conn = RawConn::connect(daemon.addr());
    let req = format!(
        "HEAD {target} HTTP/1.1\r\nHost: {0}\r\n\r\nGET {target} HTTP/1.1\r\nHost: {0}\r\nRange: bytes=0-9\r\n\r\n",
        daemon.addr()
    );
    conn.send(req.as_bytes()).unwrap();
    let h = conn.read_response(true).unwrap();
    assert_eq!(h.status, 200, "{}", h.summary());
    assert_eq!(
        h.header("content-length"),
        Some(size.to_string().as_str()),
        "HEAD: {}",
        h.summary()
    );
    let g = conn.read_response(false).unwrap();
    assert_eq!(
        g.status,
        206,
        "GET after HEAD (did HEAD send a body?): {}",
        g.summary()
    );
    assert_eq!(g.body, &data[..10]);

    // Proxy mode (absolute form) gives the same.
    let abs = format!(
        "http://{}/debian/{}",
        mirror.host_port(),
        crate::support::apt_quote(&p.pool_path)
    );
    let r = crate::support::http_get(daemon.addr(), &abs, &[("Range", "bytes=100-199")]);
    assert_eq!(r.status, 206, "absolute form: {}", r.summary());
    assert_eq!(r.body, &data[100..200]);

    assert_eq!(
        mirror.stats().pool_bytes,
        before.pool_bytes,
        "a cached package was fetched from the mirror again"
    );
}

#[test]
fn concurrent_requests_share_one_upstream_download() {
    let Updated {
        repo,
        mirror,
        daemon,
        apt: _apt,
    } = updated();

    // `small` (53 KB) takes about a second at 50 KB/s; four clients ask at once.
    let p = repo.package("small");
    mirror.set_pool_fault(Some(Fault::Throttle(50_000)));
    let target = Daemon::prefix_target(&mirror, &p.pool_path);
    let addr = daemon.addr();
    let handles: Vec<_> = (0..4)
        .map(|i| {
            let target = target.clone();
            std::thread::spawn(move || {
                std::thread::sleep(Duration::from_millis(100 * i));
                crate::support::http_get(addr, &target, &[])
            })
        })
        .collect();
    for h in handles {
        let r = h.join().unwrap();
        assert_eq!(r.status, 200, "{}", r.summary());
        assert_eq!(sha256_hex(&r.body), p.sha256);
    }
    assert_eq!(
        mirror.body_requests_for(&p.file_name),
        1,
        "four concurrent clients caused more than one upstream download:\n{}",
        mirror.log_text()
    );
}
