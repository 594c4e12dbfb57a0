#!/usr/bin/env python3
"""Summarises an ONNX Runtime profile (Chrome trace JSON from `--profile`): per-op kernel
time per run, the top nodes, and which provider ran each op, over the runs after the first
`--skip` (warm-up: algorithm search, arena growth).

  ort_profile.py PROFILE.json [--skip 3] [--top 15]   → JSON on stdout
"""

import argparse
import collections
import json


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("profile")
    p.add_argument("--skip", type=int, default=3)
    p.add_argument("--top", type=int, default=15)
    a = p.parse_args()
    ev = json.load(open(a.profile))
    runs = sorted((e for e in ev if e.get("name") == "model_run"), key=lambda e: e["ts"])
    timed = runs[a.skip:] or runs
    t0 = timed[0]["ts"] if timed else 0
    nruns = max(1, len(timed))
    by_op = collections.Counter()
    by_node = collections.Counter()
    provider = {}
    for e in ev:
        if e.get("cat") != "Node" or not e.get("name", "").endswith("_kernel_time") or e["ts"] < t0:
            continue
        args = e.get("args", {})
        op = args.get("op_name", "?")
        by_op[op] += e["dur"]
        by_node[(e["name"][: -len("_kernel_time")], op)] += e["dur"]
        provider.setdefault(op, set()).add(args.get("provider", "?"))
    run_ms = [r["dur"] / 1e3 for r in timed]
    total = sum(by_op.values()) / nruns / 1e3
    out = {
        "runs": nruns,
        "run_ms_mean": sum(run_ms) / len(run_ms) if run_ms else None,
        "kernel_ms_per_run": total,
        "ops_ms_per_run": {k: round(v / nruns / 1e3, 4) for k, v in by_op.most_common(a.top)},
        "top_nodes_ms_per_run": [[n, op, round(v / nruns / 1e3, 4)] for (n, op), v in by_node.most_common(a.top)],
        "providers": {k: sorted(v) for k, v in provider.items()},
    }
    print(json.dumps(out))


if __name__ == "__main__":
    main()
