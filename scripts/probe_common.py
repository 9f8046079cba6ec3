"""What the outside probes of the web app share (scripts/probe_hardening.py, probe_integrity.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

EMPTY = {"background": None, "layers": [], "composite": None}


def rss_mb() -> float:
    """This process's resident memory (the app runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def phantom_inputs(tmp: Path, handle_file):
    """(png writer, a support editor value with its painted mask, a query file) from synthetic phantoms."""
    from core.phantom import make_phantom

    def png(name, arr):
        Image.fromarray(arr).save(tmp / name)
        return str(tmp / name)

    ph = make_phantom(1)
    layer = np.zeros((*ph.mask.shape, 4), np.uint8)
    layer[ph.mask] = (255, 0, 0, 128)
    good = {"background": handle_file(png("s.png", ph.image)), "layers": [handle_file(png("l.png", layer))],
            "composite": None}
    return png, good, handle_file(png("q.png", make_phantom(2).image))


def run_clients(n: int, user) -> float:
    """Run `user` in n threads at once; the seconds until the last one finished."""
    import threading
    import time

    t = time.perf_counter()
    threads = [threading.Thread(target=user) for _ in range(n)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    return time.perf_counter() - t


def finish(res: dict, demo, out: Path) -> None:
    """The probe's last word: the server's memory, the app closed, the result written and docs re-rendered."""
    import json

    from core.evaluation.report import save_result

    res["server_rss_end_mb"] = round(rss_mb())
    demo.close()
    print(json.dumps(res, indent=2))
    save_result(res, out)
