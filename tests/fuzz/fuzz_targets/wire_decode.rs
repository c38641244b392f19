//! The peer wire decoder on a byte stream from a peer: frames are decoded
//! one after another until one is incomplete or refused. The first 4 bytes
//! (big-endian) are the torrent's piece count, which sizes BITFIELD frames.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((count, stream)) = data.split_first_chunk::<4>() else {
        return;
    };
    debtorrent::parsers::wire_decode(stream, u32::from_be_bytes(*count));
});
