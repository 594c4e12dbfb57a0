#!/usr/bin/env python3
"""Peer for bench/onnx_latency.sh: HF transformers' DeformableDetrForObjectDetection with the
paper-r50 dimensions (ResNet-50, 5 levels, d 256, 8 heads, 4 points, 6 + 6 layers, FFN 2048,
900 queries, two-stage + box refinement, 80 classes), random weights, exported with HF's own
path (torch.onnx.export, opset 17) at a fixed 800×800 input. Its graph stops at logits and
boxes (no top-k / scaling): slightly less work than ours.

Needs torch + transformers (tests/reference/requirements.txt); never run by CI.
"""

import sys

import torch
from transformers import DeformableDetrConfig, DeformableDetrForObjectDetection, ResNetConfig


def main() -> None:
    out, size = sys.argv[1], int(sys.argv[2]) if len(sys.argv) > 2 else 800
    torch.manual_seed(0)
    backbone = ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"])
    cfg = DeformableDetrConfig(
        use_timm_backbone=False, backbone=None, backbone_config=backbone,
        use_pretrained_backbone=False, num_labels=80, d_model=256,
        encoder_layers=6, decoder_layers=6, encoder_attention_heads=8, decoder_attention_heads=8,
        encoder_ffn_dim=2048, decoder_ffn_dim=2048, encoder_n_points=4, decoder_n_points=4,
        num_feature_levels=5, two_stage=True, with_box_refine=True,
        two_stage_num_proposals=900, num_queries=900, disable_custom_kernels=True,
    )
    model = DeformableDetrForObjectDetection(cfg).eval()

    class Wrap(torch.nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, pixel_values):
            o = self.m(pixel_values=pixel_values)
            return o.logits, o.pred_boxes

    x = torch.randn(1, 3, size, size)
    with torch.no_grad():
        torch.onnx.export(Wrap(model), (x,), out, opset_version=17, input_names=["pixel_values"],
                          output_names=["logits", "boxes"], dynamo=False)
    # torch.onnx gives HF's GridSample a float64 grid (its offset normaliser comes from int64
    # spatial shapes), which ONNX Runtime has no kernel for: cast those grids back to float32,
    # the smallest change that makes the peer run at all. Count it.
    import onnx
    from onnx import TensorProto, helper

    m = onnx.load(out)
    inferred = onnx.shape_inference.infer_shapes(m)
    types = {v.name: v.type.tensor_type.elem_type for v in inferred.graph.value_info}
    fixed = 0
    nodes = []
    for n in m.graph.node:
        if n.op_type == "GridSample" and types.get(n.input[1]) == TensorProto.DOUBLE:
            cast_out = n.input[1] + "_f32"
            nodes.append(helper.make_node("Cast", [n.input[1]], [cast_out], to=TensorProto.FLOAT))
            n.input[1] = cast_out
            fixed += 1
        nodes.append(n)
    del m.graph.node[:]
    m.graph.node.extend(nodes)
    onnx.save(m, out)
    print(out, f"(float64 GridSample grids cast to float32: {fixed})", file=sys.stderr)
    print(out)


if __name__ == "__main__":
    main()
