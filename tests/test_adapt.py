"""Test-time adaptation (FewShotSegmenter.adapt) and the multi-query segment command."""
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from core import checkpoint
from core.data.dataset import ImageSet
from core.data.discover import Sample
from core.metrics import dice
from core.models.panet import PANetConfig, PANetPlusPlus


def synthetic_pair(size: int, rng: np.random.Generator):
    """Grey speckle with a bright square (the target) and a dark disc (a distractor)."""
    img = rng.normal(110, 18, (size, size)).clip(0, 255)
    yy, xx = np.mgrid[:size, :size]
    s = int(rng.integers(size // 5, size // 3))
    y0, x0 = rng.integers(2, size - s - 2, 2)
    square = np.zeros((size, size), bool)
    square[y0:y0 + s, x0:x0 + s] = True
    cy, cx = rng.integers(size // 5, 4 * size // 5, 2)
    disc = ((yy - cy) ** 2 + (xx - cx) ** 2 < (size // 7) ** 2) & ~square
    img[square] = rng.normal(200, 10, square.sum()).clip(0, 255)
    img[disc] = rng.normal(30, 10, disc.sum()).clip(0, 255)
    return np.repeat(img.astype(np.uint8)[..., None], 3, axis=2), square


def synthetic_set(n: int, size: int, seed: int = 0) -> ImageSet:
    rng = np.random.default_rng(seed)
    pairs = [synthetic_pair(size, rng) for _ in range(n)]
    samples = [Sample(Path(f"s{i}.png"), (), f"s{i}.png", None) for i in range(n)]
    return ImageSet(samples, np.stack([p[0] for p in pairs]), np.stack([p[1] for p in pairs]), list(range(n)))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """ImageNet encoder (offline weights), untrained decoder: it does not know the square target."""
    torch.manual_seed(0)
    folder = tmp_path_factory.mktemp("ckpt")
    m = PANetPlusPlus(PANetConfig(image_size=96))
    checkpoint.save(folder / "tiny", m.state_dict(), {"kind": "panet", "model": m.config_dict()})
    return folder / "tiny"


def _mean_dice(seg, queries, supports, owner=""):
    return float(np.mean([dice(seg.predict(img, supports, heatmaps=False, owner=owner).mask, m)
                          for img, m in queries]))


def test_adapt_improves_dice_on_a_target_it_starts_bad_on(tiny_checkpoint):
    from core.inference import FewShotSegmenter

    torch.manual_seed(0)
    seg = FewShotSegmenter(tiny_checkpoint)
    data = synthetic_set(9, 96, seed=3)
    supports = [(data.images[i], data.masks[i]) for i in range(3)]
    queries = [(data.images[i], data.masks[i]) for i in range(3, 9)]
    before = _mean_dice(seg, queries, supports, owner="me")
    base_weights = {k: v.clone() for k, v in seg.model.state_dict().items()}
    summary = seg.adapt(supports, seconds=0, steps=120, owner="me")
    after = _mean_dice(seg, queries, supports, owner="me")
    assert summary["status"] == "finished" and summary["steps"] == 120
    assert len(summary["loo_dice_before"]) == 3
    assert before < 0.5, f"the untrained decoder should start bad ({before:.2f})"
    assert after > before + 0.2 and after > 0.6, f"adaptation did not help: {before:.2f} -> {after:.2f}"
    # the checkpoint's model is untouched, and other owners still get it
    assert all(torch.equal(v, base_weights[k]) for k, v in seg.model.state_dict().items())
    assert _mean_dice(seg, queries, supports, owner="someone else") == pytest.approx(before)
    assert seg.is_adapted(supports, "me") and not seg.is_adapted(supports[:2], "me")


def test_adapted_model_can_be_saved_under_a_new_name_only(tiny_checkpoint, tmp_path):
    from core.data.io import DataError
    from core.inference import FewShotSegmenter

    seg = FewShotSegmenter(tiny_checkpoint)
    data = synthetic_set(2, 96, seed=5)
    supports = [(data.images[0], data.masks[0])]
    s = seg.adapt(supports, seconds=0, steps=3, owner="u")  # k = 1: augmented self-episodes
    assert s["status"] == "finished" and s["loo_dice_before"] == []
    path = seg.save_adapted(supports, tmp_path / "mine", owner="u")
    assert checkpoint.load_meta(tmp_path / "mine")["adapted"]["steps"] == 3 and path.exists()
    with pytest.raises(DataError, match="already exists"):
        seg.save_adapted(supports, tmp_path / "mine", owner="u")
    with pytest.raises(DataError, match="adapt first"):
        seg.save_adapted(supports, tmp_path / "other", owner="not me")


def test_cancelled_adaptation_keeps_the_model(tiny_checkpoint):
    from core.inference import FewShotSegmenter
    from core.training.engine import Job

    seg = FewShotSegmenter(tiny_checkpoint)
    data = synthetic_set(3, 96, seed=6)
    supports = [(data.images[i], data.masks[i]) for i in range(3)]
    job = Job(owner="u")
    job.cancel(by="u")
    s = seg.adapt(supports, seconds=30, owner="u", job=job)
    assert s["status"] == "cancelled" and not seg.is_adapted(supports, "u")


def _write_pngs(folder: Path, data: ImageSet, names):
    out = []
    for i, name in enumerate(names):
        img, msk = folder / f"{name}.png", folder / f"{name}_mask.png"
        Image.fromarray(data.images[i]).save(img)
        Image.fromarray(data.masks[i].astype(np.uint8) * 255).save(msk)
        out.append((str(img), str(msk)))
    return out


def test_segment_command_takes_many_queries_and_adapts_once(tiny_checkpoint, tmp_path, capsys):
    from core.cli.main import main

    data = synthetic_set(5, 80, seed=7)
    files = _write_pngs(tmp_path, data, ["sup1", "sup2", "q1", "q2", "q3"])
    args = ["segment", "--checkpoint", str(tiny_checkpoint), "--device", "cpu",
            "--support", *files[0], "--support", *files[1],
            "--query", files[2][0], files[3][0], files[4][0], "--out-dir", str(tmp_path / "masks"), "--adapt", "2"]
    assert main(args) == 0
    out = capsys.readouterr().out
    assert "adapted:" in out and "3 masks written" in out
    for name in ("q1", "q2", "q3"):
        m = np.asarray(Image.open(tmp_path / "masks" / f"{name}_mask.png"))
        assert m.shape == (80, 80) and set(np.unique(m)) <= {0, 255}
    # the single-query form keeps working
    assert main(["segment", "--checkpoint", str(tiny_checkpoint), "--support", *files[0],
                 "--query", files[2][0], "--out", str(tmp_path / "one.png")]) == 0
    assert (tmp_path / "one.png").exists()
    # several queries need --out-dir
    assert main(["segment", "--checkpoint", str(tiny_checkpoint), "--support", *files[0],
                 "--query", files[2][0], files[3][0], "--out", str(tmp_path / "x.png")]) == 2
    assert "--out-dir" in capsys.readouterr().err


def _tiny_supports(k: int = 3, seed: int = 3):
    data = synthetic_set(k, 96, seed=seed)
    return torch.stack([torch.from_numpy(i).permute(2, 0, 1).float() / 255 for i in data.images]), \
        torch.from_numpy(data.masks).float()


def test_the_held_out_guard_keeps_weights_that_do_at_least_as_well_as_not_adapting(tiny_checkpoint):
    from core.models.loading import load_panet
    from core.training.adapt import AdaptConfig, HeldOutGuard, adapt_model

    torch.manual_seed(0)
    model, _ = load_panet(tiny_checkpoint)
    imgs, msks = _tiny_supports()
    net, summary = adapt_model(model, imgs, msks, AdaptConfig(seconds=0, steps=40, check_every=10, guard=True, average=1.0))
    g = summary["guard"]
    assert g["looks"] == 4 and g["held_out_dice_kept"] >= g["held_out_dice_before"]
    again = HeldOutGuard(imgs, msks, 0.0).score(net)
    assert again == pytest.approx(g["held_out_dice_kept"], abs=1e-6), "the weights returned are the ones it kept"
    if g["kept"] == "adapted":
        assert g["held_out_dice_kept"] > g["held_out_dice_before"] and g["kept_step"] in (10, 20, 30, 40)


def test_when_no_adapted_step_beats_the_model_its_own_weights_come_back(tiny_checkpoint, monkeypatch):
    from core.models.loading import load_panet
    from core.training import adapt

    torch.manual_seed(0)
    model, _ = load_panet(tiny_checkpoint)
    imgs, msks = _tiny_supports()
    monkeypatch.setattr(adapt.HeldOutGuard, "score", lambda self, net: -1.0)   # every look is worse
    net, summary = adapt.adapt_model(model, imgs, msks, adapt.AdaptConfig(seconds=0, steps=10, check_every=5, guard=True, average=1.0))
    assert summary["guard"]["kept"] == "base" and summary["steps"] == 10
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in net.state_dict().items())
    from webapp.finetune import adapt_report
    assert "did not help" in adapt_report(summary)


def test_the_held_out_support_is_never_trained_on(tiny_checkpoint, monkeypatch):
    from core.models.loading import load_panet
    from core.training import adapt

    model, _ = load_panet(tiny_checkpoint)
    imgs, msks = _tiny_supports(k=4)
    seen = []
    real_view = adapt.augment

    def spy(img, m, rng, cfg):
        seen.append(int(img.mean() * 1000))
        return real_view(img, m, rng, cfg)
    monkeypatch.setattr(adapt, "augment", spy)
    adapt.adapt_model(model, imgs, msks, adapt.AdaptConfig(seconds=0, steps=12, check_every=6, guard=True, average=1.0))
    held_out = int((imgs[-1].permute(1, 2, 0).numpy() * 255).round().astype(np.uint8).mean() * 1000)
    assert seen and held_out not in seen


def test_the_weight_average_lies_between_the_base_and_the_trained_weights(tiny_checkpoint):
    """With decay d and n steps the base keeps a share d**n: with one step the weights used are exactly
    d * base + (1 - d) * trained, so a single bad step moves the model a little only."""
    from core.models.loading import load_panet
    from core.training.adapt import AdaptConfig, adapt_model

    torch.manual_seed(0)
    model, _ = load_panet(tiny_checkpoint)
    imgs, msks = _tiny_supports()
    base = {k: v.clone() for k, v in model.state_dict().items()}
    torch.manual_seed(1)
    trained, _ = adapt_model(model, imgs, msks, AdaptConfig(seconds=0, steps=1, average=1.0))
    torch.manual_seed(1)
    averaged, summary = adapt_model(model, imgs, msks, AdaptConfig(seconds=0, steps=1, average=0.75))
    assert summary["average"] == {"decay": 0.75}
    from webapp.finetune import adapt_report
    assert "running average" in adapt_report(summary)
    moved = 0
    for k, v in averaged.state_dict().items():
        if v.is_floating_point():
            expected = 0.75 * base[k] + 0.25 * trained.state_dict()[k]
            assert torch.allclose(v, expected, atol=1e-6), k
            moved += int(not torch.equal(trained.state_dict()[k], base[k]))
    assert moved > 0, "the step changed some weights"
    assert all(torch.equal(v, base[k]) for k, v in model.state_dict().items()), "the base model is never modified"


def test_the_guard_and_the_average_are_alternatives(tiny_checkpoint):
    from core.models.loading import load_panet
    from core.training.adapt import AdaptConfig, adapt_model

    model, _ = load_panet(tiny_checkpoint)
    imgs, msks = _tiny_supports()
    with pytest.raises(ValueError, match="alternatives"):
        adapt_model(model, imgs, msks, AdaptConfig(seconds=0, steps=1, guard=True, average=0.9))


def test_adaptations_defaults_are_the_settings_the_val_rule_chose():
    """The defaults change only where the rule written in docs/results.md says so (issue 29)."""
    from core.evaluation.report import ADAPT_DEFAULTS, adaptation_variants, chosen_adaptation
    from core.training.adapt import AdaptConfig

    best = chosen_adaptation(adaptation_variants())
    expected = {**ADAPT_DEFAULTS, **(best["adapt_settings"] if best else {})}
    cfg = AdaptConfig()
    assert {k: getattr(cfg, k) for k in expected} == pytest.approx(expected)
