//! `debtorrent serve`: the daemon from start to graceful shutdown.
//!
//! Start: the store and its database, the counters, the mirror client,
//! the swarm (peer port and discovery), the registry reloaded in the
//! background, then the apt listener. Shutdown (SIGTERM or Ctrl-C), as
//! mini-redis does it, within [`SHUTDOWN_BUDGET`]:
//! 1. stop accepting apt connections;
//! 2. tell every connection through a watch channel: it reads no further
//!    request, finishes the responses already queued, and closes (at most
//!    [`DRAIN`]; what is still running then is cut);
//! 3. files apt already has, on their way into the store (fsync, rename)
//!    or into their torrents, get there, until [`DRAIN`] after the start;
//! 4. the swarm stops its torrent tasks (each closes its peer connections)
//!    and discovery (DHT table saved, trackers told `stopped`);
//! 5. counters and last-use times reach SQLite, which is flushed.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context};
use tokio::sync::watch;
use tokio::task::JoinSet;

use crate::config::ServeArgs;
use crate::registry::Registry;
use crate::{admission, discovery, http1, mirror, service, stats, status, store, swarm, url};

/// Everything shutdown does must fit in this.
pub const SHUTDOWN_BUDGET: Duration = Duration::from_secs(5);
/// How long apt connections get to finish their queued responses.
pub const DRAIN: Duration = Duration::from_secs(2);

/// Runs the daemon until SIGTERM or Ctrl-C.
pub fn serve(args: ServeArgs) -> anyhow::Result<()> {
    crate::commands::init_logging(&args.log_level)?;
    limit_malloc_arenas();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .thread_name("debtorrent")
        .build()
        .context("cannot start the runtime")?;
    let res = rt.block_on(run(args));
    // Tasks still running (a stuck mirror read) must not hold the exit.
    rt.shutdown_timeout(Duration::from_millis(200));
    res
}

/// Two glibc malloc tunables, for the RSS goal of issue 12 (40 MB per
/// daemon in a fleet of 100):
/// - glibc gives each thread that allocates its own malloc arena, up to 8
///   per core, and memory freed in one arena is not reused by the others
///   nor given back to the system. The daemon's threads (two runtime
///   workers, a blocking pool that hashes and writes pieces, the DHT's and
///   SQLite's) each touch buffers, so the daemon's RSS grew with the number
///   of threads that ever ran rather than with its work. Two arenas are
///   plenty for its load.
/// - A connection's read and write buffers grow to 256 KiB while blocks
///   flow and shrink back to 16 KiB after. glibc serves blocks that large
///   with mmap, but each one freed raises that threshold (up to 32 MiB), so
///   after the first few they come from the heap, which they fragment: the
///   heap's top cannot be given back while a small block sits above the
///   freed ones. A fixed threshold of 128 KiB keeps them in mmap, given
///   back when freed. The fleet benchmark (N=100, seed 1, one run each)
///   measured RSS p50 / p95 / max 24.2 / 35.4 / 43.9 MB with the dynamic
///   threshold and 21.4 / 28.7 / 32.2 MB with the fixed one, at the same
///   CPU per daemon.
///
/// `MALLOC_ARENA_MAX` and `MALLOC_MMAP_THRESHOLD_` in the environment still
/// win, since glibc reads them first.
fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
            // SAFETY: mallopt only sets a tunable of the allocator; it is
            // called before the runtime starts any thread, and a refusal (0)
            // leaves the default in place.
            let _ = unsafe { libc::mallopt(libc::M_ARENA_MAX, 2) };
        }
        if std::env::var_os("MALLOC_MMAP_THRESHOLD_").is_none() {
            // SAFETY: as above.
            let _ = unsafe { libc::mallopt(libc::M_MMAP_THRESHOLD, 128 * 1024) };
        }
    }
}

async fn run(args: ServeArgs) -> anyhow::Result<()> {
    let registry = Arc::new(Registry::default());
    let reg2 = registry.clone();
    let (store, loaded) = store::Store::open(
        &args.data.data_dir,
        args.cache_size,
        Box::new(move |p| reg2.referenced(p)),
    )?;
    let stats = stats::Stats::new(&loaded.counters);
    let mirror = Arc::new(mirror::Mirror::new(
        mirror::Options {
            ca_file: args.ca_file.clone(),
            connect_timeout: Duration::from_secs(args.connect_timeout),
            timeout: Duration::from_secs(args.upstream_timeout),
            policy: url_policy(&args),
        },
        stats.clone(),
    )?);
    let swarm = swarm::Swarm::start(
        swarm_options(&args, &store, &stats, &mirror)?,
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
    let transfers = crate::transfers::Transfers::new(stats.clone());
    let service = Arc::new(service::Service {
        registering: service::Registering::default(),
        policy: url_policy(&args),
        store: store.clone(),
        registry: registry.clone(),
        swarm: swarm.clone(),
        mirror,
        stats: stats.clone(),
        pages: status::Pages {
            stats: stats.clone(),
            registry: registry.clone(),
            store: store.clone(),
            cache_limit: args.cache_size,
            listen: format!("http://{addr}"),
            swarm: Some(swarm.clone()),
            transfers: Some(transfers.clone()),
        },
        loaded: loaded_rx,
        transfers,
    });

    let mut background = JoinSet::new();
    // Torrents of the previous run load in the background; pool requests
    // wait for them (a fraction of a second) so nothing is fetched twice.
    let data_dir = args.data.data_dir.clone();
    let (reg3, db) = (registry.clone(), store.db().clone());
    let (swarm3, store3) = (swarm.clone(), store.clone());
    background.spawn(async move {
        let rows = loaded.torrents;
        let n = crate::registry::reload(&data_dir, rows, &reg3, &db).await;
        tracing::info!(torrents = n, "torrents of the previous run loaded");
        let _ = loaded_tx.send(true);
        swarm3.restore(loaded.shared, &store3).await;
    });
    // Counters reach the database every few seconds, last-use times twice a minute.
    let (stats2, store2) = (stats.clone(), store.clone());
    background.spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(5));
        for n in 0u64.. {
            tick.tick().await;
            stats2.persist(store2.db());
            if n % 2 == 0 {
                // Every 10 s (stats::SAMPLE_EVERY): the status page's chart.
                stats2.sample();
            }
            if n % 6 == 5 {
                store2.flush_touches();
            }
        }
    });

    println!("debtorrent listening on http://{addr}");
    tracing::info!(%addr, data_dir = %args.data.data_dir.display(), "serving apt");
    // Slots for apt connections (admission.rs): a deadline for request
    // heads, eviction of the idlest connection when full, per-address
    // limits beyond loopback, slots for the status pages.
    let admission = admission::Admission::new(
        admission::Limits {
            max: args.max_connections.max(1),
            per_ip: (!addr.ip().is_loopback()).then_some(args.max_connections_per_ip.max(1)),
        },
        Some(stats.clone()),
    );
    let head_timeout = Duration::from_millis(args.request_head_timeout.max(100));
    let (stop_tx, stop_rx) = watch::channel(false);
    let mut conns = JoinSet::new();
    let shutdown = shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
            accepted = listener.accept() => {
                let (sock, peer) = match accepted {
                    Ok(x) => x,
                    Err(e) => {
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                let Some(ticket) = admission.admit(peer.ip()) else {
                    tracing::debug!(%peer, "no place for a new connection: refused");
                    drop(sock);
                    continue;
                };
                let (svc, stop) = (service.clone(), stop_rx.clone());
                conns.spawn(async move {
                    http1::serve_connection(sock, peer, svc, stop, Arc::new(ticket), head_timeout)
                        .await;
                });
            }
        }
    }
    let started = tokio::time::Instant::now();
    tracing::info!(connections = conns.len(), "shutting down");
    drop(listener);
    let _ = stop_tx.send(true);
    if tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} })
        .await
        .is_err()
    {
        tracing::warn!(
            left = conns.len(),
            "apt connections still busy at shutdown: cut"
        );
        conns.shutdown().await;
    }
    // Files apt already has may still be on their way into the store
    // (fsync, rename, row) and indexes into their torrents: they are
    // kept, until DRAIN after the start of the shutdown (as long as the
    // swarm had before), and before the swarm stops, so that their
    // torrents record them too. (`apt-get update && systemctl restart
    // debtorrent` keeps the new indexes.) Index downloads apt has not got
    // whole are not waited for.
    let deadline = started + DRAIN;
    while store.commits_in_flight() > 0 && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    if store.commits_in_flight() > 0 {
        tracing::warn!(
            left = store.commits_in_flight(),
            "files not yet stored at shutdown: fetched again next time"
        );
    }
    let left = SHUTDOWN_BUDGET
        .saturating_sub(started.elapsed())
        .saturating_sub(Duration::from_millis(500));
    if tokio::time::timeout(left, swarm.shutdown()).await.is_err() {
        tracing::warn!("the swarm did not stop in time");
    }
    background.shutdown().await;
    stats.persist(store.db());
    store.flush_touches();
    store.db().flush();
    tracing::info!(ms = started.elapsed().as_millis() as u64, "stopped");
    Ok(())
}

/// The swarm's options from `serve`'s.
fn swarm_options(
    args: &ServeArgs,
    store: &Arc<store::Store>,
    stats: &Arc<stats::Stats>,
    mirror: &Arc<mirror::Mirror>,
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
            dht_impl: args.dht_impl,
            dht_state: args.data.data_dir.join("dht-nodes"),
            lsd: !args.no_lsd,
            upnp: (!args.no_upnp && discovery::upnp::default_on(args.peer_addr)).then(|| {
                discovery::upnp::Config {
                    peer_addr: args.peer_addr,
                    lease: std::time::Duration::from_millis(args.upnp_lease),
                }
            }),
            trackers: args.tracker.clone(),
            peer_id: [0; 20],
        }),
        store: store.clone(),
        stats: stats.clone(),
        mirror: mirror.clone(),
        hold_whole: args.hold_whole,
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
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

/// The hosts and ports the daemon may reach: 80, 443 and `--allow-port`;
/// any host unless `--allow-host` names some.
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
