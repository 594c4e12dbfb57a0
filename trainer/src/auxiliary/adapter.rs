//! Multi-scale adapter (paper §3.2): the encoder memory, reshaped back into its L maps, plus
//! one more level by a 3×3 stride-2 conv + GroupNorm on the coarsest — the aux heads' pyramid.

use burn::module::{Module, Param};
use burn::tensor::{Device, Tensor};

use crate::error::Result;
use codetr_core::model::neck::{ConvGn, NeckConfig};

#[derive(Module, Debug)]
pub struct MultiScaleAdapter {
    /// `d → d`, 3×3 stride 2 with bias (the official `nn.Conv2d`), + GN(32).
    pub downsample: ConvGn,
}

impl MultiScaleAdapter {
    pub fn new(d: usize, device: &Device) -> Result<Self> {
        // The neck's extra-level block is this conv + GN.
        let neck = NeckConfig {
            extra_levels: 1,
            gn_groups: 32,
            conv_bias: false,
        }
        .init(&[d], d, device)?;
        let downsample =
            neck.extra
                .into_iter()
                .next()
                .ok_or_else(|| crate::Error::InvalidArgument {
                    what: "adapter",
                    message: "no extra level built".into(),
                })?;
        // The official adapter's conv has a bias, so ours holds one for imported weights. It
        // starts at zero and draws nothing from the seed: a fresh run is the network (and the
        // random stream) it was before the bias existed, and heads saved without it load with
        // a zero bias (`TrainHeads::load_saved`).
        let mut downsample = downsample;
        downsample.conv.bias = Some(Param::from_tensor(Tensor::zeros([d], device)));
        Ok(Self { downsample })
    }

    /// `memory`: `[B, S, d]` over `shapes` → `L + 1` maps `[B, d, h, w]`.
    pub fn forward(&self, memory: Tensor<3>, shapes: &[[usize; 2]]) -> Vec<Tensor<4>> {
        let [b, _, d] = memory.dims();
        let mut maps = Vec::with_capacity(shapes.len() + 1);
        let mut start = 0;
        for &[h, w] in shapes {
            let m = memory
                .clone()
                .narrow(1, start, h * w)
                .swap_dims(1, 2)
                .reshape([b, d, h, w]);
            maps.push(m);
            start += h * w;
        }
        if let Some(last) = maps.last().cloned() {
            maps.push(self.downsample.forward(last));
        }
        maps
    }
}
