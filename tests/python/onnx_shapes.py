#!/usr/bin/env python3
"""Shapes of every value of an ONNX graph at a concrete batch (and input size, for a graph
exported with --dynamic-size), by onnx's own shape inference with data propagation: the
independent reference the exporter's shape inference (exporter/src/shapes.rs) is tested
against. Prints JSON {value name: [dims]} for the values whose every dim is known.

usage: onnx_shapes.py MODEL.onnx BATCH [H W]
"""

import json
import sys

import onnx


def main() -> None:
    path, batch = sys.argv[1], int(sys.argv[2])
    hw = [int(sys.argv[3]), int(sys.argv[4])] if len(sys.argv) > 4 else None
    model = onnx.load(path)
    for inp in model.graph.input:
        dims = inp.type.tensor_type.shape.dim
        for i, d in enumerate(dims):
            if d.HasField("dim_value"):
                continue
            if i == 0:
                d.dim_value = batch
            elif hw is not None and len(dims) == 4 and i in (1, 2):
                d.dim_value = hw[i - 1]
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    out = {}
    for v in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = v.type.tensor_type.shape.dim
        if v.type.tensor_type.HasField("shape") and all(d.HasField("dim_value") for d in dims):
            out[v.name] = [d.dim_value for d in dims]
    json.dump(out, sys.stdout)


if __name__ == "__main__":
    main()
