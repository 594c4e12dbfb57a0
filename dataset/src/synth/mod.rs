//! Deterministic synthetic COCO dataset: textured shapes on cluttered backgrounds.
//!
//! Layout written by [`generate`]: `OUT/{train,val,test}/instances.json` (COCO, category ids
//! 1..=10, image and annotation ids from 1 per split) and `OUT/{train,val,test}/images/NNNNNN.jpg`.
//! `val` is for choosing (the best checkpoint, a schedule), `test` is held out for reporting:
//! nothing in training or selection reads it.
//!
//! Each image is a pure function of `(seed, split, image index)`: it draws from its own
//! [`Rng::fork`] stream, so images are independent of each other and of the number of worker
//! threads, and the same seed and config give byte-identical files (for a given build: the
//! JPEG encoder and the float maths of the platform are part of the recipe).
//!
//! At the default 256×256 about 33 % of the annotations are COCO-small, 41 % medium and 25 %
//! large; there are 8.8 objects per image on average (0–20, ~6 % empty images) and the ten
//! classes each have 10 ± 0.5 % of the objects.
//!
//! What an image contains, in drawing order:
//! 1. a background (linear/radial gradient, multi-octave value noise, tiles, stripes or a
//!    checkerboard), often with a fine grain texture, plus clutter: thin lines and faint
//!    irregular blobs;
//! 2. distractors that are not annotated: scribbles, lines, irregular blobs, half discs,
//!    L shapes, bars, zigzags and spirals, painted like the objects;
//! 3. 0–20 objects of [`CLASS_NAMES`], each with random colour and texture (solid,
//!    gradient, stripes, checker, noise), rotation, aspect stretch 0.5–2, sometimes an outline
//!    or slight transparency; sizes span the COCO small/medium/large buckets, objects may be cut
//!    by the image border and overlap each other;
//! 4. a few thin foreground distractors that may cross objects;
//! 5. photometric post-processing: optional blur, uneven illumination, contrast change and
//!    pixel noise, then JPEG compression.
//!
//! Colours are drawn independently of the class, and each object's colours keep a minimum (but
//! random) distance from the mean background colour under it, so no class can be recognised by
//! colour and no object is invisible.
//!
//! **Boxes are visible boxes**, as in COCO (whose boxes bound the visible segmentation): the
//! tight box of the pixels where the object is on top (coverage ≥ 0.5), so occluded and
//! truncated parts are excluded and the box is automatically clipped to the image. An object
//! whose visible pixels are less than [`MIN_VISIBLE_FRACTION`] of its full (amodal) area,
//! because it is covered or cut by the border, gets no annotation: a detector cannot be asked to
//! find a sliver, and an amodal box around a mostly hidden object would be a guess.

mod canvas;
mod paint;
mod raster;
mod render;
mod scene;
mod shapes;
#[cfg(test)]
mod tests;

use canvas::*;
use paint::*;
use raster::*;
pub use render::render_image;
use scene::*;
use shapes::*;

use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use serde::Serialize;

use crate::coco::{CocoAnnotation, CocoCategory, CocoFile, CocoImage};
use crate::error::{Error, Result};
use crate::rng::Rng;

/// Object classes; category id = index + 1.
pub const CLASS_NAMES: [&str; 10] = [
    "disc",
    "rectangle",
    "triangle",
    "star",
    "ring",
    "cross",
    "hexagon",
    "arrow",
    "heart",
    "crescent",
];

/// Most objects drawn in one image.
pub const MAX_OBJECTS: usize = 20;
/// Objects with less of their area visible (occluded or outside the image) are not annotated.
pub const MIN_VISIBLE_FRACTION: f32 = 0.3;
/// JPEG quality of the written images.
pub const JPEG_QUALITY: u8 = 90;
/// Bumped whenever the generated content changes; written into `info.version`.
pub const GENERATOR_VERSION: u32 = 1;

const MIN_SIDE: u32 = 64;
const MAX_SIDE: u32 = 4096;
const MAX_IMAGES_PER_SPLIT: usize = 10_000_000;
/// Vertical sub-scanlines per pixel row in the rasteriser (horizontal coverage is exact).
const SUBSAMPLES: usize = 5;

/// COCO area thresholds (pixels²).
const SMALL_AREA: f64 = 32.0 * 32.0;
const MEDIUM_AREA: f64 = 96.0 * 96.0;

/// What to generate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SynthConfig {
    /// Number of training images.
    pub train: usize,
    /// Number of validation images (for selection).
    pub val: usize,
    /// Number of held-out test images (for reporting only); 0 writes no `test/` folder.
    pub test: usize,
    pub seed: u64,
    /// Image width in pixels (64..=4096).
    pub width: u32,
    /// Image height in pixels (64..=4096).
    pub height: u32,
}

impl Default for SynthConfig {
    /// 2000 + 300 + 300 images of 256×256: enough variety to train a tiny detector, small
    /// enough to generate in seconds and to train on on 2 CPU cores.
    fn default() -> Self {
        Self {
            train: 2000,
            val: 300,
            test: 300,
            seed: 0,
            width: 256,
            height: 256,
        }
    }
}

impl SynthConfig {
    /// Checks sizes and counts, with a message that says what to change.
    pub fn validate(&self) -> Result<()> {
        for (what, v) in [
            ("synthetic image width", self.width),
            ("synthetic image height", self.height),
        ] {
            if !(MIN_SIDE..=MAX_SIDE).contains(&v) {
                return Err(Error::InvalidArgument {
                    what,
                    message: format!("{v} px is outside {MIN_SIDE}..={MAX_SIDE}"),
                });
            }
        }
        for (what, v) in [
            ("synthetic train image count", self.train),
            ("synthetic val image count", self.val),
            ("synthetic test image count", self.test),
        ] {
            if v > MAX_IMAGES_PER_SPLIT {
                return Err(Error::InvalidArgument {
                    what,
                    message: format!("{v} is more than the limit of {MAX_IMAGES_PER_SPLIT}"),
                });
            }
        }
        if self.train + self.val + self.test == 0 {
            return Err(Error::InvalidArgument {
                what: "synthetic image counts",
                message: "train, val and test are all 0; ask for at least one image".into(),
            });
        }
        Ok(())
    }
}

/// A dataset split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Split {
    Train,
    Val,
    /// Held out: never trained on, never used to pick anything.
    Test,
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
            Split::Test => "test",
        }
    }

    fn salt(self) -> u64 {
        match self {
            Split::Train => 0x0074_7261_696e,
            Split::Val => 0x0076_616c,
            Split::Test => 0x7465_7374,
        }
    }
}

/// One annotated object of a rendered image.
#[derive(Debug, Clone, PartialEq)]
pub struct SynthObject {
    /// Class index into [`CLASS_NAMES`] (category id - 1).
    pub class: usize,
    /// Visible box `[x, y, w, h]` in pixels, inside the image.
    pub bbox: [f64; 4],
    /// Visible pixels / full shape area.
    pub visible_fraction: f32,
}

/// One rendered image with its annotations.
#[derive(Debug, Clone)]
pub struct SynthImage {
    pub image: image::RgbImage,
    pub objects: Vec<SynthObject>,
    /// Objects drawn but left unannotated because too little of them is visible.
    pub hidden: usize,
}

/// Per-class object count.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct ClassCount {
    pub category_id: u64,
    pub name: String,
    pub count: usize,
}

/// Statistics of one written split.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SplitStats {
    pub split: String,
    pub images: usize,
    pub objects: usize,
    pub per_class: Vec<ClassCount>,
    /// Objects by COCO area bucket of the annotation `area`: < 32², < 96², ≥ 96².
    pub small: usize,
    pub medium: usize,
    pub large: usize,
    pub min_objects_per_image: usize,
    pub max_objects_per_image: usize,
    pub empty_images: usize,
    /// Objects drawn but not annotated (more than 70 % occluded or outside the image).
    pub hidden_objects: usize,
}

impl SplitStats {
    fn new(split: Split) -> Self {
        Self {
            split: split.name().into(),
            images: 0,
            objects: 0,
            per_class: categories()
                .into_iter()
                .map(|c| ClassCount {
                    category_id: c.id,
                    name: c.name,
                    count: 0,
                })
                .collect(),
            small: 0,
            medium: 0,
            large: 0,
            min_objects_per_image: 0,
            max_objects_per_image: 0,
            empty_images: 0,
            hidden_objects: 0,
        }
    }

    fn add_image(&mut self, img: &RenderedMeta) {
        let n = img.objects.len();
        if self.images == 0 {
            self.min_objects_per_image = n;
        }
        self.min_objects_per_image = self.min_objects_per_image.min(n);
        self.max_objects_per_image = self.max_objects_per_image.max(n);
        self.images += 1;
        self.empty_images += usize::from(n == 0);
        self.hidden_objects += img.hidden;
        for o in &img.objects {
            self.objects += 1;
            if let Some(c) = self.per_class.get_mut(o.class) {
                c.count += 1;
            }
            let area = o.bbox[2] * o.bbox[3];
            if area < SMALL_AREA {
                self.small += 1;
            } else if area < MEDIUM_AREA {
                self.medium += 1;
            } else {
                self.large += 1;
            }
        }
    }

    pub fn mean_objects_per_image(&self) -> f64 {
        if self.images == 0 {
            0.0
        } else {
            self.objects as f64 / self.images as f64
        }
    }
}

/// What [`generate`] wrote.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
pub struct SynthStats {
    pub seed: u64,
    pub width: u32,
    pub height: u32,
    pub train: SplitStats,
    pub val: SplitStats,
    /// Absent when no test split was asked for.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub test: Option<SplitStats>,
}

fn pct(n: usize, total: usize) -> f64 {
    if total == 0 {
        0.0
    } else {
        100.0 * n as f64 / total as f64
    }
}

impl std::fmt::Display for SplitStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let n = self.objects;
        writeln!(
            f,
            "{}: {} images, {} objects ({:.2}/image, min {}, max {}), {} empty images, {} hidden objects not annotated",
            self.split,
            self.images,
            n,
            self.mean_objects_per_image(),
            self.min_objects_per_image,
            self.max_objects_per_image,
            self.empty_images,
            self.hidden_objects,
        )?;
        writeln!(
            f,
            "  area: small {} ({:.1}%), medium {} ({:.1}%), large {} ({:.1}%)",
            self.small,
            pct(self.small, n),
            self.medium,
            pct(self.medium, n),
            self.large,
            pct(self.large, n),
        )?;
        write!(f, "  classes:")?;
        for c in &self.per_class {
            write!(f, " {} {} ({:.1}%)", c.name, c.count, pct(c.count, n))?;
        }
        writeln!(f)
    }
}

impl std::fmt::Display for SynthStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        writeln!(
            f,
            "synthetic shapes dataset: seed {}, {}x{}, {} classes",
            self.seed,
            self.width,
            self.height,
            CLASS_NAMES.len()
        )?;
        write!(f, "{}{}", self.train, self.val)?;
        match &self.test {
            Some(t) => write!(f, "{t}"),
            None => Ok(()),
        }
    }
}

/// The categories written to every split.
pub fn categories() -> Vec<CocoCategory> {
    CLASS_NAMES
        .iter()
        .enumerate()
        .map(|(i, name)| CocoCategory {
            id: i as u64 + 1,
            name: (*name).to_string(),
            supercategory: Some("shape".into()),
        })
        .collect()
}

/// File name of image `index` inside a split's `images/` directory.
pub fn image_file_name(index: usize) -> String {
    format!("{index:06}.jpg")
}

/// What [`generate`] reports as it goes; the caller draws it (the CLI as a progress bar). The
/// data layer itself prints nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Progress {
    /// Generation starts: this many images in all splits.
    Start { images: u64 },
    /// A split starts.
    Split(&'static str),
    /// One more image is written (from any worker thread).
    Image,
    /// Every split is written.
    Done,
}

/// A receiver of [`Progress`], called from the worker threads.
pub type ProgressFn<'a> = &'a (dyn Fn(Progress) + Sync);

/// Writes `out/train/{instances.json,images/}`, `out/val/...` and, when `cfg.test > 0`,
/// `out/test/...`. A train or val split with 0 images still gets its (empty) `instances.json`. Files of a previous run that the new json does not list
/// are left alone.
pub fn generate(
    out: &Path,
    cfg: &SynthConfig,
    progress: Option<ProgressFn<'_>>,
) -> Result<SynthStats> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 16);
    generate_with_threads(out, cfg, progress, threads)
}

/// [`generate`] with an explicit worker count; the output does not depend on it.
pub fn generate_with_threads(
    out: &Path,
    cfg: &SynthConfig,
    progress: Option<ProgressFn<'_>>,
    threads: usize,
) -> Result<SynthStats> {
    cfg.validate()?;
    let report = |p: Progress| {
        if let Some(f) = progress {
            f(p);
        }
    };
    report(Progress::Start {
        images: (cfg.train + cfg.val + cfg.test) as u64,
    });
    let train = generate_split(out, cfg, Split::Train, cfg.train, threads, &report)?;
    let val = generate_split(out, cfg, Split::Val, cfg.val, threads, &report)?;
    let test = match cfg.test {
        0 => None,
        n => Some(generate_split(out, cfg, Split::Test, n, threads, &report)?),
    };
    report(Progress::Done);
    Ok(SynthStats {
        seed: cfg.seed,
        width: cfg.width,
        height: cfg.height,
        train,
        val,
        test,
    })
}

/// The part of a rendered image kept after its pixels are written.
struct RenderedMeta {
    objects: Vec<SynthObject>,
    hidden: usize,
}

fn generate_split(
    out: &Path,
    cfg: &SynthConfig,
    split: Split,
    count: usize,
    threads: usize,
    report: ProgressFn<'_>,
) -> Result<SplitStats> {
    report(Progress::Split(split.name()));
    let dir = out.join(split.name());
    let images_dir = dir.join("images");
    std::fs::create_dir_all(&images_dir).map_err(|e| Error::io(&images_dir, e))?;

    let slots: Mutex<Vec<Option<RenderedMeta>>> = Mutex::new((0..count).map(|_| None).collect());
    let errors: Mutex<Vec<(usize, Error)>> = Mutex::new(Vec::new());
    let next = AtomicUsize::new(0);
    let abort = AtomicBool::new(false);
    let threads = threads.clamp(1, count.max(1));
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    if abort.load(Ordering::Relaxed) {
                        break;
                    }
                    let i = next.fetch_add(1, Ordering::Relaxed);
                    if i >= count {
                        break;
                    }
                    match write_one(cfg, split, i, &images_dir) {
                        Ok(meta) => {
                            if let Ok(mut v) = slots.lock() {
                                v[i] = Some(meta);
                            }
                            report(Progress::Image);
                        }
                        Err(e) => {
                            abort.store(true, Ordering::Relaxed);
                            if let Ok(mut v) = errors.lock() {
                                v.push((i, e));
                            }
                        }
                    }
                }
            });
        }
    });
    let mut errors = errors.into_inner().unwrap_or_else(|p| p.into_inner());
    errors.sort_by_key(|(i, _)| *i);
    if let Some((_, e)) = errors.into_iter().next() {
        return Err(e);
    }
    let slots = slots.into_inner().unwrap_or_else(|p| p.into_inner());

    let mut stats = SplitStats::new(split);
    let mut images = Vec::with_capacity(count);
    let mut annotations = Vec::new();
    for (i, slot) in slots.into_iter().enumerate() {
        let Some(meta) = slot else {
            return Err(Error::Loader(format!(
                "synthetic {} image {i} was not generated",
                split.name()
            )));
        };
        let image_id = i as u64 + 1;
        images.push(CocoImage {
            id: image_id,
            file_name: image_file_name(i),
            width: cfg.width,
            height: cfg.height,
        });
        for o in &meta.objects {
            annotations.push(CocoAnnotation {
                id: annotations.len() as u64 + 1,
                image_id,
                category_id: o.class as u64 + 1,
                bbox: o.bbox.to_vec(),
                area: Some(o.bbox[2] * o.bbox[3]),
                iscrowd: 0,
            });
        }
        stats.add_image(&meta);
    }
    let file = CocoFile {
        info: Some(serde_json::json!({
            "description": format!("codetr synthetic shapes, {} split", split.name()),
            "generator_version": GENERATOR_VERSION,
            "seed": cfg.seed,
        })),
        images,
        annotations,
        categories: categories(),
    };
    file.write(&dir.join("instances.json"))?;
    Ok(stats)
}

fn write_one(
    cfg: &SynthConfig,
    split: Split,
    index: usize,
    images_dir: &Path,
) -> Result<RenderedMeta> {
    let r = render_image(cfg, split, index);
    let path: PathBuf = images_dir.join(image_file_name(index));
    let mut bytes = Vec::with_capacity(r.image.len() / 4);
    image::codecs::jpeg::JpegEncoder::new_with_quality(&mut bytes, JPEG_QUALITY)
        .encode_image(&r.image)
        .map_err(|e| Error::Image {
            path: path.clone(),
            image_id: index as u64 + 1,
            message: format!("cannot encode JPEG: {e}"),
        })?;
    crate::fsutil::write_atomic(&path, &bytes)?;
    Ok(RenderedMeta {
        objects: r.objects,
        hidden: r.hidden,
    })
}
