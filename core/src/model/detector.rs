//! The Co-DINO detector at inference: backbone → neck → encoder → two-stage query selection
//! → DINO decoder → per-layer class/box heads. (Aux heads and denoising live in training.)

use crate::model::autocast as ac;
use burn::module::{Module, Param};
use burn::nn::{Linear, LinearConfig};
use burn::tensor::activation::sigmoid;
use burn::tensor::{Bool, Device, Int, Tensor, TensorData};

use super::backbone::Backbone;
use super::config::DetectorConfig;
use super::decoder::{BoxHead, Decoder, DecoderOutput, inverse_sigmoid};
use super::encoder::Encoder;
use super::msda::MsDeformAttnConfig;
use super::neck::ChannelMapper;
use super::padding::Padding;
use super::position_encoding::SinePositionConfig;
use super::query_selection::{QuerySelection, Selected};
use crate::error::{Error, Result};

/// Bias of a sigmoid classifier whose initial probability is `p`.
pub fn prior_bias(p: f64) -> f32 {
    (-((1.0 - p) / p).ln()) as f32
}

impl DetectorConfig {
    /// Builds the model with fresh weights (seed the device for reproducible weights).
    pub fn init(&self, device: &Device) -> Result<Detector> {
        self.validate()?;
        let t = &self.transformer;
        let d = t.d_model;
        let levels = self.num_levels();
        let attn = MsDeformAttnConfig {
            d_model: d,
            num_heads: t.num_heads,
            num_levels: levels,
            num_points: t.num_points,
            imp: t.msda,
        };
        let backbone = self.backbone.init(device)?;
        let neck = self.neck.init(&self.backbone.out_channels(), d, device)?;
        let class_heads = (0..=t.decoder_layers)
            .map(|_| {
                let mut l = LinearConfig::new(d, self.num_classes)
                    .with_initializer(burn::nn::Initializer::XavierUniform { gain: 1.0 })
                    .init(device);
                l.bias = Some(Param::from_tensor(Tensor::full(
                    [self.num_classes],
                    prior_bias(0.01),
                    device,
                )));
                l
            })
            .collect();
        Ok(Detector {
            backbone,
            neck,
            level_embed: Param::from_tensor(Tensor::random(
                [levels, d],
                burn::tensor::Distribution::Normal(0.0, 1.0),
                device,
            )),
            encoder: Encoder::new(&attn, t.ffn_dim, t.encoder_layers, device)?,
            selection: QuerySelection::new(d, t.num_queries, device),
            decoder: Decoder::new(&attn, t.ffn_dim, t.decoder_layers, device)?,
            class_heads,
            box_heads: (0..=t.decoder_layers)
                .map(|_| BoxHead::new(d, device))
                .collect(),
            config: self.clone(),
        })
    }
}

/// What the decoder decodes: content queries `[B, Q, d]`, reference boxes `[B, Q, 4]`, the
/// self-attention mask `[Q, Q]`, the memory `[B, S, d]` and the level shapes.
pub type Decodable = (
    Tensor<3>,
    Tensor<3>,
    Option<Tensor<2, Bool>>,
    Tensor<3>,
    Vec<[usize; 2]>,
);

/// The inference queries: the selected ones, unextended, unmasked.
fn selected_queries(memory: Tensor<3>, shapes: Vec<[usize; 2]>, selected: &Selected) -> Decodable {
    (
        selected.content.clone(),
        selected.reference.clone(),
        None,
        memory,
        shapes,
    )
}

/// What the backbone, neck and flattening hand to the transformer.
pub struct Features {
    /// `[B, S, d]` tokens of all levels.
    pub tokens: Tensor<3>,
    /// `[B, S, d]` position encoding + level embedding.
    pub pos: Tensor<3>,
    /// `[h, w]` of every level.
    pub shapes: Vec<[usize; 2]>,
    /// The batch's padding masks, when an image is padded.
    pub padding: Option<Padding>,
}

/// Everything the inference path and the one-to-one training losses need.
pub struct DetectorOutput {
    /// Per decoder layer: `[B, Q, C]` class logits.
    pub logits: Vec<Tensor<3>>,
    /// Per decoder layer: `[B, Q, 4]` normalised cxcywh boxes.
    pub boxes: Vec<Tensor<3>>,
    /// Encoder proposals selected as queries: `[B, K, C]` logits and `[B, K, 4]` boxes.
    pub enc_logits: Tensor<3>,
    pub enc_boxes: Tensor<3>,
    /// `[B, K]` the encoder token each of those proposals came from, in selection order.
    pub enc_indices: Tensor<2, Int>,
    /// `[B, S, d]` encoder memory (the aux heads' input in training).
    pub memory: Tensor<3>,
    /// `[h, w]` of every level.
    pub shapes: Vec<[usize; 2]>,
}

#[derive(Module, Debug)]
pub struct Detector {
    pub backbone: Backbone,
    pub neck: ChannelMapper,
    /// `[L, d]` added to the position encoding of level l.
    pub level_embed: Param<Tensor<2>>,
    pub encoder: Encoder,
    pub selection: QuerySelection,
    pub decoder: Decoder,
    /// `decoder_layers + 1` classifiers `d → C`; the last scores encoder proposals.
    pub class_heads: Vec<Linear>,
    /// `decoder_layers + 1` box MLPs; the last regresses encoder proposals.
    pub box_heads: Vec<BoxHead>,
    #[module(skip)]
    pub config: DetectorConfig,
}

/// uint8 NHWC pixels (the loader's and the ONNX graph's input) → float `[B, H, W, 3]`.
pub fn pixels_to_tensor(
    pixels: &[u8],
    batch: usize,
    h: usize,
    w: usize,
    device: &Device,
) -> Result<Tensor<4>> {
    if batch == 0 || pixels.len() != batch * h * w * 3 {
        return Err(Error::InvalidArgument {
            what: "image batch",
            message: format!(
                "{} bytes is not {batch} × {h} × {w} × 3 (and batch must be ≥ 1)",
                pixels.len()
            ),
        });
    }
    let v: Vec<f32> = pixels.iter().map(|&p| f32::from(p)).collect();
    Ok(Tensor::from_data(
        TensorData::new(v, [batch, h, w, 3]),
        device,
    ))
}

impl Detector {
    pub fn config(&self) -> &DetectorConfig {
        &self.config
    }

    /// Checks an input batch `[B, H, W, 3]` before any work.
    pub fn check_input(&self, images: &Tensor<4>) -> Result<()> {
        let [b, h, w, c] = images.dims();
        let min = *self.config.level_strides().last().unwrap_or(&32);
        let bad = |m: String| {
            Err(Error::InvalidArgument {
                what: "image batch",
                message: m,
            })
        };
        if b == 0 {
            return bad("empty batch".into());
        }
        if c != 3 {
            return bad(format!("expected 3 RGB channels (NHWC), got {c}"));
        }
        if h < min || w < min {
            return bad(format!("{h}x{w} is smaller than the coarsest stride {min}"));
        }
        // The query selection takes the top `num_queries` tokens: a smaller input has fewer.
        let tokens = self.config.tokens_at(h, w);
        let k = self.config.transformer.num_queries;
        if tokens < k {
            return bad(format!(
                "{h}x{w} gives {tokens} encoder tokens, fewer than the {k} queries selected \
                 from them; give a larger input"
            ));
        }
        Ok(())
    }

    /// Normalised NCHW input from 0–255 NHWC pixels.
    pub fn normalize(&self, images: Tensor<4>) -> Tensor<4> {
        let device = images.device();
        let mean = Tensor::<1>::from_data(
            TensorData::new(self.config.pixel_mean.to_vec(), [3]),
            &device,
        )
        .reshape([1, 3, 1, 1]);
        let std = Tensor::<1>::from_data(
            TensorData::new(self.config.pixel_std.to_vec(), [3]),
            &device,
        )
        .reshape([1, 3, 1, 1]);
        (images.permute([0, 3, 1, 2]) - mean) / std
    }

    /// ONNX emitter of [`Detector::normalize`]: uint8 NHWC `images` → normalised float NCHW.
    pub fn emit_normalize(&self, g: &mut crate::onnx::GraphBuilder, images: &str) -> String {
        use crate::onnx::builder::Attr;
        let f = g.node("Cast", &[images], vec![("to", Attr::Int(1))]);
        let t = g.node(
            "Transpose",
            &[&f],
            vec![("perm", Attr::Ints(vec![0, 3, 1, 2]))],
        );
        let mean = g.init_f32("pixel_mean", &[1, 3, 1, 1], &self.config.pixel_mean);
        let std = g.init_f32("pixel_std", &[1, 3, 1, 1], &self.config.pixel_std);
        let c = g.node("Sub", &[&t, &mean], vec![]);
        g.node("Div", &[&c, &std], vec![])
    }

    /// Sine position encoding + level embedding of every token, `[1, S, d]` (a constant for
    /// fixed level shapes: no padding masks).
    pub fn positions(&self, shapes: &[[usize; 2]], device: &Device) -> Tensor<3> {
        let d = self.config.transformer.d_model;
        let pe = self.sine();
        let pos: Vec<Tensor<2>> = shapes
            .iter()
            .enumerate()
            .map(|(lvl, &[h, w])| {
                pe.embedding(h, w, device)
                    .reshape([d, h * w])
                    .swap_dims(0, 1)
                    + self.level_embed.val().narrow(0, lvl, 1)
            })
            .collect();
        let s: usize = shapes.iter().map(|[h, w]| h * w).sum();
        Tensor::cat(pos, 0).reshape([1, s, d])
    }

    /// The position encoding settings of this model.
    fn sine(&self) -> SinePositionConfig {
        SinePositionConfig {
            temperature: self.config.transformer.pe_temperature,
            offset: self.config.transformer.pe_offset,
            ..SinePositionConfig::co_dino(self.config.transformer.d_model)
        }
    }

    /// Backbone + neck + flattening: tokens `[B, S, d]`, positions `[B, S, d]`, level shapes.
    pub fn features(&self, images: Tensor<4>) -> (Tensor<3>, Tensor<3>, Vec<[usize; 2]>) {
        let f = self.features_with(images, None);
        (f.tokens, f.pos, f.shapes)
    }

    /// [`Detector::features`] of a batch whose images lie top-left in a padded canvas,
    /// `valid` `[h, w]` pixels each (`None`: nothing padded). The padding is zero after
    /// normalising (as the official preprocessor pads) and the positions are encoded over
    /// each valid region. Also returns the batch's [`Padding`] when `valid` pads anything.
    pub fn features_padded(&self, images: Tensor<4>, valid: &[[usize; 2]]) -> Result<Features> {
        let [b, h, w, _] = images.dims();
        if valid.len() != b {
            return Err(Error::InvalidArgument {
                what: "valid sizes",
                message: format!("{} sizes for a batch of {b}", valid.len()),
            });
        }
        super::padding::check_valid(valid, [h, w])?;
        Ok(self.features_with(images, Some(valid)))
    }

    /// [`Detector::features_padded`] after its checks.
    fn features_with(&self, images: Tensor<4>, valid: Option<&[[usize; 2]]>) -> Features {
        let device = images.device();
        let [_, ih, iw, _] = images.dims();
        let valid = valid.filter(|v| v.iter().any(|&x| x != [ih, iw]));
        let mut x = self.normalize(images);
        if let Some(v) = valid {
            x = x * super::padding::pixel_mask(v, [ih, iw], &device);
        }
        let maps = self.neck.forward(self.backbone.forward(x));
        let d = self.config.transformer.d_model;
        let mut tokens = Vec::with_capacity(maps.len());
        let mut shapes = Vec::with_capacity(maps.len());
        let b = maps.first().map_or(1, |m| m.dims()[0]);
        for m in maps {
            let [b, _, h, w] = m.dims();
            shapes.push([h, w]);
            tokens.push(m.reshape([b, d, h * w]).swap_dims(1, 2));
        }
        let src = Tensor::cat(tokens, 1);
        // checked by the caller: 1 ≤ valid ≤ input
        let padding = valid.and_then(|v| Padding::new(v, [ih, iw], &shapes).ok());
        let pos = match &padding {
            Some(p) => {
                let embed: Vec<Tensor<2>> = shapes
                    .iter()
                    .enumerate()
                    .map(|(lvl, &[h, w])| {
                        self.level_embed.val().narrow(0, lvl, 1).expand([h * w, d])
                    })
                    .collect();
                let s = src.dims()[1];
                p.positions(&self.sine(), &device) + Tensor::cat(embed, 0).reshape([1, s, d])
            }
            _ => {
                let pos = self.positions(&shapes, &device);
                let s = pos.dims()[1];
                pos.expand([b, s, d])
            }
        };
        Features {
            tokens: src,
            pos,
            shapes,
            padding,
        }
    }

    /// ONNX emitter of [`Detector::features`]: tokens `[N, S, d]`, positions `[1, S, d]`
    /// (broadcast by the adds) and the levels. At a fixed input size (`size`) the positions are
    /// the training table as an initializer; without one (`--dynamic-size`) they are computed in
    /// the graph from the maps' `Shape`s.
    ///
    /// With `valid` (int64 `[N, 2]`, a letterboxed batch) the padding is zeroed after
    /// normalising, the positions `[N, S, d]` are encoded over each valid region, and the
    /// padding's other graph values come back for the transformer.
    #[allow(clippy::type_complexity)]
    pub fn emit_features(
        &self,
        g: &mut crate::onnx::GraphBuilder,
        images: &str,
        size: Option<[usize; 2]>,
        valid: Option<&str>,
    ) -> Result<(
        String,
        String,
        crate::onnx::Levels,
        Option<super::padding::EmitPadding>,
    )> {
        use crate::onnx::builder::Attr;
        let mut z = self.emit_normalize(g, images);
        // the input's H and W as int64 scalars and float [1]
        let input = valid.map(|_| {
            g.begin_fp32();
            let shape = g.node("Shape", &[images], vec![]);
            let dim = |g: &mut crate::onnx::GraphBuilder, i: i64| {
                let i = g.init_i64("i", &[], &[i]);
                let s = g.node("Gather", &[&shape, &i], vec![("axis", Attr::Int(0))]);
                let ax0 = g.ints(&[0]);
                let u = g.node("Unsqueeze", &[&s, &ax0], vec![]);
                let f = g.node("Cast", &[&u], vec![("to", Attr::Int(1))]);
                (s, f)
            };
            let (h, w) = (dim(g, 1), dim(g, 2));
            g.end_fp32();
            (h, w)
        });
        if let (Some(v), Some(((ih, _), (iw, _)))) = (valid, &input) {
            let m = super::padding::emit_pixel_mask(g, v, [ih, iw]);
            z = g.node("Mul", &[&z, &m], vec![]);
        }
        let feats = self.backbone.emit(g, &z, size)?;
        let maps = self.neck.emit(g, &feats)?;
        let d = self.config.transformer.d_model as i64;
        let flat = g.ints(&[0, d, -1]);
        let tokens: Vec<String> = maps
            .iter()
            .map(|m| {
                let r = g.node("Reshape", &[m, &flat], vec![]);
                g.node(
                    "Transpose",
                    &[&r],
                    vec![("perm", Attr::Ints(vec![0, 2, 1]))],
                )
            })
            .collect();
        let refs: Vec<&str> = tokens.iter().map(String::as_str).collect();
        let src = g.node("Concat", &refs, vec![("axis", Attr::Int(1))]);
        if let (Some(v), Some(((_, ihf), (_, iwf)))) = (valid, &input) {
            let levels = match size {
                Some([h, w]) => crate::onnx::Levels::fixed(
                    g,
                    &super::config::level_shapes_for(&self.config, h, w),
                ),
                None => crate::onnx::Levels::from_maps(g, &maps),
            };
            let p = super::padding::emit_padding(g, v, [ihf, iwf], &levels, &self.sine());
            let pos = self.emit_level_embed(g, &levels, &p.positions)?;
            return Ok((src, pos, levels, Some(p)));
        }
        let (pos, levels) = match size {
            Some([h, w]) => {
                let shapes = super::config::level_shapes_for(&self.config, h, w);
                let pos = self.positions(&shapes, &self.level_embed.val().device());
                let dims = pos.dims();
                let pos = g.init_f32("pos", &dims, &crate::onnx::emit::host(pos)?);
                (pos, crate::onnx::Levels::fixed(g, &shapes))
            }
            None => {
                let levels = crate::onnx::Levels::from_maps(g, &maps);
                (self.emit_positions(g, &levels)?, levels)
            }
        };
        Ok((src, pos, levels, None))
    }

    /// `positions` `[N, S, d]` + every token's level embedding (expanded per level in the
    /// graph: a `[1, S, d]` table would be a large initializer at paper sizes).
    fn emit_level_embed(
        &self,
        g: &mut crate::onnx::GraphBuilder,
        levels: &crate::onnx::Levels,
        positions: &str,
    ) -> Result<String> {
        use crate::onnx::LevelDim;
        let d = self.config.transformer.d_model;
        g.begin_fp32();
        let mut per_level = Vec::with_capacity(levels.len());
        for (l, lvl) in levels.levels.iter().enumerate() {
            let row = self.level_embed.val().narrow(0, l, 1); // [1, d]
            let row = g.init_f32("level_embed", &[1, d], &crate::onnx::emit::host(row)?);
            let to = lvl.shape(g, &[], &[LevelDim::Hw], &[d as i64]);
            per_level.push(g.node("Expand", &[&row, &to], vec![]));
        }
        let table = crate::onnx::Levels::concat_tokens(g, &per_level); // [1, S, d]
        let pos = g.node("Add", &[positions, &table], vec![]);
        g.end_fp32();
        Ok(pos)
    }

    /// ONNX emitter of [`Detector::positions`] from run-time level sizes: `[1, S, d]`, kept
    /// fp32 in an fp16 export (sines of large arguments).
    fn emit_positions(
        &self,
        g: &mut crate::onnx::GraphBuilder,
        levels: &crate::onnx::Levels,
    ) -> Result<String> {
        let d = self.config.transformer.d_model;
        let pe = self.sine();
        g.begin_fp32();
        let mut per_level = Vec::with_capacity(levels.len());
        for (l, lvl) in levels.levels.iter().enumerate() {
            let table = pe.emit(g, lvl); // [h·w, d]
            let row = self.level_embed.val().narrow(0, l, 1); // [1, d]
            let row = g.init_f32("level_embed", &[1, d], &crate::onnx::emit::host(row)?);
            per_level.push(g.node("Add", &[&table, &row], vec![]));
        }
        let pos = crate::onnx::Levels::concat_tokens(g, &per_level);
        g.end_fp32();
        Ok(pos)
    }

    /// Full forward pass. `images`: `[B, H, W, 3]` RGB pixels on the 0–255 scale.
    pub fn forward(&self, images: Tensor<4>) -> Result<DetectorOutput> {
        self.forward_with(images, selected_queries)
    }

    /// Forward pass where training may extend the decoder's queries (denoising groups,
    /// positive queries) and give the self-attention mask. `extend` returns the content
    /// queries, reference boxes, mask, memory and shapes to decode.
    pub fn forward_with(
        &self,
        images: Tensor<4>,
        extend: impl FnOnce(Tensor<3>, Vec<[usize; 2]>, &Selected) -> Decodable,
    ) -> Result<DetectorOutput> {
        self.forward_padded_with(images, None, extend)
    }

    /// Full forward pass of a padded batch: image i lies top-left in the canvas, `valid[i]`
    /// `[h, w]` pixels (see padding.rs). Boxes are normalised over each valid region.
    pub fn forward_padded(
        &self,
        images: Tensor<4>,
        valid: &[[usize; 2]],
    ) -> Result<DetectorOutput> {
        self.forward_padded_with(images, Some(valid), selected_queries)
    }

    /// [`Detector::forward_with`] of a batch padded to `valid` (`None`: not padded).
    pub fn forward_padded_with(
        &self,
        images: Tensor<4>,
        valid: Option<&[[usize; 2]]>,
        extend: impl FnOnce(Tensor<3>, Vec<[usize; 2]>, &Selected) -> Decodable,
    ) -> Result<DetectorOutput> {
        self.forward_inner(images, valid, None, extend)
    }

    /// Inference forward (padded to `valid`, or not) whose query selection is `given`:
    /// `[B, K]` encoder-token indices (`K` = `num_queries`, each below the token count) in
    /// place of the top-K choice. For comparing with another runtime on its own selection;
    /// indices out of range are an error.
    pub fn forward_given_selection(
        &self,
        images: Tensor<4>,
        valid: Option<&[[usize; 2]]>,
        given: &[i64],
    ) -> Result<DetectorOutput> {
        let [b, h, w, _] = images.dims();
        let k = self.config.transformer.num_queries;
        let tokens = self.config.tokens_at(h, w);
        let bad = |message: String| Error::InvalidArgument {
            what: "selection",
            message,
        };
        if given.len() != b * k {
            return Err(bad(format!(
                "{} indices for {b} images of {k} queries",
                given.len()
            )));
        }
        if let Some(i) = given.iter().find(|&&i| i < 0 || i as usize >= tokens) {
            return Err(bad(format!("token index {i} outside 0..{tokens}")));
        }
        let device = self.level_embed.val().device();
        let idx = Tensor::<2, Int>::from_data(TensorData::new(given.to_vec(), [b, k]), &device);
        self.forward_inner(images, valid, Some(idx), selected_queries)
    }

    fn forward_inner(
        &self,
        images: Tensor<4>,
        valid: Option<&[[usize; 2]]>,
        given: Option<Tensor<2, Int>>,
        extend: impl FnOnce(Tensor<3>, Vec<[usize; 2]>, &Selected) -> Decodable,
    ) -> Result<DetectorOutput> {
        self.check_input(&images)?;
        let Features {
            tokens: src,
            pos,
            shapes,
            padding,
        } = match valid {
            Some(v) => self.features_padded(images, v)?,
            None => self.features_with(images, None),
        };
        let padding = padding.as_ref();
        let memory = self.encoder.forward(src, pos, &shapes, padding);
        let n = self.decoder.layers.len();
        let selected = self.selection.forward(
            memory.clone(),
            &shapes,
            padding,
            |x| ac::linear(&self.class_heads[n], x),
            |x| self.box_heads[n].forward(x),
            given,
        );
        let (content, reference, mask, mem, shp) =
            extend(memory.clone(), shapes.clone(), &selected);
        let dec = self.decoder.forward(
            content,
            reference,
            mem,
            &shp,
            mask.as_ref(),
            &self.box_heads[..n],
            padding,
        );
        let (logits, boxes) = self.decode_layers(dec);
        Ok(DetectorOutput {
            logits,
            boxes,
            enc_logits: selected.enc_logits,
            enc_boxes: selected.enc_boxes,
            enc_indices: selected.indices,
            memory,
            shapes,
        })
    }

    /// Per-layer class logits `[B, Q, C]` and boxes `[B, Q, 4]` of a decoder pass: layer l's
    /// head decodes its (normed) output against reference l ("look forward twice").
    pub fn decode_layers(&self, dec: DecoderOutput) -> (Vec<Tensor<3>>, Vec<Tensor<3>>) {
        let n = dec.hidden.len();
        let mut logits = Vec::with_capacity(n);
        let mut boxes = Vec::with_capacity(n);
        for (l, h) in dec.hidden.into_iter().enumerate() {
            logits.push(ac::linear(&self.class_heads[l], h.clone()));
            boxes.push(sigmoid(
                self.box_heads[l].forward(h) + inverse_sigmoid(dec.references[l].clone(), 1e-3),
            ));
        }
        (logits, boxes)
    }

    /// The whole inference graph (docs/DESIGN.md §7 contract): `images` uint8 `[N, H, W, 3]`,
    /// `orig_sizes` int64 `[N, 2]` → `labels`, `scores`, `boxes` (top `max_detections`).
    /// `size` fixes `H × W`; `None` exports them dynamic, every shape then derived from
    /// `Shape` ops. Returns the builder for the caller to add metadata and write.
    pub fn emit(
        &self,
        size: Option<[usize; 2]>,
        lowering: codetr_model::Msda,
    ) -> Result<crate::onnx::GraphBuilder> {
        self.emit_with(size, lowering, codetr_model::Resize::Stretch)
    }

    /// [`Detector::emit`] for a preprocessing: `Letterbox` adds the input `valid_sizes` int64
    /// `[N, 2]` (each image's `[h, w]` top-left in the padded input) and masks the padding
    /// as the official model does (padding.rs); boxes stay in `orig_sizes` pixels.
    pub fn emit_with(
        &self,
        size: Option<[usize; 2]>,
        lowering: codetr_model::Msda,
        resize: codetr_model::Resize,
    ) -> Result<crate::onnx::GraphBuilder> {
        use crate::onnx::{Dim, ElemType, GraphBuilder};
        use codetr_model::{
            INPUT_IMAGES, INPUT_ORIG_SIZES, OUTPUT_BOXES, OUTPUT_LABELS, OUTPUT_SCORES,
        };
        let mut g = GraphBuilder::new("codino");
        let n = || Dim::Named("N".into());
        let (dh, dw) = match size {
            Some([h, w]) => (Dim::Fixed(h as i64), Dim::Fixed(w as i64)),
            None => (Dim::Named("H".into()), Dim::Named("W".into())),
        };
        let images = g.input(INPUT_IMAGES, ElemType::U8, &[n(), dh, dw, Dim::Fixed(3)])?;
        let sizes = g.input(INPUT_ORIG_SIZES, ElemType::I64, &[n(), Dim::Fixed(2)])?;
        let valid = match resize {
            codetr_model::Resize::Stretch => None,
            codetr_model::Resize::Letterbox => Some(g.input(
                codetr_model::INPUT_VALID_SIZES,
                ElemType::I64,
                &[n(), Dim::Fixed(2)],
            )?),
        };
        let (src, pos, levels, padding) =
            self.emit_features(&mut g, &images, size, valid.as_deref())?;
        let padding = padding.as_ref();
        let memory = self
            .encoder
            .emit(&mut g, &src, &pos, &levels, lowering, padding)?;
        let nl = self.decoder.layers.len();
        let (content, reference) = self.selection.emit(
            &mut g,
            &memory,
            &levels,
            &self.class_heads[nl],
            &self.box_heads[nl],
            padding,
        )?;
        let (hidden, last_ref) = self.decoder.emit(
            &mut g,
            &content,
            &reference,
            &memory,
            &levels,
            &self.box_heads[..nl],
            lowering,
            padding,
        )?;
        let last = nl.checked_sub(1).ok_or_else(|| Error::InvalidArgument {
            what: "export",
            message: "the model has no decoder layers".into(),
        })?;
        let logits = crate::onnx::emit::linear(&mut g, &self.class_heads[last], &hidden)?;
        let delta = self.box_heads[last].emit(&mut g, &hidden)?;
        let inv = super::decoder::emit_inverse_sigmoid(&mut g, &last_ref, 1e-3);
        let t = g.node("Add", &[&delta, &inv], vec![]);
        let boxes = g.node("Sigmoid", &[&t], vec![]);
        let k = self
            .config
            .max_detections
            .min(self.config.transformer.num_queries * self.config.num_classes);
        // Scores, top-k and pixel boxes stay fp32 in an fp16 export.
        g.begin_fp32();
        let (labels, scores, px) = super::postprocess::emit_postprocess(
            &mut g,
            &logits,
            &boxes,
            &sizes,
            self.config.num_classes,
            k,
        );
        g.end_fp32();
        let kd = Dim::Fixed(k as i64);
        g.output(&labels, OUTPUT_LABELS, ElemType::I64, &[n(), kd.clone()])?;
        g.output(&scores, OUTPUT_SCORES, ElemType::F32, &[n(), kd.clone()])?;
        g.output(&px, OUTPUT_BOXES, ElemType::F32, &[n(), kd, Dim::Fixed(4)])?;
        Ok(g)
    }

    /// Inference: forward + NMS-free postprocess with the configured `max_detections`.
    pub fn detect(
        &self,
        images: Tensor<4>,
        orig_sizes: &[[u32; 2]],
    ) -> Result<super::postprocess::Detections> {
        self.detect_padded(images, None, orig_sizes)
    }

    /// [`Detector::detect`] of a padded (letterboxed) batch: image i lies top-left in the
    /// canvas, `valid[i]` `[h, w]` pixels; its boxes come back in `orig_sizes[i]` pixels.
    pub fn detect_padded(
        &self,
        images: Tensor<4>,
        valid: Option<&[[usize; 2]]>,
        orig_sizes: &[[u32; 2]],
    ) -> Result<super::postprocess::Detections> {
        let b = images.dims()[0];
        if orig_sizes.len() != b {
            return Err(Error::InvalidArgument {
                what: "orig_sizes",
                message: format!("{} sizes for a batch of {b}", orig_sizes.len()),
            });
        }
        let out = match valid {
            Some(v) => self.forward_padded(images, v)?,
            None => self.forward(images)?,
        };
        self.postprocess(&out, orig_sizes)
    }

    /// The final decoder layer's top `max_detections` of a forward pass, in `orig_sizes`
    /// pixels.
    pub fn postprocess(
        &self,
        out: &DetectorOutput,
        orig_sizes: &[[u32; 2]],
    ) -> Result<super::postprocess::Detections> {
        let (Some(l), Some(bx)) = (out.logits.last(), out.boxes.last()) else {
            return Err(Error::InvalidArgument {
                what: "model",
                message: "no decoder layers".into(),
            });
        };
        Ok(super::postprocess::postprocess(
            l.clone(),
            bx.clone(),
            orig_sizes,
            self.config.max_detections,
        ))
    }
}
