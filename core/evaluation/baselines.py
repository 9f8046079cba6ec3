"""Baselines scored on the same episodes as PANet++ (see core.evaluation.fewshot.Predictor).

(a) the original PANet: the same (trained) encoder, no decoder, prediction = fg cosine > bg cosine;
(b) what a user would otherwise do: an smp U-Net with the same ImageNet encoder fine-tuned on just
    the k supports for a fixed budget of steps, then applied to the query;
(c) the supervised segmenter trained on the whole training split (ignores the supports).
"""
from __future__ import annotations

import copy

import numpy as np
import segmentation_models_pytorch as smp
import torch

from ..backbones.registry import load_imagenet, spec
from ..data.dataset import AugmentConfig, augment
from ..losses import bce_dice_loss


def original_panet(model):
    """A copy of a trained PANet++ without its decoder (PANet's parameter-free segmentation)."""
    bare = copy.deepcopy(model)
    bare.decoder = None
    bare.config.decoder = False
    return bare.eval()


def imagenet_unet(backbone: str = "tf_efficientnet_lite0"):
    """A fresh smp U-Net with the offline ImageNet encoder, and the encoder's normalisation (mean, std)."""
    s = spec(backbone)
    model = smp.create_model("unet", encoder_name="tu-" + s.timm_name, encoder_weights=None, classes=1)
    load_imagenet(model.encoder.model, backbone)
    return model, torch.tensor(s.mean).view(1, 3, 1, 1), torch.tensor(s.std).view(1, 3, 1, 1)


def unet_support_step(model, opt, imgs: np.ndarray, msks: np.ndarray, rng: np.random.Generator, mean, std) -> float:
    """One optimiser step of the U-Net on augmented views of the supports (uint8 images, bool masks)."""
    batch = [augment(i, m, rng, AugmentConfig()) for i, m in zip(imgs, msks)]
    if len(batch) == 1:  # BatchNorm needs 2 samples: add a second augmented view
        batch.append(augment(imgs[0], msks[0], rng, AugmentConfig()))
    x = torch.stack([torch.from_numpy(b[0].copy()).permute(2, 0, 1).float() / 255 for b in batch])
    y = torch.stack([torch.from_numpy(b[1].copy()).float() for b in batch])
    loss = bce_dice_loss(model((x - mean) / std)[:, 0], y)
    opt.zero_grad()
    loss.backward()
    opt.step()
    return float(loss.detach())


def finetuned_unet_predictor(backbone: str = "tf_efficientnet_lite0", steps: int = 40, lr: float = 1e-3,
                             seed: int = 0, size: int = 128):
    """Fine-tune a fresh ImageNet-initialised U-Net on the supports of each episode.

    Trained and applied at `size` px (then upsampled) to keep a CPU episode within seconds.
    """
    import torch.nn.functional as F
    base, mean, std = imagenet_unet(backbone)
    init = copy.deepcopy(base.state_dict())
    rng = np.random.default_rng(seed)

    def predict(s_img, s_msk, q_img):
        base.load_state_dict(init)
        base.train()
        opt = torch.optim.Adam(base.parameters(), lr=lr)
        out_size = q_img.shape[-2:]
        s_img = F.interpolate(s_img, size=(size, size), mode="bilinear", align_corners=False)
        s_msk = F.interpolate(s_msk[:, None], size=(size, size), mode="nearest")[:, 0]
        q_img = F.interpolate(q_img, size=(size, size), mode="bilinear", align_corners=False)
        imgs = (s_img.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        msks = s_msk.numpy() > 0.5
        for _ in range(steps):
            unet_support_step(base, opt, imgs, msks, rng, mean, std)
        base.eval()
        with torch.no_grad():
            logits = F.interpolate(base((q_img - mean) / std), size=out_size, mode="bilinear", align_corners=False)
            return (logits[0, 0] > 0).numpy()

    return predict


def supervised_predictor(segmenter):
    def predict(s_img, s_msk, q_img):
        return (segmenter.predict(q_img)[0, 0] > 0).numpy()

    return predict
