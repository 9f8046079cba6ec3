"""The script API (`gr.api`): segment a query from 1-5 supports in one call, the rule the page uses
(`core.delineate.segment_from_supports`: PANet++, then LiteMedSAM's redraw where trusted). Stateless: it
keeps nothing between calls, so no page's state is touched. Images travel as base64 PNG/JPEG/BMP/TIFF and
are checked before they are decoded (bytes, header size, pixels, channels, bit depth).

    import base64
    from gradio_client import Client
    b64 = lambda path: base64.b64encode(open(path, "rb").read()).decode()
    client = Client("http://127.0.0.1:7860/")
    out = client.predict([b64("S.png")], [b64("S_mask.png")], b64("Q.png"), "", 0.5, api_name="/segment_image")
    open("Q_mask.png", "wb").write(base64.b64decode(out["mask_png"]))     # out["area_px"], out["redrawn"]
"""
from __future__ import annotations

import base64
import binascii
import io

import gradio as gr
import numpy as np

from core.data.io import DataError

from .context import AppContext

MAX_SUPPORTS = 5


def decode_image(b64: str, name: str) -> np.ndarray:
    """A base64 image as RGB uint8, checked before any pixel is decoded."""
    from PIL import Image

    from core.data.io import check_header, to_rgb_uint8
    from core.io import MAX_UPLOAD_BYTES

    if not isinstance(b64, str) or not b64:
        raise DataError(f"{name}: missing (a base64 PNG, JPEG, BMP or TIFF)")
    if len(b64) > MAX_UPLOAD_BYTES * 4 // 3 + 4:
        raise DataError(f"{name}: larger than the {MAX_UPLOAD_BYTES // 2 ** 20} MB upload limit")
    try:
        raw = base64.b64decode(b64, validate=True)
    except (binascii.Error, ValueError):
        raise DataError(f"{name}: not base64") from None
    if raw[128:132] == b"DICM":
        raise DataError(f"{name}: DICOM goes through the page or `python -m core segment`, not this API")
    check_header(raw, name)
    try:
        with Image.open(io.BytesIO(raw)) as im:
            im.load()
            return to_rgb_uint8(im, name)
    except (OSError, SyntaxError) as exc:     # what PIL raises for a truncated or damaged file
        raise DataError(f"{name}: not a readable image (truncated or damaged: {exc})") from None


def register(ctx: AppContext) -> None:
    from .events import owner

    def segment_image(support_images: list[str], support_masks: list[str], query: str, checkpoint: str,
                      threshold: float, request: gr.Request) -> dict:
        """Segment `query` from 1-5 supports (images and their masks, base64); the few-shot checkpoint by name
        ("" = the default). Returns the mask (base64 PNG at the query's size), its area in pixels, PANet++'s
        lesion-presence score and whether LiteMedSAM redrew the boundary."""
        from core.data.io import check_mask_matches, mask_from_array
        from core.delineate import segment_from_supports
        from core.annotate.records import png_bytes

        try:
            if not 1 <= len(support_images or []) <= MAX_SUPPORTS or len(support_images) != len(support_masks or []):
                raise DataError(f"give 1-{MAX_SUPPORTS} support images and as many masks")
            supports = []
            for k, (si, sm) in enumerate(zip(support_images, support_masks), 1):
                img = decode_image(si, f"support {k}")
                mask = mask_from_array(decode_image(sm, f"support mask {k}"), f"support mask {k}")
                check_mask_matches(img, mask, f"support mask {k}")
                if not mask.any():
                    raise DataError(f"support mask {k} is empty")
                supports.append((img, mask))
            q = decode_image(query, "query")
            if not 0 < float(threshold) < 1:
                raise DataError("threshold must be between 0 and 1")
            seg = ctx.fewshot(checkpoint or None, owner(ctx, request))
            out = segment_from_supports(seg, q, supports, sam=ctx.promptable_model(), threshold=float(threshold),
                                        heatmaps=False)
        except (DataError, KeyError, FileNotFoundError) as exc:
            raise gr.Error(str(exc).strip("'\"")) from None
        score = getattr(out.result, "lesion_score", None)
        return {"mask_png": base64.b64encode(png_bytes(out.mask)).decode(), "area_px": int(out.mask.sum()),
                "height": int(q.shape[0]), "width": int(q.shape[1]), "redrawn": bool(out.redrawn),
                "lesion_score": None if score is None else float(score)}

    gr.api(segment_image, api_name="segment_image", concurrency_limit=2, concurrency_id="segment_api")
