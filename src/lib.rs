//! debtorrent: the daemon apt talks to, and its helper commands, as a
//! library. `src/main.rs` only parses the command line and calls [`run`];
//! the fuzz targets (`tests/fuzz`) reach the parsers through [`parsers`].
//!
//! Module map (pure = no sockets, no tokio, table-tested):
//! - `config`: every option, defined once (flags, env, file)
//! - `commands`: what each subcommand does; `daemon`: `serve`, from start
//!   to graceful shutdown
//! - `url` (pure): apt request target -> upstream URL, with the safety rules
//! - `release` (pure): Release/InRelease hash lists
//! - `index`: the registry of torrents per archive, and the one way a
//!   torrent gets registered (index -> torrent rules, pure part tested)
//! - `http1`: the HTTP/1.1 connection loop (pipelining, sendfile)
//! - `service`: what each request gets (store, mirror, pass-through)
//! - `mirror`: the mirror as a source: client, redirect policy, the one
//!   chunk loop, range fetches and the rate estimate
//! - `assembly`: a piece being received (from peers and the mirror),
//!   verified, then committed; shared by every reader of it
//! - `store` + `db`: the verified content store and its SQLite index
//! - `prune` (pure): what to delete when the store is over its size
//! - `sources` (pure): apt sources rewritten to go through the daemon
//! - `apply`: `sources --apply`: those rewrites written in place, with backups
//! - `stats`: counters and their recent history; `status`: the HTML/JSON
//!   status and Prometheus metrics; `transfers`: apt requests in flight
//!   and the log line each one writes
//! - `swarm`: the daemon as a BitTorrent peer (wire codec, picker, choker
//!   and the torrent state machine are pure; `torrent` and `conn` are the
//!   tasks that perform their effects)
//! - `discovery`: DHT, trackers and LAN discovery
//! - `types`: the words every module shares (`InfoHash`, `PieceIndex`,
//!   `PeerKey`, `Source`, `BLOCK`)

// Table-driven tests spell out their row types; that is the point of them.
#![cfg_attr(test, allow(clippy::type_complexity))]

mod admission;
mod apply;
mod assembly;
mod commands;
pub mod config;
mod daemon;
mod db;
mod discovery;
mod http1;
mod mirror;
mod prune;
mod registry;
mod release;
mod service;
mod sources;
mod stats;
mod status;
mod store;
mod swarm;
mod transfers;
pub mod types;
mod url;

pub use commands::run;
/// The peer wire codec (BEP 3, 6, 10, 11 and `dt_wip`), pure: for tests
/// that play a peer, and for the fuzz targets.
pub use swarm::wire;

/// The parsers that read the network or a file, for the fuzz targets.
/// Each takes arbitrary bytes and must return an error, never panic.
pub mod parsers {
    /// The peer wire decoder: one frame from the front of a buffer.
    pub fn wire_decode(buf: &[u8], piece_count: u32) {
        let lim = crate::swarm::wire::Limits { piece_count };
        let mut rest = buf;
        while let Ok(Some((_, used))) = crate::swarm::wire::decode(rest, &lim) {
            if used == 0 || used > rest.len() {
                break;
            }
            rest = &rest[used..];
        }
    }

    /// The extension payloads we decode (`ut_pex`, `dt_wip`, `dt_hold`, the
    /// extended handshake).
    pub fn wire_extensions(buf: &[u8]) {
        let _ = crate::swarm::wire::Pex::decode(buf);
        let _ = crate::swarm::wire::Wip::decode(buf);
        let _ = crate::swarm::wire::Hold::decode(buf);
        let _ = crate::swarm::wire::ExtHandshake::decode(buf);
    }

    /// The HTTP/1.1 request-head parser of the apt front end.
    pub fn http_request(buf: &[u8]) {
        crate::http1::parse_for_fuzz(buf);
    }

    /// The request-target parser (apt's URL -> upstream URL).
    pub fn request_target(target: &str) {
        let policy = crate::url::Policy {
            ports: vec![80, 443, 8080],
            hosts: Vec::new(),
        };
        let _ = crate::url::parse_target(target, &policy);
    }

    /// The LAN discovery (BEP 14) message parser.
    pub fn lsd_search(buf: &[u8]) {
        let _ = crate::discovery::lsd::parse_search(buf);
    }

    /// The Release/InRelease parser.
    pub fn release(buf: &[u8]) {
        let _ = crate::release::Release::parse(buf);
    }
}
