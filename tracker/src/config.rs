//! Configuration: every option is declared once, in the `options!` list
//! below, and from that one declaration come the command-line flag, the
//! environment variable, the TOML key (same name as the flag), the
//! `--help` text and the built-in default. Precedence: flag, then
//! environment, then config file, then default. Clap gives flag over env;
//! `Options::or` lays the file underneath; `Options::resolve` fills in the
//! defaults.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use clap::Parser;
use ipnet::IpNet;
use serde::Deserialize;

#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read config file {0}: {1}")]
    Read(PathBuf, std::io::Error),
    #[error("bad config file {0}: {1}")]
    Parse(PathBuf, toml::de::Error),
}

macro_rules! options {
    ($(
        $doc:literal
        $(#[$m:meta])*
        $name:ident : [$($ty:tt)+] = $default:expr, $shown:literal;
    )*) => {
        /// debtorrent-tracker: a BitTorrent tracker (HTTP and UDP) for
        /// organisations. Options come from flags, then DEBTORRENT_TRACKER_*
        /// environment variables, then the --config TOML file (keys are the
        /// flag names), then the defaults shown.
        #[derive(Parser, Deserialize, Debug, Default, Clone)]
        #[command(name = "debtorrent-tracker", version)]
        #[serde(deny_unknown_fields, rename_all = "kebab-case")]
        pub struct Options {
            /// TOML configuration file.
            #[arg(long, env = "DEBTORRENT_TRACKER_CONFIG", value_name = "FILE")]
            #[serde(skip)]
            pub config: Option<PathBuf>,
            $(
                #[doc = $doc]
                $(#[$m])*
                #[arg(help = concat!($doc, " [default: ", $shown, "]"))]
                pub $name: Option<$($ty)+>,
            )*
        }

        /// The resolved configuration.
        #[derive(Debug, Clone)]
        pub struct Config {
            $( pub $name: $($ty)+, )*
        }

        impl Options {
            /// `self` where set, else `lower`.
            pub fn or(self, lower: Options) -> Options {
                Options {
                    config: self.config.or(lower.config),
                    $( $name: self.$name.or(lower.$name), )*
                }
            }

            /// Fill unset options with their defaults.
            pub fn resolve(self) -> Config {
                Config {
                    $( $name: self.$name.unwrap_or_else(|| $default), )*
                }
            }
        }
    };
}

options! {
    "HTTP listen address (announce URL: http://ADDR/announce)."
    #[arg(long, env = "DEBTORRENT_TRACKER_HTTP_LISTEN", value_name = "IP:PORT")]
    http_listen: [SocketAddr] = SocketAddr::from(([0, 0, 0, 0], 6969)), "0.0.0.0:6969";

    "UDP listen address (BEP 15; announce URL: udp://ADDR/announce)."
    #[arg(long, env = "DEBTORRENT_TRACKER_UDP_LISTEN", value_name = "IP:PORT")]
    udp_listen: [SocketAddr] = SocketAddr::from(([0, 0, 0, 0], 6969)), "0.0.0.0:6969";

    "Directory for the state snapshot (state.sqlite)."
    #[arg(long, env = "DEBTORRENT_TRACKER_DATA_DIR", value_name = "DIR")]
    data_dir: [PathBuf] = PathBuf::from("/var/lib/debtorrent-tracker"), "/var/lib/debtorrent-tracker";

    "Seconds between announces asked of clients."
    #[arg(long, env = "DEBTORRENT_TRACKER_INTERVAL", value_name = "SECS")]
    interval: [u32] = 900, "900";

    "Minimum seconds between announces (`min interval`)."
    #[arg(long, env = "DEBTORRENT_TRACKER_MIN_INTERVAL", value_name = "SECS")]
    min_interval: [u32] = 60, "60";

    "Drop a peer that has not announced for this many seconds."
    #[arg(long, env = "DEBTORRENT_TRACKER_PEER_TIMEOUT", value_name = "SECS")]
    peer_timeout: [u32] = 2100, "2100";

    "Peers returned when the client does not send numwant."
    #[arg(long, env = "DEBTORRENT_TRACKER_NUMWANT_DEFAULT", value_name = "N")]
    numwant_default: [u32] = 50, "50";

    "Most peers returned per announce, whatever numwant says."
    #[arg(long, env = "DEBTORRENT_TRACKER_NUMWANT_MAX", value_name = "N")]
    numwant_max: [u32] = 200, "200";

    "Most info hashes in one HTTP scrape (UDP: at most 74 by packet size)."
    #[arg(long, env = "DEBTORRENT_TRACKER_MAX_SCRAPE", value_name = "N")]
    max_scrape: [usize] = 64, "64";

    "Most peers stored per torrent; further peers get answers but are not stored."
    #[arg(long, env = "DEBTORRENT_TRACKER_MAX_PEERS_PER_TORRENT", value_name = "N")]
    max_peers_per_torrent: [usize] = 10_000, "10000";

    "Most peers stored in total."
    #[arg(long, env = "DEBTORRENT_TRACKER_MAX_PEERS_TOTAL", value_name = "N")]
    max_peers_total: [usize] = 5_000_000, "5000000";

    "File of allowed info hashes (40 hex digits per line, opentracker's whitelist format); empty = any torrent."
    #[arg(long, env = "DEBTORRENT_TRACKER_ALLOWLIST", value_name = "FILE")]
    allowlist: [PathBuf] = PathBuf::new(), "\"\" (any)";

    "Client networks served (comma-separated CIDRs); empty = everyone."
    #[arg(long, env = "DEBTORRENT_TRACKER_ALLOW_NETWORKS", value_name = "CIDR,...", value_delimiter = ',')]
    allow_networks: [Vec<IpNet>] = Vec::new(), "\"\" (everyone)";

    "Reverse proxies whose `ip` parameter / X-Forwarded-For is trusted (comma-separated CIDRs)."
    #[arg(long, env = "DEBTORRENT_TRACKER_TRUSTED_PROXIES", value_name = "CIDR,...", value_delimiter = ',')]
    trusted_proxies: [Vec<IpNet>] = Vec::new(), "\"\" (none)";

    "IPv4 prefix length of \"the announcer's subnet\", whose peers are returned first."
    #[arg(long, env = "DEBTORRENT_TRACKER_LOCALITY_PREFIX_V4", value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=32))]
    locality_prefix_v4: [u8] = 24, "24";

    "IPv6 prefix length of \"the announcer's subnet\"."
    #[arg(long, env = "DEBTORRENT_TRACKER_LOCALITY_PREFIX_V6", value_name = "BITS", value_parser = clap::value_parser!(u8).range(0..=128))]
    locality_prefix_v6: [u8] = 64, "64";

    "Seconds between state snapshots (the most announces a crash can lose)."
    #[arg(long, env = "DEBTORRENT_TRACKER_SNAPSHOT_INTERVAL", value_name = "SECS")]
    snapshot_interval: [u64] = 60, "60";

    "UDP worker threads; 0 = one per available core."
    #[arg(long, env = "DEBTORRENT_TRACKER_UDP_THREADS", value_name = "N")]
    udp_threads: [usize] = 0, "0";

    "Log filter (tracing-subscriber EnvFilter syntax)."
    #[arg(long, env = "DEBTORRENT_TRACKER_LOG", value_name = "FILTER")]
    log: [String] = "info".to_string(), "info";
}

impl Options {
    /// Parse a TOML config file.
    pub fn from_file(path: &Path) -> Result<Options, ConfigError> {
        let text =
            std::fs::read_to_string(path).map_err(|e| ConfigError::Read(path.to_path_buf(), e))?;
        Self::from_toml(&text).map_err(|e| ConfigError::Parse(path.to_path_buf(), e))
    }

    pub fn from_toml(text: &str) -> Result<Options, toml::de::Error> {
        toml::from_str(text)
    }

    /// Flags and environment, then the config file they name, then defaults.
    pub fn load<I, T>(args: I) -> Result<Config, ConfigError>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let cli = Options::parse_from(args);
        let file = match &cli.config {
            Some(p) => Options::from_file(p)?,
            None => Options::default(),
        };
        Ok(cli.or(file).resolve())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn precedence() {
        let file = Options::from_toml(
            "interval = 100\nmin-interval = 10\nhttp-listen = \"127.0.0.1:1\"\nallow-networks = [\"10.0.0.0/8\"]\n",
        )
        .unwrap();
        let cli = Options::try_parse_from([
            "t",
            "--interval",
            "200",
            "--trusted-proxies",
            "10.1.0.0/16,::1/128",
        ])
        .unwrap();
        let c = cli.or(file).resolve();
        assert_eq!(c.interval, 200, "flag beats file");
        assert_eq!(c.min_interval, 10, "file beats default");
        assert_eq!(c.http_listen, "127.0.0.1:1".parse().unwrap());
        assert_eq!(c.peer_timeout, 2100, "default");
        assert_eq!(c.allow_networks.len(), 1);
        assert_eq!(c.trusted_proxies.len(), 2);
        assert_eq!(c.data_dir, PathBuf::from("/var/lib/debtorrent-tracker"));
    }

    #[test]
    fn bad_inputs() {
        assert!(Options::from_toml("no-such-option = 1").is_err());
        assert!(Options::from_toml("interval = \"soon\"").is_err());
        for args in [
            vec!["t", "--locality-prefix-v4", "33"],
            vec!["t", "--http-listen", "nowhere"],
            vec!["t", "--allow-networks", "10.0.0.0/99"],
        ] {
            assert!(Options::try_parse_from(&args).is_err(), "{args:?}");
        }
    }

    #[test]
    fn help_lists_every_option() {
        use clap::CommandFactory;
        let help = Options::command().render_long_help().to_string();
        for flag in [
            "--http-listen",
            "--udp-listen",
            "--data-dir",
            "--allowlist",
            "--locality-prefix-v6",
            "--config",
        ] {
            assert!(help.contains(flag), "{flag}");
        }
        assert!(help.contains("[default: 900]"));
    }
}
