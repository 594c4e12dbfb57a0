//! The ONNX contract between `codetr-export` and `codetr-serve` (docs/DESIGN.md §7).
//!
//! This crate is small (serde, thiserror, and image + fast_image_resize for the one
//! preprocessing): it fixes
//!
//! * the graph's input and output names, in graph order ([`INPUTS`], [`OUTPUTS`]);
//! * the `metadata_props` schema ([`ModelMetadata`]), its string encoding
//!   ([`ModelMetadata::try_to_props`]) and its validating decoder
//!   ([`ModelMetadata::from_props`]);
//! * the preprocessing every reader of the graph applies before it ([`preprocess`]: decode,
//!   EXIF orientation, pixel limit, stretch resize);
//! * the output filter every reader of the graph applies ([`filter`]).
//!
//! # Graph I/O
//!
//! | name         | dtype   | shape          | meaning                                        |
//! |--------------|---------|----------------|------------------------------------------------|
//! | `images`     | uint8   | `[N, H, W, 3]` | RGB pixels, already resized to the input size |
//! | `orig_sizes` | int64   | `[N, 2]`       | original (height, width) of each image         |
//! | `valid_sizes`| int64   | `[N, 2]`       | letterbox graphs only: (height, width) of each image inside the padded input, top-left |
//! | `labels`     | int64   | `[N, K]`       | class indices into [`ModelMetadata::classes`]  |
//! | `scores`     | float32 | `[N, K]`       | sorted descending                              |
//! | `boxes`      | float32 | `[N, K, 4]`    | xyxy in original-image pixels                  |
//!
//! `N` is dynamic; `H`, `W` are fixed to [`ModelMetadata::input_size`] unless that is `None`
//! (exported with dynamic size); `K` is [`ModelMetadata::max_detections`].
//!
//! # Metadata encoding
//!
//! Every value is an ONNX string. Integers are plain decimal (`"1"`, `"300"`), lists and
//! objects are compact JSON (`["person","car"]`, `[640,640]`, `null`, `{"AP":0.51}`), and
//! strings are written as-is, without JSON quotes (`stretch`, `co_dino_r50`). Keys outside
//! the [`META_PREFIX`] namespace belong to other tools and are ignored by the decoder;
//! unknown keys inside it are rejected, so a typo in the exporter cannot go unnoticed.

#![warn(missing_docs)]

pub mod filter;
pub mod preprocess;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// Graph input: uint8 `[N, H, W, 3]` RGB pixels, already resized to the model's input size.
pub const INPUT_IMAGES: &str = "images";
/// Graph input: int64 `[N, 2]` original (height, width) of each image.
pub const INPUT_ORIG_SIZES: &str = "orig_sizes";
/// Graph input of a [`Resize::Letterbox`] graph only: int64 `[N, 2]` (height, width) of each
/// resized image inside the padded input, which it fills from the top-left corner.
pub const INPUT_VALID_SIZES: &str = "valid_sizes";
/// Graph output: int64 `[N, K]` class labels.
pub const OUTPUT_LABELS: &str = "labels";
/// Graph output: float32 `[N, K]` scores, sorted descending.
pub const OUTPUT_SCORES: &str = "scores";
/// Graph output: float32 `[N, K, 4]` xyxy boxes in original-image pixels.
pub const OUTPUT_BOXES: &str = "boxes";

/// The input names of a [`Resize::Stretch`] graph, in graph order.
pub const INPUTS: [&str; 2] = [INPUT_IMAGES, INPUT_ORIG_SIZES];
/// The input names of a [`Resize::Letterbox`] graph, in graph order.
pub const LETTERBOX_INPUTS: [&str; 3] = [INPUT_IMAGES, INPUT_ORIG_SIZES, INPUT_VALID_SIZES];
/// The graph's output names, in graph order.
pub const OUTPUTS: [&str; 3] = [OUTPUT_LABELS, OUTPUT_SCORES, OUTPUT_BOXES];

/// The newest metadata format version this crate reads. Version 2 added
/// [`Resize::Letterbox`] and its [`INPUT_VALID_SIZES`] input; a writer records the lowest
/// version that describes its graph ([`Resize::min_format_version`]), so stretch graphs stay
/// version 1, byte-identical and readable by older servers, and an older server refuses a
/// letterbox graph with a clear message instead of feeding it stretched images. Version 3
/// added [`ModelMetadata::letterbox_limits`] (the official keep-ratio scale limits): a graph
/// that sets them is version 3, so a server that would ignore them refuses it instead of
/// feeding it images at the wrong scale. Version 4 added [`ModelMetadata::max_batch_at`] (a
/// dynamic-size graph's batch bounds at named input sizes): a server that would ignore them
/// could run a batch past CUDA's 32-bit index limit. Version 5 added
/// [`ModelMetadata::size_multiple`] (the side multiple that keeps a letterbox graph's padding
/// mask aligned): a server that would ignore it serves canvases that shift the valid region
/// at some levels without a word.
pub const FORMAT_VERSION: u32 = 5;
/// The oldest metadata format version this crate reads.
pub const MIN_FORMAT_VERSION: u32 = 1;

/// Prefix of every metadata key owned by this contract; other prefixes are ignored.
pub const META_PREFIX: &str = "codetr.";
/// Metadata key: [`ModelMetadata::format_version`], plain decimal integer.
pub const META_FORMAT_VERSION: &str = "codetr.format_version";
/// Metadata key: [`ModelMetadata::classes`], JSON list of strings.
pub const META_CLASSES: &str = "codetr.classes";
/// Metadata key: [`ModelMetadata::input_size`], JSON `[height, width]` or `null`.
pub const META_INPUT_SIZE: &str = "codetr.input_size";
/// Metadata key: [`ModelMetadata::resize`], plain string (`stretch`).
pub const META_RESIZE: &str = "codetr.resize";
/// Metadata key: [`ModelMetadata::mean`], JSON list of 3 numbers (0–255 scale).
pub const META_MEAN: &str = "codetr.mean";
/// Metadata key: [`ModelMetadata::std`], JSON list of 3 numbers (0–255 scale).
pub const META_STD: &str = "codetr.std";
/// Metadata key: [`ModelMetadata::max_detections`], plain decimal integer.
pub const META_MAX_DETECTIONS: &str = "codetr.max_detections";
/// Metadata key: [`ModelMetadata::preset`], plain string.
pub const META_PRESET: &str = "codetr.preset";
/// Metadata key: [`ModelMetadata::checkpoint_sha256`], 64 lowercase hex characters.
pub const META_CHECKPOINT_SHA256: &str = "codetr.checkpoint_sha256";
/// Metadata key: [`ModelMetadata::metrics`], JSON object (may be `{}`).
pub const META_METRICS: &str = "codetr.metrics";
/// Optional metadata key: [`ModelMetadata::msda`], plain string (`grid-sample` | `gather`).
pub const META_MSDA: &str = "codetr.msda";
/// Optional metadata key: [`ModelMetadata::precision`], plain string (`fp32` | `fp16`).
pub const META_PRECISION: &str = "codetr.precision";
/// Optional metadata key: [`ModelMetadata::max_batch`], decimal integer.
pub const META_MAX_BATCH: &str = "codetr.max_batch";
/// Optional metadata key (format version 3): [`ModelMetadata::letterbox_limits`], JSON
/// `[short, long]`.
pub const META_LETTERBOX_LIMITS: &str = "codetr.letterbox_limits";
/// Optional metadata key (format version 4): [`ModelMetadata::max_batch_at`], JSON list of
/// `{"input_size": [h, w], "max_batch": n}`.
pub const META_MAX_BATCH_AT: &str = "codetr.max_batch_at";
/// Optional metadata key (format version 5): [`ModelMetadata::size_multiple`], decimal integer.
pub const META_SIZE_MULTIPLE: &str = "codetr.size_multiple";

/// The required metadata keys, in the order [`ModelMetadata::to_props`] writes them.
pub const METADATA_KEYS: &[&str] = &[
    META_FORMAT_VERSION,
    META_CLASSES,
    META_INPUT_SIZE,
    META_RESIZE,
    META_MEAN,
    META_STD,
    META_MAX_DETECTIONS,
    META_PRESET,
    META_CHECKPOINT_SHA256,
    META_METRICS,
];

/// The optional metadata keys, in the order [`ModelMetadata::to_props`] writes them
/// (after all of [`METADATA_KEYS`]).
pub const OPTIONAL_METADATA_KEYS: &[&str] = &[
    META_MSDA,
    META_PRECISION,
    META_MAX_BATCH,
    META_LETTERBOX_LIMITS,
    META_MAX_BATCH_AT,
    META_SIZE_MULTIPLE,
];

/// Smallest accepted side of [`ModelMetadata::input_size`].
pub const MIN_INPUT_SIDE: u32 = 16;
/// Largest accepted side of [`ModelMetadata::input_size`].
pub const MAX_INPUT_SIDE: u32 = 4096;
/// Largest accepted [`ModelMetadata::max_detections`].
pub const MAX_DETECTIONS_LIMIT: usize = 10_000;

/// How images are brought to [`ModelMetadata::input_size`] before entering the graph.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Resize {
    /// Resize both sides independently to the input size, ignoring aspect ratio.
    Stretch,
    /// Resize keeping the aspect ratio to fit inside the input size, place the image
    /// top-left and pad the rest; the graph takes each image's valid size
    /// ([`INPUT_VALID_SIZES`]) and masks the padding (the official Co-DINO test pipeline).
    Letterbox,
}

impl Resize {
    /// The lowest metadata format version that can describe a graph with this resize.
    pub const fn min_format_version(self) -> u32 {
        match self {
            Resize::Stretch => 1,
            Resize::Letterbox => 2,
        }
    }

    /// A `--letterbox-limits SHORT,LONG` argument checked against this resize: `None` when not
    /// given; `[short, long]` when it is two values `0 < short <= long` and this is
    /// [`Resize::Letterbox`]; otherwise the message to show.
    pub fn limits_from(self, given: Option<&[u32]>) -> Result<Option<[u32; 2]>, String> {
        match given {
            None => Ok(None),
            Some(&[short, long]) if self == Resize::Letterbox && 0 < short && short <= long => {
                Ok(Some([short, long]))
            }
            Some(v) => Err(format!(
                "--letterbox-limits {v:?}: give SHORT,LONG with 0 < SHORT <= LONG, together \
                 with --resize letterbox"
            )),
        }
    }

    /// The graph's input names, in graph order.
    pub const fn inputs(self) -> &'static [&'static str] {
        match self {
            Resize::Stretch => &INPUTS,
            Resize::Letterbox => &LETTERBOX_INPUTS,
        }
    }
}

/// Which multi-scale deformable attention kernel the graph was exported with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Msda {
    /// Bilinear sampling via ONNX `GridSample`.
    GridSample,
    /// Bilinear sampling via explicit `Gather` ops.
    Gather,
}

/// The floating-point precision of the graph's weights and compute.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Precision {
    /// 32-bit floats throughout.
    Fp32,
    /// 16-bit floats internally (I/O dtypes are unchanged).
    Fp16,
}

/// Implements `as_str`, `Display` and `FromStr` for a unit enum whose metadata encoding is a
/// plain string.
macro_rules! plain_string_enum {
    ($ty:ident { $($variant:ident => $text:literal),+ $(,)? }) => {
        impl $ty {
            /// Every variant, in declaration order.
            pub const ALL: &'static [$ty] = &[$($ty::$variant),+];

            /// The metadata encoding of this value.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($ty::$variant => $text),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl FromStr for $ty {
            type Err = String;

            fn from_str(s: &str) -> Result<Self, Self::Err> {
                match s {
                    $($text => Ok($ty::$variant),)+
                    _ => {
                        let expected: Vec<String> =
                            [$($text),+].iter().map(|t| format!("{t:?}")).collect();
                        Err(format!("expected one of {}, got {s:?}", expected.join(", ")))
                    }
                }
            }
        }
    };
}

plain_string_enum!(Resize { Stretch => "stretch", Letterbox => "letterbox" });
plain_string_enum!(Msda { GridSample => "grid-sample", Gather => "gather" });
plain_string_enum!(Precision { Fp32 => "fp32", Fp16 => "fp16" });

/// Everything the server needs to know about an exported model, stored in the ONNX file's
/// `metadata_props` (see the [crate docs](crate) for the encoding).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelMetadata {
    /// Metadata format version, in [`MIN_FORMAT_VERSION`]`..=`[`FORMAT_VERSION`] and at
    /// least [`Resize::min_format_version`] of `resize`.
    pub format_version: u32,
    /// Class names; output label `i` means `classes[i]`. Non-empty, names non-blank and unique.
    pub classes: Vec<String>,
    /// Fixed graph input `[height, width]`, each side in
    /// [`MIN_INPUT_SIDE`]`..=`[`MAX_INPUT_SIDE`]; `None` when exported with dynamic size.
    pub input_size: Option<[u32; 2]>,
    /// How images are resized to `input_size` before entering the graph.
    pub resize: Resize,
    /// Per-channel (R, G, B) mean on the 0–255 scale, applied inside the graph; finite.
    pub mean: [f32; 3],
    /// Per-channel (R, G, B) standard deviation on the 0–255 scale; finite and `> 0`.
    pub std: [f32; 3],
    /// `K`, the number of detections per image in every output; in `1..=`[`MAX_DETECTIONS_LIMIT`].
    pub max_detections: usize,
    /// Name of the model preset (architecture configuration) the checkpoint was trained with;
    /// non-blank.
    pub preset: String,
    /// SHA-256 of the source checkpoint file, 64 lowercase hex characters.
    pub checkpoint_sha256: String,
    /// Evaluation metrics of the checkpoint, e.g. `{"AP": 0.51}`; may be empty.
    pub metrics: Map<String, Value>,
    /// The deformable-attention kernel the graph uses, if recorded.
    pub msda: Option<Msda>,
    /// The graph's compute precision, if recorded.
    pub precision: Option<Precision>,
    /// The largest batch at which every tensor of the graph stays under 2^31 elements, at
    /// `input_size` (for a dynamic-size graph: at the size it was exported for), as the
    /// exporter's shape inference found it. CUDA kernels index with 32 bits: a larger batch
    /// fails with a kernel error that leaves the GPU context unusable, so the server never
    /// runs one.
    pub max_batch: Option<u64>,
    /// `[short, long]`: a [`Resize::Letterbox`] graph's keep-ratio scale limits, `scale =
    /// min(canvas fit, long / max(h, w), short / min(h, w))` (mmcv's `Resize(scale=(long,
    /// short), keep_ratio=True)`; the official Co-DINO test pipeline is `[800, 1333]`). `None`:
    /// the canvas alone caps the scale. Needs format version 3.
    pub letterbox_limits: Option<[u32; 2]>,
    /// A dynamic-size graph's [`max_batch`](Self::max_batch) at each of these input sizes
    /// (the exporter's shape inference, as for a fixed graph): a server serving the graph at a
    /// listed size never runs a batch above its bound. Empty for a fixed-size graph (its
    /// `max_batch` is at its one size). Needs format version 4.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub max_batch_at: Vec<SizeBound>,
    /// A letterbox graph's coarsest feature stride: canvas sides that are multiples of it keep
    /// every level's padding mask on the valid region. Elsewhere the mask is the canvas mask
    /// resampled (nearest, as the official model does) to a feature map that does not divide
    /// the canvas evenly, and a level can count one feature row or column more as valid than
    /// the image alone has, which moves detections (bench/results/padding_effect.md). Needs
    /// format version 5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub size_multiple: Option<u32>,
}

/// The largest batch whose every tensor stays under 2^31 elements, at one input size.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SizeBound {
    /// `[height, width]` of the input.
    pub input_size: [u32; 2],
    /// The bound at that size.
    pub max_batch: u64,
}

/// Why metadata could not be encoded or decoded, or an image not preprocessed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A required key is absent.
    #[error("model metadata is missing the required key `{key}`")]
    Missing {
        /// The missing key.
        key: &'static str,
    },
    /// A key is present (or a field set) but its value breaks the contract.
    #[error("model metadata `{key}` is invalid: {message}")]
    Invalid {
        /// The offending key.
        key: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The model was written with a metadata format this crate does not read.
    #[error("{}", unsupported_version_message(*found, *supported))]
    UnsupportedVersion {
        /// The version the model declares.
        found: u32,
        /// The newest version this crate supports ([`FORMAT_VERSION`]).
        supported: u32,
    },
    /// A key in the `codetr.` namespace that this format version does not define.
    #[error("model metadata has unknown key `{key}` (a typo, or a newer exporter?)")]
    Unknown {
        /// The unrecognised key.
        key: String,
    },
    /// Image bytes of a format outside [`preprocess::ACCEPTED`].
    #[error("{0}")]
    UnsupportedImage(String),
    /// Image bytes that do not decode: empty, unrecognised, truncated or corrupt.
    #[error("{0}")]
    InvalidImage(String),
    /// More pixels than the caller's limit, read from the image header.
    #[error("image is {width}×{height} = {pixels} pixels; the limit is {limit}")]
    TooManyPixels {
        /// Width from the header.
        width: u32,
        /// Height from the header.
        height: u32,
        /// width × height.
        pixels: u64,
        /// The limit given.
        limit: u64,
    },
    /// The resize could not run (a buffer that does not match its dimensions).
    #[error("{0}")]
    Resize(String),
}

fn unsupported_version_message(found: u32, supported: u32) -> String {
    if found > supported {
        format!(
            "model metadata format version {found} was made by a newer exporter; \
             this build supports versions {MIN_FORMAT_VERSION} to {supported}, upgrade it to \
             load this model"
        )
    } else {
        format!(
            "model metadata format version {found} is not supported (this build supports \
             versions {MIN_FORMAT_VERSION} to {supported}); re-export the model"
        )
    }
}

fn invalid(key: &'static str, message: impl Into<String>) -> Error {
    Error::Invalid {
        key,
        message: message.into(),
    }
}

impl ModelMetadata {
    /// The batch bound at input size `hw`: a fixed graph's [`max_batch`](Self::max_batch) at
    /// its size, a dynamic graph's [`max_batch_at`](Self::max_batch_at) entry for `hw`. `None`
    /// when the graph records none for that size.
    pub fn max_batch_for(&self, hw: [u32; 2]) -> Option<u64> {
        match self.input_size {
            Some(fixed) => self.max_batch.filter(|_| fixed == hw),
            None => self
                .max_batch_at
                .iter()
                .find(|b| b.input_size == hw)
                .map(|b| b.max_batch),
        }
    }

    /// The lowest format version that describes this metadata: what writers record, so a graph
    /// that needs nothing new stays readable by older servers, byte for byte.
    pub fn min_format_version(&self) -> u32 {
        let limits = if self.letterbox_limits.is_some() {
            3
        } else {
            1
        };
        let bounds = if self.max_batch_at.is_empty() { 1 } else { 4 };
        let multiple = if self.size_multiple.is_some() { 5 } else { 1 };
        self.resize
            .min_format_version()
            .max(limits)
            .max(bounds)
            .max(multiple)
    }

    /// For a letterbox graph with a [`size_multiple`](Self::size_multiple): `hw` rounded up to
    /// it when a side is not a multiple (the canvas that keeps the padding mask aligned);
    /// `None` when `hw` is aligned or the graph records no multiple.
    pub fn aligned_size(&self, [h, w]: [u32; 2]) -> Option<[u32; 2]> {
        let m = self.size_multiple.filter(|&m| m > 1)?;
        let up = |v: u32| v.div_ceil(m) * m;
        (h % m != 0 || w % m != 0).then(|| [up(h), up(w)])
    }

    /// Checks every field against the contract; [`from_props`](Self::from_props) runs the same
    /// checks, so metadata that validates always decodes back to itself.
    pub fn validate(&self) -> Result<(), Error> {
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&self.format_version) {
            return Err(Error::UnsupportedVersion {
                found: self.format_version,
                supported: FORMAT_VERSION,
            });
        }
        if self.format_version < self.resize.min_format_version() {
            return Err(invalid(
                META_RESIZE,
                format!(
                    "`{}` needs format version {}, the metadata says {}",
                    self.resize,
                    self.resize.min_format_version(),
                    self.format_version
                ),
            ));
        }

        if let Some([short, long]) = self.letterbox_limits {
            if self.resize != Resize::Letterbox {
                return Err(invalid(
                    META_LETTERBOX_LIMITS,
                    format!(
                        "set on a `{}` graph; only letterbox graphs have them",
                        self.resize
                    ),
                ));
            }
            if self.format_version < 3 {
                return Err(invalid(
                    META_LETTERBOX_LIMITS,
                    format!(
                        "needs format version 3, the metadata says {}",
                        self.format_version
                    ),
                ));
            }
            if short == 0 || short > long || long > MAX_INPUT_SIDE * 4 {
                return Err(invalid(
                    META_LETTERBOX_LIMITS,
                    format!(
                        "[{short}, {long}] is not [short, long] with 1 <= short <= long <= {}",
                        MAX_INPUT_SIDE * 4
                    ),
                ));
            }
        }

        if !self.max_batch_at.is_empty() {
            let bad = |m: String| Err(invalid(META_MAX_BATCH_AT, m));
            if self.format_version < 4 {
                return bad(format!(
                    "needs format version 4, the metadata says {}",
                    self.format_version
                ));
            }
            if let Some([h, w]) = self.input_size {
                return bad(format!(
                    "set on a graph fixed at {h}x{w}; only a dynamic-size graph has them"
                ));
            }
            for (i, b) in self.max_batch_at.iter().enumerate() {
                let [h, w] = b.input_size;
                if !(MIN_INPUT_SIDE..=MAX_INPUT_SIDE).contains(&h)
                    || !(MIN_INPUT_SIDE..=MAX_INPUT_SIDE).contains(&w)
                {
                    return bad(format!(
                        "{h}x{w}: each side must be in {MIN_INPUT_SIDE}..={MAX_INPUT_SIDE}"
                    ));
                }
                if self.max_batch_at[..i]
                    .iter()
                    .any(|o| o.input_size == b.input_size)
                {
                    return bad(format!("{h}x{w} appears more than once"));
                }
            }
        }

        if let Some(m) = self.size_multiple {
            let bad = |m: String| Err(invalid(META_SIZE_MULTIPLE, m));
            if self.format_version < 5 {
                return bad(format!(
                    "needs format version 5, the metadata says {}",
                    self.format_version
                ));
            }
            if self.resize != Resize::Letterbox {
                return bad(format!(
                    "set on a `{}` graph; only letterbox graphs pad",
                    self.resize
                ));
            }
            if !m.is_power_of_two() || m > MAX_INPUT_SIDE {
                return bad(format!(
                    "{m} is not a feature stride (a power of two up to {MAX_INPUT_SIDE})"
                ));
            }
        }

        if self.classes.is_empty() {
            return Err(invalid(META_CLASSES, "the class list is empty"));
        }
        let mut seen = HashSet::with_capacity(self.classes.len());
        for (i, name) in self.classes.iter().enumerate() {
            if name.trim().is_empty() {
                return Err(invalid(
                    META_CLASSES,
                    format!("class {i} has an empty name"),
                ));
            }
            if !seen.insert(name.as_str()) {
                return Err(invalid(
                    META_CLASSES,
                    format!("class name {name:?} appears more than once"),
                ));
            }
        }

        if let Some(size) = self.input_size {
            for (side, value) in ["height", "width"].into_iter().zip(size) {
                if !(MIN_INPUT_SIDE..=MAX_INPUT_SIDE).contains(&value) {
                    return Err(invalid(
                        META_INPUT_SIZE,
                        format!("{side} {value} is outside {MIN_INPUT_SIDE}..={MAX_INPUT_SIDE}"),
                    ));
                }
            }
        }

        if let Some(v) = self.mean.iter().find(|v| !v.is_finite()) {
            return Err(invalid(META_MEAN, format!("{v} is not finite")));
        }
        if let Some(v) = self.std.iter().find(|v| !(v.is_finite() && **v > 0.0)) {
            return Err(invalid(
                META_STD,
                format!("{v} is not a finite positive number"),
            ));
        }

        if !(1..=MAX_DETECTIONS_LIMIT).contains(&self.max_detections) {
            return Err(invalid(
                META_MAX_DETECTIONS,
                format!(
                    "{} is outside 1..={MAX_DETECTIONS_LIMIT}",
                    self.max_detections
                ),
            ));
        }

        if self.preset.trim().is_empty() {
            return Err(invalid(META_PRESET, "the preset name is empty"));
        }

        let sha = &self.checkpoint_sha256;
        if sha.len() != 64 || !sha.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(invalid(
                META_CHECKPOINT_SHA256,
                format!("expected 64 lowercase hex characters, got {sha:?}"),
            ));
        }

        Ok(())
    }

    /// Validates, then encodes; this is what the exporter writes into `metadata_props`.
    ///
    /// The result of a successful call is always accepted by [`from_props`](Self::from_props).
    pub fn try_to_props(&self) -> Result<Vec<(String, String)>, Error> {
        self.validate()?;
        Ok(self.to_props())
    }

    /// Encodes the metadata as `metadata_props` entries without validating it.
    ///
    /// The order is fixed — [`METADATA_KEYS`], then whichever of [`OPTIONAL_METADATA_KEYS`] are
    /// set — and the encoding is canonical (compact JSON, `metrics` keys sorted), so equal
    /// metadata always produces byte-identical props. Writers should prefer
    /// [`try_to_props`](Self::try_to_props): this method happily encodes invalid metadata,
    /// which is useful for tests and diagnostics but would produce a model the server rejects.
    pub fn to_props(&self) -> Vec<(String, String)> {
        // Sort the top-level metric names explicitly, so the output stays canonical even if
        // serde_json's `preserve_order` feature gets unified in by another crate.
        let metrics: BTreeMap<&String, &Value> = self.metrics.iter().collect();
        let mut props = vec![
            (META_FORMAT_VERSION, self.format_version.to_string()),
            (META_CLASSES, to_json(&self.classes)),
            (META_INPUT_SIZE, to_json(&self.input_size)),
            (META_RESIZE, self.resize.as_str().to_owned()),
            (META_MEAN, to_json(&self.mean)),
            (META_STD, to_json(&self.std)),
            (META_MAX_DETECTIONS, self.max_detections.to_string()),
            (META_PRESET, self.preset.clone()),
            (META_CHECKPOINT_SHA256, self.checkpoint_sha256.clone()),
            (META_METRICS, to_json(&metrics)),
        ];
        if let Some(msda) = self.msda {
            props.push((META_MSDA, msda.as_str().to_owned()));
        }
        if let Some(precision) = self.precision {
            props.push((META_PRECISION, precision.as_str().to_owned()));
        }
        if let Some(n) = self.max_batch {
            props.push((META_MAX_BATCH, n.to_string()));
        }
        if let Some(l) = self.letterbox_limits {
            props.push((META_LETTERBOX_LIMITS, to_json(&l)));
        }
        if !self.max_batch_at.is_empty() {
            props.push((META_MAX_BATCH_AT, to_json(&self.max_batch_at)));
        }
        if let Some(m) = self.size_multiple {
            props.push((META_SIZE_MULTIPLE, m.to_string()));
        }
        props
            .into_iter()
            .map(|(key, value)| (key.to_owned(), value))
            .collect()
    }

    /// Decodes and [validates](Self::validate) `metadata_props` entries.
    ///
    /// Keys outside [`META_PREFIX`] are ignored; unknown `codetr.*` keys and repeated
    /// `codetr.*` keys are errors. The format version is checked before anything else, so a
    /// model from a newer exporter reports [`Error::UnsupportedVersion`] rather than
    /// whatever else changed.
    pub fn from_props<'a>(
        props: impl IntoIterator<Item = (&'a str, &'a str)>,
    ) -> Result<Self, Error> {
        let mut ours: HashMap<&'static str, &'a str> = HashMap::new();
        let mut unknown: Option<&'a str> = None;
        for (key, value) in props {
            if !key.starts_with(META_PREFIX) {
                continue;
            }
            let known = METADATA_KEYS
                .iter()
                .chain(OPTIONAL_METADATA_KEYS)
                .find(|k| **k == key);
            match known {
                Some(&k) => {
                    if ours.insert(k, value).is_some() {
                        return Err(invalid(k, "the key appears more than once"));
                    }
                }
                None => {
                    unknown.get_or_insert(key);
                }
            }
        }

        let required = |key: &'static str| ours.get(key).copied().ok_or(Error::Missing { key });

        // Version first: a newer format may legitimately have keys we do not know.
        let format_version =
            parse_uint::<u32>(META_FORMAT_VERSION, required(META_FORMAT_VERSION)?)?;
        if !(MIN_FORMAT_VERSION..=FORMAT_VERSION).contains(&format_version) {
            return Err(Error::UnsupportedVersion {
                found: format_version,
                supported: FORMAT_VERSION,
            });
        }
        if let Some(key) = unknown {
            return Err(Error::Unknown {
                key: key.to_owned(),
            });
        }

        let meta = ModelMetadata {
            format_version,
            classes: parse_json(META_CLASSES, required(META_CLASSES)?)?,
            input_size: parse_json(META_INPUT_SIZE, required(META_INPUT_SIZE)?)?,
            resize: parse_plain(META_RESIZE, required(META_RESIZE)?)?,
            mean: parse_json(META_MEAN, required(META_MEAN)?)?,
            std: parse_json(META_STD, required(META_STD)?)?,
            max_detections: parse_uint(META_MAX_DETECTIONS, required(META_MAX_DETECTIONS)?)?,
            preset: required(META_PRESET)?.to_owned(),
            checkpoint_sha256: required(META_CHECKPOINT_SHA256)?.to_owned(),
            metrics: parse_json(META_METRICS, required(META_METRICS)?)?,
            msda: ours
                .get(META_MSDA)
                .map(|v| parse_plain(META_MSDA, v))
                .transpose()?,
            precision: ours
                .get(META_PRECISION)
                .map(|v| parse_plain(META_PRECISION, v))
                .transpose()?,
            max_batch: ours
                .get(META_MAX_BATCH)
                .map(|v| parse_uint(META_MAX_BATCH, v))
                .transpose()?,
            letterbox_limits: ours
                .get(META_LETTERBOX_LIMITS)
                .map(|v| parse_json(META_LETTERBOX_LIMITS, v))
                .transpose()?,
            max_batch_at: ours
                .get(META_MAX_BATCH_AT)
                .map(|v| parse_json(META_MAX_BATCH_AT, v))
                .transpose()?
                .unwrap_or_default(),
            size_multiple: ours
                .get(META_SIZE_MULTIPLE)
                .map(|v| parse_uint(META_SIZE_MULTIPLE, v))
                .transpose()?,
        };
        meta.validate()?;
        Ok(meta)
    }
}

fn to_json<T: Serialize + ?Sized>(value: &T) -> String {
    // Serializing plain data (strings, numbers, arrays, string-keyed maps) cannot fail.
    serde_json::to_string(value).expect("metadata values serialize to JSON")
}

fn parse_json<T: serde::de::DeserializeOwned>(key: &'static str, value: &str) -> Result<T, Error> {
    serde_json::from_str(value).map_err(|e| invalid(key, format!("{e} in {value:?}")))
}

fn parse_plain<T: FromStr<Err = String>>(key: &'static str, value: &str) -> Result<T, Error> {
    value.parse().map_err(|e: String| invalid(key, e))
}

/// Parses a plain decimal integer: ASCII digits only (no sign, spaces or exponent).
fn parse_uint<T: FromStr>(key: &'static str, value: &str) -> Result<T, Error> {
    let digits_only = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    match value.parse() {
        Ok(n) if digits_only => Ok(n),
        _ => Err(invalid(
            key,
            format!("expected a plain decimal integer, got {value:?}"),
        )),
    }
}

/// Where ONNX Runtime's shared library is looked for (docs/DESIGN.md §9), in order: `explicit`,
/// the `ORT_DYLIB_PATH` environment variable, then `.ort/cpu/libonnxruntime.so` (what
/// `scripts/install-ort.sh` installs). Both the exporter's check and the server load the
/// library through this, so they always run the same ONNX Runtime.
pub fn ort_library_candidates(explicit: Option<&std::path::Path>) -> Vec<std::path::PathBuf> {
    explicit
        .map(std::path::Path::to_path_buf)
        .into_iter()
        .chain(std::env::var_os("ORT_DYLIB_PATH").map(std::path::PathBuf::from))
        .chain(std::iter::once(std::path::PathBuf::from(
            ".ort/cpu/libonnxruntime.so",
        )))
        .collect()
}

/// The first of [`ort_library_candidates`] that is a file.
pub fn find_ort_library(explicit: Option<&std::path::Path>) -> Option<std::path::PathBuf> {
    ort_library_candidates(explicit)
        .into_iter()
        .find(|p| p.is_file())
}
