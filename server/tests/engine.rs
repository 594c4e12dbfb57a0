//! The runner in-process: I/O-bound staging against `Session::run` on the committed micro
//! graphs (CPU provider), and its errors on misuse.

mod common;

use codetr_serve::config::{Provider, RuntimeConfig};
use codetr_serve::engine::{self, BatchOutput, ImageSizes, Infer, Runner};
use codetr_serve::staging::HostMemory;
use common::{fixtures, ort_library};

fn runner(model: &str, input_sizes: &[[u32; 2]], io_binding: bool) -> (Runner, Vec<[u32; 2]>) {
    let env = engine::environment(Some(&ort_library())).unwrap();
    let path = fixtures().join(model);
    let cfg = RuntimeConfig {
        io_binding,
        intra_threads: 1,
        ..RuntimeConfig::default()
    };
    let (session, provider, failures) = engine::open(env, &path, &cfg, &[1, 2], None).unwrap();
    assert_eq!((provider, failures.len()), (Provider::Cpu, 0));
    let info = engine::inspect(&session, &path, input_sizes).unwrap();
    let r = Runner::new(session, provider, &info, &cfg).unwrap();
    assert_eq!(r.io_binding(), io_binding);
    assert_eq!(r.host_memory(), HostMemory::Cpu);
    (r, info.input_sizes)
}

/// `n` images at `hw`: a pattern that differs with `seed` (not zeros, so a stale or
/// unwritten buffer changes the answer).
fn images(hw: [u32; 2], n: usize, seed: usize) -> Vec<u8> {
    let len = n * hw[0] as usize * hw[1] as usize * 3;
    (0..len)
        .map(|i| ((i * 31 + seed * 97 + (i / 7) * seed) % 253) as u8)
        .collect()
}

/// Sizes as the batcher gives them: originals other than the input, letterbox valid sizes
/// inside it.
fn sizes(hw: [u32; 2], n: usize, seed: u32) -> Vec<ImageSizes> {
    (0..n as u32)
        .map(|i| ImageSizes {
            orig: [300 + 10 * seed + i, 500 - 7 * seed - i],
            valid: [hw[0] - (seed + i) % 9, hw[1] - (seed * 3 + i) % 5],
        })
        .collect()
}

fn same(a: &BatchOutput, b: &BatchOutput) -> bool {
    a.k == b.k && a.labels == b.labels && a.scores == b.scores && a.boxes == b.boxes
}

/// The bound runner equals `Session::run` exactly, call after call. Its buffers are reused
/// per (batch, input size): a second batch at a shape, a smaller batch, another input size and
/// a return to the first shape each give the plain runner's answer for their own images,
/// never the previous call's. Each step's images and sizes change the answer (checked), so
/// a stale buffer could not pass.
#[test]
fn io_binding_equals_plain_runs_as_buffers_are_reused() {
    for (model, asked) in [
        ("micro.onnx", vec![]),
        ("micro-letterbox-dynamic.onnx", vec![[48, 80], [80, 48]]),
    ] {
        let (mut bound, hws) = runner(model, &asked, true);
        let (mut plain, _) = runner(model, &asked, false);
        let last = hws[hws.len() - 1];
        let steps = [
            (hws[0], 2, 1),
            (hws[0], 2, 2),
            (hws[0], 1, 3),
            (last, 2, 4),
            (hws[0], 2, 5),
        ];
        let mut prev: Option<BatchOutput> = None;
        for (hw, n, seed) in steps {
            let (px, sz) = (images(hw, n, seed), sizes(hw, n, seed as u32));
            let want = plain.run(hw, n, &px, &sz).unwrap();
            let got = bound.run(hw, n, &px, &sz).unwrap();
            assert!(
                same(&got, &want),
                "{model} {hw:?} n={n} seed={seed}: bound {:?} vs plain {:?}",
                &got.scores[..4],
                &want.scores[..4]
            );
            if let Some(p) = &prev {
                assert!(
                    !same(p, &want),
                    "{model} step {seed} repeats the previous answer"
                );
            }
            prev = Some(want);
        }
        // Unbound (the fallback after a binding fault), the runner runs plain and still agrees.
        assert!(bound.unbind() && !bound.io_binding() && !bound.unbind());
        let (px, sz) = (images(hws[0], 2, 6), sizes(hws[0], 2, 6));
        let want = plain.run(hws[0], 2, &px, &sz).unwrap();
        assert!(same(&bound.run(hws[0], 2, &px, &sz).unwrap(), &want));
    }
}

/// Misuse is an error, not a panic: a run at a shape whose input was never written, a batch
/// whose pixels do not fill the input, and sizes that do not match the batch.
#[test]
fn runs_without_their_input_are_errors() {
    for bind in [true, false] {
        let (mut r, hws) = runner("micro.onnx", &[], bind);
        let hw = hws[0];
        let e = r.infer(hw, 2, &sizes(hw, 2, 0)).unwrap_err();
        assert!(e.to_string().contains("without its input written"), "{e}");
        let e = r
            .run(hw, 2, &images(hw, 1, 0), &sizes(hw, 2, 0))
            .unwrap_err();
        assert!(e.to_string().contains("pixel bytes"), "{e}");
        r.input(hw, 2).unwrap().fill(0);
        let e = r.infer(hw, 2, &sizes(hw, 1, 0)).unwrap_err();
        assert!(e.to_string().contains("1 image sizes"), "{e}");
        // And the runner still works after each.
        r.run(hw, 2, &images(hw, 2, 0), &sizes(hw, 2, 0)).unwrap();
    }
}
