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


def _staged(folder, name, value):
    checkpoint.save(folder / name, {"a": torch.full((2,), float(value))}, {"kind": "panet", "v": value})
    return folder / name


def test_publish_never_overwrites_and_takes_the_next_free_name(tmp_path):
    stage, dest = tmp_path / "stage", tmp_path / "ckpts"
    assert checkpoint.publish(_staged(stage, "a", 1), dest, "dup").name == "dup"
    _staged(dest, "dup_2", 99)                      # someone else's checkpoint named like a suffix
    assert checkpoint.publish(_staged(stage, "b", 2), dest, "dup").name == "dup_3"
    assert checkpoint.load_meta(dest / "dup")["v"] == 1
    assert checkpoint.load_meta(dest / "dup_2")["v"] == 99, "the existing checkpoint is untouched"
    assert checkpoint.load_meta(dest / "dup_3")["v"] == 2
    assert not list(stage.glob("*.safetensors")), "the staged files are moved, not copied"


def test_concurrent_publishes_of_one_name_get_distinct_names(tmp_path):
    import threading

    stage, dest = tmp_path / "stage", tmp_path / "ckpts"
    srcs = [_staged(stage, f"s{i}", i) for i in range(8)]
    names = []
    threads = [threading.Thread(target=lambda s=s: names.append(checkpoint.publish(s, dest, "same").name))
               for s in srcs]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(set(names)) == 8
    values = sorted(checkpoint.load_meta(dest / n)["v"] for n in names)
    assert values == list(range(8)), "every run's checkpoint survives under its own name"


def test_the_default_kind_head_is_the_installed_one_defaults_json_names(tmp_path):
    import json

    from core.checkpoint import default_kind_head

    assert default_kind_head(tmp_path) is None, "no DEFAULTS.json: no crop head"
    (tmp_path / "DEFAULTS.json").write_text(json.dumps({"classifier": "c", "kind_head": "crop"}))
    assert default_kind_head(tmp_path) is None, "named but not installed: predict goes on without it"
    (tmp_path / "crop.json").write_text("{}")
    assert default_kind_head(tmp_path) == tmp_path / "crop"
