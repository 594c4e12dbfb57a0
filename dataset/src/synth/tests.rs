use super::render::*;
use super::*;
use crate::coco::{CocoDataset, LoadOptions};

fn small_cfg(seed: u64) -> SynthConfig {
    SynthConfig {
        train: 24,
        val: 6,
        test: 5,
        seed,
        width: 128,
        height: 96,
    }
}

fn all_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                let rel = p.strip_prefix(dir).unwrap().to_path_buf();
                out.push((rel, std::fs::read(&p).unwrap()));
            }
        }
    }
    out.sort();
    out
}

#[test]
fn same_seed_gives_identical_bytes_regardless_of_threads() {
    let a = tempfile::tempdir().unwrap();
    let b = tempfile::tempdir().unwrap();
    let c = tempfile::tempdir().unwrap();
    let sa = generate_with_threads(a.path(), &small_cfg(5), None, 1).unwrap();
    let sb = generate_with_threads(b.path(), &small_cfg(5), None, 3).unwrap();
    assert_eq!(sa, sb);
    let fa = all_files(a.path());
    assert_eq!(fa.len(), 3 + 24 + 6 + 5);
    assert!(
        fa == all_files(b.path()),
        "same seed must give byte-identical files"
    );

    generate_with_threads(c.path(), &small_cfg(6), None, 2).unwrap();
    let fc = all_files(c.path());
    let same = fa.iter().zip(&fc).filter(|(x, y)| x.1 == y.1).count();
    assert_eq!(same, 0, "a different seed must change every file");
}

#[test]
fn written_dataset_passes_the_strict_loader() {
    let dir = tempfile::tempdir().unwrap();
    let stats = generate(dir.path(), &small_cfg(1), None).unwrap();
    let test = stats.test.as_ref().expect("a test split was asked for");
    for (split, st) in [("train", &stats.train), ("val", &stats.val), ("test", test)] {
        let ds = CocoDataset::load_split(&dir.path().join(split), LoadOptions::default()).unwrap();
        assert_eq!(ds.images.len(), st.images);
        assert_eq!(ds.num_classes(), CLASS_NAMES.len());
        assert_eq!(ds.class_names(), CLASS_NAMES.map(String::from).to_vec());
        let n: usize = ds.images.iter().map(|i| i.objects.len()).sum();
        assert_eq!(n, st.objects);
        for (i, img) in ds.images.iter().enumerate() {
            assert_eq!(img.id, i as u64 + 1);
            assert_eq!((img.width, img.height), (128, 96));
            for o in &img.objects {
                let [x0, y0, x1, y1] = o.bbox;
                assert!(x0 >= 0.0 && y0 >= 0.0 && x1 <= 128.0 && y1 <= 96.0 && x1 > x0 && y1 > y0);
                assert!(!o.iscrowd);
                assert!((o.area - f64::from((x1 - x0) * (y1 - y0))).abs() < 1e-3);
            }
        }
        let raw = CocoFile::read(&dir.path().join(split).join("instances.json")).unwrap();
        for (i, a) in raw.annotations.iter().enumerate() {
            assert_eq!(a.id, i as u64 + 1);
        }
    }
}

#[test]
fn stats_cover_buckets_classes_and_counts() {
    // Render in memory (no files) at the default size.
    let cfg = SynthConfig::default();
    let mut st = SplitStats::new(Split::Train);
    for i in 0..150 {
        let r = render_image(&cfg, Split::Train, i);
        assert_eq!(r.image.dimensions(), (256, 256));
        st.add_image(&RenderedMeta {
            objects: r.objects,
            hidden: r.hidden,
        });
    }
    assert!(st.small > 0 && st.medium > 0 && st.large > 0, "{st}");
    assert!(st.per_class.len() >= 8);
    assert!(st.per_class.iter().all(|c| c.count > 0), "{st}");
    assert!(st.max_objects_per_image <= MAX_OBJECTS);
    assert!(st.empty_images > 0, "some images must be empty: {st}");
    assert_eq!(st.small + st.medium + st.large, st.objects);
    // Roughly balanced classes.
    let mean = st.objects as f64 / st.per_class.len() as f64;
    assert!(
        st.per_class.iter().all(|c| (c.count as f64) > 0.6 * mean),
        "{st}"
    );
    let text = st.to_string();
    assert!(text.contains("small") && text.contains("crescent"));
}

#[test]
fn invalid_configs_are_rejected() {
    let dir = tempfile::tempdir().unwrap();
    for cfg in [
        SynthConfig {
            width: 63,
            ..small_cfg(0)
        },
        SynthConfig {
            height: 5000,
            ..small_cfg(0)
        },
        SynthConfig {
            train: 0,
            val: 0,
            test: 0,
            ..small_cfg(0)
        },
    ] {
        let err = generate(dir.path(), &cfg, None).unwrap_err();
        assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
    }
    // One split may be empty.
    let cfg = SynthConfig {
        train: 2,
        val: 0,
        test: 0,
        ..small_cfg(0)
    };
    let st = generate(dir.path(), &cfg, None).unwrap();
    assert_eq!((st.train.images, st.val.images), (2, 0));
    CocoDataset::load_split(&dir.path().join("val"), LoadOptions::default()).unwrap();
    // No test split asked for: none written, none in the stats.
    assert!(st.test.is_none());
    assert!(!dir.path().join("test").exists());
    assert!(!serde_json::to_string(&st).unwrap().contains("\"test\""));
}

#[test]
fn held_out_test_split_is_its_own_stream_and_leaves_train_and_val_unchanged() {
    // The test split must not repeat an image of train or val (its own stream), and asking
    // for it must not change a byte of train or val (a dataset made before the split existed
    // stays the same dataset).
    let with = tempfile::tempdir().unwrap();
    let without = tempfile::tempdir().unwrap();
    generate(with.path(), &small_cfg(3), None).unwrap();
    let no_test = SynthConfig {
        test: 0,
        ..small_cfg(3)
    };
    generate(without.path(), &no_test, None).unwrap();
    let fw = all_files(with.path());
    let fo = all_files(without.path());
    let not_test: Vec<_> = fw
        .iter()
        .filter(|(p, _)| !p.starts_with("test"))
        .cloned()
        .collect();
    assert!(
        not_test == fo,
        "train/val bytes changed when a test split was added"
    );
    let test_images: Vec<_> = fw
        .iter()
        .filter(|(p, _)| p.starts_with("test/images"))
        .collect();
    assert_eq!(test_images.len(), 5);
    for (p, bytes) in &test_images {
        assert!(
            fo.iter().all(|(_, other)| other != bytes),
            "{} repeats a train/val image",
            p.display()
        );
    }
    // A pure function of (seed, split, index): the same index renders differently per split.
    for i in 0..5 {
        let t = render_image(&small_cfg(3), Split::Test, i);
        let v = render_image(&small_cfg(3), Split::Val, i);
        assert_ne!(t.image.as_raw(), v.image.as_raw());
    }
}

#[test]
fn square_coverage_equals_its_area() {
    // Axis-aligned, pixel-aligned: exact.
    let sq = vec![vec![[10.0, 20.0], [30.0, 20.0], [30.0, 40.0], [10.0, 40.0]]];
    let c = rasterize(&sq, 64, 64);
    assert!((c.sum() - 400.0).abs() < 1e-3, "{}", c.sum());
    assert!(c.cov.iter().all(|&v| v == 1.0 || v == 0.0));
    // Sub-pixel offset and rotation: area preserved, edges fractional.
    let r = 10.0f32;
    let (s, co) = 0.4f32.sin_cos();
    let rot: Vec<Pt> = [[-r, -r], [r, -r], [r, r], [-r, r]]
        .iter()
        .map(|p| [32.3 + co * p[0] - s * p[1], 31.7 + s * p[0] + co * p[1]])
        .collect();
    let c = rasterize(&[rot], 64, 64);
    assert!((c.sum() - 400.0).abs() < 2.0, "{}", c.sum());
    assert!(
        c.cov.iter().any(|&v| v > 0.05 && v < 0.95),
        "edges must be anti-aliased"
    );
    assert!(c.cov.iter().all(|&v| (0.0..=1.0).contains(&v)));
}

#[test]
fn circle_and_ring_coverage_match_analytic_areas() {
    let disc = vec![ellipse(40.2, 39.6, 15.0, 15.0, 128)];
    let c = rasterize(&disc, 80, 80);
    let exact = std::f32::consts::PI * 225.0;
    assert!(
        (c.sum() - exact).abs() / exact < 0.01,
        "{} vs {exact}",
        c.sum()
    );
    let ring = vec![
        ellipse(40.0, 40.0, 20.0, 20.0, 128),
        ellipse(40.0, 40.0, 10.0, 10.0, 128),
    ];
    let c = rasterize(&ring, 80, 80);
    let exact = std::f32::consts::PI * (400.0 - 100.0);
    assert!(
        (c.sum() - exact).abs() / exact < 0.01,
        "{} vs {exact}",
        c.sum()
    );
    // The hole is empty.
    assert_eq!(c.cov[(40 - c.y0) * c.w + (40 - c.x0)], 0.0);
    let shape = Shape { contours: ring };
    assert!((shape.area() - exact).abs() / exact < 0.01);
}

#[test]
fn rasteriser_clips_to_the_canvas() {
    // Half of a 20x20 square hangs off the left edge.
    let sq = vec![vec![[-10.0, 5.0], [10.0, 5.0], [10.0, 25.0], [-10.0, 25.0]]];
    let c = rasterize(&sq, 32, 32);
    assert_eq!((c.x0, c.y0, c.w, c.h), (0, 5, 10, 20));
    assert!((c.sum() - 200.0).abs() < 1e-3);
    let off = vec![vec![[-30.0, 5.0], [-10.0, 5.0], [-10.0, 25.0]]];
    assert_eq!(rasterize(&off, 32, 32).cov.len(), 0);
}

#[test]
fn every_class_shape_is_a_valid_polygon() {
    let mut rng = Rng::new(3);
    for class in 0..CLASS_NAMES.len() {
        for _ in 0..20 {
            let unit = class_shape(class, &mut rng);
            let s = place_shape(&unit, &mut rng, 1.3, 0.7, 2000.0, 256, 256, 0.0);
            let b = s.bbox();
            let box_area = (b[2] - b[0]) * (b[3] - b[1]);
            assert!(
                (box_area - 2000.0).abs() < 1.0,
                "class {class}: box area {box_area}"
            );
            let a = s.area();
            assert!(
                a > 0.15 * box_area && a <= box_area,
                "class {class}: area {a}"
            );
            let cov = rasterize(&s.contours, 256, 256);
            assert!(
                (cov.sum() - a).abs() / a < 0.03,
                "class {class}: {} vs {a}",
                cov.sum()
            );
        }
    }
}

#[test]
fn visible_boxes_bound_exactly_the_drawn_pixels() {
    let mut rng = Rng::new(11);
    let bg = [128.0f32; 3];
    for class in 0..CLASS_NAMES.len() {
        for _ in 0..5 {
            let mut cv = Canvas::new(128, 96);
            cv.fill_with(|_, _| bg);
            let area = rng.uniform(100.0, 4000.0);
            let Some(d) = draw_object(&mut cv, &mut rng, class, area, &[]) else {
                panic!("a lone object is always placed");
            };
            let (objs, hidden) = visible_objects(&cv, std::slice::from_ref(&d));
            assert_eq!(objs.len() + hidden, 1);
            let Some(o) = objs.first() else { continue };
            assert_eq!(o.class, class);
            let [x, y, w, h] = o.bbox;
            // Every visibly changed pixel lies in the box (± the anti-aliased fringe), and
            // each side of the box touches changed pixels.
            let changed = |px: usize, py: usize| dist(cv.px[py * cv.w + px], bg) > 20.0;
            let (mut minx, mut miny, mut maxx, mut maxy) = (usize::MAX, usize::MAX, 0, 0);
            for py in 0..cv.h {
                for px in 0..cv.w {
                    if changed(px, py) {
                        minx = minx.min(px);
                        miny = miny.min(py);
                        maxx = maxx.max(px);
                        maxy = maxy.max(py);
                    }
                }
            }
            let tight = [
                minx as f64,
                miny as f64,
                (maxx + 1) as f64,
                (maxy + 1) as f64,
            ];
            let ours = [x, y, x + w, y + h];
            for k in 0..4 {
                assert!(
                    (tight[k] - ours[k]).abs() <= 1.0,
                    "class {class}: box {ours:?} vs drawn pixels {tight:?}"
                );
            }
            // Fully visible objects: visible pixels ≈ the analytic area.
            let inside =
                d.bbox[0] >= 0.0 && d.bbox[1] >= 0.0 && d.bbox[2] <= 128.0 && d.bbox[3] <= 96.0;
            if inside {
                assert!(
                    (o.visible_fraction - 1.0).abs() < 0.1,
                    "class {class}: {}",
                    o.visible_fraction
                );
            }
        }
    }
}

#[test]
fn occluded_objects_shrink_or_lose_their_box() {
    let mut cv = Canvas::new(100, 100);
    let drawn = [DrawnObject {
        class: 1,
        area: 40.0 * 40.0,
        bbox: [20.0, 20.0, 60.0, 60.0],
    }];
    let sq = vec![vec![[20.0, 20.0], [60.0, 20.0], [60.0, 60.0], [20.0, 60.0]]];
    cv.composite(
        &rasterize(&sq, 100, 100),
        &Paint::solid([255.0; 3]),
        1.0,
        Some(1),
    );
    let (o, hidden) = visible_objects(&cv, &drawn);
    assert_eq!((o.len(), hidden), (1, 0));
    assert_eq!(o[0].bbox, [20.0, 20.0, 40.0, 40.0]);
    // A distractor over the left half: the visible box is the right half.
    let left = vec![vec![[0.0, 0.0], [40.0, 0.0], [40.0, 100.0], [0.0, 100.0]]];
    cv.composite(
        &rasterize(&left, 100, 100),
        &Paint::solid([0.0; 3]),
        1.0,
        Some(0),
    );
    let (o, _) = visible_objects(&cv, &drawn);
    assert_eq!(o[0].bbox, [40.0, 20.0, 20.0, 40.0]);
    assert!((o[0].visible_fraction - 0.5).abs() < 1e-6);
    // Covering 75 %: more than 70 % hidden, so no annotation.
    let more = vec![vec![[0.0, 0.0], [50.0, 0.0], [50.0, 100.0], [0.0, 100.0]]];
    cv.composite(
        &rasterize(&more, 100, 100),
        &Paint::solid([0.0; 3]),
        1.0,
        Some(0),
    );
    let (o, hidden) = visible_objects(&cv, &drawn);
    assert_eq!((o.len(), hidden), (0, 1));
}

#[test]
fn contrast_sees_both_colours_of_a_textured_background() {
    let (red, green) = ([200.0, 20.0, 20.0], [20.0, 200.0, 20.0]);
    let bg: Vec<Rgb> = (0..40)
        .map(|i| if i % 2 == 0 { red } else { green })
        .collect();
    // Far from the mean colour, yet invisible on half the background.
    assert!(dist(red, mix(red, green, 0.5)) > 100.0);
    assert!(contrast(red, &bg) < 1.0);
    assert!(contrast([20.0, 20.0, 220.0], &bg) > 200.0);
    let mut rng = Rng::new(1);
    for _ in 0..50 {
        let c = contrasting_colour(&mut rng, &bg, 80.0);
        assert!(contrast(c, &bg) >= 80.0);
    }
}

#[test]
fn extreme_sizes_render_valid_images() {
    for (w, h) in [(64, 64), (320, 64), (64, 200)] {
        let cfg = SynthConfig {
            width: w,
            height: h,
            ..SynthConfig::default()
        };
        for i in 0..20 {
            let r = render_image(&cfg, Split::Train, i);
            assert_eq!(r.image.dimensions(), (w, h));
            for o in &r.objects {
                let [x, y, bw, bh] = o.bbox;
                assert!(x >= 0.0 && y >= 0.0 && bw > 0.0 && bh > 0.0);
                assert!(x + bw <= f64::from(w) && y + bh <= f64::from(h));
            }
        }
    }
}

#[test]
fn rendered_images_have_valid_objects() {
    let cfg = SynthConfig::default();
    for i in 0..40 {
        let r = render_image(&cfg, Split::Val, i);
        assert!(r.objects.len() <= MAX_OBJECTS);
        for o in &r.objects {
            assert!(o.visible_fraction >= MIN_VISIBLE_FRACTION);
            let [x, y, w, h] = o.bbox;
            assert!(x >= 0.0 && y >= 0.0 && x + w <= 256.0 && y + h <= 256.0 && w > 0.0 && h > 0.0);
        }
    }
}
