#!/usr/bin/env python3
"""Checks an ONNX file with onnx.checker (full check, strict shape inference) and runs it in
ONNX Runtime (CPU). Inputs come as JSON {name: {"dtype": ..., "shape": [...], "data": [...]}};
prints JSON {"outputs": {name: {"shape": [...], "data": [...]}}, "metadata": {...},
"ops": [...], "domains": [...]} on stdout. A JSON list of such input sets runs each through
one session and prints {"runs": [outputs, ...], "metadata": ..., ...}: a session costs far
more than a run for large graphs (the gather lowering of `paper-r50` takes ~40 s to create,
ONNX Runtime's memory-reuse planner; docs/DESIGN.md), so tests that run one graph at several
batch sizes ask once.

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
    sess = ort.InferenceSession(model_path, providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]

    def run(feed_spec: dict) -> dict:
        feeds = {k: np.array(v["data"], dtype=v["dtype"]).reshape(v["shape"]) for k, v in feed_spec.items()}
        outs = sess.run(names, feeds)
        return {n: {"shape": list(o.shape), "data": o.reshape(-1).tolist()} for n, o in zip(names, outs)}

    result = {"runs": [run(s) for s in spec]} if isinstance(spec, list) else {"outputs": run(spec)}
    print(json.dumps({
        **result,
        "metadata": {p.key: p.value for p in model.metadata_props},
        "ops": sorted({n.op_type for n in model.graph.node}),
        "domains": sorted({n.domain for n in model.graph.node} | {o.domain for o in model.opset_import}),
    }))


if __name__ == "__main__":
    main()
