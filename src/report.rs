//! Evaluation reports for people and machines: the table `hashsrv evaluate` prints, and the
//! report folder (`metrics.json`, the precision-recall curve by Hamming radius and precision@k as
//! SVG plots). The numbers themselves come from [`hashsrv_index::metrics`]; this module only shows
//! them.

use std::fmt::Write as _;
use std::path::Path;

use hashsrv_index::metrics::EvalReport;
use plotters::prelude::*;

/// Errors from writing a report folder.
#[derive(Debug, thiserror::Error)]
pub enum ReportError {
    #[error("cannot write the report into {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("cannot draw {path}: {message}")]
    Plot { path: String, message: String },
}

/// The metrics table, one number per line with its tie mode or convention beside it.
pub fn table(title: &str, report: &EvalReport) -> String {
    let mut out = String::new();
    let fmt = |x: Option<f64>| x.map_or_else(|| "n/a".to_owned(), |v| format!("{v:.4}"));
    let _ = writeln!(out, "{title}");
    let _ = writeln!(
        out,
        "  {} bits, database {} items, {} queries ({} evaluated, {} excluded: no relevant item in the database), relevant = {}",
        report.bits,
        report.database_size,
        report.queries,
        report.evaluated_queries,
        report.excluded_queries,
        report.relevance
    );
    for entry in &report.map {
        let _ = writeln!(out, "  mAP@all            {:>8}   ties: {}", fmt(entry.map), entry.ties);
    }
    for entry in &report.map_at_k {
        let k = entry.k;
        let _ =
            writeln!(out, "  mAP@{k:<14} {:>8}   denominator min(relevant, k), ties: {}", fmt(entry.ir), entry.ties);
        let _ = writeln!(
            out,
            "  mAP@{k:<14} {:>8}   denominator relevant found in top k (DeepHash code), ties: {}",
            fmt(entry.found_in_top_k),
            entry.ties
        );
    }
    for entry in &report.precision_at_k {
        let _ = writeln!(out, "  precision@{:<8} {:>8}   ties: {}", entry.k, fmt(entry.precision), entry.ties);
    }
    let r = &report.radius;
    let _ = writeln!(
        out,
        "  precision@r<={:<5} {:>8}   recall {}, {} queries with an empty ball (counted as precision 0)",
        r.radius,
        fmt(r.precision),
        fmt(r.recall),
        r.empty_ball_queries
    );
    out
}

/// The report as JSON with the fields of `extra` (model, timing, method) added at the top level.
pub fn to_json(report: &EvalReport, extra: &serde_json::Value) -> serde_json::Value {
    let mut json = serde_json::to_value(report).expect("EvalReport serialises");
    if let (Some(map), Some(extra)) = (json.as_object_mut(), extra.as_object()) {
        map.extend(extra.clone());
    }
    json
}

/// Prints the report on stdout: the table under `title`, or JSON (with `extra`) when `json`.
pub fn print(title: &str, report: &EvalReport, extra: &serde_json::Value, json: bool) {
    if json {
        println!("{}", serde_json::to_string_pretty(&to_json(report, extra)).expect("JSON value serialises"));
    } else {
        print!("{}", table(title, report));
    }
}

/// Every plot [`write`] may draw, by file name.
pub const PLOTS: [&str; 2] = ["pr_curve.svg", "precision_at_k.svg"];

/// Writes `metrics.json` (the report plus `extra`, e.g. model and timing), `pr_curve.svg` and
/// `precision_at_k.svg` into `dir`, creating it. Returns the plots drawn (of [`PLOTS`]; a plot
/// without points is left out).
pub fn write(dir: &Path, report: &EvalReport, extra: &serde_json::Value) -> Result<Vec<&'static str>, ReportError> {
    let io = |path: &Path| {
        let path = path.display().to_string();
        move |source| ReportError::Io { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let metrics = dir.join("metrics.json");
    let text = serde_json::to_string_pretty(&to_json(report, extra)).expect("JSON value serialises");
    std::fs::write(&metrics, text + "\n").map_err(io(&metrics))?;

    let [pr_curve, precision_at_k] = PLOTS;
    let mut drawn = Vec::new();
    let curve: Vec<(f64, f64)> = report.pr_curve.iter().filter_map(|e| Some((e.recall?, e.precision?))).collect();
    if !curve.is_empty() {
        line_plot(&dir.join(pr_curve), "Precision-recall by Hamming radius", "recall", "precision", &curve)?;
        drawn.push(pr_curve);
    }
    let at_k: Vec<(f64, f64)> = report.precision_at_k.iter().filter_map(|e| Some((e.k as f64, e.precision?))).collect();
    if !at_k.is_empty() {
        line_plot(&dir.join(precision_at_k), "Precision@k", "k", "precision", &at_k)?;
        drawn.push(precision_at_k);
    }
    Ok(drawn)
}

fn line_plot(
    path: &Path,
    caption: &str,
    x_label: &str,
    y_label: &str,
    points: &[(f64, f64)],
) -> Result<(), ReportError> {
    let err =
        |e: &dyn std::fmt::Display| ReportError::Plot { path: path.display().to_string(), message: e.to_string() };
    let x_max = points.iter().map(|p| p.0).fold(0.0, f64::max).max(1e-9);
    let root = SVGBackend::new(path, (640, 480)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| err(&e))?;
    let mut chart = ChartBuilder::on(&root)
        .caption(caption, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(50)
        .build_cartesian_2d(0.0..x_max * 1.02, 0.0..1.02f64)
        .map_err(|e| err(&e))?;
    chart.configure_mesh().x_desc(x_label).y_desc(y_label).draw().map_err(|e| err(&e))?;
    chart.draw_series(LineSeries::new(points.iter().copied(), &BLUE)).map_err(|e| err(&e))?;
    chart.draw_series(points.iter().map(|&p| Circle::new(p, 3, BLUE.filled()))).map_err(|e| err(&e))?;
    root.present().map_err(|e| err(&e))?;
    Ok(())
}
