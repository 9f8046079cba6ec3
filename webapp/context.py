"""What the app knows about its folders: checkpoints, the data folder gallery, its output folder.

Files are read only from uploads, the configured data folder and the checkpoints folders; written
only below `output_dir`. Every path that comes from the page is resolved and checked to lie inside
one of those folders.
"""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from core import checkpoint
from core.data.dataset import load_pair
from core.data.discover import Sample, discover
from core.data.io import DataError
from core.inference import FewShotSegmenter, SupervisedPipeline
from core.phantom import demo_set

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parents[1]
GALLERY_LIMIT = 48  # data-folder images shown in the gallery


@dataclass
class GalleryItem:
    key: str                 # "demo:3" or "data:benign/benign (1).png"
    caption: str
    image: np.ndarray | None = None   # loaded lazily for data items
    mask: np.ndarray | None = None
    sample: Sample | None = None
    in_training_split: bool = False


@dataclass
class AppConfig:
    data_dir: Path | None = None
    checkpoints_dir: Path = ROOT / "checkpoints"
    output_dir: Path = ROOT / "outputs"
    device: str = "auto"


def inside(path: Path, folder: Path) -> bool:
    try:
        Path(path).resolve().relative_to(Path(folder).resolve())
        return True
    except ValueError:
        return False


@dataclass
class AppContext:
    config: AppConfig
    gallery: dict[str, GalleryItem] = field(default_factory=dict)
    _models: dict = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self):
        self.config.output_dir.mkdir(parents=True, exist_ok=True)
        (self.config.output_dir / "checkpoints").mkdir(exist_ok=True)
        for i, p in enumerate(demo_set(), 1):
            self.gallery[f"demo:{i}"] = GalleryItem(f"demo:{i}", p.name, p.image, p.mask)
        self.data_message = "No data folder configured: use the synthetic demo images or upload your own."
        if self.config.data_dir:
            try:
                self._index_data(self.config.data_dir)
            except DataError as exc:
                self.data_message = f"Data folder not usable: {exc}"
                log.warning(self.data_message)

    # ------------------------------------------------------------------ data folder
    def _index_data(self, root: Path) -> None:
        from core.data.split import DEFAULT_SPLIT_FILE, load_split

        found = discover(root)
        train_names: set[str] = set()
        samples = found.samples
        try:
            doc = load_split(DEFAULT_SPLIT_FILE)
            if {s.rel_path for s in samples} & set(doc["test"]):
                train_names = set(doc["train"]) | set(doc["val"])
                # show held-out images first: Dice shown on them is honest
                samples = [s for s in samples if s.rel_path in set(doc["test"])] + \
                          [s for s in samples if s.rel_path not in set(doc["test"])]
        except DataError:
            pass
        # interleave classes so that the gallery shows benign, malignant and normal images
        by_label: dict[str, list[Sample]] = {}
        for s in samples:
            by_label.setdefault(s.label or "", []).append(s)
        order = [s for group in zip(*by_label.values()) for s in group] if len(by_label) > 1 else samples
        for s in order[:GALLERY_LIMIT]:
            key = f"data:{s.rel_path}"
            tag = " (training image)" if s.rel_path in train_names else ""
            self.gallery[key] = GalleryItem(key, f"{s.rel_path}{tag}", sample=s,
                                            in_training_split=s.rel_path in train_names)
        self.data_message = (f"Data folder: {found.root} ({len(found.samples)} images; gallery shows "
                             f"{min(GALLERY_LIMIT, len(order))}, held-out test images first)")

    def item(self, key: str) -> GalleryItem:
        if key not in self.gallery:
            raise DataError(f"unknown gallery item {key!r}")
        it = self.gallery[key]
        if it.image is None and it.sample is not None:
            if not inside(it.sample.image_path, self.config.data_dir):
                raise DataError("refusing to read outside the data folder")
            it.image, it.mask = load_pair(it.sample)
        return it

    def thumbnails(self) -> list[tuple[str, np.ndarray, str]]:
        """(key, thumbnail, caption) of every gallery item that can be read; unreadable ones are dropped."""
        from core.visual import overlay
        import cv2

        out = []
        for key, it in list(self.gallery.items()):
            try:
                full = self.item(key)
            except DataError as exc:
                log.warning("gallery: skipped %s (%s)", key, exc)
                del self.gallery[key]
                continue
            img = overlay(full.image, full.mask, 0.3) if full.mask is not None and full.mask.any() else full.image
            scale = 160 / max(img.shape[:2])
            out.append((key, cv2.resize(img, (int(img.shape[1] * scale), int(img.shape[0] * scale))), it.caption))
        return out

    # ------------------------------------------------------------------ checkpoints
    def checkpoints(self, kind: str) -> dict[str, Path]:
        """Display name -> path of every checkpoint of `kind` (shipped first, then the user's)."""
        out = {}
        for folder, tag in ((self.config.checkpoints_dir, ""), (self.config.output_dir / "checkpoints", " (yours)")):
            if not folder.is_dir():
                continue
            for js in sorted(folder.glob("*.json")):
                try:
                    meta = checkpoint.load_meta(js)
                except checkpoint.CheckpointError:
                    continue
                if meta.get("kind") == kind:
                    out[js.stem + tag] = js.with_suffix("")
        return out

    def default_checkpoint(self, kind: str) -> str | None:
        """The shipped default (named in checkpoints/DEFAULTS.json) when present, else the first listed."""
        import json

        names = list(self.checkpoints(kind))
        defaults = self.config.checkpoints_dir / "DEFAULTS.json"
        if defaults.exists():
            try:
                wanted = json.loads(defaults.read_text()).get(kind)
            except ValueError:
                wanted = None
            if wanted in names:
                return wanted
        return names[0] if names else None

    def _resolve(self, kind: str, name: str | None) -> Path:
        choices = self.checkpoints(kind)
        if not choices:
            raise checkpoint.CheckpointError(f"no {kind} checkpoint found in {self.config.checkpoints_dir}")
        if not name:
            return choices[self.default_checkpoint(kind)]
        if name not in choices:
            raise checkpoint.CheckpointError(f"unknown checkpoint {name!r}")
        return choices[name]

    def device(self) -> str:
        import torch

        if self.config.device == "auto":
            return "cuda" if torch.cuda.is_available() else "cpu"
        return self.config.device

    def forget_session(self, owner: str) -> None:
        """Drop what a browser session left in the shared models (its adapted copies)."""
        with self._lock:
            models = list(self._models.values())
        for m in models:
            if isinstance(m, FewShotSegmenter):
                m.forget_adapted(owner)

    def fewshot(self, name: str | None = None) -> FewShotSegmenter:
        path = self._resolve("panet", name)
        with self._lock:
            if ("panet", path) not in self._models:
                self._models[("panet", path)] = FewShotSegmenter(path, self.device())
            return self._models[("panet", path)]

    def pipeline(self) -> SupervisedPipeline:
        with self._lock:
            if "pipeline" not in self._models:
                seg = self.checkpoints("segmenter")
                cls = self.checkpoints("classifier")
                if not cls:
                    raise checkpoint.CheckpointError("no lesion classifier checkpoint is installed")
                self._models["pipeline"] = SupervisedPipeline(next(iter(seg.values()), None),
                                                              next(iter(cls.values())), self.device())
            return self._models["pipeline"]

    def new_output_dir(self, prefix: str) -> Path:
        import tempfile

        d = Path(tempfile.mkdtemp(prefix=prefix, dir=self.config.output_dir))
        assert inside(d, self.config.output_dir)
        return d


def config_from_env(**overrides) -> AppConfig:
    from core.data.sets import default_data_dir

    env_data = os.environ.get("PANET_DATA") or os.environ.get("BUSI_DIR")
    cfg = AppConfig(
        data_dir=Path(env_data) if env_data else default_data_dir(),
        checkpoints_dir=Path(os.environ.get("PANET_CHECKPOINTS", ROOT / "checkpoints")),
        output_dir=Path(os.environ.get("PANET_OUTPUT", ROOT / "outputs")),
    )
    for k, v in overrides.items():
        if v is not None:
            setattr(cfg, k, Path(v) if k.endswith("_dir") else v)
    return cfg
