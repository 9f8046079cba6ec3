"""The inference API: any size and mode in, original size out, clear errors, prototype cache."""
import numpy as np
import pytest
import torch

from core import checkpoint
from core.data.io import DataError
from core.inference import FewShotSegmenter
from tests.conftest import blob_image


def test_any_sizes_and_modes(seg):
    img, mask = blob_image((120, 100))
    query_rgba = np.dstack([np.repeat(blob_image((333, 211), (100, 150))[0][:, :, None], 3, 2),
                            np.full((211, 333), 255, np.uint8)])
    res = seg.predict(query_rgba, [(img, mask), (np.repeat(img[:, :, None], 3, 2), mask.astype(np.uint8) * 255)])
    assert res.probability.shape == res.mask.shape == (211, 333)
    assert res.probability.min() >= 0 and res.probability.max() <= 1
    assert {"foreground", "background", "support 1 foreground", "support 2 background"} <= set(res.heatmaps)
    assert res.heatmaps["foreground"].shape == (211, 333)


def test_prototypes_are_cached_across_queries(seg):
    img, mask = blob_image()
    hits = seg.cache_hits
    seg.predict(img, [(img, mask)])
    seg.predict(img[::-1].copy(), [(img, mask)])
    assert seg.cache_hits == hits + 1


@pytest.mark.parametrize("supports, message", [
    ([], "no support"),
    ("empty", "mask is empty"),
    ("mismatch", "mask is 10x10 but its image is 120x100"),
    ("six", "at most 5 supports"),
])
def test_clear_errors(seg, supports, message):
    img, mask = blob_image()
    if supports == "empty":
        supports = [(img, np.zeros_like(mask))]
    elif supports == "mismatch":
        supports = [(img, np.ones((10, 10), bool))]
    elif supports == "six":
        supports = [(img, mask)] * 6
    with pytest.raises(DataError, match=message):
        seg.predict(img, supports)


def test_unreadable_query_path(seg, tmp_path):
    img, mask = blob_image()
    bad = tmp_path / "q.png"
    bad.write_text("nope")
    with pytest.raises(DataError, match="not a readable image"):
        seg.predict(bad, [(img, mask)])


def test_wrong_kind_of_checkpoint(tmp_path):
    checkpoint.save(tmp_path / "c", {"a": torch.zeros(1)}, {"kind": "classifier"})
    with pytest.raises(checkpoint.CheckpointError, match="expected a 'panet'"):
        FewShotSegmenter(tmp_path / "c")


def test_one_lru_keeps_the_newest_and_clears(seg):
    from core.cache import LRU
    from tests.conftest import blob_image

    lru = LRU(2)
    lru.put("a", 1)
    lru.put("b", 2)
    assert lru.get("a") == 1          # a is now the newest
    lru.put("c", 3)
    assert "b" not in lru and "a" in lru and len(lru) == 2
    img, mask = blob_image()
    seg.predict(img, [(img, mask)], heatmaps=False)
    assert len(seg._cache) >= 1
    seg.clear()
    assert len(seg._cache) == 0 and len(seg._features) == 0
    assert seg.predict(img, [(img, mask)], heatmaps=False).mask.shape == mask.shape, "works again after clear()"


def test_supports_are_prepared_once_per_content(seg):
    """A page's Segment, its redraw's choice and the agreement check name the same supports: they are
    resized once; the same pixels in a new array give the same key, other pixels another."""
    img, mask = blob_image(seed=3)
    pairs = [(img, mask)]
    first = seg._prepare_supports(pairs)
    assert seg._prepare_supports(pairs) is first, "the same arrays: prepared once"
    assert seg._prepare_supports([(img.copy(), mask.copy())])[2] == first[2], "the same pixels: the same key"
    other = img.copy()
    other[0, 0] = 255 - other[0, 0]
    assert seg._prepare_supports([(other, mask)])[2] != first[2], "other pixels: another key"
    assert seg.support_key(pairs) == first[2]
