//! Reporting periods: a month under one of the contract's two rules (the calendar month, or
//! Decree 09's 15th-to-14th cut-off), its exact local bounds as UTC instants, and the dates a
//! report states it covers.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use std::fmt;

use crate::config::pipeline::PeriodRule;

/// A reporting month, e.g. `2026-10`, under a period rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Period {
    pub year: i32,
    pub month: u32,
    pub rule: PeriodRule,
}

#[derive(Debug, thiserror::Error)]
#[error("`{0}` is not a period: write the month as YYYY-MM, for example 2026-10")]
pub struct BadPeriod(pub String);

impl Period {
    pub fn new(year: i32, month: u32, rule: PeriodRule) -> Period {
        assert!((1..=12).contains(&month), "month {month} out of range");
        Period { year, month, rule }
    }

    /// Parses `YYYY-MM`.
    pub fn parse(s: &str, rule: PeriodRule) -> Result<Period, BadPeriod> {
        let bad = || BadPeriod(s.to_string());
        let (y, m) = s.trim().split_once('-').ok_or_else(bad)?;
        if y.len() != 4 || m.len() != 2 {
            return Err(bad());
        }
        let year: i32 = y.parse().map_err(|_| bad())?;
        let month: u32 = m.parse().map_err(|_| bad())?;
        if !(1..=12).contains(&month) || !(1900..=9999).contains(&year) {
            return Err(bad());
        }
        Ok(Period { year, month, rule })
    }

    /// The period that holds the local instant `at` (for `--due` and schedules).
    pub fn containing(at: DateTime<Utc>, tz: Tz, rule: PeriodRule) -> Period {
        let local = at.with_timezone(&tz).date_naive();
        let p = Period::new(local.year(), local.month(), rule);
        match rule {
            PeriodRule::Calendar => p,
            // From the 15th on, a day belongs to the next month's official period.
            PeriodRule::Decree09 if local.day() >= 15 => p.next(),
            PeriodRule::Decree09 => p,
        }
    }

    pub fn label(&self) -> String {
        format!("{:04}-{:02}", self.year, self.month)
    }

    pub fn previous(&self) -> Period {
        self.offset(-1)
    }

    pub fn next(&self) -> Period {
        self.offset(1)
    }

    /// The period `n` months later (earlier when negative), same rule.
    pub fn offset(&self, n: i32) -> Period {
        let idx = self.year * 12 + self.month as i32 - 1 + n;
        Period {
            year: idx.div_euclid(12),
            month: idx.rem_euclid(12) as u32 + 1,
            rule: self.rule,
        }
    }

    /// First local day of the period.
    pub fn first_day(&self) -> NaiveDate {
        match self.rule {
            PeriodRule::Calendar => month_start(self.year, self.month),
            PeriodRule::Decree09 => {
                let p = self.previous();
                NaiveDate::from_ymd_opt(p.year, p.month, 15).expect("the 15th exists")
            }
        }
    }

    /// The local day after the period's last day (the bound is exclusive).
    pub fn end_day(&self) -> NaiveDate {
        self.next().first_day()
    }

    /// Last local day of the period (inclusive), as reports state it.
    pub fn last_day(&self) -> NaiveDate {
        self.end_day().pred_opt().expect("a day before exists")
    }

    /// [T0, T1): local midnights at the period's edges, as UTC instants.
    pub fn bounds(&self, tz: Tz) -> (DateTime<Utc>, DateTime<Utc>) {
        (
            local_midnight(self.first_day(), tz),
            local_midnight(self.end_day(), tz),
        )
    }

    /// "Từ ngày 15/09/2026 đến ngày 14/10/2026".
    pub fn covered_text(&self) -> String {
        format!(
            "Từ ngày {} đến ngày {}",
            self.first_day().format("%d/%m/%Y"),
            self.last_day().format("%d/%m/%Y")
        )
    }

    /// "tháng 10/2026".
    pub fn month_text(&self) -> String {
        format!("tháng {}/{}", self.month, self.year)
    }

    pub fn rule_name(&self) -> &'static str {
        rule_name(self.rule)
    }
}

impl fmt::Display for Period {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.rule {
            PeriodRule::Calendar => write!(f, "{}", self.label()),
            PeriodRule::Decree09 => write!(f, "{} (decree09)", self.label()),
        }
    }
}

pub fn rule_name(rule: PeriodRule) -> &'static str {
    match rule {
        PeriodRule::Calendar => "calendar",
        PeriodRule::Decree09 => "decree09",
    }
}

fn month_start(year: i32, month: u32) -> NaiveDate {
    NaiveDate::from_ymd_opt(year, month, 1).expect("the 1st exists")
}

/// The first instant of local day `d`. A zone whose clocks skip midnight (none in Vietnam
/// since 1975, but the zone is configuration) starts the day at the first valid local time.
pub fn local_midnight(d: NaiveDate, tz: Tz) -> DateTime<Utc> {
    let mut t = d.and_hms_opt(0, 0, 0).expect("midnight exists");
    for _ in 0..48 {
        if let Some(x) = tz.from_local_datetime(&t).earliest() {
            return x.with_timezone(&Utc);
        }
        t += chrono::Duration::minutes(30);
    }
    unreachable!("a day has a valid local time")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hcm() -> Tz {
        "Asia/Ho_Chi_Minh".parse().unwrap()
    }

    #[test]
    fn calendar_month_bounds_are_local_midnights() {
        let p = Period::parse("2026-10", PeriodRule::Calendar).unwrap();
        let (t0, t1) = p.bounds(hcm());
        assert_eq!(t0.to_rfc3339(), "2026-09-30T17:00:00+00:00");
        assert_eq!(t1.to_rfc3339(), "2026-10-31T17:00:00+00:00");
        assert_eq!(p.covered_text(), "Từ ngày 01/10/2026 đến ngày 31/10/2026");
        assert_eq!(p.month_text(), "tháng 10/2026");
    }

    #[test]
    fn decree09_runs_from_the_15th_to_the_14th() {
        let p = Period::parse("2026-10", PeriodRule::Decree09).unwrap();
        let (t0, t1) = p.bounds(hcm());
        assert_eq!(t0.to_rfc3339(), "2026-09-14T17:00:00+00:00");
        assert_eq!(t1.to_rfc3339(), "2026-10-14T17:00:00+00:00");
        assert_eq!(p.covered_text(), "Từ ngày 15/09/2026 đến ngày 14/10/2026");
        let jan = Period::parse("2027-01", PeriodRule::Decree09).unwrap();
        assert_eq!(jan.first_day().to_string(), "2026-12-15");
        assert_eq!(jan.previous().label(), "2026-12");
    }

    #[test]
    fn offsets_cross_years() {
        let p = Period::parse("2026-01", PeriodRule::Calendar).unwrap();
        assert_eq!(p.previous().label(), "2025-12");
        assert_eq!(p.offset(-11).label(), "2025-02");
        assert_eq!(p.offset(12).label(), "2027-01");
    }

    #[test]
    fn rejects_malformed_periods() {
        for s in ["2026-13", "2026-1", "26-10", "2026/10", "", "2026-00"] {
            assert!(Period::parse(s, PeriodRule::Calendar).is_err(), "{s}");
        }
    }

    #[test]
    fn the_period_containing_an_instant_follows_the_rule() {
        let at = Utc.with_ymd_and_hms(2026, 10, 14, 17, 30, 0).unwrap(); // 15/10 00:30 local
        assert_eq!(
            Period::containing(at, hcm(), PeriodRule::Calendar).label(),
            "2026-10"
        );
        assert_eq!(
            Period::containing(at, hcm(), PeriodRule::Decree09).label(),
            "2026-11"
        );
    }
}
