"""LiteMedSAM's image encoder and its prompt encoder + mask decoder through ONNX Runtime (CPU).

The encoder is exported from the loaded torch module once into a cache folder (named by the weights'
hash and the torch/onnx versions, so a changed model never reuses a stale file), written under a
temporary name and renamed into place, then checked against torch on a fixed input before use:
an export that does not match (max abs difference over TOLERANCE) is refused.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

TOLERANCE = 1e-3        # max abs difference of the embedding against torch (values are ~O(1))
# where the exported encoder is kept: $PANET_CACHE, else the project's outputs/models (the app passes its own
# output folder); a derived file, rebuilt when missing
DEFAULT_DIR = Path(os.environ.get("PANET_CACHE") or Path(os.environ.get("PANET_OUTPUT") or
                                                         Path(__file__).resolve().parents[2] / "outputs") / "models")


def _fingerprint(module: torch.nn.Module) -> str:
    h = hashlib.sha1()
    for k, v in module.state_dict().items():
        h.update(k.encode())
        h.update(v.detach().cpu().numpy().tobytes()[:4096])
    h.update(torch.__version__.encode())
    return h.hexdigest()[:16]


def _write_atomically(path: Path, write) -> None:
    """`write(tmp)` into a temporary file beside `path`, renamed into place only when it finished."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def _cached_session(folder, name: str, fingerprinted: torch.nn.Module, export_to, threads: int | None):
    """(path, ONNX Runtime session) of `<folder>/<name>_<fingerprint>.onnx`, exported by `export_to(path)`
    when missing; the encoder and the decoder are cached alike."""
    import onnxruntime as ort

    folder = Path(folder) if folder else DEFAULT_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_{_fingerprint(fingerprinted)}.onnx"
    if not path.exists():
        export_to(path)
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = max(1, int(threads or torch.get_num_threads()))
    return path, ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def export(module: torch.nn.Module, path: Path) -> None:
    module = module.eval().cpu()
    x = torch.zeros(1, 3, 256, 256)
    _write_atomically(path, lambda tmp: torch.onnx.export(module, (x,), tmp, input_names=["image"],
                                                          output_names=["embedding"], opset_version=17, dynamo=False))


def max_difference(module: torch.nn.Module, session) -> float:
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 256, 256), dtype=np.float32)
    with torch.inference_mode():
        ref = module.eval().cpu()(torch.from_numpy(x)).numpy()
    out = session.run(None, {"image": x})[0]
    return float(np.abs(ref - out).max())


class OnnxEncoder:
    def __init__(self, module: torch.nn.Module, folder: str | Path | None = None, threads: int | None = None):
        self.path, self.session = _cached_session(folder, "litemedsam_encoder", module,
                                                  lambda path: export(module, path), threads)
        self.difference = max_difference(module, self.session)
        if not self.difference <= TOLERANCE:
            raise RuntimeError(f"ONNX encoder differs from torch by {self.difference:.2e} (> {TOLERANCE:g})")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(x, np.float32)})[0]


# ---------------------------------------------------------------------------------- the prompt path
DECODER_TOLERANCE = 1e-2     # max abs difference of the mask logits (values ~O(10)) and the predicted IoUs


class DecoderGraph(torch.nn.Module):
    """LiteMedSAM's prompt encoder and mask decoder as one graph with fixed-type inputs (SAM's own ONNX
    recipe): `coords` (1, N, 2) in the 256-px model frame with `labels` (1, N): 1 positive, 0 negative,
    2 / 3 a box's corners, -1 padding; `mask_input` (1, 1, 256, 256) used where `has_mask` (1,) is 1.
    Returns all four masks' low-resolution logits (1, 4, 256, 256) and predicted IoUs (1, 4); the caller
    picks the single mask (0) or the three candidates (1-3), as the decoder's multimask_output does."""

    def __init__(self, model: torch.nn.Module):
        super().__init__()
        self.prompt_encoder, self.mask_decoder = model.prompt_encoder, model.mask_decoder

    def forward(self, embedding, coords, labels, mask_input, has_mask):
        pe = self.prompt_encoder
        h, w = pe.input_image_size
        xy = (coords + 0.5) / coords.new_tensor([float(w), float(h)])
        emb = pe.pe_layer._pe_encoding(xy)
        lab = labels[..., None]
        emb = emb * (lab != -1) + pe.not_a_point_embed.weight * (lab == -1)
        for i in range(pe.num_point_embeddings):
            emb = emb + pe.point_embeddings[i].weight * (lab == i)
        dense = has_mask.view(1, 1, 1, 1) * pe.mask_downscaling(mask_input)
        dense = dense + (1 - has_mask.view(1, 1, 1, 1)) * pe.no_mask_embed.weight.reshape(1, -1, 1, 1)
        return self.mask_decoder.predict_masks(image_embeddings=embedding, image_pe=pe.get_dense_pe(),
                                               sparse_prompt_embeddings=emb, dense_prompt_embeddings=dense)


def decoder_inputs(coords: np.ndarray, labels: np.ndarray, mask_input: np.ndarray | None) -> dict:
    """The graph's prompt inputs; without a box SAM pads the points with one 'not a point' (label -1)."""
    coords, labels = np.asarray(coords, np.float32).reshape(1, -1, 2), np.asarray(labels, np.float32).reshape(1, -1)
    if not (labels >= 2).any():
        coords = np.concatenate([coords, np.zeros((1, 1, 2), np.float32)], 1)
        labels = np.concatenate([labels, -np.ones((1, 1), np.float32)], 1)
    has = mask_input is not None
    mask = np.asarray(mask_input, np.float32).reshape(1, 1, 256, 256) if has else np.zeros((1, 1, 256, 256), np.float32)
    return {"coords": coords, "labels": labels, "mask_input": mask, "has_mask": np.array([float(has)], np.float32)}


def export_decoder(model: torch.nn.Module, path: Path) -> None:
    graph = DecoderGraph(model).eval().cpu()
    ex = decoder_inputs(np.array([[10.0, 20.0], [60.0, 80.0]]), np.array([1.0, 0.0]), None)
    args = (torch.zeros(1, 256, 64, 64),) + tuple(torch.from_numpy(ex[k]) for k in ("coords", "labels", "mask_input", "has_mask"))

    def write(tmp):
        with warnings.catch_warnings():      # the tracer's notes on SAM's shape checks (constant here)
            warnings.simplefilter("ignore")
            torch.onnx.export(graph, args, tmp, input_names=["embedding", "coords", "labels", "mask_input", "has_mask"],
                              output_names=["masks", "iou"], opset_version=17, dynamo=False,
                              dynamic_axes={"coords": {1: "n"}, "labels": {1: "n"}})
    _write_atomically(path, write)


def decoder_difference(model: torch.nn.Module, session) -> float:
    """Max abs difference against torch on fixed prompts: a box and a point with a mask; two points alone."""
    rng = np.random.default_rng(1)
    emb = rng.standard_normal((1, 256, 64, 64)).astype(np.float32)
    graph = DecoderGraph(model).eval().cpu()
    worst = 0.0
    for coords, labels, mask in ((np.array([[30, 40], [200, 180], [90, 100]]), np.array([2, 3, 1]),
                                  rng.standard_normal((1, 1, 256, 256)).astype(np.float32)),
                                 (np.array([[50, 60], [120, 90]]), np.array([1, 0]), None)):
        feed = decoder_inputs(coords, labels, mask)
        with torch.inference_mode():
            ref = graph(torch.from_numpy(emb), *(torch.from_numpy(feed[k]) for k in
                                                 ("coords", "labels", "mask_input", "has_mask")))
        out = session.run(None, {"embedding": emb, **feed})
        worst = max(worst, *(float(np.abs(r.numpy() - o).max()) for r, o in zip(ref, out)))
    return worst


class OnnxDecoder:
    """The prompt path (prompt encoder + mask decoder) through ONNX Runtime, exported once into the cache
    folder like the encoder and refused when it differs from torch by more than DECODER_TOLERANCE."""

    def __init__(self, model: torch.nn.Module, folder: str | Path | None = None, threads: int | None = None):
        parts = torch.nn.ModuleList([model.prompt_encoder, model.mask_decoder])
        self.path, self.session = _cached_session(folder, "litemedsam_decoder", parts,
                                                  lambda path: export_decoder(model, path), threads)
        self.difference = decoder_difference(model, self.session)
        if not self.difference <= DECODER_TOLERANCE:
            raise RuntimeError(f"ONNX decoder differs from torch by {self.difference:.2e} (> {DECODER_TOLERANCE:g})")

    def __call__(self, embedding: np.ndarray, coords, labels, mask_input=None) -> tuple[np.ndarray, np.ndarray]:
        """All four masks' logits (4, 256, 256) and IoUs (4,)."""
        masks, iou = self.session.run(None, {"embedding": np.ascontiguousarray(embedding, np.float32),
                                             **decoder_inputs(coords, labels, mask_input)})
        return masks[0], iou[0]

