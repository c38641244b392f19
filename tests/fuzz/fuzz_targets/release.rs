//! A Release or InRelease (clearsigned) file from a mirror.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    debtorrent::parsers::release(data);
});
