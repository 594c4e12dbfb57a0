//! Deterministic synthetic COCO dataset: textured shapes on cluttered backgrounds.
//!
//! Layout written by [`generate`]: `OUT/{train,val}/instances.json` (COCO, category ids
//! 1..=10, image and annotation ids from 1 per split) and `OUT/{train,val}/images/NNNNNN.jpg`.
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
    /// Number of validation images.
    pub val: usize,
    pub seed: u64,
    /// Image width in pixels (64..=4096).
    pub width: u32,
    /// Image height in pixels (64..=4096).
    pub height: u32,
}

impl Default for SynthConfig {
    /// 2000 + 300 images of 256×256: enough variety to train a tiny detector, small enough to
    /// generate in seconds and to train on on 2 CPU cores.
    fn default() -> Self {
        Self {
            train: 2000,
            val: 300,
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
        ] {
            if v > MAX_IMAGES_PER_SPLIT {
                return Err(Error::InvalidArgument {
                    what,
                    message: format!("{v} is more than the limit of {MAX_IMAGES_PER_SPLIT}"),
                });
            }
        }
        if self.train + self.val == 0 {
            return Err(Error::InvalidArgument {
                what: "synthetic image counts",
                message: "train and val are both 0; ask for at least one image".into(),
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
}

impl Split {
    pub fn name(self) -> &'static str {
        match self {
            Split::Train => "train",
            Split::Val => "val",
        }
    }

    fn salt(self) -> u64 {
        match self {
            Split::Train => 0x0074_7261_696e,
            Split::Val => 0x0076_616c,
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
        write!(f, "{}{}", self.train, self.val)
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

/// Writes `out/train/{instances.json,images/}` and `out/val/...`. A split with 0 images still
/// gets its (empty) `instances.json`. Files of a previous run that the new json does not list
/// are left alone.
pub fn generate(out: &Path, cfg: &SynthConfig, progress: bool) -> Result<SynthStats> {
    let threads = std::thread::available_parallelism()
        .map_or(2, |n| n.get())
        .clamp(2, 16);
    generate_with_threads(out, cfg, progress, threads)
}

/// [`generate`] with an explicit worker count; the output does not depend on it.
pub fn generate_with_threads(
    out: &Path,
    cfg: &SynthConfig,
    progress: bool,
    threads: usize,
) -> Result<SynthStats> {
    cfg.validate()?;
    let total = (cfg.train + cfg.val) as u64;
    let bar = if progress {
        let style = indicatif::ProgressStyle::with_template(
            "{msg:>10} [{bar:40}] {pos}/{len} images ({per_sec}, eta {eta})",
        )
        .map(|s| s.progress_chars("=> "))
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar());
        indicatif::ProgressBar::new(total).with_style(style)
    } else {
        indicatif::ProgressBar::hidden()
    };
    let train = generate_split(out, cfg, Split::Train, cfg.train, threads, &bar)?;
    let val = generate_split(out, cfg, Split::Val, cfg.val, threads, &bar)?;
    bar.finish_and_clear();
    Ok(SynthStats {
        seed: cfg.seed,
        width: cfg.width,
        height: cfg.height,
        train,
        val,
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
    bar: &indicatif::ProgressBar,
) -> Result<SplitStats> {
    bar.set_message(split.name());
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
                            bar.inc(1);
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

// ---------------------------------------------------------------------------------------------
// Rendering of one image
// ---------------------------------------------------------------------------------------------

fn image_rng(seed: u64, split: Split, index: usize) -> Rng {
    let split_seed = Rng::fork(seed, split.salt()).next_u64();
    Rng::fork(split_seed, index as u64)
}

/// Renders image `index` of `split`: a pure function of the config's seed and size.
pub fn render_image(cfg: &SynthConfig, split: Split, index: usize) -> SynthImage {
    let mut rng = image_rng(cfg.seed, split, index);
    let mut cv = Canvas::new(cfg.width as usize, cfg.height as usize);
    let scale = (cfg.width.min(cfg.height) as f32 / 256.0).max(0.25);

    draw_background(&mut cv, &mut rng, scale);
    for _ in 0..rng.range_incl(1, 7) {
        draw_distractor(&mut cv, &mut rng, scale, false);
    }

    // Objects: sizes first, then drawn roughly big-first (with jitter) so that small objects are
    // not routinely buried under big ones.
    let n = if rng.chance(0.06) {
        0
    } else {
        1 + rng.below(MAX_OBJECTS)
    };
    let mut plans: Vec<(f32, usize, f32)> = Vec::with_capacity(n);
    let mut large = 0;
    for _ in 0..n {
        let class = rng.below(CLASS_NAMES.len());
        let area = sample_object_area(&mut rng, cv.w, cv.h, &mut large);
        let order = area * (rng.normal() * 1.0).exp();
        plans.push((order, class, area));
    }
    plans.sort_by(|a, b| b.0.total_cmp(&a.0));

    let mut drawn: Vec<DrawnObject> = Vec::with_capacity(n);
    for &(_, class, area) in &plans {
        if let Some(obj) = draw_object(&mut cv, &mut rng, class, area, &drawn) {
            drawn.push(obj);
        }
        if rng.chance(0.08) {
            draw_distractor(&mut cv, &mut rng, scale, true);
        }
    }
    for _ in 0..rng.range_incl(0, 2) {
        draw_distractor(&mut cv, &mut rng, scale, true);
    }

    postprocess(&mut cv, &mut rng, scale);

    let (objects, hidden) = visible_objects(&cv, &drawn);
    SynthImage {
        image: cv.to_image(),
        objects,
        hidden,
    }
}

/// Annotations from the owner map: the visible box of each drawn object, or nothing when less
/// than [`MIN_VISIBLE_FRACTION`] of it is visible. Returns the objects and the hidden count.
fn visible_objects(cv: &Canvas, drawn: &[DrawnObject]) -> (Vec<SynthObject>, usize) {
    let mut boxes = vec![(usize::MAX, usize::MAX, 0usize, 0usize, 0.0f32); drawn.len()];
    for (y, (row, cov)) in cv
        .owner
        .chunks_exact(cv.w)
        .zip(cv.owner_cov.chunks_exact(cv.w))
        .enumerate()
    {
        for (x, (&o, &c)) in row.iter().zip(cov).enumerate() {
            let Some(b) = (o as usize).checked_sub(1).and_then(|k| boxes.get_mut(k)) else {
                continue;
            };
            b.0 = b.0.min(x);
            b.1 = b.1.min(y);
            b.2 = b.2.max(x);
            b.3 = b.3.max(y);
            b.4 += c;
        }
    }
    let mut objects = Vec::with_capacity(drawn.len());
    let mut hidden = 0;
    for (d, &(x0, y0, x1, y1, count)) in drawn.iter().zip(&boxes) {
        // Visible area: the owner's opacity summed over its pixels (≈ the shape's area when
        // nothing covers it).
        let visible = count / d.area.max(1.0);
        if count <= 0.0 || visible < MIN_VISIBLE_FRACTION || x1 - x0 < 1 || y1 - y0 < 1 {
            hidden += 1;
            continue;
        }
        objects.push(SynthObject {
            class: d.class,
            bbox: [
                x0 as f64,
                y0 as f64,
                (x1 + 1 - x0) as f64,
                (y1 + 1 - y0) as f64,
            ],
            visible_fraction: visible.min(1.0),
        });
    }
    (objects, hidden)
}

/// Box area of an object: a COCO bucket chosen at random (30 % small, 28 % medium, 42 % large,
/// at most 5 large per image), then log-uniform inside it. The mix over-asks for large boxes
/// because crowded images skip some of them and occlusion and truncation shrink visible boxes;
/// the written annotations come out near 33 % small / 41 % medium / 25 % large at 256×256.
fn sample_object_area(rng: &mut Rng, w: usize, h: usize, large: &mut usize) -> f32 {
    let side = w.min(h) as f32;
    let max_area = (0.8 * side).powi(2);
    let min_area = 64.0f32;
    let u = rng.f32();
    let (mut lo, mut hi) = if u < 0.30 {
        (min_area, SMALL_AREA as f32)
    } else if u < 0.58 || *large >= 5 {
        (SMALL_AREA as f32, MEDIUM_AREA as f32)
    } else {
        *large += 1;
        (1.15 * MEDIUM_AREA as f32, max_area)
    };
    hi = hi.min(max_area);
    lo = lo.min(hi * 0.5);
    (lo.ln() + (hi.ln() - lo.ln()) * rng.f32()).exp()
}

struct DrawnObject {
    class: usize,
    /// Full (amodal) shape area in pixels².
    area: f32,
    /// Box of the full shape, possibly outside the image: `[x0, y0, x1, y1]`.
    bbox: [f32; 4],
}

fn draw_object(
    cv: &mut Canvas,
    rng: &mut Rng,
    class: usize,
    target_area: f32,
    drawn: &[DrawnObject],
) -> Option<DrawnObject> {
    let id = u16::try_from(drawn.len() + 1).ok()?;
    let unit = class_shape(class, rng);
    let stretch = (rng.uniform(0.5f32.ln(), 2.0f32.ln())).exp();
    let theta = match class {
        // A heart upside down reads as something else; keep it roughly upright.
        8 => rng.uniform(-0.8, 0.8),
        _ => rng.uniform(0.0, std::f32::consts::TAU),
    };
    let truncate = if rng.chance(0.3) {
        rng.uniform(0.0, 0.55)
    } else {
        0.0
    };
    // Try a few positions that do not bury an earlier object's box.
    let mut placed = None;
    for _ in 0..8 {
        let shape = place_shape(
            &unit,
            rng,
            stretch,
            theta,
            target_area,
            cv.w,
            cv.h,
            truncate,
        );
        let b = shape.bbox();
        let buries = drawn.iter().any(|d| {
            let iw = (b[2].min(d.bbox[2]) - b[0].max(d.bbox[0])).max(0.0);
            let ih = (b[3].min(d.bbox[3]) - b[1].max(d.bbox[1])).max(0.0);
            let da = (d.bbox[2] - d.bbox[0]) * (d.bbox[3] - d.bbox[1]);
            iw * ih > 0.55 * da
        });
        if !buries {
            placed = Some(shape);
            break;
        }
    }
    let shape = placed?;
    let b = shape.bbox();
    let bg = cv.samples_in(b);
    let paint = object_paint(rng, &bg, b);
    let alpha = if rng.chance(0.15) {
        rng.uniform(0.75, 0.95)
    } else {
        1.0
    };

    if rng.chance(0.2) {
        // Outline: the shape grown by `t` pixels per side, in a colour that contrasts with both
        // the background and the fill.
        let t = rng.uniform(1.0, 2.5);
        let (cx, cy) = ((b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5);
        let kx = 1.0 + 2.0 * t / (b[2] - b[0]).max(1.0);
        let ky = 1.0 + 2.0 * t / (b[3] - b[1]).max(1.0);
        let grown: Vec<Vec<[f32; 2]>> = shape
            .contours
            .iter()
            .map(|c| {
                c.iter()
                    .map(|p| [cx + (p[0] - cx) * kx, cy + (p[1] - cy) * ky])
                    .collect()
            })
            .collect();
        let mut avoid = bg;
        avoid.extend(std::iter::repeat_n(paint.c0, avoid.len().max(1)));
        let oc = contrasting_colour(rng, &avoid, 50.0);
        let cov = rasterize(&grown, cv.w, cv.h);
        cv.composite(&cov, &Paint::solid(oc), alpha, Some(id));
    }
    let cov = rasterize(&shape.contours, cv.w, cv.h);
    cv.composite(&cov, &paint, alpha, Some(id));
    Some(DrawnObject {
        class,
        area: shape.area(),
        bbox: b,
    })
}

// ---------------------------------------------------------------------------------------------
// Shapes
// ---------------------------------------------------------------------------------------------

type Pt = [f32; 2];

/// Polygons filled with the even-odd rule; the first contour is the outline, later ones holes.
#[derive(Debug, Clone)]
struct Shape {
    contours: Vec<Vec<Pt>>,
}

fn signed_area(c: &[Pt]) -> f32 {
    let n = c.len();
    let mut s = 0.0;
    for i in 0..n {
        let (a, b) = (c[i], c[(i + 1) % n]);
        s += a[0] * b[1] - b[0] * a[1];
    }
    0.5 * s
}

impl Shape {
    fn bbox(&self) -> [f32; 4] {
        bbox_of(&self.contours)
    }

    /// Area in pixels² (outline minus holes).
    fn area(&self) -> f32 {
        let mut it = self.contours.iter();
        let outer = it.next().map_or(0.0, |c| signed_area(c).abs());
        outer - it.map(|c| signed_area(c).abs()).sum::<f32>()
    }
}

fn bbox_of(contours: &[Vec<Pt>]) -> [f32; 4] {
    let mut b = [
        f32::INFINITY,
        f32::INFINITY,
        f32::NEG_INFINITY,
        f32::NEG_INFINITY,
    ];
    for p in contours.iter().flatten() {
        b[0] = b[0].min(p[0]);
        b[1] = b[1].min(p[1]);
        b[2] = b[2].max(p[0]);
        b[3] = b[3].max(p[1]);
    }
    b
}

fn ellipse(cx: f32, cy: f32, rx: f32, ry: f32, n: usize) -> Vec<Pt> {
    (0..n)
        .map(|i| {
            let a = std::f32::consts::TAU * i as f32 / n as f32;
            [cx + rx * a.cos(), cy + ry * a.sin()]
        })
        .collect()
}

fn arc(cx: f32, cy: f32, r: f32, a0: f32, a1: f32, n: usize) -> Vec<Pt> {
    (0..=n)
        .map(|i| {
            let a = a0 + (a1 - a0) * i as f32 / n as f32;
            [cx + r * a.cos(), cy + r * a.sin()]
        })
        .collect()
}

/// A class's shape in unit coordinates (about [-1, 1]²), with per-instance variation.
fn class_shape(class: usize, rng: &mut Rng) -> Vec<Vec<Pt>> {
    use std::f32::consts::{FRAC_PI_2, PI, TAU};
    match class {
        0 => vec![ellipse(0.0, 0.0, 1.0, 1.0, 64)],
        1 => vec![vec![[-1.0, -1.0], [1.0, -1.0], [1.0, 1.0], [-1.0, 1.0]]],
        2 => {
            let v = (0..3)
                .map(|i| {
                    let a = -FRAC_PI_2 + TAU * i as f32 / 3.0 + rng.uniform(-0.15, 0.15);
                    let r = rng.uniform(0.9, 1.1);
                    [r * a.cos(), r * a.sin()]
                })
                .collect();
            vec![v]
        }
        3 => {
            let points = if rng.chance(0.6) { 5 } else { 6 };
            let inner = rng.uniform(0.38, 0.55);
            let v = (0..2 * points)
                .map(|i| {
                    let a = -FRAC_PI_2 + PI * i as f32 / points as f32;
                    let r = if i % 2 == 0 { 1.0 } else { inner };
                    [r * a.cos(), r * a.sin()]
                })
                .collect();
            vec![v]
        }
        4 => {
            let inner = rng.uniform(0.45, 0.72);
            vec![
                ellipse(0.0, 0.0, 1.0, 1.0, 64),
                ellipse(0.0, 0.0, inner, inner, 48),
            ]
        }
        5 => {
            let a = rng.uniform(0.22, 0.38);
            vec![vec![
                [-a, -1.0],
                [a, -1.0],
                [a, -a],
                [1.0, -a],
                [1.0, a],
                [a, a],
                [a, 1.0],
                [-a, 1.0],
                [-a, a],
                [-1.0, a],
                [-1.0, -a],
                [-a, -a],
            ]]
        }
        6 => vec![ellipse(0.0, 0.0, 1.0, 1.0, 6)],
        7 => {
            let shaft = rng.uniform(0.14, 0.26);
            let head = rng.uniform(0.5, 0.75);
            let neck = rng.uniform(0.0, 0.35);
            vec![vec![
                [-1.0, -shaft],
                [neck, -shaft],
                [neck, -head],
                [1.0, 0.0],
                [neck, head],
                [neck, shaft],
                [-1.0, shaft],
            ]]
        }
        8 => {
            let v = (0..64)
                .map(|i| {
                    let t = TAU * i as f32 / 64.0;
                    let x = 16.0 * t.sin().powi(3);
                    let y = 13.0 * t.cos()
                        - 5.0 * (2.0 * t).cos()
                        - 2.0 * (3.0 * t).cos()
                        - (4.0 * t).cos();
                    [x / 17.0, -y / 17.0]
                })
                .collect();
            vec![v]
        }
        _ => {
            // Crescent: the unit disc minus a disc of radius r2 centred at (d, 0).
            let r2 = rng.uniform(0.72, 0.95);
            let d = rng.uniform(0.3, 0.6);
            let xi = (1.0 - r2 * r2 + d * d) / (2.0 * d);
            let yi = (1.0 - xi * xi).max(0.0).sqrt();
            let alpha = yi.atan2(xi);
            let beta = yi.atan2(xi - d);
            let mut v = arc(0.0, 0.0, 1.0, alpha, TAU - alpha, 40);
            let mut inner = arc(d, 0.0, r2, TAU - beta, beta, 32);
            // Endpoints coincide with the outer arc's.
            inner.remove(0);
            inner.pop();
            v.extend(inner);
            vec![v]
        }
    }
}

/// Stretches, rotates and scales unit contours so the box has `target_area`, then moves the box
/// to a random place; `truncate` is how much of the box (per axis) may hang outside the image.
#[allow(clippy::too_many_arguments)]
fn place_shape(
    unit: &[Vec<Pt>],
    rng: &mut Rng,
    stretch: f32,
    theta: f32,
    target_area: f32,
    w: usize,
    h: usize,
    truncate: f32,
) -> Shape {
    let (sx, sy) = (stretch.sqrt(), 1.0 / stretch.sqrt());
    let (s, c) = theta.sin_cos();
    let mut contours: Vec<Vec<Pt>> = unit
        .iter()
        .map(|ct| {
            ct.iter()
                .map(|p| {
                    let (x, y) = (p[0] * sx, p[1] * sy);
                    [c * x - s * y, s * x + c * y]
                })
                .collect()
        })
        .collect();
    let b = bbox_of(&contours);
    let (bw1, bh1) = ((b[2] - b[0]).max(1e-3), (b[3] - b[1]).max(1e-3));
    let (wf, hf) = (w as f32, h as f32);
    let k = (target_area / (bw1 * bh1))
        .sqrt()
        .min(0.95 * wf / bw1)
        .min(0.95 * hf / bh1);
    let (bw, bh) = (bw1 * k, bh1 * k);
    let pick = |rng: &mut Rng, len: f32, side: f32| {
        let lo = len * (0.5 - truncate);
        let hi = side - lo;
        if hi > lo {
            rng.uniform(lo, hi)
        } else {
            side * 0.5
        }
    };
    let cx = pick(rng, bw, wf);
    let cy = pick(rng, bh, hf);
    let (mx, my) = ((b[0] + b[2]) * 0.5, (b[1] + b[3]) * 0.5);
    for p in contours.iter_mut().flatten() {
        p[0] = cx + (p[0] - mx) * k;
        p[1] = cy + (p[1] - my) * k;
    }
    Shape { contours }
}

// ---------------------------------------------------------------------------------------------
// Rasteriser: even-odd polygon fill with anti-aliasing
// ---------------------------------------------------------------------------------------------

/// Per-pixel coverage (0..=1) of a polygon over a window of the canvas.
#[derive(Debug, Clone)]
struct Coverage {
    x0: usize,
    y0: usize,
    w: usize,
    h: usize,
    cov: Vec<f32>,
}

impl Coverage {
    fn empty() -> Self {
        Self {
            x0: 0,
            y0: 0,
            w: 0,
            h: 0,
            cov: Vec::new(),
        }
    }

    #[cfg(test)]
    fn sum(&self) -> f32 {
        self.cov.iter().sum()
    }
}

/// Rasterises closed polygons (even-odd rule) clipped to a `width`×`height` canvas. Each pixel
/// row is sampled on [`SUBSAMPLES`] horizontal lines; along each line the covered length of
/// every pixel is exact, so edges are anti-aliased in both directions.
fn rasterize(contours: &[Vec<Pt>], width: usize, height: usize) -> Coverage {
    let b = bbox_of(contours);
    if !b.iter().all(|v| v.is_finite()) {
        return Coverage::empty();
    }
    let clamp = |v: f32, hi: usize| v.clamp(0.0, hi as f32) as usize;
    let (x0, x1) = (clamp(b[0].floor(), width), clamp(b[2].ceil(), width));
    let (y0, y1) = (clamp(b[1].floor(), height), clamp(b[3].ceil(), height));
    if x1 <= x0 || y1 <= y0 {
        return Coverage::empty();
    }
    let (w, h) = (x1 - x0, y1 - y0);
    let mut cov = vec![0.0f32; w * h];
    let mut edges: Vec<[f32; 4]> = Vec::new();
    for c in contours {
        for i in 0..c.len() {
            let (a, e) = (c[i], c[(i + 1) % c.len()]);
            if a[1] != e[1] {
                edges.push([a[0], a[1], e[0], e[1]]);
            }
        }
    }
    let wsub = 1.0 / SUBSAMPLES as f32;
    let mut xs: Vec<f32> = Vec::with_capacity(16);
    for (row, line) in cov.chunks_exact_mut(w).enumerate() {
        for k in 0..SUBSAMPLES {
            let sy = (y0 + row) as f32 + (k as f32 + 0.5) * wsub;
            xs.clear();
            for &[ax, ay, bx, by] in &edges {
                if (ay <= sy) != (by <= sy) {
                    xs.push(ax + (sy - ay) * (bx - ax) / (by - ay) - x0 as f32);
                }
            }
            xs.sort_by(f32::total_cmp);
            for pair in xs.chunks_exact(2) {
                add_span(line, pair[0], pair[1], wsub);
            }
        }
    }
    for v in &mut cov {
        *v = v.min(1.0);
    }
    Coverage { x0, y0, w, h, cov }
}

/// Adds `weight` × the covered fraction of each pixel of `line` for the span [a, b).
fn add_span(line: &mut [f32], a: f32, b: f32, weight: f32) {
    let n = line.len() as f32;
    let (a, b) = (a.clamp(0.0, n), b.clamp(0.0, n));
    if b <= a {
        return;
    }
    let (ia, ib) = (a as usize, b as usize);
    if ia == ib {
        line[ia] += (b - a) * weight;
        return;
    }
    line[ia] += (ia as f32 + 1.0 - a) * weight;
    for v in &mut line[ia + 1..ib] {
        *v += weight;
    }
    if ib < line.len() {
        line[ib] += (b - ib as f32) * weight;
    }
}

/// A thick line segment as a quad.
fn segment_quad(p: Pt, q: Pt, half: f32) -> Option<Vec<Pt>> {
    let (dx, dy) = (q[0] - p[0], q[1] - p[1]);
    let len = (dx * dx + dy * dy).sqrt();
    if len < 1e-3 {
        return None;
    }
    let (nx, ny) = (-dy / len * half, dx / len * half);
    Some(vec![
        [p[0] + nx, p[1] + ny],
        [q[0] + nx, q[1] + ny],
        [q[0] - nx, q[1] - ny],
        [p[0] - nx, p[1] - ny],
    ])
}

// ---------------------------------------------------------------------------------------------
// Colour, noise and paint
// ---------------------------------------------------------------------------------------------

type Rgb = [f32; 3];

fn hsv(h: f32, s: f32, v: f32) -> Rgb {
    let h6 = h.rem_euclid(1.0) * 6.0;
    let i = h6.floor();
    let f = h6 - i;
    let (p, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    let (r, g, b) = match i as i32 {
        0 => (v, t, p),
        1 => (q, v, p),
        2 => (p, v, t),
        3 => (p, q, v),
        4 => (t, p, v),
        _ => (v, p, q),
    };
    [r * 255.0, g * 255.0, b * 255.0]
}

fn random_colour(rng: &mut Rng) -> Rgb {
    let s = if rng.chance(0.15) {
        rng.uniform(0.0, 0.12)
    } else {
        rng.f32()
    };
    hsv(rng.f32(), s, rng.uniform(0.06, 1.0))
}

fn dist(a: Rgb, b: Rgb) -> f32 {
    ((a[0] - b[0]).powi(2) + (a[1] - b[1]).powi(2) + (a[2] - b[2]).powi(2)).sqrt()
}

fn mix(a: Rgb, b: Rgb, t: f32) -> Rgb {
    [
        a[0] + (b[0] - a[0]) * t,
        a[1] + (b[1] - a[1]) * t,
        a[2] + (b[2] - a[2]) * t,
    ]
}

/// How far `c` stands out from the colours `avoid` (e.g. background samples): the RGB distance
/// (0..441) that 80 % of them exceed. Unlike the distance to their mean, this sees that a colour
/// in the middle of a two-colour texture is not always visible, and one equal to either is not.
fn contrast(c: Rgb, avoid: &[Rgb]) -> f32 {
    if avoid.is_empty() {
        return f32::INFINITY;
    }
    let mut d: Vec<f32> = avoid.iter().map(|&a| dist(c, a)).collect();
    let k = d.len() / 5;
    *d.select_nth_unstable_by(k, f32::total_cmp).1
}

/// A random colour whose [`contrast`] against `avoid` is at least `min_dist`, or the most
/// contrasting of the tries.
fn contrasting_colour(rng: &mut Rng, avoid: &[Rgb], min_dist: f32) -> Rgb {
    let mut best = random_colour(rng);
    let mut best_d = contrast(best, avoid);
    for _ in 0..32 {
        if best_d >= min_dist {
            break;
        }
        let c = random_colour(rng);
        let d = contrast(c, avoid);
        if d > best_d {
            best = c;
            best_d = d;
        }
    }
    best
}

/// Deterministic hash of a lattice point to [0, 1).
fn hash01(x: i64, y: i64, salt: u64) -> f32 {
    let mut h = (x as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15)
        ^ (y as u64).wrapping_mul(0xC2B2_AE3D_27D4_EB4F)
        ^ salt;
    h ^= h >> 31;
    h = h.wrapping_mul(0xBF58_476D_1CE4_E5B9);
    h ^= h >> 29;
    h = h.wrapping_mul(0x94D0_49BB_1331_11EB);
    h ^= h >> 32;
    (h >> 40) as f32 / (1u64 << 24) as f32
}

/// Smooth value noise on a lattice with spacing `cell` pixels: values in [0, 1].
#[derive(Debug, Clone)]
struct NoiseField {
    x0: f32,
    y0: f32,
    inv_cell: f32,
    gw: usize,
    gh: usize,
    v: Vec<f32>,
}

impl NoiseField {
    fn new(rng: &mut Rng, region: [f32; 4], cell: f32) -> Self {
        let cell = cell.max(1.0);
        let gw = ((region[2] - region[0]).max(1.0) / cell).ceil() as usize + 2;
        let gh = ((region[3] - region[1]).max(1.0) / cell).ceil() as usize + 2;
        Self {
            x0: region[0],
            y0: region[1],
            inv_cell: 1.0 / cell,
            gw,
            gh,
            v: (0..gw * gh).map(|_| rng.f32()).collect(),
        }
    }

    fn at(&self, x: f32, y: f32) -> f32 {
        let gx = ((x - self.x0) * self.inv_cell).clamp(0.0, self.gw as f32 - 1.001);
        let gy = ((y - self.y0) * self.inv_cell).clamp(0.0, self.gh as f32 - 1.001);
        let (ix, iy) = (gx as usize, gy as usize);
        let (fx, fy) = (gx - ix as f32, gy - iy as f32);
        let (sx, sy) = (fx * fx * (3.0 - 2.0 * fx), fy * fy * (3.0 - 2.0 * fy));
        let i = iy * self.gw + ix;
        let (a, b, c, d) = (
            self.v[i],
            self.v[i + 1],
            self.v[i + self.gw],
            self.v[i + self.gw + 1],
        );
        let top = a + (b - a) * sx;
        let bot = c + (d - c) * sx;
        top + (bot - top) * sy
    }
}

/// Fractal sum of value noise, normalised to about [0, 1].
#[derive(Debug, Clone)]
struct Fbm {
    octaves: Vec<NoiseField>,
    /// Contrast stretch around 0.5 (sums of octaves cluster near the middle).
    gain: f32,
}

impl Fbm {
    fn new(rng: &mut Rng, region: [f32; 4], cell: f32, octaves: usize) -> Self {
        let octaves: Vec<NoiseField> = (0..octaves.max(1))
            .map(|o| NoiseField::new(rng, region, cell / (1 << o) as f32))
            .collect();
        let gain = 1.0 + 0.6 * (octaves.len() - 1) as f32;
        Self { octaves, gain }
    }

    fn at(&self, x: f32, y: f32) -> f32 {
        let mut sum = 0.0;
        let mut wsum = 0.0;
        let mut w = 1.0;
        for o in &self.octaves {
            sum += w * o.at(x, y);
            wsum += w;
            w *= 0.5;
        }
        ((sum / wsum - 0.5) * self.gain + 0.5).clamp(0.0, 1.0)
    }
}

/// Anti-aliased square wave: 1 inside the "on" part of each period, 0 outside.
fn square_wave(u: f32, period: f32, duty: f32) -> f32 {
    let f = u.rem_euclid(period);
    let on = duty * period;
    if f < on {
        0.5 + f.min(on - f).min(0.5)
    } else {
        0.5 - (f - on).min(period - f).min(0.5)
    }
}

#[derive(Debug, Clone)]
enum Pattern {
    Solid,
    /// t = (p - o)·d, d already divided by the ramp length.
    Linear {
        ox: f32,
        oy: f32,
        dx: f32,
        dy: f32,
    },
    Radial {
        cx: f32,
        cy: f32,
        inv_r: f32,
    },
    Stripes {
        dx: f32,
        dy: f32,
        period: f32,
        duty: f32,
        phase: f32,
    },
    Checker {
        cos: f32,
        sin: f32,
        cell: f32,
        pu: f32,
        pv: f32,
    },
    Noise(Fbm),
}

#[derive(Debug, Clone)]
struct Paint {
    c0: Rgb,
    c1: Rgb,
    pattern: Pattern,
}

impl Paint {
    fn solid(c: Rgb) -> Self {
        Self {
            c0: c,
            c1: c,
            pattern: Pattern::Solid,
        }
    }

    fn at(&self, x: f32, y: f32) -> Rgb {
        let t = match &self.pattern {
            Pattern::Solid => return self.c0,
            Pattern::Linear { ox, oy, dx, dy } => ((x - ox) * dx + (y - oy) * dy).clamp(0.0, 1.0),
            Pattern::Radial { cx, cy, inv_r } => {
                (((x - cx).powi(2) + (y - cy).powi(2)).sqrt() * inv_r).min(1.0)
            }
            Pattern::Stripes {
                dx,
                dy,
                period,
                duty,
                phase,
            } => square_wave(x * dx + y * dy + phase, *period, *duty),
            Pattern::Checker {
                cos,
                sin,
                cell,
                pu,
                pv,
            } => {
                let a = square_wave(x * cos + y * sin + pu, 2.0 * cell, 0.5);
                let b = square_wave(-x * sin + y * cos + pv, 2.0 * cell, 0.5);
                a + b - 2.0 * a * b
            }
            Pattern::Noise(f) => f.at(x, y),
        };
        mix(self.c0, self.c1, t)
    }
}

/// A random pattern over `region` (`[x0, y0, x1, y1]`) with features scaled to its size.
fn random_pattern(rng: &mut Rng, region: [f32; 4], allow_solid: bool) -> Pattern {
    let (w, h) = (region[2] - region[0], region[3] - region[1]);
    let size = w.max(h).max(4.0);
    let angle = rng.uniform(0.0, std::f32::consts::TAU);
    let (sin, cos) = angle.sin_cos();
    let kind = if allow_solid {
        rng.below(6)
    } else {
        1 + rng.below(5)
    };
    match kind {
        0 => Pattern::Solid,
        1 => {
            let len = size * rng.uniform(0.5, 1.2);
            Pattern::Linear {
                ox: (region[0] + region[2]) * 0.5 - cos * len * 0.5,
                oy: (region[1] + region[3]) * 0.5 - sin * len * 0.5,
                dx: cos / len,
                dy: sin / len,
            }
        }
        2 => Pattern::Radial {
            cx: rng.uniform(region[0], region[2]),
            cy: rng.uniform(region[1], region[3]),
            inv_r: 1.0 / (size * rng.uniform(0.4, 1.0)),
        },
        3 => Pattern::Stripes {
            dx: cos,
            dy: sin,
            period: (size * rng.uniform(0.08, 0.35)).max(3.0),
            duty: rng.uniform(0.3, 0.7),
            phase: rng.uniform(0.0, 100.0),
        },
        4 => Pattern::Checker {
            cos,
            sin,
            cell: (size * rng.uniform(0.06, 0.25)).max(2.0),
            pu: rng.uniform(0.0, 100.0),
            pv: rng.uniform(0.0, 100.0),
        },
        _ => {
            let cell = (size * rng.uniform(0.1, 0.5)).max(2.0);
            Pattern::Noise(Fbm::new(rng, region, cell, 2))
        }
    }
}

/// Paint for an object whose box is `b` over a background sampled as `bg`.
fn object_paint(rng: &mut Rng, bg: &[Rgb], b: [f32; 4]) -> Paint {
    // Contrast varies from subtle to strong but never vanishes.
    let min_contrast = rng.uniform(55.0, 130.0);
    let c0 = contrasting_colour(rng, bg, min_contrast);
    let c1 = if rng.chance(0.4) {
        // Low internal contrast: a nearby shade of c0.
        let j = [
            rng.uniform(-50.0, 50.0),
            rng.uniform(-50.0, 50.0),
            rng.uniform(-50.0, 50.0),
        ];
        let c = [
            (c0[0] + j[0]).clamp(0.0, 255.0),
            (c0[1] + j[1]).clamp(0.0, 255.0),
            (c0[2] + j[2]).clamp(0.0, 255.0),
        ];
        if contrast(c, bg) >= 0.8 * min_contrast {
            c
        } else {
            c0
        }
    } else {
        contrasting_colour(rng, bg, min_contrast)
    };
    Paint {
        c0,
        c1,
        pattern: random_pattern(rng, b, true),
    }
}

// ---------------------------------------------------------------------------------------------
// Canvas
// ---------------------------------------------------------------------------------------------

struct Canvas {
    w: usize,
    h: usize,
    /// RGB in 0..=255 (float until the end).
    px: Vec<Rgb>,
    /// 0: no object on top; k: object k (1-based) on top.
    owner: Vec<u16>,
    /// Coverage of the owner's shape at each owned pixel.
    owner_cov: Vec<f32>,
}

/// A drawn pixel with at least this opacity belongs to its object's box when nothing else owns
/// it (so thin tips and anti-aliased edges are inside the box).
const OWN_FRINGE: f32 = 0.2;
/// Drawing with at least this opacity takes a pixel over from whatever owned it.
const OWN_TAKEOVER: f32 = 0.5;

impl Canvas {
    fn new(w: usize, h: usize) -> Self {
        Self {
            w,
            h,
            px: vec![[0.0; 3]; w * h],
            owner: vec![0; w * h],
            owner_cov: vec![0.0; w * h],
        }
    }

    fn fill_with(&mut self, mut f: impl FnMut(f32, f32) -> Rgb) {
        for (i, p) in self.px.iter_mut().enumerate() {
            let (x, y) = ((i % self.w) as f32 + 0.5, (i / self.w) as f32 + 0.5);
            *p = f(x, y);
        }
    }

    /// Colours inside box `b` (clipped), sampled on a grid of about 9×9 points.
    fn samples_in(&self, b: [f32; 4]) -> Vec<Rgb> {
        let x0 = (b[0].max(0.0) as usize).min(self.w.saturating_sub(1));
        let y0 = (b[1].max(0.0) as usize).min(self.h.saturating_sub(1));
        let x1 = (b[2].max(0.0) as usize).clamp(x0 + 1, self.w);
        let y1 = (b[3].max(0.0) as usize).clamp(y0 + 1, self.h);
        let sx = ((x1 - x0) / 8).max(1);
        let sy = ((y1 - y0) / 8).max(1);
        let mut out = Vec::with_capacity(81);
        for y in (y0..y1).step_by(sy) {
            for x in (x0..x1).step_by(sx) {
                out.push(self.px[y * self.w + x]);
            }
        }
        out
    }

    /// Blends `paint` over the canvas with opacity `a = coverage × alpha`, and updates the owner
    /// map when `owner` is given (`Some(0)` for distractors, which hide objects): a pixel is
    /// taken over where `a` ≥ [`OWN_TAKEOVER`], and an unowned pixel is claimed by an object
    /// where `a` ≥ [`OWN_FRINGE`].
    fn composite(&mut self, cov: &Coverage, paint: &Paint, alpha: f32, owner: Option<u16>) {
        for row in 0..cov.h {
            let y = cov.y0 + row;
            for col in 0..cov.w {
                let k = cov.cov[row * cov.w + col];
                let a = k * alpha;
                if a <= 0.0 {
                    continue;
                }
                let x = cov.x0 + col;
                let i = y * self.w + x;
                let c = paint.at(x as f32 + 0.5, y as f32 + 0.5);
                self.px[i] = mix(self.px[i], c, a);
                if let Some(o) = owner
                    && (a >= OWN_TAKEOVER || (o != 0 && a >= OWN_FRINGE && self.owner[i] == 0))
                {
                    self.owner[i] = o;
                    self.owner_cov[i] = k;
                }
            }
        }
    }

    fn to_image(&self) -> image::RgbImage {
        let mut buf = Vec::with_capacity(self.w * self.h * 3);
        for p in &self.px {
            for v in p {
                buf.push((v.clamp(0.0, 255.0) + 0.5) as u8);
            }
        }
        image::RgbImage::from_raw(self.w as u32, self.h as u32, buf)
            .unwrap_or_else(|| image::RgbImage::new(self.w as u32, self.h as u32))
    }
}

// ---------------------------------------------------------------------------------------------
// Background, distractors, post-processing
// ---------------------------------------------------------------------------------------------

fn draw_background(cv: &mut Canvas, rng: &mut Rng, scale: f32) {
    let (w, h) = (cv.w as f32, cv.h as f32);
    let full = [0.0, 0.0, w, h];
    let ca = random_colour(rng);
    let cb = if rng.chance(0.5) {
        random_colour(rng)
    } else {
        mix(ca, random_colour(rng), rng.uniform(0.2, 0.6))
    };
    let cc = random_colour(rng);
    match rng.below(6) {
        0 | 1 => {
            let pattern = if rng.chance(0.6) {
                random_pattern(rng, full, false)
            } else {
                Pattern::Linear {
                    ox: 0.0,
                    oy: 0.0,
                    dx: rng.uniform(-1.0, 1.0) / w,
                    dy: rng.uniform(-1.0, 1.0) / h,
                }
            };
            let p = Paint {
                c0: ca,
                c1: cb,
                pattern,
            };
            cv.fill_with(|x, y| p.at(x, y));
        }
        2 | 3 => {
            let cell = rng.uniform(24.0, 110.0) * scale;
            let f = Fbm::new(rng, full, cell, 3);
            cv.fill_with(|x, y| {
                let t = f.at(x, y);
                if t < 0.5 {
                    mix(ca, cb, t * 2.0)
                } else {
                    mix(cb, cc, t * 2.0 - 1.0)
                }
            });
        }
        4 => {
            // Tiles with jittered colours.
            let tw = rng.uniform(8.0, 56.0) * scale;
            let th = tw * rng.uniform(0.6, 1.6);
            let salt = rng.next_u64();
            let grout = rng.uniform(0.0, 2.0);
            let gc = random_colour(rng);
            cv.fill_with(|x, y| {
                let (tx, ty) = ((x / tw).floor(), (y / th).floor());
                let t = hash01(tx as i64, ty as i64, salt);
                let c = mix(ca, cb, t);
                let (fx, fy) = (x - tx * tw, y - ty * th);
                if fx < grout || fy < grout { gc } else { c }
            });
        }
        _ => {
            let p = Paint {
                c0: ca,
                c1: cb,
                pattern: random_pattern(rng, full, false),
            };
            let cell = rng.uniform(20.0, 80.0) * scale;
            let f = Fbm::new(rng, full, cell, 2);
            cv.fill_with(|x, y| mix(p.at(x, y), cc, 0.5 * f.at(x, y)));
        }
    }
    // Fine grain texture.
    if rng.chance(0.6) {
        let amp = rng.uniform(0.05, 0.35);
        let cell = rng.uniform(1.5, 6.0);
        let f = Fbm::new(rng, full, cell, 2);
        cv.fill_with_map(|x, y, p| {
            let m = 1.0 + amp * (f.at(x, y) - 0.5) * 2.0;
            [p[0] * m, p[1] * m, p[2] * m]
        });
    }
    // Clutter: thin lines and faint blobs.
    for _ in 0..rng.range_incl(0, 10) {
        let p = [rng.uniform(-0.1, 1.1) * w, rng.uniform(-0.1, 1.1) * h];
        let a = rng.uniform(0.0, std::f32::consts::TAU);
        let len = rng.uniform(0.2, 1.2) * w.max(h);
        let q = [p[0] + len * a.cos(), p[1] + len * a.sin()];
        if let Some(quad) = segment_quad(p, q, rng.uniform(0.3, 1.3) * scale.sqrt()) {
            let paint = Paint::solid(random_colour(rng));
            let alpha = rng.uniform(0.3, 1.0);
            cv.composite(&rasterize(&[quad], cv.w, cv.h), &paint, alpha, None);
        }
    }
    for _ in 0..rng.range_incl(0, 4) {
        let area = (rng.uniform(0.02, 0.2) * w * h).max(64.0);
        let blob = blob_shape(rng, 0.15, 0.35);
        let (stretch, theta) = (rng.uniform(0.6, 1.6), rng.uniform(0.0, 6.3));
        let shape = place_shape(&blob, rng, stretch, theta, area, cv.w, cv.h, 0.4);
        let b = shape.bbox();
        let paint = Paint {
            c0: random_colour(rng),
            c1: random_colour(rng),
            pattern: random_pattern(rng, b, true),
        };
        let alpha = rng.uniform(0.15, 0.5);
        cv.composite(&rasterize(&shape.contours, cv.w, cv.h), &paint, alpha, None);
    }
}

impl Canvas {
    fn fill_with_map(&mut self, mut f: impl FnMut(f32, f32, Rgb) -> Rgb) {
        for (i, p) in self.px.iter_mut().enumerate() {
            let (x, y) = ((i % self.w) as f32 + 0.5, (i / self.w) as f32 + 0.5);
            *p = f(x, y, *p);
        }
    }
}

/// An irregular closed blob: a circle with strong low-frequency radial harmonics.
fn blob_shape(rng: &mut Rng, lo: f32, hi: f32) -> Vec<Vec<Pt>> {
    let harmonics: Vec<(f32, f32, f32)> = (2..6)
        .map(|k| {
            // Strong 3rd harmonic plus some 4th/5th: lumpy, never an ellipse (which a pure
            // 2nd harmonic would give, and which would look like a stretched disc).
            let amp = match k {
                2 => rng.uniform(0.0, hi),
                3 => rng.uniform(lo + 0.08, hi + 0.05),
                _ => rng.uniform(0.04, 0.14),
            };
            (k as f32, amp, rng.uniform(0.0, std::f32::consts::TAU))
        })
        .collect();
    let v = (0..48)
        .map(|i| {
            let a = std::f32::consts::TAU * i as f32 / 48.0;
            let r = 1.0
                + harmonics
                    .iter()
                    .map(|&(k, amp, ph)| amp * (k * a + ph).sin())
                    .sum::<f32>();
            let r = r.max(0.2);
            [r * a.cos(), r * a.sin()]
        })
        .collect();
    vec![v]
}

/// Draws one unannotated distractor. Foreground ones are thin (scribbles, lines, bars) and may
/// cross objects, hiding the pixels they cover.
fn draw_distractor(cv: &mut Canvas, rng: &mut Rng, scale: f32, foreground: bool) {
    use std::f32::consts::{PI, TAU};
    let (w, h) = (cv.w as f32, cv.h as f32);
    let kind = if foreground {
        rng.below(3)
    } else {
        rng.below(8)
    };
    let strokes = |cv: &mut Canvas, rng: &mut Rng, pts: &[Pt], half: f32| {
        let b = bbox_of(&[pts.to_vec()]);
        let bg = cv.samples_in(b);
        let min_c = rng.uniform(30.0, 120.0);
        let paint = Paint {
            c0: contrasting_colour(rng, &bg, min_c),
            c1: contrasting_colour(rng, &bg, min_c),
            pattern: random_pattern(rng, b, true),
        };
        for s in pts.windows(2) {
            if let Some(q) = segment_quad(s[0], s[1], half) {
                cv.composite(&rasterize(&[q], cv.w, cv.h), &paint, 1.0, Some(0));
            }
            if half > 0.8 {
                let joint = ellipse(s[1][0], s[1][1], half, half, 10);
                cv.composite(&rasterize(&[joint], cv.w, cv.h), &paint, 1.0, Some(0));
            }
        }
    };
    match kind {
        0 => {
            // Scribble: a random walk.
            let mut p = [rng.uniform(0.0, w), rng.uniform(0.0, h)];
            let mut a = rng.uniform(0.0, TAU);
            let mut pts = vec![p];
            for _ in 0..rng.range_incl(3, 10) {
                a += rng.normal() * 0.9;
                let step = rng.uniform(4.0, 30.0) * scale;
                p = [p[0] + step * a.cos(), p[1] + step * a.sin()];
                pts.push(p);
            }
            let half = rng.uniform(0.5, 2.0) * scale.sqrt();
            strokes(cv, rng, &pts, half);
        }
        1 => {
            // Straight line.
            let p = [rng.uniform(0.0, w), rng.uniform(0.0, h)];
            let a = rng.uniform(0.0, TAU);
            let len = rng.uniform(0.15, 0.8) * w.max(h);
            let q = [p[0] + len * a.cos(), p[1] + len * a.sin()];
            let half = rng.uniform(0.4, 1.5) * scale.sqrt();
            strokes(cv, rng, &[p, q], half);
        }
        2 => {
            // Zigzag.
            let p = [rng.uniform(0.0, w), rng.uniform(0.0, h)];
            let a = rng.uniform(0.0, TAU);
            let (ca, sa) = (a.cos(), a.sin());
            let step = rng.uniform(4.0, 16.0) * scale;
            let amp = rng.uniform(3.0, 12.0) * scale;
            let pts: Vec<Pt> = (0..rng.range_incl(3, 9))
                .map(|i| {
                    let u = i as f32 * step;
                    let v = if i % 2 == 0 { amp } else { -amp };
                    [p[0] + u * ca - v * sa, p[1] + u * sa + v * ca]
                })
                .collect();
            let half = rng.uniform(0.6, 2.5) * scale.sqrt();
            strokes(cv, rng, &pts, half);
        }
        _ => {
            let unit: Vec<Vec<Pt>> = match kind {
                3 | 4 => blob_shape(rng, 0.12, 0.32),
                5 => {
                    // Half disc.
                    let mut v = arc(0.0, 0.0, 1.0, 0.0, PI, 24);
                    v.push([-1.0, 0.0]);
                    vec![v]
                }
                6 => {
                    // L shape or a long bar.
                    if rng.chance(0.5) {
                        let a = rng.uniform(0.25, 0.45);
                        vec![vec![
                            [0.0, 0.0],
                            [1.0, 0.0],
                            [1.0, a],
                            [a, a],
                            [a, 1.0],
                            [0.0, 1.0],
                        ]]
                    } else {
                        // Thin enough (aspect ≥ 3.5 after stretch) not to pass for a rectangle.
                        let t = rng.uniform(0.06, 0.14);
                        vec![vec![[-1.0, -t], [1.0, -t], [1.0, t], [-1.0, t]]]
                    }
                }
                _ => {
                    // A spiral band. (Not an open arc of an annulus: small ones are
                    // indistinguishable from crescents and would be unlabelled look-alikes.)
                    let turns = rng.uniform(1.3, 2.3);
                    let end = turns * TAU;
                    let b = 0.85 / end;
                    let half = 0.3 * TAU * b;
                    let n = (turns * 24.0) as usize;
                    let r = |t: f32| 0.15 + b * t;
                    let mut v: Vec<Pt> = (0..=n)
                        .map(|i| {
                            let t = end * i as f32 / n as f32;
                            [(r(t) + half) * t.cos(), (r(t) + half) * t.sin()]
                        })
                        .collect();
                    v.extend((0..=n).rev().map(|i| {
                        let t = end * i as f32 / n as f32;
                        let ri = (r(t) - half).max(0.02);
                        [ri * t.cos(), ri * t.sin()]
                    }));
                    vec![v]
                }
            };
            let area = (rng.uniform(64f32.ln(), (0.3 * w * h).ln())).exp();
            let stretch = rng.uniform(0.5f32.ln(), 2.0f32.ln()).exp();
            let theta = rng.uniform(0.0, TAU);
            let shape = place_shape(&unit, rng, stretch, theta, area, cv.w, cv.h, 0.3);
            let b = shape.bbox();
            let paint = object_paint(rng, &cv.samples_in(b), b);
            cv.composite(
                &rasterize(&shape.contours, cv.w, cv.h),
                &paint,
                1.0,
                Some(0),
            );
        }
    }
}

/// Blur, uneven illumination, contrast and pixel noise.
fn postprocess(cv: &mut Canvas, rng: &mut Rng, scale: f32) {
    if rng.chance(0.25) {
        box_blur3(cv);
    }
    if rng.chance(0.5) {
        let (w, h) = (cv.w as f32, cv.h as f32);
        let a = rng.uniform(0.0, std::f32::consts::TAU);
        let (dx, dy) = (a.cos() / w.max(h), a.sin() / w.max(h));
        let lo = rng.uniform(0.6, 0.95);
        let hi = rng.uniform(1.0, 1.2);
        cv.fill_with_map(|x, y, p| {
            let t = ((x - w * 0.5) * dx + (y - h * 0.5) * dy + 0.5).clamp(0.0, 1.0);
            let m = lo + (hi - lo) * t;
            [p[0] * m, p[1] * m, p[2] * m]
        });
    }
    if rng.chance(0.3) {
        let c = rng.uniform(0.75, 1.15);
        let off = rng.uniform(-20.0, 20.0);
        cv.fill_with_map(|_, _, p| {
            [
                (p[0] - 128.0) * c + 128.0 + off,
                (p[1] - 128.0) * c + 128.0 + off,
                (p[2] - 128.0) * c + 128.0 + off,
            ]
        });
    }
    // Pixel noise: an approximately Gaussian sum of four uniforms per value.
    let sigma = rng.uniform(2.0, 12.0) * scale.sqrt().min(1.5);
    let colour_noise = rng.chance(0.5);
    let k = sigma * 3.0f32.sqrt() / 32768.0;
    let gauss = |r: u64| {
        let s = (r & 0xFFFF) + ((r >> 16) & 0xFFFF) + ((r >> 32) & 0xFFFF) + (r >> 48);
        (s as f32 - 131070.0) * 0.5 * k
    };
    for p in &mut cv.px {
        if colour_noise {
            for v in p.iter_mut() {
                *v += gauss(rng.next_u64());
            }
        } else {
            let n = gauss(rng.next_u64());
            for v in p.iter_mut() {
                *v += n;
            }
        }
    }
}

fn box_blur3(cv: &mut Canvas) {
    let (w, h) = (cv.w, cv.h);
    let src = cv.px.clone();
    for y in 0..h {
        for x in 0..w {
            let mut s = [0.0f32; 3];
            let mut n = 0.0;
            for yy in y.saturating_sub(1)..(y + 2).min(h) {
                for xx in x.saturating_sub(1)..(x + 2).min(w) {
                    let p = src[yy * w + xx];
                    s[0] += p[0];
                    s[1] += p[1];
                    s[2] += p[2];
                    n += 1.0;
                }
            }
            cv.px[y * w + x] = [s[0] / n, s[1] / n, s[2] / n];
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::coco::{CocoDataset, LoadOptions};

    fn small_cfg(seed: u64) -> SynthConfig {
        SynthConfig {
            train: 24,
            val: 6,
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
        let sa = generate_with_threads(a.path(), &small_cfg(5), false, 1).unwrap();
        let sb = generate_with_threads(b.path(), &small_cfg(5), false, 3).unwrap();
        assert_eq!(sa, sb);
        let fa = all_files(a.path());
        assert_eq!(fa.len(), 2 + 24 + 6);
        assert!(
            fa == all_files(b.path()),
            "same seed must give byte-identical files"
        );

        generate_with_threads(c.path(), &small_cfg(6), false, 2).unwrap();
        let fc = all_files(c.path());
        let same = fa.iter().zip(&fc).filter(|(x, y)| x.1 == y.1).count();
        assert_eq!(same, 0, "a different seed must change every file");
    }

    #[test]
    fn written_dataset_passes_the_strict_loader() {
        let dir = tempfile::tempdir().unwrap();
        let stats = generate(dir.path(), &small_cfg(1), false).unwrap();
        for (split, st) in [("train", &stats.train), ("val", &stats.val)] {
            let ds =
                CocoDataset::load_split(&dir.path().join(split), LoadOptions::default()).unwrap();
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
                    assert!(
                        x0 >= 0.0 && y0 >= 0.0 && x1 <= 128.0 && y1 <= 96.0 && x1 > x0 && y1 > y0
                    );
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
                ..small_cfg(0)
            },
        ] {
            let err = generate(dir.path(), &cfg, false).unwrap_err();
            assert!(matches!(err, Error::InvalidArgument { .. }), "{err}");
        }
        // One split may be empty.
        let cfg = SynthConfig {
            train: 2,
            val: 0,
            ..small_cfg(0)
        };
        let st = generate(dir.path(), &cfg, false).unwrap();
        assert_eq!((st.train.images, st.val.images), (2, 0));
        CocoDataset::load_split(&dir.path().join("val"), LoadOptions::default()).unwrap();
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
                assert!(
                    x >= 0.0 && y >= 0.0 && x + w <= 256.0 && y + h <= 256.0 && w > 0.0 && h > 0.0
                );
            }
        }
    }
}
