//! Client-side parsers: tracker answers are untrusted input too.
#![no_main]

use debtorrent_tracker::{http_proto, udp_proto};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = http_proto::parse_announce_response(data);
    let _ = http_proto::parse_scrape_response(data);
    let _ = udp_proto::parse_response(data);
});
