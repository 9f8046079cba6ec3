"""LiteMedSAM's image encoder through ONNX Runtime (CPU).

The encoder is exported from the loaded torch module once into a cache folder (named by the weights'
hash and the torch/onnx versions, so a changed model never reuses a stale file), written under a
temporary name and renamed into place, then checked against torch on a fixed input before use:
an export that does not match (max abs difference over TOLERANCE) is refused.
"""
from __future__ import annotations

import hashlib
import os
import tempfile
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


def export(module: torch.nn.Module, path: Path) -> None:
    module = module.eval().cpu()
    x = torch.zeros(1, 3, 256, 256)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(fd)
    try:
        torch.onnx.export(module, (x,), tmp, input_names=["image"], output_names=["embedding"], opset_version=17,
                          dynamo=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def max_difference(module: torch.nn.Module, session) -> float:
    rng = np.random.default_rng(0)
    x = rng.random((1, 3, 256, 256), dtype=np.float32)
    with torch.inference_mode():
        ref = module.eval().cpu()(torch.from_numpy(x)).numpy()
    out = session.run(None, {"image": x})[0]
    return float(np.abs(ref - out).max())


class OnnxEncoder:
    def __init__(self, module: torch.nn.Module, folder: str | Path | None = None, threads: int | None = None):
        import onnxruntime as ort

        folder = Path(folder) if folder else DEFAULT_DIR
        folder.mkdir(parents=True, exist_ok=True)
        self.path = folder / f"litemedsam_encoder_{_fingerprint(module)}.onnx"
        if not self.path.exists():
            export(module, self.path)
        opts = ort.SessionOptions()
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        n = threads or torch.get_num_threads()
        opts.intra_op_num_threads = max(1, int(n))
        self.session = ort.InferenceSession(str(self.path), opts, providers=["CPUExecutionProvider"])
        self.difference = max_difference(module, self.session)
        if not self.difference <= TOLERANCE:
            raise RuntimeError(f"ONNX encoder differs from torch by {self.difference:.2e} (> {TOLERANCE:g})")

    def __call__(self, x: np.ndarray) -> np.ndarray:
        return self.session.run(None, {"image": np.ascontiguousarray(x, np.float32)})[0]
