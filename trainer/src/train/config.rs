//! The run configuration of `codetr-train fit`, from TOML (every section optional) with CLI
//! flags on top; the resolved config is written to the run dir as `config.toml`.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::loss::criterion::LossWeights;
use crate::train::denoising::DnConfig;
use codetr_core::model::DetectorConfig;
use codetr_data::loader::Resize;

/// Where the data is: COCO splits as written by `codetr-train synth` (`DIR/instances.json` +
/// `DIR/images/`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DataConfig {
    pub train: PathBuf,
    pub val: PathBuf,
    /// Validate on at most this many val images (0 = all).
    pub val_images: usize,
    /// A held-out split (the synth layout) evaluated beside val at every validation, for
    /// reporting only: `eval.jsonl` gets its metrics under `"test"`, and `best/` is still
    /// picked on val. None: no test evaluation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<PathBuf>,
    /// Evaluate on at most this many test images (0 = all).
    pub test_images: usize,
    /// `stretch` (each image to the square) or `letterbox` (keep the aspect ratio, pad, and
    /// mask the padding: the official Co-DINO pipeline; export with `--resize letterbox`).
    /// Training and validation both.
    pub resize: Resize,
    /// With `letterbox`: `[short, long]` caps of the keep-ratio scale (the official pipeline's
    /// `[800, 1333]`), training and validation both. None: the square canvas alone caps it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub letterbox_limits: Option<[u32; 2]>,
}

impl Default for DataConfig {
    fn default() -> Self {
        Self {
            train: PathBuf::from("data/synth/train"),
            val: PathBuf::from("data/synth/val"),
            val_images: 0,
            test: None,
            test_images: 0,
            resize: Resize::Stretch,
            letterbox_limits: None,
        }
    }
}

/// Optimisation and schedule (Co-DINO: AdamW 2e-4, wd 1e-4, backbone ×0.1, clip 0.1, step
/// decay ×0.1).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Schedule {
    pub steps: u64,
    pub batch_size: usize,
    /// Batches whose gradients are summed into one optimizer step (each loss ÷ N): an
    /// effective batch of `batch_size × accumulate` in the memory of one `batch_size`.
    pub accumulate: usize,
    /// Square training sizes; each batch picks one (multi-scale).
    pub sizes: Vec<u32>,
    pub lr: f64,
    pub backbone_lr_mult: f64,
    pub weight_decay: f64,
    /// Global L2 grad-norm clip (0 = off).
    pub grad_clip: f64,
    /// Linear warm-up steps from 0 to `lr`.
    pub warmup_steps: u64,
    /// Fractions of `steps` after which the lr is multiplied by 0.1.
    pub lr_drops: Vec<f64>,
    /// Keep an exponential moving average of the weights; validation and `best/` then use it.
    pub ema: Option<super::ema::EmaConfig>,
    /// Type of the training step's matrix products and convolutions: "f32", "bf16" or "f16"
    /// (parameters, norms and losses stay f32; f16 adds dynamic loss scaling). Validation,
    /// checkpoints and export are f32 whatever this says.
    pub precision: codetr_core::model::autocast::Precision,
}

impl Default for Schedule {
    fn default() -> Self {
        Self {
            steps: 2000,
            batch_size: 8,
            accumulate: 1,
            sizes: vec![256],
            lr: 2e-4,
            backbone_lr_mult: 0.1,
            weight_decay: 1e-4,
            grad_clip: 0.1,
            warmup_steps: 100,
            lr_drops: vec![0.8],
            ema: None,
            precision: codetr_core::model::autocast::Precision::F32,
        }
    }
}

impl Schedule {
    /// Learning rate of the non-backbone parameters at `step` (0-based).
    pub fn lr_at(&self, step: u64) -> f64 {
        let warm = if self.warmup_steps > 0 && step < self.warmup_steps {
            (step + 1) as f64 / self.warmup_steps as f64
        } else {
            1.0
        };
        let drops = self
            .lr_drops
            .iter()
            .filter(|&&f| step as f64 >= f * self.steps as f64)
            .count();
        self.lr * warm * 0.1f64.powi(drops as i32)
    }
}

/// Co-DETR switches (paper Table 9): K auxiliary heads, positive queries, aux-head loss.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoConfig {
    /// 0 = plain DINO, 1 = + ATSS, 2 = + ATSS + Faster-RCNN.
    pub k: usize,
    /// Customized positive queries from the aux heads' positives (paper §3.3).
    pub positive_queries: bool,
    /// The aux heads' own losses.
    pub aux_loss: bool,
    /// Paper eq. 6: weight of the positive-query decoder losses.
    pub lambda1: f64,
    /// Paper eq. 6: weight of the aux-head losses, applied once per decoder layer (the sum over
    /// l), i.e. ×λ2·L in total — the official config's ×12 for L = 6, λ2 = 2.
    pub lambda2: f64,
    /// Cap on positive queries per image and head (the official max_pos_coords: 300).
    pub max_positive_queries: usize,
    /// A positive query's content adds the projected pyramid feature at its anchor/RoI to the
    /// projected box embedding (paper eq. 4, Co-Deformable-DETR). `false` keeps the box
    /// embedding only, as the official Co-DINO configs do (`with_coord_feat=False`).
    pub query_features: bool,
    pub atss: crate::auxiliary::atss_head::AtssConfig,
    pub rpn: crate::auxiliary::rpn_head::RpnConfig,
    pub roi: crate::auxiliary::roi_head::RoiConfig,
}

impl Default for CoConfig {
    fn default() -> Self {
        Self {
            k: 0,
            positive_queries: true,
            aux_loss: true,
            lambda1: 1.0,
            lambda2: 2.0,
            max_positive_queries: 300,
            query_features: true,
            atss: Default::default(),
            rpn: Default::default(),
            roi: Default::default(),
        }
    }
}

/// Run bookkeeping.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    pub out: PathBuf,
    pub seed: u64,
    pub workers: usize,
    pub checkpoint_every: u64,
    /// Step checkpoints kept (the best one is kept apart).
    pub keep_last: usize,
    /// Evaluate every N steps (0 = once per epoch) and at the end.
    pub eval_every: u64,
    /// The training device: what `--device` takes (`codetr_core::device::select`).
    pub device: String,
    /// Warm start: the detector weights of this checkpoint (a shipped `model.ckpt`, a run's
    /// `best/model.ckpt` or a step checkpoint), made for the same model config and classes.
    /// Training heads come from it too when it holds them (step checkpoints); the optimizer,
    /// the step count and the lr schedule start fresh. Ignored on `--resume`.
    pub init: Option<PathBuf>,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self {
            out: PathBuf::from("runs/run"),
            seed: 0,
            workers: 2,
            checkpoint_every: 200,
            keep_last: 3,
            eval_every: 0,
            device: "cpu".into(),
            init: None,
        }
    }
}

/// The whole `fit` configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct FitConfig {
    pub run: RunConfig,
    pub data: DataConfig,
    /// The model: `preset = "..."` plus any override (see `DetectorConfig`).
    pub model: toml::Table,
    pub schedule: Schedule,
    pub co: CoConfig,
    pub dn: DnConfig,
    pub loss: LossWeights,
    /// The encoder-proposal loss weight relative to a decoder layer (paper λ2-free DINO: 1).
    pub enc_loss_weight: f64,
}

impl Default for FitConfig {
    fn default() -> Self {
        let mut model = toml::Table::new();
        model.insert("preset".into(), toml::Value::String("tiny".into()));
        Self {
            run: RunConfig::default(),
            data: DataConfig::default(),
            model,
            schedule: Schedule::default(),
            co: CoConfig::default(),
            dn: DnConfig::default(),
            loss: LossWeights::default(),
            enc_loss_weight: 1.0,
        }
    }
}

fn bad(m: String) -> Error {
    Error::InvalidArgument {
        what: "fit config",
        message: m,
    }
}

impl FitConfig {
    pub fn from_toml(text: &str) -> Result<Self> {
        toml::from_str(text).map_err(|e| bad(e.to_string()))
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| bad(e.to_string()))
    }

    /// The detector config this run trains (preset + overrides), before class names are known.
    pub fn detector(&self) -> Result<DetectorConfig> {
        let text = toml::to_string(&self.model).map_err(|e| bad(e.to_string()))?;
        DetectorConfig::from_toml(&text)
    }

    pub fn validate(&self) -> Result<()> {
        let s = &self.schedule;
        if s.steps == 0 || s.batch_size == 0 || s.accumulate == 0 || s.sizes.is_empty() {
            return Err(bad(
                "steps, batch_size, accumulate and sizes must be non-zero".into(),
            ));
        }
        if !(s.lr > 0.0 && s.lr.is_finite()) || s.backbone_lr_mult < 0.0 || s.weight_decay < 0.0 {
            return Err(bad(format!(
                "lr must be > 0 (got {}), backbone_lr_mult and weight_decay >= 0",
                s.lr
            )));
        }
        if s.lr_drops.iter().any(|f| !(0.0..=1.0).contains(f)) {
            return Err(bad("lr_drops are fractions of steps in [0, 1]".into()));
        }
        if self.co.k > 2 {
            return Err(bad(format!("co.k must be 0, 1 or 2 (got {})", self.co.k)));
        }
        if self.run.checkpoint_every == 0 || self.run.keep_last == 0 || self.run.workers == 0 {
            return Err(bad(
                "checkpoint_every, keep_last and workers must be >= 1".into()
            ));
        }
        self.detector()?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_round_trip_and_overrides() {
        let c = FitConfig::default();
        let back = FitConfig::from_toml(&c.to_toml().unwrap()).unwrap();
        assert_eq!(c, back);
        let c = FitConfig::from_toml(
            "[schedule]\nsteps = 10\n[model]\npreset = \"tiny\"\n[model.transformer]\nnum_queries = 50\n",
        )
        .unwrap();
        assert_eq!(c.schedule.steps, 10);
        assert_eq!(c.schedule.batch_size, 8);
        assert_eq!(c.detector().unwrap().transformer.num_queries, 50);
        assert!(FitConfig::from_toml("[schedule]\nstep = 10\n").is_err());
    }

    #[test]
    fn lr_schedule_warms_up_and_drops() {
        let s = Schedule {
            steps: 100,
            warmup_steps: 10,
            lr: 1.0,
            lr_drops: vec![0.5, 0.9],
            ..Schedule::default()
        };
        assert!((s.lr_at(0) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(9) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(49) - 1.0).abs() < 1e-12);
        assert!((s.lr_at(50) - 0.1).abs() < 1e-12);
        assert!((s.lr_at(95) - 0.01).abs() < 1e-12);
    }
}
