//! Row lookups, `rows[index]`, and their scatter-add, lowered per device so that the backward
//! stays parallel on a GPU.
//!
//! Why: Burn's `select` has `select_assign` as its backward, and CubeCL (CUDA, wgpu) runs that
//! as one thread per column looping over every index: for MSDA's corner rows (millions of
//! indices, 32 channels) that is 32 threads doing all the work. On Mesa's lavapipe it is also
//! wrong: 200,000 indices into a `[680, 64]` gradient gave wrong sums in every element (a K = 2
//! step's RoIAlign gradient was off by 80 %; `gather` below is right there). `gather` with the
//! index broadcast over the columns scatters back with one thread per element, atomically where
//! the device has float atomics (CUDA, Vulkan's SPIR-V on NVIDIA). Flex keeps `select`: its
//! backward is a host loop, and a broadcast index would be materialised as `M × C` int64 there.

use burn::tensor::{IndexingUpdateOp, Int, Tensor};

/// `rows`: `[N, C]`; `index`: `[M]` in `0..N` → `[M, C]`, row `m` = `rows[index[m]]`.
pub fn gather_rows(rows: Tensor<2>, index: Tensor<1, Int>) -> Tensor<2> {
    if crate::device::is_flex(&rows.device()) {
        return rows.select(0, index);
    }
    let [m] = index.dims();
    let c = rows.dims()[1];
    rows.gather(0, index.reshape([m, 1]).expand([m, c]))
}

/// `target`: `[N, C]`; `index`: `[M]` in `0..N`; `values`: `[M, C]` → `target` with
/// `values[m]` added to row `index[m]` (repeated indices add up).
pub fn scatter_add_rows(target: Tensor<2>, index: Tensor<1, Int>, values: Tensor<2>) -> Tensor<2> {
    if crate::device::is_flex(&target.device()) {
        return target.select_assign(0, index, values, IndexingUpdateOp::Add);
    }
    let [m] = index.dims();
    let c = target.dims()[1];
    target.scatter(
        0,
        index.reshape([m, 1]).expand([m, c]),
        values,
        IndexingUpdateOp::Add,
    )
}

#[cfg(test)]
mod tests {
    use burn::tensor::{Device, Int, Tensor, TensorData};
    use codetr_data::rng::Rng;

    /// Both functions, and the backward of `gather_rows`, against host loops on Flex and on
    /// the software GPU (with the `wgpu` feature), at 200,000 indices into 680 rows of 64: the
    /// size at which `select_assign` summed wrong on lavapipe.
    #[test]
    fn row_gather_and_scatter_add_match_host_loops_on_every_device() {
        let (n, c, m) = (680usize, 64usize, 200_000usize);
        let mut r = Rng::new(3);
        let ids: Vec<i64> = (0..m).map(|_| r.below(n) as i64).collect();
        let rows: Vec<f32> = (0..n * c).map(|_| r.uniform(-1.0, 1.0)).collect();
        let w: Vec<f32> = (0..m).map(|_| r.uniform(0.0, 1.0)).collect();
        // d/d rows of sum_m w[m] · rows[ids[m]], per element: the sum of w over its row's hits.
        let mut want = vec![0f64; n];
        for (k, &i) in ids.iter().enumerate() {
            want[i as usize] += f64::from(w[k]);
        }
        let mut devices = vec![Device::flex()];
        devices.extend(crate::device::software_gpu().unwrap());
        for dev in devices {
            let ad = dev.clone().autodiff();
            let x =
                Tensor::<2>::from_data(TensorData::new(rows.clone(), [n, c]), &ad).require_grad();
            let idx = Tensor::<1, Int>::from_data(TensorData::new(ids.clone(), [m]), &ad);
            let wt = Tensor::<2>::from_data(TensorData::new(w.clone(), [m, 1]), &ad);
            let got = super::gather_rows(x.clone(), idx.clone());
            let fwd: Vec<f32> = got.clone().into_data().try_to_vec::<f32>().unwrap();
            for (k, &i) in ids.iter().enumerate().step_by(97) {
                let i = i as usize;
                assert_eq!(
                    fwd[k * c..(k + 1) * c],
                    rows[i * c..(i + 1) * c],
                    "{dev:?} row {k}"
                );
            }
            let g = (got * wt).sum().backward();
            let grad: Vec<f32> = x.grad(&g).unwrap().into_data().try_to_vec::<f32>().unwrap();
            let values =
                Tensor::<2>::from_data(TensorData::new(w.clone(), [m, 1]), &dev).expand([m, c]);
            let idx = Tensor::<1, Int>::from_data(TensorData::new(ids.clone(), [m]), &dev);
            let added = super::scatter_add_rows(Tensor::zeros([n, c], &dev), idx, values);
            let added: Vec<f32> = added.into_data().try_to_vec::<f32>().unwrap();
            for (what, v) in [
                ("gather_rows backward", &grad),
                ("scatter_add_rows", &added),
            ] {
                let err = v
                    .iter()
                    .enumerate()
                    .map(|(e, &x)| (f64::from(x) - want[e / c]).abs() / want[e / c].max(1.0))
                    .fold(0f64, f64::max);
                assert!(err < 1e-4, "{dev:?} {what}: relative error {err:.2e}");
            }
        }
    }
}
