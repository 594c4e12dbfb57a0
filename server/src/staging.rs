//! How a batch crosses into a session and back. Every buffer lives as long as its worker, so
//! the hot path allocates nothing.
//!
//! - **Bound** (`runtime.io_binding`, the default): each (batch size, input size) a worker runs
//!   gets its own input and output tensors and an ONNX Runtime `IoBinding`, made once (at
//!   warm-up). The batcher writes images straight into the input tensor. ONNX Runtime copies
//!   it to the device once per run and writes the top-k outputs (a few KB) into the output
//!   tensors. Under CUDA and TensorRT these host tensors are pinned (page-locked), so both
//!   copies are DMA instead of passing through the driver's pageable bounce buffer.
//! - **Plain**: `Session::run` on a view of one reused host buffer; outputs are allocated by
//!   ONNX Runtime per run. Kept for comparison (`bench/gpu_serve.sh` runs both) and as a way
//!   out if a provider mishandles bindings.

use std::collections::HashMap;

use codetr_model::{
    INPUT_IMAGES, INPUT_ORIG_SIZES, INPUT_VALID_SIZES, OUTPUT_BOXES, OUTPUT_LABELS, OUTPUT_SCORES,
};
use ort::memory::{AllocationDevice, Allocator, AllocatorType, MemoryInfo, MemoryType};
use ort::session::{IoBinding, Session, SessionOutputs};
use ort::value::{Tensor, TensorRef};

use crate::config::Provider;
use crate::engine::{BatchOutput, ImageSizes};
use crate::error::{Result, ServeError};

/// The host memory a worker's batches are staged in (shown in `/v1/models`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum HostMemory {
    /// Page-locked memory from the CUDA provider's pinned allocator.
    CudaPinned,
    /// Ordinary (pageable) host memory.
    Cpu,
}

/// A worker's staging: see the module docs.
pub(crate) struct Staging {
    /// Detections per image (the graph's top-k).
    k: usize,
    /// The graph takes `valid_sizes` (a letterbox graph).
    letterbox: bool,
    mode: Mode,
}

enum Mode {
    Plain(Plain),
    Bound(Bound),
}

/// One reused buffer for `Session::run`.
pub(crate) struct Plain {
    /// `[n, H, W, 3]` of the last [`Staging::input`] call.
    pixels: Vec<u8>,
    /// `(n, [H, W])` the buffer was last handed out for.
    shape: Option<(usize, [u32; 2])>,
}

/// Per-shape bindings over tensors allocated once.
pub(crate) struct Bound {
    input: Allocator,
    output: Allocator,
    memory: HostMemory,
    slots: HashMap<(usize, [u32; 2]), Slot>,
}

/// The tensors and binding of one (batch size, input size).
struct Slot {
    binding: IoBinding,
    /// `[n, H, W, 3]` uint8.
    images: Tensor<u8>,
    /// `[n, 2]` original `(h, w)`.
    orig: Tensor<i64>,
    /// `[n, 2]` valid `(h, w)`; a letterbox graph only.
    valid: Option<Tensor<i64>>,
}

fn ie(what: &str) -> impl Fn(ort::Error) -> ServeError + '_ {
    move |e| ServeError::Internal(format!("{what}: {e}"))
}

impl HostMemory {
    /// The name `/v1/models` and the metrics use.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::CudaPinned => "cuda-pinned",
            Self::Cpu => "cpu",
        }
    }
}

/// Accounts `bytes` (negative: freed) of staging memory in the `codetr_staging_bytes` gauge.
fn account(memory: HostMemory, bytes: f64) {
    metrics::gauge!(crate::metrics::STAGING_BYTES, "memory" => memory.as_str()).increment(bytes);
}

impl Slot {
    /// Bytes of its tensors: the images, the size inputs and the three outputs.
    fn bytes(n: usize, [h, w]: [usize; 2], k: usize, letterbox: bool) -> usize {
        let sizes = if letterbox { 2 } else { 1 } * n * 2 * 8;
        n * h * w * 3 + sizes + n * k * (8 + 4 + 4 * 4)
    }
}

impl Staging {
    /// Plain or bound staging for `session`. Under a GPU provider the bound tensors are
    /// pinned; where the provider offers no pinned allocator they fall back to ordinary host
    /// memory, with a warning (the binding still saves the per-run allocations).
    pub(crate) fn new(
        session: &Session,
        provider: Provider,
        device_id: i32,
        bind: bool,
        k: usize,
        letterbox: bool,
    ) -> Result<Self> {
        let mode = |mode| Self { k, letterbox, mode };
        if !bind {
            return Ok(mode(Mode::Plain(Plain {
                pixels: Vec::new(),
                shape: None,
            })));
        }
        let host = |mt| -> Result<Allocator> {
            let info = MemoryInfo::new(AllocationDevice::CPU, 0, AllocatorType::Device, mt)
                .map_err(ie("host memory info"))?;
            Allocator::new(session, info).map_err(ie("host allocator"))
        };
        let pinned = |mt| -> std::result::Result<Allocator, ort::Error> {
            let info = MemoryInfo::new(
                AllocationDevice::CUDA_PINNED,
                device_id,
                AllocatorType::Device,
                mt,
            )?;
            Allocator::new(session, info)
        };
        let (input, output, memory) = if provider.is_gpu() {
            match (pinned(MemoryType::CPUInput), pinned(MemoryType::CPUOutput)) {
                (Ok(i), Ok(o)) => (i, o, HostMemory::CudaPinned),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(
                        provider = provider.as_str(),
                        "no pinned host allocator ({e}); staging batches in pageable memory"
                    );
                    (
                        host(MemoryType::Default)?,
                        host(MemoryType::Default)?,
                        HostMemory::Cpu,
                    )
                }
            }
        } else {
            (
                host(MemoryType::Default)?,
                host(MemoryType::Default)?,
                HostMemory::Cpu,
            )
        };
        Ok(mode(Mode::Bound(Bound {
            input,
            output,
            memory,
            slots: HashMap::new(),
        })))
    }

    /// Switches to plain runs, freeing the bound buffers; `false` if already plain.
    pub(crate) fn unbind(&mut self) -> bool {
        let Mode::Bound(b) = &self.mode else {
            return false;
        };
        let bytes: usize = b
            .slots
            .keys()
            .map(|&(n, hw)| Slot::bytes(n, hw.map(|x| x as usize), self.k, self.letterbox))
            .sum();
        account(b.memory, -(bytes as f64));
        self.mode = Mode::Plain(Plain {
            pixels: Vec::new(),
            shape: None,
        });
        true
    }

    /// Whether runs go through I/O binding.
    pub(crate) fn bound(&self) -> bool {
        matches!(self.mode, Mode::Bound(_))
    }

    /// The host memory batches are staged in.
    pub(crate) fn memory(&self) -> HostMemory {
        match &self.mode {
            Mode::Plain(_) => HostMemory::Cpu,
            Mode::Bound(b) => b.memory,
        }
    }

    /// The `[n, H, W, 3]` buffer the next [`Staging::run`] of `n` images at `hw` reads. A
    /// bound shape seen for the first time allocates its tensors and binds its outputs here;
    /// a failure (pinned memory exhausted) is an error, not a panic.
    pub(crate) fn input(&mut self, session: &Session, hw: [u32; 2], n: usize) -> Result<&mut [u8]> {
        let [h, w] = hw.map(|x| x as usize);
        let (k, letterbox) = (self.k, self.letterbox);
        match &mut self.mode {
            Mode::Plain(p) => {
                let before = p.pixels.capacity();
                p.pixels.resize(n * h * w * 3, 0);
                account(HostMemory::Cpu, (p.pixels.capacity() - before) as f64);
                p.shape = Some((n, hw));
                Ok(&mut p.pixels)
            }
            Mode::Bound(b) => {
                let slot = match b.slots.entry((n, hw)) {
                    std::collections::hash_map::Entry::Occupied(o) => o.into_mut(),
                    std::collections::hash_map::Entry::Vacant(v) => {
                        let e = ie("staging buffers");
                        let mut binding = session.create_binding().map_err(&e)?;
                        binding
                            .bind_output(
                                OUTPUT_LABELS,
                                Tensor::<i64>::new(&b.output, [n, k]).map_err(&e)?,
                            )
                            .map_err(&e)?;
                        binding
                            .bind_output(
                                OUTPUT_SCORES,
                                Tensor::<f32>::new(&b.output, [n, k]).map_err(&e)?,
                            )
                            .map_err(&e)?;
                        binding
                            .bind_output(
                                OUTPUT_BOXES,
                                Tensor::<f32>::new(&b.output, [n, k, 4]).map_err(&e)?,
                            )
                            .map_err(&e)?;
                        let sizes = || Tensor::<i64>::new(&b.input, [n, 2]).map_err(&e);
                        let slot = v.insert(Slot {
                            binding,
                            images: Tensor::<u8>::new(&b.input, [n, h, w, 3]).map_err(&e)?,
                            orig: sizes()?,
                            valid: if letterbox { Some(sizes()?) } else { None },
                        });
                        account(b.memory, Slot::bytes(n, [h, w], k, letterbox) as f64);
                        slot
                    }
                };
                let (_, px) = slot
                    .images
                    .try_extract_tensor_mut::<u8>()
                    .map_err(ie("staging buffer"))?;
                Ok(px)
            }
        }
    }

    /// Runs the `n` images last written to [`Staging::input`]`(hw, n)`; `sizes` are their
    /// original and valid sizes (the valid size goes to a letterbox graph only).
    pub(crate) fn run(
        &mut self,
        session: &mut Session,
        hw: [u32; 2],
        n: usize,
        sizes: &[ImageSizes],
    ) -> Result<BatchOutput> {
        let (k, letterbox) = (self.k, self.letterbox);
        if sizes.len() != n {
            return Err(ServeError::Internal(format!(
                "batch of {n} with {} image sizes",
                sizes.len()
            )));
        }
        let pairs = |f: fn(&ImageSizes) -> [u32; 2]| -> Vec<i64> {
            sizes.iter().flat_map(|s| f(s).map(i64::from)).collect()
        };
        let e = ie("inference");
        match &mut self.mode {
            Mode::Plain(p) => {
                if p.shape != Some((n, hw)) {
                    return Err(ServeError::Internal(format!(
                        "batch of {n} at {hw:?} run without its input written"
                    )));
                }
                let [h, w] = hw.map(|x| x as usize);
                let images =
                    TensorRef::from_array_view(([n, h, w, 3], &p.pixels[..])).map_err(&e)?;
                let orig = Tensor::from_array(([n, 2], pairs(|s| s.orig))).map_err(&e)?;
                let out = if letterbox {
                    let valid = Tensor::from_array(([n, 2], pairs(|s| s.valid))).map_err(&e)?;
                    session.run(ort::inputs![
                        INPUT_IMAGES => images,
                        INPUT_ORIG_SIZES => orig,
                        INPUT_VALID_SIZES => valid,
                    ])
                } else {
                    session.run(ort::inputs![
                        INPUT_IMAGES => images,
                        INPUT_ORIG_SIZES => orig,
                    ])
                }
                .map_err(&e)?;
                read(&out, n, k)
            }
            Mode::Bound(b) => {
                let slot = b.slots.get_mut(&(n, hw)).ok_or_else(|| {
                    ServeError::Internal(format!(
                        "batch of {n} at {hw:?} run without its input written"
                    ))
                })?;
                let fill = |t: &mut Tensor<i64>, v: Vec<i64>| -> Result<()> {
                    t.try_extract_tensor_mut::<i64>()
                        .map_err(&e)?
                        .1
                        .copy_from_slice(&v);
                    Ok(())
                };
                fill(&mut slot.orig, pairs(|s| s.orig))?;
                if let Some(valid) = &mut slot.valid {
                    fill(valid, pairs(|s| s.valid))?;
                }
                // Binding copies a host input to the device (a GPU session) or holds it (a
                // CPU one), so inputs are bound again after every write. The copies are
                // asynchronous: wait for them before running, so a later write cannot race
                // them, and for the outputs' copies back before reading.
                let bi = &mut slot.binding;
                bi.bind_input(INPUT_IMAGES, &slot.images).map_err(&e)?;
                bi.bind_input(INPUT_ORIG_SIZES, &slot.orig).map_err(&e)?;
                if let Some(valid) = &slot.valid {
                    bi.bind_input(INPUT_VALID_SIZES, valid).map_err(&e)?;
                }
                // The outputs borrow the binding: a block, so the borrow ends before a
                // failed shape's slot is removed.
                let err = {
                    let out = bi
                        .synchronize_inputs()
                        .and_then(|()| session.run_binding(bi))
                        .and_then(|out| bi.synchronize_outputs().map(|()| out));
                    match out {
                        Ok(out) => return read(&out, n, k),
                        Err(err) => err,
                    }
                };
                // A shape that fails (out of memory at warm-up) is dropped from service: free
                // its buffers rather than hold pinned memory for it; a later use starts from a
                // fresh binding.
                b.slots.remove(&(n, hw));
                let [h, w] = hw.map(|x| x as usize);
                account(b.memory, -(Slot::bytes(n, [h, w], k, letterbox) as f64));
                Err(e(err))
            }
        }
    }
}

/// Copies a run's three outputs out, checking they hold `n` images × `k` detections.
fn read(out: &SessionOutputs<'_>, n: usize, k: usize) -> Result<BatchOutput> {
    let e = ie("inference");
    let get = |name: &str| {
        out.get(name)
            .ok_or_else(|| ServeError::Internal(format!("the graph produced no `{name}`")))
    };
    let (_, labels) = get(OUTPUT_LABELS)?
        .try_extract_tensor::<i64>()
        .map_err(&e)?;
    let (_, scores) = get(OUTPUT_SCORES)?
        .try_extract_tensor::<f32>()
        .map_err(&e)?;
    let (_, boxes) = get(OUTPUT_BOXES)?.try_extract_tensor::<f32>().map_err(&e)?;
    if labels.len() != n * k || scores.len() != n * k || boxes.len() != n * k * 4 {
        return Err(ServeError::Internal(format!(
            "output sizes {}/{}/{} do not match {n} images × {k} detections",
            labels.len(),
            scores.len(),
            boxes.len()
        )));
    }
    Ok(BatchOutput {
        labels: labels.to_vec(),
        scores: scores.to_vec(),
        boxes: boxes.to_vec(),
        k,
    })
}
