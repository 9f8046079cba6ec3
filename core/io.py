"""One home for writing files so that a reader never sees half a file: write to a temporary file in the
target's folder, then rename it over the target (atomic on one file system)."""
from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path


def atomic_write(target: str | Path, write: Callable[[str], None] | bytes | str) -> Path:
    """Write `target` atomically. `write` is the content (bytes or text) or a function that writes a
    given temporary path (for libraries that save to a path: torch, safetensors, ONNX, PIL)."""
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    os.close(fd)
    try:
        if callable(write):
            write(tmp)
        else:
            data = write.encode() if isinstance(write, str) else write
            with open(tmp, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, target)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    return target


def atomic_write_json(target: str | Path, doc, indent: int | None = 1) -> Path:
    """The one JSON writer: results, manifests, checkpoint metadata (values JSON cannot hold as strings)."""
    return atomic_write(target, json.dumps(doc, indent=indent, default=str) + "\n")


def inside(path: str | Path, folder: str | Path) -> bool:
    """Whether `path` (links resolved) lies inside `folder`."""
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


MAX_UPLOAD_BYTES = 20 * 2**20   # the one upload limit: the app's file uploads, editor blobs, Gradio's max_file_size
