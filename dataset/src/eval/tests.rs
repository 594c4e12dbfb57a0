use super::*;
use crate::coco::{CocoAnnotation, CocoCategory, CocoImage};

fn gt_file(images: &[u64], cats: &[u64], anns: &[(u64, u64, u64, [f64; 4], u8)]) -> CocoFile {
    CocoFile {
        info: None,
        images: images
            .iter()
            .map(|&id| CocoImage {
                id,
                file_name: format!("{id}.jpg"),
                width: 1000,
                height: 1000,
            })
            .collect(),
        annotations: anns
            .iter()
            .map(
                |&(id, image_id, category_id, bbox, iscrowd)| CocoAnnotation {
                    id,
                    image_id,
                    category_id,
                    bbox: bbox.to_vec(),
                    area: Some(bbox[2] * bbox[3]),
                    iscrowd,
                },
            )
            .collect(),
        categories: cats
            .iter()
            .map(|&id| CocoCategory {
                id,
                name: format!("c{id}"),
                supercategory: None,
            })
            .collect(),
    }
}

fn det(image_id: u64, category_id: u64, bbox: [f64; 4], score: f64) -> Detection {
    Detection {
        image_id,
        category_id,
        bbox,
        score,
    }
}

fn eval(gt: &CocoFile, dts: &[Detection]) -> EvalSummary {
    evaluate(gt, Path::new("gt.json"), dts).unwrap()
}

#[test]
fn thresholds_match_numpy_linspace() {
    let p = Params::default();
    let iou = [
        0.5,
        0.55,
        0.6,
        0.65,
        0.7,
        0.75,
        0.8,
        0.85,
        0.8999999999999999,
        0.95,
    ];
    assert_eq!(p.iou_thrs, iou);
    assert_eq!(p.rec_thrs.len(), 101);
    // numpy's values differ from i/100 at exactly these places.
    let odd = [
        (35, 0.35000000000000003),
        (41, 0.41000000000000003),
        (47, 0.47000000000000003),
        (57, 0.5700000000000001),
        (69, 0.6900000000000001),
        (70, 0.7000000000000001),
        (82, 0.8200000000000001),
        (83, 0.8300000000000001),
        (94, 0.9400000000000001),
        (95, 0.9500000000000001),
    ];
    for (i, &v) in p.rec_thrs.iter().enumerate() {
        let want = odd
            .iter()
            .find(|(j, _)| *j == i)
            .map_or(i as f64 / 100.0, |&(_, x)| x);
        assert_eq!(v, want, "recThrs[{i}]");
    }
}

#[test]
fn iou_basic_crowd_disjoint_touching() {
    let a = [10.0, 10.0, 20.0, 20.0];
    assert_eq!(bbox_iou(&a, &a, false), 1.0);
    // Half overlap horizontally: inter 10*20=200, union 400+400-200=600.
    let b = [20.0, 10.0, 20.0, 20.0];
    assert!((bbox_iou(&a, &b, false) - 200.0 / 600.0).abs() < 1e-15);
    // Disjoint and edge-touching boxes: 0.
    assert_eq!(bbox_iou(&a, &[100.0, 100.0, 5.0, 5.0], false), 0.0);
    assert_eq!(bbox_iou(&a, &[30.0, 10.0, 20.0, 20.0], false), 0.0);
    assert_eq!(bbox_iou(&a, &[10.0, 30.0, 20.0, 20.0], false), 0.0);
    // Crowd: union = detection area. A small dt fully inside a big crowd region → 1.
    let crowd = [0.0, 0.0, 100.0, 100.0];
    assert_eq!(bbox_iou(&a, &crowd, true), 1.0);
    assert!((bbox_iou(&a, &crowd, false) - 400.0 / 10_000.0).abs() < 1e-15);
    // Dt half outside the crowd: inter/da = 0.5.
    assert_eq!(bbox_iou(&[90.0, 0.0, 20.0, 10.0], &crowd, true), 0.5);
}

#[test]
fn hand_computed_pr_curve() {
    // One image, 4 gts far apart; dets TP, FP, TP, FP, TP by descending score.
    let gts: Vec<_> = (0..4)
        .map(|j| (j + 1, 1, 1, [j as f64 * 200.0, 0.0, 50.0, 50.0], 0))
        .collect();
    let gt = gt_file(&[1], &[1], &gts);
    let tp = |j: usize, s| det(1, 1, [j as f64 * 200.0, 0.0, 50.0, 50.0], s);
    let fp = |s| det(1, 1, [500.0, 500.0, 50.0, 50.0], s);
    let dts = [tp(0, 0.9), fp(0.8), tp(1, 0.7), fp(0.6), tp(2, 0.5)];
    let s = eval(&gt, &dts);
    // rc = .25 .25 .5 .5 .75; pr = 1 .5 .667 .5 .6; envelope 1 .667 .667 .6 .6.
    // recThrs 0..=.25 (26) → 1, .26..=.5 (25) → 2/3, .51..=.75 (25) → .6, rest → 0.
    let want = (26.0 + 25.0 * 2.0 / 3.0 + 25.0 * 0.6) / 101.0;
    assert!((s.ap - want).abs() < 1e-12, "{} vs {want}", s.ap);
    assert!((s.ap50 - want).abs() < 1e-12);
    assert!((s.ap75 - want).abs() < 1e-12);
    assert!((s.ar100 - 0.75).abs() < 1e-15);
    assert!((s.ar10 - 0.75).abs() < 1e-15);
    // maxDets=1: only the 0.9 TP.
    assert!((s.ar1 - 0.25).abs() < 1e-15);
    // 2500 px² boxes are medium.
    assert_eq!(s.ap_small, -1.0);
    assert_eq!(s.ap_large, -1.0);
    assert!((s.ap_medium - want).abs() < 1e-12);
    assert_eq!(s.ar_small, -1.0);
}

#[test]
fn score_ties_keep_input_order() {
    let gt = gt_file(&[1, 2], &[1], &[(1, 2, 1, [0.0, 0.0, 50.0, 50.0], 0)]);
    let hit = det(2, 1, [0.0, 0.0, 50.0, 50.0], 0.5);
    let miss_same_img = det(2, 1, [300.0, 300.0, 50.0, 50.0], 0.5);
    let miss_img1 = det(1, 1, [0.0, 0.0, 50.0, 50.0], 0.5);
    // Same image: the FP first → pr 0, .5 → AP .5; the TP first → AP 1.
    assert!((eval(&gt, &[miss_same_img, hit]).ap - 0.5).abs() < 1e-12);
    assert!((eval(&gt, &[hit, miss_same_img]).ap - 1.0).abs() < 1e-12);
    // Across images the order is by image id, not file order: image 1's FP comes first.
    assert!((eval(&gt, &[hit, miss_img1]).ap - 0.5).abs() < 1e-12);
}

#[test]
fn area_range_bounds_are_inclusive() {
    // Area exactly 32² is both small and medium; 96² both medium and large.
    let gt = gt_file(
        &[1],
        &[1, 2],
        &[
            (1, 1, 1, [0.0, 0.0, 32.0, 32.0], 0),
            (2, 1, 2, [0.0, 0.0, 96.0, 96.0], 0),
        ],
    );
    let dts = [
        det(1, 1, [0.0, 0.0, 32.0, 32.0], 0.9),
        det(1, 2, [0.0, 0.0, 96.0, 96.0], 0.9),
    ];
    let s = eval(&gt, &dts);
    for v in [
        s.ap,
        s.ap_small,
        s.ap_medium,
        s.ap_large,
        s.ar_small,
        s.ar_medium,
    ] {
        assert!((v - 1.0).abs() < 1e-12, "{s:?}");
    }
}

#[test]
fn unmatched_dets_outside_area_range_are_ignored() {
    // Small gt, plus a large FP: the FP only counts in "all" and "large".
    let gt = gt_file(&[1], &[1], &[(1, 1, 1, [0.0, 0.0, 10.0, 10.0], 0)]);
    let dts = [
        det(1, 1, [200.0, 200.0, 200.0, 200.0], 0.9),
        det(1, 1, [0.0, 0.0, 10.0, 10.0], 0.8),
    ];
    let s = eval(&gt, &dts);
    assert!((s.ap - 0.5).abs() < 1e-12);
    assert!((s.ap_small - 1.0).abs() < 1e-12);
    assert_eq!(s.ap_large, -1.0); // no large gt
}

#[test]
fn crowd_regions_swallow_detections() {
    let gt = gt_file(
        &[1],
        &[1],
        &[
            (1, 1, 1, [0.0, 0.0, 40.0, 40.0], 0),
            (2, 1, 1, [500.0, 500.0, 300.0, 300.0], 1),
        ],
    );
    // Two high-score dets inside the crowd region are ignored, not FPs.
    let dts = [
        det(1, 1, [510.0, 510.0, 50.0, 50.0], 0.95),
        det(1, 1, [600.0, 600.0, 50.0, 50.0], 0.94),
        det(1, 1, [0.0, 0.0, 40.0, 40.0], 0.5),
    ];
    let s = eval(&gt, &dts);
    assert!((s.ap - 1.0).abs() < 1e-12, "{s:?}");
    assert!((s.ar1 - 0.0).abs() < 1e-12); // the top det per image is the crowd one
}

#[test]
fn more_than_100_detections_are_cut() {
    let gt = gt_file(&[1], &[1], &[(1, 1, 1, [0.0, 0.0, 50.0, 50.0], 0)]);
    let mut dts: Vec<_> = (0..100)
        .map(|i| det(1, 1, [300.0 + i as f64, 300.0, 50.0, 50.0], 0.9))
        .collect();
    dts.push(det(1, 1, [0.0, 0.0, 50.0, 50.0], 0.1));
    let s = eval(&gt, &dts);
    assert_eq!(s.ap, 0.0);
    assert_eq!(s.ar100, 0.0);
}

#[test]
fn empty_cases() {
    let gt = gt_file(&[1, 2], &[1, 2], &[(1, 1, 1, [0.0, 0.0, 50.0, 50.0], 0)]);
    // No detections: 0 where there is gt, -1 where there is none.
    let s = eval(&gt, &[]);
    assert_eq!(s.ap, 0.0);
    assert_eq!(s.ap_medium, 0.0);
    assert_eq!(s.ap_small, -1.0);
    assert_eq!(s.ar100, 0.0);
    // Detections only for the category without gt: still 0 / -1.
    let s = eval(&gt, &[det(2, 2, [0.0, 0.0, 5.0, 5.0], 0.9)]);
    assert_eq!(s.ap, 0.0);
    // Detections of a category absent from the gt are dropped.
    let s2 = eval(&gt, &[det(2, 77, [0.0, 0.0, 5.0, 5.0], 0.9)]);
    assert_eq!(s2, eval(&gt, &[]));
    // No annotations at all: everything -1.
    let none = gt_file(&[1], &[1], &[]);
    let s = eval(&none, &[det(1, 1, [0.0, 0.0, 5.0, 5.0], 0.9)]);
    assert_eq!(s.to_array(), [-1.0; 12]);
    let s = eval(&gt_file(&[], &[], &[]), &[]);
    assert_eq!(s.to_array(), [-1.0; 12]);
}

#[test]
fn per_category_ap_and_arrays() {
    let gt = gt_file(
        &[1],
        &[3, 5, 9],
        &[
            (1, 1, 3, [0.0, 0.0, 50.0, 50.0], 0),
            (2, 1, 5, [100.0, 0.0, 50.0, 50.0], 0),
        ],
    );
    let r = evaluate_full(
        &gt,
        Path::new("gt.json"),
        &[det(1, 3, [0.0, 0.0, 50.0, 50.0], 0.9)],
    )
    .unwrap();
    assert_eq!(r.cat_ids, vec![3, 5, 9]);
    assert_eq!(r.precision.len(), 10 * 101 * 3 * 4 * 3);
    let ap = r.per_category_ap();
    assert!((ap[0] - 1.0).abs() < 1e-12);
    assert_eq!(ap[1], 0.0);
    assert_eq!(ap[2], -1.0);
    assert!((r.summary.ap - 0.5).abs() < 1e-12);
    assert_eq!(r.recall_at(0, 1, 0, 2), 0.0);
    assert_eq!(r.recall_at(0, 2, 0, 2), -1.0);
}

#[test]
fn bad_inputs_are_named() {
    let gt = gt_file(&[1], &[1], &[(7, 1, 1, [0.0, 0.0, 50.0, 50.0], 0)]);
    let err = evaluate(&gt, Path::new("gt.json"), &[det(42, 1, [0.0; 4], 0.5)]).unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, Error::Detection { index: 0, .. }), "{msg}");
    assert!(msg.contains("image id 42"), "{msg}");

    let mut bad = gt.clone();
    bad.annotations[0].bbox = vec![1.0, 2.0, 3.0];
    let err = evaluate(&bad, Path::new("gt.json"), &[]).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(&err, Error::Coco { field: "bbox", at, .. }
            if at.annotation_id == Some(7) && at.image_id == Some(1)),
        "{msg}"
    );
    assert!(msg.contains("gt.json"), "{msg}");

    let mut bad = gt.clone();
    bad.annotations[0].category_id = 2;
    assert!(matches!(
        evaluate(&bad, Path::new("gt.json"), &[]),
        Err(Error::Coco {
            field: "category_id",
            ..
        })
    ));
}

#[test]
fn load_detections_validates() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("dt.json");
    std::fs::write(
        &p,
        r#"[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5, "extra": "x"}]"#,
    )
    .unwrap();
    assert_eq!(
        load_detections(&p).unwrap(),
        vec![det(1, 2, [1.0, 2.0, 3.0, 4.0], 0.5)]
    );
    std::fs::write(
        &p,
        r#"[{"image_id": 1, "category_id": 2, "bbox": [1, 2, 3, 4], "score": 0.5},
            {"image_id": 3, "category_id": 2, "bbox": [1, 2, 3], "score": 0.5}]"#,
    )
    .unwrap();
    let msg = load_detections(&p).unwrap_err().to_string();
    assert!(
        msg.contains("detection #1") && msg.contains("image id 3"),
        "{msg}"
    );
    std::fs::write(&p, "[]").unwrap();
    assert!(load_detections(&p).unwrap().is_empty());
    std::fs::write(&p, "{}").unwrap();
    assert!(matches!(load_detections(&p), Err(Error::Json { .. })));
}

#[test]
fn display_and_json_match_pycocotools() {
    let s = EvalSummary::from_array([
        0.5, 0.0625, 0.1875, -1.0, 0.25, 1.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6,
    ]);
    let text = s.to_string();
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 12);
    assert_eq!(
        lines[0],
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area=   all | maxDets=100 ] = 0.500"
    );
    assert_eq!(
        lines[1],
        " Average Precision  (AP) @[ IoU=0.50      | area=   all | maxDets=100 ] = 0.062"
    );
    assert_eq!(
        lines[3],
        " Average Precision  (AP) @[ IoU=0.50:0.95 | area= small | maxDets=100 ] = -1.000"
    );
    assert_eq!(
        lines[6],
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area=   all | maxDets=  1 ] = 0.100"
    );
    assert_eq!(
        lines[10],
        " Average Recall     (AR) @[ IoU=0.50:0.95 | area=medium | maxDets=100 ] = 0.500"
    );
    let v: serde_json::Value = serde_json::to_value(s).unwrap();
    let keys: Vec<&str> = v.as_object().unwrap().keys().map(|k| k.as_str()).collect();
    let mut want = SUMMARY_KEYS.to_vec();
    want.sort_unstable();
    let mut got = keys.clone();
    got.sort_unstable();
    assert_eq!(got, want);
}

#[test]
fn pairwise_sum_is_accurate() {
    let v: Vec<f64> = (0..1000).map(|i| i as f64 * 0.001).collect();
    let exact: f64 = 499.5;
    assert!((pairwise_sum(&v) - exact).abs() < 1e-10);
    assert_eq!(pairwise_sum(&[]), 0.0);
    assert_eq!(pairwise_sum(&[1.0, 2.0, 3.0]), 6.0);
}
