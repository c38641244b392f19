//! Any bytes, compressed or not, fed whole and in chunks: never a panic, and
//! chunking never changes the result.
#![no_main]

use debtorrent_gen::{build_from_bytes, Builder, Options};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let opts = Options { max_size: 1 << 24, ..Options::default() };
    let whole = build_from_bytes(data, &opts).map(|b| b.torrent.info_hash());
    if let Some((&split, rest)) = data.split_first() {
        // Only uncompressed input can be fed to the builder directly.
        let mut b = Builder::new(None);
        let step = usize::from(split).max(1);
        let mut ok = true;
        for chunk in rest.chunks(step) {
            ok &= b.feed(chunk).is_ok();
        }
        if ok && debtorrent_gen::Compression::detect(rest) == debtorrent_gen::Compression::None {
            let chunked = b.finish().map(|(t, _)| t.info_hash());
            let single = build_from_bytes(rest, &opts).map(|b| b.torrent.info_hash());
            assert_eq!(chunked.ok(), single.ok());
        }
    }
    let _ = whole;
});
