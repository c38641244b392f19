//! Byte rates and the upload limiter (pure: time comes in as `now_ms`).
//!
//! [`Rate`] feeds the choker (how fast a peer sends to us, how fast we send
//! to it) and the request pipeline depth (§9). [`TokenBucket`] is the
//! `--upload-rate` limit in the writer tasks (§11).
//!
//! Both take the time as milliseconds from any fixed origin, so tests drive
//! them without a clock. Time going backwards is treated as no time passing.

/// Exponentially weighted byte rate over about `window_ms` (e.g. 5000).
///
/// Why an exponential average rather than a ring of per-second buckets: it
/// costs a few words per meter whatever the window, needs no timer to rotate
/// buckets, and decays smoothly, so a peer that stops sending loses its
/// tit-for-tat rank gradually instead of all at once when a bucket drops out.
/// It starts at 0 and needs about three windows to reach a steady stream's
/// rate (63 % after one), which stops a single burst from a new peer looking
/// like a fast peer.
#[derive(Clone, Copy, Debug)]
pub struct Rate {
    window_ms: u64,
    last_ms: u64,
    /// When the first bytes came.
    first_ms: Option<u64>,
    total: u64,
    /// Bytes per millisecond as of `last_ms`.
    per_ms: f64,
}

impl Rate {
    /// A meter at 0 whose memory fades by 1/e every `window_ms` (0 acts as 1).
    pub fn new(window_ms: u64) -> Self {
        Rate {
            window_ms: window_ms.max(1),
            last_ms: 0,
            first_ms: None,
            total: 0,
            per_ms: 0.0,
        }
    }

    fn decayed(&self, now_ms: u64) -> f64 {
        let dt = now_ms.saturating_sub(self.last_ms) as f64;
        self.per_ms * (-dt / self.window_ms as f64).exp()
    }

    /// Records `bytes` that arrived (or left) at `now_ms`.
    pub fn add(&mut self, bytes: u64, now_ms: u64) {
        let now_ms = now_ms.max(self.last_ms);
        self.first_ms.get_or_insert(now_ms);
        // Continuous EWMA: an impulse of `bytes` adds bytes/window to the rate;
        // the mean over a steady stream is then exactly the stream's rate.
        self.per_ms = self.decayed(now_ms) + bytes as f64 / self.window_ms as f64;
        self.last_ms = now_ms;
        self.total = self.total.saturating_add(bytes);
    }

    /// The rate in bytes per second at `now_ms`.
    pub fn per_sec(&self, now_ms: u64) -> u64 {
        // `as` saturates and maps NaN to 0, which is what we want here.
        (self.decayed(now_ms) * 1000.0).round() as u64
    }

    /// The rate for decisions that cannot wait three windows (the mirror
    /// rules, the request queue depth): during the first window, the plain
    /// average since the first bytes (over at least 100 ms); the EWMA after.
    pub fn estimate(&self, now_ms: u64) -> u64 {
        match self.first_ms {
            Some(first) if now_ms.saturating_sub(first) < self.window_ms => {
                let ms = now_ms.saturating_sub(first).max(100);
                self.total.saturating_mul(1000) / ms
            }
            _ => self.per_sec(now_ms),
        }
    }

    /// The plain average since the first bytes (over at least 100 ms): what
    /// a whole transfer has shown, which a stall of a few seconds on a
    /// loaded machine does not wipe out as it does the EWMA.
    pub fn average(&self, now_ms: u64) -> u64 {
        match self.first_ms {
            Some(first) => {
                let ms = now_ms.saturating_sub(first).max(100);
                self.total.saturating_mul(1000) / ms
            }
            None => 0,
        }
    }

    /// All bytes ever added.
    #[cfg(test)]
    pub fn total(&self) -> u64 {
        self.total
    }
}

/// Token bucket for the upload limit: `rate` bytes/s (0 = unlimited), holding
/// at most `burst` bytes of unused allowance.
///
/// The bucket may go into debt: `take` always accepts the bytes and tells the
/// caller how long to wait before sending them. A 16 KiB block therefore
/// works under a 1 KiB/s limit (it waits 16 s) instead of never fitting, and
/// callers need no retry loop. Tokens are kept in thousandths of a byte so
/// `ms × bytes/s` refills are exact integers.
#[derive(Clone, Copy, Debug)]
pub struct TokenBucket {
    rate: u64,
    burst_milli: i128,
    /// Milli-bytes available; negative = debt.
    tokens_milli: i128,
    last_ms: u64,
}

impl TokenBucket {
    /// A full bucket (the first `burst` bytes go at once).
    pub fn new(rate: u64, burst: u64) -> Self {
        let burst_milli = i128::from(burst) * 1000;
        TokenBucket {
            rate,
            burst_milli,
            tokens_milli: burst_milli,
            last_ms: 0,
        }
    }

    /// Takes `n` bytes; returns how many ms the caller must wait before
    /// sending them (0 = now). Debt is allowed, so any `n` works.
    pub fn take(&mut self, n: u64, now_ms: u64) -> u64 {
        if self.rate == 0 {
            return 0;
        }
        let rate = i128::from(self.rate);
        if now_ms > self.last_ms {
            let refill = i128::from(now_ms - self.last_ms) * rate;
            self.tokens_milli = (self.tokens_milli + refill).min(self.burst_milli);
            self.last_ms = now_ms;
        }
        self.tokens_milli -= i128::from(n) * 1000;
        if self.tokens_milli >= 0 {
            return 0;
        }
        // ceil(debt / rate): milli-bytes ÷ bytes/s = ms.
        let wait = (-self.tokens_milli + rate - 1) / rate;
        u64::try_from(wait).unwrap_or(u64::MAX)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (name, window, chunk bytes, every ms, stream for ms, idle ms, want per_sec, tolerance %)
    type RateCase = (&'static str, u64, u64, u64, u64, u64, u64, u64);

    #[test]
    fn rate_table() {
        #[rustfmt::skip]
        let cases: &[RateCase] = &[
            ("1 MB/s in 100 ms chunks",     5000, 100_000, 100, 30_000, 0,       1_000_000, 3),
            ("1 MB/s in 1 s chunks",        5000, 1_000_000, 1000, 30_000, 0,    1_000_000, 12),
            ("16 KiB blocks at 160 KiB/s",  5000, 16_384, 100, 60_000, 0,        163_840, 3),
            ("decays by 1/e per window",    5000, 100_000, 100, 60_000, 5000,    367_879, 3),
            ("about 0 after 100 s idle",    5000, 100_000, 100, 30_000, 100_000, 0, 0),
            ("short window tracks quickly", 1000, 10_000, 10, 10_000, 0,         1_000_000, 3),
        ];
        for &(name, window, chunk, every, len, idle, want, tol) in cases {
            let mut r = Rate::new(window);
            let mut t = 0;
            while t < len {
                r.add(chunk, t);
                t += every;
            }
            let got = r.per_sec(t + idle);
            assert!(
                got.abs_diff(want) * 100 <= want * tol,
                "{name}: got {got}, want {want}"
            );
            assert_eq!(r.total(), chunk * len.div_ceil(every), "{name}: total");
        }
    }

    #[test]
    fn estimate_is_the_average_during_the_first_window() {
        let mut r = Rate::new(5000);
        assert_eq!(r.estimate(0), 0);
        // 10 MB/s for one second: the estimate is right at once, while the
        // EWMA still shows a fraction of it.
        for t in 1..=100u64 {
            r.add(100_000, 1000 + t * 10);
        }
        let e = r.estimate(2000);
        assert!((9_000_000..=11_000_000).contains(&e), "{e}");
        assert!(r.per_sec(2000) < 3_000_000);
        // After the window, the estimate is the EWMA.
        assert_eq!(r.estimate(1000 + 60_000), r.per_sec(1000 + 60_000));
    }

    #[test]
    fn average_survives_a_stall_that_the_ewma_forgets() {
        let mut r = Rate::new(2000);
        assert_eq!(r.average(5000), 0);
        // 6 MB in the first second, then nothing for 4 s.
        for t in 1..=100u64 {
            r.add(60_000, 1000 + t * 10);
        }
        assert!(r.estimate(6000) < 600_000, "{}", r.estimate(6000));
        assert_eq!(r.average(6000), 6_000_000 * 1000 / 4990);
    }

    #[test]
    fn rate_edges() {
        let r = Rate::new(5000);
        assert_eq!((r.per_sec(0), r.per_sec(u64::MAX), r.total()), (0, 0, 0));
        // One burst from a new peer does not look like a fast peer.
        let mut r = Rate::new(5000);
        r.add(1_000_000, 10_000);
        assert_eq!(r.per_sec(10_000), 200_000);
        // Time going backwards counts as no time passing.
        r.add(1_000_000, 9_000);
        assert_eq!(r.per_sec(10_000), 400_000);
        assert_eq!(r.total(), 2_000_000);
        // A zero window does not divide by zero.
        let mut r = Rate::new(0);
        r.add(5, 1);
        assert_eq!(r.per_sec(1), 5000);
    }

    /// (name, rate, burst, [(take n, at now_ms, want wait ms)])
    type BucketCase = (&'static str, u64, u64, &'static [(u64, u64, u64)]);

    #[test]
    fn token_bucket_table() {
        #[rustfmt::skip]
        let cases: &[BucketCase] = &[
            ("unlimited",               0, 0,       &[(1 << 40, 0, 0), (1 << 40, 0, 0)]),
            ("burst goes at once",      1000, 4000, &[(4000, 0, 0), (1, 0, 1)]),
            ("exact waits, no burst",   1000, 0,    &[(500, 0, 500), (500, 0, 1000), (500, 1000, 500)]),
            ("refill capped at burst",  1000, 1000, &[(1000, 0, 0), (3000, 60_000, 2000)]),
            ("debt: block above rate",  1024, 0,    &[(16_384, 0, 16_000), (16_384, 16_000, 16_000)]),
            ("partial ms rounds up",    3, 0,       &[(1, 0, 334)]),
            ("time going backwards",    1000, 0,    &[(1000, 5000, 1000), (1000, 0, 2000)]),
        ];
        for &(name, rate, burst, steps) in cases {
            let mut b = TokenBucket::new(rate, burst);
            for (i, &(n, now, want)) in steps.iter().enumerate() {
                assert_eq!(b.take(n, now), want, "{name}: step {i}");
            }
        }
    }

    #[test]
    fn token_bucket_huge_debt_saturates() {
        let mut b = TokenBucket::new(1, 0);
        assert_eq!(b.take(u64::MAX, 0), u64::MAX);
        assert_eq!(b.take(u64::MAX, 0), u64::MAX);
    }
}
