//! ChannelMapper neck: a 1×1 conv + GroupNorm per backbone map to `d_model`, plus extra
//! levels made by 3×3 stride-2 conv + GroupNorm (the first on the backbone's last map).

use crate::model::autocast as ac;
use burn::module::Module;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::{GroupNorm, GroupNormConfig, PaddingConfig2d};
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// Neck settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NeckConfig {
    /// Extra stride-2 levels after the backbone's maps (Co-DINO: 1).
    pub extra_levels: usize,
    /// GroupNorm groups (32).
    pub gn_groups: usize,
    /// Bias on the convs. The official ChannelMapper has none (a norm follows); HF
    /// transformers' Deformable DETR has one, so its weights need it.
    #[serde(default)]
    pub conv_bias: bool,
}

impl Default for NeckConfig {
    fn default() -> Self {
        Self {
            extra_levels: 1,
            gn_groups: 32,
            conv_bias: false,
        }
    }
}

impl NeckConfig {
    /// `in_channels`: channels of the backbone maps used; `d_model`: output channels.
    pub fn init(
        &self,
        in_channels: &[usize],
        d_model: usize,
        device: &Device,
    ) -> Result<ChannelMapper> {
        if self.gn_groups == 0 || !d_model.is_multiple_of(self.gn_groups) {
            return Err(Error::InvalidArgument {
                what: "neck config",
                message: format!(
                    "d_model {d_model} is not divisible by gn_groups {}",
                    self.gn_groups
                ),
            });
        }
        let Some(&last) = in_channels.last() else {
            return Err(Error::InvalidArgument {
                what: "neck config",
                message: "no backbone levels".into(),
            });
        };
        let gn = || GroupNormConfig::new(self.gn_groups, d_model).init(device);
        let convs = in_channels
            .iter()
            .map(|&c| ConvGn {
                conv: Conv2dConfig::new([c, d_model], [1, 1])
                    .with_bias(self.conv_bias)
                    .init(device),
                gn: gn(),
            })
            .collect();
        let extra = (0..self.extra_levels)
            .map(|i| ConvGn {
                conv: Conv2dConfig::new([if i == 0 { last } else { d_model }, d_model], [3, 3])
                    .with_stride([2, 2])
                    .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                    .with_bias(self.conv_bias)
                    .init(device),
                gn: gn(),
            })
            .collect();
        Ok(ChannelMapper { convs, extra })
    }
}

/// A conv followed by GroupNorm.
#[derive(Module, Debug)]
pub struct ConvGn {
    pub conv: Conv2d,
    pub gn: GroupNorm,
}

impl ConvGn {
    /// `[B, Cin, H, W]` → `[B, d, H', W']`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        self.gn.forward(ac::conv2d(&self.conv, x))
    }
}

impl ConvGn {
    /// ONNX emitter of [`ConvGn::forward`].
    pub fn emit(&self, g: &mut crate::onnx::GraphBuilder, x: &str) -> Result<String> {
        let c = crate::onnx::emit::conv2d(g, &self.conv, x, None)?;
        crate::onnx::emit::group_norm(g, &self.gn, &c)
    }
}

#[derive(Module, Debug)]
pub struct ChannelMapper {
    /// One per backbone map.
    pub convs: Vec<ConvGn>,
    /// Extra levels; the first takes the backbone's last map, the next ones the previous extra.
    pub extra: Vec<ConvGn>,
}

impl ChannelMapper {
    /// `feats`: backbone maps `[B, C_i, H_i, W_i]` → `L` maps `[B, d, H_l, W_l]`.
    pub fn forward(&self, feats: Vec<Tensor<4>>) -> Vec<Tensor<4>> {
        let last = feats.last().cloned();
        let mut outs: Vec<Tensor<4>> = feats
            .into_iter()
            .zip(&self.convs)
            .map(|(f, m)| m.forward(f))
            .collect();
        let mut prev = last;
        for (i, m) in self.extra.iter().enumerate() {
            let input = if i == 0 {
                prev.take()
            } else {
                outs.last().cloned()
            };
            if let Some(x) = input {
                outs.push(m.forward(x));
            }
        }
        outs
    }

    /// ONNX emitter of [`ChannelMapper::forward`].
    pub fn emit(&self, g: &mut crate::onnx::GraphBuilder, feats: &[String]) -> Result<Vec<String>> {
        let mut outs = Vec::with_capacity(feats.len() + self.extra.len());
        for (f, m) in feats.iter().zip(&self.convs) {
            outs.push(m.emit(g, f)?);
        }
        for (i, m) in self.extra.iter().enumerate() {
            let input = if i == 0 { feats.last() } else { outs.last() }.cloned();
            if let Some(x) = input {
                outs.push(m.emit(g, &x)?);
            }
        }
        Ok(outs)
    }
}
