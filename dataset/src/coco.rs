//! COCO-format datasets: the raw JSON records (`CocoFile`, shared with the synthetic generator
//! and the evaluator) and the validated, training-ready view (`CocoDataset`).

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Deserializer, Serialize};

use crate::error::{CocoLocation, Error, Result};

/// Boxes may overshoot the image by this much (pixels) from rounding in annotation tools;
/// they are clipped. Anything further outside is an error.
pub const BORDER_TOLERANCE: f64 = 1.0;

/// One `instances.json` file, exactly as COCO writes it (fields we do not use are ignored).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct CocoFile {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub info: Option<serde_json::Value>,
    pub images: Vec<CocoImage>,
    #[serde(default)]
    pub annotations: Vec<CocoAnnotation>,
    pub categories: Vec<CocoCategory>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CocoImage {
    pub id: u64,
    pub file_name: String,
    pub width: u32,
    pub height: u32,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CocoAnnotation {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u64,
    /// `[x, y, w, h]` in pixels, top-left origin.
    pub bbox: Vec<f64>,
    /// Area used by COCO evaluation for the small/medium/large split (the segment area in real
    /// COCO; `w*h` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub area: Option<f64>,
    #[serde(default, deserialize_with = "bool_or_int")]
    pub iscrowd: u8,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct CocoCategory {
    pub id: u64,
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub supercategory: Option<String>,
}

/// COCO writes `iscrowd` as 0/1; some tools write booleans. Accept both.
fn bool_or_int<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<u8, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum B {
        Int(u8),
        Bool(bool),
    }
    Ok(match B::deserialize(d)? {
        B::Int(i) => u8::from(i != 0),
        B::Bool(b) => u8::from(b),
    })
}

impl CocoFile {
    /// Reads and parses a COCO json file (no semantic validation).
    pub fn read(path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        serde_json::from_slice(&bytes).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })
    }

    /// Writes the file atomically, in a stable byte-exact form.
    pub fn write(&self, path: &Path) -> Result<()> {
        let bytes = serde_json::to_vec(self).map_err(|source| Error::Json {
            path: path.to_path_buf(),
            source,
        })?;
        crate::fsutil::write_atomic(path, &bytes)
    }
}

/// One annotation that passed the structural checks.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CheckedAnnotation {
    pub id: u64,
    pub image_id: u64,
    pub category_id: u64,
    /// `[x, y, w, h]`, finite.
    pub bbox: [f64; 4],
    /// The `area` field, or `w·h` when absent; finite.
    pub area: f64,
    pub iscrowd: bool,
}

/// What every consumer of a COCO file needs checked, whatever else it checks: unique image,
/// category and annotation ids; annotations that reference existing images and categories;
/// four finite box numbers; a finite area. Ids are returned sorted ascending.
#[derive(Debug, Clone)]
pub struct CocoIndex {
    pub image_ids: Vec<u64>,
    pub category_ids: Vec<u64>,
    /// Image id → position in `image_ids`.
    pub image_pos: HashMap<u64, usize>,
    /// Category id → position in `category_ids` (= the contiguous label).
    pub category_pos: HashMap<u64, usize>,
    /// In file order.
    pub annotations: Vec<CheckedAnnotation>,
}

impl CocoFile {
    /// The structural checks (see [`CocoIndex`]); `path` names the file in errors.
    pub fn check(&self, path: &Path) -> Result<CocoIndex> {
        let at = |image_id: Option<u64>, annotation_id: Option<u64>| CocoLocation {
            file: path.to_path_buf(),
            image_id,
            annotation_id,
        };
        let bad = |loc: CocoLocation, field: &'static str, message: String| Error::Coco {
            at: loc,
            field,
            message,
        };
        let mut image_ids: Vec<u64> = self.images.iter().map(|i| i.id).collect();
        image_ids.sort_unstable();
        if let Some(w) = image_ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(at(Some(w[0]), None), "id", "duplicate image id".into()));
        }
        let mut category_ids: Vec<u64> = self.categories.iter().map(|c| c.id).collect();
        category_ids.sort_unstable();
        if let Some(w) = category_ids.windows(2).find(|w| w[0] == w[1]) {
            return Err(bad(
                at(None, None),
                "categories.id",
                format!("duplicate category id {}", w[0]),
            ));
        }
        let positions = |ids: &[u64]| -> HashMap<u64, usize> {
            ids.iter().enumerate().map(|(i, &id)| (id, i)).collect()
        };
        let image_pos = positions(&image_ids);
        let category_pos = positions(&category_ids);
        let mut seen: HashSet<u64> = HashSet::with_capacity(self.annotations.len());
        let mut annotations = Vec::with_capacity(self.annotations.len());
        for a in &self.annotations {
            let loc = || at(Some(a.image_id), Some(a.id));
            if !seen.insert(a.id) {
                return Err(bad(loc(), "id", "duplicate annotation id".into()));
            }
            if !image_pos.contains_key(&a.image_id) {
                return Err(bad(loc(), "image_id", "no image with this id".into()));
            }
            if !category_pos.contains_key(&a.category_id) {
                return Err(bad(
                    loc(),
                    "category_id",
                    format!("unknown category id {}", a.category_id),
                ));
            }
            let bbox: [f64; 4] = a.bbox.as_slice().try_into().map_err(|_| {
                bad(
                    loc(),
                    "bbox",
                    format!("must have 4 numbers [x,y,w,h], got {}", a.bbox.len()),
                )
            })?;
            if !bbox.iter().all(|v| v.is_finite()) {
                return Err(bad(
                    loc(),
                    "bbox",
                    format!("non-finite value in {:?}", a.bbox),
                ));
            }
            let area = match a.area {
                Some(x) if !x.is_finite() => {
                    return Err(bad(loc(), "area", format!("must be finite, got {x}")));
                }
                Some(x) => x,
                None => bbox[2] * bbox[3],
            };
            annotations.push(CheckedAnnotation {
                id: a.id,
                image_id: a.image_id,
                category_id: a.category_id,
                bbox,
                area,
                iscrowd: a.iscrowd != 0,
            });
        }
        Ok(CocoIndex {
            image_ids,
            category_ids,
            image_pos,
            category_pos,
            annotations,
        })
    }
}

/// A category with its contiguous training label.
#[derive(Debug, Clone, PartialEq)]
pub struct Category {
    /// The id used in the json file.
    pub id: u64,
    /// Contiguous label in `0..num_classes`, ordered by ascending `id`.
    pub label: usize,
    pub name: String,
}

/// One validated object annotation.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub annotation_id: u64,
    pub label: usize,
    /// `[x1, y1, x2, y2]` in pixels of the (EXIF-oriented) image, clipped to it.
    pub bbox: [f32; 4],
    pub area: f64,
    pub iscrowd: bool,
}

/// One validated image record and its objects.
#[derive(Debug, Clone, PartialEq)]
pub struct ImageRecord {
    pub id: u64,
    pub path: PathBuf,
    pub width: u32,
    pub height: u32,
    pub objects: Vec<Object>,
}

/// A validated COCO dataset: every id, box and image checked.
#[derive(Debug, Clone)]
pub struct CocoDataset {
    pub json_path: PathBuf,
    pub images: Vec<ImageRecord>,
    pub categories: Vec<Category>,
}

/// How much `CocoDataset::load` checks beyond the json.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions {
    /// Open every image's header and check it exists, decodes as JPEG/PNG/WebP and has the
    /// declared size (after EXIF orientation). Costs one small read per image.
    pub check_images: bool,
}

impl Default for LoadOptions {
    fn default() -> Self {
        Self { check_images: true }
    }
}

impl CocoDataset {
    /// Loads `json_path` with images resolved under `images_dir`.
    pub fn load(json_path: &Path, images_dir: &Path, opts: LoadOptions) -> Result<Self> {
        let file = CocoFile::read(json_path)?;
        Self::from_file(file, json_path, images_dir, opts)
    }

    /// The conventional split layout: `DIR/instances.json` + `DIR/images/`.
    pub fn load_split(dir: &Path, opts: LoadOptions) -> Result<Self> {
        Self::load(&dir.join("instances.json"), &dir.join("images"), opts)
    }

    /// Validates an already parsed file. `json_path` is only used in error messages.
    pub fn from_file(
        file: CocoFile,
        json_path: &Path,
        images_dir: &Path,
        opts: LoadOptions,
    ) -> Result<Self> {
        let at = |image_id: Option<u64>, annotation_id: Option<u64>| CocoLocation {
            file: json_path.to_path_buf(),
            image_id,
            annotation_id,
        };
        let bad = |loc: CocoLocation, field: &'static str, message: String| Error::Coco {
            at: loc,
            field,
            message,
        };

        if file.categories.is_empty() {
            return Err(bad(at(None, None), "categories", "no categories".into()));
        }
        let index = file.check(json_path)?;
        // Categories → contiguous labels in ascending id order.
        let mut cats = file.categories.clone();
        cats.sort_by_key(|c| c.id);
        let categories: Vec<Category> = cats
            .into_iter()
            .enumerate()
            .map(|(label, c)| Category {
                id: c.id,
                label,
                name: c.name,
            })
            .collect();

        // Images.
        let mut index_of: HashMap<u64, usize> = HashMap::with_capacity(file.images.len());
        let mut images = Vec::with_capacity(file.images.len());
        for img in &file.images {
            let loc = at(Some(img.id), None);
            index_of.insert(img.id, images.len());
            if img.width == 0 || img.height == 0 {
                return Err(bad(
                    loc,
                    "width/height",
                    format!("must be > 0 (got {}x{})", img.width, img.height),
                ));
            }
            let rel = Path::new(&img.file_name);
            if img.file_name.is_empty() || rel.is_absolute() {
                return Err(bad(
                    loc,
                    "file_name",
                    format!("must be a relative path, got {:?}", img.file_name),
                ));
            }
            images.push(ImageRecord {
                id: img.id,
                path: images_dir.join(rel),
                width: img.width,
                height: img.height,
                objects: Vec::new(),
            });
        }

        // Annotations (ids, references and finiteness already checked).
        for a in &index.annotations {
            let loc = || at(Some(a.image_id), Some(a.id));
            let (Some(&ii), Some(&label)) = (
                index_of.get(&a.image_id),
                index.category_pos.get(&a.category_id),
            ) else {
                return Err(bad(loc(), "image_id", "dangling reference".into()));
            };
            let [x, y, w, h] = a.bbox;
            if w <= 0.0 || h <= 0.0 {
                return Err(bad(
                    loc(),
                    "bbox",
                    format!("width and height must be > 0, got w={w} h={h}"),
                ));
            }
            let img = &images[ii];
            let (iw, ih) = (f64::from(img.width), f64::from(img.height));
            let t = BORDER_TOLERANCE;
            if x < -t || y < -t || x + w > iw + t || y + h > ih + t {
                return Err(bad(
                    loc(),
                    "bbox",
                    format!("[{x}, {y}, {w}, {h}] lies outside the {iw}x{ih} image"),
                ));
            }
            let (x1, y1) = (x.max(0.0), y.max(0.0));
            let (x2, y2) = ((x + w).min(iw), (y + h).min(ih));
            if x2 <= x1 || y2 <= y1 {
                return Err(bad(
                    loc(),
                    "bbox",
                    "empty after clipping to the image".into(),
                ));
            }
            if a.area < 0.0 {
                return Err(bad(loc(), "area", format!("must be >= 0, got {}", a.area)));
            }
            images[ii].objects.push(Object {
                annotation_id: a.id,
                label,
                bbox: [x1 as f32, y1 as f32, x2 as f32, y2 as f32],
                area: a.area,
                iscrowd: a.iscrowd,
            });
        }

        if opts.check_images {
            for img in &images {
                check_image_header(img)?;
            }
        }

        Ok(Self {
            json_path: json_path.to_path_buf(),
            images,
            categories,
        })
    }

    pub fn num_classes(&self) -> usize {
        self.categories.len()
    }

    pub fn class_names(&self) -> Vec<String> {
        self.categories.iter().map(|c| c.name.clone()).collect()
    }
}

fn image_error(img: &ImageRecord, message: impl Into<String>) -> Error {
    Error::Image {
        path: img.path.clone(),
        image_id: img.id,
        message: message.into(),
    }
}

/// Checks that an image exists, has a decodable header, and that its oriented size matches.
fn check_image_header(img: &ImageRecord) -> Result<()> {
    use image::ImageDecoder;
    let reader = image::ImageReader::open(&img.path)
        .map_err(|e| image_error(img, format!("cannot open: {e}")))?
        .with_guessed_format()
        .map_err(|e| image_error(img, format!("cannot read: {e}")))?;
    let mut decoder = reader
        .into_decoder()
        .map_err(|e| image_error(img, format!("not a supported image: {e}")))?;
    let (w, h) = decoder.dimensions();
    let orientation = decoder
        .orientation()
        .map_err(|e| image_error(img, format!("bad EXIF orientation: {e}")))?;
    let (w, h) = if swaps_axes(orientation) {
        (h, w)
    } else {
        (w, h)
    };
    if (w, h) != (img.width, img.height) {
        return Err(image_error(
            img,
            format!(
                "file is {w}x{h} (after EXIF orientation) but the json says {}x{}",
                img.width, img.height
            ),
        ));
    }
    Ok(())
}

fn swaps_axes(o: image::metadata::Orientation) -> bool {
    use image::metadata::Orientation::*;
    matches!(o, Rotate90 | Rotate270 | Rotate90FlipH | Rotate270FlipH)
}

/// Decodes a dataset image ([`decode_rgb`]) and checks it has the size its json says (boxes
/// and evaluation are in those pixels).
pub fn decode_record(rec: &ImageRecord) -> Result<image::RgbImage> {
    let img = decode_rgb(&rec.path, rec.id)?;
    if (img.width(), img.height()) != (rec.width, rec.height) {
        return Err(Error::Image {
            path: rec.path.clone(),
            image_id: rec.id,
            message: format!(
                "decoded {}x{} but the json says {}x{}",
                img.width(),
                img.height(),
                rec.width,
                rec.height
            ),
        });
    }
    Ok(img)
}

/// Decodes an image file to 8-bit RGB with its EXIF orientation applied, through the
/// contract's decoder (`codetr_model::preprocess`: JPEG, PNG or WebP; a truncated JPEG is an
/// error). Greyscale, alpha, 16-bit and CMYK inputs are converted.
pub fn decode_rgb(path: &Path, image_id: u64) -> Result<image::RgbImage> {
    let err = |m: String| Error::Image {
        path: path.to_path_buf(),
        image_id,
        message: m,
    };
    let bytes = std::fs::read(path).map_err(|e| err(format!("cannot read: {e}")))?;
    // the contract's decode, as served; a dataset image has no pixel limit
    let d = codetr_model::preprocess::decode(&bytes, u64::MAX).map_err(|e| err(e.to_string()))?;
    image::RgbImage::from_raw(d.width, d.height, d.rgb)
        .ok_or_else(|| err("decoded buffer does not match its size".into()))
}
