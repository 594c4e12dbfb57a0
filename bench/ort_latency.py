#!/usr/bin/env python3
"""Times ONNX graphs in ONNX Runtime CPU (same process, same thread count, alternating runs)
and prints JSON: node count and median latency per graph. Usage:
  ort_latency.py THREADS RUNS name=path[:codetr|:hf] ...
`codetr` graphs take uint8 images + orig_sizes; `hf` graphs take float pixel_values."""

import json
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort


def main() -> None:
    threads, runs = int(sys.argv[1]), int(sys.argv[2])
    graphs = []
    for arg in sys.argv[3:]:
        name, rest = arg.split("=", 1)
        path, kind = rest.rsplit(":", 1)
        m = onnx.load(path, load_external_data=False)
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(path, opts, providers=["CPUExecutionProvider"])
        shape = sess.get_inputs()[0].shape
        h, w = (shape[1], shape[2]) if kind == "codetr" else (shape[2], shape[3])
        rng = np.random.default_rng(0)
        if kind == "codetr":
            feeds = {"images": rng.integers(0, 256, (1, h, w, 3), dtype=np.uint8),
                     "orig_sizes": np.array([[h, w]], dtype=np.int64)}
        else:
            feeds = {sess.get_inputs()[0].name: rng.standard_normal((1, 3, h, w)).astype(np.float32)}
        graphs.append(dict(name=name, sess=sess, feeds=feeds, nodes=len(m.graph.node), size=[h, w], times=[]))
    for g in graphs:  # warm-up
        g["sess"].run(None, g["feeds"])
    for _ in range(runs):
        for g in graphs:  # alternate so drift hits every graph alike
            t0 = time.perf_counter()
            g["sess"].run(None, g["feeds"])
            g["times"].append(time.perf_counter() - t0)
    out = {g["name"]: {"nodes": g["nodes"], "input": g["size"], "median_s": statistics.median(g["times"]),
                       "runs": g["times"]} for g in graphs}
    out["threads"] = threads
    out["onnxruntime"] = ort.__version__
    print(json.dumps(out))


if __name__ == "__main__":
    main()
