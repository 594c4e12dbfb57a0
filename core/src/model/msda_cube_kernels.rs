// The MSDA kernels themselves (CubeCL), shared verbatim by `msda_cube.rs` (Burn 0.22,
// CubeCL 0.11) and `bench/burn021_ops/src/msda_cube.rs` (Burn 0.21, CubeCL 0.10) through
// `include!`, so that the backend decision times the product's own kernels on both. Written
// in the subset both CubeCL versions accept; the includer brings `cubecl::prelude::*` and the
// host code (launches, buffers). See `msda_cube.rs` for the design.

/// The scalars every kernel takes: the call's shapes and one level's. Tensors are contiguous:
/// `value` `[B, S, H, Ch]`, `loc` `[B, Q, H, L, P, 2]`, `weight` `[B, Q, H, L, P]`, the output
/// and its gradient `[B, Q, H, Ch]`.
#[derive(CubeLaunch, CubeType)]
struct MsdaArgs {
    /// Units of the launch (its last cube may run past them).
    units: usize,
    /// `Q·H`, `H`, `Ch`, `S`, `L`, `P`.
    qh: usize,
    heads: usize,
    channels: usize,
    tokens: usize,
    levels: usize,
    points: usize,
    /// The level: its index, map size and first token in the value sequence.
    level: usize,
    level_h: usize,
    level_w: usize,
    level_start: usize,
}

/// The four bilinear corners of one sampling point: whether each lies on the map, the offset
/// of its channel 0 in `value` (channel 0 of the level's first row when outside, so that a
/// read stays in bounds) and the point's fractional position `(fx, fy)` past corner 00.
#[derive(CubeType)]
struct Taps {
    fx: f32,
    fy: f32,
    in00: bool,
    in10: bool,
    in01: bool,
    in11: bool,
    r00: usize,
    r10: usize,
    r01: usize,
    r11: usize,
}

/// Whether corner `(x, y)` lies on the level's map, and the offset of its channel 0 given
/// `row0`, the row of the level's first token for this (batch, head).
#[cube]
fn corner(x: i32, y: i32, row0: usize, args: &MsdaArgs) -> (bool, usize) {
    let wi = i32::cast_from(args.level_w);
    let hi = i32::cast_from(args.level_h);
    let inside = x >= 0 && x < wi && y >= 0 && y < hi;
    let token = select(inside, usize::cast_from(y * wi + x), 0usize);
    (inside, (row0 + token * args.heads) * args.channels)
}

/// The corners of sample `sample` (its index in `loc` / 2 and in `weight`). Coordinates are
/// clamped to `[-2, size + 1]` pixels first, which moves no sample (every corner out there is
/// outside the map) but keeps the integer cast defined.
#[cube]
fn taps(loc: &Tensor<f32>, sample: usize, row0: usize, args: &MsdaArgs) -> Taps {
    let wf = f32::cast_from(args.level_w);
    let hf = f32::cast_from(args.level_h);
    let x = clamp(loc[sample * 2] * wf - 0.5, -2.0, wf + 1.0);
    let y = clamp(loc[sample * 2 + 1] * hf - 0.5, -2.0, hf + 1.0);
    let xf = x.floor();
    let yf = y.floor();
    let x0 = i32::cast_from(xf);
    let y0 = i32::cast_from(yf);
    let (in00, r00) = corner(x0, y0, row0, args);
    let (in10, r10) = corner(x0 + 1, y0, row0, args);
    let (in01, r01) = corner(x0, y0 + 1, row0, args);
    let (in11, r11) = corner(x0 + 1, y0 + 1, row0, args);
    Taps {
        fx: x - xf,
        fy: y - yf,
        in00,
        in10,
        in01,
        in11,
        r00,
        r10,
        r01,
        r11,
    }
}

/// `(b·Q + q)·H + h` of a unit over `[B, Q, H]` and the row of the level's first token for its
/// (batch, head) in `value` seen as `[B·S·H, Ch]` rows.
#[cube]
fn query_row(bqh: usize, args: &MsdaArgs) -> usize {
    let b = bqh / args.qh;
    (b * args.tokens + args.level_start) * args.heads + bqh % args.heads
}

/// Forward for one level, accumulated into `out`: one unit per output element `(b, q, h, c)`.
#[cube(launch_unchecked, address_type = "dynamic")]
fn forward_kernel(
    value: &Tensor<f32>,
    loc: &Tensor<f32>,
    weight: &Tensor<f32>,
    out: &mut Tensor<f32>,
    args: &MsdaArgs,
) {
    if ABSOLUTE_POS >= args.units {
        terminate!();
    }
    let c = ABSOLUTE_POS % args.channels;
    let bqh = ABSOLUTE_POS / args.channels;
    let row0 = query_row(bqh, args);
    let mut acc = 0.0f32;
    for p in 0..args.points {
        let sample = (bqh * args.levels + args.level) * args.points + p;
        let t = taps(loc, sample, row0, args);
        let gx = 1.0 - t.fx;
        let gy = 1.0 - t.fy;
        let v00 = select(t.in00, value[t.r00 + c], 0.0);
        let v10 = select(t.in10, value[t.r10 + c], 0.0);
        let v01 = select(t.in01, value[t.r01 + c], 0.0);
        let v11 = select(t.in11, value[t.r11 + c], 0.0);
        acc += weight[sample]
            * (gx * gy * v00 + t.fx * gy * v10 + gx * t.fy * v01 + t.fx * t.fy * v11);
    }
    out[ABSOLUTE_POS] += acc;
}

/// How the value-gradient kernel adds an f32 into a cell of its f32 gradient buffer, seen as
/// `Cell`s.
#[cube]
trait AddF32: Send + Sync + 'static {
    type Cell: Numeric;
    fn add(cell: &mut Atomic<Self::Cell>, v: f32);
}

/// The device's f32 atomic add (CUDA; Vulkan with float atomics; lavapipe).
#[derive(CubeType)]
struct NativeAdd;

/// A compare-exchange loop on the f32's bits, for devices without f32 atomic add. The loop
/// ends when the exchange saw the bits it read, i.e. when it stored the sum. (WGSL's weak
/// exchange is translated to Vulkan's strong one, which never fails spuriously.)
#[derive(CubeType)]
struct BitsAdd;

#[cube]
impl AddF32 for NativeAdd {
    type Cell = f32;
    fn add(cell: &mut Atomic<f32>, v: f32) {
        cell.fetch_add(v);
    }
}

#[cube]
impl AddF32 for BitsAdd {
    type Cell = u32;
    fn add(cell: &mut Atomic<u32>, v: f32) {
        let mut seen = cell.load();
        loop {
            let sum = u32::reinterpret(f32::reinterpret(seen) + v);
            let before = cell.compare_exchange_weak(seen, sum);
            if before == seen {
                break;
            }
            seen = before;
        }
    }
}

/// Value gradient for one level: the forward's units, each adding `a·w·g` into its corners'
/// cells of `grad_value` (an f32 buffer shaped like `value`, seen as `Op::Cell`s); `grad` is the
/// output gradient.
#[cube(launch_unchecked, address_type = "dynamic")]
fn value_grad_kernel<Op: AddF32>(
    loc: &Tensor<f32>,
    weight: &Tensor<f32>,
    grad: &Tensor<f32>,
    grad_value: &mut Tensor<Atomic<Op::Cell>>,
    args: &MsdaArgs,
) {
    if ABSOLUTE_POS >= args.units {
        terminate!();
    }
    let c = ABSOLUTE_POS % args.channels;
    let bqh = ABSOLUTE_POS / args.channels;
    let row0 = query_row(bqh, args);
    let g = grad[ABSOLUTE_POS];
    for p in 0..args.points {
        let sample = (bqh * args.levels + args.level) * args.points + p;
        let ag = weight[sample] * g;
        let t = taps(loc, sample, row0, args);
        let gx = 1.0 - t.fx;
        let gy = 1.0 - t.fy;
        if t.in00 {
            Op::add(&mut grad_value[t.r00 + c], ag * gx * gy);
        }
        if t.in10 {
            Op::add(&mut grad_value[t.r10 + c], ag * t.fx * gy);
        }
        if t.in01 {
            Op::add(&mut grad_value[t.r01 + c], ag * gx * t.fy);
        }
        if t.in11 {
            Op::add(&mut grad_value[t.r11 + c], ag * t.fx * t.fy);
        }
    }
}

/// Location and weight gradients for one level: one unit per sample `(b, q, h, p)` of the
/// level, writing its cells of `grad_loc` (shaped like `loc`) and `grad_weight` (like `weight`).
#[cube(launch_unchecked, address_type = "dynamic")]
fn sample_grad_kernel(
    value: &Tensor<f32>,
    loc: &Tensor<f32>,
    weight: &Tensor<f32>,
    grad: &Tensor<f32>,
    grad_loc: &mut Tensor<f32>,
    grad_weight: &mut Tensor<f32>,
    args: &MsdaArgs,
) {
    if ABSOLUTE_POS >= args.units {
        terminate!();
    }
    let p = ABSOLUTE_POS % args.points;
    let bqh = ABSOLUTE_POS / args.points;
    let sample = (bqh * args.levels + args.level) * args.points + p;
    let t = taps(loc, sample, query_row(bqh, args), args);
    let rg = bqh * args.channels;
    // <g, v_corner> per corner (0 for a corner outside the map)
    let mut d00 = 0.0f32;
    let mut d10 = 0.0f32;
    let mut d01 = 0.0f32;
    let mut d11 = 0.0f32;
    for c in 0..args.channels {
        let g = grad[rg + c];
        d00 += g * select(t.in00, value[t.r00 + c], 0.0);
        d10 += g * select(t.in10, value[t.r10 + c], 0.0);
        d01 += g * select(t.in01, value[t.r01 + c], 0.0);
        d11 += g * select(t.in11, value[t.r11 + c], 0.0);
    }
    let gx = 1.0 - t.fx;
    let gy = 1.0 - t.fy;
    grad_weight[sample] = gx * gy * d00 + t.fx * gy * d10 + gx * t.fy * d01 + t.fx * t.fy * d11;
    // d bilinear / d x per corner: −(1−fy), 1−fy, −fy, fy; in y: −(1−fx), −fx, 1−fx, fx.
    let dx = gy * (d10 - d00) + t.fy * (d11 - d01);
    let dy = gx * (d01 - d00) + t.fx * (d11 - d10);
    let a = weight[sample];
    grad_loc[sample * 2] = a * dx * f32::cast_from(args.level_w);
    grad_loc[sample * 2 + 1] = a * dy * f32::cast_from(args.level_h);
}
