"""Checkpoints: safetensors + JSON, atomic writes, clear errors."""
import pytest
import torch

from core import checkpoint


def test_roundtrip_and_half(tmp_path):
    sd = {"a": torch.randn(3, 3), "n": torch.tensor(5)}
    checkpoint.save(tmp_path / "m", sd, {"kind": "panet", "x": 1})
    assert checkpoint.load_meta(tmp_path / "m")["x"] == 1
    back = checkpoint.load_weights(tmp_path / "m.safetensors")
    assert torch.equal(back["a"], sd["a"]) and back["n"].item() == 5
    checkpoint.save(tmp_path / "h", sd, {"kind": "panet"}, half=True)
    assert torch.allclose(checkpoint.load_weights(tmp_path / "h")["a"], sd["a"], atol=1e-2)


def test_failed_save_leaves_nothing(tmp_path, monkeypatch):
    import core.checkpoint as ck

    def boom(tensors, path):
        open(path, "wb").write(b"partial")
        raise RuntimeError("disk full")

    monkeypatch.setattr(ck, "save_file", boom)
    with pytest.raises(RuntimeError, match="disk full"):
        ck.save(tmp_path / "m", {"a": torch.zeros(1)}, {"kind": "panet"})
    assert list(tmp_path.iterdir()) == []


def test_errors_are_clear(tmp_path):
    with pytest.raises(checkpoint.CheckpointError, match="not found"):
        checkpoint.load_meta(tmp_path / "nope")
    checkpoint.save(tmp_path / "c", {"a": torch.zeros(1)}, {"kind": "classifier"})
    with pytest.raises(checkpoint.CheckpointError, match="'classifier' checkpoint, expected a 'segmenter'"):
        checkpoint.expect_kind(checkpoint.load_meta(tmp_path / "c"), "segmenter", tmp_path / "c")
    (tmp_path / "c.safetensors").write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError, match="corrupt"):
        checkpoint.load_weights(tmp_path / "c")


def test_a_dot_in_a_checkpoint_name_is_part_of_the_name(tmp_path):
    from core import checkpoint

    w, j = checkpoint.paths(tmp_path / "wise0.5")
    assert (w.name, j.name) == ("wise0.5.safetensors", "wise0.5.json")
    assert checkpoint.paths(tmp_path / "m.json") == (tmp_path / "m.safetensors", tmp_path / "m.json")
