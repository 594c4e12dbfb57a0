//! The backbone: a ResNet or a Swin Transformer ([`super::swin`]), chosen by the config's
//! `[backbone]` table (`type = "swin"`; a table without `type` is a ResNet, as every config
//! written before Swin).
//!
//! ResNet-18/34/50 with frozen BatchNorm, returning C2..C5 (torchvision v1.5 layout: the
//! stride of a Bottleneck sits on its 3×3 conv), so torchvision weights map key for key.

use crate::model::autocast as ac;
use burn::module::{Module, Param};
use burn::nn::PaddingConfig2d;
use burn::nn::conv::{Conv2d, Conv2dConfig};
use burn::nn::pool::{MaxPool2d, MaxPool2dConfig};
use burn::tensor::activation::relu;
use burn::tensor::{Device, Tensor};
use serde::{Deserialize, Serialize};

use super::swin::{SwinConfig, SwinTransformer};
use crate::error::{Error, Result};

/// Which backbone, with its settings.
#[derive(Debug, Clone, PartialEq)]
pub enum BackboneConfig {
    ResNet(ResNetConfig),
    Swin(SwinConfig),
}

impl Serialize for BackboneConfig {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            // Untagged, as before Swin existed: old and new ResNet configs read the same.
            BackboneConfig::ResNet(c) => c.serialize(s),
            // SwinConfig carries its own `type = "swin"`.
            BackboneConfig::Swin(c) => c.serialize(s),
        }
    }
}

impl<'de> Deserialize<'de> for BackboneConfig {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        // Through a TOML value (it reads from JSON headers too): `type` picks the struct,
        // whose own `deny_unknown_fields` then names any stray key.
        let mut v = toml::Value::deserialize(d)?;
        let kind = match v.get("type") {
            None => "resnet".to_string(),
            Some(toml::Value::String(k)) => k.clone(),
            Some(other) => {
                return Err(D::Error::custom(format!(
                    "backbone `type` must be a string, got {other}"
                )));
            }
        };
        match kind.as_str() {
            "resnet" => {
                if let Some(t) = v.as_table_mut() {
                    t.remove("type");
                }
                v.try_into().map(BackboneConfig::ResNet)
            }
            "swin" => v.try_into().map(BackboneConfig::Swin),
            other => {
                return Err(D::Error::custom(format!(
                    "unknown backbone type {other:?} (known: resnet, swin)"
                )));
            }
        }
        .map_err(|e: toml::de::Error| D::Error::custom(e.message()))
    }
}

impl BackboneConfig {
    /// Which of the four stages' maps are returned, as indices 0..=3.
    pub fn out_indices(&self) -> &[usize] {
        match self {
            BackboneConfig::ResNet(c) => &c.out_indices,
            BackboneConfig::Swin(c) => &c.out_indices,
        }
    }

    /// Channels of the returned maps, in order.
    pub fn out_channels(&self) -> Vec<usize> {
        let c = match self {
            BackboneConfig::ResNet(c) => c.stage_channels(),
            BackboneConfig::Swin(c) => c.stage_channels(),
        };
        self.out_indices().iter().map(|&i| c[i]).collect()
    }

    /// Strides of the returned maps, in order (4, 8, 16, 32 for stages 0..=3, both kinds).
    pub fn out_strides(&self) -> Vec<usize> {
        self.out_indices().iter().map(|&i| 4 << i).collect()
    }

    pub fn validate(&self) -> Result<()> {
        match self {
            BackboneConfig::ResNet(c) => c.validate(),
            BackboneConfig::Swin(c) => c.validate(),
        }
    }

    /// The ResNet settings, when the backbone is a ResNet.
    pub fn resnet(&self) -> Option<&ResNetConfig> {
        match self {
            BackboneConfig::ResNet(c) => Some(c),
            BackboneConfig::Swin(_) => None,
        }
    }

    /// The ResNet settings to edit, when the backbone is a ResNet.
    pub fn resnet_mut(&mut self) -> Option<&mut ResNetConfig> {
        match self {
            BackboneConfig::ResNet(c) => Some(c),
            BackboneConfig::Swin(_) => None,
        }
    }

    /// Short description for logs, e.g. `ResNet-50 (width 64)` or `Swin (C=192, [2, 2, 18, 2])`.
    pub fn describe(&self) -> String {
        match self {
            BackboneConfig::ResNet(c) => format!("ResNet-{} (width {})", c.depth, c.base_width),
            BackboneConfig::Swin(c) => format!(
                "Swin (C={}, depths {:?}, window {})",
                c.embed_dims, c.depths, c.window_size
            ),
        }
    }

    pub fn init(&self, device: &Device) -> Result<Backbone> {
        Ok(match self {
            BackboneConfig::ResNet(c) => Backbone::ResNet(c.init(device)?),
            BackboneConfig::Swin(c) => Backbone::Swin(c.init(device)?),
        })
    }
}

/// The backbone module. Its parameter paths are the variant's own (`backbone.conv1.weight`,
/// `backbone.stages.0…`): the hand-written [`Module`] below adds no segment for the variant,
/// so checkpoints written before Swin existed load unchanged.
#[derive(Debug, Clone)]
#[allow(clippy::large_enum_variant)] // one per detector, never in a collection
pub enum Backbone {
    ResNet(ResNet),
    Swin(SwinTransformer),
}

impl Backbone {
    /// `x`: normalised images `[B, 3, H, W]` → the selected maps, strides 4·2^i.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        match self {
            Backbone::ResNet(m) => m.forward(x),
            Backbone::Swin(m) => m.forward(x),
        }
    }

    /// ONNX emitter of [`Backbone::forward`]. `size`: the fixed input `[h, w]`, `None` for a
    /// graph of dynamic size.
    pub fn emit(
        &self,
        g: &mut crate::onnx::GraphBuilder,
        x: &str,
        size: Option<[usize; 2]>,
    ) -> Result<Vec<String>> {
        match self {
            Backbone::ResNet(m) => m.emit(g, x),
            Backbone::Swin(m) => m.emit(g, x, size),
        }
    }

    /// The ResNet, when the backbone is one.
    pub fn as_resnet(&self) -> Option<&ResNet> {
        match self {
            Backbone::ResNet(m) => Some(m),
            Backbone::Swin(_) => None,
        }
    }

    /// Loads torchvision-format ResNet weights ([`ResNet::load_torchvision`]); a Swin
    /// backbone refuses them.
    pub fn load_torchvision(self, path: &std::path::Path) -> Result<(Self, WeightsReport)> {
        match self {
            Backbone::ResNet(m) => {
                let (m, report) = m.load_torchvision(path)?;
                Ok((Backbone::ResNet(m), report))
            }
            Backbone::Swin(_) => Err(Error::Checkpoint {
                path: path.to_path_buf(),
                message: "torchvision ResNet weights do not fit a Swin backbone (start from an \
                          official Co-DINO Swin checkpoint with `--checkpoint` instead)"
                    .into(),
            }),
        }
    }
}

/// Variant-transparent, like burn's own `Option<M>`.
impl Module for Backbone {
    fn collect_devices(&self, devices: Vec<Device>) -> Vec<Device> {
        match self {
            Backbone::ResNet(m) => m.collect_devices(devices),
            Backbone::Swin(m) => m.collect_devices(devices),
        }
    }

    fn fork(self, device: &Device) -> Self {
        match self {
            Backbone::ResNet(m) => Backbone::ResNet(m.fork(device)),
            Backbone::Swin(m) => Backbone::Swin(m.fork(device)),
        }
    }

    fn to_device(self, device: &Device) -> Self {
        match self {
            Backbone::ResNet(m) => Backbone::ResNet(m.to_device(device)),
            Backbone::Swin(m) => Backbone::Swin(m.to_device(device)),
        }
    }

    fn train(self) -> Self {
        match self {
            Backbone::ResNet(m) => Backbone::ResNet(m.train()),
            Backbone::Swin(m) => Backbone::Swin(m.train()),
        }
    }

    fn valid(&self) -> Self {
        match self {
            Backbone::ResNet(m) => Backbone::ResNet(m.valid()),
            Backbone::Swin(m) => Backbone::Swin(m.valid()),
        }
    }

    fn materialize(self) -> Self {
        match self {
            Backbone::ResNet(m) => Backbone::ResNet(m.materialize()),
            Backbone::Swin(m) => Backbone::Swin(m.materialize()),
        }
    }

    fn visit<V: burn::module::ModuleVisitor>(&self, visitor: &mut V) {
        match self {
            Backbone::ResNet(m) => m.visit(visitor),
            Backbone::Swin(m) => m.visit(visitor),
        }
    }

    fn map<M: burn::module::ModuleMapper>(self, mapper: &mut M) -> Self {
        match self {
            Backbone::ResNet(m) => Backbone::ResNet(m.map(mapper)),
            Backbone::Swin(m) => Backbone::Swin(m.map(mapper)),
        }
    }
}

impl burn::module::ModuleDisplayDefault for Backbone {
    fn content(&self, content: burn::module::Content) -> Option<burn::module::Content> {
        match self {
            Backbone::ResNet(m) => content.add_single(m).optional(),
            Backbone::Swin(m) => content.add_single(m).optional(),
        }
    }
}

impl burn::module::ModuleDisplay for Backbone {}

/// ResNet settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResNetConfig {
    /// 18, 34 or 50.
    pub depth: usize,
    /// Stages whose parameters never train: 0 = none, 1 = stem + layer1 (Co-DINO), … up to 4.
    pub frozen_stages: usize,
    /// Which of C2..C5 to return, as indices 0..=3 (Co-DINO 5-scale: [0,1,2,3]; 4-scale: [1,2,3]).
    pub out_indices: Vec<usize>,
    /// Channel width multiplier of the stem (64 in torchvision).
    pub base_width: usize,
    /// `frozen_bn` (Co-DINO, for pretrained weights) or `group_norm` (trainable GroupNorm,
    /// for training from scratch: a random-init backbone with frozen identity BN statistics
    /// is effectively unnormalised).
    #[serde(default)]
    pub norm: BackboneNorm,
}

/// The backbone's normalisation layers.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackboneNorm {
    #[default]
    FrozenBn,
    GroupNorm,
}

impl BackboneNorm {
    /// GroupNorm groups for `c` channels: at most 32, at least 4 channels per group.
    pub fn groups(self, c: usize) -> usize {
        match self {
            BackboneNorm::FrozenBn => 0,
            BackboneNorm::GroupNorm => (c / 4).clamp(1, 32),
        }
    }
}

impl ResNetConfig {
    pub fn resnet(depth: usize) -> Self {
        Self {
            depth,
            frozen_stages: 1,
            out_indices: vec![1, 2, 3],
            base_width: 64,
            norm: BackboneNorm::FrozenBn,
        }
    }

    fn blocks(&self) -> Result<([usize; 4], bool)> {
        match self.depth {
            18 => Ok(([2, 2, 2, 2], false)),
            34 => Ok(([3, 4, 6, 3], false)),
            50 => Ok(([3, 4, 6, 3], true)),
            d => Err(Error::InvalidArgument {
                what: "backbone depth",
                message: format!("{d} (expected 18, 34 or 50)"),
            }),
        }
    }

    /// Channels of C2..C5.
    pub fn stage_channels(&self) -> [usize; 4] {
        let bottleneck = self.depth >= 50;
        let e = if bottleneck { 4 } else { 1 };
        let w = self.base_width;
        [w * e, 2 * w * e, 4 * w * e, 8 * w * e]
    }

    /// Channels of the returned maps, in order.
    pub fn out_channels(&self) -> Vec<usize> {
        let c = self.stage_channels();
        self.out_indices.iter().map(|&i| c[i]).collect()
    }

    /// Strides of the returned maps, in order.
    pub fn out_strides(&self) -> Vec<usize> {
        self.out_indices.iter().map(|&i| 4 << i).collect()
    }

    pub fn validate(&self) -> Result<()> {
        self.blocks()?;
        let bad = |m: String| Error::InvalidArgument {
            what: "backbone config",
            message: m,
        };
        if self.frozen_stages > 4 {
            return Err(bad(format!("frozen_stages {} > 4", self.frozen_stages)));
        }
        if self.out_indices.is_empty()
            || self.out_indices.iter().any(|&i| i > 3)
            || self.out_indices.windows(2).any(|w| w[0] >= w[1])
        {
            return Err(bad(format!(
                "out_indices must be increasing values in 0..=3, got {:?}",
                self.out_indices
            )));
        }
        if self.base_width == 0 {
            return Err(bad("base_width must be > 0".into()));
        }
        Ok(())
    }

    pub fn init(&self, device: &Device) -> Result<ResNet> {
        self.validate()?;
        let (counts, bottleneck) = self.blocks()?;
        let w = self.base_width;
        let stem_frozen = self.frozen_stages >= 1;
        let mut in_ch = w;
        let mut layers = Vec::with_capacity(4);
        for (stage, &n) in counts.iter().enumerate() {
            let planes = w << stage;
            let frozen = self.frozen_stages > stage;
            let mut blocks = Vec::with_capacity(n);
            for i in 0..n {
                let stride = if i == 0 && stage > 0 { 2 } else { 1 };
                let block =
                    Block::new(in_ch, planes, stride, bottleneck, self.norm, device).frozen(frozen);
                in_ch = block.out_channels;
                blocks.push(block);
            }
            layers.push(blocks);
        }
        let mut layers = layers.into_iter();
        let mut next = || layers.next().unwrap_or_default();
        Ok(ResNet {
            conv1: freeze(conv(3, w, 7, 2, device), stem_frozen),
            bn1: freeze_norm(
                FrozenBatchNorm::with_groups(w, self.norm.groups(w), device),
                stem_frozen,
            ),
            maxpool: MaxPool2dConfig::new([3, 3])
                .with_strides([2, 2])
                .with_padding(PaddingConfig2d::Explicit(1, 1, 1, 1))
                .init(),
            layer1: next(),
            layer2: next(),
            layer3: next(),
            layer4: next(),
            out_indices: self.out_indices.clone(),
        })
    }
}

fn conv(cin: usize, cout: usize, k: usize, stride: usize, device: &Device) -> Conv2d {
    let pad = k / 2;
    Conv2dConfig::new([cin, cout], [k, k])
        .with_stride([stride, stride])
        .with_padding(PaddingConfig2d::Explicit(pad, pad, pad, pad))
        .with_bias(false)
        .init(device)
}

fn freeze(c: Conv2d, frozen: bool) -> Conv2d {
    if frozen { c.no_grad() } else { c }
}

/// BatchNorm with fixed statistics and affine parameters (never updated, never trained):
/// `y = (x − mean) / sqrt(var + eps) · weight + bias`.
#[derive(Module, Debug)]
pub struct FrozenBatchNorm {
    /// `[C]`
    pub weight: Param<Tensor<1>>,
    /// `[C]`
    pub bias: Param<Tensor<1>>,
    /// `[C]`
    pub running_mean: Param<Tensor<1>>,
    /// `[C]`
    pub running_var: Param<Tensor<1>>,
    /// 0: frozen BatchNorm (running statistics). > 0: GroupNorm with this many groups and
    /// trainable `weight`/`bias` (the running statistics are then unused).
    pub groups: usize,
}

impl FrozenBatchNorm {
    /// torchvision's epsilon.
    pub const EPS: f64 = 1e-5;

    pub fn new(channels: usize, device: &Device) -> Self {
        Self::with_groups(channels, 0, device)
    }

    /// `groups == 0`: frozen BN; otherwise a trainable GroupNorm.
    pub fn with_groups(channels: usize, groups: usize, device: &Device) -> Self {
        let fixed = |t: Tensor<1>| Param::from_tensor(t).set_require_grad(false);
        let affine = |t: Tensor<1>| Param::from_tensor(t).set_require_grad(groups > 0);
        Self {
            weight: affine(Tensor::ones([channels], device)),
            bias: affine(Tensor::zeros([channels], device)),
            running_mean: fixed(Tensor::zeros([channels], device)),
            running_var: fixed(Tensor::ones([channels], device)),
            groups,
        }
    }

    /// Per-channel `(scale, shift)` with `y = x·scale + shift` — also what the exporter folds
    /// into the preceding conv.
    pub fn scale_shift(&self) -> (Tensor<1>, Tensor<1>) {
        let scale = self.weight.val() / (self.running_var.val() + Self::EPS).sqrt();
        let shift = self.bias.val() - self.running_mean.val() * scale.clone();
        (scale, shift)
    }

    /// `x`: `[B, C, H, W]` → same shape.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        if self.groups > 0 {
            let [b, c, h, w] = x.dims();
            let g = self.groups;
            let xg = x.reshape([b, g, c / g * h * w]);
            let centred = xg.clone() - xg.mean_dim(2);
            let var = centred.clone().powf_scalar(2.0).mean_dim(2);
            let y = (centred / (var + Self::EPS).sqrt()).reshape([b, c, h, w]);
            return y * self.weight.val().reshape([1, c, 1, 1])
                + self.bias.val().reshape([1, c, 1, 1]);
        }
        let (scale, shift) = self.scale_shift();
        let c = scale.dims()[0];
        x * scale.reshape([1, c, 1, 1]) + shift.reshape([1, c, 1, 1])
    }
}

/// A BasicBlock (two 3×3) or a Bottleneck (1×1, 3×3 with the stride, 1×1 ×4).
#[derive(Module, Debug)]
pub struct Block {
    pub conv1: Conv2d,
    pub bn1: FrozenBatchNorm,
    pub conv2: Conv2d,
    pub bn2: FrozenBatchNorm,
    pub conv3: Option<Conv2d>,
    pub bn3: Option<FrozenBatchNorm>,
    pub downsample: Option<Downsample>,
    pub out_channels: usize,
}

/// The 1×1 strided projection of a block's shortcut.
#[derive(Module, Debug)]
pub struct Downsample {
    pub conv: Conv2d,
    pub bn: FrozenBatchNorm,
}

impl Block {
    fn new(
        cin: usize,
        planes: usize,
        stride: usize,
        bottleneck: bool,
        norm: BackboneNorm,
        device: &Device,
    ) -> Self {
        let nrm = |c: usize| FrozenBatchNorm::with_groups(c, norm.groups(c), device);
        let out = if bottleneck { planes * 4 } else { planes };
        let downsample = (stride != 1 || cin != out).then(|| Downsample {
            conv: conv(cin, out, 1, stride, device),
            bn: nrm(out),
        });
        if bottleneck {
            Self {
                conv1: conv(cin, planes, 1, 1, device),
                bn1: nrm(planes),
                conv2: conv(planes, planes, 3, stride, device),
                bn2: nrm(planes),
                conv3: Some(conv(planes, out, 1, 1, device)),
                bn3: Some(nrm(out)),
                downsample,
                out_channels: out,
            }
        } else {
            Self {
                conv1: conv(cin, planes, 3, stride, device),
                bn1: nrm(planes),
                conv2: conv(planes, planes, 3, 1, device),
                bn2: nrm(planes),
                conv3: None,
                bn3: None,
                downsample,
                out_channels: out,
            }
        }
    }

    fn frozen(self, frozen: bool) -> Self {
        if frozen { self.no_grad() } else { self }
    }

    /// `x`: `[B, Cin, H, W]` → `[B, Cout, H/stride, W/stride]`.
    pub fn forward(&self, x: Tensor<4>) -> Tensor<4> {
        let identity = match &self.downsample {
            Some(d) => d.bn.forward(ac::conv2d(&d.conv, x.clone())),
            None => x.clone(),
        };
        let mut y = relu(self.bn1.forward(ac::conv2d(&self.conv1, x)));
        y = self.bn2.forward(ac::conv2d(&self.conv2, y));
        if let (Some(c3), Some(b3)) = (&self.conv3, &self.bn3) {
            y = b3.forward(ac::conv2d(c3, relu(y)));
        }
        relu(y + identity)
    }
}

/// ResNet trunk. Field names follow torchvision (`conv1`, `bn1`, `layer1.0.conv1`, …).
#[derive(Module, Debug)]
pub struct ResNet {
    pub conv1: Conv2d,
    pub bn1: FrozenBatchNorm,
    pub maxpool: MaxPool2d,
    pub layer1: Vec<Block>,
    pub layer2: Vec<Block>,
    pub layer3: Vec<Block>,
    pub layer4: Vec<Block>,
    pub out_indices: Vec<usize>,
}

impl ResNet {
    /// `x`: normalised images `[B, 3, H, W]` → the selected maps of C2..C5, each
    /// `[B, C_i, H/s_i, W/s_i]` with strides 4, 8, 16, 32.
    pub fn forward(&self, x: Tensor<4>) -> Vec<Tensor<4>> {
        let mut x = self
            .maxpool
            .forward(relu(self.bn1.forward(ac::conv2d(&self.conv1, x))));
        let mut outs = Vec::with_capacity(self.out_indices.len());
        for (i, layer) in [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .enumerate()
        {
            if i > *self.out_indices.last().unwrap_or(&3) {
                break; // later stages are not needed
            }
            for block in layer {
                x = block.forward(x);
            }
            if self.out_indices.contains(&i) {
                outs.push(x.clone());
            }
        }
        outs
    }
}

/// A conv followed by a backbone norm, lowered: frozen BN folds into the conv; GroupNorm is
/// emitted after it.
fn emit_conv_norm(
    g: &mut crate::onnx::GraphBuilder,
    conv: &Conv2d,
    norm: &FrozenBatchNorm,
    x: &str,
) -> Result<String> {
    use crate::onnx::emit::{conv2d, group_norm_raw, host};
    if norm.groups == 0 {
        return conv2d(g, conv, x, Some(norm.folded()?));
    }
    let y = conv2d(g, conv, x, None)?;
    group_norm_raw(
        g,
        &y,
        norm.groups,
        &host(norm.weight.val())?,
        &host(norm.bias.val())?,
        FrozenBatchNorm::EPS,
    )
}

fn freeze_norm(n: FrozenBatchNorm, frozen: bool) -> FrozenBatchNorm {
    if frozen { n.no_grad() } else { n }
}

impl FrozenBatchNorm {
    /// Host `(scale, shift)`, what the exporter folds into the preceding conv.
    pub fn folded(&self) -> Result<(Vec<f32>, Vec<f32>)> {
        let (scale, shift) = self.scale_shift();
        Ok((
            crate::onnx::emit::host(scale)?,
            crate::onnx::emit::host(shift)?,
        ))
    }
}

impl Block {
    /// ONNX emitter of [`Block::forward`]: BatchNorms folded into the convs.
    pub fn emit(&self, g: &mut crate::onnx::GraphBuilder, x: &str) -> Result<String> {
        let identity = match &self.downsample {
            Some(d) => emit_conv_norm(g, &d.conv, &d.bn, x)?,
            None => x.to_string(),
        };
        let y = emit_conv_norm(g, &self.conv1, &self.bn1, x)?;
        let y = g.node("Relu", &[&y], vec![]);
        let mut y = emit_conv_norm(g, &self.conv2, &self.bn2, &y)?;
        if let (Some(c3), Some(b3)) = (&self.conv3, &self.bn3) {
            let r = g.node("Relu", &[&y], vec![]);
            y = emit_conv_norm(g, c3, b3, &r)?;
        }
        let s = g.node("Add", &[&y, &identity], vec![]);
        Ok(g.node("Relu", &[&s], vec![]))
    }
}

impl ResNet {
    /// ONNX emitter of [`ResNet::forward`]: `x` normalised NCHW → the selected maps.
    pub fn emit(&self, g: &mut crate::onnx::GraphBuilder, x: &str) -> Result<Vec<String>> {
        use crate::onnx::builder::Attr;
        let y = emit_conv_norm(g, &self.conv1, &self.bn1, x)?;
        let y = g.node("Relu", &[&y], vec![]);
        let mut x = g.node(
            "MaxPool",
            &[&y],
            vec![
                ("kernel_shape", Attr::Ints(vec![3, 3])),
                ("strides", Attr::Ints(vec![2, 2])),
                ("pads", Attr::Ints(vec![1, 1, 1, 1])),
            ],
        );
        let mut outs = Vec::with_capacity(self.out_indices.len());
        for (i, layer) in [&self.layer1, &self.layer2, &self.layer3, &self.layer4]
            .into_iter()
            .enumerate()
        {
            if i > *self.out_indices.last().unwrap_or(&3) {
                break;
            }
            for block in layer {
                x = block.emit(g, &x)?;
            }
            if self.out_indices.contains(&i) {
                outs.push(x.clone());
            }
        }
        Ok(outs)
    }
}

/// Keeps an error readable when a store lists hundreds of mismatches.
fn abbreviate(s: &str) -> String {
    const MAX: usize = 400;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{} … ({} more bytes)", &s[..cut], s.len() - cut),
        None => s.to_string(),
    }
}

/// What loading pretrained backbone weights did.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct WeightsReport {
    /// Tensors applied to the backbone.
    pub applied: usize,
    /// Tensors in the file the backbone has no use for (`fc.*`, `num_batches_tracked`).
    pub ignored: Vec<String>,
}

impl ResNet {
    /// Loads torchvision-format ResNet weights (`conv1.weight`, `bn1.running_mean`,
    /// `layer1.0.downsample.0.weight`, …) from a `.safetensors` or `.pth`/`.pt` file the user
    /// provides. Every backbone tensor must be present with the right shape; the classifier
    /// (`fc.*`) and `num_batches_tracked` counters are ignored; anything else unexpected is an
    /// error (it usually means a different architecture).
    pub fn load_torchvision(self, path: &std::path::Path) -> Result<(Self, WeightsReport)> {
        use burn::store::{ModuleSnapshot, PyTorchToBurnAdapter, PytorchStore, SafetensorsStore};
        let bad = |m: String| Error::Checkpoint {
            path: path.to_path_buf(),
            message: m,
        };
        if !path.is_file() {
            return Err(bad("no such file".into()));
        }
        if self.bn1.groups > 0 {
            return Err(bad(
                "torchvision weights carry BatchNorm statistics; this backbone uses group_norm \
                 (set `norm = \"frozen_bn\"` to load pretrained weights)"
                    .into(),
            ));
        }
        // torchvision's Sequential downsample (0 = conv, 1 = bn) → our named fields.
        let remaps = [
            (r"downsample\.0\.", "downsample.conv."),
            (r"downsample\.1\.", "downsample.bn."),
        ];
        let mut model = self;
        let misfit = |e: String| bad(format!("tensors do not fit: {}", abbreviate(&e)));
        let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
        let result = match ext {
            "safetensors" => {
                let mut store = SafetensorsStore::from_file(path)
                    .with_from_adapter(PyTorchToBurnAdapter)
                    .allow_partial(true);
                for (from, to) in remaps {
                    store = store.with_key_remapping(from, to);
                }
                model
                    .load_from(&mut store)
                    .map_err(|e| misfit(e.to_string()))?
            }
            "pth" | "pt" => {
                // The PyTorch store applies the PyTorch → Burn adaptation itself.
                let mut store = PytorchStore::from_file(path).allow_partial(true);
                for (from, to) in remaps {
                    store = store.with_key_remapping(from, to);
                }
                model
                    .load_from(&mut store)
                    .map_err(|e| misfit(e.to_string()))?
            }
            other => {
                return Err(bad(format!(
                    "unsupported extension {other:?} (expected .safetensors, .pth or .pt)"
                )));
            }
        };
        if !result.errors.is_empty() {
            let errs: Vec<String> = result.errors.iter().map(|e| format!("{e:?}")).collect();
            return Err(bad(format!("tensors do not fit: {}", errs.join("; "))));
        }
        if !result.missing.is_empty() {
            let miss: Vec<&str> = result.missing.iter().map(|(p, _)| p.as_str()).collect();
            return Err(bad(format!(
                "missing {} backbone tensors, e.g. {}",
                miss.len(),
                miss.iter().take(5).copied().collect::<Vec<_>>().join(", ")
            )));
        }
        let (ignored, unexpected): (Vec<String>, Vec<String>) = result
            .unused
            .into_iter()
            .partition(|k| k.starts_with("fc.") || k.ends_with("num_batches_tracked"));
        if !unexpected.is_empty() {
            return Err(bad(format!(
                "{} tensors match nothing in a ResNet-{{18,34,50}} of this config, e.g. {}",
                unexpected.len(),
                unexpected
                    .iter()
                    .take(5)
                    .cloned()
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if let Some(p) = super::params::first_non_finite(&model) {
            return Err(bad(format!("parameter `{p}` contains NaN or infinity")));
        }
        Ok((
            model,
            WeightsReport {
                applied: result.applied.len(),
                ignored,
            },
        ))
    }
}

#[cfg(test)]
mod norm_tests {
    use super::*;
    use burn::tensor::TensorData;

    #[test]
    fn group_norm_mode_normalises_each_group_and_trains_its_affine() {
        let dev = Device::flex().autodiff();
        let n = FrozenBatchNorm::with_groups(8, 2, &dev);
        let v: Vec<f32> = (0..2 * 8 * 3 * 3)
            .map(|i| (i as f32 * 0.37).sin() * 5.0 + 2.0)
            .collect();
        let x = Tensor::<4>::from_data(TensorData::new(v, [2, 8, 3, 3]), &dev);
        let y = n.forward(x);
        // per (image, group): mean 0, variance 1 (unit affine at init)
        let g: Vec<f32> = y
            .clone()
            .reshape([2, 2, 36])
            .inner()
            .into_data()
            .try_to_vec()
            .unwrap();
        for chunk in g.chunks(36) {
            let m: f32 = chunk.iter().sum::<f32>() / 36.0;
            let var: f32 = chunk.iter().map(|v| (v - m).powi(2)).sum::<f32>() / 36.0;
            assert!(m.abs() < 1e-4 && (var - 1.0).abs() < 1e-3, "{m} {var}");
        }
        let grads = (y * 3.0).sum().backward();
        assert!(
            n.bias.val().grad(&grads).is_some(),
            "GroupNorm affine trains"
        );
        // frozen BN mode keeps every parameter frozen
        let f = FrozenBatchNorm::new(8, &dev);
        assert!(!f.weight.is_require_grad() && !f.bias.is_require_grad());
    }
}
