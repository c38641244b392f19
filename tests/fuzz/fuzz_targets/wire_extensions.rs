//! BEP 10 extension payloads from a peer: the same bytes are fed to the
//! extended handshake, `ut_pex` (BEP 11) and `dt_wip` decoders.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    debtorrent::parsers::wire_extensions(data);
});
