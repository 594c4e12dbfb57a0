//! Official Co-DINO checkpoints in, against the official model (mmdetection 3.3.0
//! `projects/CO-DETR`, run by tests/reference/make_official_fixtures.py): the same random
//! weights under the official key names, the same images, the detector's outputs compared.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use burn::module::Module;
use burn::store::{BurnToPyTorchAdapter, ModuleSnapshot};
use burn::tensor::{Device, Tensor};
use codetr_core::Error;
use codetr_core::import::{Imported, co_dino, import_co_dino};
use codetr_core::model::DetectorConfig;
use codetr_core::model::detector::pixels_to_tensor;

fn official(name: &str) -> PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures/official")
        .join(name)
}

fn small_config() -> DetectorConfig {
    let text = std::fs::read_to_string(official("co_dino_small.toml")).unwrap();
    DetectorConfig::from_toml(&text).unwrap()
}

fn import(name: &str, cfg: &DetectorConfig) -> codetr_core::Result<Imported> {
    import_co_dino(&official(name), cfg, &Device::flex())
}

struct Case {
    pixels: Vec<u8>,
    shape: [usize; 4],
    scores: Vec<f32>,
    labels: Vec<i64>,
    boxes: Vec<f32>,
}

fn case(prefix: &str) -> Case {
    case_of("co_dino_small", prefix)
}

fn case_of(fixture: &str, prefix: &str) -> Case {
    let bytes = std::fs::read(official(&format!("{fixture}.outputs.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let f32s = |k: &str| -> Vec<f32> {
        st.tensor(&format!("{prefix}.{k}"))
            .unwrap()
            .data()
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect()
    };
    let px = st.tensor(&format!("{prefix}.pixels")).unwrap();
    let s = px.shape();
    Case {
        pixels: px.data().to_vec(),
        shape: [s[0], s[1], s[2], s[3]],
        scores: f32s("scores"),
        labels: st
            .tensor(&format!("{prefix}.labels"))
            .unwrap()
            .data()
            .chunks_exact(8)
            .map(|c| i64::from_le_bytes(c.try_into().unwrap()))
            .collect(),
        boxes: f32s("boxes"),
    }
}

/// Every official detection must have a partner of ours: the same label, the score within
/// `tol` and the box within `tol` × the image side. Partners may swap places only where the
/// scores are that close (a near-tie orders arbitrarily); a detection at the top-k boundary
/// may be replaced by one just as close to it. Returns (max score diff, max box diff / side).
fn compare(ours: (&[f32], &[i64], &[f32]), refs: &Case, k: usize, tol: f32) -> (f32, f32) {
    let side = refs.shape[1].max(refs.shape[2]) as f32;
    let (mut ds, mut db) = (0f32, 0f32);
    for img in 0..refs.shape[0] {
        let r = img * k..(img + 1) * k;
        let kth = refs.scores[r.end - 1];
        let mut taken = vec![false; k];
        for i in r.clone() {
            let best = r
                .clone()
                .filter(|&j| !taken[j - r.start] && ours.1[j] == refs.labels[i])
                .map(|j| {
                    let s = (ours.0[j] - refs.scores[i]).abs();
                    let b = (0..4)
                        .map(|c| (ours.2[4 * j + c] - refs.boxes[4 * i + c]).abs() / side)
                        .fold(0f32, f32::max);
                    (j, s, b)
                })
                .filter(|&(_, s, b)| s <= tol && b <= tol)
                .min_by(|a, b| (a.1 + a.2).total_cmp(&(b.1 + b.2)));
            match best {
                Some((j, s, b)) => {
                    taken[j - r.start] = true;
                    ds = ds.max(s);
                    db = db.max(b);
                }
                None => assert!(
                    refs.scores[i] - kth <= tol,
                    "image {img}: official detection {} (label {}, score {}, box {:?}) has no \
                     partner among ours",
                    i - r.start,
                    refs.labels[i],
                    refs.scores[i],
                    &refs.boxes[4 * i..4 * i + 4]
                ),
            }
        }
    }
    (ds, db)
}

#[test]
fn official_co_dino_forward_matches_mmdetection_without_padding() {
    let cfg = small_config();
    let imported = import("co_dino_small.pth", &cfg).unwrap();
    let refs = case("nopad");
    let [b, h, w, _] = refs.shape;
    let dev = Device::flex();
    let images = pixels_to_tensor(&refs.pixels, b, h, w, &dev).unwrap();
    let det = imported
        .model
        .detect(images, &vec![[h as u32, w as u32]; b])
        .unwrap();
    let (s, l, bx) = det.to_host().unwrap();
    let k = cfg.max_detections;
    assert_eq!(s.len(), b * k);
    let (ds, db) = compare((&s, &l, &bx), &refs, k, 1e-4);
    eprintln!(
        "official Co-DINO vs ours, batch {b}, {h}x{w}, no padding: scores {ds:.2e}, boxes/side {db:.2e}"
    );
    // Exact label agreement everywhere the order is not a near-tie.
    let same = l.iter().zip(&refs.labels).filter(|(a, b)| a == b).count();
    assert!(
        same * 10 >= l.len() * 9,
        "{same}/{} labels in the same place",
        l.len()
    );
}

#[test]
fn official_co_dino_forward_matches_mmdetection_with_padding() {
    // Image 0 fills the 128² canvas, image 1 is 96 × 112 top-left with padding right and
    // below: the official model masks it (position encoding, valid ratios, values,
    // proposals) and decodes its boxes over the valid region.
    let cfg = small_config();
    let imported = import("co_dino_small.pth", &cfg).unwrap();
    let refs = case("pad");
    let [b, h, w, _] = refs.shape;
    let valid = valid_sizes();
    assert_eq!(valid, vec![[128, 128], [96, 112]]);
    let dev = Device::flex();
    let images = pixels_to_tensor(&refs.pixels, b, h, w, &dev).unwrap();
    let orig: Vec<[u32; 2]> = valid.iter().map(|&[h, w]| [h as u32, w as u32]).collect();
    let det = imported
        .model
        .detect_padded(images.clone(), Some(&valid), &orig)
        .unwrap();
    let (s, l, bx) = det.to_host().unwrap();
    let k = cfg.max_detections;
    let (ds, db) = compare((&s, &l, &bx), &refs, k, 1e-4);
    eprintln!(
        "official Co-DINO vs ours, batch {b}, {h}x{w}, image 1 padded to 96x112: scores \
         {ds:.2e}, boxes/side {db:.2e}"
    );
    // The mask matters: the same batch read as unpadded is far from the official output.
    let plain = imported.model.detect(images, &orig).unwrap();
    let (ps, _, _) = plain.to_host().unwrap();
    let off = ps[k..]
        .iter()
        .zip(&refs.scores[k..])
        .map(|(a, b)| (a - b).abs())
        .fold(0f32, f32::max);
    assert!(
        off > 1e-2,
        "unpadded reading of image 1 is within {off} of the official"
    );
}

/// `pad.valid` of the fixture: `[h, w]` per image.
fn valid_sizes() -> Vec<[usize; 2]> {
    valid_sizes_of("co_dino_small")
}

fn valid_sizes_of(fixture: &str) -> Vec<[usize; 2]> {
    let bytes = std::fs::read(official(&format!("{fixture}.outputs.safetensors"))).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    st.tensor("pad.valid")
        .unwrap()
        .data()
        .chunks_exact(16)
        .map(|c| {
            let v = |o: usize| i64::from_le_bytes(c[o..o + 8].try_into().unwrap()) as usize;
            [v(0), v(8)]
        })
        .collect()
}

#[test]
fn import_reports_every_tensor_and_reads_the_class_names() {
    let cfg = small_config();
    let imp = import("co_dino_small.pth", &cfg).unwrap();
    let r = &imp.report;
    assert_eq!(imp.config.num_classes, 7);
    assert_eq!(
        imp.class_names,
        ["person", "bicycle", "car", "dog", "cat", "chair", "cup"]
    );
    let training: usize = r.training_only.values().map(|(t, _)| t).sum();
    assert_eq!(r.detector_tensors + training + r.counters, r.tensors);
    for group in [
        "RPN head",
        "RoI head",
        "ATSS head",
        "denoising label embedding",
        "auxiliary-head pyramid adapter",
        "positive-query projections",
    ] {
        assert!(r.training_only.contains_key(group), "{group}: {r:?}");
    }
    assert_eq!(
        r.detector_param_count() + r.bn_statistics,
        imp.model.num_params()
    );
    assert!(r.bn_statistics > 0);
    assert_eq!(r.layout.container.as_deref(), Some("state_dict"));
    assert_eq!(imp.sha256.len(), 64);
}

#[test]
fn sense_x_layout_imports_the_same_weights() {
    let cfg = small_config();
    let a = import("co_dino_small.pth", &cfg).unwrap();
    let b = import("co_dino_small_sensex.pth", &cfg).unwrap();
    assert_eq!(b.report.layout.stripped_prefix.as_deref(), Some("module."));
    assert_eq!(b.report.layout.outside, 1, "the optimizer's tensor");
    assert_eq!(a.class_names, b.class_names, "meta.CLASSES");
    assert_eq!(host(&a.model), host(&b.model));
}

/// Every tensor of a detector, by path.
fn host(m: &codetr_core::model::Detector) -> BTreeMap<String, Vec<f32>> {
    m.collect(None, None, false)
        .into_iter()
        .map(|t| {
            let bytes = t.to_bytes().unwrap();
            let v = bytes
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            (t.name.clone(), v)
        })
        .collect()
}

/// The key lists of the full-size official R50 model (both codebases): every key has a home,
/// and the detector's keys are exactly our paper-r50 detector's tensors, shape for shape.
#[test]
fn paper_r50_keys_cover_our_detector_exactly() {
    // The official count (PyTorch parameters: BatchNorm running statistics are buffers).
    let (ours, params) = torch_view(&DetectorConfig::paper_r50());
    assert_eq!(params, 48_044_300);
    check_key_lists(&ours, &["keys_mmdet3_r50.txt", "keys_sensex_r50.txt"]);
}

/// Every key of the official lists has a home, and the detector's keys are exactly `ours`,
/// shape for shape.
fn check_key_lists(ours: &BTreeSet<(String, Vec<usize>)>, lists: &[&str]) {
    for list in lists {
        let text = std::fs::read_to_string(official(list)).unwrap();
        let mut mapped = BTreeSet::new();
        for line in text.lines() {
            let (key, shape) = line.split_once(' ').unwrap();
            let shape: Vec<usize> = shape
                .trim_matches(|c| c == '(' || c == ')')
                .split(',')
                .filter(|s| !s.trim().is_empty())
                .map(|s| s.trim().parse().unwrap())
                .collect();
            match co_dino::map_key(key) {
                None => panic!("{list}: {key} has no home"),
                Some(co_dino::Target::Detector(p) | co_dino::Target::DetectorMergeOrder(p)) => {
                    mapped.insert((p, shape));
                }
                Some(co_dino::Target::DetectorPacked(ps)) => {
                    let mut s = shape.clone();
                    s[0] /= 3;
                    for p in ps {
                        mapped.insert((p, s.clone()));
                    }
                }
                Some(_) => {}
            }
        }
        let missing: Vec<_> = ours.difference(&mapped).collect();
        let extra: Vec<_> = mapped.difference(ours).collect();
        assert!(
            missing.is_empty() && extra.is_empty(),
            "{list}: ours without an official key {missing:?}; official keys with no tensor of ours {extra:?}"
        );
    }
}

/// Our tensors as PyTorch names them, with shapes, and the PyTorch parameter count.
fn torch_view(cfg: &DetectorConfig) -> (BTreeSet<(String, Vec<usize>)>, usize) {
    let model = cfg.init(&Device::flex()).unwrap();
    let ours: BTreeSet<(String, Vec<usize>)> = model
        .collect(None, Some(Box::new(BurnToPyTorchAdapter)), false)
        .into_iter()
        .map(|t| (t.name.clone(), t.shape.to_vec()))
        .collect();
    let params = ours
        .iter()
        .filter(|(n, _)| !n.ends_with("running_mean") && !n.ends_with("running_var"))
        .map(|(_, s)| s.iter().product::<usize>())
        .sum();
    (ours, params)
}

/// The full-size official Co-DINO Swin-L (both codebases' key lists, made by
/// make_official_fixtures.py --swin-keys): every key has a home and our paper-swin-l is the
/// same detector, tensor for tensor: 218,312,064 parameters (the paper's 218M).
#[test]
fn paper_swin_l_keys_cover_our_detector_exactly() {
    let (ours, params) = torch_view(&DetectorConfig::paper_swin_l());
    assert_eq!(params, 218_312_064);
    check_key_lists(&ours, &["keys_mmdet3_swin_l.txt", "keys_sensex_swin_l.txt"]);
}

fn swin_config() -> DetectorConfig {
    let text = std::fs::read_to_string(official("co_dino_swin_small.toml")).unwrap();
    DetectorConfig::from_toml(&text).unwrap()
}

/// The official Co-DINO with mmdetection's Swin backbone (window 7 on a 120² canvas: maps of
/// 30, 15, 8 and 4, so every stage pads its windows and stage 1 merges an odd map), batch 2,
/// without and with padding.
#[test]
fn official_swin_co_dino_matches_mmdetection() {
    let cfg = swin_config();
    let imported =
        import_co_dino(&official("co_dino_swin_small.pth"), &cfg, &Device::flex()).unwrap();
    assert_eq!(imported.report.checked_buffers, 10, "one index per block");
    let dev = Device::flex();
    let k = cfg.max_detections;
    for prefix in ["nopad", "pad"] {
        let refs = case_of("co_dino_swin_small", prefix);
        let [b, h, w, _] = refs.shape;
        let images = pixels_to_tensor(&refs.pixels, b, h, w, &dev).unwrap();
        let det = if prefix == "pad" {
            let valid = valid_sizes_of("co_dino_swin_small");
            assert_eq!(valid, vec![[120, 120], [88, 104]]);
            let orig: Vec<[u32; 2]> = valid.iter().map(|&[h, w]| [h as u32, w as u32]).collect();
            imported.model.detect_padded(images, Some(&valid), &orig)
        } else {
            imported
                .model
                .detect(images, &vec![[h as u32, w as u32]; b])
        };
        let (s, l, bx) = det.unwrap().to_host().unwrap();
        let (ds, db) = compare((&s, &l, &bx), &refs, k, 1e-4);
        eprintln!(
            "official Co-DINO Swin vs ours, batch {b}, {h}x{w}, {prefix}: scores {ds:.2e}, \
             boxes/side {db:.2e}"
        );
    }
}

/// Sense-X's Swin checkpoints (Microsoft's module names, block-major patch merges) give the
/// same model as mmdetection 3.x's: the fixture's two files hold the same weights in the two
/// layouts (checked in Python on Sense-X's own SwinTransformerV1: 2.9e-6).
#[test]
fn sense_x_swin_layout_imports_the_same_weights() {
    let cfg = swin_config();
    let dev = Device::flex();
    let a = import_co_dino(&official("co_dino_swin_small.pth"), &cfg, &dev).unwrap();
    let b = import_co_dino(&official("co_dino_swin_small_sensex.pth"), &cfg, &dev).unwrap();
    assert_eq!(b.report.layout.stripped_prefix.as_deref(), Some("module."));
    assert_eq!(host(&a.model), host(&b.model));
    // A ResNet config for a Swin file (and the reverse) says which preset to use.
    let msg = import_co_dino(&official("co_dino_swin_small.pth"), &small_config(), &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("Swin Transformer") && msg.contains("paper-swin-l"),
        "{msg}"
    );
    let msg = import_co_dino(&official("co_dino_small.pth"), &cfg, &dev)
        .err()
        .unwrap()
        .to_string();
    assert!(msg.contains("paper-r50"), "{msg}");
    // Without a config, the CLIs start from the official preset of the file's backbone.
    let preset = |f: &str| {
        let sd = codetr_core::import::pth::StateDict::open(&official(f)).unwrap();
        codetr_core::import::official_preset(&sd).preset
    };
    assert_eq!(preset("co_dino_swin_small_sensex.pth"), "paper-swin-l");
    assert_eq!(preset("co_dino_small.pth"), "paper-r50");
}

#[test]
fn tensors_that_do_not_fit_are_listed_and_nothing_is_built() {
    let cfg = small_config();
    // A tensor of no Co-DINO part, and almost everything missing.
    let err = import("co_dino_small_bad.pth", &cfg).err().unwrap();
    let msg = err.to_string();
    assert!(matches!(err, Error::Import { .. }), "{msg}");
    assert!(msg.contains("mask_head.conv_logits.weight"), "{msg}");
    assert!(
        msg.contains("not in the checkpoint") && msg.contains("backbone.conv1.weight"),
        "{msg}"
    );

    // A config with a different width: every transformer tensor is mis-shaped.
    let mut narrow = cfg.clone();
    narrow.transformer.ffn_dim = 96;
    let msg = import("co_dino_small.pth", &narrow)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("do not fit") && msg.contains("ffn.linear1.weight"),
        "{msg}"
    );
    assert!(
        msg.contains("[128, 64]") && msg.contains("[96, 64]") || msg.contains("[64, 128]"),
        "{msg}"
    );

    // Fewer layers than the file: the extra layer's tensors have no place.
    let mut shallow = cfg.clone();
    shallow.transformer.decoder_layers = 1;
    let msg = import("co_dino_small.pth", &shallow)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("no place") && msg.contains("decoder.layers.1."),
        "{msg}"
    );

    // More layers than the file: ours are missing.
    let mut deep = cfg;
    deep.transformer.encoder_layers = 3;
    let msg = import("co_dino_small.pth", &deep)
        .err()
        .unwrap()
        .to_string();
    assert!(
        msg.contains("not in the checkpoint") && msg.contains("encoder.layers.2."),
        "{msg}"
    );
}

#[test]
fn unreadable_files_are_errors_not_panics() {
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let bytes = std::fs::read(official("co_dino_small.pth")).unwrap();
    for (name, data) in [
        ("truncated.pth", bytes[..bytes.len() / 2].to_vec()),
        ("empty.pth", Vec::new()),
        ("text.pth", b"not a checkpoint".to_vec()),
    ] {
        let p = dir.path().join(name);
        std::fs::write(&p, data).unwrap();
        let err = import_co_dino(&p, &cfg, &Device::flex()).err();
        assert!(err.is_some(), "{name} imported");
    }
    let err = import_co_dino(&dir.path().join("absent.pth"), &cfg, &Device::flex()).err();
    assert!(err.unwrap().to_string().contains("no such file"));
}

/// A `torch.save` archive whose root name has 21 characters: its first central-directory entry
/// is as long as the ZIP64 end records, and the ZIP reader under burn's misreads it. It is read
/// through a copy without those (redundant) records: the tensors, the class names and the
/// file's own digest come through, and the copy is gone afterwards.
#[test]
fn an_archive_whose_zip64_records_mislead_the_zip_reader_is_read() {
    use codetr_core::import::pth::{StateDict, zip64_tail_misread};
    let path = official("zip64_tail.pth");
    assert!(zip64_tail_misread(&path).unwrap().is_some());
    assert!(
        zip64_tail_misread(&official("co_dino_small.pth"))
            .unwrap()
            .is_none(),
        "an ordinary torch.save archive is read as it is"
    );
    let sd = StateDict::open(&path).unwrap();
    assert!(sd.layout.zip64_records_set_aside);
    assert_eq!(sd.class_names, ["a", "b"]);
    let w = codetr_core::import::pth::read_f32(&sd.tensors["w"]).unwrap();
    assert_eq!(w.shape().to_vec(), [2, 3]);
    assert_eq!(
        w.try_to_vec::<f32>().unwrap(),
        [0.0, 1.0, 2.0, 3.0, 4.0, 5.0]
    );
    let b = codetr_core::import::pth::read_f32(&sd.tensors["b"]).unwrap();
    assert_eq!(b.try_to_vec::<f32>().unwrap(), [0.5, -1.0]);
    use sha2::Digest;
    let digest = sha2::Sha256::digest(std::fs::read(&path).unwrap());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(sd.sha256, hex, "the digest is the original file's");
    let ours = format!("codetr-{}-", std::process::id());
    let left = std::fs::read_dir(std::env::temp_dir())
        .unwrap()
        .filter_map(|e| e.ok())
        .any(|e| e.file_name().to_string_lossy().starts_with(&ours));
    assert!(!left, "the repaired copy is removed");
}

/// The file's `meta` unpickles to `os.system("touch /tmp/codetr-pickle-executed")` under
/// `torch.load(weights_only=False)`; parsing it must not run anything.
#[test]
fn a_pickle_that_would_run_code_is_only_parsed() {
    let marker = std::path::Path::new("/tmp/codetr-pickle-executed");
    let _ = std::fs::remove_file(marker);
    let _ = import("co_dino_small_evil.pth", &small_config());
    assert!(!marker.exists(), "reading the checkpoint ran its pickle");
}

#[test]
fn imported_model_output_is_finite_on_a_plain_image() {
    // The f32 path end to end on a batch of one at the preset's size: no NaN from the import.
    let cfg = small_config();
    let imp = import("co_dino_small.pth", &cfg).unwrap();
    let dev = Device::flex();
    let x: Tensor<4> = Tensor::full([1, 128, 128, 3], 114.0, &dev);
    let d = imp.model.detect(x, &[[128, 128]]).unwrap();
    let (s, _, b) = d.to_host().unwrap();
    assert!(s.iter().chain(&b).all(|v| v.is_finite()));
}

/// Importing the same file twice gives parameters with different (random) ids, so the
/// checkpoints' `model` sections differ byte-wise; their identity, the weights' digest, is the
/// same, and another model's is not.
#[test]
fn the_same_weights_have_the_same_identity_across_saves() {
    use codetr_core::model::checkpoint;
    let cfg = small_config();
    let dir = tempfile::tempdir().unwrap();
    let save = |name: &str, file: &str| {
        let imp = import(file, &cfg).unwrap();
        let p = dir.path().join(name);
        checkpoint::save(
            &p,
            &imp.model,
            &imp.class_names,
            0,
            serde_json::json!({}),
            vec![],
        )
        .unwrap()
    };
    let (a, b) = (
        save("a.ckpt", "co_dino_small.pth"),
        save("b.ckpt", "co_dino_small.pth"),
    );
    assert_ne!(
        a.model_sha256(),
        b.model_sha256(),
        "parameter ids are in the record"
    );
    assert_eq!(a.identity(), b.identity());
    assert_eq!(a.identity().map(str::len), Some(64));
    let (reread, _) = checkpoint::read(&dir.path().join("a.ckpt")).unwrap();
    assert_eq!(reread.identity(), a.identity());
    let mut other = import("co_dino_small.pth", &cfg).unwrap();
    other.model.level_embed =
        burn::module::Param::from_tensor(other.model.level_embed.val() + 1e-3);
    assert_ne!(
        checkpoint::weights_sha256(&other.model).unwrap(),
        a.identity().unwrap()
    );
}
