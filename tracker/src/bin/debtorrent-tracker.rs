//! The debtorrent-tracker daemon: configuration, wiring, signals.

use std::io::Write as _;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use debtorrent_tracker::config::{Config, Options};
use debtorrent_tracker::swarm::TableLimits;
use debtorrent_tracker::tracker::{parse_allowlist, Policy, Tracker};
use debtorrent_tracker::types::unix_now;
use debtorrent_tracker::{http_server, persist, udp_server};
use tokio::sync::watch;

/// How often peers are expired and the announce rate sampled.
const HOUSEKEEPING: Duration = Duration::from_secs(5);
const STATE_FILE: &str = "state.sqlite";

fn main() -> Result<()> {
    if let Some(done) = generate(std::env::args_os().skip(1).collect()) {
        return done;
    }
    let cfg = Options::load(std::env::args_os())?;
    let filter = tracing_subscriber::EnvFilter::try_new(&cfg.log)
        .with_context(|| format!("bad --log filter {:?}", cfg.log))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("tracker")
        .build()?;
    rt.block_on(run(cfg))
}

/// Hidden packaging helpers, from the same definitions as `--help` (they are
/// not options, so they appear in neither `--help` nor the man page):
/// `--generate-man DIR` writes debtorrent-tracker.1 into DIR;
/// `--generate-completions bash|zsh|fish|elvish|powershell` prints a script.
fn generate(args: Vec<std::ffi::OsString>) -> Option<Result<()>> {
    use clap::CommandFactory as _;
    let [flag, value] = args.as_slice() else {
        return None;
    };
    match flag.to_str()? {
        "--generate-man" => {
            let dir = std::path::PathBuf::from(value);
            Some(
                std::fs::create_dir_all(&dir)
                    .and_then(|()| clap_mangen::generate_to(Options::command(), &dir))
                    .with_context(|| format!("cannot write the man page to {}", dir.display())),
            )
        }
        "--generate-completions" => {
            let shell = value
                .to_str()
                .and_then(|s| s.parse::<clap_complete::Shell>().ok());
            Some(match shell {
                Some(shell) => {
                    let name = "debtorrent-tracker";
                    clap_complete::generate(
                        shell,
                        &mut Options::command(),
                        name,
                        &mut std::io::stdout(),
                    );
                    Ok(())
                }
                None => Err(anyhow::anyhow!(
                    "unknown shell {value:?} (bash, zsh, fish, elvish, powershell)"
                )),
            })
        }
        _ => None,
    }
}

fn policy(cfg: &Config) -> Result<Policy> {
    let allowed_hashes = if cfg.allowlist.as_os_str().is_empty() {
        None
    } else {
        let text = std::fs::read_to_string(&cfg.allowlist)
            .with_context(|| format!("reading allowlist {}", cfg.allowlist.display()))?;
        let set = parse_allowlist(&text).map_err(|(line, s)| {
            anyhow::anyhow!(
                "{}:{line}: not a 40-hex info hash: {s:?}",
                cfg.allowlist.display()
            )
        })?;
        tracing::info!(torrents = set.len(), "allowlist loaded");
        Some(set)
    };
    anyhow::ensure!(cfg.interval > 0, "--interval must be positive");
    anyhow::ensure!(
        cfg.peer_timeout > cfg.interval,
        "--peer-timeout must exceed --interval, or every peer expires between its announces"
    );
    Ok(Policy {
        interval: cfg.interval,
        min_interval: cfg.min_interval.min(cfg.interval),
        peer_timeout: cfg.peer_timeout,
        numwant_default: cfg.numwant_default.min(cfg.numwant_max),
        numwant_max: cfg.numwant_max,
        max_scrape: cfg.max_scrape.max(1),
        allowed_hashes,
        allowed_networks: cfg.allow_networks.clone(),
        trusted_proxies: cfg.trusted_proxies.clone(),
        limits: TableLimits {
            max_peers_per_torrent: cfg.max_peers_per_torrent,
            max_peers_total: cfg.max_peers_total,
            locality_v4: cfg.locality_prefix_v4,
            locality_v6: cfg.locality_prefix_v6,
        },
    })
}

async fn snapshot(tracker: &Arc<Tracker>, cfg: &Config) -> Result<()> {
    let t = tracker.clone();
    let path = cfg.data_dir.join(STATE_FILE);
    let n =
        tokio::task::spawn_blocking(move || persist::save(&path, &t.table.snapshot(), unix_now()))
            .await??;
    tracing::debug!(peers = n, "snapshot written");
    Ok(())
}

async fn run(cfg: Config) -> Result<()> {
    std::fs::create_dir_all(&cfg.data_dir)
        .with_context(|| format!("creating data dir {}", cfg.data_dir.display()))?;
    let mut secret = [0u8; 32];
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no OS randomness: {e}"))?;
    let now = unix_now();
    let tracker = Arc::new(Tracker::new(policy(&cfg)?, secret, now));

    let state = cfg.data_dir.join(STATE_FILE);
    let cutoff = now.saturating_sub(cfg.peer_timeout as u64) as u32;
    let swarms = tokio::task::spawn_blocking(move || persist::load(&state, cutoff))
        .await?
        .context("loading state snapshot")?;
    tracker.table.restore(swarms);
    tracing::info!(peers = tracker.table.peer_count(), "state restored");

    let tcp = tokio::net::TcpListener::bind(cfg.http_listen)
        .await
        .with_context(|| format!("binding HTTP {}", cfg.http_listen))?;
    let udp = std::net::UdpSocket::bind(cfg.udp_listen)
        .with_context(|| format!("binding UDP {}", cfg.udp_listen))?;
    let (http_addr, udp_addr) = (tcp.local_addr()?, udp.local_addr()?);
    {
        // Scripts and tests read the real ports from this line.
        let mut out = std::io::stdout().lock();
        writeln!(
            out,
            "debtorrent-tracker listening http={http_addr} udp={udp_addr}"
        )?;
        out.flush()?;
    }
    tracing::info!(%http_addr, %udp_addr, "listening");

    let (stop_tx, stop_rx) = watch::channel(false);
    let stop_udp = Arc::new(AtomicBool::new(false));
    let threads = match cfg.udp_threads {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        n => n,
    };
    let udp_workers = udp_server::spawn(udp, tracker.clone(), threads, stop_udp.clone())?;
    let http = tokio::spawn(http_server::serve(tcp, tracker.clone(), stop_rx.clone()));

    let house = {
        let t = tracker.clone();
        let cfg = cfg.clone();
        let mut stop = stop_rx.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(HOUSEKEEPING);
            let mut last_snapshot = unix_now();
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.changed() => return,
                }
                let now = unix_now();
                let removed = t.housekeeping(now);
                if removed > 0 {
                    tracing::debug!(removed, "expired peers");
                }
                if now.saturating_sub(last_snapshot) >= cfg.snapshot_interval {
                    last_snapshot = now;
                    if let Err(e) = snapshot(&t, &cfg).await {
                        tracing::error!(error = %e, "snapshot failed");
                    }
                }
            }
        })
    };

    wait_for_signal().await?;
    tracing::info!("shutting down");
    let _ = stop_tx.send(true);
    stop_udp.store(true, Ordering::Relaxed);
    let _ = house.await;
    match http.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "HTTP server"),
        Err(e) => tracing::warn!(error = %e, "HTTP server task"),
        Ok(Ok(())) => {}
    }
    for w in udp_workers {
        let _ = tokio::task::spawn_blocking(move || w.join()).await;
    }
    snapshot(&tracker, &cfg).await.context("final snapshot")?;
    tracing::info!(peers = tracker.table.peer_count(), "snapshot written, bye");
    Ok(())
}

async fn wait_for_signal() -> Result<()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    Ok(())
}
