#!/usr/bin/env python3
"""Seconds ONNX Runtime (CPU provider) takes to create a session for each graph, with the
session options the server uses (all graph optimisations, memory reuse on) and with memory
reuse off, the option that isolates the allocation planner's share. Each setting is created
REPS times; the median is reported. Prints JSON.

    python bench/ort_session_init.py REPS name=path.onnx [name=path.onnx ...]
"""

import json
import statistics
import sys
import time

import onnx
import onnxruntime as ort


def create_seconds(path: str, mem_reuse: bool) -> float:
    so = ort.SessionOptions()
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    so.enable_mem_reuse = mem_reuse
    t = time.perf_counter()
    ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    return time.perf_counter() - t


def main() -> None:
    reps = int(sys.argv[1])
    out = {"onnxruntime": ort.__version__, "reps": reps, "graphs": {}}
    for arg in sys.argv[2:]:
        name, path = arg.split("=", 1)
        nodes = len(onnx.load(path, load_external_data=False).graph.node)
        row = {"nodes": nodes}
        for key, reuse in (("mem_reuse_on_s", True), ("mem_reuse_off_s", False)):
            runs = [create_seconds(path, reuse) for _ in range(reps)]
            row[key] = statistics.median(runs)
            row[key + "_runs"] = runs
        out["graphs"][name] = row
        print(f"{name}: {nodes} nodes, session {row['mem_reuse_on_s']:.2f} s "
              f"(memory reuse off: {row['mem_reuse_off_s']:.2f} s)", file=sys.stderr, flush=True)
    print(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
