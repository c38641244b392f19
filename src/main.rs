//! debtorrent: the daemon apt talks to, and its helper commands.
//!
//! Module map (pure = no sockets, no tokio, table-tested):
//! - `config`: every option, defined once (flags, env, file)
//! - `url` (pure): apt request target -> upstream URL, with the safety rules
//! - `release` (pure): Release/InRelease hash lists
//! - `index`: registered torrents per archive; index -> torrent rules (pure part tested)
//! - `http1`: the HTTP/1.1 connection loop (pipelining, sendfile)
//! - `service`: what each request gets (store, mirror, pass-through)
//! - `fetch`: verified, shared downloads from the mirror
//! - `store` + `db`: the verified content store and its SQLite index
//! - `prune` (pure): what to delete when the store is over its size
//! - `sources` (pure): apt sources rewritten to go through the daemon
//! - `apply`: `sources --apply`: those rewrites written in place, with backups
//! - `status`: counters, HTML/JSON status, Prometheus metrics

// Table-driven tests spell out their row types; that is the point of them.
#![cfg_attr(test, allow(clippy::type_complexity))]

mod apply;
mod config;
mod db;
mod discovery;
mod fetch;
mod http1;
mod index;
mod prune;
mod release;
mod service;
mod sources;
mod status;
mod store;
mod swarm;
mod url;

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;

use crate::config::{Command, ImportArgs, ServeArgs, SourcesArgs};
use crate::index::{Registered, Registry};

fn main() -> std::process::ExitCode {
    let cli = match config::parse() {
        Ok(c) => c,
        Err(e) => {
            if let Some(ce) = e.downcast_ref::<clap::Error>() {
                ce.exit();
            }
            eprintln!("debtorrent: {e:#}");
            return std::process::ExitCode::from(2);
        }
    };
    let res = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Sources(args) => print_sources(&args),
        Command::Import(args) => import(&args),
        Command::ConfigReference => {
            print!("{}", config::reference());
            Ok(())
        }
        Command::Man { dir } => config::write_man_pages(&dir),
        Command::Completions { shell } => {
            config::print_completions(shell);
            Ok(())
        }
    };
    match res {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("debtorrent: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn init_logging(level: &str) -> anyhow::Result<()> {
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid --log-level {level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .init();
    Ok(())
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    init_logging(&args.log_level)?;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("debtorrent")
        .build()
        .context("cannot start the runtime")?;
    rt.block_on(run(args))
}

async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let registry = Arc::new(Registry::default());
    let reg2 = registry.clone();
    let (store, loaded) = store::Store::open(
        &args.data.data_dir,
        args.cache_size,
        Box::new(move |p| reg2.referenced(p)),
    )?;
    let stats = status::Stats::new(&loaded.counters);
    let mut client = reqwest::Client::builder();
    if let Some(path) = &args.ca_file {
        let pem = std::fs::read(path)
            .with_context(|| format!("cannot read --ca-file {}", path.display()))?;
        let certs = reqwest::Certificate::from_pem_bundle(&pem)
            .with_context(|| format!("--ca-file {}: not PEM certificates", path.display()))?;
        if certs.is_empty() {
            bail!("--ca-file {}: no certificate found", path.display());
        }
        for c in certs {
            client = client.add_root_certificate(c);
        }
    }
    let client = client
        .connect_timeout(Duration::from_secs(args.connect_timeout))
        .read_timeout(Duration::from_secs(args.upstream_timeout))
        .no_proxy()
        .redirect(redirect_policy(url_policy(&args)))
        .user_agent(concat!("debtorrent/", env!("CARGO_PKG_VERSION")))
        .build()
        .context("cannot build the HTTP client")?;
    let timeout = Duration::from_secs(args.upstream_timeout);
    let swarm = swarm::Swarm::start(
        swarm_options(&args, &store, &stats, &client, timeout)?,
        registry.clone(),
    )
    .await?;

    let listener = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let addr = listener.local_addr()?;
    if !addr.ip().is_loopback() && args.allow_host.is_empty() {
        tracing::warn!(%addr, "listening beyond loopback without --allow-host: any machine that reaches this port can fetch from any host on the allowed ports");
    }

    let (loaded_tx, loaded_rx) = watch::channel(false);
    let service = Arc::new(service::Service {
        policy: url_policy(&args),
        store: store.clone(),
        registry: registry.clone(),
        swarm: swarm.clone(),
        client,
        stats: stats.clone(),
        pages: status::Pages {
            stats: stats.clone(),
            registry: registry.clone(),
            store: store.clone(),
            cache_limit: args.cache_size,
            listen: format!("http://{addr}"),
            swarm: Some(swarm.clone()),
        },
        timeout,
        loaded: loaded_rx,
    });

    // Torrents of the previous run load in the background; pool requests
    // wait for them (a fraction of a second) so nothing is fetched twice.
    let data_dir = args.data.data_dir.clone();
    let (reg3, db) = (registry.clone(), store.db().clone());
    tokio::spawn(async move {
        let rows = loaded.torrents;
        let n = reload_torrents(&data_dir, rows, &reg3, &db).await;
        tracing::info!(torrents = n, "torrents of the previous run loaded");
        let _ = loaded_tx.send(true);
    });

    // Counters reach the database every few seconds, last-use times twice a minute.
    let (stats2, store2) = (stats.clone(), store.clone());
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        for n in 0u64.. {
            tick.tick().await;
            stats2.persist(store2.db());
            if n % 6 == 5 {
                store2.flush_touches();
            }
        }
    });

    println!("debtorrent listening on http://{addr}");
    tracing::info!(%addr, data_dir = %args.data.data_dir.display(), "serving apt");
    let limit = Arc::new(tokio::sync::Semaphore::new(args.max_connections.max(1)));
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Ok(permit) = limit.clone().try_acquire_owned() else {
                    tracing::warn!(%peer, "too many connections; refusing one");
                    drop(sock);
                    continue;
                };
                let svc = service.clone();
                tokio::spawn(async move {
                    http1::serve_connection(sock, peer, svc).await;
                    drop(permit);
                });
            }
        }
    }
    tracing::info!("shutting down");
    swarm.shutdown().await;
    stats.persist(store.db());
    store.flush_touches();
    store.db().flush();
    Ok(())
}

/// The swarm's options from `serve`'s.
fn swarm_options(
    args: &ServeArgs,
    store: &Arc<store::Store>,
    stats: &Arc<status::Stats>,
    client: &reqwest::Client,
    timeout: Duration,
) -> anyhow::Result<swarm::Start> {
    let bootstrap = match args.dht_bootstrap.as_deref().map(str::trim) {
        None => None,
        Some("none") | Some("") => Some(Vec::new()),
        Some(list) => Some(
            list.split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect(),
        ),
    };
    for t in &args.tracker {
        if !(t.starts_with("http://") || t.starts_with("udp://")) {
            bail!("--tracker {t}: only http:// and udp:// trackers are supported");
        }
    }
    Ok(swarm::Start {
        cfg: swarm::SwarmConfig {
            peer_wait_ms: args.peer_wait,
            stall_ms: args.stall_timeout.max(100),
            max_peers: args.max_peers,
            max_peers_per_ip: args.max_peers_per_ip.max(1),
            max_peers_per_torrent: args.max_peers_per_torrent.max(1),
            upload_slots: args.upload_slots,
            upload_rate: args.upload_rate,
            seed: !args.no_seed,
            ban_ms: args.ban_time,
            ban_strikes: args.ban_strikes.max(1),
        },
        peer_addr: args.peer_addr,
        enabled: !args.no_peers,
        discovery: Some(discovery::Config {
            peer_addr: args.peer_addr,
            dht: !args.no_dht,
            dht_bootstrap: bootstrap,
            dht_state: args.data.data_dir.join("dht-nodes"),
            lsd: !args.no_lsd,
            trackers: args.tracker.clone(),
            peer_id: [0; 20],
        }),
        store: store.clone(),
        stats: stats.clone(),
        client: client.clone(),
        timeout,
        hold_whole: args.hold_whole,
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
}

fn url_policy(args: &ServeArgs) -> url::Policy {
    let mut ports = vec![80, 443];
    ports.extend(&args.allow_port);
    url::Policy {
        ports,
        hosts: args
            .allow_host
            .iter()
            .map(|h| h.to_ascii_lowercase())
            .collect(),
    }
}

/// Redirects are followed only to hosts and ports the policy allows, so a
/// mirror cannot bounce the daemon to an internal service.
fn redirect_policy(policy: url::Policy) -> reqwest::redirect::Policy {
    reqwest::redirect::Policy::custom(move |attempt| {
        if attempt.previous().len() >= 5 {
            return attempt.error("too many redirects");
        }
        let u = attempt.url();
        let port = u.port_or_known_default().unwrap_or(0);
        let host = u.host_str().unwrap_or("").to_ascii_lowercase();
        let scheme_ok = matches!(u.scheme(), "http" | "https");
        let host_ok = policy.hosts.is_empty() || policy.hosts.contains(&host);
        if scheme_ok && policy.ports.contains(&port) && host_ok {
            attempt.follow()
        } else {
            attempt.error("redirect to a host or port that is not allowed")
        }
    })
}

/// Rebuilds the torrents registered by earlier runs from their cached
/// index files; a torrent whose index is gone or changed is forgotten.
async fn reload_torrents(
    data_dir: &Path,
    rows: Vec<db::TorrentRow>,
    registry: &Registry,
    db: &db::Db,
) -> usize {
    let mut n = 0;
    for row in rows {
        let path = data_dir.join(&row.index_file);
        let kind = match release::index_kind(&row.index_path) {
            Some(k) => k,
            None => {
                db.del_torrent(&row.info_hash);
                continue;
            }
        };
        let p2 = path.clone();
        let built = tokio::task::spawn_blocking(move || index::build_from_file(&p2, kind)).await;
        match built {
            Ok(Ok(t)) if t.info_hash().to_hex() == row.info_hash => {
                registry.register(Registered {
                    archive: row.archive,
                    index_path: row.index_path,
                    index_file: path,
                    torrent: t,
                    added: row.added,
                });
                n += 1;
            }
            other => {
                tracing::warn!(index = %row.index_path, ok = matches!(other, Ok(Ok(_))), "cached index gone or changed; torrent forgotten");
                db.del_torrent(&row.info_hash);
            }
        }
    }
    n
}

fn print_sources(args: &SourcesArgs) -> anyhow::Result<()> {
    let files: Vec<PathBuf> = if args.files.is_empty() {
        apply::default_files(&args.root.join("etc/apt"))
    } else {
        args.files.clone()
    };
    if files.is_empty() && args.apply {
        // Nothing can point at the daemon (e.g. package removal on a system
        // without apt sources): nothing to do.
        println!("no apt sources found; nothing to change");
        return Ok(());
    }
    if files.is_empty() {
        bail!("no sources file found (give one as an argument)");
    }
    if args.apply {
        let dir = if args.revert {
            apply::Direction::Revert
        } else {
            apply::Direction::Rewrite
        };
        let backup_dir = match &args.backup_dir {
            Some(d) => d.clone(),
            None => args
                .root
                .join(apply::DEFAULT_BACKUP_DIR.trim_start_matches('/')),
        };
        let outcomes = apply::apply(&files, &args.daemon, dir, &backup_dir)?;
        for o in outcomes {
            for w in &o.warnings {
                eprintln!("debtorrent: {}: {w}", o.path.display());
            }
            match &o.backup {
                Some(b) => println!(
                    "{}: {} URIs changed (old content saved as {})",
                    o.path.display(),
                    o.changed,
                    b.display()
                ),
                None => println!("{}: nothing to change", o.path.display()),
            }
        }
        return Ok(());
    }
    let rw = sources::Rewriter {
        daemon: args.daemon.trim_end_matches('/').to_string(),
    };
    for f in files {
        let text =
            std::fs::read_to_string(&f).with_context(|| format!("cannot read {}", f.display()))?;
        let fmt = sources::format_for_path(&f);
        let out = if args.revert {
            rw.revert(&text, fmt)
        } else {
            rw.rewrite(&text, fmt)
        };
        for w in &out.warnings {
            eprintln!("debtorrent: {}: {w}", f.display());
        }
        println!("# {} ({} changed)", f.display(), out.changed);
        print!("{}", out.text);
    }
    Ok(())
}

fn import(args: &ImportArgs) -> anyhow::Result<()> {
    init_logging("warn")?;
    let registry = Arc::new(Registry::default());
    let reg2 = registry.clone();
    let (store, loaded) = store::Store::open(
        &args.data.data_dir,
        u64::MAX,
        Box::new(move |p| reg2.referenced(p)),
    )?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(reload_torrents(
        &args.data.data_dir,
        loaded.torrents,
        &registry,
        store.db(),
    ));
    // SHA-256 -> (path, size) over every registered torrent.
    let mut by_hash = std::collections::HashMap::new();
    for r in registry.all() {
        for p in r.torrent.pieces() {
            by_hash
                .entry(*p.sha256)
                .or_insert_with(|| (p.path.to_string(), p.size));
        }
    }
    if by_hash.is_empty() {
        bail!(
            "no torrents registered in {}: run `apt-get update` through the daemon first",
            args.data.data_dir.display()
        );
    }
    let mut entries: Vec<PathBuf> = std::fs::read_dir(&args.dir)
        .with_context(|| format!("cannot read {}", args.dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "deb" || e == "udeb"))
        .collect();
    entries.sort();
    let (mut added, mut present, mut unknown, mut failed) = (0, 0, 0, 0);
    for path in entries {
        let sha = match store::sha256_file(&path) {
            Ok(s) => s,
            Err(e) => {
                eprintln!("debtorrent: {}: {e}", path.display());
                failed += 1;
                continue;
            }
        };
        let Some((rel, size)) = by_hash.get(&sha) else {
            unknown += 1;
            continue;
        };
        if store.get(rel, &sha).is_some() {
            present += 1;
            continue;
        }
        match store.import_file(&path, rel, sha, *size) {
            Ok(()) => added += 1,
            Err(e) => {
                eprintln!("debtorrent: {}: {e}", path.display());
                failed += 1;
            }
        }
    }
    store.db().flush();
    println!("imported {added}, already stored {present}, not listed by any torrent {unknown}, failed {failed}");
    if failed > 0 {
        bail!("{failed} files could not be imported");
    }
    Ok(())
}
