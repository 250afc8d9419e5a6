//! The HTML report of a run (`weft-sim run --html DIR`): `index.html` with the summary,
//! the checks and three SVG charts drawn with `plotters`, each also written beside it.
//!
//! The page is self-contained: the charts are inlined, nothing is fetched from elsewhere.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use plotters::coord::ranged1d::SegmentValue;
use plotters::prelude::*;

use crate::report::{FaultWindow, Report, StrategyReport};

/// The latency CDF chart's file name.
pub const LATENCY_CDF_SVG: &str = "latency-cdf.svg";
/// The delivered-fraction-over-time chart's file name.
pub const DELIVERED_FRACTION_SVG: &str = "delivered-fraction.svg";
/// The per-region lag chart's file name.
pub const REGION_LAG_SVG: &str = "region-lag.svg";
/// Every chart's file name, in page order.
pub const CHARTS: [&str; 3] = [LATENCY_CDF_SVG, DELIVERED_FRACTION_SVG, REGION_LAG_SVG];

const WIDTH: u32 = 900;
const HEIGHT: u32 = 480;

/// Why the HTML report could not be written.
#[derive(Debug, thiserror::Error)]
pub enum HtmlError {
    /// A file or the directory could not be created or written.
    #[error("writing {path}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause (in the error chain, not in this error's message).
        source: std::io::Error,
    },
    /// A chart could not be drawn.
    #[error("drawing {chart}: {message}")]
    Chart {
        /// The chart's file name.
        chart: &'static str,
        /// What plotters said.
        message: String,
    },
}

/// Writes `dir/index.html` and the SVG charts (creating `dir` if needed); returns the
/// index's path.
pub fn write(report: &Report, dir: &Path) -> Result<PathBuf, HtmlError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| HtmlError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let charts = [
        (
            LATENCY_CDF_SVG,
            latency_cdf(report)?,
            "Latency CDF per strategy: fraction of deliveries (events published outside fault \
             windows) at most x ms after publishing (log scale).",
        ),
        (
            DELIVERED_FRACTION_SVG,
            delivered_fraction(report)?,
            "Delivered / expected deliveries over simulated time per strategy; shaded bands are \
             fault windows (start to heal).",
        ),
        (
            REGION_LAG_SVG,
            region_lag(report)?,
            "Weft's delivery latency by destination region (all origins): p50 (solid) and p99 \
             (light).",
        ),
    ];
    for (name, svg, _) in &charts {
        let path = dir.join(name);
        std::fs::write(&path, svg).map_err(io(&path))?;
    }
    let index = dir.join("index.html");
    std::fs::write(&index, page(report, &charts)).map_err(io(&index))?;
    Ok(index)
}

fn page(report: &Report, charts: &[(&str, String, &str)]) -> String {
    let mut out = String::new();
    let title = format!("weft-sim: {} (seed {})", report.scenario, report.seed);
    let _ = write!(
        out,
        "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n\
         <title>{}</title>\n<style>\n\
         body {{ font-family: sans-serif; margin: 2em; max-width: 1000px; }}\n\
         pre {{ font-size: 12px; overflow-x: auto; background: #f6f6f6; padding: 1em; }}\n\
         .ok {{ color: #1a7f37; }} .fail {{ color: #cf222e; font-weight: bold; }}\n\
         figure {{ margin: 2em 0; }} figcaption {{ color: #444; }}\n\
         </style>\n</head>\n<body>\n",
        escape(&title)
    );
    let _ = writeln!(
        out,
        "<h1>{}</h1>\n<p>Seed {} | {} nodes | {} s simulated</p>",
        escape(&report.scenario),
        report.seed,
        report.nodes,
        report.duration_s
    );
    let _ = writeln!(
        out,
        "<h2>Summary</h2>\n<pre>{}</pre>",
        escape(&report.table())
    );
    let _ = writeln!(out, "<h2>Checks</h2>\n<ul>");
    for c in &report.checks {
        let (class, label) = if c.passed {
            ("ok", "ok")
        } else {
            ("fail", "FAIL")
        };
        let _ = writeln!(
            out,
            "<li><span class=\"{class}\">[{label}]</span> {}: {}</li>",
            escape(&c.name),
            escape(&c.detail)
        );
    }
    let _ = writeln!(out, "</ul>");
    if !report.faults.is_empty() {
        let _ = writeln!(out, "<h2>Faults</h2>\n<ul>");
        for (i, f) in report.faults.iter().enumerate() {
            let _ = writeln!(out, "<li>{}</li>", escape(&f.line(i)));
        }
        let _ = writeln!(out, "</ul>");
    }
    let _ = writeln!(out, "<h2>Charts</h2>");
    for (name, svg, caption) in charts {
        let _ = writeln!(
            out,
            "<figure>\n{}\n<figcaption>{} (<a href=\"{name}\">{name}</a>)</figcaption>\n</figure>",
            svg.trim(),
            escape(caption)
        );
    }
    let _ = writeln!(out, "</body>\n</html>");
    out
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            _ => out.push(c),
        }
    }
    out
}

/// A strategy's colour, stable across charts.
fn colour(i: usize) -> RGBColor {
    const COLOURS: [RGBColor; 4] = [
        RGBColor(31, 119, 180),
        RGBColor(214, 39, 40),
        RGBColor(44, 160, 44),
        RGBColor(148, 103, 189),
    ];
    COLOURS[i % COLOURS.len()]
}

fn chart_error<E: std::fmt::Debug>(chart: &'static str) -> impl Fn(E) -> HtmlError {
    move |e| HtmlError::Chart {
        chart,
        message: format!("{e:?}"),
    }
}

fn latency_cdf(report: &Report) -> Result<String, HtmlError> {
    let err = chart_error(LATENCY_CDF_SVG);
    let positive = || {
        report
            .strategies
            .iter()
            .flat_map(|s| s.latency_cdf_ms.iter().map(|p| p.0))
            .filter(|x| *x > 0.0)
    };
    let lo = positive().fold(f64::INFINITY, f64::min);
    let hi = positive().fold(0.0, f64::max);
    let (lo, hi) = if lo.is_finite() && hi > lo {
        (lo * 0.8, hi * 1.25)
    } else {
        (0.1, 1000.0)
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Delivery latency CDF", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d((lo..hi).log_scale(), 0.0..1.0)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc("latency (ms, log scale)")
            .y_desc("fraction of deliveries")
            .x_label_formatter(&|x| format_ms(*x))
            .draw()
            .map_err(&err)?;
        for (i, s) in report.strategies.iter().enumerate() {
            let c = colour(i);
            // A step function: each quantile holds until the next latency.
            let mut points = Vec::with_capacity(s.latency_cdf_ms.len() * 2 + 1);
            let mut prev_y = 0.0;
            for &(x, y) in &s.latency_cdf_ms {
                let x = x.max(lo);
                points.push((x, prev_y));
                points.push((x, y));
                prev_y = y;
            }
            chart
                .draw_series(LineSeries::new(points, c.stroke_width(2)))
                .map_err(&err)?
                .label(s.strategy.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

fn format_ms(x: f64) -> String {
    if x >= 10.0 {
        format!("{x:.0}")
    } else if x >= 1.0 {
        format!("{x:.1}")
    } else {
        format!("{x:.2}")
    }
}

fn delivered_fraction(report: &Report) -> Result<String, HtmlError> {
    let err = chart_error(DELIVERED_FRACTION_SVG);
    let end = report
        .strategies
        .iter()
        .flat_map(|s| s.delivered_fraction.iter().map(|p| p.0))
        .chain(report.faults.iter().map(|f| f.until_s))
        .fold(report.duration_s, f64::max)
        .max(1.0);
    // Delivered / expected can pass 1 while nodes are down (they are not expected then).
    let top = report
        .strategies
        .iter()
        .flat_map(|s| s.delivered_fraction.iter().map(|p| p.1))
        .fold(1.0, f64::max)
        + 0.08;
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, HEIGHT)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption("Delivered fraction over time", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(55)
            .build_cartesian_2d(0.0..end, 0.0..top)
            .map_err(&err)?;
        chart
            .configure_mesh()
            .x_desc("simulated time (s)")
            .y_desc("delivered / expected")
            .x_label_formatter(&|x| format!("{x:.0}"))
            .draw()
            .map_err(&err)?;
        let shade = RGBColor(255, 140, 0);
        let rows = label_rows(report, end);
        for (i, f) in report.faults.iter().enumerate() {
            chart
                .draw_series(std::iter::once(Rectangle::new(
                    [(f.at_s, 0.0), (f.until_s.max(f.at_s), top)],
                    shade.mix(0.18).filled(),
                )))
                .map_err(&err)?;
            chart
                .draw_series(std::iter::once(Text::new(
                    fault_label(i, f),
                    (f.at_s, top - 0.01 - LABEL_ROW * rows[i] as f64),
                    ("sans-serif", 12).into_font().color(&BLACK),
                )))
                .map_err(&err)?;
        }
        for (i, s) in report.strategies.iter().enumerate() {
            let c = colour(i);
            chart
                .draw_series(LineSeries::new(
                    s.delivered_fraction.iter().copied(),
                    c.stroke_width(2),
                ))
                .map_err(&err)?
                .label(s.strategy.clone())
                .legend(move |(x, y)| PathElement::new([(x, y), (x + 20, y)], c.stroke_width(2)));
        }
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::LowerRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}

/// Height of a row of fault labels on the delivered-fraction chart, in its y units.
const LABEL_ROW: f64 = 0.045;

/// Rows of fault labels before they wrap to the top.
const LABEL_ROWS_MAX: usize = 8;

/// A fault window's label on the chart: its number and kind (`F2 partition`); the page's
/// fault list gives the rest under the same number.
fn fault_label(index: usize, f: &FaultWindow) -> String {
    format!("{} {}", FaultWindow::label(index), f.fault)
}

/// The row of each fault's label (0 at the top): the first row whose labels and windows
/// end before this fault starts, so that overlapping faults' labels do not run together.
/// A label's width is estimated at 7 px a character over the plot's width of `end` s. At
/// most `LABEL_ROWS_MAX` rows (then they wrap to the top), so that the labels of a scenario
/// with many overlapping faults stay in the chart's top third.
fn label_rows(report: &Report, end: f64) -> Vec<usize> {
    const PLOT_PX: f64 = (WIDTH - 100) as f64;
    let s_per_px = end / PLOT_PX;
    let mut row_ends: Vec<f64> = Vec::new();
    let mut rows = vec![0; report.faults.len()];
    // By start time, whatever order the scenario lists its faults in.
    let mut order: Vec<usize> = (0..report.faults.len()).collect();
    order.sort_by(|&a, &b| report.faults[a].at_s.total_cmp(&report.faults[b].at_s));
    for i in order {
        let f = &report.faults[i];
        let label_end = f.at_s + (fault_label(i, f).len() as f64 * 7.0 + 6.0) * s_per_px;
        let taken_until = label_end.max(f.until_s);
        let row = match row_ends.iter().position(|&e| e <= f.at_s) {
            Some(r) => {
                row_ends[r] = taken_until;
                r
            }
            None => {
                row_ends.push(taken_until);
                row_ends.len() - 1
            }
        };
        rows[i] = row % LABEL_ROWS_MAX;
    }
    rows
}

fn region_lag(report: &Report) -> Result<String, HtmlError> {
    let err = chart_error(REGION_LAG_SVG);
    let weft: Option<&StrategyReport> = report
        .strategies
        .iter()
        .find(|s| s.strategy == "weft")
        .or(report.strategies.first());
    let rows: Vec<(String, f64, f64)> = weft
        .map(|s| {
            s.latency_by_destination
                .iter()
                .map(|r| (r.region.clone(), r.latency_ms.p50, r.latency_ms.p99))
                .collect()
        })
        .unwrap_or_default();
    // Integer ranges are inclusive in plotters: segments 0..=n-1, one per row, the first
    // row on top.
    let n = rows.len().max(1) as i32;
    let segment = |i: usize| n - 1 - i as i32;
    let hi = rows.iter().map(|r| r.2).fold(0.0, f64::max).max(1.0) * 1.25;
    let height = (120 + 34 * rows.len() as u32).max(220);
    let label_width = rows
        .iter()
        .map(|r| r.0.len() as u32 * 7 + 10)
        .max()
        .unwrap_or(60)
        .max(60);
    let p50_colour = colour(0);
    let p99_colour = colour(0).mix(0.35);
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, (WIDTH, height)).into_drawing_area();
        root.fill(&WHITE).map_err(&err)?;
        let mut chart = ChartBuilder::on(&root)
            .caption(
                format!(
                    "{}: latency by destination region",
                    weft.map_or("weft", |s| s.strategy.as_str())
                ),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(45)
            .y_label_area_size(label_width)
            .build_cartesian_2d(0.0..hi, (0..n - 1).into_segmented())
            .map_err(&err)?;
        let names: Vec<String> = rows.iter().map(|r| r.0.clone()).collect();
        let label = move |v: &SegmentValue<i32>| match v {
            SegmentValue::CenterOf(i) => usize::try_from(n - 1 - *i)
                .ok()
                .and_then(|i| names.get(i).cloned())
                .unwrap_or_default(),
            _ => String::new(),
        };
        chart
            .configure_mesh()
            .disable_y_mesh()
            .y_labels(rows.len().max(1))
            .y_label_formatter(&label)
            .x_desc("latency (ms)")
            .draw()
            .map_err(&err)?;
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(segment(i))),
                        (r.2, SegmentValue::Exact(segment(i) + 1)),
                    ],
                    p99_colour.filled(),
                );
                bar.set_margin(5, 5, 0, 0);
                bar
            }))
            .map_err(&err)?
            .label("p99")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], p99_colour.filled())
            });
        chart
            .draw_series(rows.iter().enumerate().map(|(i, r)| {
                let mut bar = Rectangle::new(
                    [
                        (0.0, SegmentValue::Exact(segment(i))),
                        (r.1, SegmentValue::Exact(segment(i) + 1)),
                    ],
                    p50_colour.filled(),
                );
                bar.set_margin(11, 11, 0, 0);
                bar
            }))
            .map_err(&err)?
            .label("p50")
            .legend(move |(x, y)| {
                Rectangle::new([(x, y - 5), (x + 20, y + 5)], p50_colour.filled())
            });
        chart
            .configure_series_labels()
            .position(SeriesLabelPosition::UpperRight)
            .background_style(WHITE.mix(0.85))
            .border_style(BLACK)
            .draw()
            .map_err(&err)?;
        root.present().map_err(&err)?;
    }
    Ok(svg)
}
