//! `--rate auto` (SPEC section 16): the fastest pace the API accepts, found and followed.
//! A pure state machine: what was sent and what came back, with their times, in; a rate
//! out. The pacer spaces requests by it (see `pacer`), so it counts every request, retries
//! and paid-status checks included.
//!
//! # The algorithm: ramp, measure the ceiling, sit just under it, probe gently
//!
//! Textbook AIMD or CUBIC saw-tooth between the capacity and a fraction of it, and land
//! at 0.4-0.8 of it against a token-bucket server. What a throttled server tells us is
//! more than "too fast": while the client sends faster than the capacity, the answers that
//! are *not* throttled arrive at the capacity itself. So:
//!
//! - **Ramp.** From `rate_start` (or the pace the last run on this ledger and target ended
//!   at), the rate grows by half every half second, as long as the pace is what limits the
//!   sending (at least 80% of it was used: a rate that requests in flight, not the pace,
//!   hold back says nothing of the server, so it does not rise).
//! - **Cut.** On a 429 or a 503 the ceiling is measured: the answers that were not
//!   throttled in the last second, per second. The rate becomes 97% of the lower of that
//!   and the current rate. A cut answers a congestion once: throttles of requests sent
//!   before the cut were decided by the old pace and are not counted again. A cut with too
//!   few answers to measure (the first second) takes 30% off instead.
//! - **Probe.** A cut's measurement is trusted for ten seconds; then the rate grows by 3%
//!   every two seconds, again only while the pace binds. Under a token bucket of N/s with
//!   a burst of N/5, a pace a few percent above N runs on the burst before the first 429,
//!   then draws throttles at the excess alone, and the next cut measures N again: a cycle
//!   of about fifteen seconds at 97-100% of N, with about 1% of requests throttled.
//!
//! It converges in one cut (the measurement is the capacity, not a guess), follows a drop
//! within a cut or two (a drop from 40 to 15 measures about 15 within a second), and
//! follows a rise at 3% every two seconds. A `Retry-After` is honoured by the throttled row
//! alone, before its retry: the pool slows by the cut, it does not stop. A 503 is treated
//! like a 429. A slow server that never says 429 is followed by the concurrency bound: its
//! slowness keeps the pace from binding, so the rate stops rising. Retries spend the same
//! budget as first attempts, and their answers count the same.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// How the pace may move.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct AutoRate {
    /// Where a run with no memory of this target starts.
    pub start: f64,
    pub min: f64,
    pub max: f64,
    /// The pace the last run on this ledger and target ended at, where this one starts.
    pub remembered: Option<f64>,
}

/// Growth while ramping, and its step.
const RAMP: (f64, Duration) = (1.5, Duration::from_millis(500));
/// Growth while probing, and its step.
const PROBE: (f64, Duration) = (1.03, Duration::from_secs(2));
/// How long a cut's measurement is trusted before probing above it again.
const HOLD: Duration = Duration::from_secs(10);
/// What a cut keeps of the measured ceiling.
const UNDER: f64 = 0.97;
/// What a cut keeps without a measurement.
const BLIND: f64 = 0.7;
/// The window in which accepted answers are counted.
const WINDOW: Duration = Duration::from_secs(1);
/// Accepted answers needed in the window for a measurement.
const SAMPLES: usize = 4;
/// The share of the pace that must have been used for it to rise.
const BINDS: f64 = 0.8;

/// The controller's state.
#[derive(Debug)]
pub struct Pace {
    bounds: AutoRate,
    rate: f64,
    peak: f64,
    probing: bool,
    /// When the rate last changed; requests sent before a cut are not counted again.
    changed: Instant,
    cut: Option<Instant>,
    /// Requests started since the rate last changed.
    sent: u32,
    /// Arrival times of answers that were not throttled, the last `WINDOW` of them.
    accepted: VecDeque<Instant>,
}

impl Pace {
    /// A pace starting at `bounds.start`, or at `remembered` (the last run's final pace),
    /// which also skips the ramp.
    pub fn new(bounds: AutoRate, now: Instant) -> Pace {
        let remembered = bounds.remembered;
        let rate = remembered
            .unwrap_or(bounds.start)
            .clamp(bounds.min, bounds.max);
        Pace {
            bounds,
            rate,
            peak: rate,
            probing: remembered.is_some(),
            changed: now,
            cut: None,
            sent: 0,
            accepted: VecDeque::new(),
        }
    }

    /// Requests per second allowed now.
    pub fn rate(&self) -> f64 {
        self.rate
    }

    /// The highest rate allowed so far.
    pub fn peak(&self) -> f64 {
        self.peak
    }

    /// A request leaves now.
    pub fn sent(&mut self, now: Instant) {
        self.grow(now);
        self.sent += 1;
    }

    /// A request sent at `sent_at` was answered now; `throttled`: with a 429 or a 503.
    pub fn answered(&mut self, sent_at: Instant, now: Instant, throttled: bool) {
        while self.accepted.front().is_some_and(|t| now - *t > WINDOW) {
            self.accepted.pop_front();
        }
        if !throttled {
            self.accepted.push_back(now);
            self.grow(now);
            return;
        }
        if self.cut.is_some_and(|cut| sent_at < cut) {
            return; // decided by a pace already cut
        }
        let ceiling = if self.accepted.len() >= SAMPLES {
            let since = self.accepted.front().map_or(WINDOW, |t| now - *t);
            let span = since.max(Duration::from_millis(100)).min(WINDOW);
            (self.accepted.len() as f64 / span.as_secs_f64()).min(self.rate) * UNDER
        } else {
            self.rate * BLIND
        };
        self.set(ceiling, now);
        self.cut = Some(now);
        self.probing = true;
    }

    /// Raises the rate by a step, if a step has passed and the pace was what limited it.
    fn grow(&mut self, now: Instant) {
        let (factor, step) = if self.probing { PROBE } else { RAMP };
        let elapsed = now - self.changed;
        let held = self.cut.is_some_and(|cut| now - cut < HOLD);
        if elapsed < step || held {
            return;
        }
        let used = f64::from(self.sent) / (self.rate * elapsed.as_secs_f64());
        if used >= BINDS {
            self.set(self.rate * factor, now);
        } else {
            // Not bound by the pace: start the next step afresh.
            self.changed = now;
            self.sent = 0;
        }
    }

    fn set(&mut self, rate: f64, now: Instant) {
        self.rate = rate.clamp(self.bounds.min, self.bounds.max);
        self.peak = self.peak.max(self.rate);
        self.changed = now;
        self.sent = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A token-bucket server of `capacity(t)` per second with a burst of a fifth of it,
    /// answering at once, and a client sending whenever the pace allows, for `secs`;
    /// `each(t, accepted, pace)` for every request.
    fn drive(
        capacity: impl Fn(f64) -> f64,
        secs: f64,
        remembered: Option<f64>,
        mut each: impl FnMut(f64, bool, &Pace),
    ) {
        let bounds = AutoRate {
            start: 5.0,
            min: 1.0,
            max: 500.0,
            remembered,
        };
        let t0 = Instant::now();
        let mut pace = Pace::new(bounds, t0);
        let (mut t, mut tokens, mut last) = (0.0f64, capacity(0.0) / 5.0, 0.0f64);
        while t < secs {
            let n = capacity(t);
            tokens = (tokens + (t - last) * n).min((n / 5.0).max(1.0));
            last = t;
            let at = t0 + Duration::from_secs_f64(t);
            pace.sent(at);
            let accepted = tokens >= 1.0;
            if accepted {
                tokens -= 1.0;
            }
            pace.answered(at, at + Duration::from_millis(20), !accepted);
            each(t, accepted, &pace);
            t += 1.0 / pace.rate();
        }
    }

    /// (successes per second / mean capacity, share throttled, seconds to 90%).
    fn run(capacity: impl Fn(f64) -> f64, secs: f64, remembered: Option<f64>) -> (f64, f64, f64) {
        let (mut ok, mut throttled) = (0u64, 0u64);
        let mut per_second = vec![0u64; secs as usize + 1];
        drive(&capacity, secs, remembered, |t, accepted, _| {
            if accepted {
                ok += 1;
                per_second[t as usize] += 1;
            } else {
                throttled += 1;
            }
        });
        let capacity_sum: f64 = (0..secs as usize).map(|s| capacity(s as f64)).sum();
        let first_90 = (0..secs as usize)
            .find(|s| per_second[*s] as f64 >= 0.9 * capacity(*s as f64))
            .unwrap_or(usize::MAX) as f64;
        let share = throttled as f64 / (ok + throttled) as f64;
        (ok as f64 / capacity_sum, share, first_90)
    }

    #[test]
    fn it_reaches_nine_tenths_of_a_hidden_capacity_with_few_throttles() {
        for capacity in [8.0, 37.0, 120.0] {
            let (share, throttled, first_90) = run(|_| capacity, 60.0, None);
            assert!(share >= 0.90, "{capacity}/s: {share:.3} of capacity");
            assert!(throttled <= 0.02, "{capacity}/s: {throttled:.3} throttled");
            assert!(first_90 <= 10.0, "{capacity}/s: 90% after {first_90} s");
        }
    }

    #[test]
    fn a_capacity_drop_is_followed_within_a_few_seconds() {
        let capacity = |t: f64| if t < 30.0 { 40.0 } else { 15.0 };
        let (mut under_at, mut last_rate) = (None, 0.0);
        drive(capacity, 45.0, None, |t, _, pace| {
            if t > 30.0 && under_at.is_none() && pace.rate() <= 15.0 {
                under_at = Some(t);
            }
            last_rate = pace.rate();
        });
        let after = under_at.expect("the pace went under the new capacity") - 30.0;
        assert!(after <= 5.0, "under 15/s {after:.1} s after the drop");
        assert!((0.7 * 15.0..=16.0).contains(&last_rate), "{last_rate}");
    }

    #[test]
    fn a_remembered_pace_skips_the_ramp_and_a_pace_that_does_not_bind_does_not_rise() {
        let (share, _, first_90) = run(|_| 37.0, 20.0, Some(36.0));
        assert!(first_90 <= 1.0 && share >= 0.9, "{first_90} {share}");
        // Sending at one request a second whatever the pace: it must not climb.
        let t0 = Instant::now();
        let bounds = AutoRate {
            start: 5.0,
            min: 1.0,
            max: 50.0,
            remembered: None,
        };
        let mut pace = Pace::new(bounds, t0);
        for s in 0..30 {
            let at = t0 + Duration::from_secs(s);
            pace.sent(at);
            pace.answered(at, at + Duration::from_millis(900), false);
        }
        assert_eq!(pace.rate(), 5.0);
    }
}
