//! `fit` end to end on a small synthetic set: finite, decreasing losses with every term
//! logged; checkpoints that resume to exactly the same weights as an uninterrupted run;
//! clear errors for bad runs.

use std::path::{Path, PathBuf};

use codetr_core::model::checkpoint;
use codetr_data::synth::{self, SynthConfig};
use codetr_train::train::config::FitConfig;
use codetr_train::train::fit::fit;

fn dataset(dir: &Path) {
    synth::generate(
        dir,
        &SynthConfig {
            train: 8,
            val: 4,
            test: 3,
            seed: 5,
            width: 128,
            height: 128,
        },
        None,
    )
    .unwrap();
}

/// A model smaller than `tiny` so a CI step takes well under a second.
fn config(data: &Path, out: PathBuf, steps: u64) -> FitConfig {
    let mut cfg = FitConfig::from_toml(
        r#"
[model]
preset = "tiny"
input_size = 128
[model.transformer]
d_model = 64
ffn_dim = 128
encoder_layers = 1
decoder_layers = 2
num_queries = 20
[schedule]
batch_size = 4
sizes = [128]
lr = 1e-3
warmup_steps = 0
lr_drops = []
[dn]
num_dn = 20
label_noise = 0.5
box_noise = 1.0
"#,
    )
    .unwrap();
    cfg.data.train = data.join("train");
    cfg.data.val = data.join("val");
    cfg.run.out = out;
    cfg.run.workers = 1;
    cfg.run.checkpoint_every = 4;
    cfg.run.keep_last = 5;
    cfg.run.eval_every = 100;
    cfg.schedule.steps = steps;
    cfg
}

fn log_lines(run: &Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(run.join("log.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn trains_logs_every_term_and_loss_decreases() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let run = tmp.path().join("run");
    // the full Co-DETR (K = 2), with the RPN/RoI sampling scaled to 128² images
    let mut cfg = config(tmp.path(), run.clone(), 16);
    cfg.co.k = 2;
    cfg.co.rpn.pre_nms = 300;
    cfg.co.rpn.post_nms = 100;
    cfg.co.roi.samples = 64;
    cfg.co.roi.fc_dim = 64;
    cfg.data.test = Some(tmp.path().join("test"));
    let report = fit(cfg.clone(), false, false).unwrap();
    assert_eq!(report.steps, 16);
    let log = log_lines(&run);
    assert_eq!(log.len(), 16);
    for key in [
        "loss",
        "loss_cls",
        "loss_bbox",
        "loss_iou",
        "d0.loss_cls",
        "dn_loss_cls",
        "d0.dn_loss_bbox",
        "enc_loss_iou",
        "atss.loss_cls",
        "roi.loss_cls",
        "pos1.loss_iou",
        "lr",
        "grad_norm",
    ] {
        for l in &log {
            let v = l[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing: {l}"));
            assert!(v.is_finite(), "{key} = {v}");
        }
    }
    let loss: Vec<f64> = log.iter().map(|l| l["loss"].as_f64().unwrap()).collect();
    let first: f64 = loss[..4].iter().sum::<f64>() / 4.0;
    let last: f64 = loss[12..].iter().sum::<f64>() / 4.0;
    assert!(last < 0.9 * first, "loss did not decrease: {loss:?}");
    // the last step is evaluated and checkpointed; the best model is an inference checkpoint
    assert!(report.final_eval.is_some());
    assert!(run.join("eval.jsonl").is_file());
    let (header, _) = checkpoint::read(&run.join("best/model.ckpt")).unwrap();
    assert_eq!(header.class_names.len(), 10);
    held_out_test_is_reported_not_selected(&run, &tmp.path().join("test"), &report, &header);
    assert!(run.join("checkpoints/step-00000016.ckpt").is_file());
    assert!(run.join("config.toml").is_file());
    // the plot of the run is a real PNG
    let png = run.join("curves.png");
    codetr_train::train::plot::plot_run(&run, &png).unwrap();
    let img = image::open(&png).unwrap();
    assert_eq!((img.width(), img.height()), (1200, 900));
    // a second fresh run into the same dir is refused, not overwritten
    assert!(fit(cfg, false, false).is_err());
}

/// The held-out split is evaluated beside val and logged under "test"; its numbers are those of
/// an independent `validate` of the saved best model on that split; `best/` records them but
/// was picked on val.
fn held_out_test_is_reported_not_selected(
    run: &Path,
    test_dir: &Path,
    report: &codetr_train::train::fit::FitReport,
    best: &checkpoint::CheckpointHeader,
) {
    let evals: Vec<serde_json::Value> = std::fs::read_to_string(run.join("eval.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let last = evals.last().unwrap();
    let logged = last["test"]["AP"].as_f64().expect("test metrics logged");
    let final_test = report.final_test.as_ref().expect("final test eval");
    assert_eq!(logged, final_test.ap);
    assert_eq!(last["AP"].as_f64().unwrap(), report.final_eval.unwrap().ap);
    assert_eq!(best.meta["test"]["AP"].as_f64(), Some(logged));
    assert_eq!(best.meta["val"]["AP"].as_f64(), report.best_ap);
    let device = burn::tensor::Device::flex();
    let (det, _) = checkpoint::load(&run.join("best/model.ckpt"), &device).unwrap();
    let ds = std::sync::Arc::new(
        codetr_data::CocoDataset::load_split(test_dir, Default::default()).unwrap(),
    );
    assert_eq!(ds.images.len(), 3);
    let again = codetr_train::train::fit::validate(
        &det,
        &ds,
        0,
        1,
        (codetr_data::loader::Resize::Stretch, None),
    )
    .unwrap();
    for (k, v) in [
        ("AP", again.ap),
        ("AP50", again.ap50),
        ("AR100", again.ar100),
    ] {
        assert_eq!(last["test"][k].as_f64(), Some(v), "{k}");
    }
}

#[test]
fn resume_continues_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let a = tmp.path().join("a");
    let mut cfg_a = config(tmp.path(), a.clone(), 8);
    cfg_a.schedule.ema = Some(Default::default());
    fit(cfg_a, false, false).unwrap();
    // b = a interrupted after step 4: its newest checkpoint is step 4 and the log ran ahead.
    let b = tmp.path().join("b");
    std::fs::create_dir_all(b.join("checkpoints")).unwrap();
    std::fs::create_dir_all(b.join("best")).unwrap();
    for f in ["config.toml", "log.jsonl", "checkpoints/step-00000004.ckpt"] {
        std::fs::copy(a.join(f), b.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(b.join("config.toml")).unwrap();
    let mut cfg = FitConfig::from_toml(&text).unwrap();
    cfg.run.out = b.clone();
    std::fs::write(b.join("config.toml"), cfg.to_toml().unwrap()).unwrap();
    // the resumed run reads its saved config from the checkpoint; out is the dir we resume
    let mut resume_cfg = cfg.clone();
    resume_cfg.run.out = b.clone();
    fit(resume_cfg, true, false).unwrap();
    let (_, sa) = checkpoint::read(&a.join("checkpoints/step-00000008.ckpt")).unwrap();
    let (_, sb) = checkpoint::read(&b.join("checkpoints/step-00000008.ckpt")).unwrap();
    let model = |s: &Vec<(String, Vec<u8>)>| s.iter().find(|x| x.0 == "model").unwrap().1.clone();
    assert!(
        model(&sa) == model(&sb),
        "resumed weights differ from the uninterrupted run"
    );
    let ema = |s: &Vec<(String, Vec<u8>)>| s.iter().find(|x| x.0 == "ema").unwrap().1.clone();
    assert!(ema(&sa) == ema(&sb), "resumed EMA differs");
    assert!(
        ema(&sa) != model(&sa),
        "the EMA is its own average, not a copy"
    );
    let la = log_lines(&a);
    let lb = log_lines(&b);
    assert_eq!(lb.len(), 8, "log has each step once after resume");
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
    }
}

/// `--accumulate 2`: each step takes two batches (8 images, batch 2 → 2 steps per epoch, so
/// 6 steps cross two epoch boundaries), resumes to the same weights as an uninterrupted run,
/// and is not the one-batch run; more batches per step than an epoch holds is a clear error.
#[test]
fn accumulated_steps_resume_exactly_and_differ_from_single_batches() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let run = |name: &str, accumulate: usize| {
        let mut cfg = config(tmp.path(), tmp.path().join(name), 6);
        cfg.schedule.batch_size = 2;
        cfg.schedule.accumulate = accumulate;
        cfg.run.checkpoint_every = 2;
        fit(cfg.clone(), false, false).unwrap();
        cfg
    };
    let cfg = run("a", 2);
    run("single", 1);
    let weights = |dir: &str, step: u32| {
        let (_, s) = checkpoint::read(
            &tmp.path()
                .join(dir)
                .join(format!("checkpoints/step-{step:08}.ckpt")),
        )
        .unwrap();
        s.into_iter().find(|x| x.0 == "model").unwrap().1
    };
    assert!(
        weights("a", 6) != weights("single", 6),
        "accumulation changed nothing"
    );
    let la = log_lines(&tmp.path().join("a"));
    assert_eq!(la.len(), 6);

    // b = a stopped after step 2 (an epoch boundary is at 2 and 4).
    let b = tmp.path().join("b");
    std::fs::create_dir_all(b.join("checkpoints")).unwrap();
    std::fs::create_dir_all(b.join("best")).unwrap();
    let a = tmp.path().join("a");
    for f in ["config.toml", "checkpoints/step-00000002.ckpt"] {
        std::fs::copy(a.join(f), b.join(f)).unwrap();
    }
    let mut resume_cfg = cfg.clone();
    resume_cfg.run.out = b.clone();
    fit(resume_cfg, true, false).unwrap();
    assert!(
        weights("a", 6) == weights("b", 6),
        "resumed accumulated run differs from the uninterrupted one"
    );
    let lb = log_lines(&b);
    for (x, y) in la.iter().skip(2).zip(&lb) {
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
    }

    // With lr ~0 the weights stay put, so an accumulated step's logged loss is the mean of the
    // single-batch steps' losses on the same two batches (same data order, augmentation and
    // denoising draws: step·N + i).
    let frozen = |name: &str, accumulate: usize, steps: u64| {
        let mut cfg = config(tmp.path(), tmp.path().join(name), steps);
        cfg.schedule.batch_size = 2;
        cfg.schedule.accumulate = accumulate;
        cfg.schedule.lr = 1e-30; // must be > 0; AdamW moves each weight by ~lr: nothing
        fit(cfg, false, false).unwrap();
        log_lines(&tmp.path().join(name))
    };
    let acc = frozen("frozen2", 2, 2);
    let one = frozen("frozen1", 1, 4);
    for s in 0..2 {
        let mean =
            (one[2 * s]["loss"].as_f64().unwrap() + one[2 * s + 1]["loss"].as_f64().unwrap()) / 2.0;
        let got = acc[s]["loss"].as_f64().unwrap();
        assert!(
            (got - mean).abs() <= 1e-5 * mean.abs().max(1.0),
            "step {s}: accumulated loss {got} vs mean of its batches {mean}"
        );
    }

    let mut too_many = config(tmp.path(), tmp.path().join("c"), 2);
    too_many.schedule.batch_size = 2;
    too_many.schedule.accumulate = 5;
    let e = fit(too_many.clone(), false, false).unwrap_err().to_string();
    assert!(e.contains("5 batches per step but an epoch has 4"), "{e}");
    too_many.schedule.accumulate = 0;
    let e = fit(too_many, false, false).unwrap_err().to_string();
    assert!(e.contains("accumulate"), "{e}");
}

/// A dataset and a finished 16-step K = 0 run in `tmp/a` to warm-start from.
fn warm_start_source() -> (tempfile::TempDir, PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let a = tmp.path().join("a");
    fit(config(tmp.path(), a.clone(), 16), false, false).unwrap();
    (tmp, a)
}

/// `[run] init`: a new run that starts from another run's weights (a step checkpoint with its
/// training heads, or an inference checkpoint without them). Same seed and data, so a run
/// that ignored `init` would log exactly the first loss of the run it started from.
#[test]
fn warm_start_takes_the_checkpoints_weights() {
    let (tmp, a) = warm_start_source();
    let first_loss = |run: &Path| log_lines(run)[0]["loss"].as_f64().unwrap();
    let fresh = first_loss(&a);
    for (name, ckpt) in [
        ("b", a.join("checkpoints/step-00000016.ckpt")),
        ("c", a.join("best/model.ckpt")),
    ] {
        let run = tmp.path().join(name);
        let mut cfg = config(tmp.path(), run.clone(), 2);
        cfg.run.init = Some(ckpt.clone());
        fit(cfg, false, false).unwrap();
        let warm = first_loss(&run);
        assert!(
            warm < fresh,
            "{}: first loss {warm} is not below a fresh start's {fresh}",
            ckpt.display()
        );
        let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
        assert!(saved.contains("init = "), "the run's config records init");
    }
    // a checkpoint of another model config is refused, naming the file
    let mut other = config(tmp.path(), tmp.path().join("d"), 2);
    let mut t = other.model["transformer"].as_table().unwrap().clone();
    t.insert("num_queries".into(), toml::Value::Integer(10));
    other
        .model
        .insert("transformer".into(), toml::Value::Table(t));
    other.run.init = Some(a.join("best/model.ckpt"));
    let e = fit(other, false, false).unwrap_err().to_string();
    assert!(
        e.contains("model.ckpt") && e.contains("different config"),
        "{e}"
    );
}

/// The warm start's other two paths. A step checkpoint of a run with other training heads
/// (K = 0, so no ATSS head) still starts a K = 1 run: the detector comes from it and the heads
/// start fresh. A checkpoint made for other classes is refused, naming the file.
#[test]
fn warm_start_from_other_heads_or_other_classes() {
    let (tmp, a) = warm_start_source();
    let k0_step = a.join("checkpoints/step-00000016.ckpt");
    // the one-to-one terms of the last decoder layer: the detector's own loss, which a fresh
    // ATSS head does not enter
    let detector_loss = |run: &Path| {
        let l = &log_lines(run)[0];
        ["loss_cls", "loss_bbox", "loss_iou"]
            .iter()
            .map(|k| l[*k].as_f64().unwrap())
            .sum::<f64>()
    };
    let k1_run = |name: &str, init: Option<PathBuf>| {
        let run = tmp.path().join(name);
        let mut cfg = config(tmp.path(), run.clone(), 1);
        cfg.co.k = 1;
        cfg.run.init = init;
        fit(cfg, false, false).map(|_| run)
    };
    let fresh = detector_loss(&k1_run("fresh", None).unwrap());
    let warm = k1_run("warm", Some(k0_step.clone())).expect("a K = 0 checkpoint starts K = 1");
    let log = &log_lines(&warm)[0];
    assert!(
        log["atss.loss_cls"].as_f64().is_some(),
        "the ATSS head trains: {log}"
    );
    let warm = detector_loss(&warm);
    assert!(
        warm < fresh,
        "detector loss {warm} from the K = 0 checkpoint is not below a fresh start's {fresh}"
    );

    // the same data with one class renamed: the checkpoint's classes no longer match
    let renamed = tmp.path().join("renamed");
    for split in ["train", "val"] {
        let (src, dst) = (tmp.path().join(split), renamed.join(split));
        std::fs::create_dir_all(&dst).unwrap();
        let mut gt: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("instances.json")).unwrap())
                .unwrap();
        gt["categories"][0]["name"] = "not-a-shape".into();
        std::fs::write(dst.join("instances.json"), gt.to_string()).unwrap();
        std::os::unix::fs::symlink(src.join("images"), dst.join("images")).unwrap();
    }
    let mut cfg = config(&renamed, tmp.path().join("classes"), 1);
    cfg.run.init = Some(k0_step);
    let e = fit(cfg, false, false).unwrap_err().to_string();
    assert!(
        e.contains("step-00000016.ckpt")
            && e.contains("made for classes")
            && e.contains("not-a-shape"),
        "{e}"
    );
}

#[test]
fn bad_runs_are_clear_errors() {
    let tmp = tempfile::tempdir().unwrap();
    let mut cfg = config(tmp.path(), tmp.path().join("r"), 4);
    // missing data
    let e = fit(cfg.clone(), false, false).unwrap_err().to_string();
    assert!(e.contains("instances.json"), "{e}");
    cfg.schedule.steps = 0;
    assert!(fit(cfg.clone(), false, false).is_err());
    // nothing to resume
    let e = fit(config(tmp.path(), tmp.path().join("none"), 4), true, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no checkpoints"), "{e}");
    // a test split that is missing, or whose classes are not the training split's
    dataset(tmp.path());
    let mut cfg = config(tmp.path(), tmp.path().join("t1"), 4);
    cfg.data.test = Some(tmp.path().join("nope"));
    let e = fit(cfg.clone(), false, false).unwrap_err().to_string();
    assert!(e.contains("nope") && e.contains("instances.json"), "{e}");
    let other = tmp.path().join("other");
    std::fs::create_dir_all(other.join("images")).unwrap();
    for e in std::fs::read_dir(tmp.path().join("test/images")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), other.join("images").join(e.file_name())).unwrap();
    }
    let json = std::fs::read_to_string(tmp.path().join("test/instances.json")).unwrap();
    std::fs::write(
        other.join("instances.json"),
        json.replace("\"crescent\"", "\"moon\""),
    )
    .unwrap();
    cfg.data.test = Some(other);
    cfg.run.out = tmp.path().join("t2");
    let e = fit(cfg, false, false).unwrap_err().to_string();
    assert!(e.contains("data.test") && e.contains("moon"), "{e}");
}

#[test]
fn k1_trains_with_atss_and_positive_queries() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let run = tmp.path().join("k1");
    let mut cfg = config(tmp.path(), run.clone(), 6);
    cfg.co.k = 1;
    fit(cfg, false, false).unwrap();
    let log = log_lines(&run);
    for key in [
        "atss.loss_cls",
        "atss.loss_bbox",
        "atss.loss_centerness",
        "pos0.loss_cls",
        "pos0.d0.loss_iou",
        "loss_cls",
    ] {
        for l in &log {
            let v = l[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing: {l}"));
            assert!(v.is_finite(), "{key} = {v}");
        }
    }
    // one-to-many: more positive queries than ground-truth boxes
    let q: f64 = log
        .iter()
        .map(|l| l["pos0.uncapped"].as_f64().unwrap())
        .sum();
    let g: f64 = log.iter().map(|l| l["num_gt"].as_f64().unwrap()).sum();
    assert!(q > 2.0 * g, "{q} positive anchors for {g} gts");
    eprintln!("ATSS positives per gt: {:.2}", q / g);
}

#[test]
fn k2_trains_with_faster_rcnn_too() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let run = tmp.path().join("k2");
    let mut cfg = config(tmp.path(), run.clone(), 4);
    cfg.co.k = 2;
    cfg.co.rpn.pre_nms = 300;
    cfg.co.rpn.post_nms = 100;
    cfg.co.roi.samples = 64;
    cfg.co.roi.fc_dim = 64;
    fit(cfg, false, false).unwrap();
    let log = log_lines(&run);
    for key in [
        "rpn.loss_cls",
        "rpn.loss_bbox",
        "roi.loss_cls",
        "roi.loss_iou",
        "pos1.loss_cls",
        "pos1.d0.loss_bbox",
        "pos0.loss_cls",
    ] {
        for l in &log {
            let v = l[key]
                .as_f64()
                .unwrap_or_else(|| panic!("{key} missing: {l}"));
            assert!(v.is_finite(), "{key} = {v}");
        }
    }
    let g: f64 = log.iter().map(|l| l["num_gt"].as_f64().unwrap()).sum();
    for head in ["pos0", "pos1"] {
        let q: f64 = log
            .iter()
            .map(|l| l[format!("{head}.uncapped")].as_f64().unwrap())
            .sum();
        assert!(q > g, "{head}: {q} positives for {g} gts");
        eprintln!("{head} positives per gt: {:.2}", q / g);
    }
}

/// The binary killed with SIGKILL mid-run, then `--resume`: it continues from the last
/// checkpoint and ends with exactly the weights of an uninterrupted run.
#[test]
fn kill_9_then_resume_matches_an_uninterrupted_run() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let bin = env!("CARGO_BIN_EXE_codetr-train");
    let write_cfg = |run: &Path| {
        let mut cfg = config(tmp.path(), run.to_path_buf(), 12);
        cfg.run.checkpoint_every = 2;
        cfg.run.keep_last = 2;
        let path = run.with_extension("toml");
        std::fs::write(&path, cfg.to_toml().unwrap()).unwrap();
        path
    };
    // uninterrupted reference
    let a = tmp.path().join("a");
    let st = std::process::Command::new(bin)
        .args(["fit", "--quiet", "--config"])
        .arg(write_cfg(&a))
        .status()
        .unwrap();
    assert!(st.success());
    // killed as soon as its second checkpoint exists (mid-run, possibly mid-write)
    let b = tmp.path().join("b");
    let mut child = std::process::Command::new(bin)
        .args(["fit", "--quiet", "--config"])
        .arg(write_cfg(&b))
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(300);
    while !b.join("checkpoints/step-00000004.ckpt").exists() {
        assert!(
            std::time::Instant::now() < deadline,
            "no checkpoint appeared"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "finished before it could be killed"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    assert!(!b.join("checkpoints/step-00000012.ckpt").exists());
    let st = std::process::Command::new(bin)
        .args(["fit", "--quiet", "--resume"])
        .arg(&b)
        .status()
        .unwrap();
    assert!(st.success());
    // Parameter ids differ between processes, so compare what the weights compute.
    let dev = burn::tensor::Device::flex();
    let out = |run: &Path| {
        let (m, _) = checkpoint::load(&run.join("checkpoints/step-00000012.ckpt"), &dev).unwrap();
        let px: Vec<u8> = (0..2 * 128 * 128 * 3)
            .map(|i| (i * 7 % 251) as u8)
            .collect();
        let x = codetr_core::model::detector::pixels_to_tensor(&px, 2, 128, 128, &dev).unwrap();
        let o = m.forward(x).unwrap();
        let v: Vec<f32> = o
            .logits
            .last()
            .unwrap()
            .clone()
            .into_data()
            .try_to_vec()
            .unwrap();
        v
    };
    assert!(
        out(&a) == out(&b),
        "resumed weights differ from the uninterrupted run"
    );
    let (la, lb) = (log_lines(&a), log_lines(&b));
    assert_eq!(lb.len(), 12, "each step logged once");
    for (x, y) in la.iter().zip(&lb) {
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
    }
}

/// `codetr-train validate`: a checkpoint over a split; the detections it writes are the ones it
/// evaluated (pycocotools on the written file gives the printed numbers); a bad checkpoint is a
/// clear error and writes nothing.
#[test]
fn validate_writes_the_detections_it_scores() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let bin = env!("CARGO_BIN_EXE_codetr-train");
    let ckpt = tmp.path().join("m.ckpt");
    let st = std::process::Command::new(bin)
        .args(["init", "--preset", "tiny", "--seed", "3", "--out"])
        .arg(&ckpt)
        .arg("--classes-from")
        .arg(tmp.path().join("val/instances.json"))
        .output()
        .unwrap();
    assert!(
        st.status.success(),
        "{}",
        String::from_utf8_lossy(&st.stderr)
    );
    let dt = tmp.path().join("dt.json");
    let val = tmp.path().join("val");
    let out = std::process::Command::new(bin)
        .arg("validate")
        .arg("--checkpoint")
        .arg(&ckpt)
        .arg("--data")
        .arg(&val)
        .arg("--out-detections")
        .arg(&dt)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let ours: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let dets: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(&dt).unwrap()).unwrap();
    assert_eq!(dets.len(), 4 * 100, "4 images × top-100");
    let python = std::env::var("CODETR_PYTHON").expect("CODETR_PYTHON (make test sets it)");
    let refout = std::process::Command::new(python)
        .arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../tests/python/coco_eval_ref.py"
        ))
        .arg(val.join("instances.json"))
        .arg(&dt)
        .output()
        .unwrap();
    assert!(refout.status.success());
    let reference: serde_json::Value = serde_json::from_slice(&refout.stdout).unwrap();
    for k in ["AP", "AP50", "AR1", "AR10", "AR100"] {
        let (a, b) = (ours[k].as_f64().unwrap(), reference[k].as_f64().unwrap());
        assert!((a - b).abs() <= 1e-4, "{k}: ours {a} pycocotools {b}");
    }
    // a truncated checkpoint: exit ≠ 0, a message naming the file, no detections file; the
    // official single-image run and the server's canvases letterbox; they exclude each other;
    // a malformed size is refused by name
    let bad = tmp.path().join("bad.ckpt");
    std::fs::write(&bad, &std::fs::read(&ckpt).unwrap()[..1000]).unwrap();
    let dt2 = tmp.path().join("dt2.json");
    let lb = ["--resize", "letterbox"];
    for (model, args, says) in [
        (&bad, vec![], "bad.ckpt"),
        (&ckpt, vec!["--unpadded"], "letterbox"),
        (&ckpt, vec!["--input-size", "128x128"], "letterbox"),
        (
            &ckpt,
            [&lb[..], &["--unpadded", "--input-size", "128x128"]].concat(),
            "cannot be used with",
        ),
        (
            &ckpt,
            [&lb[..], &["--input-size", "128by128"]].concat(),
            "is not HxW",
        ),
    ] {
        let out = std::process::Command::new(bin)
            .arg("validate")
            .arg("--checkpoint")
            .arg(model)
            .arg("--data")
            .arg(&val)
            .arg("--out-detections")
            .arg(&dt2)
            .args(&args)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success() && err.contains(says),
            "{args:?}: {err}"
        );
        assert!(!dt2.exists());
    }
}

/// Mixed precision: bf16 and f16 products train (finite, falling losses) on the same K = 1 run as
/// f32, their first-step losses are close to f32's but not equal (the half path ran), the
/// checkpoints hold f32 parameters, f16's loss scale follows the dynamic rule in the log and is
/// restored on resume so a resumed f16 run equals the uninterrupted one.
#[test]
fn half_precision_steps_train_and_f16_scaling_resumes_exactly() {
    use codetr_core::model::autocast::Precision;
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let run = |name: &str, p: Precision, steps: u64| {
        let mut cfg = config(tmp.path(), tmp.path().join(name), steps);
        cfg.co.k = 1;
        cfg.schedule.precision = p;
        fit(cfg.clone(), false, false).unwrap();
        (cfg, log_lines(&tmp.path().join(name)))
    };
    let (_, l32) = run("f32", Precision::F32, 12);
    let first32 = l32[0]["loss"].as_f64().unwrap();
    assert!(l32[0].get("loss_scale").is_none(), "f32 logs no scaler");
    for (name, p, tol) in [
        ("bf16", Precision::Bf16, 3e-2),
        ("f16", Precision::F16, 3e-3),
    ] {
        let (_, log) = run(name, p, 12);
        let loss: Vec<f64> = log.iter().map(|l| l["loss"].as_f64().unwrap()).collect();
        assert!(loss.iter().all(|v| v.is_finite()), "{name}: {loss:?}");
        let rel = (loss[0] - first32).abs() / first32;
        assert!(
            rel > 0.0 && rel < tol,
            "{name}: first loss {} vs f32 {first32}",
            loss[0]
        );
        let first: f64 = loss[..4].iter().sum::<f64>() / 4.0;
        let last: f64 = loss[8..].iter().sum::<f64>() / 4.0;
        assert!(
            last < 0.9 * first,
            "{name}: loss did not decrease: {loss:?}"
        );
        let (header, sections) =
            checkpoint::read(&tmp.path().join(name).join("checkpoints/step-00000012.ckpt"))
                .unwrap();
        assert!(!sections.is_empty());
        let text = std::fs::read_to_string(tmp.path().join(name).join("config.toml")).unwrap();
        assert!(text.contains(&format!("precision = \"{name}\"")), "{text}");
        let (det, _) = checkpoint::load(
            &tmp.path().join(name).join("best/model.ckpt"),
            &burn::tensor::Device::flex(),
        )
        .unwrap();
        assert_eq!(header.class_names.len(), 10);
        let w = det.class_heads[0].weight.val();
        assert_eq!(
            w.dtype(),
            burn::tensor::DType::F32,
            "{name}: parameters stay f32"
        );
    }
    // f16: the scale starts at 2^16 and halves after each skipped (overflowed) step, at no
    // other; at 2^16 the first gradients overflow f16, so the skip path runs here
    let (cfg, l16) = run("f16b", Precision::F16, 8);
    assert!(
        l16.iter().any(|l| l["skipped"].as_bool() == Some(true)),
        "no overflow at 2^16: {l16:?}"
    );
    let mut scale = 65536.0;
    for l in &l16 {
        assert_eq!(l["loss_scale"].as_f64(), Some(scale), "{l}");
        if l["skipped"].as_bool().unwrap() {
            scale /= 2.0;
        }
    }
    // resume from step 4: same weights at step 8 as the uninterrupted run
    let a = tmp.path().join("f16b");
    let b = tmp.path().join("f16r");
    std::fs::create_dir_all(b.join("checkpoints")).unwrap();
    for f in ["config.toml", "checkpoints/step-00000004.ckpt"] {
        std::fs::copy(a.join(f), b.join(f)).unwrap();
    }
    let mut resume = cfg.clone();
    resume.run.out = b.clone();
    fit(resume, true, false).unwrap();
    let model = |dir: &Path| {
        let (_, s) = checkpoint::read(&dir.join("checkpoints/step-00000008.ckpt")).unwrap();
        s.into_iter().find(|x| x.0 == "model").unwrap().1
    };
    assert!(model(&a) == model(&b), "resumed f16 run differs");
    let lb = log_lines(&b);
    for (x, y) in l16.iter().skip(4).zip(&lb) {
        assert_eq!(x["loss_scale"], y["loss_scale"], "step {}", x["step"]);
        assert_eq!(x["loss"], y["loss"], "step {}", x["step"]);
    }
}

/// An official Co-DINO checkpoint to a fine-tuning run: `codetr-train import` writes the
/// detector and the file's auxiliary heads, and a `fit --init` run with the [co] it prints
/// starts from both (the fixture's 7 classes on synthetic images whose first 7 categories
/// carry those names).
#[test]
fn import_an_official_checkpoint_then_fine_tune_from_its_heads() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let official = Path::new(env!("CARGO_MANIFEST_DIR")).join("../core/tests/fixtures/official");
    let names = ["person", "bicycle", "car", "dog", "cat", "chair", "cup"];
    let data = tmp.path().join("seven");
    for split in ["train", "val"] {
        let (src, dst) = (tmp.path().join(split), data.join(split));
        std::fs::create_dir_all(&dst).unwrap();
        let mut gt: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(src.join("instances.json")).unwrap())
                .unwrap();
        let cats: Vec<serde_json::Value> = gt["categories"].as_array().unwrap()[..7]
            .iter()
            .zip(names)
            .map(|(c, n)| {
                let mut c = c.clone();
                c["name"] = n.into();
                c
            })
            .collect();
        let kept: Vec<i64> = cats.iter().map(|c| c["id"].as_i64().unwrap()).collect();
        let anns: Vec<serde_json::Value> = gt["annotations"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|a| kept.contains(&a["category_id"].as_i64().unwrap()))
            .cloned()
            .collect();
        gt["categories"] = cats.into();
        gt["annotations"] = anns.into();
        std::fs::write(dst.join("instances.json"), gt.to_string()).unwrap();
        std::os::unix::fs::symlink(src.join("images"), dst.join("images")).unwrap();
    }
    let bin = env!("CARGO_BIN_EXE_codetr-train");
    let ckpt = tmp.path().join("official.ckpt");
    let out = std::process::Command::new(bin)
        .args(["import", "--checkpoint"])
        .arg(official.join("co_dino_small.pth"))
        .arg("--config")
        .arg(official.join("co_dino_small.toml"))
        .arg("--out")
        .arg(&ckpt)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("training heads (K = 2)") && stdout.contains("roi.fc_dim = 32"),
        "{stdout}"
    );

    let run = tmp.path().join("run");
    let mut cfg = config(&data, run.clone(), 1);
    let model: toml::Table =
        toml::from_str(&std::fs::read_to_string(official.join("co_dino_small.toml")).unwrap())
            .unwrap();
    cfg.model = model;
    cfg.schedule.batch_size = 2;
    cfg.co.k = 2;
    cfg.co.query_features = false;
    cfg.co.roi.fc_dim = 32;
    cfg.co.roi.samples = 64;
    cfg.co.rpn.pre_nms = 200;
    cfg.co.rpn.post_nms = 100;
    cfg.run.init = Some(ckpt);
    let path = tmp.path().join("run.toml");
    std::fs::write(&path, cfg.to_toml().unwrap()).unwrap();
    let out = std::process::Command::new(bin)
        .args(["fit", "--config"])
        .arg(&path)
        .env("RUST_LOG", "info")
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    assert!(
        stderr.contains("detector and training heads loaded"),
        "the official heads did not load: {stderr}"
    );
    let log = &log_lines(&run)[0];
    for term in ["atss.loss_cls", "rpn.loss_cls", "roi.loss_cls"] {
        assert!(
            log[term].as_f64().is_some_and(f64::is_finite),
            "{term}: {log}"
        );
    }
}

/// `[data] resize = "letterbox"` end to end on non-square images (160 × 96): a K = 2 run
/// trains on padded batches with every term finite, validates through the padded forward,
/// and records the mode in its saved config.
#[test]
fn letterboxed_k2_run_trains_and_validates() {
    let tmp = tempfile::tempdir().unwrap();
    synth::generate(
        tmp.path(),
        &SynthConfig {
            train: 8,
            val: 4,
            test: 0,
            seed: 6,
            width: 160,
            height: 96,
        },
        None,
    )
    .unwrap();
    let run = tmp.path().join("lb");
    let mut cfg = config(tmp.path(), run.clone(), 4);
    cfg.data.resize = codetr_data::loader::Resize::Letterbox;
    cfg.co.k = 2;
    cfg.co.roi.samples = 64;
    cfg.co.roi.fc_dim = 64;
    cfg.co.rpn.pre_nms = 200;
    cfg.co.rpn.post_nms = 100;
    cfg.run.eval_every = 4;
    let report = fit(cfg, false, false).unwrap();
    let eval = report.final_eval.expect("the run validated");
    assert!(eval.ap.is_finite() && eval.ap >= 0.0);
    let log = log_lines(&run);
    assert_eq!(log.len(), 4);
    for l in &log {
        for k in [
            "loss",
            "atss.loss_cls",
            "rpn.loss_cls",
            "roi.loss_cls",
            "pos1.loss_cls",
        ] {
            assert!(l[k].as_f64().is_some_and(f64::is_finite), "{k}: {l}");
        }
    }
    let saved = std::fs::read_to_string(run.join("config.toml")).unwrap();
    assert!(saved.contains("resize = \"letterbox\""), "{saved}");
}

/// A small Co-DINO Swin (the official Swin-L's layout at 1/12 width) at `rate` stochastic depth.
fn swin_model(rate: f64) -> toml::Table {
    toml::from_str(&format!(
        r#"
preset = "paper-swin-l"
input_size = 128
num_classes = 10
max_detections = 50
[backbone]
embed_dims = 16
depths = [2, 2, 2, 2]
num_heads = [1, 2, 2, 4]
window_size = 4
drop_path_rate = {rate}
[transformer]
d_model = 64
ffn_dim = 128
encoder_layers = 1
decoder_layers = 2
num_queries = 20
"#
    ))
    .unwrap()
}

/// Swin stochastic depth in training (the official Swin-L recipe): the masks change the
/// training forward (losses differ from rate 0 from the first step), are a function of (seed,
/// step) so a resumed run draws exactly what the uninterrupted one drew, and validation never
/// drops anything (the logged val AP is what an independent `validate` of the model gives).
#[test]
fn swin_stochastic_depth_changes_training_and_resumes_exactly() {
    let tmp = tempfile::tempdir().unwrap();
    dataset(tmp.path());
    let run = |name: &str, rate: f64| {
        let mut cfg = config(tmp.path(), tmp.path().join(name), 4);
        cfg.model = swin_model(rate);
        cfg.run.checkpoint_every = 2;
        fit(cfg, false, false).unwrap();
        log_lines(&tmp.path().join(name))
    };
    let a = run("a", 0.5);
    let off = run("off", 0.0);
    let loss = |l: &[serde_json::Value]| -> Vec<f64> {
        l.iter().map(|x| x["loss"].as_f64().unwrap()).collect()
    };
    assert!(loss(&a).iter().all(|v| v.is_finite()), "{:?}", loss(&a));
    assert_ne!(loss(&a)[0], loss(&off)[0], "the masks changed nothing");
    // b = a interrupted after step 2
    let (pa, b) = (tmp.path().join("a"), tmp.path().join("b"));
    std::fs::create_dir_all(b.join("checkpoints")).unwrap();
    std::fs::create_dir_all(b.join("best")).unwrap();
    for f in ["log.jsonl", "checkpoints/step-00000002.ckpt"] {
        std::fs::copy(pa.join(f), b.join(f)).unwrap();
    }
    let text = std::fs::read_to_string(pa.join("config.toml")).unwrap();
    let mut cfg = FitConfig::from_toml(&text).unwrap();
    cfg.run.out = b.clone();
    std::fs::write(b.join("config.toml"), cfg.to_toml().unwrap()).unwrap();
    fit(cfg, true, false).unwrap();
    assert_eq!(loss(&log_lines(&b)), loss(&a), "resumed losses differ");
    // the run's last validation is an unmasked forward: the saved model scores the same
    let evals = std::fs::read_to_string(pa.join("eval.jsonl")).unwrap();
    let last: serde_json::Value = serde_json::from_str(evals.lines().last().unwrap()).unwrap();
    let device = burn::tensor::Device::flex();
    let (det, _) = checkpoint::load(&pa.join("best/model.ckpt"), &device).unwrap();
    let val = std::sync::Arc::new(
        codetr_data::CocoDataset::load_split(&tmp.path().join("val"), Default::default()).unwrap(),
    );
    let again = codetr_train::train::fit::validate(
        &det,
        &val,
        0,
        1,
        (codetr_data::loader::Resize::Stretch, None),
    )
    .unwrap();
    assert_eq!(last["AP"].as_f64(), Some(again.ap));
}

/// A closed stdout (`codetr-train … | head -1`) ends the report, not the command: no panic,
/// exit 0, and the files the command writes are all there.
#[test]
fn closed_stdout_ends_the_report_not_the_work() {
    let bin = env!("CARGO_BIN_EXE_codetr-train");
    let closed = || {
        let (reader, writer) = std::io::pipe().unwrap();
        drop(reader);
        writer
    };
    let out = std::process::Command::new(bin)
        .args(["info", "--preset", "paper-swin-l"])
        .stdout(closed())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{:?}: {err}", out.status);
    assert!(!err.contains("panicked"), "{err}");
    let tmp = tempfile::tempdir().unwrap();
    let data = tmp.path().join("d");
    let out = std::process::Command::new(bin)
        .args([
            "synth", "--train", "2", "--val", "1", "--test", "1", "--out",
        ])
        .arg(&data)
        .stdout(closed())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && !err.contains("panicked"), "{err}");
    for f in [
        "train/instances.json",
        "val/instances.json",
        "test/instances.json",
        "stats.json",
    ] {
        assert!(data.join(f).is_file(), "{f}");
    }
}

/// Each image's detections as (category, score, bbox) sorted by score.
fn by_image(
    dts: &[codetr_data::eval::Detection],
) -> std::collections::BTreeMap<u64, Vec<(u64, f64, [f64; 4])>> {
    let mut m = std::collections::BTreeMap::<u64, Vec<_>>::new();
    for d in dts {
        m.entry(d.image_id)
            .or_default()
            .push((d.category_id, d.score, d.bbox));
    }
    for v in m.values_mut() {
        v.sort_by(|a, b| b.1.total_cmp(&a.1));
    }
    m
}

/// The largest difference between two runs' detections of the same images: each detection of
/// `a` is matched to the nearest one of `b` with its class and a score within 1e-4 (near-equal
/// scores may come in either order); `f64::INFINITY` when one has no match.
fn max_detection_diff(
    a: &[codetr_data::eval::Detection],
    b: &[codetr_data::eval::Detection],
) -> f64 {
    let (a, b) = (by_image(a), by_image(b));
    assert_eq!(
        a.keys().collect::<Vec<_>>(),
        b.keys().collect::<Vec<_>>(),
        "same images"
    );
    let mut worst = 0f64;
    for (id, da) in &a {
        let db = &b[id];
        assert_eq!(da.len(), db.len());
        for x in da {
            let best = db
                .iter()
                .filter(|y| y.0 == x.0 && (y.1 - x.1).abs() <= 1e-4)
                .map(|y| {
                    (0..4)
                        .map(|c| (x.2[c] - y.2[c]).abs())
                        .fold((x.1 - y.1).abs(), f64::max)
                })
                .fold(f64::INFINITY, f64::min);
            worst = worst.max(best);
        }
    }
    worst
}

/// `validate --input-size` (the server's canvases) and `--unpadded` (the official one image at
/// its own size), each against an independent path: a single square canvas equals the
/// loader's letterbox (the server's preprocessing vs the loader's); a canvas exactly the
/// images' keep-ratio size equals the unpadded run (a batch vs one image at a time, masks all
/// valid); of two canvases each image takes the one `pick_canvas` picks, and the padding it
/// saves changes the answer. Bad requests are errors.
#[test]
fn evaluation_inputs_match_the_server_and_the_official_single_image_run() {
    use codetr_data::loader::Resize;
    use codetr_train::train::fit::{EvalInput, detect_split_as};
    let tmp = tempfile::tempdir().unwrap();
    synth::generate(
        tmp.path(),
        &SynthConfig {
            train: 1,
            val: 5,
            test: 0,
            seed: 11,
            width: 160,
            height: 96,
        },
        None,
    )
    .unwrap();
    let cfg = config(tmp.path(), tmp.path().join("run"), 1);
    let mut det = cfg.detector().unwrap();
    let ds = std::sync::Arc::new(
        codetr_data::CocoDataset::load_split(&tmp.path().join("val"), Default::default()).unwrap(),
    );
    det.num_classes = ds.categories.len();
    let device = burn::tensor::Device::flex();
    device.seed(2);
    let model = det.init(&device).unwrap();
    let lb = (Resize::Letterbox, None);
    let run = |input: EvalInput| detect_split_as(&model, &ds, 0, 1, lb, &input).unwrap().1;
    // 96×160 in a 128² canvas keeps its ratio at 77×128
    let keep = [77, 128];
    assert_eq!(
        codetr_model::preprocess::letterbox_size([96, 160], [128, 128], None),
        keep
    );
    let square = run(EvalInput::Square);
    assert_eq!(square.len(), 5 * det.max_detections);
    let canvas = run(EvalInput::Canvases(vec![[128, 128]]));
    let d = max_detection_diff(&square, &canvas);
    assert!(d <= 1e-3, "server canvas vs loader letterbox: {d}");
    let unpadded = run(EvalInput::Unpadded);
    let exact = run(EvalInput::Canvases(vec![keep]));
    let d = max_detection_diff(&unpadded, &exact);
    assert!(d <= 1e-3, "unpadded vs a canvas of its own size: {d}");
    // both canvases fit the image at 77×128: the smaller one (less padding) is picked
    let two = run(EvalInput::Canvases(vec![[128, 128], keep]));
    assert_eq!(max_detection_diff(&two, &exact), 0.0);
    let d = max_detection_diff(&square, &unpadded);
    assert!(d > 1e-3, "padding to 128² changed nothing: {d}");
    // the unpadded run and several canvases letterbox; an empty list is no canvas
    let err = detect_split_as(
        &model,
        &ds,
        0,
        1,
        (Resize::Stretch, None),
        &EvalInput::Unpadded,
    )
    .err()
    .unwrap();
    assert!(err.to_string().contains("letterbox"), "{err}");
    let err = detect_split_as(&model, &ds, 0, 1, lb, &EvalInput::Canvases(vec![]))
        .err()
        .unwrap();
    assert!(err.to_string().contains("no input size"), "{err}");
}
