"""What the outside probes of the web app share (scripts/probe_hardening.py, probe_integrity.py)."""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image



def rss_mb() -> float:
    """This process's resident memory (the app runs in it)."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def b64(x) -> str:
    """A file (path) or an array (saved as PNG) as base64: what the script API takes."""
    import base64
    import io

    if isinstance(x, np.ndarray):
        buf = io.BytesIO()
        Image.fromarray(x).save(buf, format="PNG")
        return base64.b64encode(buf.getvalue()).decode()
    return base64.b64encode(Path(x).read_bytes()).decode()


def phantom_inputs(tmp: Path):
    """(png writer, a support as (image, mask) base64, a query as base64) from synthetic phantoms."""
    from core.phantom import make_phantom

    def png(name, arr):
        Image.fromarray(arr).save(tmp / name)
        return str(tmp / name)

    ph = make_phantom(1)
    good = (b64(ph.image), b64(ph.mask.astype(np.uint8) * 255))
    return png, good, b64(make_phantom(2).image)


def set_supports(client, pairs):
    return client.predict([i for i, _ in pairs], [m for _, m in pairs], api_name="/set_supports")


def segment(client, query: str, ckpt: str, threshold: float = 0.5) -> dict:
    """/segment on `query` (base64; "" = the session's query) from the session's supports."""
    return client.predict(query, ckpt, threshold, False, False, api_name="/segment")


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
