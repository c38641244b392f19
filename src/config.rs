//! Command line, environment and config file, defined once.
//!
//! Every option is a clap argument below, with its help text, its
//! `DEBTORRENT_*` environment variable and its default. The TOML config
//! file uses the same names (`listen = "..."`, `allow-port = [8080]`); a key
//! in the file is applied by handing it to clap as `--key=value` when
//! neither the command line nor the environment set it. So the file gets the
//! same parsing and validation, and `debtorrent config-reference` prints the
//! file format from the same definitions, for `--help`, the packaged
//! `/etc/debtorrent/debtorrent.toml` and `docs/configuration.md`.
//! Precedence: command line > environment > config file > default.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::{bail, Context};
use clap::parser::ValueSource;
use clap::{ArgAction, Args, CommandFactory, FromArgMatches, Parser, Subcommand};

/// Download Debian packages from peers over BitTorrent, with the mirror as fallback.
#[derive(Parser, Debug)]
#[command(name = "debtorrent", version, about, long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Subcommand, Debug)]
pub enum Command {
    /// Run the daemon that apt talks to.
    Serve(Box<ServeArgs>),
    /// Rewrite apt sources to go through the daemon (print, or --apply).
    Sources(SourcesArgs),
    /// Add verified .deb files from a directory (e.g. /var/cache/apt/archives) to the store.
    Import(ImportArgs),
    /// Show what the running daemon is doing: saved share, transfers, peers, discovery.
    Status(StatusArgs),
    /// Print a config file listing every `serve` option with its default.
    ConfigReference,
    /// Write man pages (debtorrent.1 and one per subcommand) into a folder.
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

/// Writes the man pages of every command, from the same definitions as `--help`.
pub fn write_man_pages(dir: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    let cmd = Cli::command();
    clap_mangen::generate_to(cmd, dir)
        .with_context(|| format!("cannot write man pages to {}", dir.display()))?;
    Ok(())
}

/// Prints a completion script.
pub fn print_completions(shell: clap_complete::Shell) {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "debtorrent", &mut std::io::stdout());
}

/// The data folder, shared by `serve` and `import`.
#[derive(Args, Debug, Clone)]
pub struct DataDir {
    /// Folder for the state database, the package store and cached indexes.
    #[arg(
        long,
        value_name = "DIR",
        env = "DEBTORRENT_DATA_DIR",
        default_value = "debtorrent-data"
    )]
    pub data_dir: PathBuf,
}

/// Options of `debtorrent serve`.
#[derive(Args, Debug, Clone)]
pub struct ServeArgs {
    /// Read options from this TOML file (keys are the long option names).
    #[arg(long, value_name = "FILE", env = "DEBTORRENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Address the apt front end listens on. Loopback by default; a LAN
    /// address exposes the daemon to other machines (consider --allow-host).
    #[arg(
        long,
        value_name = "ADDR",
        env = "DEBTORRENT_LISTEN",
        default_value = "127.0.0.1:9988"
    )]
    pub listen: SocketAddr,
    #[command(flatten)]
    pub data: DataDir,
    /// Log filter: error, warn, info, debug, trace, or a tracing directive list.
    #[arg(
        long,
        value_name = "LEVEL",
        env = "DEBTORRENT_LOG_LEVEL",
        default_value = "info"
    )]
    pub log_level: String,
    /// Allow fetching from this upstream port as well as 80 and 443 (repeatable).
    #[arg(
        long = "allow-port",
        value_name = "PORT",
        env = "DEBTORRENT_ALLOW_PORT",
        value_delimiter = ','
    )]
    pub allow_port: Vec<u16>,
    /// Only fetch from these mirror hosts (repeatable); empty allows any host on an allowed port.
    #[arg(
        long = "allow-host",
        value_name = "HOST",
        env = "DEBTORRENT_ALLOW_HOST",
        value_delimiter = ','
    )]
    pub allow_host: Vec<String>,
    /// Largest total size of stored package files (K, M, G, T suffixes: powers of 1024).
    #[arg(long, value_name = "SIZE", env = "DEBTORRENT_CACHE_SIZE", default_value = "20G", value_parser = parse_size)]
    pub cache_size: u64,
    /// Seconds to wait for a mirror's next bytes before giving up on it.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "DEBTORRENT_UPSTREAM_TIMEOUT",
        default_value = "30"
    )]
    pub upstream_timeout: u64,
    /// Seconds to wait for a connection to a mirror.
    #[arg(
        long,
        value_name = "SECONDS",
        env = "DEBTORRENT_CONNECT_TIMEOUT",
        default_value = "10"
    )]
    pub connect_timeout: u64,
    /// Most apt connections at once. When full, a new connection takes the
    /// slot of the one doing least (a slow request head, else the longest
    /// idle); 8 more slots serve only the status pages.
    #[arg(
        long,
        value_name = "N",
        env = "DEBTORRENT_MAX_CONNECTIONS",
        default_value = "512"
    )]
    pub max_connections: usize,
    /// Most apt connections from one address, when listening beyond
    /// loopback (a LAN's machines cannot take each other's slots).
    #[arg(
        long,
        value_name = "N",
        env = "DEBTORRENT_MAX_CONNECTIONS_PER_IP",
        default_value = "64"
    )]
    pub max_connections_per_ip: usize,
    /// A request head must be complete this long after its first byte, or
    /// it is answered 408 (a deadline, not an idle timer: slow clients
    /// cannot hold a slot by sending a byte now and then).
    #[arg(long, value_name = "DURATION", env = "DEBTORRENT_REQUEST_HEAD_TIMEOUT", default_value = "5s", value_parser = parse_millis)]
    pub request_head_timeout: u64,
    /// Also trust the CA certificates in this PEM file for HTTPS mirrors
    /// (e.g. an organisation's internal CA); the system store is always used.
    #[arg(long, value_name = "FILE", env = "DEBTORRENT_CA_FILE")]
    pub ca_file: Option<PathBuf>,
    /// Address for BitTorrent: peers connect here over TCP, and the DHT uses
    /// the same port over UDP. Port 0 picks a free port. `0.0.0.0` also
    /// listens on `[::]` (IPv6) with the same port, and LAN discovery then
    /// runs on both IPv4 and IPv6 multicast.
    #[arg(
        long,
        value_name = "IP:PORT",
        env = "DEBTORRENT_PEER_ADDR",
        default_value = "0.0.0.0:6881"
    )]
    pub peer_addr: SocketAddr,
    /// DHT bootstrap nodes, replacing the public routers
    /// (router.bittorrent.com:6881, dht.transmissionbt.com:6881,
    /// dht.libtorrent.org:25401); `none` starts with an empty table (the
    /// first node of a private DHT). Giving a list runs the node in server
    /// mode, which a private DHT needs.
    #[arg(long, value_name = "HOST:PORT[,...]", env = "DEBTORRENT_DHT_BOOTSTRAP")]
    pub dht_bootstrap: Option<String>,
    /// Which crate runs the DHT node: `auto` is `librqbit` on the public
    /// DHT (it answers libtorrent's 2-byte transaction ids and speaks
    /// IPv6) and `mainline` for a private DHT (`--dht-bootstrap` given),
    /// which it forms at any size (docs/swarm-design.md §2.5).
    #[arg(
        long,
        value_name = "auto|mainline|librqbit",
        env = "DEBTORRENT_DHT_IMPL",
        value_enum,
        default_value = "auto"
    )]
    pub dht_impl: crate::discovery::DhtImpl,
    /// No DHT (peers then come from trackers, LAN discovery and PEX).
    #[arg(long, env = "DEBTORRENT_NO_DHT", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", value_name = "BOOL")]
    pub no_dht: bool,
    /// No port mapping on the router (UPnP IGD). By default the peer port
    /// (TCP and UDP) is mapped on a UPnP gateway when the peer address is
    /// not loopback, renewed while the daemon runs and removed at shutdown.
    #[arg(long, env = "DEBTORRENT_NO_UPNP", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", value_name = "BOOL")]
    pub no_upnp: bool,
    /// Lease asked for a UPnP port mapping; it is renewed at half (0: a
    /// permanent mapping, still removed at shutdown).
    #[arg(long, value_name = "DURATION", env = "DEBTORRENT_UPNP_LEASE", default_value = "30m", value_parser = parse_millis)]
    pub upnp_lease: u64,
    /// No BEP 14 local service discovery (multicast on the LAN).
    #[arg(long, env = "DEBTORRENT_NO_LSD", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", value_name = "BOOL")]
    pub no_lsd: bool,
    /// A BitTorrent tracker to announce to (http:// or udp://; repeatable).
    #[arg(
        long = "tracker",
        value_name = "URL",
        env = "DEBTORRENT_TRACKER",
        value_delimiter = ','
    )]
    pub tracker: Vec<String>,
    /// No BitTorrent at all: no peer port, no discovery, every package from
    /// the mirror (a verifying cache).
    #[arg(long, env = "DEBTORRENT_NO_PEERS", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", value_name = "BOOL")]
    pub no_peers: bool,
    /// How long apt may wait for a peer to turn up before the mirror starts
    /// on a piece nobody has (e.g. 500ms, 1s, 2.5s).
    #[arg(long, value_name = "DURATION", env = "DEBTORRENT_PEER_WAIT", default_value = "1s", value_parser = parse_millis)]
    pub peer_wait: u64,
    /// A peer with requests out that sends nothing for this long is
    /// snubbed, and its blocks go to other peers or the mirror.
    #[arg(long, value_name = "DURATION", env = "DEBTORRENT_STALL_TIMEOUT", default_value = "2s", value_parser = parse_millis)]
    pub stall_timeout: u64,
    /// Packages up to this size that take bytes from peers reach apt only
    /// once verified, so a corrupt peer never shows apt a failed download.
    /// Larger ones stream with the last byte held back.
    #[arg(long, value_name = "SIZE", env = "DEBTORRENT_HOLD_WHOLE", default_value = "4M", value_parser = parse_size)]
    pub hold_whole: u64,
    /// Most peer connections in total.
    #[arg(
        long,
        value_name = "N",
        env = "DEBTORRENT_MAX_PEERS",
        default_value = "200"
    )]
    pub max_peers: usize,
    /// Most peer connections from one IP address, per swarm we are in (a
    /// connection carries one swarm, and neighbours share several).
    #[arg(
        long,
        value_name = "N",
        env = "DEBTORRENT_MAX_PEERS_PER_IP",
        default_value = "2"
    )]
    pub max_peers_per_ip: usize,
    /// Most peer connections per torrent.
    #[arg(
        long,
        value_name = "N",
        env = "DEBTORRENT_MAX_PEERS_PER_TORRENT",
        default_value = "50"
    )]
    pub max_peers_per_torrent: usize,
    /// Peers uploaded to at once per torrent (plus one optimistic unchoke).
    #[arg(
        long,
        value_name = "N",
        env = "DEBTORRENT_UPLOAD_SLOTS",
        default_value = "8"
    )]
    pub upload_slots: usize,
    /// Upload limit in bytes per second over all peers (K, M, G suffixes); 0 means no limit.
    #[arg(long, value_name = "RATE", env = "DEBTORRENT_UPLOAD_RATE", default_value = "0", value_parser = parse_size)]
    pub upload_rate: u64,
    /// Upload nothing (every peer stays choked).
    #[arg(long, env = "DEBTORRENT_NO_SEED", action = ArgAction::Set, num_args = 0..=1, default_value = "false", default_missing_value = "true", value_name = "BOOL")]
    pub no_seed: bool,
    /// How long a peer that sent corrupt data stays banned.
    #[arg(long, value_name = "DURATION", env = "DEBTORRENT_BAN_TIME", default_value = "1h", value_parser = parse_millis)]
    pub ban_time: u64,
    /// Strikes (shares of failed pieces that could not be pinned on one
    /// peer) before a ban.
    #[arg(
        long,
        value_name = "N",
        env = "DEBTORRENT_BAN_STRIKES",
        default_value = "2"
    )]
    pub ban_strikes: u32,
}

/// Parses a duration into milliseconds: `500ms`, `2s`, `1.5s`, `10m`, `1h`,
/// or a bare number of seconds.
pub fn parse_millis(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = if let Some(n) = s.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1000.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60_000.0)
    } else if let Some(n) = s.strip_suffix('h') {
        (n, 3_600_000.0)
    } else {
        (s, 1000.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (e.g. 500ms, 2s, 1h)"))?;
    if !v.is_finite() || v < 0.0 || v * mul > 1e15 {
        return Err(format!("not a duration: {s:?}"));
    }
    Ok((v * mul).round() as u64)
}

/// Options of `debtorrent sources`.
#[derive(Args, Debug, Clone)]
pub struct SourcesArgs {
    /// sources.list or .sources files; default: /etc/apt/sources.list and /etc/apt/sources.list.d/*.{list,sources}.
    #[arg(value_name = "FILE")]
    pub files: Vec<PathBuf>,
    /// The daemon's URL as apt should reach it.
    #[arg(long, value_name = "URL", default_value = "http://localhost:9988")]
    pub daemon: String,
    /// Turn daemon URLs back into direct mirror URLs.
    #[arg(long)]
    pub revert: bool,
    /// Write the result into the files instead of printing it: atomically,
    /// after copying each changed file into --backup-dir. With --revert, this
    /// also reverts every daemon URL an earlier --apply used (what the
    /// package runs when it is removed).
    #[arg(long)]
    pub apply: bool,
    /// Where --apply keeps a copy of each file before changing it [default: /var/backups/debtorrent].
    #[arg(long, value_name = "DIR")]
    pub backup_dir: Option<PathBuf>,
    /// Treat DIR as the root file system: the default files are under DIR/etc/apt
    /// and the default backup folder under DIR (for `dpkg --root` installs).
    #[arg(long, value_name = "DIR", default_value = "/")]
    pub root: PathBuf,
}

/// Options of `debtorrent import`.
#[derive(Args, Debug, Clone)]
pub struct ImportArgs {
    /// Folder of .deb files to import.
    pub dir: PathBuf,
    #[command(flatten)]
    pub data: DataDir,
}

/// Options of `debtorrent status`.
#[derive(Args, Debug, Clone)]
pub struct StatusArgs {
    /// The daemon's address (as `serve --listen`). Default: `listen` from
    /// the config file, else 127.0.0.1:9988.
    #[arg(long, value_name = "ADDR", env = "DEBTORRENT_LISTEN")]
    pub listen: Option<String>,
    /// The daemon's config file, read for its `listen` address. Default:
    /// /etc/debtorrent/debtorrent.toml when it exists.
    #[arg(long, value_name = "FILE", env = "DEBTORRENT_CONFIG")]
    pub config: Option<PathBuf>,
    /// Print the daemon's /status.json instead of the summary.
    #[arg(long)]
    pub json: bool,
}

/// Parses `123`, `64K`, `512M`, `20G`, `1T` (powers of 1024).
pub fn parse_size(s: &str) -> Result<u64, String> {
    let s = s.trim();
    let (num, mul) = match s.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let mul: u64 = match c.to_ascii_uppercase() {
                'K' => 1 << 10,
                'M' => 1 << 20,
                'G' => 1 << 30,
                'T' => 1 << 40,
                _ => return Err(format!("unknown size suffix in {s:?} (use K, M, G or T)")),
            };
            (&s[..i], mul)
        }
        _ => (s, 1),
    };
    num.trim()
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(mul))
        .ok_or_else(|| format!("not a size: {s:?}"))
}

/// Parses the command line (and the config file, for `serve`).
pub fn parse() -> anyhow::Result<Cli> {
    parse_from(std::env::args_os().collect())
}

/// Like [`parse`], from given arguments.
pub fn parse_from(mut args: Vec<std::ffi::OsString>) -> anyhow::Result<Cli> {
    let matches = Cli::command().get_matches_from(args.clone());
    if let Some(("serve", sub)) = matches.subcommand() {
        if let Some(path) = sub.get_one::<PathBuf>("config") {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("cannot read config file {}", path.display()))?;
            let extra = file_args(&text, sub)
                .with_context(|| format!("in config file {}", path.display()))?;
            args.extend(extra.into_iter().map(Into::into));
        }
    }
    let matches = Cli::command().try_get_matches_from(args)?;
    Ok(Cli::from_arg_matches(&matches)?)
}

/// Turns config-file keys into `--key=value` arguments for the options the
/// command line and environment left at their defaults.
fn file_args(text: &str, given: &clap::ArgMatches) -> anyhow::Result<Vec<String>> {
    let table: toml::Table = text.parse().context("not valid TOML")?;
    let serve = Cli::command();
    let serve = serve
        .find_subcommand("serve")
        .context("internal: no serve command")?;
    let mut out = Vec::new();
    for (key, value) in table {
        let Some(arg) = serve
            .get_arguments()
            .find(|a| a.get_long() == Some(key.as_str()) && key != "config")
        else {
            bail!("unknown option {key:?} (see `debtorrent config-reference`)");
        };
        let id = arg.get_id().as_str();
        if matches!(
            given.value_source(id),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        ) {
            continue;
        }
        let values = match value {
            toml::Value::Array(items) => items,
            v => vec![v],
        };
        for v in values {
            let v = match v {
                toml::Value::String(s) => s,
                toml::Value::Integer(i) => i.to_string(),
                toml::Value::Boolean(b) => b.to_string(),
                other => bail!("option {key:?}: unsupported value {other}"),
            };
            out.push(format!("--{key}={v}"));
        }
    }
    Ok(out)
}

/// A commented TOML file with every `serve` option and its default.
pub fn reference() -> String {
    let cmd = Cli::command();
    let mut s = String::from(
        "# debtorrent configuration (TOML). Every key is a `debtorrent serve` option;\n\
         # the command line and DEBTORRENT_* environment variables override this file.\n\
         # Generated by `debtorrent config-reference`.\n",
    );
    let Some(serve) = cmd.find_subcommand("serve") else {
        return s;
    };
    for arg in serve.get_arguments() {
        let Some(long) = arg.get_long() else { continue };
        if long == "config" || long == "help" || long == "version" {
            continue;
        }
        s.push('\n');
        if let Some(help) = arg.get_long_help().or(arg.get_help()) {
            for line in help.to_string().lines() {
                s.push_str(&format!("# {line}\n"));
            }
        }
        if let Some(env) = arg.get_env() {
            s.push_str(&format!("# Environment: {}\n", env.to_string_lossy()));
        }
        let defaults: Vec<String> = arg
            .get_default_values()
            .iter()
            .map(|v| v.to_string_lossy().into_owned())
            .collect();
        let multiple = arg.get_value_delimiter().is_some();
        let value = match (defaults.first(), multiple) {
            (_, true) => "[]".to_string(),
            (Some(d), false) if d.parse::<u64>().is_ok() => d.clone(),
            (Some(d), false) => format!("{d:?}"),
            (None, false) => {
                // No default: show the kind of value expected.
                let name = arg
                    .get_value_names()
                    .and_then(|v| v.first())
                    .map_or_else(|| "VALUE".to_string(), |n| n.to_string());
                format!("{name:?}")
            }
        };
        s.push_str(&format!("#{long} = {value}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve(args: &[&str]) -> anyhow::Result<ServeArgs> {
        let mut v: Vec<std::ffi::OsString> = vec!["debtorrent".into(), "serve".into()];
        v.extend(args.iter().map(Into::into));
        match parse_from(v)?.command {
            Command::Serve(s) => Ok(*s),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn sizes() {
        let cases = [
            ("123", Some(123)),
            ("64K", Some(64 << 10)),
            ("20g", Some(20 << 30)),
            ("1T", Some(1 << 40)),
            ("", None),
            ("G", None),
            ("12X", None),
            ("-1", None),
            ("99999999999T", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_size(s).ok(), want, "{s}");
        }
    }

    #[test]
    fn file_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(
            &f,
            "listen = \"127.0.0.2:1234\"\nallow-port = [8080, 8081]\ncache-size = \"1G\"\nlog-level = \"debug\"\n",
        )
        .unwrap();
        let cfg = f.to_str().unwrap();
        let s = serve(&["--config", cfg]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.2:1234");
        assert_eq!(s.allow_port, vec![8080, 8081]);
        assert_eq!(s.cache_size, 1 << 30);
        let s = serve(&[
            "--config",
            cfg,
            "--listen",
            "127.0.0.3:1",
            "--allow-port",
            "9",
        ])
        .unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.3:1", "flag beats file");
        assert_eq!(s.allow_port, vec![9], "flag replaces the file's list");
        assert_eq!(s.log_level, "debug", "file beats default");
        let s = serve(&[]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9988");
        assert_eq!(s.cache_size, 20 << 30);
    }

    #[test]
    fn bad_files_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cases = [
            ("nonsense = 1\n", "unknown option \"nonsense\""),
            ("listen = [\n", "not valid TOML"),
            ("cache-size = \"huge\"\n", "cache-size"),
        ];
        for (text, needle) in cases {
            let f = dir.path().join("c.toml");
            std::fs::write(&f, text).unwrap();
            let err = serve(&["--config", f.to_str().unwrap()]).unwrap_err();
            let msg = format!("{err:#}");
            assert!(msg.contains(needle), "{text:?}: {msg}");
        }
    }

    /// docs/configuration.md embeds `config-reference`; regenerate it with
    /// the command in that file when an option changes.
    #[test]
    fn configuration_doc_is_current() {
        let doc = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/docs/configuration.md"
        ))
        .unwrap();
        assert!(
            doc.contains(&reference()),
            "docs/configuration.md is stale: paste the output of `debtorrent config-reference` into it"
        );
    }

    #[test]
    fn reference_lists_every_option_and_parses_back() {
        let r = reference();
        for key in [
            "listen",
            "data-dir",
            "log-level",
            "allow-port",
            "allow-host",
            "cache-size",
        ] {
            assert!(r.contains(&format!("#{key} = ")), "{key} missing from\n{r}");
        }
        // Uncommented, the reference is a valid config giving the defaults.
        let uncommented: String = r
            .lines()
            .filter(|l| l.starts_with('#') && l.contains(" = "))
            .map(|l| format!("{}\n", &l[1..]))
            .collect();
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("c.toml");
        std::fs::write(&f, uncommented).unwrap();
        let s = serve(&["--config", f.to_str().unwrap()]).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9988");
    }
}
