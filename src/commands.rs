//! What each subcommand does. `serve` lives in `daemon.rs`; the others
//! are short and run without a runtime (`import` starts a small one to
//! load the registered torrents).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::config::{self, Command, ImportArgs, SourcesArgs, StatusArgs};
use crate::registry::Registry;
use crate::{apply, sources, store};

/// Runs one subcommand of `debtorrent`.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => crate::daemon::serve(*args),
        Command::Sources(args) => print_sources(&args),
        Command::Import(args) => import(&args),
        Command::Status(args) => status(&args),
        Command::ConfigReference => {
            print!("{}", config::reference());
            Ok(())
        }
        Command::Man { dir } => config::write_man_pages(&dir),
        Command::Completions { shell } => {
            config::print_completions(shell);
            Ok(())
        }
    }
}

/// Logs to standard error, at `level` (an `EnvFilter` directive). Colour
/// only on a terminal: journald, log files and log shippers get plain
/// text, not escape sequences.
pub(crate) fn init_logging(level: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid --log-level {level:?}"))?;
    let fmt = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false);
    // The journal stamps every line itself: a second timestamp is noise.
    if stderr_is_journal() {
        fmt.without_time().init();
    } else {
        fmt.init();
    }
    Ok(())
}

/// Whether standard error is the journal's stream: systemd sets
/// `JOURNAL_STREAM=DEV:INODE` for a service, and it holds only while
/// stderr is still that stream (not redirected by a wrapper).
fn stderr_is_journal() -> bool {
    let Some(v) = std::env::var_os("JOURNAL_STREAM") else {
        return false;
    };
    let Some((dev, ino)) = v.to_str().and_then(|s| s.split_once(':')) else {
        return false;
    };
    let (Ok(dev), Ok(ino)) = (dev.parse::<u64>(), ino.parse::<u64>()) else {
        return false;
    };
    rustix::fs::fstat(std::io::stderr()).is_ok_and(|st| st.st_dev == dev && st.st_ino == ino)
}

/// A progress bar over the bytes `import` hashes, on standard error when
/// that is a terminal and there is enough to hash to wait for (else a
/// hidden bar: logs and pipes get only the final line).
fn import_progress(files: &[PathBuf]) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    let total: u64 = files
        .iter()
        .filter_map(|p| std::fs::metadata(p).ok())
        .map(|m| m.len())
        .sum();
    if !std::io::stderr().is_terminal() || (files.len() < 20 && total < 64 << 20) {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(total);
    if let Ok(style) = indicatif::ProgressStyle::with_template(
        "hashing {bar:30} {bytes}/{total_bytes} {bytes_per_sec} eta {eta} {wide_msg}",
    ) {
        bar.set_style(style);
    }
    bar
}

/// The packaged config file, where `status` looks for the daemon's address.
const PACKAGED_CONFIG: &str = "/etc/debtorrent/debtorrent.toml";

/// `debtorrent status`: the running daemon's `/status.json`, as a summary
/// or as it is.
fn status(args: &StatusArgs) -> anyhow::Result<()> {
    let listen = match &args.listen {
        Some(a) => a.clone(),
        None => {
            let path = args.config.clone().or_else(|| {
                let p = PathBuf::from(PACKAGED_CONFIG);
                p.exists().then_some(p)
            });
            match path {
                Some(p) => listen_in_config(&p)?,
                None => None,
            }
            .unwrap_or_else(|| "127.0.0.1:9988".to_string())
        }
    };
    let url = format!("http://{}/status.json", connect_to(&listen)?);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let body = rt
        .block_on(async {
            let client = reqwest::Client::builder()
                .no_proxy()
                .timeout(std::time::Duration::from_secs(10))
                .build()?;
            client
                .get(&url)
                .send()
                .await?
                .error_for_status()?
                .text()
                .await
        })
        .with_context(|| {
            format!(
                "cannot read {url}: is the daemon running there? (--listen or --config says where)"
            )
        })?;
    if args.json {
        print!("{body}");
        return Ok(());
    }
    let v: serde_json::Value =
        serde_json::from_str(&body).with_context(|| format!("{url} did not answer JSON"))?;
    print!("{}", crate::status::summary(&v));
    Ok(())
}

/// `listen` from a daemon config file, if it sets one.
fn listen_in_config(path: &std::path::Path) -> anyhow::Result<Option<String>> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("cannot read config file {}", path.display()))?;
    let table: toml::Table =
        toml::from_str(&text).with_context(|| format!("in config file {}", path.display()))?;
    Ok(table
        .get("listen")
        .and_then(|v| v.as_str())
        .map(str::to_string))
}

/// Where to connect for a listen address: an unspecified address (the
/// daemon listens on all of them) is reached on loopback.
fn connect_to(listen: &str) -> anyhow::Result<std::net::SocketAddr> {
    let mut a: std::net::SocketAddr = listen
        .parse()
        .with_context(|| format!("not an address: {listen:?} (expected IP:PORT)"))?;
    if a.ip().is_unspecified() {
        a.set_ip(if a.is_ipv4() {
            std::net::Ipv4Addr::LOCALHOST.into()
        } else {
            std::net::Ipv6Addr::LOCALHOST.into()
        });
    }
    Ok(a)
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
    rt.block_on(crate::registry::reload(
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
    let progress = import_progress(&entries);
    let (mut added, mut present, mut unknown, mut failed) = (0, 0, 0, 0);
    for path in entries {
        if let Some(name) = path.file_name() {
            progress.set_message(name.to_string_lossy().into_owned());
        }
        let size = std::fs::metadata(&path).map_or(0, |m| m.len());
        let sha = store::sha256_file(&path);
        progress.inc(size);
        let sha = match sha {
            Ok(s) => s,
            Err(e) => {
                progress.suspend(|| eprintln!("debtorrent: {}: {e}", path.display()));
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
                progress.suspend(|| eprintln!("debtorrent: {}: {e}", path.display()));
                failed += 1;
            }
        }
    }
    progress.finish_and_clear();
    store.db().flush();
    println!("imported {added}, already stored {present}, not listed by any torrent {unknown}, failed {failed}");
    if failed > 0 {
        bail!("{failed} files could not be imported");
    }
    Ok(())
}
