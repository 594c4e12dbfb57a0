//! Top-k in the order the exported graph's ONNX `TopK` gives (and PyTorch's topk on CPU): by
//! value, descending, and among equal values the lower index first, both for which of a tied
//! group make the cut and for their order.
//!
//! Why it matters: Burn's `topk_with_indices` orders exact ties arbitrarily, and exact ties occur
//! where it is used: every encoder token whose proposal is invalid gets the same class logit (its
//! memory is zeroed, DINO's rule), so a block of equal scores can straddle the query selection's
//! cut, and which of them become queries, at which query slot (each slot has its own learned
//! content), changes the detections downstream; saturated scores tie in the final top-k the same
//! way (a graph and the Burn model then returned the same scores with the boxes of tied
//! detections swapped). Values that differ by less than the implementations' float error are
//! not ties and can still be ordered differently: on full-size Co-DINO with random weights, where
//! all 900 selected proposals score alike, that alone moves Burn's scores 1e-3 from ONNX
//! Runtime's (see `bench/results/random_weight_check.md`).
//!
//! All on the device (no host read): the set from the k-th value (everything above it, then the
//! lowest-index equals to fill k), compacted in index order, then each element's rank counted
//! pairwise (`[B, k, k]`).

use burn::tensor::{IndexingUpdateOp, Int, Tensor};

/// `x`: `[B, N]` → the top `min(k, N)` values `[B, k]` and their indices `[B, k]`, ordered as
/// ONNX `TopK` (largest first, ties by lower index). `k` ≥ 1.
pub fn topk_ties_by_index(x: Tensor<2>, k: usize) -> (Tensor<2>, Tensor<2, Int>) {
    let device = x.device();
    let [b, n] = x.dims();
    let k = k.clamp(1, n.max(1));
    // The cut: the k-th largest value (Burn's values are exact; only its indices are not).
    let (values, _) = x.clone().topk_with_indices(k, 1);
    let cut = values.narrow(1, k - 1, 1).expand([b, n]);
    let above = x.clone().greater(cut.clone()).int();
    let at = x.clone().equal(cut).int();
    // Of the values equal to the cut, the lowest indices fill what `above` leaves.
    let room = above
        .clone()
        .sum_dim(1)
        .neg()
        .add_scalar(k as i64)
        .expand([b, n]);
    let taken = at.clone() * at.cumsum(1).lower_equal(room).int();
    let selected = above + taken; // 0/1, k ones per row
    // Compact the selection in index order: element i goes to slot (#selected before i).
    let slot = selected.clone().cumsum(1).sub_scalar(1).clamp_min(0);
    let ids = Tensor::<1, Int>::arange(0..n as i64, &device)
        .reshape([1, n])
        .expand([b, n]);
    let compact = Tensor::<2, Int>::zeros([b, k], &device).scatter(
        1,
        slot,
        ids * selected,
        IndexingUpdateOp::Add,
    ); // [B, k], ascending indices
    let v = x.clone().gather(1, compact.clone());
    // Rank of each: how many are larger, plus how many equal ones come earlier (lower index).
    let vi = v.clone().reshape([b, k, 1]).expand([b, k, k]);
    let vj = v.reshape([b, 1, k]).expand([b, k, k]);
    let earlier = Tensor::<1, Int>::arange(0..k as i64, &device)
        .reshape([1, 1, k])
        .lower(
            Tensor::<1, Int>::arange(0..k as i64, &device)
                .reshape([1, k, 1])
                .expand([1, k, k]),
        )
        .int()
        .expand([b, k, k]);
    let rank = (vj.clone().greater(vi.clone()).int() + vj.equal(vi).int() * earlier)
        .sum_dim(2)
        .reshape([b, k]);
    let order =
        Tensor::<2, Int>::zeros([b, k], &device).scatter(1, rank, compact, IndexingUpdateOp::Add);
    (x.gather(1, order.clone()), order)
}

#[cfg(test)]
mod tests {
    use super::*;
    use burn::tensor::{Device, TensorData};

    /// The reference: a stable sort by value, descending.
    fn reference(v: &[f32], n: usize, k: usize) -> Vec<i64> {
        v.chunks(n)
            .flat_map(|row| {
                let mut order: Vec<usize> = (0..n).collect();
                order.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
                order.into_iter().take(k).map(|i| i as i64)
            })
            .collect()
    }

    #[test]
    fn ties_go_to_the_lower_index_in_the_set_and_in_the_order() {
        let dev = Device::flex();
        // Row 0: a block of equal values straddling the cut, and ties inside the top; row 1:
        // all equal; row 2: distinct.
        let n = 2000;
        let mut v = Vec::with_capacity(3 * n);
        v.extend((0..n).map(|i| {
            if i % 3 == 0 {
                0.5
            } else {
                (i % 97) as f32 * 1e-3 + 0.6 * ((i % 5 == 1) as u8 as f32)
            }
        }));
        v.extend(std::iter::repeat_n(-4.6f32, n));
        v.extend((0..n).map(|i| ((i * 7919) % n) as f32));
        for k in [1, 7, 300, 900, n] {
            let x = Tensor::<2>::from_data(TensorData::new(v.clone(), [3, n]), &dev);
            let (vals, idx) = topk_ties_by_index(x, k);
            let idx: Vec<i64> = idx.into_data().convert::<i64>().try_to_vec().unwrap();
            assert_eq!(idx, reference(&v, n, k), "k {k}");
            let vals: Vec<f32> = vals.into_data().try_to_vec().unwrap();
            let want: Vec<f32> = idx
                .iter()
                .enumerate()
                .map(|(j, &i)| v[(j / k) * n + i as usize])
                .collect();
            assert_eq!(vals, want);
        }
    }
}
