"""Few-shot matching in LiteMedSAM's feature space on hand-made embeddings: the answer is known by hand."""
from __future__ import annotations

import numpy as np
import torch

from core.models.promptable import Embedding
from core.models.sam_match import match_map, prompts_from_map, prototypes


def embedding(target_cells: tuple[slice, slice], fg=(1.0, 0.0, 0.0), bg=(0.0, 1.0, 0.2), size=(128, 128)):
    """A 3-channel 64 x 64 embedding: `fg` in the target cells, `bg` elsewhere (the image fills the frame)."""
    f = torch.tensor(bg, dtype=torch.float32).view(1, 3, 1, 1).repeat(1, 1, 64, 64)
    f[0, :, target_cells[0], target_cells[1]] = torch.tensor(fg).view(3, 1, 1)
    return Embedding(f, 256 / max(size), (256, 256), size, 0.0)


def test_prototypes_and_the_match_map_find_the_target_by_its_look():
    s = embedding((slice(10, 20), slice(10, 20)))
    mask = np.zeros((128, 128), bool)
    mask[20:40, 20:40] = True                       # the same cells at the image's size (2 px per cell)
    p = prototypes([s], [mask])
    assert torch.allclose(p.foreground[0], torch.tensor([1.0, 0.0, 0.0]), atol=1e-5)
    q = embedding((slice(40, 50), slice(5, 25)))    # the target elsewhere in the query
    prob = match_map(q, p)
    assert prob.shape == (128, 128)
    assert prob[90, 30] > 0.99 and prob[20, 100] < 0.01
    box, points, comp = prompts_from_map(prob)
    x0, y0, x1, y1 = box
    assert 7 <= x0 <= 12 and 47 <= x1 <= 53 and 77 <= y0 <= 82 and 97 <= y1 <= 103
    (px, py, pos), (nx, ny, neg) = points
    assert pos and not neg and comp[int(py), int(px)] and not comp[int(ny), int(nx)]


def test_an_empty_map_gives_no_prompt():
    box, points, comp = prompts_from_map(np.zeros((50, 60), np.float32))
    assert box is None and points == [] and not comp.any()
