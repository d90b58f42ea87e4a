//! `firmware-sim plot`: draws the PNG charts a benchmark results file
//! describes (`benches/compare.py` writes them under `"plots"`).
//!
//! The results file says what each chart shows (series, axes, scales), so
//! this module knows nothing about the benchmark: a new chart is a change to
//! the script alone. Log scales are drawn as log10 of the values on linear
//! axes, with the ticks labelled in the values themselves; that keeps one
//! coordinate type for every chart.

use std::path::{Path, PathBuf};

use plotters::prelude::*;
use plotters::style::FontStyle;
use serde::Deserialize;

/// What the results file holds that matters here; the rest is ignored.
#[derive(Debug, Deserialize)]
struct Results {
    #[serde(default)]
    plots: Vec<Chart>,
}

#[derive(Debug, Deserialize)]
struct Chart {
    /// File name inside the output directory, ending in `.png`.
    file: String,
    title: String,
    x_label: String,
    y_label: String,
    #[serde(default)]
    x_log: bool,
    #[serde(default)]
    y_log: bool,
    /// A bar chart: one group per category, a point's x is the category's
    /// index. Empty for a line chart.
    #[serde(default)]
    categories: Vec<String>,
    series: Vec<Series>,
}

#[derive(Debug, Deserialize)]
struct Series {
    name: String,
    /// `[x, y]`; points with a missing, zero or negative value on a log
    /// axis are left out.
    points: Vec<(Option<f64>, Option<f64>)>,
}

/// Debian's `fonts-dejavu-core`; any TrueType font will do (`--font`).
pub const DEFAULT_FONT: &str = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf";

const FONT: &str = "sans-serif";
const SIZE: (u32, u32) = (1000, 600);

/// Draws every chart of `results` into `out_dir`; returns the files written.
pub fn run(results: &Path, out_dir: &Path, font: &Path) -> Result<Vec<PathBuf>, String> {
    let text = std::fs::read_to_string(results)
        .map_err(|e| format!("cannot read {}: {e}", results.display()))?;
    let parsed: Results = serde_json::from_str(&text)
        .map_err(|e| format!("{} is not a results file: {e}", results.display()))?;
    if parsed.plots.is_empty() {
        return Err(format!("{} describes no plots", results.display()));
    }
    load_font(font)?;
    std::fs::create_dir_all(out_dir)
        .map_err(|e| format!("cannot create {}: {e}", out_dir.display()))?;
    let mut written = Vec::new();
    for chart in &parsed.plots {
        let name = Path::new(&chart.file);
        if name.components().count() != 1 || name.extension().is_none_or(|e| e != "png") {
            return Err(format!(
                "plot file {:?} must be a bare name ending in .png",
                chart.file
            ));
        }
        let path = out_dir.join(name);
        draw(chart, &path).map_err(|e| format!("cannot draw {}: {e}", path.display()))?;
        written.push(path);
    }
    Ok(written)
}

fn load_font(path: &Path) -> Result<(), String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "cannot read the font {}: {e} (install fonts-dejavu-core or pass --font)",
            path.display()
        )
    })?;
    // plotters keeps fonts for the life of the process.
    let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
    plotters::style::register_font(FONT, FontStyle::Normal, bytes)
        .map_err(|_| format!("{} is not a TrueType/OpenType font", path.display()))
}

/// A value on an axis: log10 on a log axis, `None` where it cannot be drawn.
fn axis_value(v: Option<f64>, log: bool) -> Option<f64> {
    let v = v.filter(|v| v.is_finite())?;
    if log {
        (v > 0.0).then(|| v.log10())
    } else {
        Some(v)
    }
}

/// A tick label in the value's own units, short: 1.5k, 20M, 0.25. On a log
/// axis the ticks fall at round log values (10^1.6 = 39.8), so the label is
/// the value to two significant digits (40): at most about 2 % off.
fn tick_label(v: f64, log: bool) -> String {
    let v = if log { two_digits(10f64.powf(v)) } else { v };
    let a = v.abs();
    let (scaled, suffix) = if a >= 1e9 {
        (v / 1e9, "G")
    } else if a >= 1e6 {
        (v / 1e6, "M")
    } else if a >= 1e3 {
        (v / 1e3, "k")
    } else {
        (v, "")
    };
    let s = if scaled.abs() >= 100.0 || scaled == scaled.round() {
        format!("{scaled:.0}")
    } else if scaled.abs() >= 10.0 {
        format!("{scaled:.1}")
    } else {
        format!("{scaled:.2}")
    };
    let s = if s.contains('.') {
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    } else {
        s
    };
    format!("{s}{suffix}")
}

fn two_digits(v: f64) -> f64 {
    if v <= 0.0 || !v.is_finite() {
        return v;
    }
    let scale = 10f64.powi(v.log10().floor() as i32 - 1);
    (v / scale).round() * scale
}

/// The drawable points of each series.
fn points(chart: &Chart, bars: bool) -> Vec<Vec<(f64, f64)>> {
    chart
        .series
        .iter()
        .map(|s| {
            s.points
                .iter()
                .filter_map(|&(x, y)| {
                    let x = if bars { x } else { axis_value(x, chart.x_log) };
                    Some((x?, axis_value(y, chart.y_log && !bars)?))
                })
                .collect()
        })
        .collect()
}

/// Range with a margin; a single value gets a range around it.
fn span(values: impl Iterator<Item = f64>, from_zero: bool) -> (f64, f64) {
    let (mut lo, mut hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| {
        (lo.min(v), hi.max(v))
    });
    if !lo.is_finite() {
        return (0.0, 1.0);
    }
    if from_zero {
        lo = lo.min(0.0);
    }
    if hi - lo < 1e-9 {
        hi = lo + 1.0;
        lo -= if from_zero { 0.0 } else { 1.0 };
    }
    let pad = (hi - lo) * 0.05;
    (
        if from_zero && lo >= 0.0 {
            0.0
        } else {
            lo - pad
        },
        hi + pad,
    )
}

fn draw(chart: &Chart, path: &Path) -> Result<(), Box<dyn std::error::Error>> {
    let bars = !chart.categories.is_empty();
    let pts = points(chart, bars);
    let (x0, x1) = if bars {
        (-0.5, chart.categories.len() as f64 - 0.5)
    } else {
        span(pts.iter().flatten().map(|p| p.0), false)
    };
    let (y0, y1) = span(pts.iter().flatten().map(|p| p.1), bars || !chart.y_log);

    let root = BitMapBackend::new(path, SIZE).into_drawing_area();
    root.fill(&WHITE)?;
    let mut ctx = ChartBuilder::on(&root)
        .caption(&chart.title, (FONT, 24))
        .margin(15)
        .x_label_area_size(50)
        .y_label_area_size(80)
        .build_cartesian_2d(x0..x1, y0..y1)?;
    let categories = &chart.categories;
    let x_fmt = |v: &f64| {
        if bars {
            let i = v.round();
            if (v - i).abs() < 1e-6 && i >= 0.0 && (i as usize) < categories.len() {
                categories[i as usize].clone()
            } else {
                String::new()
            }
        } else {
            tick_label(*v, chart.x_log)
        }
    };
    let y_fmt = |v: &f64| tick_label(*v, chart.y_log && !bars);
    let mut mesh = ctx.configure_mesh();
    mesh.x_desc(chart.x_label.as_str())
        .y_desc(chart.y_label.as_str())
        .label_style((FONT, 15))
        .axis_desc_style((FONT, 17))
        .x_label_formatter(&x_fmt)
        .y_label_formatter(&y_fmt);
    if bars {
        mesh.x_labels(categories.len() + 1).disable_x_mesh();
    }
    mesh.draw()?;

    let n = chart.series.len().max(1) as f64;
    for (i, (series, points)) in chart.series.iter().zip(&pts).enumerate() {
        let color = Palette99::pick(i).to_rgba();
        if bars {
            let width = 0.8 / n;
            let left = -0.4 + width * i as f64;
            ctx.draw_series(points.iter().map(|&(x, y)| {
                Rectangle::new(
                    [(x + left, y0.max(0.0)), (x + left + width * 0.9, y)],
                    color.filled(),
                )
            }))?
            .label(series.name.as_str())
            .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 12, y + 5)], color.filled()));
        } else {
            ctx.draw_series(LineSeries::new(
                points.iter().copied(),
                color.stroke_width(2),
            ))?
            .label(series.name.as_str())
            .legend(move |(x, y)| PathElement::new([(x, y), (x + 18, y)], color.stroke_width(2)));
            ctx.draw_series(points.iter().map(|&p| Circle::new(p, 4, color.filled())))?;
        }
    }
    ctx.configure_series_labels()
        .label_font((FONT, 15))
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .position(SeriesLabelPosition::UpperLeft)
        .draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tick_labels_are_short_and_in_the_values_units() {
        assert_eq!(tick_label(1500.0, false), "1.5k");
        assert_eq!(tick_label(3.0, true), "1k");
        assert_eq!(tick_label(20_000_000.0, false), "20M");
        assert_eq!(tick_label(0.25, false), "0.25");
        assert_eq!(tick_label(120.0, false), "120");
        assert_eq!(tick_label(1.6, true), "40");
        assert_eq!(tick_label(3.2, true), "1.6k");
    }

    #[test]
    fn log_axes_drop_what_they_cannot_draw() {
        assert_eq!(axis_value(Some(100.0), true), Some(2.0));
        assert_eq!(axis_value(Some(0.0), true), None);
        assert_eq!(axis_value(None, false), None);
        assert_eq!(axis_value(Some(f64::NAN), false), None);
        assert_eq!(axis_value(Some(0.0), false), Some(0.0));
    }

    #[test]
    fn draws_a_line_and_a_bar_chart() {
        let font = Path::new(DEFAULT_FONT);
        if !font.exists() {
            eprintln!("skipped: no {DEFAULT_FONT}");
            return;
        }
        let dir = std::env::temp_dir().join(format!("fwsim-plot-{}", std::process::id()));
        let results = dir.join("r.json");
        std::fs::create_dir_all(&dir).expect("dir");
        let spec = serde_json::json!({"plots": [
            {"file": "line.png", "title": "t", "x_label": "x", "y_label": "y",
             "x_log": true, "y_log": true,
             "series": [{"name": "a", "points": [[10, 1.5], [100, 3.0], [1000, null]]}]},
            {"file": "bars.png", "title": "t", "x_label": "x", "y_label": "y",
             "categories": ["one", "two"],
             "series": [{"name": "a", "points": [[0, 1.0], [1, 2.0]]},
                        {"name": "b", "points": [[0, 3.0]]}]}
        ]});
        std::fs::write(&results, spec.to_string()).expect("write");
        let out = dir.join("png");
        let files = run(&results, &out, font).expect("draws");
        assert_eq!(files.len(), 2);
        for f in files {
            let head = std::fs::read(&f).expect("png written");
            assert_eq!(&head[..4], b"\x89PNG", "{}", f.display());
        }
        std::fs::write(&results, r#"{"plots":[{"file":"../x.png","title":"t","x_label":"x","y_label":"y","series":[]}]}"#)
            .expect("write");
        assert!(run(&results, &out, font).is_err());
        let _ = std::fs::remove_dir_all(dir);
    }
}
