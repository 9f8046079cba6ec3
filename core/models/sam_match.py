"""Few-shot matching in LiteMedSAM's feature space (issue 29; after PerSAM and Matcher): prototypes of the
supports' LiteMedSAM embeddings, a cosine map on the query's embedding, fused with PANet++'s map, and the
prompts for LiteMedSAM's decoder read off the fused map (a box, a positive and a negative point), the
decoder's three candidates chosen by agreement with the map. Training-free: the encoder runs once per image
(the query's embedding is the one boxes and clicks use anyway)."""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from ..cache import LRU
from .boxes import largest_component, mask_box, widen_box

GRID = 64          # LiteMedSAM's embedding is 64 x 64 cells over its 256 px frame
TEMPERATURE = 20.0  # cosine differences -> probability (PANet's scale)


def _unit(features: torch.Tensor) -> torch.Tensor:
    """(1, C, 64, 64) -> (64*64, C), unit length per cell."""
    f = features[0].float().flatten(1).T
    return F.normalize(f, dim=1)


def _grid_mask(mask: np.ndarray, resized: tuple[int, int]) -> np.ndarray:
    """The image-size mask as the share of each embedding cell it covers (64 x 64; 0 on the padding)."""
    nh, nw = resized
    frame = np.zeros((GRID * 4, GRID * 4), np.float32)
    frame[:nh, :nw] = cv2.resize(np.asarray(mask, np.float32), (nw, nh), interpolation=cv2.INTER_AREA)
    return frame.reshape(GRID, 4, GRID, 4).mean(axis=(1, 3))


def _valid(resized: tuple[int, int]) -> np.ndarray:
    nh, nw = resized
    v = np.zeros((GRID, GRID), bool)
    v[:max(1, nh // 4), :max(1, nw // 4)] = True
    return v


def _kmeans(x: torch.Tensor, k: int, iters: int = 10, seed: int = 0) -> torch.Tensor:
    """k unit-length centres of the rows of `x` (spherical k-means; fewer rows than k: the rows)."""
    if len(x) <= k:
        return x
    g = torch.Generator().manual_seed(seed)
    c = x[torch.randperm(len(x), generator=g)[:k]].clone()
    for _ in range(iters):
        assign = (x @ c.T).argmax(1)
        for j in range(k):
            members = x[assign == j]
            if len(members):
                c[j] = F.normalize(members.mean(0), dim=0)
    return c


@dataclass
class Prototypes:
    foreground: torch.Tensor      # (n_fg, C) unit length
    background: torch.Tensor      # (n_bg, C)


def prototypes(support_embeddings, support_masks, n_background: int = 4, n_foreground: int = 2) -> Prototypes:
    """Per support, the masked mean of its foreground cells (plus `n_foreground` clusters of all foreground
    cells: a target of several looks); `n_background` clusters of every support's background cells."""
    fg, fg_cells, bg_cells = [], [], []
    for emb, mask in zip(support_embeddings, support_masks):
        f = _unit(emb.features)
        m = torch.from_numpy(_grid_mask(mask, emb.resized).ravel())
        valid = torch.from_numpy(_valid(emb.resized).ravel())
        if m.sum() > 0:
            fg.append(F.normalize((f * m[:, None]).sum(0) / m.sum(), dim=0))
            fg_cells.append(f[m >= 0.5])
        bg_cells.append(f[(m == 0) & valid])
    if not fg:
        raise ValueError("every support mask is empty")
    cells = torch.cat(fg_cells) if fg_cells else torch.zeros(0, fg[0].shape[0])
    extra = _kmeans(cells, n_foreground) if len(cells) >= n_foreground else cells[:0]
    bg = torch.cat(bg_cells)
    if len(bg) > 6000:
        bg = bg[torch.randperm(len(bg), generator=torch.Generator().manual_seed(0))[:6000]]
    return Prototypes(torch.cat([torch.stack(fg), extra]), _kmeans(bg, n_background))


def match_map(query_embedding, protos: Prototypes) -> np.ndarray:
    """p(target) at the query's own size: softmax of the best foreground vs the best background cosine."""
    f = _unit(query_embedding.features)
    s_fg = (f @ protos.foreground.T).max(1).values
    s_bg = (f @ protos.background.T).max(1).values
    p = torch.sigmoid(TEMPERATURE * (s_fg - s_bg)).reshape(GRID, GRID).numpy()
    nh, nw = query_embedding.resized
    gh, gw = max(1, round(nh / 4)), max(1, round(nw / 4))
    h, w = query_embedding.size
    return cv2.resize(p[:gh, :gw].astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)


def _supports_key(supports, tag: str) -> str:
    import hashlib

    h = hashlib.sha1(tag.encode())
    for img, mask in supports:
        for a in (np.ascontiguousarray(img), np.packbits(np.asarray(mask, bool))):
            h.update(repr(a.shape).encode())
            h.update(a.tobytes())
    return h.hexdigest()


_PROTOTYPES = LRU(16)     # a support set's prototypes, once (propagation: every image reuses them)


@dataclass
class MatchResult:
    mask: np.ndarray              # LiteMedSAM's chosen candidate (or the map's own mask when nothing to prompt)
    map_mask: np.ndarray          # the fused map's largest component
    iou: float | None             # LiteMedSAM's predicted IoU of the chosen candidate
    agreement: float | None       # its Dice with the map's mask
    fused: np.ndarray             # the fused probability map


def prompts_from_map(prob: np.ndarray, threshold: float = 0.5, margin: float = 0.05):
    """(box, points, component) read off a probability map: the box of its largest component (widened),
    a positive point at its most confident pixel, a negative point at the least confident pixel."""
    comp = largest_component(prob >= threshold)
    if not comp.any():
        return None, [], comp
    inside = np.where(comp, prob, -1.0)
    py, px = np.unravel_index(int(np.argmax(inside)), prob.shape)
    ny, nx = np.unravel_index(int(np.argmin(prob)), prob.shape)
    box = widen_box(mask_box(comp), margin, prob.shape)
    return box, [(float(px), float(py), True), (float(nx), float(ny), False)], comp


def match_and_prompt(sam, query: np.ndarray, supports, panet_prob: np.ndarray | None, weight: float = 0.5,
                     threshold: float = 0.5, points: bool = True) -> MatchResult:
    """The fused map (weight x LiteMedSAM-space match + (1 - weight) x PANet++'s map), its prompts, and the
    decoder's candidate that agrees best with it (points=False: the box alone, one candidate)."""
    from ..metrics import dice

    protos = _PROTOTYPES.get_or_compute(_supports_key(supports, sam.encoder), lambda: prototypes(
        [sam.embed(img) for img, _ in supports], [m for _, m in supports]))
    q_emb = sam.embed(query)
    m = match_map(q_emb, protos)
    fused = m if panet_prob is None else weight * m + (1 - weight) * np.asarray(panet_prob, np.float32)
    box, pts, comp = prompts_from_map(fused, threshold)
    if box is None:
        return MatchResult(comp, comp, None, None, fused)
    res = sam.predict(query, box=box, points=pts if points else None, multimask=bool(points))
    agree = [float(dice(c, comp)) for c in res.masks]
    best = int(np.argmax(agree))
    return MatchResult(res.masks[best], comp, float(res.ious[best]), agree[best], fused)

