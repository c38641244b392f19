//! Times building the torrent of a real index in-process and one million
//! path -> piece lookups on it (90% hits, 10% misses). Used by
//! `bench/gen/run.sh`; prints `build_s lookups_s pieces heap_bytes`.

use std::time::Instant;

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args().nth(1).ok_or("usage: lookups INDEX")?;
    let data = std::fs::read(&path)?;
    let t0 = Instant::now();
    let built = debtorrent_gen::build_from_bytes(&data, &debtorrent_gen::Options::default())?;
    let build_s = t0.elapsed().as_secs_f64();
    let t = built.torrent;
    let mut probes: Vec<String> = t.pieces().map(|p| p.path.to_string()).collect();
    let misses: Vec<String> = probes
        .iter()
        .take(probes.len() / 9)
        .map(|p| format!("{p}.missing"))
        .collect();
    probes.extend(misses);
    // A fixed shuffle so lookups do not walk the table in order.
    let mut s: u64 = 0x9e3779b97f4a7c15;
    for i in (1..probes.len()).rev() {
        s ^= s << 13;
        s ^= s >> 7;
        s ^= s << 17;
        probes.swap(i, (s % (i as u64 + 1)) as usize);
    }
    // Lay the probes out contiguously, as a request path sits in a hot
    // request buffer: what is timed is the table, not the probe's allocation.
    let text: String = probes.concat();
    let mut bounds = Vec::with_capacity(probes.len());
    let mut at = 0;
    for p in &probes {
        bounds.push((at, at + p.len()));
        at += p.len();
    }
    let t1 = Instant::now();
    let mut hits = 0u64;
    for i in 0..1_000_000 {
        let (a, b) = bounds[i % bounds.len()];
        if t.find(&text[a..b]).is_some() {
            hits += 1;
        }
    }
    let lookups_s = t1.elapsed().as_secs_f64();
    assert!(hits > 800_000, "expected about 90% hits, got {hits}");
    println!(
        "{build_s:.4} {lookups_s:.4} {} {}",
        t.piece_count(),
        t.heap_bytes()
    );
    Ok(())
}
