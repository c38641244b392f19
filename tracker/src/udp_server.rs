//! The UDP side (BEP 15): worker threads that each block in `recv_from` on
//! a clone of one socket and answer in place. Plain threads rather than
//! tokio tasks: a UDP announce is one packet in and one out, and a blocking
//! loop costs exactly those two system calls, with no reactor wake-ups.
//! This is the hottest path of the tracker (see docs/tracker.md).

use std::io::ErrorKind;
use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use crate::tracker::Tracker;
use crate::types::{random_u64, unix_now};

/// How often a worker checks the stop flag when idle.
const POLL: Duration = Duration::from_millis(200);

/// Start `threads` workers on `socket`. They return when `stop` is set.
pub fn spawn(
    socket: UdpSocket,
    tracker: Arc<Tracker>,
    threads: usize,
    stop: Arc<AtomicBool>,
) -> std::io::Result<Vec<JoinHandle<()>>> {
    socket.set_read_timeout(Some(POLL))?;
    let mut handles = Vec::new();
    for i in 0..threads.max(1) {
        let sock = socket.try_clone()?;
        let t = tracker.clone();
        let stop = stop.clone();
        handles.push(
            std::thread::Builder::new()
                .name(format!("udp-{i}"))
                .spawn(move || worker(sock, t, stop))?,
        );
    }
    Ok(handles)
}

fn worker(sock: UdpSocket, t: Arc<Tracker>, stop: Arc<AtomicBool>) {
    let _span = tracing::debug_span!("udp", local = ?sock.local_addr().ok()).entered();
    // Larger than any valid request (scrape: 16 + 74 * 20 = 1496 bytes);
    // anything longer arrives truncated and is treated as garbage.
    let mut buf = [0u8; 2048];
    let mut out = Vec::with_capacity(2048);
    // The clock is read once per packet; cheap (vDSO).
    while !stop.load(Ordering::Relaxed) {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                if t.udp_packet(&buf[..n], from, unix_now(), random_u64(), &mut out) {
                    if let Err(e) = sock.send_to(&out, from) {
                        tracing::debug!(%from, error = %e, "send failed");
                    }
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    ErrorKind::WouldBlock | ErrorKind::TimedOut | ErrorKind::Interrupted
                ) => {}
            Err(e) => {
                // e.g. ICMP port unreachable reported on Linux: not fatal.
                tracing::debug!(error = %e, "recv failed");
            }
        }
    }
}
