"""Click-to-overlay latency of the web app, through its own HTTP API (gradio_client).

    python scripts/benchmark_webapp.py [--data $BUSI_DIR] [--shots 5] [--repeats 20]

Launches the app with the shipped checkpoints, fills `--shots` support slots (BUSI test images with their
ground-truth masks, or the synthetic phantoms without data), and times repeated Segment calls from the
client's request to the response with the overlay. Writes docs/results_webapp.json and docs/results.md.
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--data", default=None)
    p.add_argument("--shots", type=int, default=5)
    p.add_argument("--repeats", type=int, default=20)
    args = p.parse_args()
    from gradio_client import Client, handle_file

    from core.data.dataset import load_pair
    from core.data.discover import discover
    from core.data.sets import default_data_dir
    from core.data.split import load_split
    from core.evaluation.report import DOCS, render
    from core.phantom import demo_set
    from webapp.context import AppConfig, AppContext
    from webapp.ui import build_app

    tmp = Path(tempfile.mkdtemp())
    data = Path(args.data) if args.data else default_data_dir()
    if data:
        found = {s.rel_path: s for s in discover(data).samples}
        test = [n for n in load_split()["test"] if not n.startswith("normal")]
        pairs = [load_pair(found[n]) for n in test[: args.shots + 1]]
    else:
        pairs = [(ph.image, ph.mask) for ph in demo_set(args.shots + 1)]
    editors = []
    for i, (img, mask) in enumerate(pairs[: args.shots]):
        layer = np.zeros((*mask.shape, 4), np.uint8)
        layer[mask] = (255, 0, 0, 128)
        Image.fromarray(img).save(tmp / f"s{i}.png")
        Image.fromarray(layer).save(tmp / f"l{i}.png")
        editors.append({"background": handle_file(str(tmp / f"s{i}.png")),
                        "layers": [handle_file(str(tmp / f"l{i}.png"))], "composite": None})
    editors += [{"background": None, "layers": [], "composite": None}] * (5 - len(editors))
    query = pairs[-1][0]
    Image.fromarray(query).save(tmp / "q.png")
    ctx = AppContext(AppConfig(data_dir=None, output_dir=tmp / "out"))
    demo = build_app(ctx)
    demo.launch(prevent_thread_lock=True, quiet=True)
    client = Client(demo.local_url, verbose=False)
    times = []
    for _ in range(args.repeats + 1):
        t = time.perf_counter()
        client.predict(ctx.default_checkpoint("panet"), *editors, *([None] * 5), handle_file(str(tmp / "q.png")),
                       0.5, 0.4, api_name="/segment")
        times.append(1000 * (time.perf_counter() - t))
    demo.close()
    rest = sorted(times[1:])
    res = {"shots": args.shots, "repeats": args.repeats, "query_size": f"{query.shape[1]}x{query.shape[0]}",
           "first_ms": round(times[0]), "median_ms": round(statistics.median(rest)),
           "p90_ms": round(rest[int(0.9 * (len(rest) - 1))]), "source": "BUSI test split" if data else "phantoms"}
    (DOCS / "results_webapp.json").write_text(json.dumps(res, indent=2))
    print(json.dumps(res, indent=2))
    print(f"written: {render()}")


if __name__ == "__main__":
    main()
