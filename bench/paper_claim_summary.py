#!/usr/bin/env python3
"""Summary of bench/paper_claim_gpu.sh's runs (issue 24): held-out test AP per arm (mean ± std
over seeds), AP curves over steps, and whether each of the paper's comparisons exceeds two
standard errors of the difference.

Reads RUNS/<arm>-s<seed>/{eval.jsonl,log.jsonl}: eval.jsonl lines are `fit`'s validations,
val metrics at the top level (they pick best/) and the held-out test split's under "test".
Every number reported here is a test number; val appears only to say which step it picked.
Standard library only; the PNG needs matplotlib and is skipped without it.

Usage: paper_claim_summary.py RUNS STEPS [--out MD] [--json JSON] [--png PNG]
"""

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

ARMS = {
    "k0": "K = 0 (DINO alone)",
    "k1": "K = 1 (ATSS + positive queries)",
    "k2": "K = 2 (+ Faster-RCNN)",
    "k1-noaux": "K = 1, positive queries without the aux loss",
    "k1-nopq": "K = 1, aux loss without positive queries",
}
# (a, b, what the paper says): a − b > 0 is the paper's direction
COMPARISONS = [
    ("k1", "k0", "Table 2/3: one aux head helps"),
    ("k2", "k0", "Table 2/3: two aux heads help"),
    ("k2", "k1", "Table 3: the second head adds"),
    ("k1", "k1-noaux", "Table 9: the aux loss helps"),
    ("k1", "k1-nopq", "Table 9: the positive queries help"),
]


def read_jsonl(path):
    if not path.exists():
        return []
    out = []
    for line in path.read_text().splitlines():
        line = line.strip()
        if line:
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a kill: the run resumes before it
    return out


def run_record(d, steps):
    evals = read_jsonl(d / "eval.jsonl")
    log = read_jsonl(d / "log.jsonl")
    m = re.fullmatch(r"(.+)-s(\d+)", d.name)
    rec = {"run": d.name, "arm": m.group(1), "seed": int(m.group(2)),
           "steps_done": max((r["step"] for r in log), default=0),
           "finished": any(e.get("step") == steps for e in evals),
           "curve": [{"step": e["step"], "val_AP": e.get("AP"),
                      "test_AP": e.get("test", {}).get("AP"),
                      "test_AP50": e.get("test", {}).get("AP50")} for e in evals]}
    secs = [r["seconds"] for r in log if "seconds" in r]
    rec["median_s_per_step"] = statistics.median(secs) if secs else None
    with_test = [e for e in evals if "test" in e]
    if with_test:
        last = with_test[-1]
        best = max(with_test, key=lambda e: e.get("AP", -1))  # first maximum, as fit keeps it
        rec["final"] = {"step": last["step"], "test": last["test"], "val_AP": last.get("AP")}
        rec["picked_by_val"] = {"step": best["step"], "test": best["test"], "val_AP": best.get("AP")}
    return rec


def mean_std(xs):
    if not xs:
        return None, None
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else None)


def fmt(m, s, n):
    if m is None:
        return "–"
    return f"{m:.4f} ± {s:.4f} (n={n})" if s is not None else f"{m:.4f} (n={n})"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("runs", type=Path)
    ap.add_argument("steps", type=int)
    ap.add_argument("--out", type=Path)
    ap.add_argument("--json", type=Path)
    ap.add_argument("--png", type=Path)
    a = ap.parse_args()

    plan = json.loads((a.runs / "plan.json").read_text()) if (a.runs / "plan.json").exists() else {}
    runs = [run_record(d, a.steps) for d in sorted(a.runs.iterdir())
            if d.is_dir() and re.fullmatch(r".+-s\d+", d.name) and (d / "log.jsonl").exists()]
    arms = {}
    for r in runs:
        arms.setdefault(r["arm"], []).append(r)

    table = {}
    for arm, rs in arms.items():
        done = [r for r in rs if r["finished"] and "final" in r]
        final = [r["final"]["test"]["AP"] for r in done]
        picked = [r["picked_by_val"]["test"]["AP"] for r in done]
        fm, fs = mean_std(final)
        pm, ps = mean_std(picked)
        table[arm] = {"n": len(done), "runs": len(rs), "test_AP_final": final,
                      "mean": fm, "std": fs, "test_AP_picked_by_val": picked,
                      "picked_mean": pm, "picked_std": ps,
                      "median_s_per_step": statistics.median(
                          [r["median_s_per_step"] for r in rs if r["median_s_per_step"]] or [0])}

    comparisons = []
    for x, y, claim in COMPARISONS:
        tx, ty = table.get(x), table.get(y)
        if not tx or not ty or tx["n"] == 0 or ty["n"] == 0:
            continue
        diff = tx["mean"] - ty["mean"]
        if tx["std"] is None or ty["std"] is None:
            se, verdict = None, "needs ≥ 2 seeds per arm"
        else:
            se = math.sqrt(tx["std"] ** 2 / tx["n"] + ty["std"] ** 2 / ty["n"])
            if se == 0:
                verdict = "no seed spread"
            elif abs(diff) > 2 * se:
                verdict = "holds beyond noise" if diff > 0 else "reversed beyond noise"
            else:
                verdict = "within noise"
        comparisons.append({"a": x, "b": y, "claim": claim, "diff": diff, "se": se,
                            "z": diff / se if se else None, "verdict": verdict})

    # the AP curve: mean ± std over seeds of the test AP at each evaluated step
    curves = {}
    for arm, rs in arms.items():
        by_step = {}
        for r in rs:
            for p in r["curve"]:
                if p["test_AP"] is not None:
                    by_step.setdefault(p["step"], []).append(p["test_AP"])
        curves[arm] = {s: mean_std(v) + (len(v),) for s, v in sorted(by_step.items())}

    order = [k for k in ARMS if k in arms] + sorted(k for k in arms if k not in ARMS)
    lines = ["# The paper's claim in miniature (`bench/paper_claim_gpu.sh`)", ""]
    lines.append(f"Plan: {json.dumps(plan)}" if plan else "Plan: (no plan.json)")
    lines += ["", f"Runs found: {len(runs)}, finished at step {a.steps}: "
              f"{sum(r['finished'] for r in runs)}. Every AP below is on the held-out test split "
              "(val only picked `best/`).", ""]
    lines += ["| arm | what | finished / runs | test AP at the last step (mean ± std) | "
              "test AP at the val-picked step | median s/step |", "|---|---|---|---|---|---|"]
    for arm in order:
        t = table[arm]
        lines.append(f"| {arm} | {ARMS.get(arm, arm)} | {t['n']} / {t['runs']} | "
                     f"{fmt(t['mean'], t['std'], t['n'])} | "
                     f"{fmt(t['picked_mean'], t['picked_std'], t['n'])} | "
                     f"{t['median_s_per_step']:.3f} |")
    lines += ["", "## Comparisons (difference of means; beyond noise if |Δ| > 2 SE, "
              "SE = √(s²ₐ/nₐ + s²ᵦ/nᵦ))", "",
              "| paper | a − b | Δ test AP | SE | Δ / SE | verdict |", "|---|---|---|---|---|---|"]
    for c in comparisons:
        se = f"{c['se']:.4f}" if c["se"] is not None else "–"
        z = f"{c['z']:.2f}" if c["z"] is not None else "–"
        lines.append(f"| {c['claim']} | {c['a']} − {c['b']} | {c['diff']:+.4f} | {se} | {z} | "
                     f"{c['verdict']} |")
    steps_all = sorted({s for c in curves.values() for s in c})
    lines += ["", "## Test AP over steps (mean ± std over seeds)", "",
              "| step | " + " | ".join(order) + " |", "|---|" + "---|" * len(order)]
    for s in steps_all:
        cells = []
        for arm in order:
            v = curves[arm].get(s)
            cells.append(fmt(*v) if v else "–")
        lines.append(f"| {s} | " + " | ".join(cells) + " |")
    unfinished = [r["run"] + f" (step {r['steps_done']})" for r in runs if not r["finished"]]
    if unfinished:
        lines += ["", "Unfinished (not in the means): " + ", ".join(unfinished)]
    text = "\n".join(lines) + "\n"
    print(text)
    if a.out:
        a.out.write_text(text)
    if a.json:
        a.json.write_text(json.dumps({"plan": plan, "arms": table, "comparisons": comparisons,
                                      "runs": runs}, indent=1) + "\n")
    if a.png:
        try:
            import matplotlib
            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("no matplotlib: curves.png not drawn", file=sys.stderr)
            return
        fig, ax = plt.subplots(figsize=(8, 5))
        for arm in order:
            pts = [(s, m, sd or 0.0) for s, (m, sd, _) in curves[arm].items()]
            if not pts:
                continue
            xs, ms, sds = zip(*pts)
            ax.plot(xs, ms, marker="o", label=ARMS.get(arm, arm))
            ax.fill_between(xs, [m - s for m, s in zip(ms, sds)],
                            [m + s for m, s in zip(ms, sds)], alpha=0.15)
        ax.set_xlabel("step")
        ax.set_ylabel("test AP (mean ± std over seeds)")
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(a.png, dpi=110)


if __name__ == "__main__":
    main()
