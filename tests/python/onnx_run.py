#!/usr/bin/env python3
"""Checks an ONNX file with onnx.checker (full check, strict shape inference) and runs it in
ONNX Runtime (CPU). Inputs come as JSON {name: {"dtype": ..., "shape": [...], "data": [...]}};
prints JSON {"outputs": {name: {"shape": [...], "data": [...]}}, "metadata": {...},
"ops": [...], "domains": [...]} on stdout.

Used by the Rust tests (CODETR_PYTHON); onnx and onnxruntime come from requirements.txt.
"""

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort


def main() -> None:
    model_path, inputs_path = sys.argv[1], sys.argv[2]
    model = onnx.load(model_path)
    onnx.checker.check_model(model, full_check=True)
    onnx.shape_inference.infer_shapes(model, check_type=True, strict_mode=True)
    with open(inputs_path) as f:
        spec = json.load(f)
    feeds = {k: np.array(v["data"], dtype=v["dtype"]).reshape(v["shape"]) for k, v in spec.items()}
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    outs = sess.run(names, feeds)
    print(json.dumps({
        "outputs": {n: {"shape": list(o.shape), "data": o.reshape(-1).tolist()} for n, o in zip(names, outs)},
        "metadata": {p.key: p.value for p in model.metadata_props},
        "ops": sorted({n.op_type for n in model.graph.node}),
        "domains": sorted({n.domain for n in model.graph.node} | {o.domain for o in model.opset_import}),
    }))


if __name__ == "__main__":
    main()
