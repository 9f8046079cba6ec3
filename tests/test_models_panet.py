"""PANet++ on tiny inputs: shapes, cached prototypes, the decoder-free PANet, and PAR."""
import pytest
import torch

from core.losses import bce_dice_loss
from core.models.panet import PANetConfig, PANetPlusPlus, PROTO_LEVELS


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return PANetPlusPlus(PANetConfig(image_size=64, weights="random")).eval()


def _supports(k=2, size=64):
    imgs = torch.rand(k, 3, size, size)
    masks = torch.zeros(k, size, size)
    masks[:, 16:40, 20:44] = 1
    return imgs, masks


def test_forward_shapes_and_similarity_maps(model):
    s_img, s_msk = _supports()
    logits, sims, protos, feats = model(s_img, s_msk, torch.rand(1, 3, 64, 64))
    assert logits.shape == (1, 1, 64, 64)
    assert set(sims) == set(PROTO_LEVELS)
    for lvl, s in sims.items():
        assert s.shape[:2] == (1, 2) and s.shape[-1] == 64 // [4, 8, 16, 32][lvl]
        assert s.abs().max() <= model.tau.item() + 1e-3
    assert protos.shots == 2


def test_cached_prototypes_give_the_same_prediction(model):
    s_img, s_msk = _supports()
    q = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        direct, _, _, _ = model(s_img, s_msk, q)
        protos = model.prototypes(s_img, s_msk)
        cached, _, _ = model.segment(q, protos)
    assert torch.allclose(direct, cached, atol=1e-5)


def test_supports_change_the_prediction(model):
    s_img, s_msk = _supports()
    q = torch.rand(1, 3, 64, 64)
    other = torch.zeros_like(s_msk)
    other[:, 0:10, 0:10] = 1
    with torch.no_grad():
        a, _, _, _ = model(s_img, s_msk, q)
        b, _, _, _ = model(s_img, other, q)
    assert not torch.allclose(a, b)


def test_original_panet_has_no_decoder_parameters():
    bare = PANetPlusPlus(PANetConfig(image_size=64, weights="random", decoder=False)).eval()
    s_img, s_msk = _supports(1)
    logits, _, _, _ = bare(s_img, s_msk, torch.rand(1, 3, 64, 64))
    assert logits.shape == (1, 1, 64, 64)
    assert not any(n.startswith("decoder") for n, _ in bare.named_parameters())


def test_fixed_tau_is_not_a_parameter():
    m = PANetPlusPlus(PANetConfig(image_size=64, weights="random", learn_tau=False, tau_init=20.0))
    assert "log_tau" not in dict(m.named_parameters())
    assert m.tau.item() == pytest.approx(20.0)


def test_alignment_loss_is_finite_and_differentiable(model):
    model.train()
    s_img, s_msk = _supports()
    logits, _, _, feats = model(s_img, s_msk, torch.rand(1, 3, 64, 64))
    # force a half-foreground query prediction so that PAR has both query prototypes
    logits = logits.clone()
    logits[..., :32] += 10
    logits[..., 32:] -= 10
    loss = model.alignment_loss(feats, logits, s_img, s_msk, lambda lg, m: bce_dice_loss(lg, m))
    assert torch.isfinite(loss)
    loss.backward()
    assert model.log_tau.grad is not None
    model.eval()


def test_encoder_batchnorm_stays_frozen_in_train_mode(model):
    model.train()
    bns = [m for m in model.encoder.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    assert bns and not any(b.training for b in bns)
    model.eval()
