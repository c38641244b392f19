//! A BEP 14 `BT-SEARCH` datagram from the LAN multicast group.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    debtorrent::parsers::lsd_search(data);
});
