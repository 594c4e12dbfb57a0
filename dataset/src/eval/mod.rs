//! COCO bbox evaluation that reproduces pycocotools' `COCOeval(iouType='bbox')`:
//! same matching, same accumulation, same 12 summary numbers.
//!
//! Differences from pycocotools, all on inputs pycocotools rejects or crashes on:
//! * an empty detection list evaluates (AP 0 where there is ground truth) instead of failing;
//! * a gt annotation without `area` uses `w*h` instead of raising `KeyError`;
//! * malformed boxes, scores or ids are reported as errors naming the file and ids.
//!
//! Like pycocotools, detections of categories absent from the ground truth are dropped, and
//! detections on images absent from it are an error.

mod engine;

use std::collections::HashMap;
use std::fmt;
use std::path::Path;

use serde::{Deserialize, Serialize};

use crate::coco::CocoFile;
use crate::error::{Error, Result};

use engine::{CategoryMatches, Dt, Gt, Scratch};
pub use engine::{Params, bbox_iou, linspace};

/// One detection in the COCO results format. Extra fields in the json are ignored.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Detection {
    pub image_id: u64,
    pub category_id: u64,
    /// `[x, y, w, h]` in pixels.
    pub bbox: [f64; 4],
    pub score: f64,
}

/// The 12 standard COCO bbox numbers (`COCOeval.stats`); -1 where nothing could be measured.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct EvalSummary {
    #[serde(rename = "AP")]
    pub ap: f64,
    #[serde(rename = "AP50")]
    pub ap50: f64,
    #[serde(rename = "AP75")]
    pub ap75: f64,
    #[serde(rename = "APs")]
    pub ap_small: f64,
    #[serde(rename = "APm")]
    pub ap_medium: f64,
    #[serde(rename = "APl")]
    pub ap_large: f64,
    #[serde(rename = "AR1")]
    pub ar1: f64,
    #[serde(rename = "AR10")]
    pub ar10: f64,
    #[serde(rename = "AR100")]
    pub ar100: f64,
    #[serde(rename = "ARs")]
    pub ar_small: f64,
    #[serde(rename = "ARm")]
    pub ar_medium: f64,
    #[serde(rename = "ARl")]
    pub ar_large: f64,
}

/// The JSON keys of [`EvalSummary`], in `stats` order.
pub const SUMMARY_KEYS: [&str; 12] = [
    "AP", "AP50", "AP75", "APs", "APm", "APl", "AR1", "AR10", "AR100", "ARs", "ARm", "ARl",
];

/// How each of the 12 numbers is taken: (is AP, IoU threshold or all, area label, maxDets).
const SUMMARY_SPEC: [(bool, Option<f64>, &str, usize); 12] = [
    (true, None, "all", 100),
    (true, Some(0.5), "all", 100),
    (true, Some(0.75), "all", 100),
    (true, None, "small", 100),
    (true, None, "medium", 100),
    (true, None, "large", 100),
    (false, None, "all", 1),
    (false, None, "all", 10),
    (false, None, "all", 100),
    (false, None, "small", 100),
    (false, None, "medium", 100),
    (false, None, "large", 100),
];

impl EvalSummary {
    /// The numbers in `COCOeval.stats` order.
    pub fn to_array(&self) -> [f64; 12] {
        [
            self.ap,
            self.ap50,
            self.ap75,
            self.ap_small,
            self.ap_medium,
            self.ap_large,
            self.ar1,
            self.ar10,
            self.ar100,
            self.ar_small,
            self.ar_medium,
            self.ar_large,
        ]
    }

    pub fn from_array(s: [f64; 12]) -> Self {
        Self {
            ap: s[0],
            ap50: s[1],
            ap75: s[2],
            ap_small: s[3],
            ap_medium: s[4],
            ap_large: s[5],
            ar1: s[6],
            ar10: s[7],
            ar100: s[8],
            ar_small: s[9],
            ar_medium: s[10],
            ar_large: s[11],
        }
    }
}

impl fmt::Display for EvalSummary {
    /// The 12 lines `COCOeval.summarize()` prints (no trailing newline).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, ((ap, thr, area, max_det), v)) in
            SUMMARY_SPEC.iter().zip(self.to_array()).enumerate()
        {
            let (title, kind) = if *ap {
                ("Average Precision", "(AP)")
            } else {
                ("Average Recall", "(AR)")
            };
            let iou = match thr {
                None => "0.50:0.95".to_string(),
                Some(t) => format!("{t:.2}"),
            };
            if i > 0 {
                writeln!(f)?;
            }
            write!(
                f,
                " {title:<18} {kind} @[ IoU={iou:<9} | area={area:>6} | maxDets={max_det:>3} ] = {}",
                format_3(v)
            )?;
        }
        Ok(())
    }
}

/// Python's `'{:0.3f}'.format(v)`: correctly rounded, ties to even on the exact binary value
/// (Rust's `{:.3}` does the same).
fn format_3(v: f64) -> String {
    format!("{v:.3}")
}

/// One image's top-k output (`labels` `[k]`, `scores` `[k]`, xyxy pixel `boxes` `[k·4]`) as COCO
/// results (xywh, the dataset's category ids); labels outside the categories are skipped.
pub fn coco_detections(
    image_id: u64,
    labels: &[i64],
    scores: &[f32],
    boxes: &[f32],
    categories: &[crate::coco::Category],
) -> Vec<Detection> {
    labels
        .iter()
        .zip(scores)
        .zip(boxes.chunks_exact(4))
        .filter_map(|((&l, &score), b)| {
            let cat = usize::try_from(l).ok().and_then(|l| categories.get(l))?;
            Some(Detection {
                image_id,
                category_id: cat.id,
                bbox: [
                    f64::from(b[0]),
                    f64::from(b[1]),
                    f64::from(b[2] - b[0]),
                    f64::from(b[3] - b[1]),
                ],
                score: f64::from(score),
            })
        })
        .collect()
}

/// Full evaluation output: the summary plus pycocotools' `eval['precision']` and
/// `eval['recall']` arrays (flattened, row-major) for per-class numbers.
#[derive(Debug, Clone)]
pub struct EvalResult {
    pub params: Params,
    /// Sorted gt image ids (`params.imgIds`).
    pub img_ids: Vec<u64>,
    /// Sorted gt category ids (`params.catIds`), the K axis.
    pub cat_ids: Vec<u64>,
    /// `[T, R, K, A, M]`; -1 where a category has no (non-ignored) gt in that area range.
    pub precision: Vec<f64>,
    /// `[T, K, A, M]`.
    pub recall: Vec<f64>,
    pub summary: EvalSummary,
}

impl EvalResult {
    fn dims(&self) -> (usize, usize, usize, usize, usize) {
        (
            self.params.iou_thrs.len(),
            self.params.rec_thrs.len(),
            self.cat_ids.len(),
            self.params.area_rngs.len(),
            self.params.max_dets.len(),
        )
    }

    /// `precision[t, r, k, a, m]`.
    pub fn precision_at(&self, t: usize, r: usize, k: usize, a: usize, m: usize) -> f64 {
        let (_, nr, nk, na, nm) = self.dims();
        self.precision[(((t * nr + r) * nk + k) * na + a) * nm + m]
    }

    /// `recall[t, k, a, m]`.
    pub fn recall_at(&self, t: usize, k: usize, a: usize, m: usize) -> f64 {
        let (_, _, nk, na, nm) = self.dims();
        self.recall[((t * nk + k) * na + a) * nm + m]
    }

    /// AP@[.50:.95] (area all, maxDets 100) of each category in `cat_ids` order; -1 for a
    /// category without gt.
    pub fn per_category_ap(&self) -> Vec<f64> {
        let (nt, nr, nk, _, nm) = self.dims();
        (0..nk)
            .map(|k| {
                let vals = (0..nt)
                    .flat_map(|t| (0..nr).map(move |r| (t, r)))
                    .map(|(t, r)| self.precision_at(t, r, k, 0, nm - 1));
                mean_valid(vals)
            })
            .collect()
    }
}

/// numpy's `np.mean(s[s > -1])`, or -1 when nothing is > -1.
fn mean_valid(vals: impl Iterator<Item = f64>) -> f64 {
    let v: Vec<f64> = vals.filter(|&x| x > -1.0).collect();
    if v.is_empty() {
        -1.0
    } else {
        pairwise_sum(&v) / v.len() as f64
    }
}

/// numpy's pairwise summation (8-way unrolled leaves of up to 128 elements).
fn pairwise_sum(a: &[f64]) -> f64 {
    let n = a.len();
    if n < 8 {
        a.iter().fold(0.0, |s, &x| s + x)
    } else if n <= 128 {
        let mut r = [0.0f64; 8];
        r.copy_from_slice(&a[..8]);
        let mut i = 8;
        while i + 8 <= n {
            for j in 0..8 {
                r[j] += a[i + j];
            }
            i += 8;
        }
        let mut res = ((r[0] + r[1]) + (r[2] + r[3])) + ((r[4] + r[5]) + (r[6] + r[7]));
        for &x in &a[i..] {
            res += x;
        }
        res
    } else {
        let mut n2 = n / 2;
        n2 -= n2 % 8;
        pairwise_sum(&a[..n2]) + pairwise_sum(&a[n2..])
    }
}

/// `COCOeval.summarize()` over `precision` / `recall`.
fn summarize(p: &Params, nk: usize, precision: &[f64], recall: &[f64]) -> EvalSummary {
    let (nt, nr, na, nm) = (
        p.iou_thrs.len(),
        p.rec_thrs.len(),
        p.area_rngs.len(),
        p.max_dets.len(),
    );
    let mut stats = [-1.0; 12];
    for (slot, &(ap, thr, area, max_det)) in stats.iter_mut().zip(SUMMARY_SPEC.iter()) {
        let ts: Vec<usize> = match thr {
            None => (0..nt).collect(),
            Some(x) => (0..nt).filter(|&t| p.iou_thrs[t] == x).collect(),
        };
        let (Some(a), Some(m)) = (
            p.area_labels.iter().position(|&l| l == area),
            p.max_dets.iter().position(|&d| d == max_det),
        ) else {
            continue;
        };
        *slot = if ap {
            mean_valid(ts.iter().flat_map(|&t| {
                (0..nr).flat_map(move |r| {
                    (0..nk).map(move |k| precision[(((t * nr + r) * nk + k) * na + a) * nm + m])
                })
            }))
        } else {
            mean_valid(
                ts.iter()
                    .flat_map(|&t| (0..nk).map(move |k| recall[((t * nk + k) * na + a) * nm + m])),
            )
        };
    }
    EvalSummary::from_array(stats)
}

/// Reads a COCO results file: a json list of `{image_id, category_id, bbox, score}`.
pub fn load_detections(path: &Path) -> Result<Vec<Detection>> {
    #[derive(Deserialize)]
    struct Raw {
        image_id: u64,
        category_id: u64,
        bbox: Vec<f64>,
        score: f64,
    }
    let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
    let raw: Vec<Raw> = serde_json::from_slice(&bytes).map_err(|source| Error::Json {
        path: path.to_path_buf(),
        source,
    })?;
    let origin = path.display().to_string();
    raw.into_iter()
        .enumerate()
        .map(|(index, r)| {
            let bad = |message: String| Error::Detection {
                origin: origin.clone(),
                index,
                message,
            };
            let bbox: [f64; 4] = r.bbox.as_slice().try_into().map_err(|_| {
                bad(format!(
                    "image id {}: `bbox` must have 4 numbers [x,y,w,h], got {}",
                    r.image_id,
                    r.bbox.len()
                ))
            })?;
            let d = Detection {
                image_id: r.image_id,
                category_id: r.category_id,
                bbox,
                score: r.score,
            };
            check_detection(&d).map_err(bad)?;
            Ok(d)
        })
        .collect()
}

fn check_detection(d: &Detection) -> std::result::Result<(), String> {
    if !d.bbox.iter().all(|v| v.is_finite()) {
        return Err(format!(
            "image id {}: `bbox` has a non-finite value: {:?}",
            d.image_id, d.bbox
        ));
    }
    if !d.score.is_finite() {
        return Err(format!(
            "image id {}: `score` must be finite, got {}",
            d.image_id, d.score
        ));
    }
    Ok(())
}

/// Evaluates `dts` against `gt` and returns the 12 COCO numbers. `gt_path` is only used in
/// error messages.
pub fn evaluate(gt: &CocoFile, gt_path: &Path, dts: &[Detection]) -> Result<EvalSummary> {
    Ok(evaluate_full(gt, gt_path, dts)?.summary)
}

/// [`evaluate`], also returning the precision/recall arrays.
pub fn evaluate_full(gt: &CocoFile, gt_path: &Path, dts: &[Detection]) -> Result<EvalResult> {
    evaluate_impl(gt, gt_path, dts, "detections")
}

/// Ground truth and detections bucketed by (category index, image index), each bucket in
/// file order — what `_prepare` builds in `_gts` / `_dts`.
struct Grouped {
    img_ids: Vec<u64>,
    cat_ids: Vec<u64>,
    /// (k, i, box), sorted by (k, i), stable.
    gts: Vec<(u32, u32, Gt)>,
    dts: Vec<(u32, u32, Dt)>,
}

fn group(gt: &CocoFile, gt_path: &Path, dts: &[Detection], origin: &str) -> Result<Grouped> {
    let index = gt.check(gt_path)?;
    let img_index: HashMap<u64, u32> = index
        .image_pos
        .iter()
        .map(|(&id, &i)| (id, i as u32))
        .collect();
    let cat_index: HashMap<u64, u32> = index
        .category_pos
        .iter()
        .map(|(&id, &k)| (id, k as u32))
        .collect();
    let mut gts: Vec<(u32, u32, Gt)> = index
        .annotations
        .iter()
        .map(|a| {
            (
                cat_index[&a.category_id],
                img_index[&a.image_id],
                Gt {
                    bbox: a.bbox,
                    area: a.area,
                    crowd: a.iscrowd,
                    id: a.id,
                },
            )
        })
        .collect();
    gts.sort_by_key(|&(k, i, _)| (k, i));
    let (img_ids, cat_ids) = (index.image_ids, index.category_ids);

    let mut dt_out = Vec::with_capacity(dts.len());
    for (index, d) in dts.iter().enumerate() {
        let Some(&i) = img_index.get(&d.image_id) else {
            return Err(Error::Detection {
                origin: origin.to_string(),
                index,
                message: format!(
                    "image id {} is not in the ground truth {}",
                    d.image_id,
                    gt_path.display()
                ),
            });
        };
        check_detection(d).map_err(|message| Error::Detection {
            origin: origin.to_string(),
            index,
            message,
        })?;
        // Categories absent from the gt are dropped, as pycocotools' getAnnIds(catIds=...) does.
        let Some(&k) = cat_index.get(&d.category_id) else {
            continue;
        };
        dt_out.push((
            k,
            i,
            Dt {
                bbox: d.bbox,
                area: d.bbox[2] * d.bbox[3],
                score: d.score,
            },
        ));
    }
    dt_out.sort_by_key(|&(k, i, _)| (k, i));
    Ok(Grouped {
        img_ids,
        cat_ids,
        gts,
        dts: dt_out,
    })
}

/// `evaluateImg` over every image of one category (its gts and dts, sorted by image index).
fn match_category(
    p: &Params,
    gts: &[(u32, u32, Gt)],
    dts: &[(u32, u32, Dt)],
    s: &mut Scratch,
    gbuf: &mut Vec<Gt>,
    dbuf: &mut Vec<Dt>,
) -> CategoryMatches {
    let mut cm = CategoryMatches {
        npig: vec![0; p.area_rngs.len()],
        any: !gts.is_empty() || !dts.is_empty(),
        ..Default::default()
    };
    let cap = dts.len();
    cm.score.reserve(cap);
    cm.rank.reserve(cap);
    let (mut gi, mut di) = (0, 0);
    while gi < gts.len() || di < dts.len() {
        let img = match (gts.get(gi), dts.get(di)) {
            (Some(g), Some(d)) => g.1.min(d.1),
            (Some(g), None) => g.1,
            (None, Some(d)) => d.1,
            (None, None) => break,
        };
        gbuf.clear();
        while gi < gts.len() && gts[gi].1 == img {
            gbuf.push(gts[gi].2);
            gi += 1;
        }
        dbuf.clear();
        while di < dts.len() && dts[di].1 == img {
            dbuf.push(dts[di].2);
            di += 1;
        }
        engine::eval_image(p, gbuf, dbuf, s, &mut cm);
    }
    cm
}

/// Start of each category's run in a (k, i)-sorted list: `out[k]..out[k + 1]`.
fn category_bounds<T>(v: &[(u32, u32, T)], nk: usize) -> Vec<usize> {
    (0..=nk)
        .map(|k| v.partition_point(|e| (e.0 as usize) < k))
        .collect()
}

fn evaluate_impl(
    gt: &CocoFile,
    gt_path: &Path,
    dts: &[Detection],
    origin: &str,
) -> Result<EvalResult> {
    let p = Params::default();
    let g = group(gt, gt_path, dts, origin)?;
    let nk = g.cat_ids.len();
    let (nt, nr, na, nm) = (
        p.iou_thrs.len(),
        p.rec_thrs.len(),
        p.area_rngs.len(),
        p.max_dets.len(),
    );
    let gb = category_bounds(&g.gts, nk);
    let db = category_bounds(&g.dts, nk);

    // Per category: precision [T, R, A, M] and recall [T, A, M].
    let per_cat = |k: usize, s: &mut Scratch, gbuf: &mut Vec<Gt>, dbuf: &mut Vec<Dt>| {
        let cm = match_category(
            &p,
            &g.gts[gb[k]..gb[k + 1]],
            &g.dts[db[k]..db[k + 1]],
            s,
            gbuf,
            dbuf,
        );
        let mut prec = vec![-1.0; nt * nr * na * nm];
        let mut rec = vec![-1.0; nt * na * nm];
        engine::accumulate_category(&p, &cm, &mut prec, &mut rec);
        (prec, rec)
    };

    let results: Vec<(Vec<f64>, Vec<f64>)> = run_categories(nk, g.dts.len(), per_cat);

    let mut precision = vec![-1.0; nt * nr * nk * na * nm];
    let mut recall = vec![-1.0; nt * nk * na * nm];
    for (k, (prec, rec)) in results.iter().enumerate() {
        for t in 0..nt {
            for r in 0..nr {
                let src = &prec[(t * nr + r) * na * nm..(t * nr + r + 1) * na * nm];
                let dst = (((t * nr + r) * nk + k) * na) * nm;
                precision[dst..dst + na * nm].copy_from_slice(src);
            }
            let src = &rec[t * na * nm..(t + 1) * na * nm];
            let dst = ((t * nk + k) * na) * nm;
            recall[dst..dst + na * nm].copy_from_slice(src);
        }
    }
    let summary = summarize(&p, nk, &precision, &recall);
    Ok(EvalResult {
        params: p,
        img_ids: g.img_ids,
        cat_ids: g.cat_ids,
        precision,
        recall,
        summary,
    })
}

/// Runs `f` for every category, on a few threads when there is enough work.
fn run_categories<R, F>(nk: usize, n_dets: usize, f: F) -> Vec<R>
where
    R: Send,
    F: Fn(usize, &mut Scratch, &mut Vec<Gt>, &mut Vec<Dt>) -> R + Sync,
{
    let threads = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .min(8)
        .min(nk);
    if threads <= 1 || n_dets < 20_000 {
        let (mut s, mut gb, mut db) = Default::default();
        return (0..nk).map(|k| f(k, &mut s, &mut gb, &mut db)).collect();
    }
    let next = std::sync::atomic::AtomicUsize::new(0);
    let mut out: Vec<Option<R>> = (0..nk).map(|_| None).collect();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|_| {
                scope.spawn(|| {
                    let (mut s, mut gb, mut db) = Default::default();
                    let mut mine = Vec::new();
                    loop {
                        let k = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if k >= nk {
                            break;
                        }
                        mine.push((k, f(k, &mut s, &mut gb, &mut db)));
                    }
                    mine
                })
            })
            .collect();
        for h in handles {
            match h.join() {
                Ok(mine) => {
                    for (k, r) in mine {
                        out[k] = Some(r);
                    }
                }
                Err(panic) => std::panic::resume_unwind(panic),
            }
        }
    });
    out.into_iter()
        .map(|r| r.unwrap_or_else(|| unreachable!("every category is evaluated")))
        .collect()
}

/// What `codetr-train eval --gt GT --dt DT [--json]` prints: the 12 summary lines, or one
/// json object with the keys of [`SUMMARY_KEYS`].
pub fn run_eval_cli(gt: &Path, dt: &Path, json: bool) -> Result<String> {
    let gt_file = CocoFile::read(gt)?;
    let dts = load_detections(dt)?;
    let res = evaluate_impl(&gt_file, gt, &dts, &dt.display().to_string())?;
    if json {
        serde_json::to_string(&res.summary).map_err(|source| Error::Json {
            path: dt.to_path_buf(),
            source,
        })
    } else {
        Ok(res.summary.to_string())
    }
}

#[cfg(test)]
mod tests;
