//! Vietnamese formatting of figures for leaders, as the contract writes them: `1.402`,
//! `417.021 tỷ đồng`, `83,25`, `96,45%`, `31/10/2021`, `tháng 10/2026`.

use chrono::NaiveDate;

/// Groups of three digits separated by `.`: `1402` -> `1.402`, `-12345` -> `-12.345`.
pub fn integer(v: i128) -> String {
    let digits = v.unsigned_abs().to_string();
    let mut out = String::with_capacity(digits.len() + digits.len() / 3 + 1);
    if v < 0 {
        out.push('-');
    }
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) {
            out.push('.');
        }
        out.push(c);
    }
    out
}

/// A number with `places` decimals, decimal comma and grouped thousands: `83.25` -> `83,25`,
/// `1234.5` with 1 place -> `1.234,5`. Rounds half away from zero.
pub fn decimal(v: f64, places: usize) -> String {
    if !v.is_finite() {
        return "—".into();
    }
    let scale = 10f64.powi(places as i32);
    let scaled = (v.abs() * scale).round();
    let int_part = (scaled / scale).trunc() as i128;
    let frac = (scaled - (int_part as f64) * scale).round() as u64;
    let sign = if v < 0.0 && scaled > 0.0 { "-" } else { "" };
    if places == 0 {
        return format!("{sign}{}", integer(int_part));
    }
    format!(
        "{sign}{},{:0width$}",
        integer(int_part),
        frac,
        width = places
    )
}

/// A rate in percent with two decimals: `96.4512` -> `96,45%`.
pub fn percent(v: f64) -> String {
    format!("{}%", decimal(v, 2))
}

/// An amount in VND shown in billions (tỷ đồng): whole billions from 100 billion on, two
/// decimals below (trailing zeros dropped): `417_021e9` -> `417.021 tỷ đồng`,
/// `12.5e9` -> `12,5 tỷ đồng`.
pub fn billion_vnd(vnd: f64) -> String {
    let b = vnd / 1e9;
    let text = if b.abs() >= 100.0 {
        decimal(b, 0)
    } else {
        trim_zeros(&decimal(b, 2))
    };
    format!("{text} tỷ đồng")
}

/// An amount in USD shown in millions: `12_340_000` -> `12,34 triệu USD`.
pub fn million_usd(usd: f64) -> String {
    format!("{} triệu USD", trim_zeros(&decimal(usd / 1e6, 2)))
}

fn trim_zeros(s: &str) -> String {
    if let Some((i, f)) = s.split_once(',') {
        let f = f.trim_end_matches('0');
        if f.is_empty() {
            i.to_string()
        } else {
            format!("{i},{f}")
        }
    } else {
        s.to_string()
    }
}

/// `31/10/2021`.
pub fn date(d: NaiveDate) -> String {
    d.format("%d/%m/%Y").to_string()
}

/// `tháng 10/2026`.
pub fn month(year: i32, month: u32) -> String {
    format!("tháng {month}/{year}")
}

/// The change from last period, as leaders read it: `▲ 12`, `▼ 3,50`, `không đổi`; `None`
/// when there is nothing to compare with.
pub fn change(current: f64, previous: Option<f64>, places: usize) -> Option<String> {
    let p = previous?;
    let d = current - p;
    let shown = decimal(d.abs(), places);
    if shown.trim_start_matches(['0', ',', '.']).is_empty() {
        return Some("không đổi".into());
    }
    Some(if d > 0.0 {
        format!("▲ {shown}")
    } else {
        format!("▼ {shown}")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_as_the_contract_writes() {
        assert_eq!(integer(1402), "1.402");
        assert_eq!(integer(417_021), "417.021");
        assert_eq!(integer(-1_234_567), "-1.234.567");
        assert_eq!(integer(999), "999");
        assert_eq!(decimal(83.25, 2), "83,25");
        assert_eq!(percent(96.4512), "96,45%");
        assert_eq!(percent(100.0), "100,00%");
        assert_eq!(billion_vnd(417_021e9), "417.021 tỷ đồng");
        assert_eq!(billion_vnd(12.5e9), "12,5 tỷ đồng");
        assert_eq!(billion_vnd(3e9), "3 tỷ đồng");
        assert_eq!(million_usd(12_340_000.0), "12,34 triệu USD");
        assert_eq!(
            date(NaiveDate::from_ymd_opt(2021, 10, 31).unwrap()),
            "31/10/2021"
        );
        assert_eq!(month(2026, 10), "tháng 10/2026");
    }

    #[test]
    fn rounds_and_signs_changes() {
        assert_eq!(decimal(0.005, 2), "0,01");
        assert_eq!(decimal(-0.004, 2), "0,00");
        assert_eq!(decimal(1234.56, 1), "1.234,6");
        assert_eq!(change(12.0, Some(10.0), 0).unwrap(), "▲ 2");
        assert_eq!(change(96.0, Some(97.5), 2).unwrap(), "▼ 1,50");
        assert_eq!(change(5.0, Some(5.0), 0).unwrap(), "không đổi");
        assert_eq!(change(5.0, None, 0), None);
    }
}
