//! End-to-end tests of the debtorrent daemon with real parts: a gpg-signed
//! repository built with dpkg-deb and apt-ftparchive, a real HTTP mirror on
//! loopback that can be made to fail, the real `apt-get`, and the real daemon
//! binary. See `support/` for the kit and tests/e2e/README.md for how to run.

mod support;

mod admin;
mod baseline;
mod dht_krpc;
mod dt2;
mod faults;
mod fleet;
mod frontend;
mod https;
mod interop;
mod ipv6;
mod lsd;
mod raw;
mod restart;
mod store;
mod swarm;
mod upnp;
