//! Rankings as the Department of Home Affairs publishes them: an XLSX workbook with a sheet per
//! index (PAR Index, SIPAS, the service-quality index of Decision 766, the province's own unit
//! ranking), a title above the table, one row per subject and criterion.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rust_xlsxwriter::{Format, FormatAlign, Workbook, XlsxError};
use std::path::Path;

use super::province::{self, DEPARTMENTS, DISTRICTS};

pub const PROVINCE_CODE: &str = "42";
pub const PROVINCE_NAME: &str = "Tỉnh Hà Tĩnh";

/// The province's PAR Index by year: total points and rank of 63 (2012 rank 27, 2019 83.25 and
/// rank 12: the published figures; the other years are demo values).
pub const PAR_HISTORY: &[(i16, f64, u16)] = &[
    (2012, 78.10, 27),
    (2013, 79.45, 24),
    (2014, 80.12, 22),
    (2015, 81.30, 19),
    (2016, 80.55, 21),
    (2017, 79.92, 16),
    (2018, 81.77, 14),
    (2019, 83.25, 12),
    (2020, 85.10, 10),
    (2021, 86.42, 8),
    (2022, 85.96, 11),
    (2023, 87.21, 9),
    (2024, 88.05, 7),
    (2025, 89.12, 6),
];

const AREAS: &[&str] = &[
    "Công tác chỉ đạo, điều hành cải cách hành chính",
    "Xây dựng và tổ chức thực hiện văn bản quy phạm pháp luật",
    "Cải cách thủ tục hành chính",
    "Cải cách tổ chức bộ máy hành chính nhà nước",
    "Xây dựng và nâng cao chất lượng đội ngũ cán bộ, công chức, viên chức",
    "Cải cách tài chính công",
    "Xây dựng, phát triển Chính phủ điện tử, Chính phủ số",
    "Tác động của cải cách hành chính đến người dân, tổ chức và phát triển kinh tế - xã hội",
];

/// Maximum points per area: data that changed with the methodology in 2017.
fn area_max(year: i16) -> [f64; 8] {
    if year < 2017 {
        [8.0, 8.5, 12.0, 9.5, 13.0, 10.5, 9.5, 29.0]
    } else {
        [9.5, 6.0, 12.5, 8.5, 13.5, 9.0, 11.0, 30.0]
    }
}

/// One row of the long-format table (the `rating` dataset, as published).
#[derive(Debug, Clone)]
pub struct RatingRow {
    pub year: i16,
    /// As written in the workbook: `PAR INDEX`, `SIPAS`, `QĐ 766`, `CCHC ĐƠN VỊ`.
    pub index_label: &'static str,
    pub subject_code: String,
    pub subject_name: String,
    /// As written: `Tỉnh`, `Sở, ban, ngành`, `Huyện, thị xã, thành phố`, `Xã, phường, thị trấn`.
    pub subject_type: &'static str,
    pub criterion_code: String,
    pub criterion_name: String,
    pub max_score: Option<f64>,
    pub self_score: Option<f64>,
    pub appraised_score: Option<f64>,
    pub survey_score: Option<f64>,
    pub score: f64,
    pub rank: Option<u16>,
    pub rank_of: Option<u16>,
}

pub const INDEX_LABELS: &[(&str, &str)] = &[
    ("PAR INDEX", "PAR"),
    ("SIPAS", "SIPAS"),
    ("QĐ 766", "QD766"),
    ("CCHC ĐƠN VỊ", "UNIT_PAR"),
];

pub const SUBJECT_TYPES: &[(&str, &str)] = &[
    ("Tỉnh", "province"),
    ("Sở, ban, ngành", "department"),
    ("Huyện, thị xã, thành phố", "district"),
    ("Xã, phường, thị trấn", "commune"),
];

/// Splits `total` (in hundredths) over areas in proportion to random shares, within maxima.
fn split_areas(rng: &mut impl Rng, total: f64, max: &[f64; 8]) -> [f64; 8] {
    let target = (total * 100.0).round() as i64;
    let mut cents = [0i64; 8];
    let share: Vec<f64> = max.iter().map(|m| m * rng.random_range(0.8..1.0)).collect();
    let s: f64 = share.iter().sum();
    for i in 0..8 {
        cents[i] = ((share[i] / s) * target as f64).floor() as i64;
        cents[i] = cents[i].min((max[i] * 100.0) as i64);
    }
    let mut left = target - cents.iter().sum::<i64>();
    let mut i = 0;
    while left != 0 {
        let room = (max[i % 8] * 100.0) as i64 - cents[i % 8];
        if left > 0 && room > 0 {
            cents[i % 8] += 1;
            left -= 1;
        } else if left < 0 && cents[i % 8] > 0 {
            cents[i % 8] -= 1;
            left += 1;
        }
        i += 1;
    }
    cents.map(|c| c as f64 / 100.0)
}

/// Every published rating up to `last_year` (the latest year whose results are out).
pub fn rows(seed: u64, last_year: i16) -> Vec<RatingRow> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0x5C0_4E5);
    let mut out = Vec::new();
    par_index(&mut rng, last_year, &mut out);
    service_indices(&mut rng, last_year, &mut out);
    unit_rankings(&mut rng, last_year, &mut out);
    out
}

/// The PAR Index's total and its eight areas, for the province.
fn par_index(rng: &mut ChaCha8Rng, last_year: i16, out: &mut Vec<RatingRow>) {
    for &(year, total, rank) in PAR_HISTORY.iter().filter(|r| r.0 <= last_year) {
        let max = area_max(year);
        let areas = split_areas(rng, total, &max);
        out.push(RatingRow {
            year,
            index_label: "PAR INDEX",
            subject_code: PROVINCE_CODE.into(),
            subject_name: PROVINCE_NAME.into(),
            subject_type: "Tỉnh",
            criterion_code: "TOTAL".into(),
            criterion_name: "Tổng điểm".into(),
            max_score: Some(100.0),
            self_score: None,
            appraised_score: None,
            survey_score: None,
            score: total,
            rank: Some(rank),
            rank_of: Some(63),
        });
        for (i, (name, score)) in AREAS.iter().zip(areas).enumerate() {
            let surveyed = i == 7;
            out.push(RatingRow {
                year,
                index_label: "PAR INDEX",
                subject_code: PROVINCE_CODE.into(),
                subject_name: PROVINCE_NAME.into(),
                subject_type: "Tỉnh",
                criterion_code: format!("LV{}", i + 1),
                criterion_name: name.to_string(),
                max_score: Some(max[i]),
                self_score: (!surveyed)
                    .then(|| ((score + rng.random_range(0.0..0.6)) * 100.0).round() / 100.0)
                    .map(|v: f64| v.min(max[i])),
                appraised_score: (!surveyed).then_some(score),
                survey_score: surveyed.then_some(score),
                score,
                rank: None,
                rank_of: None,
            });
        }
    }
}

fn service_indices(rng: &mut ChaCha8Rng, last_year: i16, out: &mut Vec<RatingRow>) {
    // SIPAS (from 2017) and the service-quality index of Decision 766 (from 2022).
    for year in 2017..=last_year {
        let t = (year - 2017) as f64;
        out.push(simple(
            year,
            "SIPAS",
            ((80.5 + 1.4 * t + rng.random_range(-0.8..0.8)) * 100.0).round() / 100.0,
            rng.random_range(6..20),
        ));
        if year >= 2022 {
            out.push(simple(
                year,
                "QĐ 766",
                ((78.0 + 2.5 * (year - 2022) as f64 + rng.random_range(-1.0..1.0)) * 100.0).round()
                    / 100.0,
                rng.random_range(5..25),
            ));
        }
    }
}

fn unit_rankings(rng: &mut ChaCha8Rng, last_year: i16, out: &mut Vec<RatingRow>) {
    // The province's own ranking of its units.
    let old = province::old_communes();
    let new = province::new_communes(&old);
    for year in 2018..=last_year {
        let mut groups: Vec<(&'static str, Vec<(String, String)>)> = vec![(
            "Sở, ban, ngành",
            DEPARTMENTS
                .iter()
                .map(|(nn, name)| (province::department_code(nn), name.to_string()))
                .collect(),
        )];
        if year < 2025 {
            groups.push((
                "Huyện, thị xã, thành phố",
                DISTRICTS
                    .iter()
                    .map(|(d, name, _, _)| (d.to_string(), format!("UBND {name}")))
                    .collect(),
            ));
        } else {
            groups.push((
                "Xã, phường, thị trấn",
                new.iter()
                    .map(|c| (c.code.clone(), format!("UBND {}", c.name)))
                    .collect(),
            ));
        }
        for (kind, units) in groups {
            let mut scored: Vec<(String, String, f64)> = units
                .into_iter()
                .map(|(c, n)| {
                    let s = ((rng.random_range(72.0..95.0) + (year - 2018) as f64 * 0.4) * 100.0)
                        .round()
                        / 100.0;
                    (c, n, s.min(99.5))
                })
                .collect();
            scored.sort_by(|a, b| b.2.total_cmp(&a.2).then(a.0.cmp(&b.0)));
            let n = scored.len() as u16;
            for (i, (code, name, score)) in scored.into_iter().enumerate() {
                out.push(RatingRow {
                    year,
                    index_label: "CCHC ĐƠN VỊ",
                    subject_code: code,
                    subject_name: name,
                    subject_type: kind,
                    criterion_code: "TOTAL".into(),
                    criterion_name: "Tổng điểm".into(),
                    max_score: Some(100.0),
                    self_score: Some((score + 3.0).min(100.0)),
                    appraised_score: Some(score),
                    survey_score: None,
                    score,
                    rank: Some(i as u16 + 1),
                    rank_of: Some(n),
                });
            }
        }
    }
}

fn simple(year: i16, label: &'static str, score: f64, rank: u16) -> RatingRow {
    RatingRow {
        year,
        index_label: label,
        subject_code: PROVINCE_CODE.into(),
        subject_name: PROVINCE_NAME.into(),
        subject_type: "Tỉnh",
        criterion_code: "TOTAL".into(),
        criterion_name: "Tổng điểm".into(),
        max_score: Some(100.0),
        self_score: None,
        appraised_score: None,
        survey_score: None,
        score,
        rank: Some(rank),
        rank_of: Some(63),
    }
}

pub const HEADERS: &[&str] = &[
    "Năm",
    "Chỉ số",
    "Mã đối tượng",
    "Tên đối tượng",
    "Loại đối tượng",
    "Mã tiêu chí",
    "Tên tiêu chí",
    "Điểm tối đa",
    "Điểm tự đánh giá",
    "Điểm thẩm định",
    "Điểm điều tra XHH",
    "Điểm",
    "Xếp hạng",
    "Trên tổng số",
];

/// The row of the header in each sheet (1-based), below the title and the source line.
pub const HEADER_ROW: u32 = 3;

/// Writes the workbook: one sheet per index, title in row 1, source in row 2, header in row 3.
/// `published` is the workbook's creation date, fixed so that the same seed gives the same file.
pub fn write_xlsx(
    rows: &[RatingRow],
    path: &Path,
    published: (u16, u8, u8),
) -> Result<(), XlsxError> {
    let mut wb = Workbook::new();
    let created = rust_xlsxwriter::ExcelDateTime::from_ymd(published.0, published.1, published.2)?;
    wb.set_properties(
        &rust_xlsxwriter::DocProperties::new()
            .set_title("Kết quả chỉ số cải cách hành chính")
            .set_author("Sở Nội vụ tỉnh Hà Tĩnh")
            .set_creation_datetime(&created),
    );
    let title = Format::new()
        .set_bold()
        .set_font_size(13)
        .set_align(FormatAlign::Center);
    let header = Format::new()
        .set_bold()
        .set_text_wrap()
        .set_border(rust_xlsxwriter::FormatBorder::Thin);
    let sheets: &[(&str, &str, &str)] = &[
        (
            "PAR INDEX",
            "PAR_INDEX",
            "KẾT QUẢ CHỈ SỐ CẢI CÁCH HÀNH CHÍNH (PAR INDEX) CỦA TỈNH HÀ TĨNH",
        ),
        (
            "SIPAS",
            "SIPAS",
            "CHỈ SỐ HÀI LÒNG VỀ SỰ PHỤC VỤ HÀNH CHÍNH (SIPAS)",
        ),
        (
            "QĐ 766",
            "QD766",
            "CHỈ SỐ PHỤC VỤ NGƯỜI DÂN, DOANH NGHIỆP (QUYẾT ĐỊNH 766/QĐ-TTg)",
        ),
        (
            "CCHC ĐƠN VỊ",
            "XEP_HANG_DON_VI",
            "KẾT QUẢ XÁC ĐỊNH CHỈ SỐ CẢI CÁCH HÀNH CHÍNH CỦA CÁC SỞ, BAN, NGÀNH VÀ ĐỊA PHƯƠNG",
        ),
    ];
    for &(label, sheet_name, heading) in sheets {
        let ws = wb.add_worksheet();
        ws.set_name(sheet_name)?;
        ws.merge_range(0, 0, 0, (HEADERS.len() - 1) as u16, heading, &title)?;
        ws.write_string(1, 0, "(Nguồn: Bộ Nội vụ; Sở Nội vụ tỉnh Hà Tĩnh tổng hợp)")?;
        for (c, h) in HEADERS.iter().enumerate() {
            ws.write_string_with_format(HEADER_ROW - 1, c as u16, *h, &header)?;
        }
        ws.set_column_width(3, 40)?;
        ws.set_column_width(6, 50)?;
        for (r, row) in (HEADER_ROW..).zip(rows.iter().filter(|x| x.index_label == label)) {
            write_row(ws, r, row)?;
        }
    }
    wb.save(path)
}

fn write_row(
    ws: &mut rust_xlsxwriter::Worksheet,
    r: u32,
    row: &RatingRow,
) -> Result<(), XlsxError> {
    ws.write_number(r, 0, row.year as f64)?;
    ws.write_string(r, 1, row.index_label)?;
    ws.write_string(r, 2, &row.subject_code)?;
    ws.write_string(r, 3, &row.subject_name)?;
    ws.write_string(r, 4, row.subject_type)?;
    ws.write_string(r, 5, &row.criterion_code)?;
    ws.write_string(r, 6, &row.criterion_name)?;
    for (c, v) in [
        (7, row.max_score),
        (8, row.self_score),
        (9, row.appraised_score),
        (10, row.survey_score),
        (11, Some(row.score)),
    ] {
        if let Some(v) = v {
            ws.write_number(r, c, v)?;
        }
    }
    if let Some(v) = row.rank {
        ws.write_number(r, 12, v as f64)?;
    }
    if let Some(v) = row.rank_of {
        ws.write_number(r, 13, v as f64)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn areas_add_up_to_the_total_within_their_maxima() {
        for r in rows(3, 2025)
            .iter()
            .filter(|r| r.index_label == "PAR INDEX")
        {
            if let (Some(max), "TOTAL") = (r.max_score, r.criterion_code.as_str()) {
                assert_eq!(max, 100.0);
            }
        }
        let rs = rows(3, 2025);
        for &(year, total, _) in PAR_HISTORY {
            let sum: f64 = rs
                .iter()
                .filter(|r| {
                    r.year == year && r.index_label == "PAR INDEX" && r.criterion_code != "TOTAL"
                })
                .map(|r| r.score)
                .sum();
            assert!((sum - total).abs() < 1e-6, "{year}: {sum} vs {total}");
            for r in rs
                .iter()
                .filter(|r| r.year == year && r.criterion_code.starts_with("LV"))
            {
                assert!(r.score <= r.max_score.unwrap());
            }
        }
    }
}
