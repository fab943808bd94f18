//! Investment registration certificates of the demo province and investors' disbursement
//! reports, calibrated so that at the end of October 2021 exactly 1,402 projects are valid
//! with 417,021 billion VND of registered capital (the province's published figure).

use chrono::{Datelike, Duration, NaiveDate};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::province::{self, DISTRICTS};

pub const CALIBRATION_VALID_PROJECTS: usize = 1_402;
/// 417,021 billion VND.
pub const CALIBRATION_CAPITAL_VND: i128 = 417_021 * 1_000_000_000;

/// The calibration instant: end of October 2021, i.e. events dated before 2021-11-01.
pub fn calibration_cutoff() -> NaiveDate {
    NaiveDate::from_ymd_opt(2021, 11, 1).expect("valid date")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum EventType {
    New,
    CapitalIncrease,
    CapitalDecrease,
    Amendment,
    Terminated,
    Revoked,
}

impl EventType {
    /// The investment registration system's own code, mapped by the pipeline.
    pub fn source_code(self) -> &'static str {
        match self {
            EventType::New => "CAP_MOI",
            EventType::CapitalIncrease => "TANG_VON",
            EventType::CapitalDecrease => "GIAM_VON",
            EventType::Amendment => "DIEU_CHINH",
            EventType::Terminated => "CHAM_DUT",
            EventType::Revoked => "THU_HOI",
        }
    }

    pub fn ends(self) -> bool {
        matches!(self, EventType::Terminated | EventType::Revoked)
    }
}

#[derive(Debug, Clone)]
pub struct Event {
    pub version: u16,
    pub kind: EventType,
    pub date: NaiveDate,
    pub capital_vnd: i128,
    pub change_vnd: i128,
}

#[derive(Debug, Clone)]
pub struct Project {
    pub code: String,
    pub name: String,
    pub investor: String,
    pub country: &'static str,
    pub fdi: bool,
    pub ezone: bool,
    pub sector: (&'static str, &'static str),
    pub district: u16,
    pub zone: Option<&'static str>,
    pub land_ha: Option<f64>,
    pub events: Vec<Event>,
    /// Months from the first certificate to full disbursement.
    pub build_months: u32,
}

impl Project {
    /// The project's latest event dated before `cutoff` (highest version), if any.
    pub fn latest_before(&self, cutoff: NaiveDate) -> Option<&Event> {
        self.events
            .iter()
            .filter(|e| e.date < cutoff)
            .max_by_key(|e| e.version)
    }

    pub fn valid_at(&self, cutoff: NaiveDate) -> Option<i128> {
        self.latest_before(cutoff)
            .filter(|e| !e.kind.ends())
            .map(|e| e.capital_vnd)
    }
}

const SECTORS: &[(&str, &str, f64)] = &[
    ("A", "Nông nghiệp, lâm nghiệp và thủy sản", 0.14),
    ("B", "Khai khoáng", 0.03),
    ("C", "Công nghiệp chế biến, chế tạo", 0.22),
    ("D", "Sản xuất và phân phối điện, khí đốt", 0.05),
    ("E", "Cung cấp nước; xử lý rác thải, nước thải", 0.03),
    ("F", "Xây dựng", 0.10),
    ("G", "Bán buôn và bán lẻ; sửa chữa ô tô, mô tô", 0.12),
    ("H", "Vận tải kho bãi", 0.06),
    ("I", "Dịch vụ lưu trú và ăn uống", 0.09),
    ("J", "Thông tin và truyền thông", 0.02),
    ("K", "Hoạt động tài chính, ngân hàng và bảo hiểm", 0.01),
    ("L", "Hoạt động kinh doanh bất động sản", 0.06),
    ("M", "Hoạt động chuyên môn, khoa học và công nghệ", 0.01),
    ("N", "Hoạt động hành chính và dịch vụ hỗ trợ", 0.01),
    ("P", "Giáo dục và đào tạo", 0.02),
    ("Q", "Y tế và hoạt động trợ giúp xã hội", 0.02),
    ("R", "Nghệ thuật, vui chơi và giải trí", 0.01),
];

const ZONES: &[(&str, u16)] = &[
    ("Khu kinh tế Vũng Áng", 449),
    ("Khu kinh tế cửa khẩu quốc tế Cầu Treo", 439),
    ("Khu công nghiệp Gia Lách", 442),
    ("Khu công nghiệp Hạ Vàng", 443),
];

const FDI_COUNTRIES: &[&str] = &["TW", "KR", "JP", "CN", "SG", "TH", "US", "MY"];

const NAME_PARTS: &[&str] = &[
    "Nhà máy",
    "Khu du lịch sinh thái",
    "Trang trại chăn nuôi",
    "Cửa hàng xăng dầu",
    "Khu đô thị",
    "Nhà máy chế biến gỗ",
    "Trung tâm thương mại",
    "Khách sạn",
    "Bệnh viện đa khoa",
    "Kho bãi logistics",
    "Nhà máy may",
    "Cảng cạn",
    "Nhà máy điện mặt trời",
    "Trường mầm non tư thục",
    "Khu nuôi trồng thủy sản",
];

/// VND per USD by year, for FDI projects' USD capital.
fn usd_rate(year: i32) -> i128 {
    (16_000 + (year.clamp(2005, 2026) - 2005) as i128 * 450).min(25_400)
}

fn lognormal(rng: &mut impl Rng, median: f64, sigma: f64) -> f64 {
    // Box–Muller: one normal draw.
    let u1: f64 = rng.random::<f64>().max(1e-12);
    let u2: f64 = rng.random();
    let z = (-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos();
    median * (sigma * z).exp()
}

fn random_date(rng: &mut impl Rng, from: NaiveDate, to: NaiveDate) -> NaiveDate {
    let span = (to - from).num_days().max(1);
    from + Duration::days(rng.random_range(0..span))
}

/// Weighted start date: more projects in later years.
fn start_date(rng: &mut impl Rng, from: NaiveDate, to: NaiveDate) -> NaiveDate {
    let span = (to - from).num_days().max(1) as f64;
    let x: f64 = rng.random::<f64>().powf(0.75);
    from + Duration::days((x * span) as i64)
}

fn round_million(v: f64) -> i128 {
    ((v / 1e6).round() as i128).max(1) * 1_000_000
}

fn make_project(rng: &mut ChaCha8Rng, seq: usize, start: NaiveDate, end: NaiveDate) -> Project {
    let fdi = rng.random_bool(0.09);
    let zone = if rng.random_bool(if fdi { 0.7 } else { 0.2 }) {
        Some(ZONES[rng.random_range(0..ZONES.len())])
    } else {
        None
    };
    let ezone = zone.is_some_and(|z| z.0.starts_with("Khu kinh tế"));
    let mut acc = 0.0;
    let x: f64 = rng.random::<f64>() * SECTORS.iter().map(|s| s.2).sum::<f64>();
    let sector = SECTORS
        .iter()
        .find(|s| {
            acc += s.2;
            x < acc
        })
        .unwrap_or(&SECTORS[2]);
    let district = zone
        .map(|z| z.1)
        .unwrap_or(DISTRICTS[rng.random_range(0..DISTRICTS.len())].0);
    // Billion VND: small projects dominate the count, large ones the capital.
    let bn = if fdi {
        lognormal(rng, 420.0, 1.2)
    } else {
        lognormal(rng, 45.0, 1.35)
    };
    let capital = round_million(bn * 1e9);
    let name_part = NAME_PARTS[rng.random_range(0..NAME_PARTS.len())];
    let place = DISTRICTS
        .iter()
        .find(|d| d.0 == district)
        .map(|d| d.1)
        .unwrap_or("Hà Tĩnh");
    let events = certificates(rng, start, end, capital);
    let investor = investor_name(rng, fdi);
    Project {
        code: format!("28{:08}", (seq as u64 * 7_919 + 1_234_567) % 100_000_000),
        name: format!("{name_part} {} tại {place}", seq),
        investor,
        country: if fdi {
            FDI_COUNTRIES[rng.random_range(0..FDI_COUNTRIES.len())]
        } else {
            "VN"
        },
        fdi,
        ezone,
        sector: (sector.0, sector.1),
        district,
        zone: zone.map(|z| z.0),
        land_ha: if rng.random_bool(0.8) {
            Some((lognormal(rng, 2.0, 1.0) * 100.0).round() / 100.0)
        } else {
            None
        },
        events,
        build_months: rng.random_range(18..72),
    }
}

/// The project's certificates: the first, later changes of capital and amendments, and
/// sometimes its end.
fn certificates(
    rng: &mut ChaCha8Rng,
    start: NaiveDate,
    end: NaiveDate,
    capital: i128,
) -> Vec<Event> {
    let mut events = vec![Event {
        version: 0,
        kind: EventType::New,
        date: start,
        capital_vnd: capital,
        change_vnd: capital,
    }];
    let mut cap = capital;
    let mut date = start;
    // Later certificates: changes of capital, amendments, and sometimes the end.
    for _ in 0..rng.random_range(0..4) {
        date = random_date(rng, date + Duration::days(60), date + Duration::days(900));
        if date >= end {
            break;
        }
        let x: f64 = rng.random();
        let (kind, change) = if x < 0.45 {
            (EventType::Amendment, 0)
        } else if x < 0.85 {
            (
                EventType::CapitalIncrease,
                round_million(cap as f64 * rng.random_range(0.1..0.8)),
            )
        } else {
            (
                EventType::CapitalDecrease,
                -round_million(cap as f64 * rng.random_range(0.05..0.4)),
            )
        };
        cap += change;
        events.push(Event {
            version: events.len() as u16,
            kind,
            date,
            capital_vnd: cap,
            change_vnd: change,
        });
    }
    if rng.random_bool(0.13) {
        let d = random_date(
            rng,
            date + Duration::days(180),
            date + Duration::days(2_500),
        );
        if d < end {
            let kind = if rng.random_bool(0.7) {
                EventType::Terminated
            } else {
                EventType::Revoked
            };
            events.push(Event {
                version: events.len() as u16,
                kind,
                date: d,
                capital_vnd: cap,
                change_vnd: 0,
            });
        }
    }
    events
}

fn investor_name(rng: &mut ChaCha8Rng, fdi: bool) -> String {
    if fdi {
        format!(
            "{} {} Co., Ltd",
            ["Hoa", "Dae", "Nippon", "Sino", "Asia", "Pacific"][rng.random_range(0..6)],
            ["Steel", "Energy", "Textile", "Logistics", "Agro", "Tech"][rng.random_range(0..6)]
        )
    } else {
        format!(
            "Công ty {} {}",
            ["TNHH", "Cổ phần"][rng.random_range(0..2)],
            [
                "Hồng Lam",
                "Sông La",
                "Thiên Cầm",
                "Hoành Sơn",
                "Trà Sơn",
                "Kỳ Lĩnh",
                "Phú Gia",
                "Đại Thành",
                "Hải Phát"
            ][rng.random_range(0..9)]
        )
    }
}

/// The steel complex that dominates the province's registered capital; its first
/// certificate's capital absorbs the calibration difference.
fn anchor_project(end: NaiveDate) -> Project {
    let d = |y, m, dd| NaiveDate::from_ymd_opt(y, m, dd).expect("valid date");
    let mut events = vec![
        Event {
            version: 0,
            kind: EventType::New,
            date: d(2008, 6, 12),
            capital_vnd: 0,
            change_vnd: 0,
        },
        Event {
            version: 1,
            kind: EventType::CapitalIncrease,
            date: d(2015, 3, 20),
            capital_vnd: 0,
            change_vnd: 45_000_000_000_000,
        },
        Event {
            version: 2,
            kind: EventType::Amendment,
            date: d(2019, 9, 5),
            capital_vnd: 0,
            change_vnd: 0,
        },
        Event {
            version: 3,
            kind: EventType::CapitalIncrease,
            date: d(2023, 5, 16),
            capital_vnd: 0,
            change_vnd: 12_000_000_000_000,
        },
    ];
    events.retain(|e| e.date < end);
    Project {
        code: "2811000001".into(),
        name: "Khu liên hợp gang thép và cảng Sơn Dương".into(),
        investor: "Hung Nghiep Formosa Ha Tinh Steel Corporation".into(),
        country: "TW",
        fdi: true,
        ezone: true,
        sector: ("C", "Công nghiệp chế biến, chế tạo"),
        district: 449,
        zone: Some("Khu kinh tế Vũng Áng"),
        land_ha: Some(3_300.0),
        events,
        build_months: 96,
    }
}

/// Every project with its events up to `until` (inclusive), calibrated at 2021-10.
pub fn projects(seed: u64, until: NaiveDate) -> Vec<Project> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x1A7E_5700);
    let cutoff = calibration_cutoff();
    let end = until + Duration::days(1);
    let first = NaiveDate::from_ymd_opt(2006, 1, 1).expect("valid date");
    let mut anchor = anchor_project(end);
    let mut out = Vec::new();
    let mut valid = 1usize; // the anchor
    let mut seq = 2usize;
    while valid < CALIBRATION_VALID_PROJECTS {
        let start = start_date(&mut rng, first, cutoff);
        let p = make_project(&mut rng, seq, start, end);
        seq += 1;
        if p.valid_at(cutoff).is_some() {
            valid += 1;
        }
        out.push(p);
    }
    // Projects first certified after the calibration month.
    let mut d = cutoff;
    while d < end {
        let next = d + Duration::days(rng.random_range(1..5));
        if next >= end {
            break;
        }
        out.push(make_project(&mut rng, seq, next, end));
        seq += 1;
        d = next;
    }
    // Calibrate: the anchor's first capital makes the valid total exactly the published one.
    let others: i128 = out.iter().filter_map(|p| p.valid_at(cutoff)).sum();
    let increments: i128 = anchor
        .events
        .iter()
        .filter(|e| e.date < cutoff)
        .map(|e| e.change_vnd)
        .sum();
    let first_capital = CALIBRATION_CAPITAL_VND - others - increments;
    assert!(
        first_capital > 0,
        "calibration leaves the anchor project a positive capital"
    );
    let mut cap = 0;
    for e in anchor.events.iter_mut() {
        if e.version == 0 {
            e.change_vnd = first_capital;
        }
        cap += e.change_vnd;
        e.capital_vnd = cap;
    }
    out.push(anchor);
    out.sort_by_key(|p| (p.events[0].date, p.code.clone()));
    out
}

/// USD capital for FDI projects, at the rate of the event's year, in cents.
pub fn usd_cents(p: &Project, e: &Event) -> Option<i128> {
    p.fdi.then(|| e.capital_vnd * 100 / usd_rate(e.date.year()))
}

/// Where a project is on a date: its district before the reorganisation, after it the new
/// commune of that former district that holds the zone or the first one.
pub fn area_code(p: &Project, on: NaiveDate, new_communes: &[province::Commune]) -> String {
    if on < province::reorganisation() {
        p.district.to_string()
    } else {
        new_communes
            .iter()
            .find(|c| c.district == p.district)
            .map(|c| c.code.clone())
            .unwrap_or_else(|| p.district.to_string())
    }
}

/// Cumulative disbursement reported at each quarter end while the project is valid.
pub fn disbursements(p: &Project, until: NaiveDate) -> Vec<(NaiveDate, i128)> {
    let mut out = Vec::new();
    let start = p.events[0].date;
    let mut q = NaiveDate::from_ymd_opt(start.year(), ((start.month() - 1) / 3 + 1) * 3, 1)
        .expect("valid date");
    let mut last = 0i128;
    while q <= until {
        let month_end = q;
        let Some(e) = p.latest_before(month_end + Duration::days(31)) else {
            break;
        };
        if e.kind.ends() {
            break;
        }
        let months = ((q.year() - start.year()) * 12 + q.month() as i32 - start.month() as i32)
            .max(0) as f64;
        let progress = (months / p.build_months as f64).min(1.0).powf(1.3) * 0.92;
        let value = ((e.capital_vnd as f64 * progress) / 1e6).round() as i128 * 1_000_000;
        last = last.max(value);
        out.push((q, last));
        q = if q.month() >= 10 {
            NaiveDate::from_ymd_opt(q.year() + 1, q.month() - 9, 1)
        } else {
            NaiveDate::from_ymd_opt(q.year(), q.month() + 3, 1)
        }
        .expect("valid date");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calibrates_to_the_published_figures() {
        let until = NaiveDate::from_ymd_opt(2026, 10, 31).unwrap();
        let ps = projects(1, until);
        let cutoff = calibration_cutoff();
        let valid: Vec<i128> = ps.iter().filter_map(|p| p.valid_at(cutoff)).collect();
        assert_eq!(valid.len(), CALIBRATION_VALID_PROJECTS);
        assert_eq!(valid.iter().sum::<i128>(), CALIBRATION_CAPITAL_VND);
        let codes: std::collections::BTreeSet<_> = ps.iter().map(|p| &p.code).collect();
        assert_eq!(codes.len(), ps.len());
    }
}
