//! The pace of the whole run: one token bucket for every request (retries and paid-status
//! checks included), a pause of the whole pool after a 429, and a person's pause. Every
//! request waits its turn here and nowhere else, so this is the one seam for pacing.

use std::num::NonZeroU32;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use governor::{DefaultDirectRateLimiter, Quota, RateLimiter};
use tokio::time::Instant;

use crate::domain::{Pause, Stopper};

pub(super) struct Pacer {
    limiter: Option<DefaultDirectRateLimiter>,
    /// A 429 pauses every sender, not just the row that got it.
    pause_until: Mutex<Option<Instant>>,
    /// A person's pause: no turn is given while it lasts.
    paused: Arc<Pause>,
}

impl Pacer {
    /// `rate` requests per second (0: unlimited), `burst` at once after an idle spell.
    pub fn new(rate: u32, burst: u32, paused: Arc<Pause>) -> Pacer {
        let limiter = NonZeroU32::new(rate).map(|rate| {
            let burst = NonZeroU32::new(burst).unwrap_or(rate);
            RateLimiter::direct(Quota::per_second(rate).allow_burst(burst))
        });
        Pacer {
            limiter,
            pause_until: Mutex::new(None),
            paused,
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
            if let Some(limiter) = &self.limiter {
                tokio::select! {
                    _ = stopper.stopped() => return false,
                    _ = limiter.until_ready() => {}
                }
            }
            self.while_paused(stopper).await;
            if self.paused_until().is_none() {
                return !stopper.is_stopped();
            }
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

    /// Pauses the whole pool for `pause` (a 429 was answered).
    pub fn slow_down(&self, pause: Duration) {
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
