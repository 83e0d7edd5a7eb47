//! Cron lines for scheduled tasks: five fields (minute, hour, day of month, month, day of week),
//! each `*`, a number, a range `a-b`, a list `a,b`, with an optional step `/n`; UTC. As in cron,
//! when both day fields are restricted a day matching either one fires.

use crate::clock::civil_from_days;
use crate::control::model::Millis;
use crate::error::{Error, Result};

/// A parsed cron line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days: u64,
    months: u64,
    weekdays: u64,
    days_any: bool,
    weekdays_any: bool,
}

impl std::str::FromStr for Cron {
    type Err = Error;

    fn from_str(line: &str) -> Result<Self> {
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [m, h, dom, mon, dow] = fields.as_slice() else {
            return Err(Error::invalid(
                "cron line",
                line,
                "needs five fields: minute hour day-of-month month day-of-week",
            ));
        };
        let field = |text: &str, name: &str, lo: u32, hi: u32| {
            parse_field(text, lo, hi).map_err(|reason| Error::invalid("cron line", line, format!("{name}: {reason}")))
        };
        let mut weekdays = field(dow, "day of week", 0, 7)?;
        if weekdays & (1 << 7) != 0 {
            weekdays |= 1; // 7 is Sunday too
        }
        Ok(Cron {
            minutes: field(m, "minute", 0, 59)?,
            hours: field(h, "hour", 0, 23)?,
            days: field(dom, "day of month", 1, 31)?,
            months: field(mon, "month", 1, 12)?,
            weekdays,
            days_any: dom.starts_with('*'),
            weekdays_any: dow.starts_with('*'),
        })
    }
}

fn parse_field(text: &str, lo: u32, hi: u32) -> std::result::Result<u64, String> {
    let mut bits = 0u64;
    for part in text.split(',') {
        let (range, step) = match part.split_once('/') {
            Some((r, s)) => (
                r,
                s.parse::<u32>()
                    .ok()
                    .filter(|s| *s > 0)
                    .ok_or_else(|| format!("bad step {s:?}"))?,
            ),
            None => (part, 1),
        };
        let number = |s: &str| {
            s.parse::<u32>()
                .ok()
                .filter(|n| (lo..=hi).contains(n))
                .ok_or_else(|| format!("{s:?} is not a number from {lo} to {hi}"))
        };
        let (start, end) = if range == "*" {
            (lo, hi)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (number(a)?, number(b)?);
            if a > b {
                return Err(format!("range {range:?} runs backwards"));
            }
            (a, b)
        } else {
            let a = number(range)?;
            (a, if part.contains('/') { hi } else { a })
        };
        let mut v = start;
        while v <= end {
            bits |= 1 << v;
            v += step;
        }
    }
    Ok(bits)
}

impl Cron {
    /// The first minute strictly after `after` (ms since the epoch) that matches; none within
    /// five years (a line like `0 0 31 2 *` never matches).
    pub fn next_after(&self, after: Millis) -> Option<Millis> {
        let mut minute = after.div_euclid(60_000) + 1;
        let limit = minute + 5 * 366 * 24 * 60;
        while minute < limit {
            let days = minute.div_euclid(1440);
            let (_, month, day) = civil_from_days(days);
            let weekday = (days + 4).rem_euclid(7) as u32; // 1970-01-01 was a Thursday
            let dom_ok = self.days & (1 << day) != 0;
            let dow_ok = self.weekdays & (1 << weekday) != 0;
            let day_ok = match (self.days_any, self.weekdays_any) {
                (true, true) => true,
                (true, false) => dow_ok,
                (false, true) => dom_ok,
                (false, false) => dom_ok || dow_ok,
            };
            if self.months & (1 << month) == 0 || !day_ok {
                minute = (days + 1) * 1440;
                continue;
            }
            let in_day = minute.rem_euclid(1440);
            let (hour, min) = ((in_day / 60) as u32, (in_day % 60) as u32);
            if self.hours & (1 << hour) == 0 {
                minute = days * 1440 + (i64::from(hour) + 1) * 60;
                continue;
            }
            if self.minutes & (1 << min) != 0 {
                return Some(minute * 60_000);
            }
            minute += 1;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // 2026-11-26 (a Thursday) 10:15 UTC.
    const T: Millis = 1_795_688_100_000;

    fn cron(s: &str) -> Cron {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    #[allow(clippy::unwrap_used)]
    fn finds_next_minutes() {
        assert_eq!(civil_from_days(T / 86_400_000), (2026, 11, 26));
        assert_eq!(cron("* * * * *").next_after(T), Some(T + 60_000));
        assert_eq!(cron("30 10 * * *").next_after(T), Some(T + 15 * 60_000));
        assert_eq!(
            cron("0 2 * * *").next_after(T),
            Some(T - 10 * 3_600_000 - 15 * 60_000 + 86_400_000 + 2 * 3_600_000)
        );
        // Saturday 00:00 is 2 days minus 10:15 away.
        assert_eq!(
            cron("0 0 * * 6").next_after(T),
            Some(T + 2 * 86_400_000 - (10 * 60 + 15) * 60_000)
        );
        assert_eq!(cron("*/20 * * * *").next_after(T), Some(T + 5 * 60_000));
        assert_eq!(cron("0 0 31 2 *").next_after(T), None);
        assert_eq!(
            cron("0 0 1 1 *").next_after(T).map(|t| civil_from_days(t / 86_400_000)),
            Some((2027, 1, 1))
        );
    }

    #[test]
    fn rejects_bad_lines_naming_them() {
        for bad in [
            "* * * *",
            "60 * * * *",
            "* 24 * * *",
            "5-1 * * * *",
            "*/0 * * * *",
            "a * * * *",
        ] {
            let e = bad.parse::<Cron>().err().map(|e| e.to_string()).unwrap_or_default();
            assert!(e.contains(bad), "{bad}: {e}");
        }
    }
}
