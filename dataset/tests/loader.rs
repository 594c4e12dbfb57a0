//! The batching loader: order, determinism across worker counts, exact resume, targets.

use std::sync::Arc;

use codetr_data::loader::Resize;
use codetr_data::rng::Rng;
use codetr_data::{AugmentConfig, CocoDataset, LoadOptions, Loader, LoaderConfig};
use serde_json::json;

/// `n` images of varied sizes, each with a bright box on a dark background at a known place.
fn dataset(n: usize) -> (tempfile::TempDir, Arc<CocoDataset>) {
    let dir = tempfile::tempdir().unwrap();
    let images_dir = dir.path().join("images");
    std::fs::create_dir(&images_dir).unwrap();
    let mut rng = Rng::new(5);
    let (mut images, mut anns) = (vec![], vec![]);
    for i in 0..n {
        let (w, h) = (60 + 7 * i as u32, 50 + 3 * i as u32);
        let mut img = image::RgbImage::from_pixel(w, h, image::Rgb([0, 0, 0]));
        let (bx, by, bw, bh) = (5 + i as u32, 6, 20, 15 + (i % 3) as u32);
        for y in by..by + bh {
            for x in bx..bx + bw {
                img.put_pixel(x, y, image::Rgb([250, 250, 250]));
            }
        }
        let name = format!("{i:03}.png");
        img.save(images_dir.join(&name)).unwrap();
        images.push(json!({"id": i + 1, "file_name": name, "width": w, "height": h}));
        anns.push(
            json!({"id": 2 * i + 1, "image_id": i + 1, "category_id": 1 + (i % 2),
                          "bbox": [bx, by, bw, bh]}),
        );
        if rng.chance(0.5) {
            anns.push(json!({"id": 2 * i + 2, "image_id": i + 1, "category_id": 1,
                              "bbox": [0, 0, w, h], "iscrowd": 1}));
        }
    }
    let v = json!({"images": images, "annotations": anns,
                   "categories": [{"id": 1, "name": "a"}, {"id": 2, "name": "b"}]});
    let p = dir.path().join("instances.json");
    std::fs::write(&p, serde_json::to_vec(&v).unwrap()).unwrap();
    let ds = CocoDataset::load_split(dir.path(), LoadOptions::default()).unwrap();
    (dir, Arc::new(ds))
}

fn train_cfg(workers: usize) -> LoaderConfig {
    LoaderConfig {
        batch_size: 3,
        sizes: vec![64, 96, 128],
        workers,
        prefetch: 3,
        shuffle: true,
        drop_last: true,
        seed: 11,
        augment: Some(AugmentConfig::default()),
        resize: Resize::Stretch,
        letterbox_limits: None,
    }
}

/// Letterboxed batches: each image keeps its aspect ratio in its `valid` region (top-left, the
/// official rounding), the rest of the canvas is zero, and its targets are normalised by that
/// region, so without augmentation they are the boxes relative to the original image; the
/// bright box lands where its target says. With augmentation the same holds of the crop.
#[test]
fn letterboxed_batches_keep_the_ratio_and_normalise_targets_by_the_image_region() {
    let (_d, ds) = dataset(6);
    let size = 100u32;
    // without limits the canvas caps the scale; with [short, long] = [40, 70] the limits do
    // (the official keep-ratio rule), leaving more of the canvas as padding
    for limits in [None, Some([40, 70])] {
        let loader = Loader::new(
            ds.clone(),
            LoaderConfig {
                letterbox_limits: limits,
                ..LoaderConfig::eval(6, size, 2, Resize::Letterbox)
            },
        )
        .unwrap();
        let batch = loader.epoch(0, 0).next().unwrap().unwrap();
        assert!(batch.padded().is_some());
        let s = size as usize;
        for (i, (t, &[vh, vw])) in batch.targets.iter().zip(&batch.valid).enumerate() {
            let rec = ds.images.iter().find(|r| r.id == t.image_id).unwrap();
            let want = codetr_model::preprocess::letterbox_size(
                [rec.height, rec.width],
                [size, size],
                limits,
            );
            assert_eq!([vh, vw], want, "image {i}");
            match limits {
                None => assert!(vh == size || vw == size, "one side fills the canvas"),
                Some([short, long]) => {
                    let (lo, hi) = (vh.min(vw), vh.max(vw));
                    assert!(lo <= short && hi <= long, "image {i}: {vh}x{vw}");
                    assert!(
                        lo + 1 >= short || hi + 1 >= long,
                        "a limit is reached: {vh}x{vw}"
                    );
                }
            }
            let px = &batch.pixels[i * s * s * 3..(i + 1) * s * s * 3];
            for y in 0..s {
                for x in 0..s {
                    if y >= vh as usize || x >= vw as usize {
                        assert_eq!(&px[(y * s + x) * 3..(y * s + x) * 3 + 3], &[0, 0, 0]);
                    }
                }
            }
            // The one box: its target is the original box relative to the original image.
            let o = &rec.objects.iter().find(|o| !o.iscrowd).unwrap().bbox;
            let (w, h) = (rec.width as f32, rec.height as f32);
            let orig = [
                (o[0] + o[2]) / 2.0 / w,
                (o[1] + o[3]) / 2.0 / h,
                (o[2] - o[0]) / w,
                (o[3] - o[1]) / h,
            ];
            for (a, b) in t.boxes[0].iter().zip(orig) {
                assert!(
                    (a - b).abs() < 1e-5,
                    "image {i}: {:?} vs {orig:?}",
                    t.boxes[0]
                );
            }
            // …and the bright square is there in the canvas.
            let (cx, cy) = (
                (t.boxes[0][0] * vw as f32) as usize,
                (t.boxes[0][1] * vh as f32) as usize,
            );
            assert!(
                px[(cy * s + cx) * 3] > 200,
                "image {i}: box centre not bright"
            );
        }
    }
    // With augmentation (crops, flips, jitter): the canvas outside each region stays zero and
    // every target lies within its region.
    let cfg = LoaderConfig {
        resize: Resize::Letterbox,
        ..train_cfg(2)
    };
    for batch in Loader::new(ds, cfg).unwrap().epoch(1, 0) {
        let batch = batch.unwrap();
        let s = batch.size as usize;
        for (i, (t, &[vh, vw])) in batch.targets.iter().zip(&batch.valid).enumerate() {
            assert!(vh as usize <= s && vw as usize <= s && (vh as usize == s || vw as usize == s));
            let px = &batch.pixels[i * s * s * 3..(i + 1) * s * s * 3];
            let outside: u64 = (0..s * s)
                .filter(|&k| k / s >= vh as usize || k % s >= vw as usize)
                .map(|k| u64::from(px[k * 3]) + u64::from(px[k * 3 + 1]) + u64::from(px[k * 3 + 2]))
                .sum();
            assert_eq!(outside, 0, "padding is zero");
            for b in &t.boxes {
                assert!(b.iter().all(|v| (0.0..=1.0 + 1e-6).contains(v)), "{b:?}");
            }
        }
    }
}

#[test]
fn batches_do_not_depend_on_worker_count() {
    let (_d, ds) = dataset(10);
    let one: Vec<_> = Loader::new(ds.clone(), train_cfg(1))
        .unwrap()
        .epoch(2, 0)
        .map(Result::unwrap)
        .collect();
    let three: Vec<_> = Loader::new(ds, train_cfg(3))
        .unwrap()
        .epoch(2, 0)
        .map(Result::unwrap)
        .collect();
    assert_eq!(one.len(), 3); // 10 images, batch 3, drop_last
    assert_eq!(one, three);
    assert!(
        one.iter()
            .enumerate()
            .all(|(i, b)| b.index == i && b.epoch == 2)
    );
}

#[test]
fn resume_mid_epoch_reproduces_the_tail() {
    let (_d, ds) = dataset(10);
    let loader = Loader::new(ds, train_cfg(2)).unwrap();
    let full: Vec<_> = loader.epoch(4, 0).map(Result::unwrap).collect();
    let tail: Vec<_> = loader.epoch(4, 1).map(Result::unwrap).collect();
    assert_eq!(&full[1..], &tail[..]);
    let other: Vec<_> = loader.epoch(5, 0).map(Result::unwrap).collect();
    assert_ne!(full, other, "epochs must differ");
}

#[test]
fn every_image_once_per_epoch_and_multiscale_sizes_used() {
    let (_d, ds) = dataset(12);
    let mut cfg = train_cfg(2);
    cfg.drop_last = false;
    cfg.batch_size = 5;
    let loader = Loader::new(ds, cfg).unwrap();
    let mut sizes = std::collections::BTreeSet::new();
    for epoch in 0..6 {
        let mut ids: Vec<u64> = vec![];
        for b in loader.epoch(epoch, 0) {
            let b = b.unwrap();
            let s = b.size as usize;
            assert_eq!(b.pixels.len(), b.len() * s * s * 3);
            sizes.insert(b.size);
            ids.extend(b.targets.iter().map(|t| t.image_id));
            for t in &b.targets {
                for bx in &t.boxes {
                    assert!(bx.iter().all(|v| (0.0..=1.0).contains(v)), "{bx:?}");
                    assert!(bx[2] > 0.0 && bx[3] > 0.0);
                }
            }
        }
        ids.sort();
        assert_eq!(ids, (1..=12).collect::<Vec<u64>>());
    }
    assert_eq!(
        sizes.len(),
        3,
        "all multi-scale sizes should appear: {sizes:?}"
    );
}

#[test]
fn eval_loader_keeps_geometry_and_drops_crowd_targets() {
    let (_d, ds) = dataset(4);
    let loader = Loader::new(ds.clone(), LoaderConfig::eval(3, 100, 2, Resize::Stretch)).unwrap();
    let batches: Vec<_> = loader.epoch(0, 0).map(Result::unwrap).collect();
    assert_eq!(batches.len(), 2);
    assert_eq!(batches[1].len(), 1);
    for (t, rec) in batches.iter().flat_map(|b| &b.targets).zip(&ds.images) {
        assert_eq!(t.image_id, rec.id);
        assert_eq!(t.orig_size, [rec.height, rec.width]);
        assert_eq!(t.labels.len(), 1, "crowd regions are not training targets");
        let o = &rec.objects[0].bbox;
        let (w, h) = (rec.width as f32, rec.height as f32);
        let want = [
            (o[0] + o[2]) / 2.0 / w,
            (o[1] + o[3]) / 2.0 / h,
            (o[2] - o[0]) / w,
            (o[3] - o[1]) / h,
        ];
        for k in 0..4 {
            assert!(
                (t.boxes[0][k] - want[k]).abs() < 1e-5,
                "{:?} vs {want:?}",
                t.boxes[0]
            );
        }
    }
    // The bright box's centre is bright in the resized pixels; a corner is dark.
    let b = &batches[0];
    let t = &b.targets[0];
    let s = b.size as usize;
    let (cx, cy) = (
        (t.boxes[0][0] * s as f32) as usize,
        (t.boxes[0][1] * s as f32) as usize,
    );
    assert!(b.pixels[(cy * s + cx) * 3] > 200);
    assert!(b.pixels[((s - 1) * s + s - 1) * 3] < 30);
}

#[test]
fn augmented_boxes_follow_the_pixels() {
    // With heavy augmentation the centre of each target box must still be bright.
    let (_d, ds) = dataset(8);
    let mut cfg = train_cfg(2);
    cfg.augment = Some(AugmentConfig {
        jitter_prob: 0.0,
        ..Default::default()
    });
    let loader = Loader::new(ds, cfg).unwrap();
    let mut checked = 0;
    for epoch in 0..4 {
        for b in loader.epoch(epoch, 0) {
            let b = b.unwrap();
            let s = b.size as usize;
            for (k, t) in b.targets.iter().enumerate() {
                for bx in &t.boxes {
                    let (cx, cy) = ((bx[0] * s as f32) as usize, (bx[1] * s as f32) as usize);
                    let px = b.pixels[k * s * s * 3 + (cy.min(s - 1) * s + cx.min(s - 1)) * 3];
                    assert!(px > 150, "box {bx:?} centre pixel {px}");
                    checked += 1;
                }
            }
        }
    }
    assert!(checked > 10);
}

#[test]
fn a_broken_image_is_an_error_item_not_a_panic() {
    let (d, ds) = dataset(6);
    std::fs::write(d.path().join("images/002.png"), b"garbage").unwrap();
    let loader = Loader::new(ds, LoaderConfig::eval(2, 64, 2, Resize::Stretch)).unwrap();
    let results: Vec<_> = loader.epoch(0, 0).collect();
    assert_eq!(results.len(), 3);
    assert!(results[0].is_ok() && results[2].is_ok());
    let e = results[1].as_ref().unwrap_err().to_string();
    assert!(e.contains("002.png") && e.contains("image id 3"), "{e}");
}

#[test]
fn bad_config_is_rejected() {
    let (_d, ds) = dataset(2);
    for cfg in [
        LoaderConfig {
            batch_size: 0,
            ..LoaderConfig::default()
        },
        LoaderConfig {
            sizes: vec![],
            ..LoaderConfig::default()
        },
        LoaderConfig {
            sizes: vec![8],
            ..LoaderConfig::default()
        },
        LoaderConfig {
            workers: 0,
            ..LoaderConfig::default()
        },
    ] {
        assert!(Loader::new(ds.clone(), cfg).is_err());
    }
}
