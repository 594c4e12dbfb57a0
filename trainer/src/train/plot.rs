//! `codetr-train plot RUN_DIR`: a PNG of a run's loss curves (total and the main terms,
//! smoothed, log scale) and its val AP / AP50 (and the held-out test split's, when the run
//! evaluates one), from `log.jsonl` and `eval.jsonl`.

use std::path::Path;

use plotters::prelude::*;

use crate::error::{Error, Result};

/// Fonts tried for the labels (ab_glyph needs a TTF file; no system font lookup).
const FONTS: [&str; 3] = [
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu/DejaVuSans.ttf",
];

/// Terms drawn when present (the total first).
const TERMS: [&str; 10] = [
    "loss",
    "loss_cls",
    "loss_bbox",
    "loss_iou",
    "dn_loss_cls",
    "enc_loss_cls",
    "atss.loss_cls",
    "pos0.loss_cls",
    "rpn.loss_cls",
    "pos1.loss_cls",
];

fn read_jsonl(path: &Path) -> Result<Vec<serde_json::Value>> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
        Err(e) => return Err(Error::io(path, e)),
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| Error::InvalidArgument {
                what: "run log",
                message: format!("{}: line {}: {e}", path.display(), i + 1),
            })
        })
        .collect()
}

/// Exponential moving average (the official loggers' smoothing), α = 0.9.
fn smooth(v: &[(f64, f64)]) -> Vec<(f64, f64)> {
    let mut acc = None;
    v.iter()
        .map(|&(x, y)| {
            let s = match acc {
                None => y,
                Some(a) => 0.9 * a + 0.1 * y,
            };
            acc = Some(s);
            (x, s)
        })
        .collect()
}

fn series(log: &[serde_json::Value], key: &str) -> Vec<(f64, f64)> {
    log.iter()
        .filter_map(|l| {
            let x = l.get("step")?.as_f64()?;
            let y = l.get(key)?.as_f64()?;
            (y.is_finite() && y > 0.0).then_some((x, y))
        })
        .collect()
}

fn draw_err<E: std::fmt::Debug>(e: E) -> Error {
    Error::InvalidArgument {
        what: "plot",
        message: format!("{e:?}"),
    }
}

/// Writes the PNG; returns whether text labels could be drawn (a font was found).
pub fn plot_run(run: &Path, out: &Path) -> Result<bool> {
    let log = read_jsonl(&run.join("log.jsonl"))?;
    if log.is_empty() {
        return Err(Error::InvalidArgument {
            what: "plot",
            message: format!(
                "{}: no log.jsonl entries (is this a run dir?)",
                run.display()
            ),
        });
    }
    let evals = read_jsonl(&run.join("eval.jsonl"))?;
    let font = FONTS
        .iter()
        .find_map(|p| std::fs::read(p).ok())
        .and_then(|bytes| {
            let leaked: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            plotters::style::register_font("sans-serif", FontStyle::Normal, leaked).ok()
        })
        .is_some();
    let (w, h) = (1200u32, 900u32);
    let mut buf = vec![0u8; (w * h * 3) as usize];
    {
        let root = BitMapBackend::with_buffer(&mut buf, (w, h)).into_drawing_area();
        root.fill(&WHITE).map_err(draw_err)?;
        let (top, bottom) = root.split_vertically(560);
        let curves: Vec<(&str, Vec<(f64, f64)>)> = TERMS
            .iter()
            .map(|k| (*k, smooth(&series(&log, k))))
            .filter(|(_, s)| !s.is_empty())
            .collect();
        let max_step = log
            .iter()
            .filter_map(|l| l.get("step").and_then(|s| s.as_f64()))
            .fold(1.0f64, f64::max);
        let (lo, hi) = curves
            .iter()
            .flat_map(|(_, s)| s.iter().map(|p| p.1))
            .fold((f64::INFINITY, 0.0f64), |(a, b), y| (a.min(y), b.max(y)));
        let (lo, hi) = if lo.is_finite() && hi > 0.0 {
            (lo * 0.8, hi * 1.25)
        } else {
            (1e-3, 1.0)
        };
        let mut chart = ChartBuilder::on(&top);
        chart.margin(12);
        if font {
            chart
                .caption("training losses (EMA 0.9)", ("sans-serif", 22))
                .x_label_area_size(32)
                .y_label_area_size(56);
        }
        let mut chart = chart
            .build_cartesian_2d(0f64..max_step, (lo..hi).log_scale())
            .map_err(draw_err)?;
        if font {
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc("loss")
                .draw()
                .map_err(draw_err)?;
        }
        for (i, (name, s)) in curves.iter().enumerate() {
            let color = Palette99::pick(i).to_rgba();
            let width = if i == 0 { 3 } else { 1 };
            let drawn = chart
                .draw_series(LineSeries::new(s.clone(), color.stroke_width(width)))
                .map_err(draw_err)?;
            if font {
                drawn
                    .label(*name)
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            }
        }
        if font {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(draw_err)?;
        }

        // val (which picks best/) and, when the run has one, the held-out test split
        let ap = |split: &str, key: &str| -> Vec<(f64, f64)> {
            evals
                .iter()
                .filter_map(|e| {
                    let m = if split == "test" { e.get("test")? } else { e };
                    Some((e.get("step")?.as_f64()?, m.get(key)?.as_f64()?))
                })
                .collect()
        };
        let mut chart = ChartBuilder::on(&bottom);
        chart.margin(12);
        if font {
            chart
                .caption("evaluation (COCO mAP)", ("sans-serif", 22))
                .x_label_area_size(32)
                .y_label_area_size(56);
        }
        let mut chart = chart
            .build_cartesian_2d(0f64..max_step, 0f64..1f64)
            .map_err(draw_err)?;
        if font {
            chart
                .configure_mesh()
                .x_desc("step")
                .y_desc("AP")
                .draw()
                .map_err(draw_err)?;
        }
        let series = [
            ("val", "AP"),
            ("val", "AP50"),
            ("test", "AP"),
            ("test", "AP50"),
        ];
        for (i, (split, key)) in series.into_iter().enumerate() {
            let pts = ap(split, key);
            if pts.is_empty() {
                continue;
            }
            let color = Palette99::pick(i + 1).to_rgba();
            chart
                .draw_series(pts.iter().map(|&p| Circle::new(p, 3, color.filled())))
                .map_err(draw_err)?;
            let drawn = chart
                .draw_series(LineSeries::new(pts.clone(), color.stroke_width(2)))
                .map_err(draw_err)?;
            if font {
                drawn
                    .label(format!("{split} {key}"))
                    .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 18, y)], color));
            }
        }
        if font {
            chart
                .configure_series_labels()
                .background_style(WHITE.mix(0.85))
                .border_style(BLACK)
                .label_font(("sans-serif", 14))
                .draw()
                .map_err(draw_err)?;
        }
        root.present().map_err(draw_err)?;
    }
    let img = image::RgbImage::from_raw(w, h, buf).ok_or_else(|| draw_err("buffer size"))?;
    let mut png = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .map_err(draw_err)?;
    codetr_data::fsutil::write_atomic(out, &png)?;
    Ok(font)
}
