//! Working and business hours in a time zone, with holidays.

use std::collections::BTreeSet;

use jiff::Timestamp;
use jiff::civil::{Date, Weekday};
use jiff::tz::TimeZone;
use switchboard_config::WeeklyHours;

use crate::Millis;

/// When someone (a manager) or something (a queue) is open.
#[derive(Debug, Clone)]
pub struct Schedule {
    tz: TimeZone,
    week: WeeklyHours,
    holidays: BTreeSet<Date>,
}

impl Schedule {
    /// `None` for an empty `hours` list (always open, even on holidays).
    pub fn new(tz: &str, hours: &[String], holidays: &[String]) -> Result<Option<Self>, String> {
        let week = WeeklyHours::parse(hours)?;
        if week.is_always() {
            return Ok(None);
        }
        let tz = TimeZone::get(tz).map_err(|e| format!("time zone {tz:?}: {e}"))?;
        let holidays = holidays
            .iter()
            .map(|d| d.parse::<Date>().map_err(|e| format!("holiday {d:?}: {e}")))
            .collect::<Result<_, _>>()?;
        Ok(Some(Self { tz, week, holidays }))
    }

    /// Whether it is open at `at`.
    pub fn is_open(&self, at: Millis) -> bool {
        let Ok(ts) = Timestamp::from_millisecond(at) else {
            return false;
        };
        let local = self.tz.to_datetime(ts);
        if self.holidays.contains(&local.date()) {
            return false;
        }
        let day = match local.weekday() {
            Weekday::Monday => 0,
            Weekday::Tuesday => 1,
            Weekday::Wednesday => 2,
            Weekday::Thursday => 3,
            Weekday::Friday => 4,
            Weekday::Saturday => 5,
            Weekday::Sunday => 6,
        };
        let minute = u16::try_from(local.hour()).unwrap_or(0) * 60
            + u16::try_from(local.minute()).unwrap_or(0);
        self.week.days[day]
            .iter()
            .any(|&(from, to)| minute >= from && minute < to)
    }
}

/// Who is on shift and which queues are open, valid until `valid_until`
/// (schedules have minute resolution, so one minute at most).
#[derive(Debug, Clone)]
pub struct Shifts {
    pub(crate) managers: Vec<bool>,
    pub(crate) queues: Vec<bool>,
    pub valid_until: Millis,
}

impl Shifts {
    /// Everyone on shift, every queue open, until `valid_until`.
    pub fn always(managers: usize, queues: usize) -> Self {
        Self {
            managers: vec![true; managers],
            queues: vec![true; queues],
            valid_until: Millis::MAX,
        }
    }

    pub fn manager_on(&self, ix: usize) -> bool {
        self.managers.get(ix).copied().unwrap_or(false)
    }

    pub fn queue_open(&self, ix: usize) -> bool {
        self.queues.get(ix).copied().unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(rfc3339: &str) -> Millis {
        rfc3339.parse::<Timestamp>().unwrap().as_millisecond()
    }

    #[test]
    fn hours_follow_the_time_zone_and_holidays() {
        let s = Schedule::new(
            "Europe/Moscow",
            &["mon-fri 09:00-18:00".into()],
            &["2026-12-31".into()],
        )
        .unwrap()
        .unwrap();
        // Thursday 2026-11-26: 09:30 in Moscow is 06:30 UTC.
        assert!(s.is_open(ms("2026-11-26T06:30:00Z")));
        assert!(!s.is_open(ms("2026-11-26T05:59:00Z")), "08:59 Moscow");
        assert!(
            !s.is_open(ms("2026-11-26T15:00:00Z")),
            "18:00 Moscow is closed"
        );
        assert!(!s.is_open(ms("2026-11-28T08:00:00Z")), "Saturday");
        assert!(!s.is_open(ms("2026-12-31T08:00:00Z")), "holiday");
        assert!(Schedule::new("UTC", &[], &[]).unwrap().is_none());
    }
}
