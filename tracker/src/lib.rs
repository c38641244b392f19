//! debtorrent-tracker: a BitTorrent tracker for organisations, and the
//! tracker client the debtorrent daemon uses.
//!
//! Layout (see docs/tracker.md):
//! - pure protocol and policy code, no I/O: [`types`], [`http_proto`],
//!   [`udp_proto`], [`connid`], [`swarm`], [`tracker`], [`stats`];
//! - I/O at the edges: [`http_server`], [`udp_server`], [`client`];
//! - [`persist`] (SQLite snapshots) and [`config`] for the binary.

pub mod client;
pub mod config;
pub mod connid;
pub mod http_proto;
pub mod http_server;
pub mod persist;
pub mod stats;
pub mod swarm;
pub mod tracker;
pub mod types;
pub mod udp_proto;
pub mod udp_server;

pub use client::{ClientConfig, ClientError, TrackerClient};
pub use http_proto::{AnnounceParams, AnnounceResponse, ResponseError, ScrapeEntry};
pub use types::{Event, InfoHash, PeerId};
