"""Leave-set-out table and the adaptation-time curve on a tiny synthetic set (CPU, seconds)."""
import json


from core.evaluation.multidomain import adaptation_curve_episode, leave_set_out_table, trained_sets, unet_time_curve
from tests.test_adapt import synthetic_set, tiny_checkpoint  # noqa: F401 (fixture)


def test_leave_set_out_table_scores_every_set_and_says_what_was_seen(tiny_checkpoint, tmp_path):  # noqa: F811
    meta_path = tiny_checkpoint.with_suffix(".json")
    meta = json.loads(meta_path.read_text())
    meta["data"] = {"train_sets": ["busi", "squares"]}
    seen = tmp_path / "seen"
    seen.with_suffix(".json").write_text(json.dumps(meta))
    seen.with_suffix(".safetensors").write_bytes(tiny_checkpoint.with_suffix(".safetensors").read_bytes())
    sets = {"squares": synthetic_set(8, 96, seed=11)}
    table = leave_set_out_table({"old": str(tiny_checkpoint), "new": str(seen)}, sets, shots=(1, 2), episodes=4,
                                mismatched_shots=2, progress=False)
    row = table["squares"]
    assert row["old"]["seen_in_training"] is False and row["new"]["seen_in_training"] is True
    for lab in ("old", "new"):
        for key in ("k1", "k2", "mismatched_k2"):
            assert 0.0 <= row[lab][key]["dice"] <= 1.0 and row[lab][key]["n"] == 4
    assert trained_sets({}) == ["busi"], "checkpoints from before meta-training knew BUSI only"


def test_adaptation_curve_scores_both_methods_at_every_mark(tiny_checkpoint):  # noqa: F811
    from core.inference import load_panet

    model, _ = load_panet(tiny_checkpoint)
    qset = synthetic_set(6, 96, seed=12)
    res = adaptation_curve_episode(model, unet_time_curve(size=64), qset, (0, 1), [2, 3, 4], marks=(0, 1, 2))
    for method in ("panet", "unet"):
        assert sorted(res[method]) == [0, 1, 2]
        assert all(0.0 <= v <= 1.0 for v in res[method].values())
    assert res["support"] == ["s0.png", "s1.png"]
