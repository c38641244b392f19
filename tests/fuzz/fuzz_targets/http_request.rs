//! The apt front end's HTTP/1.1 request-head parser on the bytes a client
//! sends (one or more pipelined requests, or a partial one).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    debtorrent::parsers::http_request(data);
});
