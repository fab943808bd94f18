//! Charts for the emails, drawn with plotters into PNG images that travel inside the message
//! (no external images): the 12-month trend and agencies compared. Text uses the bundled
//! DejaVu Sans, which has every Vietnamese glyph, so "Tháng" renders the same on any server.

use plotters::prelude::*;
use std::sync::Once;

const FONT: &[u8] = include_bytes!("../../reports/assets/DejaVuSans.ttf");
const FAMILY: &str = "sans-serif";
static REGISTER: Once = Once::new();

fn register_font() {
    REGISTER.call_once(|| {
        // The bundled font is valid: a failure here would be a broken build, seen in tests.
        let _ = plotters::style::register_font(FAMILY, FontStyle::Normal, FONT);
    });
}

#[derive(Debug, thiserror::Error)]
#[error("chart `{name}`: {message}")]
pub struct ChartError {
    pub name: String,
    pub message: String,
}

fn err(name: &str, e: impl std::fmt::Display) -> ChartError {
    ChartError {
        name: name.to_string(),
        message: e.to_string(),
    }
}

/// RGB pixels to PNG.
fn png(name: &str, rgb: &[u8], (w, h): (u32, u32)) -> Result<Vec<u8>, ChartError> {
    let mut out = Vec::new();
    let mut enc = png::Encoder::new(&mut out, w, h);
    enc.set_color(png::ColorType::Rgb);
    enc.set_depth(png::BitDepth::Eight);
    let mut writer = enc.write_header().map_err(|e| err(name, e))?;
    writer.write_image_data(rgb).map_err(|e| err(name, e))?;
    writer.finish().map_err(|e| err(name, e))?;
    Ok(out)
}

/// Two series over periods (e.g. dossiers received and resolved), labelled `MM/YYYY`.
pub fn trend(
    name: &str,
    title: &str,
    periods: &[String],
    series: &[(&str, Vec<f64>)],
) -> Result<Vec<u8>, ChartError> {
    register_font();
    let size = (720u32, 320u32);
    let mut buf = vec![255u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(name, e))?;
        let max = series
            .iter()
            .flat_map(|(_, v)| v.iter().copied())
            .fold(0.0f64, f64::max)
            .max(1.0)
            * 1.15;
        let n = periods.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 18))
            .margin(12)
            .margin_right(36)
            .x_label_area_size(36)
            .y_label_area_size(64)
            .build_cartesian_2d(0usize..(n - 1).max(1), 0f64..max)
            .map_err(|e| err(name, e))?;
        let labels = month_labels(periods);
        chart
            .configure_mesh()
            .x_labels(n)
            .x_label_formatter(&|i| labels.get(*i).cloned().unwrap_or_default())
            .y_label_formatter(&|v| super::format::integer(*v as i128))
            .label_style((FAMILY, 12))
            .disable_x_mesh()
            .draw()
            .map_err(|e| err(name, e))?;
        draw_trend_series(&mut chart, name, series)?;
        chart
            .configure_series_labels()
            .label_font((FAMILY, 13))
            .background_style(WHITE.mix(0.9))
            .border_style(BLACK.mix(0.3))
            .position(SeriesLabelPosition::UpperLeft)
            .draw()
            .map_err(|e| err(name, e))?;
        root.present().map_err(|e| err(name, e))?;
    }
    png(name, &buf, size)
}

/// The axis labels for `YYYY-MM` periods, as `M/YYYY`.
fn month_labels(periods: &[String]) -> Vec<String> {
    periods
        .iter()
        .map(|p| {
            let (y, m) = p.split_once('-').unwrap_or((p, ""));
            format!("{}/{y}", m.trim_start_matches('0'))
        })
        .collect()
}

/// Draws each series as a line with dots, in turn, with its legend entry.
fn draw_trend_series(
    chart: &mut ChartContext<
        '_,
        BitMapBackend<'_>,
        Cartesian2d<
            plotters::coord::types::RangedCoordusize,
            plotters::coord::types::RangedCoordf64,
        >,
    >,
    name: &str,
    series: &[(&str, Vec<f64>)],
) -> Result<(), ChartError> {
    let colours = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
    ];
    for (k, (label, values)) in series.iter().enumerate() {
        let colour = colours[k % colours.len()];
        chart
            .draw_series(LineSeries::new(
                values.iter().enumerate().map(|(i, v)| (i, *v)),
                colour.stroke_width(3),
            ))
            .map_err(|e| err(name, e))?
            .label(*label)
            .legend(move |(x, y)| {
                PathElement::new(vec![(x, y), (x + 18, y)], colour.stroke_width(3))
            });
        chart
            .draw_series(
                values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Circle::new((i, *v), 4, colour.filled())),
            )
            .map_err(|e| err(name, e))?;
    }
    Ok(())
}

/// Horizontal bars, one per labelled value (e.g. agencies' on-time rates), highest first.
pub fn bars(
    name: &str,
    title: &str,
    items: &[(String, f64)],
    max: f64,
) -> Result<Vec<u8>, ChartError> {
    register_font();
    let rows = items.len().max(1) as u32;
    let size = (720u32, 70 + 26 * rows);
    let mut buf = vec![255u8; (size.0 * size.1 * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, size).into_drawing_area();
        root.fill(&WHITE).map_err(|e| err(name, e))?;
        let n = items.len().max(1);
        let mut chart = ChartBuilder::on(&root)
            .caption(title, (FAMILY, 18))
            .margin(10)
            .x_label_area_size(28)
            .y_label_area_size(300)
            .build_cartesian_2d(0f64..max, (0usize..n).into_segmented())
            .map_err(|e| err(name, e))?;
        chart
            .configure_mesh()
            .y_labels(n)
            .y_label_formatter(&|s| match s {
                SegmentValue::CenterOf(i) => n
                    .checked_sub(1 + *i)
                    .and_then(|k| items.get(k))
                    .map(|x| x.0.chars().take(42).collect())
                    .unwrap_or_default(),
                _ => String::new(),
            })
            .x_label_formatter(&|v| super::format::decimal(*v, 0))
            .label_style((FAMILY, 12))
            .disable_y_mesh()
            .draw()
            .map_err(|e| err(name, e))?;
        let colour = RGBColor(31, 119, 180);
        chart
            .draw_series(items.iter().enumerate().map(|(k, (_, v))| {
                let i = n - 1 - k;
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(i)),
                        (*v, SegmentValue::Exact(i + 1)),
                    ],
                    colour.filled(),
                );
                // A gap between bars, so equal values read as separate bars.
                bar.set_margin(3, 3, 0, 0);
                bar
            }))
            .map_err(|e| err(name, e))?;
        root.present().map_err(|e| err(name, e))?;
    }
    png(name, &buf, size)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn draws_vietnamese_labels_into_a_png() {
        let periods: Vec<String> = (1..=12).map(|m| format!("2026-{m:02}")).collect();
        let a = trend(
            "t",
            "Hồ sơ tiếp nhận và giải quyết theo tháng",
            &periods,
            &[
                ("Tiếp nhận", (1..=12).map(|x| x as f64 * 100.0).collect()),
                ("Đã giải quyết", (1..=12).map(|x| x as f64 * 90.0).collect()),
            ],
        )
        .unwrap();
        assert_eq!(&a[1..4], b"PNG");
        // The same chart without its Vietnamese title differs: the glyphs were drawn.
        let b = trend("t", "", &periods, &[("Tiếp nhận", vec![1.0; 12])]).unwrap();
        assert_ne!(a, b);
        let bars = bars(
            "b",
            "Tỷ lệ giải quyết đúng hạn (%)",
            &[
                ("Sở Tư pháp".into(), 98.5),
                ("UBND xã Kỳ Đông".into(), 91.0),
            ],
            100.0,
        )
        .unwrap();
        assert_eq!(&bars[1..4], b"PNG");
    }
}
