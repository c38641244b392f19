//! The request target (`/HOST/PATH`, `/https/HOST/PATH`, `http://HOST/PATH`)
//! -> upstream URL parser, with its safety rules. Invalid UTF-8 is replaced
//! (U+FFFD), so every input still reaches the parser.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    debtorrent::parsers::request_target(&String::from_utf8_lossy(data));
});
