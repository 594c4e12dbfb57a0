"""Summary of bench/gpu_backend.sh: each op's time per implementation and its ratio to
PyTorch's in the same run (issue 25's goal: Burn step ÷ PyTorch step ≤ 1.5).

Usage: python bench/gpu_backend_summary.py OUT_DIR  (reads OUT_DIR/*.jsonl, prints JSON)
"""

import json
import pathlib
import sys


def main():
    out = pathlib.Path(sys.argv[1])
    rows = {}
    extra = {}
    for f in sorted(out.glob("*.jsonl")):
        for line in f.read_text().splitlines():
            try:
                r = json.loads(line)
            except json.JSONDecodeError:
                continue
            if "op" not in r:
                extra.setdefault(r.get("impl", f.stem), {}).update(r)
                continue
            rows.setdefault(r["op"], {})[r["impl"]] = r
            if "build" in r:  # which Burn features made the rows (autotune, fusion)
                extra.setdefault("builds", {})[r["impl"]] = r["build"]
    table = {}
    for op, by_impl in rows.items():
        peer = by_impl.get("torch", {})
        entry = {}
        for impl, r in by_impl.items():
            e = {k: v for k, v in r.items() if k in ("fwd_s", "fwd_bwd_s") or k.endswith("_diff")}
            for k in ("fwd_s", "fwd_bwd_s"):
                if impl != "torch" and k in r and peer.get(k):
                    e[k.replace("_s", "_over_torch")] = r[k] / peer[k]
            e["shape"] = r.get("shape")
            entry[impl] = e
        table[op] = entry
    missing = sorted(p.stem for p in out.glob("*.err") if p.stat().st_size and not (out / (p.stem + ".jsonl")).stat().st_size)
    print(json.dumps({"ops": table, "extra": extra, "steps_without_rows": missing}, indent=1))


if __name__ == "__main__":
    main()
