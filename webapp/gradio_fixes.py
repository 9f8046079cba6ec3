"""Two fixes to Gradio (6.31), applied when the app is built.

1. Number fields: `gr.Slider` and `gr.Number` compare what an API client sends with their bounds before
   any check of its type, so "abc" or null for a threshold gives the generic "upstream app has raised an
   exception". Here a value that is not a finite number is refused with a message naming the field.

2. A refused file URL answers 403 "File not allowed: <the server path asked for>"; here the body says
   "File not allowed." and nothing of the path.

3. Result images:

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


def _checked_number(original):
    import math

    import gradio as gr

    def preprocess(self, payload):
        if payload is None and isinstance(self, gr.Number) and not isinstance(self, gr.Slider):
            return original(self, payload)
        ok = isinstance(payload, (int, float)) and not isinstance(payload, bool) and math.isfinite(payload)
        if not ok:
            name = (self.label or "a number field").split(" (")[0]    # "Overlay opacity (space: on/off)" -> its name
            raise gr.Error(f"{name}: must be a finite number (got {payload!r})",
                           duration=12)
        return original(self, payload)
    return preprocess


def _quiet_file_fetch(original):
    def file_fetch(path_or_url, request, blocks_or_config, upload_dir):
        from starlette.exceptions import HTTPException

        try:
            return original(path_or_url, request, blocks_or_config, upload_dir)
        except HTTPException as exc:
            if exc.status_code == 403:
                raise HTTPException(403, "File not allowed.") from None
            raise
    return file_fetch


def apply() -> None:
    global _applied
    if _applied:
        return
    import gradio as gr
    from gradio import processing_utils

    from gradio import routes, static_server

    processing_utils.save_pil_to_cache = save_pil_to_cache
    routes.file_fetch = _quiet_file_fetch(routes.file_fetch)
    static_server.file_fetch = _quiet_file_fetch(static_server.file_fetch)
    gr.Slider.preprocess = _checked_number(gr.Slider.preprocess)
    gr.Number.preprocess = _checked_number(gr.Number.preprocess)
    _applied = True
