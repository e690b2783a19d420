//! The pace of the whole run: one token bucket for every request (retries and paid-status
//! checks included), a pause of the whole pool after a 429, and a person's pause. Every
//! request waits its turn here and nowhere else, so this is the one seam for pacing.

use std::num::NonZeroU32;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use super::pace::Pace;
use super::Settings;
use crate::domain::{Pause, Stopper};

/// How requests are spaced.
enum Limit {
    Unlimited,
    /// `--rate N`: governor's token bucket.
    Fixed(DefaultDirectRateLimiter),
    /// `--rate auto`: the pace's rate, spaced by the virtual schedule below.
    Auto(Mutex<Auto>),
}

/// The auto pace and its schedule: `next` is when the next request is due, a request may
/// go as early as a burst's worth before it, and each one moves it on by one interval of
/// the rate at that moment (GCRA, as governor does, with a rate that can change).
struct Auto {
    pace: Pace,
    next: Instant,
}

impl Auto {
    /// Takes a turn now, or says how long until one.
    fn take(&mut self, now: Instant, gauge: &Gauge) -> Option<Duration> {
        let rate = self.pace.rate();
        let interval = Duration::from_secs_f64(1.0 / rate);
        // The burst follows the pace: a fifth of a second's worth, at least one request.
        let tolerance = interval.mul_f64((rate / 5.0).max(1.0) - 1.0);
        let next = self.next.max(now);
        if next - now > tolerance {
            return Some(next - tolerance - now);
        }
        self.next = next + interval;
        self.pace.sent(now);
        gauge.set(self.pace.rate(), self.pace.peak());
        None
    }
}

/// The auto pace as watchers see it: now and at its highest, requests per second.
#[derive(Default)]
pub struct Gauge {
    now: AtomicU64,
    peak: AtomicU64,
}

impl Gauge {
    fn set(&self, now: f64, peak: f64) {
        self.now.store(now.to_bits(), Ordering::Relaxed);
        self.peak.store(peak.to_bits(), Ordering::Relaxed);
    }

    /// (now, peak), once an auto pace has started.
    pub fn read(&self) -> Option<(f64, f64)> {
        let now = f64::from_bits(self.now.load(Ordering::Relaxed));
        let peak = f64::from_bits(self.peak.load(Ordering::Relaxed));
        (now > 0.0).then_some((now, peak))
    }
}

pub(super) struct Pacer {
    limit: Limit,
    /// A 429 pauses every sender, not just the row that got it (a fixed rate only: an
    /// auto pace answers it by cutting the rate).
    pause_until: Mutex<Option<Instant>>,
    /// A person's pause: no turn is given while it lasts.
    paused: Arc<Pause>,
    gauge: Arc<Gauge>,
}

impl Pacer {
    /// `rate` requests per second (0: unlimited), `burst` at once after an idle spell; or
    /// the auto pace.
    pub fn new(settings: &Settings, paused: Arc<Pause>, gauge: Arc<Gauge>) -> Pacer {
        let limit = match (settings.auto, NonZeroU32::new(settings.rate)) {
            (Some(bounds), _) => {
                let pace = Pace::new(bounds, Instant::now());
                gauge.set(pace.rate(), pace.peak());
                Limit::Auto(Mutex::new(Auto {
                    pace,
                    next: Instant::now(),
                }))
            }
            (None, Some(rate)) => {
                let burst = NonZeroU32::new(settings.burst).unwrap_or(rate);
                Limit::Fixed(RateLimiter::direct(
                    Quota::per_second(rate).allow_burst(burst),
                ))
            }
            (None, None) => Limit::Unlimited,
        };
        Pacer {
            limit,
            pause_until: Mutex::new(None),
            paused,
            gauge,
        }
    }

    /// Waits for the pool's pause to end and for a token; false if the run stopped first.
    /// A token taken while a pause began is thrown away, so that the senders released
    /// together at the end of a pause still queue for tokens instead of bursting.
    /// A person's pause is waited out before the token and again after it, so a row that
    /// got its token as the pause began does not slip out.
    pub async fn turn(&self, stopper: &Stopper) -> bool {
        loop {
            self.while_paused(stopper).await;
            if let Some(until) = self.paused_until() {
                tokio::select! {
                    _ = stopper.stopped() => return false,
                    _ = tokio::time::sleep_until(until) => {}
                }
            }
            if !self.token(stopper).await {
                return false;
            }
            self.while_paused(stopper).await;
            if self.paused_until().is_none() {
                return !stopper.is_stopped();
            }
        }
    }

    /// Waits for the limit's next token; false if the run stopped first.
    async fn token(&self, stopper: &Stopper) -> bool {
        match &self.limit {
            Limit::Unlimited => true,
            Limit::Fixed(limiter) => tokio::select! {
                _ = stopper.stopped() => false,
                _ = limiter.until_ready() => true,
            },
            Limit::Auto(auto) => loop {
                let wait = auto.lock().unwrap().take(Instant::now(), &self.gauge);
                let Some(wait) = wait else { return true };
                tokio::select! {
                    _ = stopper.stopped() => return false,
                    _ = tokio::time::sleep(wait) => {}
                }
            },
        }
    }

    /// An answer to a request that got its turn at `sent`; `throttled`: a 429 or a 503.
    pub fn answered(&self, sent: Instant, throttled: bool) {
        if let Limit::Auto(auto) = &self.limit {
            let mut auto = auto.lock().unwrap();
            auto.pace.answered(sent, Instant::now(), throttled);
            self.gauge.set(auto.pace.rate(), auto.pace.peak());
        }
    }

    async fn while_paused(&self, stopper: &Stopper) {
        if self.paused.is_paused() {
            tokio::select! {
                _ = stopper.stopped() => {}
                _ = self.paused.resumed() => {}
            }
        }
    }

    fn paused_until(&self) -> Option<Instant> {
        let pause = *self.pause_until.lock().unwrap();
        pause.filter(|until| *until > Instant::now())
    }

    /// Pauses the whole pool for `pause` (a 429 was answered); an auto pace cuts its rate
    /// instead, and only the throttled row waits.
    pub fn slow_down(&self, pause: Duration) {
        if matches!(self.limit, Limit::Auto(_)) {
            return;
        }
        let until = Instant::now() + pause;
        let mut current = self.pause_until.lock().unwrap();
        *current = Some(current.map_or(until, |c| c.max(until)));
    }
}

/// Exponential backoff with full jitter (SPEC section 5).
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
    /// A `Retry-After` is honoured up to this.
    pub retry_after_max: Duration,
}

impl Backoff {
    /// The wait before retry number `attempt`: `Retry-After` when given (capped), else the
    /// exponential cap for that attempt. The pool pauses this long after a 429; the row
    /// itself waits a random part of it when there was no `Retry-After`.
    pub fn cap(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        if let Some(after) = retry_after {
            return after.min(self.retry_after_max);
        }
        let doubling = 1u32
            .checked_shl(attempt.saturating_sub(1))
            .unwrap_or(u32::MAX);
        self.base.saturating_mul(doubling).min(self.max)
    }

    pub fn delay(&self, attempt: u32, retry_after: Option<Duration>) -> Duration {
        let cap = self.cap(attempt, retry_after);
        if retry_after.is_some() {
            return cap;
        }
        // Full jitter: spreads retries so that rows refused together do not return together.
        cap.mul_f64(rand::random::<f64>())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_its_cap_and_honours_retry_after_up_to_its_own() {
        let b = Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
            retry_after_max: Duration::from_secs(5),
        };
        let caps: Vec<u64> = (1..=6).map(|n| b.cap(n, None).as_millis() as u64).collect();
        assert_eq!(caps, [100, 200, 400, 800, 1000, 1000]);
        assert_eq!(b.cap(40, None), Duration::from_secs(1));
        assert_eq!(
            b.cap(1, Some(Duration::from_secs(2))),
            Duration::from_secs(2)
        );
        assert_eq!(
            b.delay(1, Some(Duration::from_secs(60))),
            Duration::from_secs(5)
        );
        assert!(b.delay(3, None) <= Duration::from_millis(400));
    }
}
