//! MSDA: the host, gather, grid_sample and chunked implementations against the naive loop,
//! forward and backward, including sampling points outside the maps.

use burn::tensor::{Device, Tensor, TensorData};
use codetr_core::model::msda::{MsdaImpl, msda_core, msda_naive};
use codetr_core::model::msda_chunked::msda_chunked;
use codetr_data::rng::Rng;

struct Case {
    b: usize,
    q: usize,
    h: usize,
    ch: usize,
    shapes: Vec<[usize; 2]>,
    p: usize,
}

fn rand_vec(rng: &mut Rng, n: usize, lo: f32, hi: f32) -> Vec<f32> {
    (0..n).map(|_| rng.uniform(lo, hi)).collect()
}

/// value, locations (some outside [0,1]), weights
fn inputs(c: &Case, seed: u64, dev: &Device) -> (Tensor<4>, Tensor<6>, Tensor<5>) {
    let mut rng = Rng::new(seed);
    let s: usize = c.shapes.iter().map(|[h, w]| h * w).sum();
    let l = c.shapes.len();
    let v = rand_vec(&mut rng, c.b * s * c.h * c.ch, -1.0, 1.0);
    let loc = rand_vec(&mut rng, c.b * c.q * c.h * l * c.p * 2, -0.15, 1.15);
    let w = rand_vec(&mut rng, c.b * c.q * c.h * l * c.p, 0.0, 1.0);
    (
        Tensor::from_data(TensorData::new(v, [c.b, s, c.h, c.ch]), dev),
        Tensor::from_data(TensorData::new(loc, [c.b, c.q, c.h, l, c.p, 2]), dev),
        Tensor::from_data(TensorData::new(w, [c.b, c.q, c.h, l, c.p]), dev),
    )
}

fn max_abs_diff<const D: usize>(a: Tensor<D>, b: Tensor<D>) -> f32 {
    let a: Vec<f32> = a.into_data().convert::<f32>().try_to_vec().unwrap();
    let b: Vec<f32> = b.into_data().convert::<f32>().try_to_vec().unwrap();
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(&b)
        .map(|(x, y)| (x - y).abs())
        .fold(0.0, f32::max)
}

/// Gradients of `sum(out · r)` w.r.t. (value, locations, weights) for case `c`'s inputs drawn
/// with `seed` on `dev`, through `run` (an implementation of the sampling core).
fn grads_of(
    c: &Case,
    seed: u64,
    r: &[f32],
    dev: &Device,
    run: impl Fn(Tensor<4>, &[[usize; 2]], Tensor<6>, Tensor<5>) -> Tensor<3>,
) -> (Tensor<4>, Tensor<6>, Tensor<5>) {
    let (v, loc, w) = inputs(c, seed, dev);
    let (v, loc, w) = (v.require_grad(), loc.require_grad(), w.require_grad());
    let out = run(v.clone(), &c.shapes, loc.clone(), w.clone());
    let r = Tensor::<3>::from_data(TensorData::new(r.to_vec(), [c.b, c.q, c.h * c.ch]), dev);
    let g = (out * r).sum().backward();
    (
        v.grad(&g).unwrap(),
        loc.grad(&g).unwrap(),
        w.grad(&g).unwrap(),
    )
}

/// [`grads_of`] the chunked op with `budget`, or (`None`) of gather's autodiff.
fn chunked_or_gather_grads(
    c: &Case,
    seed: u64,
    r: &[f32],
    dev: &Device,
    budget: Option<usize>,
) -> (Tensor<4>, Tensor<6>, Tensor<5>) {
    grads_of(c, seed, r, dev, |v, shapes, loc, w| match budget {
        Some(budget) => msda_chunked(v, shapes, loc, w, budget),
        None => msda_core(v, shapes, loc, w, MsdaImpl::Gather),
    })
}

/// Max abs differences of (value, locations, weights) gradients, each asserted ≤ 1e-5.
fn assert_grads_within_1e_5(
    want: &(Tensor<4>, Tensor<6>, Tensor<5>),
    got: (Tensor<4>, Tensor<6>, Tensor<5>),
    what: &str,
) {
    let (dv, dl, dw) = (
        max_abs_diff(want.0.clone(), got.0),
        max_abs_diff(want.1.clone(), got.1),
        max_abs_diff(want.2.clone(), got.2),
    );
    assert!(
        dv <= 1e-5 && dl <= 1e-5 && dw <= 1e-5,
        "{what}: value {dv}, loc {dl}, weights {dw}"
    );
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            b: 2,
            q: 7,
            h: 2,
            ch: 3,
            shapes: vec![[6, 5], [3, 3], [2, 1]],
            p: 3,
        },
        Case {
            b: 1,
            q: 30,
            h: 4,
            ch: 8,
            shapes: vec![[16, 12], [8, 6], [4, 3], [2, 2]],
            p: 4,
        },
        Case {
            b: 1,
            q: 4,
            h: 1,
            ch: 2,
            shapes: vec![[1, 1]],
            p: 2,
        },
    ]
}

#[test]
fn forward_matches_naive_within_1e_5() {
    let dev = Device::flex();
    for (k, c) in cases().iter().enumerate() {
        let (v, loc, w) = inputs(c, 100 + k as u64, &dev);
        let want = msda_naive(v.clone(), &c.shapes, loc.clone(), w.clone());
        assert_eq!(want.dims(), [c.b, c.q, c.h * c.ch]);
        for imp in [
            MsdaImpl::Host,
            MsdaImpl::Gather,
            MsdaImpl::GridSample,
            MsdaImpl::Chunked,
        ] {
            let got = msda_core(v.clone(), &c.shapes, loc.clone(), w.clone(), imp);
            let d = max_abs_diff(got, want.clone());
            assert!(d <= 1e-5, "case {k} {imp:?}: max abs diff {d}");
        }
    }
}

#[test]
fn points_far_outside_sample_zero_and_exact_pixel_centres_sample_the_pixel() {
    let dev = Device::flex();
    let shapes = vec![[2usize, 2usize]];
    let v = Tensor::<4>::from_data(
        TensorData::new(vec![1f32, 2.0, 3.0, 4.0], [1, 4, 1, 1]),
        &dev,
    );
    // (x, y): far outside; centre of pixel (1, 0) → value 2; centre of the map → mean 2.5.
    let loc = Tensor::<6>::from_data(
        TensorData::new(vec![5.0f32, 5.0, 0.75, 0.25, 0.5, 0.5], [1, 3, 1, 1, 1, 2]),
        &dev,
    );
    let w = Tensor::<5>::ones([1, 3, 1, 1, 1], &dev);
    for imp in [
        MsdaImpl::Host,
        MsdaImpl::Gather,
        MsdaImpl::GridSample,
        MsdaImpl::Chunked,
    ] {
        let out: Vec<f32> = msda_core(v.clone(), &shapes, loc.clone(), w.clone(), imp)
            .into_data()
            .try_to_vec()
            .unwrap();
        assert!(
            (out[0]).abs() < 1e-6 && (out[1] - 2.0).abs() < 1e-6 && (out[2] - 2.5).abs() < 1e-6,
            "{imp:?}: {out:?}"
        );
    }
}

/// Gradients of sum(out · r) w.r.t. value, locations and weights: gather vs grid_sample
/// (both autodiff), and the location gradient vs central finite differences of the naive loop.
#[test]
fn backward_agrees_between_implementations_and_with_finite_differences() {
    let dev = Device::flex().autodiff();
    let c = &cases()[0];
    let l = c.shapes.len();
    let mut rng = Rng::new(9);
    let r = rand_vec(&mut rng, c.b * c.q * c.h * c.ch, -1.0, 1.0);
    let r = Tensor::<3>::from_data(TensorData::new(r, [c.b, c.q, c.h * c.ch]), &dev);
    let grads = |imp: MsdaImpl| {
        let (v, loc, w) = inputs(c, 7, &dev);
        let (v, loc, w) = (v.require_grad(), loc.require_grad(), w.require_grad());
        let out = msda_core(v.clone(), &c.shapes, loc.clone(), w.clone(), imp);
        let g = (out * r.clone()).sum().backward();
        (
            v.grad(&g).unwrap(),
            loc.grad(&g).unwrap(),
            w.grad(&g).unwrap(),
        )
    };
    let (gv, gl, gw) = grads(MsdaImpl::Gather);
    for other in [MsdaImpl::GridSample, MsdaImpl::Host, MsdaImpl::Chunked] {
        let (sv, sl, sw) = grads(other);
        let (dv, dl, dw) = (
            max_abs_diff(gv.clone(), sv),
            max_abs_diff(gl.clone(), sl),
            max_abs_diff(gw.clone(), sw),
        );
        assert!(
            dv < 1e-5 && dl < 1e-4 && dw < 1e-5,
            "{other:?} vs gather: value {dv}, loc {dl}, weights {dw}"
        );
    }

    // Finite differences on a few location coordinates, in f64 on the naive loop.
    let host = Device::flex();
    let (v, loc, w) = inputs(c, 7, &host);
    let r_host: Vec<f32> = r.into_data().try_to_vec().unwrap();
    let objective = |loc: Tensor<6>| -> f64 {
        let out: Vec<f32> = msda_naive(v.clone(), &c.shapes, loc, w.clone())
            .into_data()
            .try_to_vec()
            .unwrap();
        out.iter()
            .zip(&r_host)
            .map(|(a, b)| f64::from(*a) * f64::from(*b))
            .sum()
    };
    let base: Vec<f32> = loc.clone().into_data().try_to_vec().unwrap();
    let gl: Vec<f32> = gl.into_data().try_to_vec().unwrap();
    let eps = 1e-3f32;
    let mut checked = 0;
    for i in (0..base.len()).step_by(7) {
        // Skip points within eps of a pixel-centre grid line, where bilinear is not smooth.
        let lvl = (i / 2 / c.p) % l;
        let dim = if i % 2 == 0 {
            c.shapes[lvl][1]
        } else {
            c.shapes[lvl][0]
        };
        let px = base[i] * dim as f32 - 0.5;
        if (px - px.round()).abs() < 2.0 * eps * dim as f32 {
            continue;
        }
        let at = |delta: f32| {
            let mut x = base.clone();
            x[i] += delta;
            objective(Tensor::from_data(
                TensorData::new(x, [c.b, c.q, c.h, l, c.p, 2]),
                &host,
            ))
        };
        let fd = (at(eps) - at(-eps)) / (2.0 * f64::from(eps));
        let an = f64::from(gl[i]);
        assert!(
            (fd - an).abs() < 2e-2 * (1.0 + an.abs()),
            "loc[{i}]: fd {fd} vs autodiff {an}"
        );
        checked += 1;
    }
    assert!(checked > 10, "only {checked} coordinates checked");
}

/// The chunked op with budgets that force one, two and all points per round: forward equal to
/// the naive loop, gradients (its own backward, which recomputes each chunk) equal to the
/// gather implementation's autodiff gradients.
#[test]
fn chunked_with_any_budget_matches_naive_forward_and_gather_backward() {
    let c = &cases()[1]; // 4 levels, 4 points
    let per_point = c.b * c.q * c.h * 4 * c.ch;
    let host = Device::flex();
    let (v, loc, w) = inputs(c, 21, &host);
    let want = msda_naive(v.clone(), &c.shapes, loc.clone(), w.clone());
    for budget in [1, 2 * per_point, usize::MAX] {
        let got = msda_chunked(v.clone(), &c.shapes, loc.clone(), w.clone(), budget);
        let d = max_abs_diff(got, want.clone());
        assert!(d <= 1e-5, "budget {budget}: forward max abs diff {d}");
    }

    let dev = Device::flex().autodiff();
    let r = rand_vec(&mut Rng::new(5), c.b * c.q * c.h * c.ch, -1.0, 1.0);
    let grads = |budget| chunked_or_gather_grads(c, 21, &r, &dev, budget);
    let want = grads(None);
    for budget in [1, 2 * per_point, usize::MAX] {
        assert_grads_within_1e_5(
            &want,
            grads(Some(budget)),
            &format!("budget {budget} vs gather"),
        );
    }
}

/// Only the inputs that require a gradient get one, and a detached input is a constant.
#[test]
fn chunked_backward_registers_only_the_inputs_that_require_grad() {
    let c = &cases()[0];
    let dev = Device::flex().autodiff();
    let (v, loc, w) = inputs(c, 3, &dev);
    let v = v.require_grad();
    let out = msda_chunked(v.clone(), &c.shapes, loc.clone(), w.clone(), 1);
    let g = out.sum().backward();
    assert!(v.grad(&g).is_some());
    assert!(loc.grad(&g).is_none() && w.grad(&g).is_none());
}

/// The chunked op on the wgpu device (CubeCL's kernels and, under autodiff, its own tracked
/// backward on the Cube backend) against the naive loop on Flex (forward) and gather's
/// autodiff on Flex (backward), with budgets that force one, two and all points per round.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
#[test]
fn chunked_on_the_wgpu_device_matches_flex_forward_and_backward() {
    let Some(gpu) = codetr_core::device::software_gpu().unwrap() else {
        return;
    };
    let host = Device::flex();
    for (k, c) in cases().iter().enumerate() {
        let (v, loc, w) = inputs(c, 300 + k as u64, &host);
        let want = msda_naive(v, &c.shapes, loc, w);
        let (v, loc, w) = inputs(c, 300 + k as u64, &gpu);
        let per_point = c.b * c.q * c.h * 4 * c.ch;
        for budget in [1, 2 * per_point, usize::MAX] {
            let got = msda_chunked(v.clone(), &c.shapes, loc.clone(), w.clone(), budget);
            assert_eq!(got.device(), gpu);
            let d = max_abs_diff(got, want.clone());
            assert!(
                d <= 1e-5,
                "case {k} budget {budget}: forward max abs diff {d}"
            );
        }
    }

    let c = &cases()[1];
    let per_point = c.b * c.q * c.h * 4 * c.ch;
    let r = rand_vec(&mut Rng::new(31), c.b * c.q * c.h * c.ch, -1.0, 1.0);
    let grads = |dev: &Device, budget| chunked_or_gather_grads(c, 33, &r, dev, budget);
    let want = grads(&host.autodiff(), None);
    for budget in [1, 2 * per_point, usize::MAX] {
        let got = grads(&gpu.clone().autodiff(), Some(budget));
        assert_grads_within_1e_5(&want, got, &format!("wgpu budget {budget} vs Flex gather"));
    }
}

/// The CubeCL kernels (`Host` on a GPU device) on the wgpu device: forward equal to the naive
/// loop on Flex, gradients equal to gather's autodiff on Flex, for every case (the one-pixel
/// level makes every sample's value gradient land on one row: the atomic adds contend);
/// points far outside every map sample zero and get zero gradients.
#[cfg(any(feature = "wgpu", feature = "vulkan"))]
#[test]
fn cube_kernels_on_the_wgpu_device_match_naive_forward_and_gather_backward() {
    use codetr_core::model::msda_chunked::msda_cube;
    let Some(gpu) = codetr_core::device::software_gpu().unwrap() else {
        return;
    };
    let host = Device::flex();
    for (k, c) in cases().iter().enumerate() {
        let (v, loc, w) = inputs(c, 400 + k as u64, &host);
        let want = msda_naive(v, &c.shapes, loc, w);
        let (v, loc, w) = inputs(c, 400 + k as u64, &gpu);
        let got = msda_cube(v.clone(), &c.shapes, loc.clone(), w.clone())
            .expect("the kernels run on the wgpu device");
        assert_eq!(got.device(), gpu);
        let d = max_abs_diff(got.clone(), want.clone());
        assert!(d <= 1e-5, "case {k}: forward max abs diff {d}");
        let via_core = msda_core(v, &c.shapes, loc, w, MsdaImpl::Host);
        assert_eq!(
            max_abs_diff(via_core, got),
            0.0,
            "case {k}: Host is the kernel"
        );

        let r = rand_vec(
            &mut Rng::new(41 + k as u64),
            c.b * c.q * c.h * c.ch,
            -1.0,
            1.0,
        );
        let want = chunked_or_gather_grads(c, 43, &r, &host.clone().autodiff(), None);
        let got = grads_of(c, 43, &r, &gpu.clone().autodiff(), |v, shapes, loc, w| {
            msda_cube(v, shapes, loc, w).expect("the tracked kernels run on the wgpu device")
        });
        assert_grads_within_1e_5(
            &want,
            got,
            &format!("case {k}: wgpu kernels vs Flex gather"),
        );
    }

    // No queries: an empty output, and a value gradient of zeros.
    let c = Case {
        q: 0,
        ..cases().remove(0)
    };
    let (v, loc, w) = inputs(&c, 5, &gpu.clone().autodiff());
    let v = v.require_grad();
    let out = msda_cube(v.clone(), &c.shapes, loc, w).unwrap();
    assert_eq!(out.dims(), [c.b, 0, c.h * c.ch]);
    let g = (out.sum() + v.clone().sum() * 0.0).backward();
    let gv = v.grad(&g).unwrap();
    assert_eq!(
        max_abs_diff(gv.clone(), gv.zeros_like()),
        0.0,
        "no queries: value gradient"
    );

    // Far outside (and at the float extremes): zero samples, zero gradients, nothing undefined.
    let c = &cases()[0];
    let (v, loc, w) = inputs(c, 7, &gpu.clone().autodiff());
    let n = loc.dims().iter().product::<usize>();
    let far: Vec<f32> = (0..n)
        .map(|i| [1e6, -1e6, 3.0e38, -3.0e38, 40.0, -7.5][i % 6])
        .collect();
    let loc = Tensor::<6>::from_data(TensorData::new(far, loc.dims()), &loc.device());
    let (v, loc, w) = (v.require_grad(), loc.require_grad(), w.require_grad());
    let out = msda_cube(v.clone(), &c.shapes, loc.clone(), w.clone()).unwrap();
    let g = out.clone().sum().backward();
    assert_eq!(
        max_abs_diff(out.clone(), out.zeros_like()),
        0.0,
        "far-away samples"
    );
    let zero = |t: Tensor<1>| max_abs_diff(t.clone(), t.zeros_like());
    assert_eq!(
        zero(v.grad(&g).unwrap().flatten(0, 3)),
        0.0,
        "value gradient"
    );
    assert_eq!(
        zero(loc.grad(&g).unwrap().flatten(0, 5)),
        0.0,
        "location gradient"
    );
    assert_eq!(
        zero(w.grad(&g).unwrap().flatten(0, 4)),
        0.0,
        "weight gradient"
    );
}
