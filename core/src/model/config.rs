//! `DetectorConfig`: every dimension of the model, with the presets `tiny` and `paper-r50`,
//! loadable from TOML where any field overrides the chosen preset.

use serde::{Deserialize, Serialize};

use super::backbone::{BackboneConfig, BackboneNorm, ResNetConfig};
use super::msda::MsdaImpl;
use super::neck::NeckConfig;
use super::swin::SwinConfig;
use crate::error::{Error, Result};

/// Transformer dimensions (encoder, decoder, queries).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TransformerConfig {
    pub d_model: usize,
    pub num_heads: usize,
    /// Sampling points per head per level.
    pub num_points: usize,
    pub encoder_layers: usize,
    pub decoder_layers: usize,
    pub ffn_dim: usize,
    /// Matching queries selected from the encoder proposals.
    pub num_queries: usize,
    /// Temperature of the 2-D sine position encoding of the feature maps (Co-DINO: 20).
    pub pe_temperature: f64,
    /// Offset of the sine encoding's cumulative index (Co-DINO: 0.0; Deformable DETR: -0.5).
    pub pe_offset: f64,
    /// MSDA implementation used in training and in Burn inference.
    pub msda: MsdaImpl,
}

/// The whole detector.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorConfig {
    /// Name of the preset these values started from.
    pub preset: String,
    pub num_classes: usize,
    /// Square input side in pixels (every image is stretch-resized to it).
    pub input_size: u32,
    /// Detections kept per image by the postprocess top-k.
    pub max_detections: usize,
    /// Pixel normalisation on the 0–255 RGB scale.
    pub pixel_mean: [f32; 3],
    pub pixel_std: [f32; 3],
    pub backbone: BackboneConfig,
    pub neck: NeckConfig,
    pub transformer: TransformerConfig,
}

pub const PRESETS: [&str; 3] = ["tiny", "paper-r50", "paper-swin-l"];

impl DetectorConfig {
    /// The official Co-DINO 5-scale R50 dimensions at a square 800 input.
    pub fn paper_r50() -> Self {
        Self {
            preset: "paper-r50".into(),
            num_classes: 80,
            input_size: 800,
            max_detections: 300,
            pixel_mean: [123.675, 116.28, 103.53],
            pixel_std: [58.395, 57.12, 57.375],
            backbone: BackboneConfig::ResNet(ResNetConfig {
                depth: 50,
                frozen_stages: 1,
                out_indices: vec![0, 1, 2, 3],
                base_width: 64,
                norm: BackboneNorm::FrozenBn,
            }),
            neck: NeckConfig {
                extra_levels: 1,
                gn_groups: 32,
                conv_bias: false,
            },
            transformer: TransformerConfig {
                d_model: 256,
                num_heads: 8,
                num_points: 4,
                encoder_layers: 6,
                decoder_layers: 6,
                ffn_dim: 2048,
                num_queries: 900,
                pe_temperature: 20.0,
                pe_offset: 0.0,
                msda: MsdaImpl::Host,
            },
        }
    }

    /// The official Co-DINO 5-scale Swin-L dimensions (`co_dino_5scale_swin_l_16xb1_1x_coco`
    /// and its Objects365 fine-tune): `paper-r50` with a Swin-L backbone (window 12) whose four
    /// maps (192–1536 channels) feed the same neck and transformer.
    pub fn paper_swin_l() -> Self {
        Self {
            preset: "paper-swin-l".into(),
            backbone: BackboneConfig::Swin(SwinConfig::large()),
            ..Self::paper_r50()
        }
    }

    /// Small enough to train on 2 CPU cores: ResNet-18 at half width, 4 levels (strides
    /// 8–64) at 256 px, d=128, 2+3 layers, 100 queries.
    pub fn tiny() -> Self {
        Self {
            preset: "tiny".into(),
            num_classes: 10,
            input_size: 256,
            max_detections: 100,
            backbone: BackboneConfig::ResNet(ResNetConfig {
                depth: 18,
                frozen_stages: 0,
                out_indices: vec![1, 2, 3],
                base_width: 32,
                norm: BackboneNorm::FrozenBn,
            }),
            neck: NeckConfig {
                extra_levels: 1,
                gn_groups: 32,
                conv_bias: false,
            },
            transformer: TransformerConfig {
                d_model: 128,
                num_heads: 4,
                num_points: 4,
                encoder_layers: 2,
                decoder_layers: 3,
                ffn_dim: 512,
                num_queries: 100,
                ..Self::paper_r50().transformer
            },
            ..Self::paper_r50()
        }
    }

    pub fn preset(name: &str) -> Result<Self> {
        match name {
            "tiny" => Ok(Self::tiny()),
            "paper-r50" => Ok(Self::paper_r50()),
            "paper-swin-l" => Ok(Self::paper_swin_l()),
            other => Err(Error::InvalidArgument {
                what: "preset",
                message: format!("unknown preset {other:?} (known: {})", PRESETS.join(", ")),
            }),
        }
    }

    /// Parses TOML where `preset = "..."` picks the base and every other key overrides it,
    /// e.g. `[transformer]\nnum_queries = 300`.
    pub fn from_toml(text: &str) -> Result<Self> {
        let bad = |m: String| Error::InvalidArgument {
            what: "model config",
            message: m,
        };
        let user: toml::Table = toml::from_str(text).map_err(|e| bad(e.to_string()))?;
        let name = match user.get("preset") {
            Some(toml::Value::String(s)) => s.clone(),
            Some(_) => return Err(bad("`preset` must be a string".into())),
            None => {
                return Err(bad(format!(
                    "missing `preset` (one of {})",
                    PRESETS.join(", ")
                )));
            }
        };
        let base = toml::Table::try_from(Self::preset(&name)?).map_err(|e| bad(e.to_string()))?;
        let merged = merge(base, user);
        let cfg: Self = merged
            .try_into()
            .map_err(|e: toml::de::Error| bad(e.to_string()))?;
        cfg.validate()?;
        Ok(cfg)
    }

    pub fn to_toml(&self) -> Result<String> {
        toml::to_string(self).map_err(|e| Error::InvalidArgument {
            what: "model config",
            message: e.to_string(),
        })
    }

    /// Number of feature levels the transformer sees.
    pub fn num_levels(&self) -> usize {
        self.backbone.out_indices().len() + self.neck.extra_levels
    }

    /// Strides of the levels, e.g. [8, 16, 32, 64].
    pub fn level_strides(&self) -> Vec<usize> {
        let mut s = self.backbone.out_strides();
        let mut last = s.last().copied().unwrap_or(32);
        for _ in 0..self.neck.extra_levels {
            last *= 2;
            s.push(last);
        }
        s
    }

    /// `[h, w]` of every level at the configured input size (conv arithmetic, k3 s2 p1 rounds up).
    pub fn level_shapes(&self) -> Vec<[usize; 2]> {
        level_shapes_for(self, self.input_size as usize, self.input_size as usize)
    }

    /// Encoder tokens (all levels' positions) of an `h × w` input: the query selection takes
    /// `num_queries` of them, so an input must have at least that many.
    pub fn tokens_at(&self, h: usize, w: usize) -> usize {
        level_shapes_for(self, h, w)
            .iter()
            .map(|[a, b]| a * b)
            .sum()
    }

    pub fn validate(&self) -> Result<()> {
        let bad = |m: String| {
            Err(Error::InvalidArgument {
                what: "model config",
                message: m,
            })
        };
        self.backbone.validate()?;
        let t = &self.transformer;
        if self.num_classes == 0 {
            return bad("num_classes must be > 0".into());
        }
        if self.input_size < 32 || self.input_size > 4096 {
            return bad(format!("input_size {} not in 32..=4096", self.input_size));
        }
        let largest = *self.level_strides().last().unwrap_or(&1);
        if (self.input_size as usize) < largest {
            return bad(format!(
                "input_size {} is smaller than the coarsest stride {largest}",
                self.input_size
            ));
        }
        if t.d_model == 0 || t.num_heads == 0 || !t.d_model.is_multiple_of(t.num_heads) {
            return bad(format!(
                "d_model {} must be a multiple of num_heads {}",
                t.d_model, t.num_heads
            ));
        }
        if !t.d_model.is_multiple_of(2)
            || self.neck.gn_groups == 0
            || !t.d_model.is_multiple_of(self.neck.gn_groups)
        {
            return bad(format!(
                "d_model {} must be even and divisible by gn_groups {}",
                t.d_model, self.neck.gn_groups
            ));
        }
        if t.num_points == 0 || t.decoder_layers == 0 || t.num_queries == 0 || t.ffn_dim == 0 {
            return bad("num_points, decoder_layers, num_queries and ffn_dim must be > 0".into());
        }
        let tokens: usize = self.level_shapes().iter().map(|[h, w]| h * w).sum();
        if t.num_queries > tokens {
            return bad(format!(
                "num_queries {} exceeds the {tokens} encoder tokens",
                t.num_queries
            ));
        }
        if self.max_detections == 0 || self.max_detections > t.num_queries * self.num_classes {
            return bad(format!(
                "max_detections must be in 1..={}",
                t.num_queries * self.num_classes
            ));
        }
        if self.pixel_std.iter().any(|s| s.is_nan() || *s <= 0.0) {
            return bad("pixel_std must be > 0".into());
        }
        Ok(())
    }
}

/// Level shapes for an `h × w` input: ResNet stem (s2 conv k7 p3, s2 maxpool k3 p1) then s2
/// convs, then the neck's k3 s2 p1 extra levels — all `ceil`-like `(n - 1) / 2 + 1`. A Swin
/// backbone gives the same: its padded 4×4 patches are `⌈n/4⌉`, its padded merges `⌈n/2⌉`.
pub fn level_shapes_for(cfg: &DetectorConfig, h: usize, w: usize) -> Vec<[usize; 2]> {
    let half = |n: usize| (n.saturating_sub(1)) / 2 + 1;
    let mut cur = [half(half(h)), half(half(w))]; // C2, stride 4
    let mut by_stage = Vec::with_capacity(4);
    for stage in 0..4 {
        if stage > 0 {
            cur = [half(cur[0]), half(cur[1])];
        }
        by_stage.push(cur);
    }
    let mut out: Vec<[usize; 2]> = cfg
        .backbone
        .out_indices()
        .iter()
        .map(|&i| by_stage[i])
        .collect();
    for _ in 0..cfg.neck.extra_levels {
        let l = *out.last().unwrap_or(&cur);
        out.push([half(l[0]), half(l[1])]);
    }
    out
}

fn merge(mut base: toml::Table, user: toml::Table) -> toml::Table {
    for (k, v) in user {
        match (base.remove(&k), v) {
            (Some(toml::Value::Table(b)), toml::Value::Table(u)) => {
                base.insert(k, toml::Value::Table(merge(b, u)));
            }
            (_, v) => {
                base.insert(k, v);
            }
        }
    }
    base
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn presets_validate_and_have_the_documented_levels() {
        let p = DetectorConfig::paper_r50();
        p.validate().unwrap();
        assert_eq!(p.num_levels(), 5);
        assert_eq!(p.level_strides(), vec![4, 8, 16, 32, 64]);
        assert_eq!(
            p.level_shapes(),
            vec![[200, 200], [100, 100], [50, 50], [25, 25], [13, 13]]
        );
        let t = DetectorConfig::tiny();
        t.validate().unwrap();
        assert_eq!(t.level_shapes(), vec![[32, 32], [16, 16], [8, 8], [4, 4]]);
    }

    #[test]
    fn swin_preset_has_the_r50_levels_and_round_trips() {
        let s = DetectorConfig::paper_swin_l();
        s.validate().unwrap();
        assert_eq!(s.level_shapes(), DetectorConfig::paper_r50().level_shapes());
        assert_eq!(s.backbone.out_channels(), vec![192, 384, 768, 1536]);
        let text = s.to_toml().unwrap();
        assert!(text.contains("type = \"swin\""), "{text}");
        assert_eq!(DetectorConfig::from_toml(&text).unwrap(), s);
        // through JSON as well (the checkpoint header)
        let json = serde_json::to_string(&s).unwrap();
        assert_eq!(serde_json::from_str::<DetectorConfig>(&json).unwrap(), s);
        let r = DetectorConfig::paper_r50();
        let json = serde_json::to_string(&r).unwrap();
        assert!(
            !json.contains("\"type\""),
            "ResNet configs stay untagged: {json}"
        );
        assert_eq!(serde_json::from_str::<DetectorConfig>(&json).unwrap(), r);
        // a preset's backbone can be overridden field by field
        let c = DetectorConfig::from_toml(
            "preset = \"paper-swin-l\"\n[backbone]\nwindow_size = 7\ndepths = [2, 2, 6, 2]\n",
        )
        .unwrap();
        match &c.backbone {
            BackboneConfig::Swin(sw) => assert_eq!((sw.window_size, sw.depths[2]), (7, 6)),
            other => panic!("{other:?}"),
        }
        // `type = "resnet"` is accepted and means the same as no type
        let c = DetectorConfig::from_toml("preset = \"tiny\"\n[backbone]\ntype = \"resnet\"\n");
        assert_eq!(c.unwrap(), DetectorConfig::tiny());
    }

    #[test]
    fn toml_overrides_any_field_of_the_preset() {
        let c = DetectorConfig::from_toml(
            "preset = \"tiny\"\nnum_classes = 3\n[transformer]\nnum_queries = 50\nmsda = \"grid-sample\"\n[backbone]\ndepth = 34\n",
        )
        .unwrap();
        assert_eq!(c.num_classes, 3);
        assert_eq!(c.transformer.num_queries, 50);
        assert_eq!(c.transformer.msda, MsdaImpl::GridSample);
        assert_eq!(c.backbone.resnet().map(|r| r.depth), Some(34));
        assert_eq!(c.transformer.d_model, 128);
        let round = DetectorConfig::from_toml(&c.to_toml().unwrap()).unwrap();
        assert_eq!(round, c);
    }

    #[test]
    fn bad_configs_are_clear_errors() {
        for (text, needle) in [
            ("num_classes = 3", "missing `preset`"),
            ("preset = \"huge\"", "unknown preset"),
            ("preset = \"tiny\"\nnum_clases = 3", "num_clases"),
            (
                "preset = \"tiny\"\n[transformer]\nnum_heads = 3",
                "multiple of num_heads",
            ),
            ("preset = \"tiny\"\n[backbone]\ndepth = 101", "101"),
            (
                "preset = \"tiny\"\n[backbone]\ntype = \"vit\"",
                "unknown backbone type \"vit\"",
            ),
            ("preset = \"paper-swin-l\"\n[backbone]\ndepth = 50", "depth"),
            (
                "preset = \"paper-swin-l\"\n[backbone]\nnum_heads = [5, 12, 24, 48]",
                "multiples of num_heads",
            ),
            ("preset = \"tiny\"\ninput_size = 16", "input_size"),
            (
                "preset = \"tiny\"\n[transformer]\nnum_queries = 100000",
                "exceeds",
            ),
        ] {
            let e = DetectorConfig::from_toml(text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text:?} → {e}");
        }
    }
}
