//! Parity of `codetr_data::eval` with pycocotools on generated cases.
//!
//! Needs `CODETR_PYTHON` pointing at a python with pycocotools (`make test` sets it); the
//! test fails without it rather than passing silently.

use std::path::{Path, PathBuf};
use std::process::Command;

use codetr_data::coco::{CocoAnnotation, CocoCategory, CocoFile, CocoImage};
use codetr_data::eval::{Detection, EvalSummary, SUMMARY_KEYS, run_eval_cli};
use codetr_data::rng::Rng;

const TOL: f64 = 1e-4;
const W: f64 = 640.0;
const H: f64 = 480.0;

struct Case {
    name: &'static str,
    gt: CocoFile,
    dts: Vec<Detection>,
}

struct Builder {
    gt: CocoFile,
    dts: Vec<Detection>,
    next_ann: u64,
}

impl Builder {
    fn new(n_images: u64, cat_ids: &[u64]) -> Self {
        Self {
            gt: CocoFile {
                info: None,
                images: (1..=n_images)
                    .map(|id| CocoImage {
                        id: id * 3 + 100, // non-contiguous ids
                        file_name: format!("{id:06}.jpg"),
                        width: W as u32,
                        height: H as u32,
                    })
                    .collect(),
                annotations: Vec::new(),
                categories: cat_ids
                    .iter()
                    .map(|&id| CocoCategory {
                        id,
                        name: format!("class{id}"),
                        supercategory: None,
                    })
                    .collect(),
            },
            dts: Vec::new(),
            next_ann: 1,
        }
    }

    fn image_ids(&self) -> Vec<u64> {
        self.gt.images.iter().map(|i| i.id).collect()
    }

    fn add_gt(&mut self, rng: &mut Rng, image_id: u64, cat: u64, bbox: [f64; 4], crowd: bool) {
        // Sometimes a segment area smaller than the box, as in real COCO.
        let area = if rng.chance(0.3) {
            bbox[2] * bbox[3] * f64::from(rng.uniform(0.5, 1.0))
        } else {
            bbox[2] * bbox[3]
        };
        self.gt.annotations.push(CocoAnnotation {
            id: self.next_ann,
            image_id,
            category_id: cat,
            bbox: bbox.to_vec(),
            area: Some(area),
            iscrowd: u8::from(crowd),
        });
        self.next_ann += 1;
    }

    fn add_dt(&mut self, image_id: u64, cat: u64, bbox: [f64; 4], score: f64) {
        self.dts.push(Detection {
            image_id,
            category_id: cat,
            bbox,
            score,
        });
    }

    fn build(self, name: &'static str) -> Case {
        Case {
            name,
            gt: self.gt,
            dts: self.dts,
        }
    }
}

/// A box whose side spans small to large (log-uniform 4..300 px), inside the image.
fn random_box(rng: &mut Rng) -> [f64; 4] {
    let side = (rng.uniform(4f32.ln(), 300f32.ln())).exp() as f64;
    let aspect = f64::from(rng.uniform(0.5, 2.0));
    let w = (side * aspect.sqrt()).min(W - 1.0);
    let h = (side / aspect.sqrt()).min(H - 1.0);
    let x = f64::from(rng.f32()) * (W - w);
    let y = f64::from(rng.f32()) * (H - h);
    [round2(x), round2(y), round2(w), round2(h)]
}

fn round2(v: f64) -> f64 {
    (v * 100.0).round() / 100.0
}

/// The true box moved and resized by a few percent of its size (IoUs around all thresholds).
fn jitter(rng: &mut Rng, b: [f64; 4], amount: f64) -> [f64; 4] {
    let n = |rng: &mut Rng| f64::from(rng.normal()) * amount;
    let w = (b[2] * (1.0 + n(rng))).max(1.0);
    let h = (b[3] * (1.0 + n(rng))).max(1.0);
    [
        round2(b[0] + b[2] * n(rng)),
        round2(b[1] + b[3] * n(rng)),
        round2(w),
        round2(h),
    ]
}

fn score(rng: &mut Rng, lo: f32, hi: f32) -> f64 {
    f64::from(rng.uniform(lo, hi))
}

/// Noisy detections for an image's gts plus false positives; sometimes > 100 per image.
fn noisy_dets(
    rng: &mut Rng,
    b: &mut Builder,
    image_id: u64,
    gts: &[(u64, [f64; 4])],
    cats: &[u64],
) {
    for &(cat, bbox) in gts {
        if rng.chance(0.8) {
            let s = score(rng, 0.2, 1.0);
            b.add_dt(image_id, cat, jitter(rng, bbox, 0.1), s);
            if rng.chance(0.25) {
                // Duplicate with a lower score.
                b.add_dt(image_id, cat, jitter(rng, bbox, 0.15), s * 0.8);
            }
            if rng.chance(0.05) {
                // Right place, wrong class.
                let other = cats[rng.below(cats.len())];
                b.add_dt(
                    image_id,
                    other,
                    jitter(rng, bbox, 0.05),
                    score(rng, 0.0, 0.6),
                );
            }
        }
    }
    let n_fp = if rng.chance(0.1) {
        110 + rng.below(40)
    } else {
        rng.below(8)
    };
    for _ in 0..n_fp {
        let cat = cats[rng.below(cats.len())];
        let bbox = random_box(rng);
        b.add_dt(image_id, cat, bbox, score(rng, 0.0, 0.7));
    }
}

/// (a) a synthetic val set: 200 images, 8 categories, 0–20 gts each.
fn case_val_set() -> Case {
    let cats = [1, 2, 3, 5, 8, 13, 21, 34];
    let mut b = Builder::new(200, &cats);
    for (n, image_id) in b.image_ids().into_iter().enumerate() {
        let mut rng = Rng::fork(11, n as u64);
        let n_gt = rng.below(21);
        let mut gts = Vec::new();
        for _ in 0..n_gt {
            let cat = cats[rng.below(cats.len())];
            let bbox = random_box(&mut rng);
            b.add_gt(&mut rng, image_id, cat, bbox, false);
            gts.push((cat, bbox));
        }
        noisy_dets(&mut rng, &mut b, image_id, &gts, &cats);
    }
    b.build("a_val_set")
}

/// (b) crowd regions with detections inside them, images without gt (with and without
/// detections), and a gt whose annotation id is 0.
fn case_crowd_and_empty_images() -> Case {
    let cats = [1, 2, 3];
    let mut b = Builder::new(120, &cats);
    b.next_ann = 0;
    for (n, image_id) in b.image_ids().into_iter().enumerate() {
        let mut rng = Rng::fork(22, n as u64);
        match n % 4 {
            0 => continue, // no gt, no dets
            1 => {
                // No gt, only detections.
                for _ in 0..rng.below(6) + 1 {
                    let cat = cats[rng.below(cats.len())];
                    let bbox = random_box(&mut rng);
                    b.add_dt(image_id, cat, bbox, score(&mut rng, 0.0, 1.0));
                }
                continue;
            }
            _ => {}
        }
        let mut gts = Vec::new();
        for _ in 0..rng.below(8) {
            let cat = cats[rng.below(cats.len())];
            let bbox = random_box(&mut rng);
            b.add_gt(&mut rng, image_id, cat, bbox, false);
            gts.push((cat, bbox));
        }
        if rng.chance(0.7) {
            // A crowd region and detections in and around it.
            let cat = cats[rng.below(cats.len())];
            let w = f64::from(rng.uniform(60.0, 300.0));
            let h = f64::from(rng.uniform(60.0, 200.0));
            let x = f64::from(rng.f32()) * (W - w);
            let y = f64::from(rng.f32()) * (H - h);
            let crowd = [round2(x), round2(y), round2(w), round2(h)];
            b.add_gt(&mut rng, image_id, cat, crowd, true);
            for _ in 0..rng.below(6) {
                let dw = w * f64::from(rng.uniform(0.1, 0.6));
                let dh = h * f64::from(rng.uniform(0.1, 0.6));
                let dx = x + f64::from(rng.uniform(-0.2, 1.0)) * (w - dw);
                let dy = y + f64::from(rng.uniform(-0.2, 1.0)) * (h - dh);
                let s = score(&mut rng, 0.0, 1.0);
                b.add_dt(
                    image_id,
                    cat,
                    [round2(dx), round2(dy), round2(dw), round2(dh)],
                    s,
                );
            }
            if rng.chance(0.3) {
                // A regular gt overlapping the crowd region.
                let inner = jitter(&mut rng, crowd, 0.3);
                b.add_gt(&mut rng, image_id, cat, inner, false);
                gts.push((cat, inner));
            }
        }
        noisy_dets(&mut rng, &mut b, image_id, &gts, &cats);
    }
    b.build("b_crowd_and_empty_images")
}

/// (c) categories with gt but no detections, categories with detections but no gt, and
/// detections of a category unknown to the gt.
fn case_category_gaps() -> Case {
    let cats = [1, 2, 3, 4, 5, 6];
    let with_gt = [1, 2, 3, 4];
    let detected = [3, 4, 5, 6, 99];
    let mut b = Builder::new(80, &cats);
    for (n, image_id) in b.image_ids().into_iter().enumerate() {
        let mut rng = Rng::fork(33, n as u64);
        let mut gts = Vec::new();
        for _ in 0..rng.below(10) {
            let cat = with_gt[rng.below(with_gt.len())];
            let bbox = random_box(&mut rng);
            b.add_gt(&mut rng, image_id, cat, bbox, false);
            gts.push((cat, bbox));
        }
        let before = b.dts.len();
        noisy_dets(&mut rng, &mut b, image_id, &gts, &detected);
        // Categories 1 and 2 are never detected.
        let kept: Vec<Detection> = b
            .dts
            .drain(before..)
            .filter(|d| d.category_id > 2)
            .collect();
        b.dts.extend(kept);
    }
    b.build("c_category_gaps")
}

/// (d) score ties: few distinct scores, duplicates with equal scores within and across
/// images, listed in shuffled file order.
fn case_score_ties() -> Case {
    let cats = [1, 2];
    let mut b = Builder::new(60, &cats);
    for (n, image_id) in b.image_ids().into_iter().enumerate() {
        let mut rng = Rng::fork(44, n as u64);
        let mut gts = Vec::new();
        for _ in 0..rng.below(8) {
            let cat = cats[rng.below(cats.len())];
            let bbox = random_box(&mut rng);
            let crowd = rng.chance(0.05);
            b.add_gt(&mut rng, image_id, cat, bbox, crowd);
            gts.push((cat, bbox));
        }
        let before = b.dts.len();
        noisy_dets(&mut rng, &mut b, image_id, &gts, &cats);
        let mut mine: Vec<Detection> = b.dts.drain(before..).collect();
        for d in &mut mine {
            d.score = [0.25, 0.5, 0.75, 1.0][rng.below(4)];
        }
        rng.shuffle(&mut mine);
        b.dts.extend(mine);
    }
    // Interleave images in the file.
    let mut rng = Rng::new(45);
    rng.shuffle(&mut b.dts);
    b.build("d_score_ties")
}

/// (e) the val set's gt with no detections at all.
fn case_no_detections() -> Case {
    let mut c = case_val_set();
    c.name = "e_no_detections";
    c.dts.clear();
    c
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from(".."))
}

fn pycocotools(python: &str, gt: &Path, dt: &Path) -> [f64; 12] {
    let script = workspace_root().join("tests/python/coco_eval_ref.py");
    let out = Command::new(python)
        .arg(&script)
        .arg(gt)
        .arg(dt)
        .output()
        .unwrap_or_else(|e| panic!("cannot run {python} {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "{} failed ({}):\n{}",
        script.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "bad output from {}: {e}\n{}",
            script.display(),
            String::from_utf8_lossy(&out.stdout)
        )
    });
    SUMMARY_KEYS.map(|k| {
        v[k].as_f64()
            .unwrap_or_else(|| panic!("missing {k} in {v}"))
    })
}

#[test]
fn parity_with_pycocotools() {
    let Ok(python) = std::env::var("CODETR_PYTHON") else {
        panic!(
            "CODETR_PYTHON is not set: run `make test` (it creates .venv with pycocotools and \
             sets CODETR_PYTHON), or set CODETR_PYTHON to a python that has pycocotools"
        );
    };
    let dir = tempfile::tempdir().unwrap();
    let cases = [
        case_val_set(),
        case_crowd_and_empty_images(),
        case_category_gaps(),
        case_score_ties(),
        case_no_detections(),
    ];
    let mut failures = Vec::new();
    for case in &cases {
        let gt_path = dir.path().join(format!("{}_gt.json", case.name));
        let dt_path = dir.path().join(format!("{}_dt.json", case.name));
        case.gt.write(&gt_path).unwrap();
        std::fs::write(&dt_path, serde_json::to_vec(&case.dts).unwrap()).unwrap();

        let ours_json = run_eval_cli(&gt_path, &dt_path, true).unwrap();
        let ours: EvalSummary = serde_json::from_str(&ours_json).unwrap();
        let ours = ours.to_array();
        let theirs = pycocotools(&python, &gt_path, &dt_path);

        let mut max_diff = 0.0f64;
        for (i, key) in SUMMARY_KEYS.iter().enumerate() {
            let d = (ours[i] - theirs[i]).abs();
            max_diff = max_diff.max(d);
            if d > TOL {
                failures.push(format!(
                    "{}: {key}: ours {} vs pycocotools {}",
                    case.name, ours[i], theirs[i]
                ));
            }
        }
        println!(
            "{:<26} gts {:>5} dts {:>6}  AP {:.4} AP50 {:.4} AR100 {:.4}  max |diff| {:.3e}",
            case.name,
            case.gt.annotations.len(),
            case.dts.len(),
            theirs[0],
            theirs[1],
            theirs[8],
            max_diff
        );
        // Not a degenerate case: something was measured.
        assert!(
            theirs.iter().any(|&v| v > 0.0) || case.dts.is_empty(),
            "{}",
            case.name
        );
    }
    assert!(failures.is_empty(), "mismatches:\n{}", failures.join("\n"));
}
