//! `codetr-export --check`: the exported graph in ONNX Runtime (CPU, the library the server
//! loads: `ORT_DYLIB_PATH`, the PyPI wheel's `libonnxruntime.so`) against the Burn model on the
//! same real images at several batch sizes.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};

use burn::tensor::Device;
use codetr_core::model::detector::pixels_to_tensor;
use codetr_data::coco::{CocoDataset, LoadOptions};
use codetr_data::loader::{Loader, LoaderConfig};

use codetr_core::model::query_selection::QUERY_SELECTION_NODE;

use super::{ExportError, Result};

/// Largest accepted difference (fp32 graph).
pub const TOLERANCE: f32 = 1e-4;

/// Max differences over every checked batch.
#[derive(Debug, Clone, serde::Serialize)]
pub struct CheckReport {
    pub batches: Vec<usize>,
    /// Input sizes `[h, w]` run (several for a `--dynamic-size` graph).
    pub sizes: Vec<[usize; 2]>,
    pub images: usize,
    pub max_score_diff: f32,
    /// Box difference divided by the largest original image side.
    pub max_box_diff: f32,
    pub labels_identical: bool,
    pub passed: bool,
    pub ort_library: PathBuf,
    /// When the check failed: the smallest gap between consecutive scores (max class logit)
    /// of the encoder proposals Burn selected as queries, over the failing batch's images. The
    /// two runtimes' scores differ by float noise (~1e-6); proposals closer than that may take
    /// each other's query slot in the graph (each slot has its own content query), which moves
    /// detections: a property of the weights (random ones tie), not of the conversion.
    pub selection_min_gap: Option<f32>,
    /// When the check failed and the graph names its query selection: the failing batches
    /// again, with Burn given the graph's own selection.
    pub given_selection: Option<GivenSelection>,
}

/// Below this gap between selected proposal scores, float noise can reorder the selection.
pub const SELECTION_TIE: f32 = 1e-5;

/// The failing batches run again with the query selection held equal: the graph with its
/// selection exposed as an extra output (the same nodes), and Burn decoding that selection
/// instead of its own top-K. Which encoder token takes which query slot is a discrete choice
/// among scores that, with untrained weights, lie closer than the runtimes' float error; this
/// checks that the graph's choice is one Burn's scores allow (each rank's score within
/// [`SELECTION_TIE`]) and that, given the same choice, every other computation agrees within
/// [`TOLERANCE`].
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct GivenSelection {
    /// Query slots of the failing batches' images, and how many of them hold another token in
    /// the graph than in Burn.
    pub slots: usize,
    pub slots_differing: usize,
    /// Largest difference, over ranks, between Burn's score of the graph's r-th selected token
    /// and Burn's own r-th selection score (max class logit).
    pub max_rank_score_diff: f32,
    /// The graph with the exposed selection against the graph as written.
    pub exposed_vs_graph: f32,
    /// Burn on the graph's selection against the graph.
    pub max_score_diff: f32,
    pub max_box_diff: f32,
    pub labels_identical: bool,
    pub passed: bool,
}

impl GivenSelection {
    fn new() -> Self {
        Self {
            labels_identical: true,
            ..Self::default()
        }
    }

    fn verdict(&mut self) {
        self.passed = self.labels_identical
            && self.max_score_diff <= TOLERANCE
            && self.max_box_diff <= TOLERANCE
            && self.exposed_vs_graph <= TOLERANCE
            && self.max_rank_score_diff <= SELECTION_TIE;
    }
}

/// `onnx` opened with its query selection's indices (the second output of the node named
/// [`QUERY_SELECTION_NODE`]) as an extra graph output, and that output's name; `None` when no
/// node has that name (a graph written before the node was named). Only an output is added:
/// nodes, weights and declared outputs stay as written.
fn open_with_selection(
    onnx: &Path,
    ort_lib: &Path,
) -> Result<Option<(ort::session::Session, String)>> {
    use codetr_core::onnx::builder::{decode, encode, value_info};
    use codetr_core::onnx::{Dim, ElemType};
    let bytes = std::fs::read(onnx).map_err(|e| err(format!("{}: {e}", onnx.display())))?;
    let mut model = decode(&bytes).map_err(|e| err(format!("{}: {e}", onnx.display())))?;
    drop(bytes);
    let Some(graph) = model.graph.as_mut() else {
        return Ok(None);
    };
    let Some(out) = graph
        .node
        .iter()
        .find(|n| n.name == QUERY_SELECTION_NODE)
        .and_then(|n| n.output.get(1))
        .cloned()
    else {
        return Ok(None);
    };
    graph.output.push(value_info(
        &out,
        ElemType::I64,
        &[Dim::Named("n".into()), Dim::Named("k".into())],
    ));
    let bytes = encode(&model);
    drop(model);
    let env = environment(ort_lib)?;
    let session = ort::session::Session::builder(env)
        .and_then(|mut b| b.commit_from_memory(&bytes))
        .map_err(|e| {
            err(format!(
                "ONNX Runtime cannot load {} with its selection exposed: {e}",
                onnx.display()
            ))
        })?;
    Ok(Some((session, out)))
}

fn err(m: impl Into<String>) -> ExportError {
    ExportError::Option(m.into())
}

/// Seed of the images `--check` generates when no `--check-data` is given.
pub const CHECK_SEED: u64 = 20_231_001;

/// The images `--check` uses when no `--check-data` is given: `images` 256×256 images of the
/// synthetic generator (seed [`CHECK_SEED`]) in a temporary directory (removed on drop); the
/// split is `DIR/val`. The same images on every machine, with no dataset on disk.
pub fn synthetic_check_data(images: usize) -> Result<tempfile::TempDir> {
    use codetr_data::synth::{self, SynthConfig};
    let dir = tempfile::tempdir().map_err(|e| err(format!("a temporary directory: {e}")))?;
    let cfg = SynthConfig {
        train: 0,
        val: images,
        test: 0,
        seed: CHECK_SEED,
        width: 256,
        height: 256,
    };
    synth::generate(dir.path(), &cfg, None)?;
    Ok(dir)
}

/// `--check-data DIR` must be a COCO split: a clear error naming the flag, before anything is
/// exported, when `DIR/instances.json` is not there.
pub fn validate_check_data(dir: &Path) -> Result<()> {
    if dir.join("instances.json").is_file() {
        Ok(())
    } else {
        Err(err(format!(
            "--check-data {}: no instances.json there (a COCO split is DIR/instances.json + \
             images/); without --check-data, --check generates its images",
            dir.display()
        )))
    }
}

/// Where the ONNX Runtime library is ([`codetr_model::find_ort_library`]: `explicit`, else
/// `ORT_DYLIB_PATH`, else the project's `.ort/cpu/libonnxruntime.so`).
pub fn find_ort(explicit: Option<&Path>) -> Result<PathBuf> {
    codetr_model::find_ort_library(explicit).ok_or_else(|| {
        err("no ONNX Runtime library: set ORT_DYLIB_PATH or --ort-lib, or run scripts/install-ort.sh")
    })
}

/// The process's one ONNX Runtime environment (ORT allows a single one), created from the
/// first library path asked for. The library must load before any other ort call, and a
/// failed load is kept as text: turning it into an `ort::Error` would call into the
/// unloaded library.
fn environment(lib: &Path) -> Result<&'static ort::environment::Environment> {
    static ENV: OnceLock<std::result::Result<ort::environment::Environment, String>> =
        OnceLock::new();
    ENV.get_or_init(|| {
        ort::init_from(lib)
            .map_err(|e| format!("cannot load ONNX Runtime: {e}"))?
            .with_name("codetr-export-check")
            .build()
            .map_err(|e| format!("ONNX Runtime environment: {e}"))
    })
    .as_ref()
    .map_err(|e| err(e.clone()))
}

/// Opens `onnx` in ONNX Runtime (CPU) through the process environment.
fn open_session(onnx: &Path, ort_lib: &Path) -> Result<ort::session::Session> {
    let env = environment(ort_lib)?;
    ort::session::Session::builder(env)
        .and_then(|mut b| b.commit_from_file(onnx))
        .map_err(|e| err(format!("ONNX Runtime cannot load {}: {e}", onnx.display())))
}

/// One model's detections on a batch: `[n·K]` scores and labels, `[n·K·4]` boxes.
pub struct Dets {
    pub scores: Vec<f32>,
    pub labels: Vec<i64>,
    pub boxes: Vec<f32>,
}

/// Burn on a batch: its detections, and its query selection: `[n·K]` token indices in
/// selection order and each selected token's score (max class logit).
struct BurnRun {
    dets: Dets,
    selection: Vec<i64>,
    selection_scores: Vec<f32>,
}

/// The Burn model on a `[n, h, w, 3]` batch (`valid`: each image's region for a letterbox
/// graph), with its own query selection or the `given` one.
fn run_burn(
    model: &codetr_core::model::Detector,
    px: &[u8],
    sizes: &[[u32; 2]],
    valid: Option<&[[usize; 2]]>,
    [h, w]: [usize; 2],
    given: Option<&[i64]>,
) -> Result<BurnRun> {
    let device = model.level_embed.val().device();
    let n = sizes.len();
    let x = pixels_to_tensor(px, n, h, w, &device)?;
    let out = match (given, valid) {
        (Some(g), _) => model.forward_given_selection(x, valid, g)?,
        (None, Some(v)) => model.forward_padded(x, v)?,
        (None, None) => model.forward(x)?,
    };
    let host = |e: burn::tensor::DataError| err(format!("selection: {e:?}"));
    let [b, k, _] = out.enc_logits.dims();
    let selection_scores = out
        .enc_logits
        .clone()
        .max_dim(2)
        .reshape([b, k])
        .into_data()
        .convert::<f32>()
        .try_to_vec()
        .map_err(host)?;
    let selection = out
        .enc_indices
        .clone()
        .into_data()
        .convert::<i64>()
        .try_to_vec()
        .map_err(host)?;
    let (scores, labels, boxes) = model.postprocess(&out, sizes)?.to_host()?;
    Ok(BurnRun {
        dets: Dets {
            scores,
            labels,
            boxes,
        },
        selection,
        selection_scores,
    })
}

/// The Burn model and the graph on the same `[n, h, w, 3]` batch (`valid`: each image's region
/// for a letterbox graph), as (Burn, graph).
fn run_both(
    model: &codetr_core::model::Detector,
    session: &mut ort::session::Session,
    px: Vec<u8>,
    sizes: &[[u32; 2]],
    valid: Option<&[[usize; 2]]>,
    hw: [usize; 2],
) -> Result<(BurnRun, GraphRun)> {
    let burn = run_burn(model, &px, sizes, valid, hw, None)?;
    let graph = run_graph(session, px, sizes, valid, hw, None)?;
    Ok((burn, graph))
}

/// The graph on a batch: its detections, and its query selection when asked for.
struct GraphRun {
    dets: Dets,
    selection: Option<Vec<i64>>,
}

/// One run of the contract graph: `n` images `[n, h, w, 3]` with original sizes (and, for a
/// letterbox graph, each image's valid size in the input) → detections; `selection`: the name
/// of the exposed selection output to read too.
fn run_graph(
    session: &mut ort::session::Session,
    pixels: Vec<u8>,
    sizes: &[[u32; 2]],
    valid: Option<&[[usize; 2]]>,
    [h, w]: [usize; 2],
    selection: Option<&str>,
) -> Result<GraphRun> {
    let n = sizes.len();
    let images = ort::value::Tensor::from_array(([n, h, w, 3], pixels))
        .map_err(|e| err(format!("input tensor: {e}")))?;
    let pairs = |v: Vec<i64>| {
        ort::value::Tensor::from_array(([n, 2], v)).map_err(|e| err(format!("input tensor: {e}")))
    };
    let orig = pairs(
        sizes
            .iter()
            .flat_map(|v| [i64::from(v[0]), i64::from(v[1])])
            .collect(),
    )?;
    let out = match valid {
        Some(v) => {
            let valid = pairs(v.iter().flatten().map(|&x| x as i64).collect())?;
            session.run(ort::inputs![
                codetr_model::INPUT_IMAGES => images,
                codetr_model::INPUT_ORIG_SIZES => orig,
                codetr_model::INPUT_VALID_SIZES => valid,
            ])
        }
        None => session.run(ort::inputs![
            codetr_model::INPUT_IMAGES => images,
            codetr_model::INPUT_ORIG_SIZES => orig,
        ]),
    }
    .map_err(|e| err(format!("ONNX Runtime run failed: {e}")))?;
    let get = |name: &str| {
        out.get(name)
            .ok_or_else(|| err(format!("no output `{name}`")))
    };
    let f = |name: &str| -> Result<Vec<f32>> {
        Ok(get(name)?
            .try_extract_tensor::<f32>()
            .map_err(|e| err(format!("output `{name}`: {e}")))?
            .1
            .to_vec())
    };
    let i = |name: &str| -> Result<Vec<i64>> {
        Ok(get(name)?
            .try_extract_tensor::<i64>()
            .map_err(|e| err(format!("output `{name}`: {e}")))?
            .1
            .to_vec())
    };
    Ok(GraphRun {
        dets: Dets {
            labels: i(codetr_model::OUTPUT_LABELS)?,
            scores: f(codetr_model::OUTPUT_SCORES)?,
            boxes: f(codetr_model::OUTPUT_BOXES)?,
        },
        selection: selection.map(i).transpose()?,
    })
}

/// Nearest-neighbour resample of `n` RGB images `[n, h, w, 3]` to `[n, th, tw, 3]`: the same
/// real pixels at another input size, for the dynamic-size check.
fn resample(px: &[u8], n: usize, [h, w]: [usize; 2], [th, tw]: [usize; 2]) -> Vec<u8> {
    let mut out = Vec::with_capacity(n * th * tw * 3);
    for i in 0..n {
        for y in 0..th {
            let sy = (y * h) / th;
            for x in 0..tw {
                let sx = (x * w) / tw;
                let at = ((i * h + sy) * w + sx) * 3;
                out.extend_from_slice(&px[at..at + 3]);
            }
        }
    }
    out
}

/// A letterboxed batch for a letterbox graph: image `i` of `px` (`[n, h, w, 3]`) resampled
/// to a valid size that alternates landscape and portrait (the batch mixes both, as a
/// server's does) and placed top-left in a zero `[h, w]` canvas. Returns the canvas batch and
/// the valid sizes.
fn letterboxed(px: &[u8], n: usize, [h, w]: [usize; 2]) -> (Vec<u8>, Vec<[usize; 2]>) {
    let per = h * w * 3;
    let mut out = vec![0u8; n * per];
    let mut valid = Vec::with_capacity(n);
    for i in 0..n {
        let v = if i % 2 == 0 {
            [(h * 3 / 4).saturating_sub(4 * i).max(1), w]
        } else {
            [h, (w * 5 / 8 + 2 * i).min(w)]
        };
        let img = resample(&px[i * per..(i + 1) * per], 1, [h, w], v);
        for (y, row) in img.chunks_exact(v[1] * 3).enumerate() {
            let at = i * per + y * w * 3;
            out[at..at + row.len()].copy_from_slice(row);
        }
        valid.push(v);
    }
    (out, valid)
}

/// The metadata a graph declares: its resize (a check feeds a letterbox graph padded batches)
/// and its fixed input size, if any (a check runs a fixed graph at it).
fn graph_meta(session: &ort::session::Session) -> Result<codetr_model::ModelMetadata> {
    let md = session
        .metadata()
        .map_err(|e| err(format!("graph metadata: {e}")))?;
    let keys = md
        .custom_keys()
        .map_err(|e| err(format!("graph metadata: {e}")))?;
    let props: Vec<(String, String)> = keys
        .into_iter()
        .filter_map(|k| md.custom(&k).map(|v| (k, v)))
        .collect();
    codetr_model::ModelMetadata::from_props(props.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .map_err(|e| err(format!("graph metadata: {e}")))
}

/// The input sizes a check runs: the preset's; for a dynamic-size graph also a landscape and
/// a portrait size that are not multiples of the coarsest stride.
pub fn check_sizes(side: usize, dynamic: bool) -> Vec<[usize; 2]> {
    let mut v = vec![[side, side]];
    if dynamic {
        v.push([side * 3 / 4 + 8, side + side / 4]);
        v.push([side + side / 8 + 8, side * 5 / 8]);
    }
    v
}

/// Runs the check on the first images of the COCO split `data` (DIR/instances.json + images/):
/// a fixed-size graph at its size (square or not), a dynamic-size graph at every size of
/// [`check_sizes`].
pub fn check(
    onnx: &Path,
    ckpt: &Path,
    model_config: Option<&Path>,
    data: &Path,
    batches: &[usize],
    ort_lib: &Path,
) -> Result<CheckReport> {
    let device = Device::flex();
    let model = crate::load_source(ckpt, model_config, &device)?.model;
    let size = model.config().input_size;
    let most = batches.iter().copied().max().unwrap_or(1);
    let mut ds = CocoDataset::load_split(data, LoadOptions::default())?;
    if ds.images.len() < most {
        return Err(err(format!(
            "{} has {} images, the check needs {most}",
            data.display(),
            ds.images.len()
        )));
    }
    ds.images.truncate(most);
    let loader = Loader::new(
        Arc::new(ds),
        LoaderConfig::eval(most, size, 1, codetr_model::Resize::Stretch),
    )?;
    let batch = loader.epoch(0, 0).next().ok_or_else(|| err("no batch"))??;
    let mut session = open_session(onnx, ort_lib)?;
    let meta = graph_meta(&session)?;
    let letterbox = meta.resize == codetr_model::Resize::Letterbox;
    let s = size as usize;
    let sizes_run = match meta.input_size {
        Some([h, w]) => vec![[h as usize, w as usize]],
        None => check_sizes(s, true),
    };
    let (mut max_s, mut max_b, mut labels_ok) = (0f32, 0f32, true);
    let mut selection_min_gap: Option<f32> = None;
    // opened at the first failing batch: (session, selection output), None for an old graph
    let mut exposed: Option<Option<(ort::session::Session, String)>> = None;
    let mut given = GivenSelection::new();
    for &hw in &sizes_run {
        let all = resample(&batch.pixels, most, [s, s], hw);
        let per = hw[0] * hw[1] * 3;
        for &n in batches {
            let (px, valid) = if letterbox {
                let (px, valid) = letterboxed(&all[..n * per], n, hw);
                (px, Some(valid))
            } else {
                (all[..n * per].to_vec(), None)
            };
            let sizes: Vec<[u32; 2]> = batch.targets[..n].iter().map(|t| t.orig_size).collect();
            let side = sizes.iter().flatten().copied().max().unwrap_or(1) as f32;
            let (b, o) = run_both(
                &model,
                &mut session,
                px.clone(),
                &sizes,
                valid.as_deref(),
                hw,
            )?;
            if o.dets.scores.len() != b.dets.scores.len()
                || o.dets.boxes.len() != b.dets.boxes.len()
            {
                return Err(err("output shapes differ from the Burn model's"));
            }
            let k = b.dets.scores.len() / n.max(1);
            let d = compare_ranked(k, side, &b.dets, &o.dets);
            labels_ok &= d.labels_identical;
            max_s = max_s.max(d.max_score_diff);
            max_b = max_b.max(d.max_box_diff);
            if d.passed() {
                continue;
            }
            let q = b.selection.len() / n.max(1);
            let gap = min_consecutive_gap(&b.selection_scores, q);
            selection_min_gap = Some(selection_min_gap.map_or(gap, |g| g.min(gap)));
            if exposed.is_none() {
                exposed = Some(open_with_selection(onnx, ort_lib)?);
            }
            let Some(Some((sess, name))) = exposed.as_mut() else {
                continue;
            };
            let e = run_graph(sess, px.clone(), &sizes, valid.as_deref(), hw, Some(name))?;
            let same = compare_ranked(k, side, &o.dets, &e.dets);
            given.exposed_vs_graph = given
                .exposed_vs_graph
                .max(same.max_score_diff)
                .max(same.max_box_diff);
            if !same.labels_identical {
                given.exposed_vs_graph = f32::INFINITY;
            }
            let sel = e
                .selection
                .ok_or_else(|| err("the exposed selection output is missing"))?;
            let bg = run_burn(&model, &px, &sizes, valid.as_deref(), hw, Some(&sel))?;
            let dg = compare_ranked(k, side, &bg.dets, &e.dets);
            given.labels_identical &= dg.labels_identical;
            given.max_score_diff = given.max_score_diff.max(dg.max_score_diff);
            given.max_box_diff = given.max_box_diff.max(dg.max_box_diff);
            given.slots += sel.len();
            given.slots_differing += sel.iter().zip(&b.selection).filter(|(a, b)| a != b).count();
            given.max_rank_score_diff = bg
                .selection_scores
                .iter()
                .zip(&b.selection_scores)
                .map(|(g, own)| (g - own).abs())
                .fold(given.max_rank_score_diff, f32::max);
        }
    }
    let exact = labels_ok && max_s <= TOLERANCE && max_b <= TOLERANCE;
    let given_selection = match exposed {
        Some(Some(_)) => {
            given.verdict();
            Some(given)
        }
        _ => None,
    };
    let passed = exact || given_selection.as_ref().is_some_and(|g| g.passed);
    Ok(CheckReport {
        batches: batches.to_vec(),
        sizes: sizes_run,
        images: most,
        max_score_diff: max_s,
        max_box_diff: max_b,
        labels_identical: labels_ok,
        passed,
        ort_library: ort_lib.to_path_buf(),
        selection_min_gap,
        given_selection,
    })
}

/// What a failing comparison's selection says, for `--check`'s report: how close Burn's
/// selection scores lie (`gap`), and the check on the graph's own selection.
pub fn describe_selection(gap: f32, given: Option<&GivenSelection>) -> String {
    let tie = gap < SELECTION_TIE;
    let mut s = format!(
        "check: the encoder proposals Burn selects as queries are {} (smallest gap between \
         consecutive selection scores {gap:.2e}, near-tie bound {SELECTION_TIE:.0e})",
        if tie { "near-tied" } else { "well separated" },
    );
    if tie {
        s.push_str(
            ": ONNX Runtime may give tied proposals each other's query slot (each slot has its \
             own content query), which moves detections",
        );
    }
    match given {
        None => s.push_str(
            "\ncheck: this graph does not name its query-selection node (written by an older \
             codetr-export): re-export it to check it on its own selection",
        ),
        Some(g) => {
            s.push_str(&format!(
                "\ncheck on the graph's own selection (Burn decodes the proposals the graph \
                 selected; {} of {} query slots hold another proposal than Burn's own choice, \
                 each rank's score within {:.2e} of Burn's): scores {:.2e}, boxes/side {:.2e}, \
                 labels identical: {}; graph with its selection exposed vs as written: {:.2e}",
                g.slots_differing,
                g.slots,
                g.max_rank_score_diff,
                g.max_score_diff,
                g.max_box_diff,
                g.labels_identical,
                g.exposed_vs_graph,
            ));
            s.push_str(if g.passed {
                "\ncheck: the graph and Burn differ only in which near-tied proposal takes which \
                 query slot; given the same selection they agree"
            } else if g.max_rank_score_diff > SELECTION_TIE {
                "\ncheck: the graph selects proposals Burn's scores do not allow"
            } else {
                "\ncheck: given the same selection they still disagree: the difference is not \
                 the selection"
            });
        }
    }
    s
}

/// The smallest `row[i] - row[i + 1]` over rows of `k` descending scores (`f32::INFINITY`
/// when no row has two).
fn min_consecutive_gap(scores: &[f32], k: usize) -> f32 {
    scores
        .chunks_exact(k.max(1))
        .flat_map(|row| row.windows(2).map(|w| w[0] - w[1]))
        .fold(f32::INFINITY, f32::min)
}

/// Differences between two top-k outputs of the same images.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RankedDiff {
    pub max_score_diff: f32,
    /// Box difference ÷ `side`.
    pub max_box_diff: f32,
    pub labels_identical: bool,
}

impl RankedDiff {
    fn passed(&self) -> bool {
        self.labels_identical && self.max_score_diff <= TOLERANCE && self.max_box_diff <= TOLERANCE
    }
}

/// Compares the graph's top-k rows with Burn's, `k` entries per image: (scores, labels, boxes
/// `[.., 4]`). Entries whose Burn scores lie within [`TOLERANCE`] of their neighbours form a
/// tie group, and inside a group the graph may list them in any order: a trained model has
/// near-duplicate detections whose order flips on a 1e-7 score difference, which is not a
/// disagreement. Each Burn entry is matched to the unused graph entry of its group with the
/// same label and the closest box; an entry without one counts as a label mismatch, except in
/// the group at the cut-off, where entries tied with the k-th score may trade places with
/// ones just past rank k.
pub fn compare_ranked(k: usize, side: f32, burn: &Dets, graph: &Dets) -> RankedDiff {
    let (bs, bl, bb) = (&burn.scores, &burn.labels, &burn.boxes);
    let (gs, gl, gb) = (&graph.scores, &graph.labels, &graph.boxes);
    let mut d = RankedDiff {
        max_score_diff: 0.0,
        max_box_diff: 0.0,
        labels_identical: true,
    };
    let box_diff = |i: usize, j: usize| {
        (0..4)
            .map(|c| (bb[4 * i + c] - gb[4 * j + c]).abs() / side)
            .fold(0f32, f32::max)
    };
    for row in 0..bs.len() / k.max(1) {
        let base = row * k;
        let mut start = 0;
        while start < k {
            let mut end = start + 1;
            while end < k && bs[base + end - 1] - bs[base + end] <= TOLERANCE {
                end += 1;
            }
            let mut used = vec![false; end - start];
            let mut unmatched = Vec::new();
            for i in base + start..base + end {
                let best = (base + start..base + end)
                    .filter(|&j| !used[j - base - start] && gl[j] == bl[i])
                    .min_by(|&a, &b| box_diff(i, a).total_cmp(&box_diff(i, b)));
                match best {
                    Some(j) => {
                        used[j - base - start] = true;
                        d.max_score_diff = d.max_score_diff.max((gs[j] - bs[i]).abs());
                        d.max_box_diff = d.max_box_diff.max(box_diff(i, j));
                    }
                    None => unmatched.push(i),
                }
            }
            // The group that reaches the cut-off may continue past rank k: there, an entry
            // tied with the k-th score may be pushed out by another one tied with it (in the
            // graph's list, not in Burn's). Elsewhere, or away from the cut-off score, an entry
            // without its twin is a real disagreement.
            let cut = bs[base + k - 1];
            let at_cut = |score: f32| (score - cut).abs() <= TOLERANCE;
            let leftover: Vec<usize> = (base + start..base + end)
                .filter(|&j| !used[j - base - start])
                .collect();
            let displaced = end == k
                && unmatched.iter().all(|&i| at_cut(bs[i]))
                && leftover.iter().all(|&j| at_cut(gs[j]));
            if !unmatched.is_empty() && !displaced {
                d.labels_identical = false;
                for &i in &unmatched {
                    d.max_score_diff = d.max_score_diff.max((gs[i] - bs[i]).abs());
                    d.max_box_diff = d.max_box_diff.max(box_diff(i, i));
                }
            }
            start = end;
        }
    }
    d
}

/// COCO AP of the exported graph (ONNX Runtime) and of the Burn model (fp32) on the first
/// `limit` images of `data` (0 = all): what an fp16 export costs in accuracy.
#[derive(Debug, Clone, serde::Serialize)]
pub struct MapReport {
    pub images: usize,
    pub ap_burn: f64,
    pub ap_onnx: f64,
    pub ap50_burn: f64,
    pub ap50_onnx: f64,
    /// `ap_onnx - ap_burn`.
    pub delta_ap: f64,
}

/// The images of `batch` as a server feeds a letterbox graph: decoded from their files and
/// letterboxed into `[h, w]` (top-left, zero padding, the scale capped by `limits`). Returns
/// the canvases and each image's valid `[height, width]`.
fn letterbox_batch(
    ds: &CocoDataset,
    batch: &codetr_data::loader::Batch,
    [h, w]: [usize; 2],
    limits: Option<[u32; 2]>,
    resizer: &mut fast_image_resize::Resizer,
) -> Result<(Vec<u8>, Vec<[usize; 2]>)> {
    let mut px = Vec::with_capacity(batch.len() * h * w * 3);
    let mut valid = Vec::with_capacity(batch.len());
    for t in &batch.targets {
        let rec = ds
            .images
            .iter()
            .find(|r| r.id == t.image_id)
            .ok_or_else(|| err(format!("image {} is not in the split", t.image_id)))?;
        let img = codetr_data::coco::decode_rgb(&rec.path, rec.id)?;
        let (canvas, [vh, vw]) = codetr_model::preprocess::letterbox_rgb(
            img.as_raw(),
            [img.width(), img.height()],
            [w as u32, h as u32],
            limits,
            resizer,
        )
        .map_err(|e| err(format!("{}: {e}", rec.path.display())))?;
        px.extend_from_slice(&canvas);
        valid.push([vh as usize, vw as usize]);
    }
    Ok((px, valid))
}

pub fn map_compare(
    onnx: &Path,
    ckpt: &Path,
    model_config: Option<&Path>,
    data: &Path,
    limit: usize,
    ort_lib: &Path,
) -> Result<MapReport> {
    use codetr_data::coco::CocoFile;
    use codetr_data::eval::coco_detections;
    use codetr_data::eval::evaluate;
    let device = Device::flex();
    let model = crate::load_source(ckpt, model_config, &device)?.model;
    let size = model.config().input_size;
    let mut ds = CocoDataset::load_split(data, LoadOptions::default())?;
    if limit > 0 && ds.images.len() > limit {
        ds.images.truncate(limit);
    }
    let ids: std::collections::HashSet<u64> = ds.images.iter().map(|i| i.id).collect();
    let ds = Arc::new(ds);
    let loader = Loader::new(
        ds.clone(),
        LoaderConfig::eval(4, size, 1, codetr_model::Resize::Stretch),
    )?;
    let mut session = open_session(onnx, ort_lib)?;
    let meta = graph_meta(&session)?;
    let letterbox = meta.resize == codetr_model::Resize::Letterbox;
    let s = size as usize;
    // a fixed graph runs at its own size (e.g. 800×1333); the loader's squares are resampled
    let hw = meta
        .input_size
        .map_or([s, s], |[h, w]| [h as usize, w as usize]);
    let (mut d_burn, mut d_onnx) = (Vec::new(), Vec::new());
    let mut resizer = fast_image_resize::Resizer::new();
    for batch in loader.epoch(0, 0) {
        let batch = batch?;
        let n = batch.len();
        let sizes: Vec<[u32; 2]> = batch.targets.iter().map(|t| t.orig_size).collect();
        // a letterbox graph gets what the server gives it: each image decoded and letterboxed
        // into the graph's input (with the graph's keep-ratio limits), padding masked; a
        // stretch graph the loader's stretched images
        let (px, valid) = if letterbox {
            let (px, valid) =
                letterbox_batch(&ds, &batch, hw, meta.letterbox_limits, &mut resizer)?;
            (px, Some(valid))
        } else if hw == [s, s] {
            (batch.pixels.clone(), None)
        } else {
            (resample(&batch.pixels, n, [s, s], hw), None)
        };
        let (b, o) = run_both(&model, &mut session, px, &sizes, valid.as_deref(), hw)?;
        for (dets, out) in [(&b.dets, &mut d_burn), (&o.dets, &mut d_onnx)] {
            let k = dets.scores.len() / n.max(1);
            for (i, t) in batch.targets.iter().enumerate() {
                out.extend(coco_detections(
                    t.image_id,
                    &dets.labels[i * k..(i + 1) * k],
                    &dets.scores[i * k..(i + 1) * k],
                    &dets.boxes[i * k * 4..(i + 1) * k * 4],
                    &ds.categories,
                ));
            }
        }
    }
    let mut gt = CocoFile::read(&ds.json_path)?;
    gt.images.retain(|i| ids.contains(&i.id));
    gt.annotations.retain(|a| ids.contains(&a.image_id));
    let a = evaluate(&gt, &ds.json_path, &d_burn)?;
    let b = evaluate(&gt, &ds.json_path, &d_onnx)?;
    Ok(MapReport {
        images: ids.len(),
        ap_burn: a.ap,
        ap_onnx: b.ap,
        ap50_burn: a.ap50,
        ap50_onnx: b.ap50,
        delta_ap: b.ap - a.ap,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: [f32; 12] = [0., 0., 10., 10., 5., 5., 20., 20., 1., 1., 2., 2.];

    fn dets(scores: [f32; 3], labels: [i64; 3], boxes: [f32; 12]) -> Dets {
        Dets {
            scores: scores.to_vec(),
            labels: labels.to_vec(),
            boxes: boxes.to_vec(),
        }
    }

    fn cmp3(
        burn: ([f32; 3], [i64; 3], [f32; 12]),
        graph: ([f32; 3], [i64; 3], [f32; 12]),
    ) -> RankedDiff {
        compare_ranked(
            3,
            100.0,
            &dets(burn.0, burn.1, burn.2),
            &dets(graph.0, graph.1, graph.2),
        )
    }

    /// The smallest gap is taken within each image's row, never across rows.
    #[test]
    fn selection_gap_is_per_image() {
        // rows [3, 2, 0.5] and [1, 0.999999, 0.25]: gaps 1, 1.5 and 1e-6, 0.749999
        let g = min_consecutive_gap(&[3.0, 2.0, 0.5, 1.0, 0.999_999, 0.25], 3);
        assert!((g - 1e-6).abs() < 1e-7, "{g}");
        assert!(g < SELECTION_TIE);
        // 0.5 → 9.0 across the rows would be negative
        assert_eq!(min_consecutive_gap(&[3.0, 2.0, 0.5, 9.0, 8.0, 1.0], 3), 1.0);
        assert_eq!(min_consecutive_gap(&[1.0, 2.0], 1), f32::INFINITY);
    }

    /// The check on the graph's selection passes only when the graph's choice is one Burn's
    /// scores allow and everything downstream agrees, on the graph as written.
    #[test]
    fn a_given_selection_passes_only_on_a_tie_and_agreement_downstream() {
        let good = || GivenSelection {
            slots: 1800,
            slots_differing: 4,
            max_rank_score_diff: 2e-6,
            exposed_vs_graph: 0.0,
            max_score_diff: 2e-7,
            max_box_diff: 1e-7,
            labels_identical: true,
            passed: false,
        };
        let verdict = |change: &dyn Fn(&mut GivenSelection)| {
            let mut g = good();
            change(&mut g);
            g.verdict();
            g.passed
        };
        assert!(verdict(&|_| {}));
        assert!(!verdict(&|g| g.max_rank_score_diff = 2e-5));
        assert!(!verdict(&|g| g.max_score_diff = 2e-4));
        assert!(!verdict(&|g| g.max_box_diff = 2e-4));
        assert!(!verdict(&|g| g.labels_identical = false));
        assert!(!verdict(&|g| g.exposed_vs_graph = f32::INFINITY));
        let mut g = good();
        g.verdict();
        let text = describe_selection(7e-7, Some(&g));
        assert!(
            text.contains("near-tied") && text.contains("4 of 1800"),
            "{text}"
        );
        assert!(
            text.contains("differ only in which near-tied proposal"),
            "{text}"
        );
        g.max_rank_score_diff = 1e-2;
        g.verdict();
        let text = describe_selection(7e-7, Some(&g));
        assert!(text.contains("do not allow"), "{text}");
        let text = describe_selection(0.3, None);
        assert!(
            text.contains("well separated") && text.contains("re-export"),
            "{text}"
        );
    }

    #[test]
    fn tied_scores_may_swap_but_real_differences_are_caught() {
        let burn = ([0.9f32, 0.5, 0.5], [1i64, 2, 3], B);
        // entries 1 and 2 tie (equal to 1e-7): swapped in the graph, still identical
        let mut gb = B;
        gb[4..8].copy_from_slice(&B[8..12]);
        gb[8..12].copy_from_slice(&B[4..8]);
        let swapped = ([0.9f32, 0.5000001, 0.5], [1i64, 3, 2], gb);
        let d = cmp3(burn, swapped);
        assert!(d.labels_identical, "{d:?}");
        assert!(d.max_box_diff == 0.0 && d.max_score_diff < 1e-6, "{d:?}");
        // entries 0 and 1 are 0.4 apart: a swap there is a real disagreement
        let mut gb = B;
        gb[..4].copy_from_slice(&B[4..8]);
        gb[4..8].copy_from_slice(&B[..4]);
        let wrong = ([0.9f32, 0.5, 0.5], [2i64, 1, 3], gb);
        let d = cmp3(burn, wrong);
        assert!(!d.labels_identical, "{d:?}");
        // a moved box inside a tie group is still measured
        let mut gb = B;
        gb[9] += 3.0;
        let moved = ([0.9f32, 0.5, 0.5], [1i64, 2, 3], gb);
        let d = cmp3(burn, moved);
        assert!(
            d.labels_identical && (d.max_box_diff - 0.03).abs() < 1e-6,
            "{d:?}"
        );
    }

    #[test]
    fn a_tie_at_the_cut_off_may_swap_in_an_entry_from_past_rank_k() {
        let cmp =
            |b: ([f32; 3], [i64; 3]), g: ([f32; 3], [i64; 3])| cmp3((b.0, b.1, B), (g.0, g.1, B));
        // Burn's 3rd entry (label 3) and the graph's (label 4) are two detections tied at the
        // cut-off score: each list's k-th is the other's (k+1)-th.
        let d = cmp(
            ([0.9, 0.5, 0.3], [1, 2, 3]),
            ([0.9, 0.5, 0.3000005], [1, 2, 4]),
        );
        assert!(d.labels_identical, "{d:?}");
        assert!(d.max_score_diff < 1e-6, "{d:?}");
        // the same swap above the cut-off is a disagreement
        let d = cmp(
            ([0.9, 0.3, 0.1], [1, 3, 5]),
            ([0.9, 0.3000002, 0.1], [1, 4, 5]),
        );
        assert!(!d.labels_identical, "{d:?}");
        // and so is a cut-off entry replaced by one with a clearly different score
        let d = cmp(([0.9, 0.5, 0.3], [1, 2, 3]), ([0.9, 0.5, 0.35], [1, 2, 4]));
        assert!(!d.labels_identical, "{d:?}");
    }
}
