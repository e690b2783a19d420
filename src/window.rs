//! The send window (SPEC section 13): requests leave only between two wall-clock times in
//! the customers' time zone, `send_window = "08:00-20:00"` with `timezone =
//! "America/Chicago"`. A window that ends before it starts crosses midnight.
//!
//! Each day's window runs from the first instant whose local time is at or after its start
//! to the first instant whose local time is at or after its end. So on the day clocks
//! spring forward a start inside the skipped hour opens when the hour ends, and on the day
//! they fall back a time that happens twice means its first occurrence.

use std::fmt;

use anyhow::{bail, Result};
use chrono::{DateTime, Days, LocalResult, NaiveDate, NaiveTime, TimeDelta, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SendWindow {
    start: NaiveTime,
    end: NaiveTime,
    tz: Tz,
}

/// Where a moment stands against the window.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Standing {
    /// Open now, until then.
    Open { until: DateTime<Utc> },
    /// Closed now; opens then, until the second instant.
    Closed {
        opens: DateTime<Utc>,
        until: DateTime<Utc>,
    },
}

impl SendWindow {
    /// Reads the two config keys; errors name the key and show an example.
    pub fn parse(window: &str, timezone: Option<&str>) -> Result<SendWindow> {
        let example = "write it like send_window = \"08:00-20:00\"";
        let Some((a, b)) = window.split_once('-') else {
            bail!("config `send_window` = {window:?} is not two times: {example}");
        };
        let time = |s: &str| {
            let s = s.trim();
            let ok = s.len() == 5 && s.as_bytes()[2] == b':';
            ok.then(|| NaiveTime::parse_from_str(s, "%H:%M").ok())
                .flatten()
        };
        let (Some(start), Some(end)) = (time(a), time(b)) else {
            bail!("config `send_window` = {window:?} is not two 24-hour times HH:MM: {example}");
        };
        if start == end {
            bail!("config `send_window` = {window:?} starts where it ends: {example} (for no window, leave the key out)");
        }
        let Some(timezone) = timezone else {
            bail!("config `send_window` needs `timezone`, the customers' IANA time zone (like timezone = \"America/Chicago\"), not the server's");
        };
        let Ok(tz) = timezone.trim().parse::<Tz>() else {
            bail!("config `timezone` = {timezone:?} is not an IANA time zone name like \"America/Chicago\" or \"Europe/Berlin\"");
        };
        Ok(SendWindow { start, end, tz })
    }

    /// Where `now` stands: inside a window, or before the next one.
    pub fn standing(&self, now: DateTime<Utc>) -> Standing {
        let today = now.with_timezone(&self.tz).date_naive();
        // A window that crosses midnight may have opened yesterday.
        let mut day = today.pred_opt().unwrap_or(today);
        loop {
            let (opens, until) = self.on(day);
            if until > now {
                return if opens <= now {
                    Standing::Open { until }
                } else {
                    Standing::Closed { opens, until }
                };
            }
            day = day.succ_opt().expect("dates do not run out");
        }
    }

    /// The window that opens on `day`.
    fn on(&self, day: NaiveDate) -> (DateTime<Utc>, DateTime<Utc>) {
        let end_day = if self.end > self.start {
            day
        } else {
            day.checked_add_days(Days::new(1))
                .expect("dates do not run out")
        };
        (
            self.first_at(day, self.start),
            self.first_at(end_day, self.end),
        )
    }

    /// The first instant on `day` whose local time is at or after `time`.
    fn first_at(&self, day: NaiveDate, time: NaiveTime) -> DateTime<Utc> {
        let mut local = day.and_time(time);
        // A time that does not exist (clocks sprang forward over it): the first minute after.
        for _ in 0..=24 * 60 {
            match self.tz.from_local_datetime(&local) {
                LocalResult::Single(t) => return t.with_timezone(&Utc),
                LocalResult::Ambiguous(first, _) => return first.with_timezone(&Utc),
                LocalResult::None => local += TimeDelta::minutes(1),
            }
        }
        unreachable!("no time zone skips a whole day")
    }

    /// A moment, as the customers' clock shows it.
    pub fn local(&self, t: DateTime<Utc>) -> String {
        t.with_timezone(&self.tz)
            .format("%Y-%m-%d %H:%M %Z")
            .to_string()
    }

    /// What a run started at `now` would do, in words (dry runs and the prompt say it).
    pub fn plan(&self, now: DateTime<Utc>) -> String {
        match self.standing(now) {
            Standing::Open { until } => format!(
                "send window {self}: open now; requests stop at {} (in {})",
                self.local(until),
                in_words(until - now)
            ),
            Standing::Closed { opens, .. } => format!(
                "send window {self}: closed now ({} there); the run waits until {} (in {})",
                self.local(now),
                self.local(opens),
                in_words(opens - now)
            ),
        }
    }
}

impl fmt::Display for SendWindow {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}-{} {}",
            self.start.format("%H:%M"),
            self.end.format("%H:%M"),
            self.tz.name()
        )
    }
}

/// `9h 12m`, to the minute (or seconds when less than one), rounded up: a wait said to
/// last "2s" is not over in 1.99.
pub fn in_words(d: TimeDelta) -> String {
    let secs = (d.num_milliseconds().max(0) + 999) / 1000;
    if secs < 60 {
        return format!("{secs}s");
    }
    let minutes = (secs + 59) / 60;
    match minutes {
        m if m < 60 => format!("{m}m"),
        m => format!("{}h {}m", m / 60, m % 60),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(s).unwrap().with_timezone(&Utc)
    }

    fn chicago(window: &str) -> SendWindow {
        SendWindow::parse(window, Some("America/Chicago")).unwrap()
    }

    #[test]
    fn bad_windows_name_the_key_and_show_an_example() {
        for bad in [
            "25:00-08:00",
            "08:00",
            "8-20",
            "08:00-20:00-21:00",
            "08:60-20:00",
            "8:00-20:00",
        ] {
            let err = SendWindow::parse(bad, Some("UTC")).unwrap_err().to_string();
            assert!(
                err.contains("send_window") && err.contains("08:00-20:00"),
                "{bad}: {err}"
            );
        }
        let err = SendWindow::parse("08:00-08:00", Some("UTC"))
            .unwrap_err()
            .to_string();
        assert!(err.contains("starts where it ends"), "{err}");
        let err = SendWindow::parse("08:00-20:00", Some("Mars/Olympus"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`timezone`") && err.contains("America/Chicago"),
            "{err}"
        );
        let err = SendWindow::parse("08:00-20:00", None)
            .unwrap_err()
            .to_string();
        assert!(err.contains("needs `timezone`"), "{err}");
    }

    #[test]
    fn an_ordinary_day() {
        let w = chicago("08:00-20:00");
        // 2026-11-30 is CST (UTC-6).
        assert_eq!(
            w.standing(at("2026-11-30T13:59:58Z")),
            Standing::Closed {
                opens: at("2026-11-30T14:00:00Z"),
                until: at("2026-12-01T02:00:00Z")
            }
        );
        assert_eq!(
            w.standing(at("2026-11-30T14:00:00Z")),
            Standing::Open {
                until: at("2026-12-01T02:00:00Z")
            }
        );
        // After 20:00: the next morning.
        assert!(matches!(
            w.standing(at("2026-12-01T02:00:00Z")),
            Standing::Closed { opens, .. } if opens == at("2026-12-01T14:00:00Z")
        ));
    }

    #[test]
    fn a_window_across_midnight() {
        let w = chicago("22:00-06:00");
        assert_eq!(
            w.standing(at("2026-12-01T11:59:58Z")),
            Standing::Open {
                until: at("2026-12-01T12:00:00Z")
            },
            "05:59:58 local is inside the window that opened the evening before"
        );
        assert!(matches!(
            w.standing(at("2026-12-01T12:00:00Z")),
            Standing::Closed { opens, .. } if opens == at("2026-12-02T04:00:00Z")
        ));
        assert_eq!(
            w.standing(at("2026-12-02T05:00:00Z")),
            Standing::Open {
                until: at("2026-12-02T12:00:00Z")
            }
        );
    }

    #[test]
    fn the_day_clocks_spring_forward() {
        // 2026-03-08: 02:00 CST becomes 03:00 CDT (UTC-5 from then on).
        let w = chicago("08:00-20:00");
        assert_eq!(
            w.standing(at("2026-03-08T12:59:58Z")),
            Standing::Closed {
                opens: at("2026-03-08T13:00:00Z"),
                until: at("2026-03-09T01:00:00Z")
            }
        );
        // A start inside the skipped hour opens when the hour ends.
        let w = chicago("02:30-04:00");
        assert!(matches!(
            w.standing(at("2026-03-08T07:00:00Z")),
            Standing::Closed { opens, until } if opens == at("2026-03-08T08:00:00Z") && until == at("2026-03-08T09:00:00Z")
        ));
    }

    #[test]
    fn the_day_clocks_fall_back() {
        // 2026-11-01: 02:00 CDT becomes 01:00 CST (UTC-6 from then on).
        let w = chicago("08:00-20:00");
        assert_eq!(
            w.standing(at("2026-11-02T01:59:58Z")),
            Standing::Open {
                until: at("2026-11-02T02:00:00Z")
            }
        );
        // A time that happens twice means its first occurrence (CDT).
        let w = chicago("01:30-03:00");
        assert!(matches!(
            w.standing(at("2026-11-01T05:00:00Z")),
            Standing::Closed { opens, until } if opens == at("2026-11-01T06:30:00Z") && until == at("2026-11-01T09:00:00Z")
        ));
    }

    #[test]
    fn waits_are_said_rounded_up() {
        assert_eq!(in_words(TimeDelta::milliseconds(1990)), "2s");
        assert_eq!(in_words(TimeDelta::seconds(60)), "1m");
        assert_eq!(in_words(TimeDelta::seconds(61)), "2m");
        assert_eq!(in_words(TimeDelta::seconds(38_759)), "10h 46m");
        assert_eq!(in_words(TimeDelta::seconds(-5)), "0s");
    }

    #[test]
    fn plans_read_in_the_customers_time() {
        let w = chicago("08:00-20:00");
        assert_eq!(
            w.plan(at("2026-11-30T03:14:00Z")),
            "send window 08:00-20:00 America/Chicago: closed now (2026-11-29 21:14 CST there); the run waits until 2026-11-30 08:00 CST (in 10h 46m)"
        );
    }
}
