"""Lesion presence and lesion type from a medical encoder's features (issue 18).

LiteMedSAM's image encoder (TinyViT, trained on 1.5M medical image-mask pairs) turns an image into a
(256, 64, 64) embedding. Two small heads read it:

- **presence** (lesion vs no lesion) from the whole image only: no mask, so a false mask cannot create a
  lesion and a missed one cannot hide it;
- **type** (benign vs malignant) from the whole image, the lesion region of the embedding, a second
  encoder pass on a crop around the lesion (higher resolution; a slightly wrong mask moves the crop, not
  the answer) and the mask's shape (irregular, taller than wide: what BI-RADS reads).

Both heads are logistic regressions on standardised features with a temperature, fitted by
`scripts/train_lesion_probe.py` (5-fold cross-validation by patient group). The 3-class answer is
p(normal) = 1 - p(lesion), p(benign) = p(lesion) (1 - p(malignant | lesion)),
p(malignant) = p(lesion) p(malignant | lesion).
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

CLASSES = ("benign", "malignant", "normal")
SHAPE_NAMES = ("area_share", "solidity", "extent", "circularity", "taller_than_wide", "eccentricity",
               "roughness", "components")
CROP_MARGIN = 0.5       # the crop is the lesion's box grown by this share of its size on each side
MIN_CROP = 48           # pixels
LESION_DIM = 6 * 256 + len(SHAPE_NAMES)
IMAGE_DIM = 2 * 256


def _valid(feats: np.ndarray, resized) -> np.ndarray:
    nh, nw = (max(1, round(v / 4)) for v in resized)
    return feats[:, :nh, :nw]


def region_pool(f: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(mean inside the dilated mask, mean over a ring around it) of a (C, h, w) embedding."""
    h, w = f.shape[1:]
    m = cv2.resize(mask.astype(np.uint8), (w, h), interpolation=cv2.INTER_AREA) > 0
    if not m.any():   # a lesion smaller than one token: its centre token
        ys, xs = np.nonzero(mask)
        m = np.zeros((h, w), bool)
        if len(ys):
            m[min(h - 1, int(ys.mean() * h / mask.shape[0])), min(w - 1, int(xs.mean() * w / mask.shape[1]))] = True
        else:
            g = f.mean((1, 2))
            return g, g
    k = np.ones((3, 3), np.uint8)
    inside = cv2.dilate(m.astype(np.uint8), k) > 0
    ring = (cv2.dilate(inside.astype(np.uint8), k, iterations=3) > 0) & ~inside
    fin = f[:, inside].mean(1)
    return fin, (f[:, ring].mean(1) if ring.any() else f.mean((1, 2)))


def shape_features(mask: np.ndarray) -> np.ndarray:
    """Shape of the mask's largest component: what BI-RADS calls irregular, not parallel, not circumscribed."""
    m = mask.astype(np.uint8)
    out = np.zeros(len(SHAPE_NAMES), np.float32)
    n, lab, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    if n <= 1:
        return out
    big = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    comp = (lab == big).astype(np.uint8)
    cnts, _ = cv2.findContours(comp, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
    c = max(cnts, key=cv2.contourArea)
    area = float(comp.sum())
    per = max(cv2.arcLength(c, True), 1.0)
    hull = cv2.convexHull(c)
    hull_area = max(cv2.contourArea(hull), 1.0)
    x, y, w, h = cv2.boundingRect(c)
    ecc = 0.0
    if len(c) >= 5:
        (_, _), (a, b), _ = cv2.fitEllipse(c)
        lo, hi = sorted((a, b))
        ecc = float(np.sqrt(max(0.0, 1 - (lo / max(hi, 1e-6)) ** 2)))
    smooth = cv2.approxPolyDP(c, 0.01 * per, True)
    out[:] = [m.mean(), min(1.0, cv2.contourArea(c) / hull_area), area / max(w * h, 1), 4 * np.pi * area / per ** 2,
              np.log(max(h, 1) / max(w, 1)), ecc, len(smooth) / 20.0, min(n - 1, 5) / 5.0]
    return out


def crop_box(mask: np.ndarray, margin: float = CROP_MARGIN) -> tuple[int, int, int, int] | None:
    """The square box (x0, y0, x1, y1) around every lesion pixel, grown by `margin`, inside the image."""
    ys, xs = np.nonzero(mask)
    if not len(ys):
        return None
    H, W = mask.shape
    cy, cx = (ys.min() + ys.max() + 1) / 2, (xs.min() + xs.max() + 1) / 2
    side = max(ys.max() - ys.min() + 1, xs.max() - xs.min() + 1) * (1 + 2 * margin)
    side = int(min(max(side, MIN_CROP), H, W))
    x0 = int(np.clip(round(cx - side / 2), 0, W - side))
    y0 = int(np.clip(round(cy - side / 2), 0, H - side))
    return x0, y0, x0 + side, y0 + side


def image_features(sam, image: np.ndarray) -> np.ndarray:
    """[mean, max] of the whole image's embedding : what the presence head reads."""
    emb = sam.embed(image)
    f = _valid(emb.features[0].float().cpu().numpy(), emb.resized)
    return np.concatenate([f.mean((1, 2)), f.max((1, 2))]).astype(np.float32)


def lesion_features(sam, image: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """What the type head reads : global mean, lesion mean and ring of the whole-image embedding,
    crop mean, crop-lesion mean and crop ring of a second pass on the lesion's crop, and the shape
    (LESION_DIM values)."""
    emb = sam.embed(image)
    f = _valid(emb.features[0].float().cpu().numpy(), emb.resized)
    glob = f.mean((1, 2))
    fin, fring = region_pool(f, mask)
    box = crop_box(mask)
    if box is None:
        cin = cring = cmean = glob
    else:
        x0, y0, x1, y1 = box
        crop, cmask = image[y0:y1, x0:x1], mask[y0:y1, x0:x1]
        cemb = sam.embed(np.ascontiguousarray(crop))
        cf = _valid(cemb.features[0].float().cpu().numpy(), cemb.resized)
        cmean = cf.mean((1, 2))
        cin, cring = region_pool(cf, cmask)
    return np.concatenate([glob, fin, fring, cmean, cin, cring, shape_features(mask)]).astype(np.float32)


@dataclass
class LinearHead:
    """A standardised logistic regression with a temperature: p = sigmoid / softmax((x - mu) / sd @ W.T + b) / T)."""
    weight: np.ndarray           # (k, d); k = 1 for a binary head
    bias: np.ndarray             # (k,)
    mu: np.ndarray               # (d,)
    sd: np.ndarray               # (d,)
    temperature: float = 1.0
    columns: np.ndarray | None = None   # which features of the full vector it reads (None: all)

    def logits(self, x: np.ndarray) -> np.ndarray:
        x = np.atleast_2d(np.asarray(x, np.float32))
        if self.columns is not None:
            x = x[:, self.columns]
        return ((x - self.mu) / self.sd) @ self.weight.T + self.bias

    def prob(self, x: np.ndarray) -> np.ndarray:
        """(n,) positive-class probability of a binary head."""
        z = self.logits(x)[:, 0] / self.temperature
        return 1.0 / (1.0 + np.exp(-np.clip(z, -60, 60)))


@dataclass
class LesionProbe:
    presence: LinearHead
    kind: LinearHead
    threshold: float = 0.5              # p(lesion) below it: "no lesion"
    meta: dict = field(default_factory=dict)

    def lesion_probability(self, sam, image: np.ndarray) -> float:
        return float(self.presence.prob(image_features(sam, image))[0])

    def malignant_probability(self, sam, image: np.ndarray, mask: np.ndarray) -> float:
        return float(self.kind.prob(lesion_features(sam, image, mask))[0])

    def probabilities(self, p_lesion: float, p_malignant: float) -> dict[str, float]:
        return {"benign": p_lesion * (1 - p_malignant), "malignant": p_lesion * p_malignant,
                "normal": 1 - p_lesion}

    # ---------------------------------------------------------------- storage (safetensors + JSON)
    def save(self, path: str | Path, meta: dict | None = None) -> Path:
        from safetensors.numpy import save_file
        from ..io import atomic_write, atomic_write_json
        path = Path(path)
        tensors = {}
        for name, head in (("presence", self.presence), ("kind", self.kind)):
            tensors.update({f"{name}.weight": head.weight.astype(np.float32), f"{name}.bias": head.bias.astype(np.float32),
                            f"{name}.mu": head.mu.astype(np.float32), f"{name}.sd": head.sd.astype(np.float32)})
            if head.columns is not None:
                tensors[f"{name}.columns"] = head.columns.astype(np.int64)
        doc = {"kind": "classifier", "architecture": "lesion_probe", "encoder": "litemedsam", "classes": list(CLASSES), "threshold": self.threshold,
               "temperature": {"presence": self.presence.temperature, "kind": self.kind.temperature},
               **(meta if meta is not None else self.meta)}
        atomic_write(path.with_suffix(".safetensors"), lambda tmp: save_file(tensors, tmp))
        atomic_write_json(path.with_suffix(".json"), doc)
        return path.with_suffix(".safetensors")

    @classmethod
    def load(cls, path: str | Path) -> "LesionProbe":
        from safetensors.numpy import load_file
        path = Path(path)
        t = load_file(str(path.with_suffix(".safetensors")))
        doc = json.loads(path.with_suffix(".json").read_text())
        if doc.get("architecture") != "lesion_probe":
            raise ValueError(f"{path.name}: not a lesion probe checkpoint")

        def head(name):
            return LinearHead(t[f"{name}.weight"], t[f"{name}.bias"], t[f"{name}.mu"], t[f"{name}.sd"],
                              float(doc["temperature"][name]), t.get(f"{name}.columns"))
        return cls(head("presence"), head("kind"), float(doc["threshold"]), doc)
