//! Any bytes as a .torrent file: never a panic; whatever is accepted
//! re-encodes to an info dict with the same pieces.
#![no_main]

use debtorrent_gen::read_metainfo;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = read_metainfo(data) {
        for p in m.torrent.pieces() {
            assert!(debtorrent_gen::check_path(p.path.as_bytes()).is_ok());
            assert_eq!(m.torrent.find(p.path).map(|q| q.index), Some(p.index));
        }
    }
});
