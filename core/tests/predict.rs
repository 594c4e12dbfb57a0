//! `predict_file` (`codetr-train predict`): stretch to the model's square, or keep the aspect
//! ratio at the official scale, one image unpadded (padded and masked only when a side falls
//! below the coarsest stride); boxes in the original image's pixels.

use burn::tensor::Device;
use codetr_core::model::DetectorConfig;
use codetr_core::model::detector::pixels_to_tensor;
use codetr_core::model::predict::{predict_file, predict_size};
use codetr_model::{Resize, preprocess};

#[test]
fn predict_size_is_the_official_keep_ratio_size() {
    let official = (Resize::Letterbox, Some([800, 1333]));
    // [h, w] → mmcv's rescale_size at (1333, 800): landscape and portrait alike
    assert_eq!(predict_size([480, 640], 256, official), [800, 1067]);
    assert_eq!(predict_size([640, 480], 256, official), [1067, 800]);
    assert_eq!(predict_size([1080, 1920], 256, official), [750, 1333]);
    // without limits: fitted to the model's square; stretch: the square
    assert_eq!(
        predict_size([480, 640], 256, (Resize::Letterbox, None)),
        [192, 256]
    );
    assert_eq!(
        predict_size([480, 640], 256, (Resize::Stretch, None)),
        [256, 256]
    );
}

/// A 96×48 image with limits [16, 32] runs at 32×16, below `tiny`'s coarsest stride and with
/// fewer tokens than queries: padded (by strides) until the model can take it, the padding
/// masked. The detections equal the model on the image letterboxed into that canvas by the
/// server's preprocessing (`preprocess::letterbox_rgb`), with the valid size given, and
/// differ from the stretched image's. The model itself refuses the unpadded input with an
/// error, not a panic.
#[test]
fn letterboxed_prediction_equals_the_padded_model_run() {
    let dev = Device::flex();
    dev.seed(3);
    let cfg = DetectorConfig::tiny();
    let model = cfg.init(&dev).unwrap();
    let names: Vec<String> = (0..cfg.num_classes).map(|i| format!("c{i}")).collect();
    let (w, h) = (96u32, 48u32);
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        image::Rgb([(x * 2) as u8, (y * 5) as u8, ((x * 7 + y * 3) % 256) as u8])
    });
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.png");
    img.save(&path).unwrap();
    let limits = Some([16, 32]);
    let lb = (Resize::Letterbox, limits);
    assert_eq!(predict_size([h, w], cfg.input_size, lb), [16, 32]);
    let got = predict_file(&model, &names, &path, 0.0, lb).unwrap();
    assert!(!got.is_empty());

    let min = *cfg.level_strides().last().unwrap();
    assert!(min > 32, "the test needs padding: coarsest stride {min}");
    // The first stride multiple with as many tokens as queries (what predict_file pads to).
    let side = (1..)
        .map(|i| i * min)
        .find(|&n| cfg.tokens_at(n, n) >= cfg.transformer.num_queries)
        .unwrap();
    // tiny at its coarsest stride, 64²: 8² + 4² + 2² + 1 tokens
    assert_eq!(cfg.tokens_at(min, min), 85);
    assert!(side > min, "the test needs the token padding: {side}");
    let e = model
        .detect(
            pixels_to_tensor(&vec![0; min * min * 3], 1, min, min, &dev).unwrap(),
            &[[h, w]],
        )
        .map(|_| ())
        .unwrap_err()
        .to_string();
    assert!(e.contains("encoder tokens, fewer than"), "{e}");
    let (canvas, valid) = preprocess::letterbox_rgb(
        img.as_raw(),
        [w, h],
        [side as u32, side as u32],
        limits,
        &mut fast_image_resize::Resizer::new(),
    )
    .unwrap();
    assert_eq!(valid, [16, 32]);
    let x = pixels_to_tensor(&canvas, 1, side, side, &dev).unwrap();
    let (scores, labels, boxes) = model
        .detect_padded(x, Some(&[[16, 32]]), &[[h, w]])
        .unwrap()
        .to_host()
        .unwrap();
    let want: Vec<usize> = (0..scores.len()).collect();
    assert_eq!(got.len(), want.len());
    for (p, i) in got.iter().zip(want) {
        assert_eq!(p.class_id as i64, labels[i]);
        assert!(
            (p.score - scores[i]).abs() <= 1e-5,
            "{} vs {}",
            p.score,
            scores[i]
        );
        for c in 0..4 {
            assert!((p.bbox[c] - boxes[4 * i + c]).abs() <= 1e-3);
        }
        assert!(p.bbox[0] >= 0.0 && p.bbox[2] <= w as f32 && p.bbox[3] <= h as f32);
    }
    let stretched = predict_file(&model, &names, &path, 0.0, (Resize::Stretch, None)).unwrap();
    assert!((stretched[0].score - got[0].score).abs() > 1e-6);
}
