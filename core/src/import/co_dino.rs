//! The official Co-DINO state-dict names → our module paths.
//!
//! The official model (Sense-X/Co-DETR, and mmdetection 3.x `projects/CO-DETR`, which kept the
//! same module tree) is mmcv's transformer bricks: `attentions.N` / `ffns.0.layers…` / `norms.N`
//! inside each layer, `nn.MultiheadAttention`'s packed `in_proj_weight` for the decoder's
//! self-attention, and `nn.Sequential` indices for the box MLPs and the query-position MLP.
//! Each official key maps to one [`Target`]: a tensor of our [`Detector`](crate::model::Detector)
//! (possibly a row block of the official tensor), a tensor only training uses (auxiliary heads,
//! denoising embedding, positive-query projections), or a counter with no weight in it.

/// Where an official tensor goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// Our detector's tensor at this path, taking the whole official tensor.
    Detector(String),
    /// Our detector's q, k and v projection tensors at these paths: the three row blocks of
    /// the official packed tensor, in that order (`nn.MultiheadAttention`'s `in_proj_*`).
    DetectorPacked([String; 3]),
    /// Our detector's tensor at this path, from a Sense-X Swin patch merge whose last axis is
    /// block-major (`[(0,0), (1,0), (0,1), (1,1)] × C`): reordered to ours, channel-major
    /// (`C × [(0,0), (0,1), (1,0), (1,1)]`).
    DetectorMergeOrder(String),
    /// A Swin block's `relative_position_index` buffer: computed by the model, not loaded;
    /// the importer checks the file's against it.
    RelativeIndex,
    /// Used only in training; the group names it in the report.
    Training(&'static str),
    /// BatchNorm's `num_batches_tracked`: a counter, not a weight.
    Counter,
}

/// Matches the leading dotted segments of `key` against `pattern` (`#` = any number) and
/// returns the numbers matched and the rest of the key after the pattern.
fn matches<'k>(key: &'k str, pattern: &str) -> Option<(Vec<usize>, &'k str)> {
    let mut nums = Vec::new();
    let mut rest = key;
    for seg in pattern.split('.') {
        let (head, tail) = match rest.split_once('.') {
            Some((h, t)) => (h, t),
            None => (rest, ""),
        };
        if seg == "#" {
            nums.push(head.parse().ok()?);
        } else if seg != head {
            return None;
        }
        rest = tail;
    }
    Some((nums, rest))
}

/// Maps one official key (prefixes already stripped). `None`: a key of no Co-DINO part we know.
pub fn map_key(key: &str) -> Option<Target> {
    use Target::*;
    let det = |s: String| Some(Detector(s));
    if key.ends_with("num_batches_tracked") {
        return Some(Counter);
    }
    if let Some(t) = map_swin(key) {
        return Some(t);
    }
    if let Some((_, rest)) = matches(key, "backbone") {
        // mmdetection's ResNet names match torchvision's except the Sequential downsample.
        let ours = rest
            .replace(".downsample.0.", ".downsample.conv.")
            .replace(".downsample.1.", ".downsample.bn.");
        return det(format!("backbone.{ours}"));
    }
    if let Some((n, rest)) = matches(key, "neck.convs.#") {
        return det(format!("neck.convs.{}.{rest}", n[0]));
    }
    if let Some((n, rest)) = matches(key, "neck.extra_convs.#") {
        return det(format!("neck.extra.{}.{rest}", n[0]));
    }
    if let Some((_, rest)) = matches(key, "query_head.transformer") {
        return map_transformer(rest);
    }
    if let Some((n, rest)) = matches(key, "query_head.cls_branches.#") {
        return det(format!("class_heads.{}.{rest}", n[0]));
    }
    if let Some((n, rest)) = matches(key, "query_head.reg_branches.#.#") {
        // Sequential(Linear, ReLU, Linear, ReLU, Linear): the Linears sit at 0, 2, 4.
        if n[1] % 2 != 0 {
            return None;
        }
        return det(format!("box_heads.{}.layers.{}.{rest}", n[0], n[1] / 2));
    }
    for (prefix, group) in [
        // Sense-X keeps the denoising embedding on the head, mmdetection 3.x on its generator.
        ("query_head.label_embedding", "denoising label embedding"),
        (
            "query_head.dn_generator.label_embedding",
            "denoising label embedding",
        ),
        ("query_head.downsample", "auxiliary-head pyramid adapter"),
        ("rpn_head", "RPN head"),
        ("roi_head", "RoI head"),
        ("bbox_head", "ATSS head"),
    ] {
        if matches(key, prefix).is_some() {
            return Some(Training(group));
        }
    }
    None
}

/// Swin backbone keys, in both official layouts: mmdetection 3.x (`stages.N`, `attn.w_msa`,
/// `ffn.layers`, `patch_embed.projection`) and Sense-X (`layers.N`, `attn`, `mlp.fc1/fc2`,
/// `patch_embed.proj`, block-major patch merges). `None`: not a Swin key.
fn map_swin(key: &str) -> Option<Target> {
    use Target::*;
    let det = |s: String| Some(Detector(s));
    for (prefix, sensex) in [("backbone.stages.#", false), ("backbone.layers.#", true)] {
        let Some((n, rest)) = matches(key, prefix) else {
            continue;
        };
        let stage = n[0];
        if let Some((_, leaf)) = matches(rest, "downsample") {
            let ours = format!("backbone.stages.{stage}.downsample.{leaf}");
            return Some(if sensex {
                DetectorMergeOrder(ours)
            } else {
                Detector(ours)
            });
        }
        let (m, rest) = matches(rest, "blocks.#")?;
        let block = format!("backbone.stages.{stage}.blocks.{}", m[0]);
        let attn = rest
            .strip_prefix("attn.w_msa.")
            .or_else(|| rest.strip_prefix("attn."));
        if let Some(leaf) = attn {
            if leaf == "relative_position_index" {
                return Some(RelativeIndex);
            }
            return det(format!("{block}.attn.{leaf}"));
        }
        for (theirs, ours) in [
            ("ffn.layers.0.0.", "fc1."),
            ("ffn.layers.1.", "fc2."),
            ("mlp.fc1.", "fc1."),
            ("mlp.fc2.", "fc2."),
            ("norm1.", "norm1."),
            ("norm2.", "norm2."),
        ] {
            if let Some(leaf) = rest.strip_prefix(theirs) {
                return det(format!("{block}.{ours}{leaf}"));
            }
        }
        return None;
    }
    for theirs in [
        "backbone.patch_embed.projection.",
        "backbone.patch_embed.proj.",
    ] {
        if let Some(leaf) = key.strip_prefix(theirs) {
            return det(format!("backbone.patch_embed.proj.{leaf}"));
        }
    }
    if let Some(leaf) = key.strip_prefix("backbone.patch_embed.norm.") {
        return det(format!("backbone.patch_embed.norm.{leaf}"));
    }
    // `norm{i}`: the LayerNorm of output i (ResNet's `bn1` / `layerN` never match this).
    let rest = key.strip_prefix("backbone.norm")?;
    let (i, leaf) = rest.split_once('.')?;
    let i: usize = i.parse().ok()?;
    det(format!("backbone.norms.{i}.{leaf}"))
}

/// Keys under `query_head.transformer.`.
fn map_transformer(key: &str) -> Option<Target> {
    use Target::*;
    let det = |s: String| Some(Detector(s));
    match key {
        "level_embeds" => return det("level_embed".into()),
        "query_embed.weight" => return det("selection.query_embed".into()),
        _ => {}
    }
    for (prefix, ours) in [
        ("enc_output", "selection.enc_output"),
        ("enc_output_norm", "selection.enc_output_norm"),
        ("decoder.norm", "decoder.norm"),
    ] {
        if let Some((_, rest)) = matches(key, prefix) {
            return det(format!("{ours}.{rest}"));
        }
    }
    if let Some((n, rest)) = matches(key, "decoder.ref_point_head.#") {
        // Sequential(Linear, ReLU, Linear).
        if n[0] % 2 != 0 {
            return None;
        }
        return det(format!("decoder.ref_point_head.{}.{rest}", n[0] / 2));
    }
    for prefix in [
        "aux_pos_trans",
        "aux_pos_trans_norm",
        "pos_feats_trans",
        "pos_feats_norm",
        "head_pos_embed",
    ] {
        if matches(key, prefix).is_some() {
            return Some(Training("positive-query projections"));
        }
    }
    if let Some((n, rest)) = matches(key, "encoder.layers.#") {
        let l = n[0];
        let ours = match layer_part(rest, false)? {
            Part::Whole(p) => p,
            Part::Packed(_) => return None,
        };
        return det(format!("encoder.layers.{l}.{ours}"));
    }
    if let Some((n, rest)) = matches(key, "decoder.layers.#") {
        let l = n[0];
        return Some(match layer_part(rest, true)? {
            Part::Whole(p) => Detector(format!("decoder.layers.{l}.{p}")),
            Part::Packed(leaf) => DetectorPacked(
                ["q_proj", "k_proj", "v_proj"]
                    .map(|p| format!("decoder.layers.{l}.self_attn.{p}.{leaf}")),
            ),
        });
    }
    None
}

enum Part {
    Whole(String),
    /// The packed q/k/v projection; the leaf (`weight` / `bias`) of each of ours.
    Packed(&'static str),
}

/// Inside one mmcv `BaseTransformerLayer`. Encoder order: self_attn, norm, ffn, norm.
/// Decoder order: self_attn, norm, cross_attn, norm, ffn, norm.
fn layer_part(rest: &str, decoder: bool) -> Option<Part> {
    let whole = |s: String| Some(Part::Whole(s));
    if let Some((n, leaf)) = matches(rest, "attentions.#") {
        return match (decoder, n[0]) {
            (false, 0) => whole(format!("self_attn.{leaf}")),
            (true, 1) => whole(format!("cross_attn.{leaf}")),
            (true, 0) => {
                let (proj, kind) = leaf.split_once('.')?;
                if proj != "attn" {
                    return None;
                }
                match kind {
                    "in_proj_weight" => Some(Part::Packed("weight")),
                    "in_proj_bias" => Some(Part::Packed("bias")),
                    other => {
                        let (sub, p) = other.split_once('.')?;
                        (sub == "out_proj").then(|| Part::Whole(format!("self_attn.out_proj.{p}")))
                    }
                }
            }
            _ => None,
        };
    }
    if let Some((n, leaf)) = matches(rest, "ffns.0.layers.#") {
        // FFN: Sequential(Sequential(Linear, ReLU, Dropout), Linear, Dropout).
        return match n[0] {
            0 => {
                let (zero, p) = leaf.split_once('.')?;
                (zero == "0").then(|| Part::Whole(format!("ffn.linear1.{p}")))
            }
            1 => whole(format!("ffn.linear2.{leaf}")),
            _ => None,
        };
    }
    if let Some((n, leaf)) = matches(rest, "norms.#") {
        let ours = match (decoder, n[0]) {
            (_, 0) => "norm1",
            (false, 1) | (true, 2) => "ffn.norm",
            (true, 1) => "norm2",
            _ => return None,
        };
        return whole(format!("{ours}.{leaf}"));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::Target::*;
    use super::*;

    fn det(s: &str) -> Option<Target> {
        Some(Detector(s.to_string()))
    }

    #[test]
    fn swin_names_of_both_layouts_map_to_the_same_paths() {
        for (mmdet3, sensex, ours) in [
            (
                "backbone.patch_embed.projection.weight",
                "backbone.patch_embed.proj.weight",
                det("backbone.patch_embed.proj.weight"),
            ),
            (
                "backbone.stages.2.blocks.17.attn.w_msa.qkv.bias",
                "backbone.layers.2.blocks.17.attn.qkv.bias",
                det("backbone.stages.2.blocks.17.attn.qkv.bias"),
            ),
            (
                "backbone.stages.0.blocks.1.attn.w_msa.relative_position_bias_table",
                "backbone.layers.0.blocks.1.attn.relative_position_bias_table",
                det("backbone.stages.0.blocks.1.attn.relative_position_bias_table"),
            ),
            (
                "backbone.stages.0.blocks.1.attn.w_msa.relative_position_index",
                "backbone.layers.0.blocks.1.attn.relative_position_index",
                Some(RelativeIndex),
            ),
            (
                "backbone.stages.3.blocks.0.ffn.layers.0.0.weight",
                "backbone.layers.3.blocks.0.mlp.fc1.weight",
                det("backbone.stages.3.blocks.0.fc1.weight"),
            ),
            (
                "backbone.stages.3.blocks.0.ffn.layers.1.bias",
                "backbone.layers.3.blocks.0.mlp.fc2.bias",
                det("backbone.stages.3.blocks.0.fc2.bias"),
            ),
            (
                "backbone.stages.1.blocks.0.norm2.weight",
                "backbone.layers.1.blocks.0.norm2.weight",
                det("backbone.stages.1.blocks.0.norm2.weight"),
            ),
            (
                "backbone.norm3.bias",
                "backbone.norm3.bias",
                det("backbone.norms.3.bias"),
            ),
        ] {
            assert_eq!(map_key(mmdet3), ours, "{mmdet3}");
            assert_eq!(map_key(sensex), ours, "{sensex}");
        }
        // Patch merges: the same path, reordered from Sense-X's layout.
        assert_eq!(
            map_key("backbone.stages.1.downsample.reduction.weight"),
            det("backbone.stages.1.downsample.reduction.weight")
        );
        assert_eq!(
            map_key("backbone.layers.1.downsample.norm.bias"),
            Some(DetectorMergeOrder(
                "backbone.stages.1.downsample.norm.bias".into()
            ))
        );
        // A ResNet key is not taken for a Swin one.
        assert_eq!(
            map_key("backbone.layer1.0.conv1.weight"),
            det("backbone.layer1.0.conv1.weight")
        );
    }

    #[test]
    fn official_names_map_to_our_paths() {
        let cases = [
            (
                "backbone.layer2.0.downsample.1.running_var",
                det("backbone.layer2.0.downsample.bn.running_var"),
            ),
            ("backbone.bn1.num_batches_tracked", Some(Counter)),
            ("neck.convs.3.gn.weight", det("neck.convs.3.gn.weight")),
            (
                "neck.extra_convs.0.conv.weight",
                det("neck.extra.0.conv.weight"),
            ),
            ("query_head.transformer.level_embeds", det("level_embed")),
            (
                "query_head.transformer.query_embed.weight",
                det("selection.query_embed"),
            ),
            (
                "query_head.transformer.enc_output_norm.bias",
                det("selection.enc_output_norm.bias"),
            ),
            (
                "query_head.transformer.encoder.layers.5.attentions.0.value_proj.weight",
                det("encoder.layers.5.self_attn.value_proj.weight"),
            ),
            (
                "query_head.transformer.encoder.layers.0.ffns.0.layers.0.0.bias",
                det("encoder.layers.0.ffn.linear1.bias"),
            ),
            (
                "query_head.transformer.encoder.layers.0.ffns.0.layers.1.weight",
                det("encoder.layers.0.ffn.linear2.weight"),
            ),
            (
                "query_head.transformer.encoder.layers.1.norms.1.weight",
                det("encoder.layers.1.ffn.norm.weight"),
            ),
            (
                "query_head.transformer.decoder.layers.2.norms.1.bias",
                det("decoder.layers.2.norm2.bias"),
            ),
            (
                "query_head.transformer.decoder.layers.2.norms.2.bias",
                det("decoder.layers.2.ffn.norm.bias"),
            ),
            (
                "query_head.transformer.decoder.layers.3.attentions.1.sampling_offsets.bias",
                det("decoder.layers.3.cross_attn.sampling_offsets.bias"),
            ),
            (
                "query_head.transformer.decoder.layers.3.attentions.0.attn.out_proj.weight",
                det("decoder.layers.3.self_attn.out_proj.weight"),
            ),
            (
                "query_head.transformer.decoder.ref_point_head.2.weight",
                det("decoder.ref_point_head.1.weight"),
            ),
            (
                "query_head.transformer.decoder.norm.weight",
                det("decoder.norm.weight"),
            ),
            ("query_head.cls_branches.6.bias", det("class_heads.6.bias")),
            (
                "query_head.reg_branches.4.4.weight",
                det("box_heads.4.layers.2.weight"),
            ),
            (
                "query_head.label_embedding.weight",
                Some(Training("denoising label embedding")),
            ),
            (
                "query_head.dn_generator.label_embedding.weight",
                Some(Training("denoising label embedding")),
            ),
            (
                "query_head.transformer.aux_pos_trans.1.weight",
                Some(Training("positive-query projections")),
            ),
            (
                "roi_head.0.bbox_head.fc_cls.weight",
                Some(Training("RoI head")),
            ),
            // Not ours: a Sequential ReLU index, a third norm in an encoder layer, a stranger.
            ("query_head.reg_branches.0.1.weight", None),
            (
                "query_head.transformer.encoder.layers.0.norms.2.weight",
                None,
            ),
            (
                "query_head.transformer.encoder.layers.0.attentions.1.value_proj.weight",
                None,
            ),
            ("mask_head.conv.weight", None),
            ("backbonex.conv1.weight", None),
        ];
        for (k, want) in cases {
            assert_eq!(map_key(k), want, "{k}");
        }
    }

    #[test]
    fn packed_self_attention_splits_into_q_k_v() {
        let proj = |l: usize, leaf: &str| {
            ["q_proj", "k_proj", "v_proj"]
                .map(|p| format!("decoder.layers.{l}.self_attn.{p}.{leaf}"))
        };
        assert_eq!(
            map_key("query_head.transformer.decoder.layers.1.attentions.0.attn.in_proj_weight"),
            Some(DetectorPacked(proj(1, "weight")))
        );
        assert_eq!(
            map_key("query_head.transformer.decoder.layers.0.attentions.0.attn.in_proj_bias"),
            Some(DetectorPacked(proj(0, "bias")))
        );
        assert_eq!(
            map_key("query_head.transformer.decoder.layers.0.attentions.0.attn.k_proj.weight"),
            None
        );
    }
}
