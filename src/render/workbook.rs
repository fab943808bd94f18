//! The report's XLSX workbook: one formatted sheet per result table (frozen header, numbers
//! as numbers, dates as dates) and, for the PAR report, the official form II.06a laid out as
//! Circular 01/2020/TT-VPCP prescribes.

use arrow::datatypes::DataType;
use chrono::NaiveDate;
use rust_xlsxwriter::{
    ExcelDateTime, Format, FormatAlign, FormatBorder, Workbook, Worksheet, XlsxError,
};

use super::table::{num, text, Row};
use crate::query::{Computed, ResultTable};

/// The official form's sheet name.
pub const FORM_SHEET: &str = "Bieu II.06a";

/// Builds the workbook in memory: the form first when the report has `dossier_monthly`.
pub fn workbook(c: &Computed, tz: chrono_tz::Tz) -> Result<Vec<u8>, XlsxError> {
    let mut wb = Workbook::new();
    wb.set_properties(
        &rust_xlsxwriter::DocProperties::new()
            .set_title(format!("{} {}", c.report, c.period.label()))
            .set_author("parstat"),
    );
    if let Some(t) = c.table("dossier_monthly") {
        let rows = super::table::rows(&t.batches, tz);
        official_form(wb.add_worksheet(), c, &rows)?;
    }
    for t in &c.tables {
        table_sheet(wb.add_worksheet(), t, tz)?;
    }
    wb.save_to_buffer()
}

fn header_format() -> Format {
    Format::new()
        .set_bold()
        .set_text_wrap()
        .set_align(FormatAlign::Center)
        .set_align(FormatAlign::VerticalCenter)
        .set_background_color("#DDEBF7")
        .set_border(FormatBorder::Thin)
}

/// Sheet names: at most 31 characters, unique because table names are.
fn sheet_name(name: &str) -> String {
    name.chars().take(31).collect()
}

fn table_sheet(ws: &mut Worksheet, t: &ResultTable, tz: chrono_tz::Tz) -> Result<(), XlsxError> {
    ws.set_name(sheet_name(&t.name))?;
    let header = header_format();
    let int = Format::new().set_num_format("#,##0");
    let real = Format::new().set_num_format("#,##0.00");
    let date = Format::new().set_num_format("dd/mm/yyyy");
    let fields = t.schema.fields();
    for (c, f) in fields.iter().enumerate() {
        ws.write_string_with_format(0, c as u16, f.name(), &header)?;
        ws.set_column_width(
            c as u16,
            (f.name().chars().count() as f64 + 2.0).clamp(10.0, 40.0),
        )?;
    }
    ws.set_freeze_panes(1, 0)?;
    let rows = super::table::rows(&t.batches, tz);
    for (r, row) in rows.iter().enumerate() {
        let r = r as u32 + 1;
        for (c, f) in fields.iter().enumerate() {
            let c = c as u16;
            let v = row.get(f.name()).cloned().unwrap_or_default();
            if v.is_null() {
                continue;
            }
            match f.data_type() {
                DataType::Int8
                | DataType::Int16
                | DataType::Int32
                | DataType::Int64
                | DataType::UInt8
                | DataType::UInt16
                | DataType::UInt32
                | DataType::UInt64 => {
                    ws.write_number_with_format(r, c, v.as_f64().unwrap_or_default(), &int)?;
                }
                DataType::Decimal128(_, 0) => {
                    ws.write_number_with_format(r, c, v.as_f64().unwrap_or_default(), &int)?;
                }
                DataType::Float32 | DataType::Float64 | DataType::Decimal128(_, _) => {
                    ws.write_number_with_format(r, c, v.as_f64().unwrap_or_default(), &real)?;
                }
                DataType::Boolean => {
                    ws.write_boolean(r, c, v.as_bool().unwrap_or_default())?;
                }
                DataType::Date32 => {
                    let d = NaiveDate::parse_from_str(v.as_str().unwrap_or_default(), "%Y-%m-%d")
                        .unwrap_or_default();
                    let x = ExcelDateTime::parse_from_str(&d.to_string())?;
                    ws.write_datetime_with_format(r, c, &x, &date)?;
                }
                _ => {
                    ws.write_string(r, c, v.as_str().map(String::from).unwrap_or(v.to_string()))?;
                }
            }
        }
    }
    Ok(())
}

fn of_kind<'a>(rows: &'a [Row], kind: &'a str) -> impl Iterator<Item = &'a Row> + 'a {
    rows.iter().filter(move |x| text(x, "group_kind") == kind)
}

/// The 13 columns of form II.06a, each from the contract's measures.
const FORM_COLUMNS: usize = 13;

fn form_values(r: &Row) -> [f64; 11] {
    let n = |c: &str| num(r, c).unwrap_or(0.0);
    [
        n("to_process"),
        n("received_online"),
        n("received_in_person") + n("received_postal"),
        n("carried_over"),
        n("resolved") + n("withdrawn"),
        n("resolved_early"),
        n("resolved_on_time") + n("withdrawn"),
        n("resolved_late"),
        n("pending"),
        n("pending_within"),
        n("pending_overdue"),
    ]
}

fn official_form(ws: &mut Worksheet, c: &Computed, rows: &[Row]) -> Result<(), XlsxError> {
    ws.set_name(FORM_SHEET)?;
    let last = (FORM_COLUMNS - 1) as u16;
    form_title(ws, c, last)?;
    let hn = form_header(ws)?;
    let province = of_kind(rows, "province").next();
    let r = form_body(ws, c, rows, province, hn + 1)?;
    form_note(ws, province, r, last)
}

/// Writes the form's code, title, reporting period and unit in rows 0 to 3.
fn form_title(ws: &mut Worksheet, c: &Computed, last: u16) -> Result<(), XlsxError> {
    let bold_center = Format::new()
        .set_bold()
        .set_align(FormatAlign::Center)
        .set_text_wrap();
    let italic_center = Format::new().set_italic().set_align(FormatAlign::Center);
    let right = Format::new().set_italic().set_align(FormatAlign::Right);

    ws.write_string_with_format(
        0,
        last - 2,
        "Biểu số II.06a/VPCP/KSTT",
        &Format::new().set_bold(),
    )?;
    ws.merge_range(
        1,
        0,
        1,
        last,
        "TÌNH HÌNH, KẾT QUẢ GIẢI QUYẾT TTHC TẠI CƠ QUAN, ĐƠN VỊ TRỰC TIẾP GIẢI QUYẾT TTHC",
        &bold_center,
    )?;
    ws.merge_range(
        2,
        0,
        2,
        last,
        &format!(
            "Kỳ báo cáo: {} ({})",
            c.period.month_text(),
            c.period.covered_text()
        ),
        &italic_center,
    )?;
    ws.merge_range(3, 0, 3, last, "Đơn vị tính: Số hồ sơ TTHC", &right)?;
    Ok(())
}

/// Writes the three header rows and the column numbers, sizes the columns and freezes the
/// panes; returns the row of the column numbers.
fn form_header(ws: &mut Worksheet) -> Result<u32, XlsxError> {
    let header = header_format();
    // Three header rows, then the column numbers.
    let (h1, h2, h3, hn) = (4u32, 5u32, 6u32, 7u32);
    ws.merge_range(h1, 0, h3, 0, "STT", &header)?;
    ws.merge_range(
        h1,
        1,
        h3,
        1,
        "Lĩnh vực, công việc giải quyết theo cấp",
        &header,
    )?;
    ws.merge_range(h1, 2, h1, 5, "Số hồ sơ nhận giải quyết", &header)?;
    ws.merge_range(h1, 6, h1, 9, "Số hồ sơ đã giải quyết", &header)?;
    ws.merge_range(h1, 10, h1, 12, "Số hồ sơ đang giải quyết", &header)?;
    ws.merge_range(h2, 2, h3, 2, "Tổng số", &header)?;
    ws.merge_range(h2, 3, h2, 4, "Trong kỳ", &header)?;
    ws.write_string_with_format(h3, 3, "Trực tuyến", &header)?;
    ws.write_string_with_format(h3, 4, "Trực tiếp, dịch vụ bưu chính", &header)?;
    ws.merge_range(h2, 5, h3, 5, "Từ kỳ trước", &header)?;
    for (col, label) in [
        (6u16, "Tổng số"),
        (7, "Trước hạn"),
        (8, "Đúng hạn"),
        (9, "Quá hạn"),
        (10, "Tổng số"),
        (11, "Trong hạn"),
        (12, "Quá hạn"),
    ] {
        ws.merge_range(h2, col, h3, col, label, &header)?;
    }
    for col in 0..FORM_COLUMNS {
        ws.write_string_with_format(hn, col as u16, format!("({})", col + 1), &header)?;
    }
    ws.set_column_width(0, 6)?;
    ws.set_column_width(1, 48)?;
    for col in 2..FORM_COLUMNS as u16 {
        ws.set_column_width(col, 11)?;
    }
    ws.set_freeze_panes(hn + 1, 2)?;
    Ok(hn)
}

/// Writes the total row, then each level's row followed by its agencies, from row `r`;
/// returns the row after the last one written.
fn form_body(
    ws: &mut Worksheet,
    c: &Computed,
    rows: &[Row],
    province: Option<&Row>,
    mut r: u32,
) -> Result<u32, XlsxError> {
    let cell = Format::new().set_border(FormatBorder::Thin);
    let cell_num = Format::new()
        .set_border(FormatBorder::Thin)
        .set_num_format("#,##0");
    let total = Format::new().set_bold().set_border(FormatBorder::Thin);
    let total_num = Format::new()
        .set_bold()
        .set_border(FormatBorder::Thin)
        .set_num_format("#,##0");
    let mut write_row = |ws: &mut Worksheet,
                         stt: &str,
                         label: &str,
                         values: [f64; 11],
                         strong: bool|
     -> Result<(), XlsxError> {
        let (f, fnum) = if strong {
            (&total, &total_num)
        } else {
            (&cell, &cell_num)
        };
        ws.write_string_with_format(r, 0, stt, f)?;
        ws.write_string_with_format(r, 1, label, f)?;
        for (i, v) in values.iter().enumerate() {
            ws.write_number_with_format(r, i as u16 + 2, *v, fnum)?;
        }
        r += 1;
        Ok(())
    };
    write_row(
        ws,
        "",
        "Tổng số",
        province.map(form_values).unwrap_or([0.0; 11]),
        true,
    )?;
    let reorganised = NaiveDate::from_ymd_opt(2025, 7, 1).expect("valid date");
    // District-level units only exist in periods that begin before the reorganisation.
    let blocks = [
        ("province", "Sở, ban, ngành", true),
        (
            "district",
            "Huyện, thị xã, thành phố",
            c.period.first_day() < reorganised,
        ),
        ("commune", "Xã, phường, thị trấn", true),
    ];
    let numerals = ["I", "II", "III"];
    for (k, (level, label, _)) in blocks.iter().filter(|b| b.2).enumerate() {
        let level_row = of_kind(rows, "level").find(|x| text(x, "group_code") == *level);
        write_row(
            ws,
            numerals[k],
            label,
            level_row.map(form_values).unwrap_or([0.0; 11]),
            true,
        )?;
        let mut agencies: Vec<&Row> = of_kind(rows, "agency")
            .filter(|x| text(x, "agency_level") == *level)
            .collect();
        agencies.sort_by_key(|x| text(x, "group_name"));
        for (i, a) in agencies.iter().enumerate() {
            write_row(
                ws,
                &(i + 1).to_string(),
                &text(a, "group_name"),
                form_values(a),
                false,
            )?;
        }
    }
    Ok(r)
}

/// Writes the note on withdrawn dossiers one row below row `r`.
fn form_note(
    ws: &mut Worksheet,
    province: Option<&Row>,
    r: u32,
    last: u16,
) -> Result<(), XlsxError> {
    let withdrawn = province.and_then(|p| num(p, "withdrawn")).unwrap_or(0.0);
    ws.merge_range(
        r + 1,
        0,
        r + 1,
        last,
        &format!(
            "Ghi chú: Số hồ sơ giải quyết đúng hạn (cột 9) gồm cả {} hồ sơ tổ chức, cá nhân rút theo yêu cầu, được tính là giải quyết đúng hạn.",
            super::format::integer(withdrawn as i128)
        ),
        &Format::new().set_italic().set_text_wrap(),
    )?;
    ws.set_row_height(r + 1, 30)?;
    Ok(())
}
