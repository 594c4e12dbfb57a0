//! The batching loader: decodes, augments and resizes on worker threads, hands batches out in
//! a deterministic order.
//!
//! Determinism: the image order of epoch `e` and everything random in batch `b` derive from
//! `(seed, e, b)` only, never from which worker ran first. So a resumed run that restarts at
//! (epoch, batch) sees exactly the batches it would have seen.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::thread::JoinHandle;

use crossbeam_channel::{Receiver, Sender};
use serde::{Deserialize, Serialize};

use super::augment::{self, AugmentConfig, Geometry, Sample};
use super::coco::{CocoDataset, decode_record};
use crate::error::{Error, Result};
use crate::rng::Rng;
pub use codetr_model::Resize;
use codetr_model::preprocess::letterbox_size;

/// Loader settings.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(default, deny_unknown_fields)]
pub struct LoaderConfig {
    pub batch_size: usize,
    /// Square input sizes; each batch picks one at random (multi-scale training). Evaluation
    /// loaders should give exactly one.
    pub sizes: Vec<u32>,
    /// Decode/augment threads.
    pub workers: usize,
    /// Batches decoded ahead of the consumer (memory bound).
    pub prefetch: usize,
    pub shuffle: bool,
    /// Drop the last incomplete batch of an epoch.
    pub drop_last: bool,
    pub seed: u64,
    /// `None`: no augmentation (evaluation).
    pub augment: Option<AugmentConfig>,
    /// Stretch each (cropped) image to the square, or letterbox it: resized keeping its aspect
    /// ratio to fit, top-left, the rest zero (the official Co-DINO pipeline; the model then
    /// masks the padding).
    pub resize: Resize,
    /// `[short, long]`: when letterboxing, the scale is also capped at short side ≤ short and
    /// long side ≤ long (the official `(1333, 800)` keep-ratio resize; see
    /// `codetr_model::preprocess::letterbox_size`). `None`: the canvas alone caps it.
    pub letterbox_limits: Option<[u32; 2]>,
}

impl Default for LoaderConfig {
    fn default() -> Self {
        Self {
            batch_size: 4,
            sizes: vec![256],
            workers: 2,
            prefetch: 4,
            shuffle: true,
            drop_last: true,
            seed: 0,
            augment: Some(AugmentConfig::default()),
            resize: Resize::Stretch,
            letterbox_limits: None,
        }
    }
}

impl LoaderConfig {
    /// The settings for evaluation: one size, no shuffle, no augmentation, keep every image.
    pub fn eval(batch_size: usize, size: u32, workers: usize, resize: Resize) -> Self {
        Self {
            batch_size,
            sizes: vec![size],
            workers,
            prefetch: 4,
            shuffle: false,
            drop_last: false,
            seed: 0,
            augment: None,
            resize,
            letterbox_limits: None,
        }
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(Error::InvalidArgument {
                what: "loader config",
                message: m,
            })
        };
        if self.batch_size == 0 {
            return bad("batch_size must be >= 1".into());
        }
        if self.sizes.is_empty() || self.sizes.iter().any(|&s| !(16..=4096).contains(&s)) {
            return bad(format!(
                "sizes must be non-empty, each in 16..=4096, got {:?}",
                self.sizes
            ));
        }
        if self.workers == 0 || self.prefetch == 0 {
            return bad("workers and prefetch must be >= 1".into());
        }
        if let Some(a) = &self.augment {
            a.validate()?;
        }
        if let Some([short, long]) = self.letterbox_limits
            && (short == 0 || short > long || self.resize != Resize::Letterbox)
        {
            return bad(format!(
                "letterbox_limits [{short}, {long}] must be [short, long] with 0 < short <= \
                 long, and only with resize = letterbox"
            ));
        }
        Ok(())
    }
}

/// One image's targets inside a batch.
#[derive(Debug, Clone, PartialEq)]
pub struct Target {
    pub image_id: u64,
    /// (height, width) of the original image: predictions are scaled back to it.
    pub orig_size: [u32; 2],
    /// Contiguous class labels.
    pub labels: Vec<usize>,
    /// `[cx, cy, w, h]` normalised to [0, 1] by the image's region of the canvas (its
    /// `Batch::valid` size: the whole square under stretch), as DINO's targets are.
    pub boxes: Vec<[f32; 4]>,
}

/// A batch: `N` images resized to `size`×`size`.
#[derive(Debug, Clone, PartialEq)]
pub struct Batch {
    pub epoch: u64,
    /// Position of this batch within its epoch.
    pub index: usize,
    /// Square side in pixels.
    pub size: u32,
    /// uint8 RGB, NHWC `[N, size, size, 3]` — exactly what the exported graph takes, so the
    /// model normalises identically in training and serving.
    pub pixels: Vec<u8>,
    pub targets: Vec<Target>,
    /// Per image, the `[height, width]` its pixels take in the canvas, top-left (the whole
    /// `[size, size]` under stretch; less under letterbox, the rest zero).
    pub valid: Vec<[u32; 2]>,
}

impl Batch {
    pub fn len(&self) -> usize {
        self.targets.len()
    }

    /// The valid sizes when some image does not fill the canvas (the model must mask the
    /// padding), else `None`.
    pub fn padded(&self) -> Option<Vec<[usize; 2]>> {
        let full = [self.size, self.size];
        self.valid.iter().any(|v| *v != full).then(|| {
            self.valid
                .iter()
                .map(|&[h, w]| [h as usize, w as usize])
                .collect()
        })
    }

    pub fn is_empty(&self) -> bool {
        self.targets.is_empty()
    }
}

/// Hands out the batches of a dataset, epoch by epoch.
#[derive(Debug, Clone)]
pub struct Loader {
    dataset: Arc<CocoDataset>,
    cfg: LoaderConfig,
}

fn epoch_stream(epoch: u64, batch: usize) -> u64 {
    (epoch << 32) ^ batch as u64 ^ 0xA5A5_0000_0000_0000
}

impl Loader {
    pub fn new(dataset: Arc<CocoDataset>, cfg: LoaderConfig) -> Result<Self> {
        cfg.validate()?;
        if dataset.images.is_empty() {
            return Err(Error::Loader(format!(
                "{} has no images",
                dataset.json_path.display()
            )));
        }
        Ok(Self { dataset, cfg })
    }

    pub fn config(&self) -> &LoaderConfig {
        &self.cfg
    }

    pub fn dataset(&self) -> &CocoDataset {
        &self.dataset
    }

    /// Number of batches per epoch.
    pub fn batches_per_epoch(&self) -> usize {
        let n = self.dataset.images.len();
        let b = self.cfg.batch_size;
        if self.cfg.drop_last {
            (n / b).max(1)
        } else {
            n.div_ceil(b)
        }
    }

    /// The image indices of every batch of `epoch`, in order.
    pub fn plan(&self, epoch: u64) -> Vec<Vec<usize>> {
        let n = self.dataset.images.len();
        let mut order: Vec<usize> = (0..n).collect();
        if self.cfg.shuffle {
            Rng::fork(self.cfg.seed, epoch ^ 0x5EED_0000).shuffle(&mut order);
        }
        let b = self.cfg.batch_size;
        let mut batches: Vec<Vec<usize>> = order.chunks(b).map(|c| c.to_vec()).collect();
        if self.cfg.drop_last && batches.len() > 1 && batches.last().is_some_and(|l| l.len() < b) {
            batches.pop();
        }
        batches
    }

    /// Builds batch `index` of `epoch` on the calling thread (workers call this too).
    pub fn make_batch(
        &self,
        epoch: u64,
        index: usize,
        images: &[usize],
        resizer: &mut fast_image_resize::Resizer,
    ) -> Result<Batch> {
        let mut rng = Rng::fork(self.cfg.seed, epoch_stream(epoch, index));
        let size = self.cfg.sizes[rng.below(self.cfg.sizes.len())];
        let per = size as usize * size as usize * 3;
        let mut pixels = Vec::with_capacity(images.len() * per);
        let mut targets = Vec::with_capacity(images.len());
        let mut valid = Vec::with_capacity(images.len());
        for (k, &ii) in images.iter().enumerate() {
            let rec = self
                .dataset
                .images
                .get(ii)
                .ok_or_else(|| Error::Loader(format!("image index {ii} out of range")))?;
            let mut img_rng = Rng::fork(rng.next_u64(), k as u64);
            let img = decode_record(rec)?;
            // Crowd regions are not detection targets (they only matter to evaluation).
            let (boxes, labels): (Vec<[f32; 4]>, Vec<usize>) = rec
                .objects
                .iter()
                .filter(|o| !o.iscrowd)
                .map(|o| (o.bbox, o.label))
                .unzip();
            let sample = Sample {
                image_id: rec.id,
                orig_size: [rec.height, rec.width],
                boxes,
                labels,
            };
            let (geom, min_size, min_vis) = match &self.cfg.augment {
                Some(a) => (
                    Geometry::random(rec.width, rec.height, a, &mut img_rng),
                    a.min_box_size,
                    a.min_visible_fraction,
                ),
                None => (Geometry::identity(rec.width, rec.height), 0.0, 0.0),
            };
            // The image's region of the canvas: the square, or the crop letterboxed into it.
            let [vh, vw] = match self.cfg.resize {
                Resize::Stretch => [size, size],
                Resize::Letterbox => {
                    let [_, _, cw, ch] = geom.crop;
                    let side = |v: f64| (v.round() as u32).max(1);
                    letterbox_size(
                        [side(ch), side(cw)],
                        [size, size],
                        self.cfg.letterbox_limits,
                    )
                }
            };
            let (boxes, labels) =
                augment::transform_boxes(&sample, &geom, [vw, vh], min_size, min_vis);
            let mut px = augment::crop_resize_rgb(&img, &geom, vw, vh, resizer)?;
            if let Some(a) = &self.cfg.augment {
                augment::photometric_jitter(&mut px, a, &mut img_rng);
            }
            if [vh, vw] == [size, size] {
                pixels.extend_from_slice(&px);
            } else {
                let (row, canvas_row) = (vw as usize * 3, size as usize * 3);
                for y in 0..size as usize {
                    let start = pixels.len();
                    pixels.resize(start + canvas_row, 0);
                    if y < vh as usize {
                        pixels[start..start + row].copy_from_slice(&px[y * row..(y + 1) * row]);
                    }
                }
            }
            let (sw, sh) = (vw as f32, vh as f32);
            targets.push(Target {
                image_id: rec.id,
                orig_size: sample.orig_size,
                labels,
                boxes: boxes
                    .iter()
                    .map(|b| {
                        [
                            (b[0] + b[2]) / (2.0 * sw),
                            (b[1] + b[3]) / (2.0 * sh),
                            (b[2] - b[0]) / sw,
                            (b[3] - b[1]) / sh,
                        ]
                    })
                    .collect(),
            });
            valid.push([vh, vw]);
        }
        Ok(Batch {
            epoch,
            index,
            size,
            pixels,
            targets,
            valid,
        })
    }

    /// Iterates the batches of `epoch` starting at batch `start` (for exact resume), decoding
    /// on `workers` threads.
    pub fn epoch(&self, epoch: u64, start: usize) -> EpochIter {
        let plan: Vec<(usize, Vec<usize>)> = self
            .plan(epoch)
            .into_iter()
            .enumerate()
            .skip(start)
            .collect();
        let total = plan.len();
        let (job_tx, job_rx) = crossbeam_channel::unbounded::<(usize, Vec<usize>)>();
        let (res_tx, res_rx) = crossbeam_channel::unbounded::<(usize, Result<Batch>)>();
        let workers = (0..self.cfg.workers.min(total.max(1)))
            .map(|_| {
                let loader = self.clone();
                let jobs: Receiver<(usize, Vec<usize>)> = job_rx.clone();
                let results: Sender<(usize, Result<Batch>)> = res_tx.clone();
                std::thread::spawn(move || {
                    let mut resizer = fast_image_resize::Resizer::new();
                    for (index, images) in jobs.iter() {
                        let b = loader.make_batch(epoch, index, &images, &mut resizer);
                        if results.send((index, b)).is_err() {
                            break; // the consumer is gone
                        }
                    }
                })
            })
            .collect();
        let mut it = EpochIter {
            plan: plan.into_iter(),
            job_tx: Some(job_tx),
            results: res_rx,
            ready: BTreeMap::new(),
            next: start,
            end: start + total,
            workers,
            in_flight: 0,
        };
        for _ in 0..self.cfg.prefetch {
            it.submit();
        }
        it
    }
}

/// The batches of one epoch, in order. Dropping it stops the workers.
pub struct EpochIter {
    plan: std::vec::IntoIter<(usize, Vec<usize>)>,
    job_tx: Option<Sender<(usize, Vec<usize>)>>,
    results: Receiver<(usize, Result<Batch>)>,
    ready: BTreeMap<usize, Result<Batch>>,
    next: usize,
    end: usize,
    workers: Vec<JoinHandle<()>>,
    in_flight: usize,
}

impl EpochIter {
    fn submit(&mut self) {
        if let (Some(job), Some(tx)) = (self.plan.next(), &self.job_tx)
            && tx.send(job).is_ok()
        {
            self.in_flight += 1;
        }
    }

    /// Batches left in this epoch.
    pub fn remaining(&self) -> usize {
        self.end - self.next
    }
}

impl Iterator for EpochIter {
    type Item = Result<Batch>;

    fn next(&mut self) -> Option<Result<Batch>> {
        if self.next >= self.end {
            return None;
        }
        loop {
            if let Some(b) = self.ready.remove(&self.next) {
                self.next += 1;
                self.in_flight -= 1;
                self.submit();
                return Some(b);
            }
            match self.results.recv() {
                Ok((i, b)) => {
                    self.ready.insert(i, b);
                }
                Err(_) => {
                    self.next = self.end;
                    return Some(Err(Error::Loader("worker threads stopped".into())));
                }
            }
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        let r = self.remaining();
        (r, Some(r))
    }
}

impl Drop for EpochIter {
    fn drop(&mut self) {
        // Closing the job channel ends each worker's loop after its current batch.
        self.job_tx = None;
        for w in self.workers.drain(..) {
            let _ = w.join();
        }
    }
}
