#!/usr/bin/env python3
"""Reference COCO bbox evaluation with pycocotools.

Usage: coco_eval_ref.py GT.json DT.json

Prints one JSON object with pycocotools' 12 `COCOeval.stats` under the keys codetr uses
(AP, AP50, AP75, APs, APm, APl, AR1, AR10, AR100, ARs, ARm, ARl). Everything pycocotools
prints itself goes to stderr. An empty detection list (which pycocotools' loadRes rejects)
is evaluated as "no detections" by giving COCOeval an empty result set.
"""
import contextlib
import json
import sys

KEYS = ["AP", "AP50", "AP75", "APs", "APm", "APl",
        "AR1", "AR10", "AR100", "ARs", "ARm", "ARl"]


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    gt_path, dt_path = sys.argv[1], sys.argv[2]
    with contextlib.redirect_stdout(sys.stderr):
        from pycocotools.coco import COCO
        from pycocotools.cocoeval import COCOeval

        gt = COCO(gt_path)
        with open(dt_path) as f:
            dets = json.load(f)
        if dets:
            dt = gt.loadRes(dets)
        else:
            dt = COCO()
            dt.dataset = {"images": gt.dataset["images"],
                          "categories": gt.dataset["categories"],
                          "annotations": []}
            dt.createIndex()
        ev = COCOeval(gt, dt, iouType="bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    print(json.dumps({k: float(v) for k, v in zip(KEYS, ev.stats)}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
