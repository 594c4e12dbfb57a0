#!/usr/bin/env python3
"""Gathers bench/gpu_serve.sh's pieces into OUT/gpu_serve.json and OUT/gpu_serve.md (the
README section's tables), and prints the issue's goals with their measured ratios.

usage: gpu_summary.py WORK OUT PROVIDER PAPER_SIZE BIG TINY_BATCHES
"""

import json
import os
import re
import sys


def load(path):
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def rows(raw):
    return {r["batch"]: r for r in (raw or {}).get("results", [])}


def main() -> None:
    work, out, provider, size, big = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5])
    tiny_batches = [int(b) for b in sys.argv[6].split(",")]
    w = lambda name: os.path.join(work, name)
    res = {"provider": provider, "paper_size": size, "big_batch": big}
    try:
        res["machine"] = open(w("machine.txt")).read().split("\n")
    except OSError:
        pass

    # paper-r50 graphs: bound + latency
    paper = {}
    for v in ["grid-sample-fp32", "grid-sample-fp16", "gather-fp32", "gather-fp16"]:
        ex = load(w(f"export-{v}.json"))
        r = rows(load(w(f"raw-paper-{v}.json")))
        e = {}
        if ex:
            e["nodes"] = ex.get("nodes")
            e["intermediate"] = ex.get("intermediate")
        b1, bb = r.get(1, {}), r.get(big, {})
        e["b1_ms"] = b1.get("run_ms_p50")
        e[f"b{big}_ms"] = bb.get("run_ms_p50")
        e[f"b{big}_per_image_ms"] = bb.get("per_image_ms_p50")
        e["errors"] = {b: x["error"] for b, x in r.items() if "error" in x}
        if e["b1_ms"] and e[f"b{big}_per_image_ms"]:
            e[f"per_image_b{big}_over_b1"] = e[f"b{big}_per_image_ms"] / e["b1_ms"]
        paper[v] = e
    for name, f in [("grid-sample-fp32-tf32", "raw-paper-fp32-tf32.json")]:
        r = rows(load(w(f)))
        paper[name] = {"b1_ms": r.get(1, {}).get("run_ms_p50"), f"b{big}_per_image_ms": r.get(big, {}).get("per_image_ms_p50"),
                       "errors": {b: x["error"] for b, x in r.items() if "error" in x}}
    res["paper_r50"] = paper
    g32, g16 = paper["grid-sample-fp32"], paper["grid-sample-fp16"]
    if g32.get("b1_ms") and g16.get("b1_ms"):
        res["fp16_over_fp32_b1"] = g16["b1_ms"] / g32["b1_ms"]

    # tiny
    tiny = {}
    for name, f in [("fp32", "raw-tiny.json"), ("fp16", "raw-tiny-fp16.json"), ("fp32-heuristic", "raw-tiny-heuristic.json")]:
        r = rows(load(w(f)))
        tiny[name] = {str(b): {"images_per_s": r[b].get("images_per_s"), "run_ms_p50": r[b].get("run_ms_p50"), "error": r[b].get("error")}
                      for b in tiny_batches if b in r}
    res["tiny"] = tiny
    t = tiny.get("fp32", {})
    lo, hi = str(tiny_batches[0]), str(tiny_batches[-1])
    if t.get(lo, {}).get("images_per_s") and t.get(hi, {}).get("images_per_s"):
        res[f"tiny_images_per_s_b{hi}_over_b{lo}"] = t[hi]["images_per_s"] / t[lo]["images_per_s"]

    # profiles
    res["profiles"] = {}
    for f in sorted(os.listdir(work)):
        if f.startswith("prof-") and f.endswith(".summary.json"):
            res["profiles"][f[len("prof-"):-len(".summary.json")]] = load(w(f))

    # parity + AP
    par = {}
    for name in ["cpu", "cpu-gather", "gpu", "gpu-tf32", "gpu-no-tf32-env", "gpu-fp16", "cpu-fp16"]:
        ap = load(w(f"ap-{name}.json"))
        p = load(w(f"parity-{name}.json"))
        par[name] = {"AP": ap.get("AP") if ap else None, "AP50": ap.get("AP50") if ap else None, "vs_cpu": p}
    for name in ["cpu-gather", "gpu", "gpu-tf32", "gpu-no-tf32-env", "gpu-fp16", "cpu-fp16"]:
        if par[name]["AP"] is not None and par["cpu"]["AP"] is not None:
            par[name]["delta_AP_vs_cpu"] = par[name]["AP"] - par["cpu"]["AP"]
    if par["gpu-fp16"]["AP"] is not None and par["gpu"]["AP"] is not None:
        par["gpu-fp16"]["delta_AP_vs_gpu_fp32"] = par["gpu-fp16"]["AP"] - par["gpu"]["AP"]
    res["parity"] = par

    # drift: where the providers part, node by node (server/benches/drift.rs)
    drift = {}
    for f in sorted(os.listdir(work)):
        if f.startswith("drift-") and f.endswith(".json"):
            d = load(w(f)) or {}
            drift[f[len("drift-"):-len(".json")]] = {k: d.get(k) for k in ("images", "b", "model_b", "served_graph", "exposed_graph", "topk", "first_node_over")} | {
                "top_gain": [{k: n.get(k) for k in ("name", "op_type", "rel", "input_rel", "gain")} for n in (d.get("top_gain") or [])[:8]],
                "by_op": (d.get("by_op") or [])[:8]}
    res["drift"] = drift

    # saturation
    sat = load(w("sat.json"))
    raw_sat = rows(load(w("raw-sat.json")))
    if sat:
        a = [r for r in sat.get("results", []) if r.get("target", "a") == "a"]
        best = max((r.get("throughput", 0) for r in a), default=0)
        raw_best = max((r.get("images_per_s", 0) for r in raw_sat.values()), default=0)
        res["saturation"] = {"server_images_per_s": best, "raw_images_per_s": raw_best,
                             "server_over_raw": best / raw_best if raw_best else None,
                             "levels": [{"concurrency": r["level"].get("concurrency"), "throughput": r.get("throughput"),
                                         "p50_ms": r.get("latency_ms", {}).get("p50"), "p99_ms": r.get("latency_ms", {}).get("p99")} for r in a]}
    try:
        m = open(w("sat-metrics.txt")).read()
        inf = re.search(r"^codetr_inference_count_total (\S+)", m, re.M)
        exe = re.search(r"^codetr_execution_count_total (\S+)", m, re.M)
        if inf and exe and float(exe.group(1)) > 0:
            res.setdefault("saturation", {})["mean_batch"] = float(inf.group(1)) / float(exe.group(1))
    except OSError:
        pass

    # I/O binding (pinned buffers) vs plain Session::run, same graphs, same run
    io = {}
    pb, pp = rows(load(w("raw-paper-grid-sample-fp32.json"))), rows(load(w("raw-paper-plain.json")))
    for b in sorted(set(pb) & set(pp)):
        x, y = pb[b].get("run_ms_p50"), pp[b].get("run_ms_p50")
        io[f"paper_fp32_b{b}_ms"] = {"bound": x, "plain": y, "bound_over_plain": x / y if x and y else None}
    tb, tp = raw_sat, rows(load(w("raw-sat-plain.json")))
    for b in sorted(set(tb) & set(tp)):
        x, y = tb[b].get("images_per_s"), tp[b].get("images_per_s")
        io[f"tiny_b{b}_images_per_s"] = {"bound": x, "plain": y, "bound_over_plain": x / y if x and y else None}
    sp = load(w("sat-plain.json"))
    if sp:
        best_plain = max((r.get("throughput", 0) for r in sp.get("results", []) if r.get("target", "a") == "a"), default=0)
        x = res.get("saturation", {}).get("server_images_per_s")
        io["server_saturation_images_per_s"] = {"bound": x, "plain": best_plain,
                                                "bound_over_plain": x / best_plain if x and best_plain else None}
    res["io_binding"] = io

    # fault
    fm = load(w("fault-models.json"))
    res["fault"] = {
        "ready": fm is not None,
        "batching": fm.get("batching") if fm else None,
        "served_requests": os.path.exists(w("fault-served.txt")),
        "metrics": open(w("fault-metrics.txt")).read().splitlines() if os.path.exists(w("fault-metrics.txt")) else [],
        "log": open(w("fault-log.txt")).read().splitlines()[:8] if os.path.exists(w("fault-log.txt")) else [],
    }

    with open(os.path.join(out, "gpu_serve.json"), "w") as f:
        json.dump(res, f, indent=2)

    # markdown
    f = lambda x, d=2: "—" if x is None else (f"{x:.{d}f}" if isinstance(x, float) else str(x))
    md = [f"Provider `{provider}`; paper-r50 at {size}², batch {big}; machine: {' / '.join(res.get('machine', []))}", "",
          f"| paper-r50 graph | largest tensor / image | max batch < 2^31 | batch 1 ms | batch {big} ms / image | ratio |", "|---|---|---|---|---|---|"]
    for v, e in paper.items():
        i = (e.get("intermediate") or {})
        md.append(f"| {v} | {f((i.get('at_batch_1') or {}).get('elements'))} | {f(i.get('max_batch'))} | {f(e.get('b1_ms'))} | "
                  f"{f(e.get(f'b{big}_per_image_ms'))} | {f(e.get(f'per_image_b{big}_over_b1'))} |")
    md += ["", "| tiny (shipped) | " + " | ".join(f"b{b} img/s" for b in tiny_batches) + " |", "|---|" + "---|" * len(tiny_batches)]
    for name, t in tiny.items():
        md.append(f"| {name} | " + " | ".join(f((t.get(str(b)) or {}).get("images_per_s"), 0) for b in tiny_batches) + " |")
    md += ["", "| served through codetr-serve | AP | ΔAP vs CPU | max score diff by rank vs CPU | top-20 boxes IoU ≥ 0.99 |", "|---|---|---|---|---|"]
    for name, p in par.items():
        v = p.get("vs_cpu") or {}
        md.append(f"| {name} | {f(p.get('AP'), 4)} | {f(p.get('delta_AP_vs_cpu'), 4)} | {f(v.get('max_score_diff_by_rank'), 6)} | "
                  f"{v.get('top20_matched_iou99', '—')}/{v.get('top20_total', '—')} |")
    if drift:
        md += ["", "| drift (CPU → provider, every node) | images | served max score diff | selection top-k indices differing | first node over 1e-5 | largest gain (op, rel) |", "|---|---|---|---|---|---|"]
        for name, d in drift.items():
            sel = ", ".join(f"{t.get('name')}: {t.get('indices_differing'):g}" for t in (d.get("topk") or []) if t.get("indices_differing") is not None) or "—"
            first = (d.get("first_node_over") or {}).get("1e-5") or {}
            g = (d.get("top_gain") or [{}])[0]
            md.append(f"| {name} | {d.get('images')} | {f((d.get('served_graph') or {}).get('max_score_diff_by_rank'), 6)} | {sel} | "
                      f"{first.get('op_type', '—')} {first.get('name', '')} | {g.get('op_type', '—')} {f(g.get('rel'), 8)} |")
    s = res.get("saturation", {})
    md += ["", f"Saturation (tiny, batch {tiny_batches[-1]}): server {f(s.get('server_images_per_s'), 0)} img/s, raw ONNX Runtime "
           f"{f(s.get('raw_images_per_s'), 0)} img/s, ratio {f(s.get('server_over_raw'))}, mean batch {f(s.get('mean_batch'), 1)}."]
    md += ["", "| I/O binding, pinned (default) vs plain run | bound | plain | bound ÷ plain |", "|---|---|---|---|"]
    for name, v in io.items():
        md.append(f"| {name} | {f(v.get('bound'))} | {f(v.get('plain'))} | {f(v.get('bound_over_plain'), 3)} |")
    with open(os.path.join(out, "gpu_serve.md"), "w") as fh:
        fh.write("\n".join(md) + "\n")
    print("\n".join(md))
    print(json.dumps({k: res.get(k) for k in ["fp16_over_fp32_b1", f"tiny_images_per_s_b{hi}_over_b{lo}"]}))


if __name__ == "__main__":
    main()
