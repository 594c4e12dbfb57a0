//! `codetr-train fit`: the training loop with atomic, resumable checkpoints (model + training
//! heads + optimizer + step; the data order and the denoising noise are functions of (seed,
//! step), so nothing else needs saving), a JSONL log of every loss term, periodic COCO mAP on
//! the val split and the best checkpoint kept apart.
//!
//! Run dir: `config.toml` (resolved), `log.jsonl`, `eval.jsonl`, `checkpoints/step-N.ckpt`
//! (last few), `best/model.ckpt`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use burn::module::Module;
use burn::store::ModuleRecord;
use burn::tensor::{Bytes, Device};
use serde::{Deserialize, Serialize};

use super::codetr::{CoDetr, TrainHeads};
use super::config::FitConfig;
use super::ema::ema_update;
use super::optim::{adamw, clip_factor, global_grad_norm, scale_grads, split_grads};
use crate::error::{Error, Result};
use burn::optim::{GradientsAccumulator, GradientsParams};
use codetr_core::model::detector::pixels_to_tensor;
use codetr_core::model::init::seeded_on_host;
use codetr_core::model::{Detector, checkpoint};
use codetr_data::coco::{CocoDataset, CocoFile, LoadOptions};
use codetr_data::eval::{Detection, EvalSummary, coco_detections, evaluate};
use codetr_data::loader::Batch;
use codetr_data::loader::{Loader, LoaderConfig, Resize};
use codetr_data::rng::Rng;

use super::loss_scale::{LossScale, ScaledStep};
use codetr_core::model::autocast::Autocast;
use codetr_core::model::drop_path::StochasticDepth;

/// What a checkpoint records about the run besides the weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimizer steps done.
    pub step: u64,
    pub best_ap: Option<f64>,
    pub best_step: Option<u64>,
    /// The run's resolved config (resume checks it is unchanged).
    pub config: FitConfig,
    /// The f16 loss scaler (fixed at 1 for f32 and bf16).
    #[serde(default)]
    pub loss_scale: LossScale,
}

fn ck_err(path: &Path, m: impl Into<String>) -> Error {
    Error::Checkpoint {
        path: path.to_path_buf(),
        message: m.into(),
    }
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> Error + '_ {
    move |e| Error::io(path, e)
}

/// Saves the full training state atomically.
fn save_train(
    path: &Path,
    model: &CoDetr,
    ema: Option<&Detector>,
    optim: &burn::optim::ModuleOptimizer,
    state: &TrainState,
    class_names: &[String],
    meta: serde_json::Value,
) -> Result<()> {
    let heads = model
        .heads
        .clone()
        .into_record()
        .into_bytes()
        .map_err(|e| ck_err(path, format!("cannot serialise the training heads: {e}")))?;
    let opt = optim
        .into_bytes()
        .map_err(|e| ck_err(path, format!("cannot serialise the optimizer: {e}")))?;
    let st = serde_json::to_vec(state).map_err(|e| ck_err(path, e.to_string()))?;
    let mut sections = vec![
        ("train_heads".into(), heads.to_vec()),
        ("optimizer".into(), opt.to_vec()),
        ("train_state".into(), st),
    ];
    if let Some(e) = ema {
        let bytes = e
            .clone()
            .into_record()
            .into_bytes()
            .map_err(|e| ck_err(path, format!("cannot serialise the EMA weights: {e}")))?;
        sections.push(("ema".into(), bytes.to_vec()));
    }
    checkpoint::save(
        path,
        &model.detector,
        class_names,
        state.step,
        meta,
        sections,
    )?;
    Ok(())
}

/// Loads what `save_train` wrote, on `device` (an autodiff device).
type Loaded = (
    CoDetr,
    Option<Detector>,
    burn::optim::ModuleOptimizer,
    TrainState,
);

fn load_train(path: &Path, device: &Device) -> Result<Loaded> {
    let (detector, _) = checkpoint::load(path, device)?;
    let (_, sections) = checkpoint::read(path)?;
    let section = |name: &str| {
        sections
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, b)| b.clone())
            .ok_or_else(|| {
                ck_err(
                    path,
                    format!("no `{name}` section (not a training checkpoint)"),
                )
            })
    };
    let state: TrainState = serde_json::from_slice(&section("train_state")?)
        .map_err(|e| ck_err(path, format!("train_state: {e}")))?;
    let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(section("train_heads")?))
        .map_err(|e| ck_err(path, format!("train_heads: {e}")))?;
    let heads = TrainHeads::new(
        detector.config(),
        state.config.co.k,
        &state.config.co,
        device,
    )?
    .load_saved(record)
    .map_err(|e| ck_err(path, format!("train_heads do not fit: {e}")))?;
    let optim = adamw(state.config.schedule.weight_decay)
        .from_bytes(Bytes::from_bytes_vec(section("optimizer")?))
        .map_err(|e| ck_err(path, format!("optimizer: {e}")))?;
    let ema = match sections.iter().find(|(n, _)| n == "ema") {
        None => None,
        Some((_, bytes)) => {
            let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes.clone()))
                .map_err(|e| ck_err(path, format!("ema: {e}")))?;
            Some(
                detector
                    .config()
                    .init(&device.clone().inner())?
                    .try_load_record(record)
                    .map_err(|e| ck_err(path, format!("ema weights do not fit: {e}")))?,
            )
        }
    };
    Ok((CoDetr { detector, heads }, ema, optim, state))
}

/// The model of a warm-started run (`[run] init`): the detector from `path`, which must have
/// been made for `det` and `class_names`; the training heads from it as well when it is a step
/// checkpoint of a run with the same heads, else freshly drawn from the run's seed (inference
/// checkpoints hold no heads: the aux heads and the dn label embedding are dropped from them).
fn warm_start(
    path: &Path,
    det: &codetr_core::model::DetectorConfig,
    class_names: &[String],
    cfg: &FitConfig,
    device: &Device,
) -> Result<CoDetr> {
    let co = &cfg.co;
    let detector = checkpoint::load_expecting(path, det, device)?;
    let (header, sections) = checkpoint::read(path)?;
    if header.class_names != class_names {
        return Err(ck_err(
            path,
            format!(
                "made for classes {:?}, but the training data has {:?}",
                header.class_names, class_names
            ),
        ));
    }
    let fresh = seeded_on_host(cfg.run.seed, device, |host| {
        TrainHeads::new(det, co.k, co, host)
    })?;
    let heads = match sections.into_iter().find(|(n, _)| n == "train_heads") {
        None => {
            tracing::info!(path = %path.display(), step = header.step,
                "warm start: detector weights loaded, training heads start fresh");
            fresh
        }
        Some((_, bytes)) => {
            let record = ModuleRecord::from_bytes(Bytes::from_bytes_vec(bytes))
                .map_err(|e| ck_err(path, format!("train_heads: {e}")))?;
            // A step checkpoint of a run with other heads (another K) is still a valid start
            // for the detector; its heads are not.
            match fresh.clone().load_saved(record) {
                Ok(h) => {
                    tracing::info!(path = %path.display(), step = header.step,
                        "warm start: detector and training heads loaded");
                    h
                }
                Err(e) => {
                    tracing::warn!(path = %path.display(), error = %e,
                        "warm start: the checkpoint's training heads do not fit this run's; they start fresh");
                    fresh
                }
            }
        }
    };
    Ok(CoDetr { detector, heads })
}

/// Runs `detector` over (up to `limit`) images of `ds` and returns COCO mAP against its json.
/// `limits`: the letterbox's `[short, long]` scale caps (see [`detect_split`]).
pub fn validate(
    detector: &Detector,
    ds: &Arc<CocoDataset>,
    limit: usize,
    workers: usize,
    (resize, limits): (Resize, Option<[u32; 2]>),
) -> Result<EvalSummary> {
    let (gt, dts) = detect_split(detector, ds, limit, workers, (resize, limits))?;
    Ok(evaluate(&gt, &ds.json_path, &dts)?)
}

/// Runs `detector` over (up to `limit`) images of `ds` (the evaluation resize: stretched to
/// the square, or letterboxed into it with the padding masked, its scale capped by `limits`
/// `[short, long]` when given) and returns the ground truth of those images and every
/// detection, in the COCO results format.
pub fn detect_split(
    detector: &Detector,
    ds: &Arc<CocoDataset>,
    limit: usize,
    workers: usize,
    (resize, limits): (Resize, Option<[u32; 2]>),
) -> Result<(CocoFile, Vec<Detection>)> {
    let size = detector.config().input_size;
    let mut subset = (**ds).clone();
    if limit > 0 && subset.images.len() > limit {
        subset.images.truncate(limit);
    }
    let ids: std::collections::HashSet<u64> = subset.images.iter().map(|i| i.id).collect();
    let loader = Loader::new(
        Arc::new(subset),
        LoaderConfig {
            letterbox_limits: limits,
            ..LoaderConfig::eval(8, size, workers, resize)
        },
    )?;
    let device = detector.level_embed.val().device();
    let mut dts = Vec::new();
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let s = batch.size as usize;
        let x = pixels_to_tensor(&batch.pixels, batch.len(), s, s, &device)?;
        let sizes: Vec<[u32; 2]> = batch.targets.iter().map(|t| t.orig_size).collect();
        let det = detector.detect_padded(x, batch.padded().as_deref(), &sizes)?;
        let (scores, labels, boxes) = det.to_host()?;
        let k = scores.len() / batch.len().max(1);
        for (i, t) in batch.targets.iter().enumerate() {
            let r = i * k..(i + 1) * k;
            dts.extend(coco_detections(
                t.image_id,
                &labels[r.clone()],
                &scores[r.clone()],
                &boxes[r.start * 4..r.end * 4],
                &ds.categories,
            ));
        }
    }
    let mut gt = CocoFile::read(&ds.json_path)?;
    gt.images.retain(|i| ids.contains(&i.id));
    gt.annotations.retain(|a| ids.contains(&a.image_id));
    Ok((gt, dts))
}

/// How [`detect_split_as`] brings a split's images to the model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EvalInput {
    /// The loader's: the model's square, stretched or letterboxed into (batches of 8).
    Square,
    /// The server's: each image letterboxed into whichever of these `[h, w]` canvases shrinks
    /// it least ([`codetr_model::preprocess::pick_canvas`]), batches of 8 per canvas.
    Canvases(Vec<[u32; 2]>),
    /// The official test pipeline's: one image at a time at its own keep-ratio size,
    /// unpadded ([`codetr_core::model::predict::detect_image`]).
    Unpadded,
}

/// [`detect_split`] with the images brought to the model as `input` says; the canvases and
/// the unpadded run letterbox (their scale capped by `limits` `[short, long]`).
pub fn detect_split_as(
    detector: &Detector,
    ds: &Arc<CocoDataset>,
    limit: usize,
    workers: usize,
    (resize, limits): (Resize, Option<[u32; 2]>),
    input: &EvalInput,
) -> Result<(CocoFile, Vec<Detection>)> {
    let bad = |m: &str| Error::InvalidArgument {
        what: "evaluation input",
        message: m.to_string(),
    };
    let canvases = match input {
        EvalInput::Square => return detect_split(detector, ds, limit, workers, (resize, limits)),
        _ if resize != Resize::Letterbox => {
            return Err(bad(
                "several input sizes and the unpadded run letterbox: they need resize = \
                 letterbox",
            ));
        }
        EvalInput::Canvases(c) if c.is_empty() => {
            return Err(bad("no input size given"));
        }
        EvalInput::Canvases(c) => Some(c.as_slice()),
        EvalInput::Unpadded => None,
    };
    let n = if limit > 0 {
        limit.min(ds.images.len())
    } else {
        ds.images.len()
    };
    let images = &ds.images[..n];
    let mut resizer = fast_image_resize::Resizer::new();
    let mut dts = Vec::new();
    let emit = |id: u64,
                (scores, labels, boxes): (Vec<f32>, Vec<i64>, Vec<f32>),
                dts: &mut Vec<Detection>| {
        dts.extend(coco_detections(
            id,
            &labels,
            &scores,
            &boxes,
            &ds.categories,
        ));
    };
    match canvases {
        None => {
            for rec in images {
                let img = codetr_data::coco::decode_record(rec)?;
                let out = codetr_core::model::predict::detect_image(
                    detector,
                    &img,
                    (resize, limits),
                    &mut resizer,
                )?;
                emit(rec.id, out, &mut dts);
            }
        }
        Some(canvases) => {
            // group by canvas, in split order within each, then batches of 8
            let mut groups = vec![Vec::new(); canvases.len()];
            for rec in images {
                let c = codetr_model::preprocess::pick_canvas(
                    [rec.height, rec.width],
                    canvases,
                    limits,
                );
                groups[c].push(rec);
            }
            let device = detector.level_embed.val().device();
            for (&[ch, cw], group) in canvases.iter().zip(&groups) {
                for chunk in group.chunks(8) {
                    let mut px = Vec::with_capacity(chunk.len() * (ch * cw * 3) as usize);
                    let mut valid = Vec::with_capacity(chunk.len());
                    for rec in chunk {
                        let img = codetr_data::coco::decode_record(rec)?;
                        let (canvas, [vh, vw]) = codetr_model::preprocess::letterbox_rgb(
                            img.as_raw(),
                            [rec.width, rec.height],
                            [cw, ch],
                            limits,
                            &mut resizer,
                        )
                        .map_err(|e| Error::InvalidArgument {
                            what: "letterbox",
                            message: format!("{}: {e}", rec.path.display()),
                        })?;
                        px.extend_from_slice(&canvas);
                        valid.push([vh as usize, vw as usize]);
                    }
                    let sizes: Vec<[u32; 2]> = chunk.iter().map(|r| [r.height, r.width]).collect();
                    let x = pixels_to_tensor(&px, chunk.len(), ch as usize, cw as usize, &device)?;
                    let (scores, labels, boxes) =
                        detector.detect_padded(x, Some(&valid), &sizes)?.to_host()?;
                    let k = scores.len() / chunk.len();
                    for (i, rec) in chunk.iter().enumerate() {
                        let r = i * k..(i + 1) * k;
                        emit(
                            rec.id,
                            (
                                scores[r.clone()].to_vec(),
                                labels[r.clone()].to_vec(),
                                boxes[r.start * 4..r.end * 4].to_vec(),
                            ),
                            &mut dts,
                        );
                    }
                }
            }
        }
    }
    let ids: std::collections::HashSet<u64> = images.iter().map(|i| i.id).collect();
    let mut gt = CocoFile::read(&ds.json_path)?;
    gt.images.retain(|i| ids.contains(&i.id));
    gt.annotations.retain(|a| ids.contains(&a.image_id));
    Ok((gt, dts))
}

/// Keeps the newest `keep` `step-*.ckpt` files in `dir`.
fn prune(dir: &Path, keep: usize) -> Result<()> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("step-") && n.ends_with(".ckpt"))
        })
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(keep);
    for f in files.into_iter().take(excess) {
        std::fs::remove_file(&f).map_err(io(&f))?;
    }
    Ok(())
}

/// The newest step checkpoint of a run dir.
pub fn latest_checkpoint(run: &Path) -> Option<PathBuf> {
    let dir = run.join("checkpoints");
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .ok()?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "ckpt"))
        .collect();
    files.sort();
    files.pop()
}

/// Drops log lines past `step` (they were written after the checkpoint we resume from).
fn truncate_log(path: &Path, step: u64) -> Result<()> {
    let Ok(text) = std::fs::read_to_string(path) else {
        return Ok(());
    };
    let kept: String = text
        .lines()
        .filter(|l| {
            serde_json::from_str::<serde_json::Value>(l)
                .ok()
                .and_then(|v| v.get("step").and_then(|s| s.as_u64()))
                .is_some_and(|s| s <= step)
        })
        .map(|l| format!("{l}\n"))
        .collect();
    Ok(codetr_data::fsutil::write_atomic(path, kept.as_bytes())?)
}

/// Summary of a finished `fit`.
#[derive(Debug, Clone, Serialize)]
pub struct FitReport {
    pub steps: u64,
    pub seconds: f64,
    pub last_loss: f32,
    pub best_ap: Option<f64>,
    /// The last validation on val.
    pub final_eval: Option<EvalSummary>,
    /// The last evaluation on the held-out test split, when the run has one.
    pub final_test: Option<EvalSummary>,
}

/// Trains from scratch (`resume = false`) or continues the run in `cfg.run.out`.
/// One optimizer step's gradients, split into (backbone, rest), and what the log reports.
struct StepGradients {
    backbone: GradientsParams,
    rest: GradientsParams,
    record: StepRecord,
}

/// What a step's forward and backward report for the log.
struct StepRecord {
    /// Mean of the batches' total losses.
    loss: f32,
    /// Mean of each logged term over the batches.
    terms: Vec<(String, f32)>,
    t_forward: f64,
    t_backward: f64,
}

/// Where a run starts: the newest checkpoint of `cfg.run.out` (`resume`: its saved config wins,
/// except for where the run lives and its device), or a fresh model (initialised from the seed
/// or warm-started from `[run] init`) in an `out` that holds no run yet.
fn start(
    cfg: FitConfig,
    resume: bool,
    device: &Device,
) -> Result<(
    CoDetr,
    Option<Detector>,
    burn::optim::ModuleOptimizer,
    TrainState,
    FitConfig,
)> {
    let out = cfg.run.out.clone();
    let ckdir = out.join("checkpoints");
    if resume {
        let path = latest_checkpoint(&out).ok_or_else(|| Error::InvalidArgument {
            what: "--resume",
            message: format!("no checkpoints in {}", ckdir.display()),
        })?;
        let (model, ema, optim, state) = load_train(&path, device)?;
        tracing::info!(step = state.step, path = %path.display(), "resuming");
        // The saved config wins (same schedule, data, seed), except where the run lives now
        // and which device continues it.
        let mut saved = state.config.clone();
        saved.run.out = out.clone();
        saved.run.device = cfg.run.device.clone();
        Ok((model, ema, optim, state, saved))
    } else {
        cfg.validate()?;
        if latest_checkpoint(&out).is_some() {
            return Err(Error::InvalidArgument {
                what: "--out",
                message: format!(
                    "{} already holds a run; pass --resume to continue it or choose another --out",
                    out.display()
                ),
            });
        }
        let train = CocoDataset::load_split(&cfg.data.train, LoadOptions::default())?;
        let mut det = cfg.detector()?;
        det.num_classes = train.num_classes();
        // Whatever else draws from the device's generator during training follows the seed
        // too; the initial weights are drawn on the host (`CoDetr::seeded`).
        device.seed(cfg.run.seed);
        let model = match &cfg.run.init {
            None => CoDetr::seeded(&det, cfg.co.k, &cfg.co, cfg.run.seed, device)?,
            Some(p) => warm_start(p, &det, &train.class_names(), &cfg, device)?,
        };
        let state = TrainState {
            step: 0,
            best_ap: None,
            best_step: None,
            config: cfg.clone(),
            loss_scale: LossScale::new(cfg.schedule.precision),
        };
        let ema = cfg.schedule.ema.map(|_| model.detector.valid());
        Ok((model, ema, adamw(cfg.schedule.weight_decay), state, cfg))
    }
}

/// The step's `log.jsonl` line: step, loss, lr, grad norm, time split, host reads since
/// `reads0`, and every loss term.
fn log_line(
    state: &TrainState,
    epoch: u64,
    lr: f64,
    norm: f64,
    dt: f64,
    g: &StepRecord,
    reads0: crate::host::HostReads,
) -> serde_json::Value {
    let (t_forward, t_backward) = (g.t_forward, g.t_backward);
    let mut line = serde_json::Map::new();
    line.insert("step".into(), state.step.into());
    line.insert("epoch".into(), epoch.into());
    line.insert("loss".into(), f64::from(g.loss).into());
    line.insert("lr".into(), lr.into());
    line.insert("grad_norm".into(), norm.into());
    line.insert("seconds".into(), dt.into());
    // where the step's time goes: loss forward (incl. host matching/assignment),
    // backward, and clip + optimizer
    line.insert("t_forward".into(), t_forward.into());
    line.insert("t_backward".into(), t_backward.into());
    line.insert("t_optim".into(), (dt - t_forward - t_backward).into());
    // device → host reads of the step (each a sync on a GPU) and their volume
    let reads = crate::host::snapshot().since(&reads0);
    line.insert("host_reads".into(), reads.reads.into());
    line.insert("host_bytes".into(), reads.bytes.into());
    for (k, v) in &g.terms {
        line.insert(k.clone(), f64::from(*v).into());
    }
    serde_json::Value::Object(line)
}

/// Evaluates `evaluated` (the EMA or the model) on val (and the held-out test split when the
/// run has one), appends the summaries to `eval.jsonl` (test under `"test"`), and saves it as
/// `best/model.ckpt` when its val AP beats the best so far. Test never picks anything.
fn validate_and_keep_best(
    evaluated: &Detector,
    data: &RunData,
    cfg: &FitConfig,
    state: &mut TrainState,
    bar: &indicatif::ProgressBar,
) -> Result<(EvalSummary, Option<EvalSummary>)> {
    let s = validate(
        evaluated,
        &data.val,
        cfg.data.val_images,
        cfg.run.workers,
        (cfg.data.resize, cfg.data.letterbox_limits),
    )?;
    let t = match &data.test {
        Some(test) => Some(validate(
            evaluated,
            test,
            cfg.data.test_images,
            cfg.run.workers,
            (cfg.data.resize, cfg.data.letterbox_limits),
        )?),
        None => None,
    };
    let json = |v: &EvalSummary| {
        serde_json::to_value(v).map_err(|e| Error::InvalidArgument {
            what: "eval",
            message: e.to_string(),
        })
    };
    let mut e = json(&s)?;
    if let Some(o) = e.as_object_mut() {
        o.insert("step".into(), state.step.into());
        if let Some(t) = &t {
            o.insert("test".into(), json(t)?);
        }
    }
    let ep = cfg.run.out.join("eval.jsonl");
    let mut f = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&ep)
        .map_err(io(&ep))?;
    writeln!(f, "{e}").map_err(io(&ep))?;
    bar.suspend(|| tracing::info!(step = state.step, ap = s.ap, ap50 = s.ap50, "val"));
    if let Some(t) = &t {
        bar.suspend(|| tracing::info!(step = state.step, ap = t.ap, ap50 = t.ap50, "test"));
    }
    if state.best_ap.is_none_or(|b| s.ap > b) {
        state.best_ap = Some(s.ap);
        state.best_step = Some(state.step);
        let mut meta = serde_json::json!({ "val": s, "step": state.step });
        if let Some(t) = &t {
            meta["test"] = json(t)?;
        }
        checkpoint::save(
            &cfg.run.out.join("best").join("model.ckpt"),
            evaluated,
            &data.class_names,
            state.step,
            meta,
            vec![],
        )?;
    }
    Ok((s, t))
}

/// What [`fit`] reads: the training loader, the val split, the held-out test split (if
/// any), the class names and the optimizer steps per epoch.
struct RunData {
    loader: Loader,
    val: Arc<CocoDataset>,
    test: Option<Arc<CocoDataset>>,
    class_names: Vec<String>,
    per_epoch: u64,
}

/// An evaluation split whose classes must be the training split's: the evaluator matches
/// detections to ground truth by category id, so a different class list would score nonsense.
fn eval_split(dir: &Path, what: &'static str, class_names: &[String]) -> Result<Arc<CocoDataset>> {
    let ds = CocoDataset::load_split(dir, LoadOptions::default())?;
    if ds.class_names() != class_names {
        return Err(Error::InvalidArgument {
            what,
            message: format!(
                "{} has classes {:?} but the training split has {:?}",
                dir.display(),
                ds.class_names(),
                class_names
            ),
        });
    }
    Ok(Arc::new(ds))
}

/// The run's data: the training loader, the val and test splits (their classes checked
/// against train's), the class names (checked against the model's `num_classes`) and the
/// optimizer steps per epoch (each takes `accumulate` batches; a partial group at the end of
/// an epoch is dropped, as the loader drops a partial batch).
fn data(cfg: &FitConfig, num_classes: usize) -> Result<RunData> {
    let train = Arc::new(CocoDataset::load_split(
        &cfg.data.train,
        LoadOptions::default(),
    )?);
    let class_names = train.class_names();
    let val = eval_split(&cfg.data.val, "data.val", &class_names)?;
    let test = match &cfg.data.test {
        Some(dir) => Some(eval_split(dir, "data.test", &class_names)?),
        None => None,
    };
    if class_names.len() != num_classes {
        return Err(Error::InvalidArgument {
            what: "data",
            message: format!(
                "{} classes in {} but the model has {}",
                class_names.len(),
                cfg.data.train.display(),
                num_classes
            ),
        });
    }
    let loader = Loader::new(
        train,
        LoaderConfig {
            batch_size: cfg.schedule.batch_size,
            sizes: cfg.schedule.sizes.clone(),
            workers: cfg.run.workers,
            seed: cfg.run.seed,
            resize: cfg.data.resize,
            letterbox_limits: cfg.data.letterbox_limits,
            ..LoaderConfig::default()
        },
    )?;
    let accumulate = cfg.schedule.accumulate.max(1);
    let per_epoch = loader.batches_per_epoch() as u64 / accumulate as u64;
    if per_epoch == 0 {
        return Err(Error::InvalidArgument {
            what: "accumulate",
            message: format!(
                "{accumulate} batches per step but an epoch has {}",
                loader.batches_per_epoch()
            ),
        });
    }
    Ok(RunData {
        loader,
        val,
        test,
        class_names,
        per_epoch,
    })
}

/// The run's progress bar (hidden without `progress`), at `step` of `steps`.
fn progress_bar(progress: bool, steps: u64, step: u64) -> indicatif::ProgressBar {
    if !progress {
        return indicatif::ProgressBar::hidden();
    }
    let b = indicatif::ProgressBar::new(steps);
    b.set_style(
        indicatif::ProgressStyle::with_template(
            "{bar:30} {pos}/{len} [{elapsed_precise} < {eta_precise}] {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    b.set_position(step);
    b
}

/// Forward and backward of each batch of one step; with several batches each loss is divided
/// by their number and the gradients are summed. Denoising noise is drawn per batch from
/// (seed, step·N + i): with one batch exactly what a step always drew, and so are the
/// stochastic-depth masks of a backbone that has them (their own stream; a model without drop
/// path draws nothing). The forward runs in the run's precision; the loss is multiplied by
/// `loss_scale` before backward (1: untouched).
fn gradients(
    model: &CoDetr,
    micro: &[Batch],
    cfg: &FitConfig,
    step: u64,
    loss_scale: f64,
) -> Result<StepGradients> {
    let n = micro.len();
    // Timed phases end by waiting for the device: its queue, not the host's launches, is the
    // work (see `host::sync`).
    let device = model.detector.level_embed.val().device();
    let (mut t_forward, mut t_backward) = (0.0, 0.0);
    let (mut acc_bb, mut acc_rest) = (GradientsAccumulator::new(), GradientsAccumulator::new());
    let mut split = None;
    let (mut loss_sum, mut terms): (f32, Vec<(String, f32)>) = (0.0, Vec::new());
    for (i, batch) in micro.iter().enumerate() {
        let t0 = Instant::now();
        let stream = step * n as u64 + i as u64;
        let mut rng = Rng::fork(cfg.run.seed ^ 0xD1_5EED, stream);
        let loss = {
            let _autocast = Autocast::enter(cfg.schedule.precision);
            let _depth = StochasticDepth::enter(Rng::fork(cfg.run.seed ^ 0xD2_0FA7, stream));
            model.loss(batch, cfg, &mut rng)?
        };
        crate::host::sync(&device, "the forward pass")?;
        t_forward += t0.elapsed().as_secs_f64();
        let t1 = Instant::now();
        let mut total = loss.total.clone();
        if n > 1 {
            total = total / n as f64;
        }
        if loss_scale != 1.0 {
            total = total * loss_scale;
        }
        let grads = total.backward();
        let (g_bb, g_rest) = split_grads(grads, &model.detector.backbone, model);
        crate::host::sync(&device, "the backward pass")?;
        t_backward += t1.elapsed().as_secs_f64();
        loss_sum += loss.value;
        if terms.is_empty() {
            terms = loss.terms;
        } else {
            for ((_, acc), (_, v)) in terms.iter_mut().zip(&loss.terms) {
                *acc += v;
            }
        }
        if n == 1 {
            split = Some((g_bb, g_rest));
        } else {
            acc_bb.accumulate(&model.detector.backbone, g_bb);
            acc_rest.accumulate(model, g_rest);
        }
    }
    let (backbone, rest) = split.unwrap_or_else(|| (acc_bb.grads(), acc_rest.grads()));
    for (_, v) in &mut terms {
        *v /= n as f32;
    }
    Ok(StepGradients {
        backbone,
        rest,
        record: StepRecord {
            loss: loss_sum / n as f32,
            terms,
            t_forward,
            t_backward,
        },
    })
}

pub fn fit(cfg: FitConfig, resume: bool, progress: bool) -> Result<FitReport> {
    let out = cfg.run.out.clone();
    let device = codetr_core::device::select(&cfg.run.device)?.autodiff();
    // Step times mean little without the build that made them (autotune, fusion).
    tracing::info!(device = %cfg.run.device, build = %codetr_core::device::build_summary(), "fit");
    let ckdir = out.join("checkpoints");
    let (mut model, mut ema, mut optim, mut state, cfg) = start(cfg, resume, &device)?;
    let precision = cfg.schedule.precision;
    if !precision.supported_on(&device) {
        return Err(Error::InvalidArgument {
            what: "precision",
            message: format!(
                "device {:?} cannot compute in {} (it may only store it); use f32{}",
                cfg.run.device,
                precision.name(),
                if precision == codetr_core::model::autocast::Precision::Bf16 {
                    " or f16"
                } else {
                    ""
                }
            ),
        });
    }
    std::fs::create_dir_all(&ckdir).map_err(io(&ckdir))?;
    std::fs::create_dir_all(out.join("best")).map_err(io(&out))?;
    codetr_data::fsutil::write_atomic(&out.join("config.toml"), cfg.to_toml()?.as_bytes())?;
    let log_path = out.join("log.jsonl");
    if resume {
        truncate_log(&log_path, state.step)?;
        truncate_log(&out.join("eval.jsonl"), state.step)?;
    }

    let run_data = data(&cfg, model.detector.config().num_classes)?;
    let (loader, per_epoch) = (&run_data.loader, run_data.per_epoch);
    let accumulate = cfg.schedule.accumulate.max(1);
    let eval_every = if cfg.run.eval_every > 0 {
        cfg.run.eval_every
    } else {
        per_epoch
    };
    let steps = cfg.schedule.steps;
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(io(&log_path))?;
    let bar = progress_bar(progress, steps, state.step);
    let started = Instant::now();
    let mut last_loss = f32::NAN;
    let mut final_eval = None;
    let mut final_test = None;
    let mut images_seen = 0usize;
    while state.step < steps {
        let epoch = state.step / per_epoch;
        let start = (state.step % per_epoch) as usize * accumulate;
        let mut batches = loader.epoch(epoch, start);
        while state.step < steps && state.step / per_epoch == epoch {
            let mut micro = Vec::with_capacity(accumulate);
            for _ in 0..accumulate {
                match batches.next() {
                    Some(b) => micro.push(b?),
                    None => break,
                }
            }
            if micro.len() < accumulate {
                break;
            }
            let t0 = Instant::now();
            let reads0 = crate::host::snapshot();
            let StepGradients {
                backbone: mut g_bb,
                rest: mut g_rest,
                record,
            } = gradients(&model, &micro, &cfg, state.step, state.loss_scale.scale)?;
            let scale = state.loss_scale.scale;
            let scaled_norm = global_grad_norm(&model, &[&g_bb, &g_rest]);
            let lr = cfg.schedule.lr_at(state.step);
            let (norm, skipped) = match state.loss_scale.update(scaled_norm.is_finite()) {
                ScaledStep::Apply { unscale } => {
                    // unscale and clip in one pass; f32/bf16: unscale = 1, exactly the old clip
                    let norm = scaled_norm * unscale;
                    let factor = clip_factor(norm, cfg.schedule.grad_clip) * unscale;
                    scale_grads(&model, &mut [&mut g_bb, &mut g_rest], factor);
                    model = optim.step(lr * cfg.schedule.backbone_lr_mult, model, g_bb);
                    model = optim.step(lr, model, g_rest);
                    (norm, false)
                }
                ScaledStep::Skip => {
                    bar.suspend(|| {
                        tracing::warn!(
                            step = state.step,
                            scale,
                            "f16 gradients overflowed: step skipped, loss scale halved"
                        )
                    });
                    (scaled_norm, true)
                }
            };
            state.step += 1;
            if let (Some(e), false) = (cfg.schedule.ema, skipped)
                && let Some(avg) = ema.take()
            {
                ema = Some(ema_update(avg, &model.detector, e.momentum_at(state.step)));
            }
            last_loss = record.loss;
            images_seen += micro.iter().map(Batch::len).sum::<usize>();
            // The step's time includes the update it queued, not only what its reads awaited.
            crate::host::sync(&device, "the optimizer update")?;
            let dt = t0.elapsed().as_secs_f64();
            let mut line = log_line(&state, epoch, lr, norm, dt, &record, reads0);
            if state.loss_scale.dynamic {
                line["loss_scale"] = scale.into();
                line["skipped"] = skipped.into();
            }
            writeln!(log, "{line}").map_err(io(&log_path))?;
            bar.set_position(state.step);
            bar.set_message(format!(
                "loss {last_loss:.3} lr {lr:.1e} {:.1} img/s",
                images_seen as f64 / started.elapsed().as_secs_f64()
            ));

            let do_eval = state.step % eval_every == 0 || state.step == steps;
            if do_eval {
                bar.suspend(|| tracing::info!(step = state.step, "validating"));
                let evaluated = match &ema {
                    Some(e) => e.clone(),
                    None => model.detector.valid(),
                };
                let (s, t) = validate_and_keep_best(&evaluated, &run_data, &cfg, &mut state, &bar)?;
                final_eval = Some(s);
                final_test = t;
            }
            if state.step % cfg.run.checkpoint_every == 0 || state.step == steps {
                log.flush().map_err(io(&log_path))?;
                let path = ckdir.join(format!("step-{:08}.ckpt", state.step));
                save_train(
                    &path,
                    &model,
                    ema.as_ref(),
                    &optim,
                    &state,
                    &run_data.class_names,
                    serde_json::Value::Null,
                )?;
                prune(&ckdir, cfg.run.keep_last)?;
            }
        }
    }
    bar.finish();
    Ok(FitReport {
        steps: state.step,
        seconds: started.elapsed().as_secs_f64(),
        last_loss,
        best_ap: state.best_ap,
        final_eval,
        final_test,
    })
}
