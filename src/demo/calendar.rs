//! Working days of a Vietnamese public office: Monday to Friday, less public holidays and the
//! Tết (Lunar New Year) break, which is what due dates are counted in.

use chrono::{Datelike, Duration, NaiveDate, Weekday};

/// First day of Tết (lunar new year) by year; the break runs from two days before to four after.
fn tet(year: i32) -> Option<NaiveDate> {
    let (m, d) = match year {
        2005 => (2, 9),
        2006 => (1, 29),
        2007 => (2, 17),
        2008 => (2, 7),
        2009 => (1, 26),
        2010 => (2, 14),
        2011 => (2, 3),
        2012 => (1, 23),
        2013 => (2, 10),
        2014 => (1, 31),
        2015 => (2, 19),
        2016 => (2, 8),
        2017 => (1, 28),
        2018 => (2, 16),
        2019 => (2, 5),
        2020 => (1, 25),
        2021 => (2, 12),
        2022 => (2, 1),
        2023 => (1, 22),
        2024 => (2, 10),
        2025 => (1, 29),
        2026 => (2, 17),
        2027 => (2, 6),
        2028 => (1, 26),
        2029 => (2, 13),
        2030 => (2, 3),
        _ => return None,
    };
    NaiveDate::from_ymd_opt(year, m, d)
}

/// Hùng Kings' commemoration (10th of the 3rd lunar month), by year.
fn hung_kings(year: i32) -> Option<NaiveDate> {
    let (m, d) = match year {
        2019 => (4, 15),
        2020 => (4, 2),
        2021 => (4, 21),
        2022 => (4, 11),
        2023 => (4, 29),
        2024 => (4, 18),
        2025 => (4, 7),
        2026 => (4, 27),
        2027 => (4, 16),
        _ => return None,
    };
    NaiveDate::from_ymd_opt(year, m, d)
}

pub fn is_holiday(d: NaiveDate) -> bool {
    let (m, day) = (d.month(), d.day());
    if (m, day) == (1, 1)
        || (m, day) == (4, 30)
        || (m, day) == (5, 1)
        || (m == 9 && (day == 1 || day == 2))
    {
        return true;
    }
    if hung_kings(d.year()) == Some(d) {
        return true;
    }
    // Tết may fall in late January of the same year: check this year's and next year's.
    [tet(d.year()), tet(d.year() + 1)]
        .into_iter()
        .flatten()
        .any(|t| {
            let from = t - Duration::days(2);
            let to = t + Duration::days(4);
            d >= from && d <= to
        })
}

pub fn is_working_day(d: NaiveDate) -> bool {
    !matches!(d.weekday(), Weekday::Sat | Weekday::Sun) && !is_holiday(d)
}

/// The working day `n` working days after `d` (the same day for 0, moved to a working day).
pub fn add_working_days(d: NaiveDate, n: u32) -> NaiveDate {
    let mut day = d;
    while !is_working_day(day) {
        day += Duration::days(1);
    }
    let mut left = n;
    while left > 0 {
        day += Duration::days(1);
        if is_working_day(day) {
            left -= 1;
        }
    }
    day
}

/// The next working day on or after `d`.
pub fn next_working_day(d: NaiveDate) -> NaiveDate {
    add_working_days(d, 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn date(y: i32, m: u32, d: u32) -> NaiveDate {
        NaiveDate::from_ymd_opt(y, m, d).unwrap()
    }

    #[test]
    fn tet_and_weekends_are_not_working_days() {
        assert!(!is_working_day(date(2024, 2, 12))); // Monday in the Tết break
        assert!(!is_working_day(date(2024, 2, 10))); // Saturday
        assert!(is_working_day(date(2024, 2, 15)));
        assert!(!is_working_day(date(2025, 9, 2)));
    }

    #[test]
    fn counts_due_dates_in_working_days() {
        // Friday 2024-02-02 + 3 working days skips the weekend: Wednesday 2024-02-07.
        assert_eq!(add_working_days(date(2024, 2, 2), 3), date(2024, 2, 7));
        // Across Tết 2024 (break 8–14 Feb).
        assert_eq!(add_working_days(date(2024, 2, 7), 1), date(2024, 2, 15));
        assert_eq!(add_working_days(date(2024, 2, 10), 0), date(2024, 2, 15));
    }
}
