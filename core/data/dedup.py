"""Group near-duplicate images so that no lesion sits on both sides of a split.

Two tests, either of which links a pair (then groups are the connected components):
- pixels: mean absolute grey difference of 32x32 thumbnails of the whole image below `max_thumb_mad`
  (catches exact copies, rescales and consecutive frames);
- deep features: cosine similarity of ImageNet EfficientNet-Lite0 embeddings above `min_cosine`,
  comparing the whole image and its central crop against each other (catches re-crops, where the
  thumbnails no longer line up).
On BUSI the nearest-neighbour cosine is bimodal with an empty gap between 0.93 and 0.94; the default
threshold sits at the bottom of that gap, so borderline pairs are grouped (a leak costs more than
a slightly smaller training set).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from PIL import Image
from tqdm import tqdm

from .discover import Sample
from .io import read_image

THUMB = 32
EMBED_SIZE = 224
CENTRAL_CROP = 0.75


@dataclass
class DedupResult:
    groups: list[int]                     # group id per sample (ids are 0..G-1 in sample order)
    links: list[tuple[int, int, str, float]]  # (i, j, reason, score) for every linked pair

    @property
    def n_groups(self) -> int:
        return len(set(self.groups))

    def duplicate_groups(self) -> dict[int, list[int]]:
        """Groups with more than one member."""
        members: dict[int, list[int]] = {}
        for i, g in enumerate(self.groups):
            members.setdefault(g, []).append(i)
        return {g: m for g, m in members.items() if len(m) > 1}


def _union_find(n: int, pairs) -> list[int]:
    parent = list(range(n))

    def find(a):
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    for i, j in pairs:
        ri, rj = find(i), find(j)
        if ri != rj:
            parent[max(ri, rj)] = min(ri, rj)
    roots = [find(i) for i in range(n)]
    ids: dict[int, int] = {}
    return [ids.setdefault(r, len(ids)) for r in roots]


def image_signatures(samples: list[Sample], backbone: str = "tf_efficientnet_lite0",
                     progress: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """Thumbnails (N, 32*32) and L2-normalised embeddings (N, 2, D): whole image and central crop."""
    from ..backbones.registry import create_encoder

    enc = create_encoder(backbone).eval()
    thumbs, embs = [], []
    for s in tqdm(samples, desc="signatures", disable=not progress):
        rgb = read_image(s.image_path)
        pil = Image.fromarray(rgb)
        thumbs.append(np.asarray(pil.convert("L").resize((THUMB, THUMB), Image.BILINEAR), np.float32).ravel())
        w, h = pil.size
        dw, dh = int(w * (1 - CENTRAL_CROP) / 2), int(h * (1 - CENTRAL_CROP) / 2)
        views = [pil, pil.crop((dw, dh, w - dw, h - dh))]
        x = torch.stack([torch.from_numpy(np.array(v.resize((EMBED_SIZE, EMBED_SIZE), Image.BILINEAR)))
                         for v in views]).permute(0, 3, 1, 2).float() / 255
        with torch.no_grad():
            f = enc(x)
        e = torch.cat([f[2].mean((2, 3)), f[3].mean((2, 3))], 1)
        embs.append(torch.nn.functional.normalize(e, dim=1).numpy())
    return np.stack(thumbs), np.stack(embs)


def group_near_duplicates(thumbs: np.ndarray, embs: np.ndarray, max_thumb_mad: float = 4.0,
                          min_cosine: float = 0.93) -> DedupResult:
    n = len(thumbs)
    links = []
    for i in range(n - 1):
        mad = np.abs(thumbs[i + 1:] - thumbs[i]).mean(1)
        # max over (whole, crop) x (whole, crop) views: a re-crop matches the other's central crop
        cos = np.einsum("vd,nwd->nvw", embs[i], embs[i + 1:]).reshape(n - i - 1, -1).max(1)
        for k in np.nonzero(mad < max_thumb_mad)[0]:
            links.append((i, i + 1 + int(k), "pixels", float(mad[k])))
        for k in np.nonzero((cos > min_cosine) & ~(mad < max_thumb_mad))[0]:
            links.append((i, i + 1 + int(k), "features", float(cos[k])))
    return DedupResult(_union_find(n, [(a, b) for a, b, _, _ in links]), links)
