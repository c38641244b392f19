//! Helpers shared by the integration tests.

use std::io::Write;

/// `plain` in every compression debtorrent-gen reads, named as the library
/// reports the format.
pub fn compressed(plain: &[u8]) -> Vec<(&'static str, Vec<u8>)> {
    // lz4 frames carry a content checksum, as the lz4 CLI and apt write
    // them; without one, flipped bytes in a literal run are undetectable.
    let mut info = lz4_flex::frame::FrameInfo::new();
    info.content_checksum = true;
    let mut lz = lz4_flex::frame::FrameEncoder::with_frame_info(info, Vec::new());
    lz.write_all(plain).unwrap();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(plain).unwrap();
    let mut bz = bzip2::write::BzEncoder::new(Vec::new(), bzip2::Compression::default());
    bz.write_all(plain).unwrap();
    let mut xz = liblzma::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(plain).unwrap();
    // zstd frames too carry their checksum, as the zstd CLI writes them.
    let mut zs = zstd::stream::Encoder::new(Vec::new(), 3).unwrap();
    zs.include_checksum(true).unwrap();
    zs.write_all(plain).unwrap();
    vec![
        ("gzip", gz.finish().unwrap()),
        ("bzip2", bz.finish().unwrap()),
        ("xz", xz.finish().unwrap()),
        ("lz4", lz.finish().unwrap()),
        ("zstd", zs.finish().unwrap()),
    ]
}
