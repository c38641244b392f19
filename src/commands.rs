//! What each subcommand does. `serve` lives in `daemon.rs`; the others
//! are short and run without a runtime (`import` starts a small one to
//! load the registered torrents).

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::{bail, Context};

use crate::config::{self, Command, ImportArgs, SourcesArgs};
use crate::registry::Registry;
use crate::{apply, sources, store};

/// Runs one subcommand of `debtorrent`.
pub fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve(args) => crate::daemon::serve(*args),
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
    }
}

/// Logs to standard error, at `level` (an `EnvFilter` directive). Colour
/// only on a terminal: journald, log files and log shippers get plain
/// text, not escape sequences.
pub(crate) fn init_logging(level: &str) -> anyhow::Result<()> {
    use std::io::IsTerminal;
    let filter = tracing_subscriber::EnvFilter::try_new(level)
        .with_context(|| format!("invalid --log-level {level:?}"))?;
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_target(false)
        .init();
    Ok(())
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
