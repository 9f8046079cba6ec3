"""Image editors that check what they are sent before anything is decoded.

Gradio's ImageEditor decodes its background, every layer and the composite into arrays before an
event handler runs, so a 97 KB PNG that declares 10000 x 10000 pixels costs gigabytes before the
app's own checks see it, and the number of layers a request sends is not limited. `SafeImageEditor`
checks each file's header (type, pixel size) first and refuses more than `MAX_LAYERS` layers; its
blob endpoint (the page uploads editor layers through it) is bounded the same way.

`uploads.pyi` beside this file is the type stub Gradio's component metaclass writes for any
component subclass the first time it is imported; it is committed so that, with the pinned Gradio,
the app finds it up to date and writes nothing into its source folder.
"""
from __future__ import annotations

from collections import OrderedDict

import gradio as gr
from gradio.components.base import server

from core.data.io import DataError, check_header
from core.io import MAX_UPLOAD_BYTES

MAX_LAYERS = 2                # the page has one mask layer; one spare for Gradio's own
MAX_BLOB_BYTES = MAX_UPLOAD_BYTES   # the app's one upload limit
MAX_PENDING_BLOBS = 64        # editor values uploaded by the page and not yet used by an event


def _deep_image(src, what: str):
    """An RGBA uint8 array for a 16-bit or float image (decoded with the project's own conversion, which
    scales by bit depth), None for an ordinary 8-bit image (Gradio's decoding is right for those)."""
    import io

    import numpy as np
    from PIL import Image

    from core.data.io import to_rgb_uint8

    f = io.BytesIO(bytes(src)) if isinstance(src, (bytes, bytearray, memoryview)) else src
    try:
        with Image.open(f) as im:
            if im.mode not in ("I;16", "I;16B", "I;16L", "I", "F"):
                return None
            im.load()
            rgb = to_rgb_uint8(im, what)
    except (OSError, SyntaxError, ValueError) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{what}: not a readable image (truncated or damaged file)") from exc
    return np.concatenate([rgb, np.full(rgb.shape[:2] + (1,), 255, np.uint8)], axis=2)


class UploadRefused(gr.Error):
    def __init__(self, message: str):
        super().__init__(message, duration=12)


class SafeImageEditor(gr.ImageEditor):
    """gr.ImageEditor that refuses, before decoding, images over the pixel limit, non-images and extra layers."""

    is_template = True   # the page draws it with gr.ImageEditor's own frontend (as Gradio's own templates do)

    # no __init__ of its own: Gradio reads a component's page properties from its __init__ signature

    def _what(self) -> str:
        return self.label.split(":")[0] if self.label else "image editor"

    def convert_and_format_image(self, file, flatten_on_white: bool = False):
        if file is None:
            return None
        src = file if isinstance(file, (bytes, bytearray, memoryview)) else file.path
        what = f"{self._what()} image"
        try:
            check_header(src, what)
            deep = _deep_image(src, what)
        except DataError as exc:
            raise UploadRefused(str(exc)) from None
        if deep is not None:     # 16-bit or float: scaled by bit depth (Gradio's convert would clip it to white)
            return deep
        try:
            return super().convert_and_format_image(file, flatten_on_white)
        except (OSError, SyntaxError, ValueError) as exc:   # truncated or damaged after a valid header
            raise UploadRefused(f"{what}: not a readable image (truncated or damaged file)") from exc

    def preprocess(self, payload):
        if payload is not None:
            layers = payload.layers
            if payload.id is not None and payload.id in self.blob_storage:
                layers = self.blob_storage[payload.id].layers
            if len(layers or []) > MAX_LAYERS:
                raise UploadRefused(f"{self._what()}: {len(layers)} layers sent, at most {MAX_LAYERS} are accepted")
        return super().preprocess(payload)

    @server
    def accept_blobs(self, data):
        try:
            index = int(data.data["index"]) if data.data["index"] and data.data["index"] != "null" else None
        except (TypeError, ValueError):
            raise UploadRefused("bad layer index") from None
        if index is not None and not 0 <= index < MAX_LAYERS:
            raise UploadRefused(f"layer {index} refused: at most {MAX_LAYERS} layers")
        if not data.files or len(data.files[0][1]) > MAX_BLOB_BYTES:
            raise UploadRefused(f"editor upload refused: empty or larger than {MAX_BLOB_BYTES // 2**20} MB")
        result = super().accept_blobs(data)
        if not isinstance(self.blob_storage, OrderedDict):
            self.blob_storage = OrderedDict(self.blob_storage)
        self.blob_storage.move_to_end(data.data["id"])
        while len(self.blob_storage) > MAX_PENDING_BLOBS:
            self.blob_storage.popitem(last=False)
        return result
