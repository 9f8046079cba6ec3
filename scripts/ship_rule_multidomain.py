"""Issue 29: does a PANet++ checkpoint retrained on the current multidomain split replace the shipped one?

    python scripts/ship_rule_multidomain.py --candidate runs/md_all runs/md_all_val.json \
        --candidate runs/md_all2 runs/md_all2_val.json --out docs/results_md_retrain.json

Each val JSON is `python -m core evaluate-multidomain --part val --checkpoint old SHIPPED --checkpoint new
CANDIDATE --shots 5 --episodes 40 --no-mismatched` (the same seeded episodes for both). The rule, written down
before the first candidate's figures were read: over the sets both checkpoints trained on with the same split
(CVC-ClinicDB excluded: the shipped checkpoint trained on images now in its val/test parts; the sets the shipped
one never saw excluded too), the candidate's mean 5-shot Dice is not lower and no set loses more than 0.01.
The first candidate that passes ships; if none does, the shipped one stays.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

RULE = ("val parts, 5 supports, the same seeded episodes for both; over the sets both checkpoints trained on with the "
        "same split (CVC-ClinicDB excluded: the shipped checkpoint trained on images now in its val/test parts; the "
        "sets the shipped one never saw excluded too): the candidate's mean 5-shot Dice is not lower and no set "
        "loses more than 0.01")
MAX_LOSS = 0.01


def judge(table: dict, shipped_saw: set[str], resplit: set[str]) -> dict:
    """Per-set (shipped, candidate) val Dice, the compared sets, the mean change and the worst set."""
    sets = {n: (r["old"]["k5"]["dice"], r["new"]["k5"]["dice"]) for n, r in table.items()}
    compared = [n for n in sets if n not in resplit and (n == "busi" or n in shipped_saw)]
    gains = {n: sets[n][1] - sets[n][0] for n in compared}
    mean = sum(gains.values()) / len(gains)
    worst = min(gains, key=gains.get)
    return {"per_set": {n: {"shipped": a, "candidate": b} for n, (a, b) in sets.items()}, "compared": compared,
            "mean_change": mean, "worst_set": worst, "worst_change": gains[worst],
            "passes": mean >= 0 and gains[worst] >= -MAX_LOSS}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--candidate", nargs=2, action="append", metavar=("CHECKPOINT", "VAL_JSON"), required=True)
    p.add_argument("--shipped", default="checkpoints/panet_lite0_multidomain")
    p.add_argument("--out", default="docs/results_md_retrain.json")
    args = p.parse_args(argv)
    meta = json.loads(Path(args.shipped).with_suffix(".json").read_text())
    shipped_saw = set(meta["data"]["train_sets"])
    out = {"rule": RULE, "shipped": args.shipped, "candidates": [], "ships": None}
    for ckpt, val in args.candidate:
        doc = json.loads(Path(val).read_text())
        if doc.get("part") != "val":
            raise SystemExit(f"{val}: not a val-part evaluation")
        cand = json.loads(Path(ckpt).with_suffix(".json").read_text())
        verdict = judge(doc["table"], shipped_saw, {"cvc_clinicdb_polyp"})
        out["candidates"].append({"checkpoint": ckpt, "command": doc["command"], "episodes": doc["episodes"],
                                  "train_sets": cand["data"]["train_sets"], "best_epoch": cand.get("epoch"),
                                  "train_seconds": cand.get("train_seconds"), **verdict})
        if verdict["passes"] and out["ships"] is None:
            out["ships"] = ckpt
        print(f"{ckpt}: mean change {verdict['mean_change']:+.4f}, worst {verdict['worst_set']} "
              f"{verdict['worst_change']:+.4f}: {'passes' if verdict['passes'] else 'fails'}")
    Path(args.out).write_text(json.dumps(out, indent=1))
    print(f"ships: {out['ships'] or 'none (the shipped checkpoint stays)'}; written: {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
