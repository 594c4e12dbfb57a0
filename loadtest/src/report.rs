//! The terminal table, the JSON report and the throughput-vs-p99 plot.

use std::path::Path;

use plotters::prelude::*;

use crate::run::LevelResult;
use crate::{LoadError, Result};

/// A terminal table, one row per level and target, plus ratio rows when two targets ran.
pub fn table(results: &[LevelResult]) -> String {
    let mut s = format!(
        "{:<3} {:<10} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}  {:<18} {}\n",
        "tgt",
        "level",
        "ok",
        "req/s",
        "p50 ms",
        "p90 ms",
        "p99 ms",
        "max ms",
        "seconds",
        "server q/inf/batch",
        "errors"
    );
    for r in results {
        let server = r
            .server
            .as_ref()
            .map(|v| format!("{:.1}/{:.1}/{:.2}", v.queue_ms, v.infer_ms, v.mean_batch))
            .unwrap_or_else(|| "-".into());
        let errors = if r.errors.is_empty() {
            "-".to_owned()
        } else {
            r.errors
                .iter()
                .map(|(k, v)| format!("{k}:{v}"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let l = &r.latency_ms;
        s.push_str(&format!(
            "{:<3} {:<10} {:>8} {:>9.2} {:>9.1} {:>9.1} {:>9.1} {:>9.1} {:>9.1}  {:<18} {}\n",
            r.target,
            r.level.to_string(),
            r.ok,
            r.throughput,
            l.p50,
            l.p90,
            l.p99,
            l.max,
            r.seconds,
            server,
            errors
        ));
    }
    for (level, a, b) in pairs(results) {
        s.push_str(&format!(
            "a/b {:<10} throughput ×{:.2}  p50 ×{:.2}  p99 ×{:.2}\n",
            level,
            ratio(a.throughput, b.throughput),
            ratio(a.latency_ms.p50, b.latency_ms.p50),
            ratio(a.latency_ms.p99, b.latency_ms.p99)
        ));
    }
    s
}

fn ratio(a: f64, b: f64) -> f64 {
    if b > 0.0 { a / b } else { f64::NAN }
}

/// (level, target a's result, target b's result) for each level both ran.
pub fn pairs(results: &[LevelResult]) -> Vec<(String, &LevelResult, &LevelResult)> {
    results
        .iter()
        .filter(|r| r.target == "a")
        .filter_map(|a| {
            let key = a.level.to_string();
            results
                .iter()
                .find(|b| b.target == "b" && b.level.to_string() == key)
                .map(|b| (key, a, b))
        })
        .collect()
}

/// The JSON report: the run's settings and every level's result.
pub fn json(settings: &serde_json::Value, results: &[LevelResult]) -> serde_json::Value {
    let ratios: Vec<serde_json::Value> = pairs(results)
        .into_iter()
        .map(|(level, a, b)| {
            serde_json::json!({
                "level": level,
                "throughput": ratio(a.throughput, b.throughput),
                "p50": ratio(a.latency_ms.p50, b.latency_ms.p50),
                "p99": ratio(a.latency_ms.p99, b.latency_ms.p99),
            })
        })
        .collect();
    serde_json::json!({"settings": settings, "results": results, "ratios_a_over_b": ratios})
}

const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Throughput (x) against p99 latency (y), one line per target, points labelled by level.
/// Returns whether text could be drawn (a font was found).
pub fn plot(results: &[LevelResult], names: &[(&str, String)], out: &Path) -> Result<bool> {
    let e = |e: &dyn std::fmt::Debug| LoadError::Plot(format!("{e:?}"));
    let font = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .and_then(|bytes| {
            let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).ok()
        })
        .is_some();
    let (w, h) = (1000u32, 700u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(|x| e(&x))?;
        let max_x = results.iter().map(|r| r.throughput).fold(1.0f64, f64::max) * 1.15;
        let max_y = results
            .iter()
            .map(|r| r.latency_ms.p99)
            .fold(1.0f64, f64::max)
            * 1.15;
        let mut chart = ChartBuilder::on(&root);
        chart.margin(16);
        if font {
            chart
                .caption(
                    "throughput vs p99 latency per load level",
                    ("sans-serif", 22),
                )
                .x_label_area_size(40)
                .y_label_area_size(64);
        }
        let mut chart = chart
            .build_cartesian_2d(0f64..max_x, 0f64..max_y)
            .map_err(|x| e(&x))?;
        if font {
            chart
                .configure_mesh()
                .x_desc("throughput (req/s)")
                .y_desc("p99 latency (ms)")
                .draw()
                .map_err(|x| e(&x))?;
        }
        for (i, (tag, name)) in names.iter().enumerate() {
            let pts: Vec<(f64, f64, String)> = results
                .iter()
                .filter(|r| r.target == *tag && r.ok > 0)
                .map(|r| (r.throughput, r.latency_ms.p99, r.level.to_string()))
                .collect();
            let color = Palette99::pick(i).to_rgba();
            let line = chart
                .draw_series(LineSeries::new(
                    pts.iter().map(|p| (p.0, p.1)),
                    color.stroke_width(2),
                ))
                .map_err(|x| e(&x))?;
            if font {
                line.label(name.clone())
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            }
            chart
                .draw_series(
                    pts.iter()
                        .map(|p| Circle::new((p.0, p.1), 4, color.filled())),
                )
                .map_err(|x| e(&x))?;
            if font {
                chart
                    .draw_series(pts.iter().map(|p| {
                        Text::new(p.2.clone(), (p.0, p.1), ("sans-serif", 13).into_font())
                    }))
                    .map_err(|x| e(&x))?;
            }
        }
        if font {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(|x| e(&x))?;
        }
        root.present().map_err(|x| e(&x))?;
    }
    let img = image_png(&buf, w, h)?;
    crate::write_atomic(out, &img)?;
    Ok(font)
}

fn image_png(buf: &[u8], w: u32, h: u32) -> Result<Vec<u8>> {
    let img = image::RgbImage::from_raw(w, h, buf.to_vec())
        .ok_or_else(|| LoadError::Plot("buffer size".into()))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(|e| LoadError::Plot(e.to_string()))?;
    Ok(png)
}
