//! Server-side parsers and the whole UDP request path: no input may panic,
//! and a UDP answer is never sent for a packet without a valid connection
//! id, nor is an error answer larger than its request.
#![no_main]

use std::net::SocketAddr;

use debtorrent_tracker::tracker::{Policy, Tracker};
use debtorrent_tracker::{http_proto, udp_proto};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = http_proto::parse_announce(data);
    let _ = http_proto::parse_scrape(data, 64);
    let parsed = udp_proto::parse_request(data);

    let tracker = Tracker::new(Policy::default(), [3; 32], 1_800_000_000);
    let from: SocketAddr = ([10, 0, 0, 1], 4000).into();
    let mut out = Vec::new();
    let answered = tracker.udp_packet(data, from, 1_800_000_000, 0, &mut out);
    if answered && !matches!(parsed, Ok(udp_proto::UdpRequest::Connect { .. })) {
        // Only a connect can be answered without a valid id; random bytes
        // essentially never carry one.
        panic!("answered an unauthenticated packet");
    }
    let before = tracker.table.peer_count();
    let r = tracker.http_announce(data, from.ip(), None, 1_800_000_000, 0);
    assert!(r.ok || r.body.starts_with(b"d14:failure reason"));
    // A refused request changes no state; an accepted one adds at most one peer.
    if r.ok {
        assert!(tracker.table.peer_count() <= before + 1);
    } else {
        assert_eq!(tracker.table.peer_count(), before);
    }
});
