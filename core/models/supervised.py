"""Supervised models: an smp segmenter and a 4-channel (RGB + lesion mask) timm classifier."""
from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field

import segmentation_models_pytorch as smp
import timm
import torch
from timm.models import adapt_input_conv
from torch import nn

from ..backbones.registry import BACKBONES, load_imagenet, spec

log = logging.getLogger(__name__)

CLASSES = ("benign", "malignant", "normal")
SMP_ONLY_ENCODERS = {"mit_b2": "smp's MiT-B2 (SegFormer) encoder: random init offline; "
                               "ImageNet weights need a network (--weights imagenet-download)"}


@dataclass
class SegmenterConfig:
    arch: str = "deeplabv3plus"
    encoder: str = "tf_efficientnet_lite0"
    image_size: int = 256
    weights: str = "imagenet"
    weights_loaded: str = ""


@dataclass
class ClassifierConfig:
    backbone: str = "tf_efficientnet_lite0"
    image_size: int = 224
    classes: tuple[str, ...] = CLASSES
    weights: str = "imagenet"
    weights_loaded: str = ""
    temperature: float = 1.0     # set by temperature scaling on the validation split
    extra: dict = field(default_factory=dict)


class Segmenter(nn.Module):
    """smp model (DeepLabV3+ by default) on a registry encoder; input RGB [0, 1], output logits."""

    def __init__(self, config: SegmenterConfig):
        super().__init__()
        self.config = config
        if config.encoder in SMP_ONLY_ENCODERS:
            self.model = smp.create_model(config.arch, encoder_name=config.encoder,
                                          encoder_weights="imagenet" if config.weights == "imagenet-download" else None,
                                          classes=1)
            config.weights_loaded = ("ImageNet (downloaded by smp)" if config.weights == "imagenet-download"
                                     else "random init (" + SMP_ONLY_ENCODERS[config.encoder] + ")")
            mean, std, bgr = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), False
        else:
            s = spec(config.encoder)
            self.model = smp.create_model(config.arch, encoder_name="tu-" + s.timm_name,
                                          encoder_weights=None, classes=1)
            config.weights_loaded = load_imagenet(self.model.encoder.model, config.encoder, config.weights)
            mean, std, bgr = s.mean, s.std, s.bgr
        self.bgr = bgr
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        log.info("segmenter %s/%s: %s", config.arch, config.encoder, config.weights_loaded)

    @torch.inference_mode()
    def predict(self, x: torch.Tensor, size: tuple[int, int] | None = None) -> torch.Tensor:
        """The one inference path (SMP style): eval mode, no gradients; x (B, 3, H, W) in [0, 1] at any
        size -> logits (B, 1, h, w) at `size` (default: x's own size). Training, evaluation, the
        pipeline, the CLI and the app all call this."""
        self.eval()
        s = self.config.image_size
        out_size = size or tuple(x.shape[-2:])
        if tuple(x.shape[-2:]) != (s, s):
            x = torch.nn.functional.interpolate(x, size=(s, s), mode="bilinear", align_corners=False)
        logits = self(x)
        if tuple(logits.shape[-2:]) != tuple(out_size):
            logits = torch.nn.functional.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return logits

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.bgr:
            x = x.flip(1)
            return self.model((x - self.mean.flip(1)) / self.std.flip(1))
        return self.model((x - self.mean) / self.std)

    def config_dict(self) -> dict:
        return asdict(self.config)


CLASSIFIER_BACKBONES = ("tf_efficientnet_lite0", "tf_efficientnet_lite2", "mobilenetv2", "resnet50", "convnext_base")


class LesionClassifier(nn.Module):
    """timm classifier with in_chans=4: RGB (backbone normalisation) + lesion mask (as -1/+1)."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        if config.backbone not in CLASSIFIER_BACKBONES:
            raise ValueError(f"classifier backbone must be one of {CLASSIFIER_BACKBONES}")
        self.config = config
        s = BACKBONES[config.backbone]
        n = len(config.classes)
        rgb_model = timm.create_model(s.timm_name, pretrained=False, num_classes=n)
        head = rgb_model.default_cfg.get("classifier", "classifier")
        config.weights_loaded = load_imagenet(rgb_model, config.backbone, config.weights, skip_prefixes=(head,))
        self.model = timm.create_model(s.timm_name, pretrained=False, num_classes=n, in_chans=4)
        sd = rgb_model.state_dict()
        stem = rgb_model.default_cfg.get("first_conv", "conv_stem") + ".weight"
        # timm's principled way: repeat the RGB filters over the new channels and rescale by 3/in_chans
        sd[stem] = adapt_input_conv(4, sd[stem])
        self.model.load_state_dict(sd)
        self.register_buffer("mean", torch.tensor(s.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(s.std).view(1, 3, 1, 1), persistent=False)
        self.bgr = s.bgr

    @torch.inference_mode()
    def predict(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """The one inference path: eval mode, no gradients, temperature applied -> probabilities (B, k)."""
        self.eval()
        return torch.softmax(self(image, mask) / self.config.temperature, 1)

    def forward(self, image: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1]; mask (B, 1, H, W) in {0, 1} -> logits (B, n_classes)."""
        x = (image - self.mean) / self.std
        return self.model(torch.cat([x, mask * 2 - 1], 1))

    def config_dict(self) -> dict:
        return asdict(self.config)


class ImageClassifier(nn.Module):
    """timm classifier on the image alone (3 channels): benign / malignant / normal.

    Issue 28: a plain CNN fine-tuned end to end on the image beat every mask-fed variant at the presence
    decision (an empty or wrong predicted mask no longer decides "normal"). `config.extra["input"]` is
    "image" so that a loader can tell it from the 4-channel LesionClassifier."""

    def __init__(self, config: ClassifierConfig):
        super().__init__()
        if config.backbone not in CLASSIFIER_BACKBONES:
            raise ValueError(f"classifier backbone must be one of {CLASSIFIER_BACKBONES}")
        config.extra = {"input": "image", **config.extra}
        self.config = config
        s = BACKBONES[config.backbone]
        self.model = timm.create_model(s.timm_name, pretrained=False, num_classes=len(config.classes), drop_rate=0.2)
        head = self.model.default_cfg.get("classifier", "classifier")
        config.weights_loaded = load_imagenet(self.model, config.backbone, config.weights, skip_prefixes=(head,))
        self.register_buffer("mean", torch.tensor(s.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(s.std).view(1, 3, 1, 1), persistent=False)
        self.bgr = s.bgr

    def _normalised(self, image: torch.Tensor) -> torch.Tensor:
        x = (image - self.mean) / self.std
        return x.flip(1) if self.bgr else x

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1] -> the last feature map (what the class head and Grad-CAM read)."""
        return self.model.forward_features(self._normalised(image))

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.forward_head(features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1] -> logits (B, n_classes)."""
        return self.head(self.features(image))

    def _sized(self, image: torch.Tensor) -> torch.Tensor:
        s = self.config.image_size
        if tuple(image.shape[-2:]) == (s, s):
            return image
        return torch.nn.functional.interpolate(image, size=(s, s), mode="bilinear", align_corners=False)

    @torch.inference_mode()
    def predict(self, image: torch.Tensor, tta: bool = True) -> torch.Tensor:
        """Eval mode, temperature applied, mean of the image and its left-right mirror -> probabilities."""
        return self.predict_with_features(image, tta)[0]

    @torch.no_grad()
    def predict_with_features(self, image: torch.Tensor, tta: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
        """`predict`, and the image's last feature map (not the mirror's), which `grad_cam` of the same image
        can reuse instead of running the encoder again."""
        self.eval()
        image = self._sized(image)
        feats = self.features(image)
        logits = self.head(feats)
        if tta:
            logits = (logits + self(image.flip(-1))) / 2
        return torch.softmax(logits / self.config.temperature, 1), feats

    def grad_cam(self, image: torch.Tensor, target: int, features: torch.Tensor | None = None) -> torch.Tensor:
        """Grad-CAM of class `target` for one image (1, 3, H, W) in [0, 1]: the last feature map weighted by
        the class score's mean gradient, positive part, scaled to [0, 1], at the image's size (H, W).
        `features`: that image's feature map from `predict_with_features` (the encoder is then not run)."""
        self.eval()
        if features is None:
            with torch.no_grad():
                features = self.features(self._sized(image))
        with torch.enable_grad():
            feats = features.detach().requires_grad_(True)
            score = self.head(feats)[0, target]
            (grad,) = torch.autograd.grad(score, feats)
        cam = torch.relu((grad.mean((2, 3), keepdim=True) * feats).sum(1, keepdim=True)).detach()
        cam = torch.nn.functional.interpolate(cam, size=tuple(image.shape[-2:]), mode="bilinear", align_corners=False)
        return (cam / cam.max().clamp_min(1e-8))[0, 0]

    def config_dict(self) -> dict:
        return asdict(self.config)


class MultiTaskClassifier(ImageClassifier):
    """Issue 28: a segmenter with a classification head on the same encoder (smp DeepLabV3+ with
    `aux_params`). Trained on both tasks (the lesion's mask teaches the encoder where to look); used like
    `ImageClassifier`: `forward` is the class logits from the encoder alone (the decoder is not run), and
    `segment` gives the lesion mask's logits. `config.extra["multitask"]` tells a loader which one it is."""

    def __init__(self, config: ClassifierConfig):
        nn.Module.__init__(self)
        if config.backbone not in CLASSIFIER_BACKBONES:
            raise ValueError(f"classifier backbone must be one of {CLASSIFIER_BACKBONES}")
        config.extra = {**config.extra, "input": "image", "multitask": "deeplabv3plus"}
        self.config = config
        s = BACKBONES[config.backbone]
        self.model = smp.create_model("deeplabv3plus", encoder_name="tu-" + s.timm_name, encoder_weights=None,
                                      classes=1, aux_params={"classes": len(config.classes), "dropout": 0.2})
        config.weights_loaded = load_imagenet(self.model.encoder.model, config.backbone, config.weights)
        self.register_buffer("mean", torch.tensor(s.mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(s.std).view(1, 3, 1, 1), persistent=False)
        self.bgr = s.bgr

    def features(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1] -> the encoder's last feature map."""
        return self.model.encoder(self._normalised(image))[-1]

    def head(self, features: torch.Tensor) -> torch.Tensor:
        return self.model.classification_head(features)

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        """image (B, 3, H, W) in [0, 1] -> class logits (B, n_classes); the encoder and its head only."""
        return self.head(self.features(image))

    def forward_both(self, image: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Training: (mask logits (B, 1, H, W), class logits (B, n_classes)) from one encoder pass."""
        return self.model(self._normalised(image))

    def drop_decoder(self) -> None:
        """Keep only what classifying needs (an ensemble's member): the mask decoder is removed."""
        self.model.decoder = None
        self.model.segmentation_head = None

    @torch.inference_mode()
    def segment(self, image: torch.Tensor) -> torch.Tensor:
        """Eval mode: image (B, 3, H, W) in [0, 1] -> lesion mask logits at the image's size."""
        if self.model.decoder is None:
            raise RuntimeError("this classifier's mask decoder was dropped (an ensemble member)")
        self.eval()
        features = self.model.encoder(self._normalised(self._sized(image)))
        logits = self.model.segmentation_head(self.model.decoder(features))
        return torch.nn.functional.interpolate(logits, size=tuple(image.shape[-2:]), mode="bilinear",
                                               align_corners=False)

