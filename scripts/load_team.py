"""Load on a team server: two `python app.py --db URL` processes on one real PostgreSQL, N annotators per
process, each claiming and deciding through the team API (gradio_client, signed in) as fast as it can.

    python scripts/load_team.py                      # 10 annotators (5 per process) x 50 decisions
    python scripts/load_team.py --per-process 2 --decisions 5 --out /tmp/x.json   # a quick run

Reports p50/p95 per decision (the team_decide call, and claim + decide), errors, and checks from the
database that no decision was lost or made twice. A throwaway PostgreSQL cluster is started and removed.
"""
from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def annotator(app, user: str, project: str, n: int, out: dict) -> None:
    from tests.test_webapp_team import _png_b64

    client = app.client(user)
    rng = random.Random(user)
    mine = out[user] = {"decide_ms": [], "claim_decide_ms": [], "errors": [], "images": []}
    for _ in range(n):
        try:
            t0 = time.perf_counter()
            job = client.predict(project, api_name="/team_claim")
            if not job:
                mine["errors"].append("queue empty before the 50th decision")
                break
            t1 = time.perf_counter()
            if rng.random() < 0.5:
                client.predict(project, job["rel_path"], "no lesion", job["token"], "", api_name="/team_decide")
            else:
                m = np.zeros((40, 50), bool)
                m[5:20, 10:10 + rng.randrange(5, 30)] = True
                client.predict(project, job["rel_path"], "correct", job["token"], _png_b64(m), api_name="/team_decide")
            t2 = time.perf_counter()
            mine["decide_ms"].append((t2 - t1) * 1000)
            mine["claim_decide_ms"].append((t2 - t0) * 1000)
            mine["images"].append(job["rel_path"])
        except Exception as exc:      # counted and reported: the target is zero
            mine["errors"].append(f"{type(exc).__name__}: {exc}")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-process", type=int, default=5)
    p.add_argument("--decisions", type=int, default=50)
    p.add_argument("--out", default="docs/results_team_load.json")
    args = p.parse_args(argv)
    from core.annotate import db
    from core.annotate.store import ProjectStore
    from tests.postgres import Cluster
    from tests.conftest import phantom_folder
    from tests.team_apps import App, make_project

    users = [f"ann{i}" for i in range(1, 2 * args.per_process + 1)]
    total = len(users) * args.decisions
    cluster = Cluster()
    tmp = Path(tempfile.mkdtemp(prefix="panet_load_"))
    apps = []
    try:
        url = cluster.new_database()
        data = phantom_folder(tmp / "data", total + 20)
        make_project(url, tmp / "out", "load", data)
        apps.append(App(url, data, tmp / "out").wait())
        apps.append(App(url, data, tmp / "out").wait())
        out: dict = {}
        threads = [threading.Thread(target=annotator, args=(apps[i % 2], u, "load", args.decisions, out))
                   for i, u in enumerate(users)]
        t0 = time.perf_counter()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
        store = ProjectStore(tmp / "out", "load", db_url=url)
        decisions = [e for e in store.events() if e["action"] in ("no lesion", "corrected")]
        decided_images = [e["image_id"] for e in decisions]
        per = [x for u in users for x in out[u]["decide_ms"]]
        both = [x for u in users for x in out[u]["claim_decide_ms"]]
        result = {
            "command": " ".join(["python scripts/load_team.py", *(sys.argv[1:] if argv is None else argv)]),
            "processes": 2, "annotators": len(users), "decisions_each": args.decisions,
            "decisions_made": len(per), "errors": sum(len(out[u]["errors"]) for u in users),
            "error_examples": [e for u in users for e in out[u]["errors"]][:5],
            "decisions_in_database": len(decisions),
            "images_decided_twice": len(decided_images) - len(set(decided_images)),
            "lost": len(per) - len(decisions),
            "same_image_to_two_annotators": len([x for u in users for x in out[u]["images"]])
            - len({x for u in users for x in out[u]["images"]}),
            "decide_ms_p50": round(float(np.percentile(per, 50)), 1) if per else None,
            "decide_ms_p95": round(float(np.percentile(per, 95)), 1) if per else None,
            "claim_and_decide_ms_p50": round(float(np.percentile(both, 50)), 1) if both else None,
            "claim_and_decide_ms_p95": round(float(np.percentile(both, 95)), 1) if both else None,
            "decisions_per_s": round(len(per) / wall, 1), "wall_s": round(wall, 1),
            "machine": "2 CPU cores (the two apps, the clients and PostgreSQL share them)"}
        print(json.dumps(result, indent=2))
        if args.out:
            Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
        return 0 if result["errors"] == result["lost"] == result["images_decided_twice"] == 0 else 1
    finally:
        for a in apps:
            a.stop()
        for u in list(db._engines):
            if u.startswith("postgresql"):
                db.dispose(u)
        cluster.stop()


if __name__ == "__main__":
    sys.exit(main())
