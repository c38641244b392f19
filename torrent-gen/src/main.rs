//! `debtorrent-gen`: index file -> dt1 torrent, on the command line.
//!
//! Exit codes (scripts rely on them):
//! - 0: success
//! - 1: an I/O error (cannot read the input or write the output)
//! - 2: bad usage (unknown flag, missing argument)
//! - 3: the input is not usable: not an index, no valid entry, corrupt or
//!   truncated compression, over the size cap, malformed metainfo
//! - 4: `--strict` and the index had entries that were dropped

use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use clap::{Args, CommandFactory, Parser, Subcommand, ValueEnum};
use debtorrent_gen::{
    build_from_reader, read_metainfo, sha256_hex, write_metainfo, Built, DropReason, Error,
    IndexKind, Options, Report, DEFAULT_MAX_SIZE,
};

/// Turn a Debian Packages or Sources index into its dt1 torrent.
#[derive(Parser)]
#[command(name = "debtorrent-gen", version, about, long_about = None)]
#[command(
    after_help = "Exit codes: 0 ok, 1 I/O error, 2 usage, 3 unusable input, 4 --strict found dropped entries."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the 40-hex info hash of an index, and nothing else.
    Hash {
        #[command(flatten)]
        index: IndexArgs,
    },
    /// Write a .torrent (metainfo) file for an index and print a summary.
    Make {
        #[command(flatten)]
        index: IndexArgs,
        /// Where to write the .torrent file.
        #[arg(short, long, value_name = "OUT.torrent")]
        output: PathBuf,
        /// Tracker announce URL (repeatable; one tier each, in order).
        #[arg(long = "tracker", value_name = "URL")]
        trackers: Vec<String>,
        /// Archive root URL serving the files over HTTP (repeatable).
        #[arg(long = "webseed", value_name = "URL")]
        webseeds: Vec<String>,
        /// The index's path under the archive root, e.g. dists/bookworm/main/binary-amd64/Packages.
        #[arg(long, value_name = "dists/...")]
        index_path: Option<String>,
        /// A free-text comment.
        #[arg(long)]
        comment: Option<String>,
    },
    /// Read a .torrent file back and describe it.
    Show {
        /// The .torrent file (`-` for stdin).
        file: PathBuf,
        /// Print JSON, including every file.
        #[arg(long)]
        json: bool,
        /// In text mode, list every file too.
        #[arg(long)]
        files: bool,
    },
    /// Print the 40-hex dt2 swarm id of a suite's component: one swarm for
    /// every index version of the suite family (docs/torrent-format.md §7).
    SwarmId {
        /// The Release's Origin field, e.g. Debian.
        #[arg(long)]
        origin: String,
        /// The Release's Codename (or Suite where there is none), e.g.
        /// bookworm-updates; its family (bookworm) is what counts.
        #[arg(long, value_name = "CODENAME")]
        suite: String,
        /// The component, e.g. main (empty for a flat repository).
        #[arg(long, default_value = "")]
        component: String,
    },
    /// Write man pages (debtorrent-gen.1 and one per subcommand) into a folder.
    #[command(hide = true)]
    Man {
        /// The folder to write into.
        dir: PathBuf,
    },
    /// Print a shell completion script.
    #[command(hide = true)]
    Completions {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

#[derive(Args)]
struct IndexArgs {
    /// The index file (`-` for stdin); gz, xz, bz2, lz4 and zstd are detected by content.
    #[arg(value_name = "INDEX")]
    index: PathBuf,
    /// Read the index as this kind instead of detecting it from the fields.
    #[arg(long, value_enum, default_value_t = KindArg::Auto)]
    kind: KindArg,
    /// Fail (exit 4) if any entry had to be dropped.
    #[arg(long)]
    strict: bool,
    /// Refuse indexes whose uncompressed size exceeds this many bytes.
    #[arg(long, value_name = "BYTES", default_value_t = DEFAULT_MAX_SIZE)]
    max_size: u64,
}

#[derive(Clone, Copy, ValueEnum)]
enum KindArg {
    Auto,
    Packages,
    Sources,
}

/// A failure with its exit code.
struct Failure {
    code: u8,
    message: String,
}

impl From<Error> for Failure {
    fn from(e: Error) -> Self {
        let code = if matches!(e, Error::Io(_)) { 1 } else { 3 };
        Failure {
            code,
            message: e.to_string(),
        }
    }
}

fn io_failure(what: &str, path: &Path, e: io::Error) -> Failure {
    Failure {
        code: 1,
        message: format!("{what} {}: {e}", path.display()),
    }
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            // A closed stdout (`| head`) is not worth a message.
            eprintln!("debtorrent-gen: {}", f.message);
            ExitCode::from(f.code)
        }
    }
}

fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Command::Hash { index } => {
            let built = build(&index)?;
            let out = format!("{}\n", built.torrent.info_hash());
            write_stdout(out.as_bytes())
        }
        Command::SwarmId {
            origin,
            suite,
            component,
        } => {
            let id = debtorrent_gen::swarm_id(&origin, debtorrent_gen::family(&suite), &component);
            write_stdout(format!("{id}\n").as_bytes())
        }
        Command::Make {
            index,
            output,
            trackers,
            webseeds,
            index_path,
            comment,
        } => {
            let built = build(&index)?;
            let mut buf = Vec::new();
            write_metainfo(
                &mut buf,
                &built.torrent,
                &trackers,
                &webseeds,
                index_path.as_deref(),
                comment.as_deref(),
            )
            .map_err(|e| io_failure("cannot encode", &output, e))?;
            write_atomically(&output, &buf)?;
            write_stdout(summary(&built).as_bytes())
        }
        Command::Show { file, json, files } => {
            let data = read_all(&file)?;
            let m = read_metainfo(&data).map_err(|e| Failure {
                code: 3,
                message: format!("{}: {e}", file.display()),
            })?;
            let text = if json {
                show_json(&m)
            } else {
                show_text(&m, files)
            };
            write_stdout(text.as_bytes())
        }
        // Generated from the same definitions as --help (for packaging).
        Command::Man { dir } => {
            std::fs::create_dir_all(&dir).map_err(|e| io_failure("cannot create", &dir, e))?;
            clap_mangen::generate_to(Cli::command(), &dir)
                .map_err(|e| io_failure("cannot write man pages to", &dir, e))
        }
        Command::Completions { shell } => {
            let mut buf = Vec::new();
            clap_complete::generate(shell, &mut Cli::command(), "debtorrent-gen", &mut buf);
            write_stdout(&buf)
        }
    }
}

fn build(args: &IndexArgs) -> Result<Built, Failure> {
    let opts = Options {
        kind: match args.kind {
            KindArg::Auto => None,
            KindArg::Packages => Some(IndexKind::Packages),
            KindArg::Sources => Some(IndexKind::Sources),
        },
        max_size: args.max_size,
    };
    let name = args.index.display().to_string();
    let built = if args.index.as_os_str() == "-" {
        build_from_reader(io::stdin().lock(), &opts)
    } else {
        let f = std::fs::File::open(&args.index)
            .map_err(|e| io_failure("cannot open", &args.index, e))?;
        build_from_reader(f, &opts)
    }
    .map_err(|e| {
        let mut f = Failure::from(e);
        f.message = format!("{name}: {}", f.message);
        f
    })?;
    if args.strict && built.report.dropped_total() > 0 {
        return Err(Failure {
            code: 4,
            message: format!(
                "{name}: --strict: {} entries dropped ({})",
                built.report.dropped_total(),
                drop_list(&built.report)
            ),
        });
    }
    Ok(built)
}

fn drop_list(r: &Report) -> String {
    let parts: Vec<String> = DropReason::ALL
        .iter()
        .filter(|&&d| r.dropped(d) > 0)
        .map(|&d| format!("{} {}", r.dropped(d), d.describe()))
        .collect();
    if parts.is_empty() {
        "none".into()
    } else {
        parts.join("; ")
    }
}

fn summary(b: &Built) -> String {
    let r = &b.report;
    let mut s = String::new();
    let kind = r.kind.map_or("unknown", |k| k.as_str());
    s += &format!("info hash: {}\n", b.torrent.info_hash());
    s += &format!("index:     {kind}, {}\n", b.compression.name());
    s += &format!("pieces:    {}\n", b.torrent.piece_count());
    s += &format!("bytes:     {}\n", b.torrent.total_size());
    s += &format!("merged:    {} identical duplicates\n", r.duplicates_merged);
    s += &format!("dropped:   {}\n", r.dropped_total());
    for d in DropReason::ALL {
        if r.dropped(d) > 0 {
            s += &format!("  {:>8}  {}\n", r.dropped(d), d.describe());
        }
    }
    s
}

fn show_text(m: &debtorrent_gen::Metainfo, files: bool) -> String {
    let t = &m.torrent;
    let mut s = String::new();
    s += &format!("info hash: {}\n", t.info_hash());
    s += &format!("pieces:    {}\n", t.piece_count());
    s += &format!("bytes:     {}\n", t.total_size());
    if !m.canonical {
        s += "warning:   the info dict is not in canonical dt1 form; peers deriving it from the index will be in another swarm\n";
    }
    if let Some(p) = &m.index_path {
        s += &format!("index:     {p}\n");
    }
    for u in &m.trackers {
        s += &format!("tracker:   {u}\n");
    }
    for u in &m.webseeds {
        s += &format!("webseed:   {u}\n");
    }
    if let Some(c) = &m.comment {
        s += &format!("comment:   {c}\n");
    }
    if let Some(c) = &m.created_by {
        s += &format!("created:   {c}\n");
    }
    if files {
        for p in t.pieces() {
            s += &format!("{} {:>12} {}\n", sha256_hex(p.sha256), p.size, p.path);
        }
    }
    s
}

fn show_json(m: &debtorrent_gen::Metainfo) -> String {
    let t = &m.torrent;
    let files: Vec<serde_json::Value> = t
        .pieces()
        .map(|p| {
            serde_json::json!({
                "path": p.path,
                "length": p.size,
                "sha256": sha256_hex(p.sha256),
            })
        })
        .collect();
    let v = serde_json::json!({
        "info_hash": t.info_hash().to_hex(),
        "pieces": t.piece_count(),
        "total_bytes": t.total_size(),
        "canonical": m.canonical,
        "trackers": m.trackers,
        "webseeds": m.webseeds,
        "index_path": m.index_path,
        "comment": m.comment,
        "created_by": m.created_by,
        "files": files,
    });
    format!("{v:#}\n")
}

/// Metainfo files are small; cap what `show` reads so a wrong argument
/// (a disk image, /dev/zero) fails fast.
const MAX_TORRENT_FILE: u64 = 256 << 20;

fn read_all(path: &Path) -> Result<Vec<u8>, Failure> {
    let mut data = Vec::new();
    let res = if path.as_os_str() == "-" {
        io::stdin()
            .lock()
            .take(MAX_TORRENT_FILE + 1)
            .read_to_end(&mut data)
    } else {
        std::fs::File::open(path).and_then(|f| f.take(MAX_TORRENT_FILE + 1).read_to_end(&mut data))
    };
    res.map_err(|e| io_failure("cannot read", path, e))?;
    if data.len() as u64 > MAX_TORRENT_FILE {
        return Err(Failure {
            code: 3,
            message: format!(
                "{}: larger than {MAX_TORRENT_FILE} bytes; not a metainfo file",
                path.display()
            ),
        });
    }
    Ok(data)
}

/// Writes to a temporary name beside `path`, then renames: a failed or
/// interrupted run never leaves a truncated .torrent behind.
fn write_atomically(path: &Path, data: &[u8]) -> Result<(), Failure> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let tmp = dir.join(format!(".{name}.tmp{}", std::process::id()));
    let res = std::fs::File::create(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|()| f.sync_all()))
        .and_then(|()| std::fs::rename(&tmp, path));
    if let Err(e) = res {
        let _ = std::fs::remove_file(&tmp);
        return Err(io_failure("cannot write", path, e));
    }
    Ok(())
}

fn write_stdout(b: &[u8]) -> Result<(), Failure> {
    let mut out = io::stdout().lock();
    match out.write_all(b).and_then(|()| out.flush()) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::BrokenPipe => Ok(()),
        Err(e) => Err(Failure {
            code: 1,
            message: format!("cannot write to stdout: {e}"),
        }),
    }
}
