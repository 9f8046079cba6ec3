"""One fix to Gradio (6.31), applied when the app is built.

`gradio.processing_utils.save_pil_to_cache` names a result image by the hash of its bytes and writes
it with `Path.write_bytes`, even when the file is already there. Two identical requests (the same
Segment twice) therefore rewrite the same file while the first response streams it, and that
client gets "peer closed connection" (h11: "Too little data for declared Content-Length"); measured
as 1-2 failures in 50 concurrent identical calls. Here a file that exists is reused as it is (its
name is the hash of its content, so it holds exactly these bytes), and a new one is written under
a temporary name and renamed into place, so no reader ever sees a partial file.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

_applied = False


def save_pil_to_cache(img, cache_dir: str, name: str = "image", format: str = "webp") -> str:
    from gradio import processing_utils as pu

    data = pu.encode_pil_to_bytes(img, format)
    folder = Path(cache_dir) / pu.hash_bytes(data)
    folder.mkdir(exist_ok=True, parents=True)
    target = (folder / f"{name}.{format}").resolve()
    if target.exists() and target.stat().st_size == len(data):
        os.utime(target)   # Gradio's delete_cache ages files by time: a reused file starts afresh
        return str(target)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return str(target)


def apply() -> None:
    global _applied
    if _applied:
        return
    from gradio import processing_utils

    processing_utils.save_pil_to_cache = save_pil_to_cache
    _applied = True
