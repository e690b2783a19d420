//! The failure-ratio breaker (SPEC section 5): a run whose rows mostly fail is hurting
//! nobody but the API, so it stops and leaves the rest for a rerun.

use std::sync::Mutex;

use crate::domain::{Status, StopReason};

pub(super) struct FailureRatio {
    max_ratio: f64,
    /// Rows that must have finished before the ratio counts.
    min_rows: u64,
    /// Rows that made at least one request, and those of them that failed or ended unknown.
    tally: Mutex<(u64, u64)>,
}

impl FailureRatio {
    pub fn new(max_ratio: f64, min_rows: u32) -> FailureRatio {
        FailureRatio {
            max_ratio,
            min_rows: u64::from(min_rows),
            tally: Mutex::new((0, 0)),
        }
    }

    /// Counts a finished row that made requests; the reason to stop, once tripped.
    pub fn record(&self, status: Status) -> Option<StopReason> {
        let mut tally = self.tally.lock().unwrap();
        tally.0 += 1;
        tally.1 += u64::from(matches!(status, Status::Failed | Status::Unknown));
        let (finished, failures) = *tally;
        (finished >= self.min_rows && failures as f64 > self.max_ratio * finished as f64)
            .then_some(StopReason::FailureRatio { failures, finished })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trips_only_past_the_minimum_and_above_the_ratio() {
        let b = FailureRatio::new(0.5, 4);
        assert_eq!(b.record(Status::Failed), None);
        assert_eq!(b.record(Status::Unknown), None);
        assert_eq!(b.record(Status::Sent), None);
        // 2 of 4: not above one half.
        assert_eq!(b.record(Status::Sent), None);
        assert_eq!(
            b.record(Status::Failed),
            Some(StopReason::FailureRatio {
                failures: 3,
                finished: 5
            })
        );
    }
}
