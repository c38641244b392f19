//! How often a torrent is looked up: at most one lookup per
//! [`LOOKUP_EVERY`]; calls while one runs join it. Pure (the time comes
//! in); `mod.rs` performs what it decides.

use std::time::Instant;

use super::LOOKUP_EVERY;

/// What a [`Discovery::lookup`] call does (pure policy, see [`LookupGate`]).
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Gate {
    /// Start a lookup.
    Start,
    /// One is running: its end sends this call's `LookupDone` too.
    Join,
    /// One ran less than [`LOOKUP_EVERY`] ago: send `LookupDone` now.
    DoneNow,
}

/// Per torrent: at most one lookup per [`LOOKUP_EVERY`].
#[derive(Debug, Default)]
pub(super) struct LookupGate {
    last_start: Option<Instant>,
    running: bool,
    joined: u32,
}

impl LookupGate {
    pub(super) fn request(&mut self, now: Instant) -> Gate {
        if self.running {
            self.joined += 1;
            return Gate::Join;
        }
        match self.last_start {
            Some(t) if now.saturating_duration_since(t) < LOOKUP_EVERY => Gate::DoneNow,
            _ => {
                self.last_start = Some(now);
                self.running = true;
                Gate::Start
            }
        }
    }
    /// The running lookup ended: how many `LookupDone` to send.
    pub(super) fn finish(&mut self) -> u32 {
        self.running = false;
        1 + std::mem::take(&mut self.joined)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn lookup_gate() {
        let t0 = Instant::now();
        let s = |secs: u64| t0 + Duration::from_secs(secs);
        let mut g = LookupGate::default();
        assert_eq!(g.request(t0), Gate::Start);
        assert_eq!(g.request(s(1)), Gate::Join);
        assert_eq!(g.request(s(2)), Gate::Join);
        assert_eq!(g.finish(), 3);
        assert_eq!(g.request(s(3)), Gate::DoneNow);
        assert_eq!(g.request(s(4)), Gate::DoneNow);
        assert_eq!(g.request(s(5)), Gate::Start);
        assert_eq!(g.finish(), 1);
        assert_eq!(g.finish(), 1, "a stray finish sends its own done");
    }
}
