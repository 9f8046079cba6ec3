"""PANet++: prototype matching with a learned decoder.

encoder (ImageNet) -> support prototypes by masked average pooling at strides 8 and 16
-> scaled cosine maps of the query against foreground / background prototypes
-> decoder: query features + cosine maps, dilated multi-scale context at stride 16, three
   conv+upsample blocks with skips from strides 8 and 4, 1x1 conv -> logits at input resolution.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from ..backbones.registry import create_encoder
from .prototypes import combine_shots, cosine_similarity_map, support_prototypes

PROTO_LEVELS = (1, 2)  # encoder levels (strides 8 and 16) that give prototypes


@dataclass
class PANetConfig:
    backbone: str = "tf_efficientnet_lite0"
    image_size: int = 256
    tau_init: float = 20.0
    learn_tau: bool = True
    decoder_channels: int = 96
    decoder: bool = True          # False: the original PANet, prediction straight from the cosine maps
    weights: str = "imagenet"
    weights_loaded: str = ""      # filled in by the model: which encoder weights it started from
    extra: dict = field(default_factory=dict)


def _conv_bn_relu(cin: int, cout: int, k: int = 3, dilation: int = 1) -> nn.Sequential:
    pad = dilation * (k // 2)
    # GroupNorm, not BatchNorm: a training batch is one episode with a single query
    return nn.Sequential(nn.Conv2d(cin, cout, k, padding=pad, dilation=dilation, bias=False),
                         nn.GroupNorm(min(8, cout), cout), nn.ReLU(inplace=True))


class ContextBlock(nn.Module):
    """Parallel dilated 3x3 convs (rates 1, 2, 4) plus global pooling, fused by a 1x1 conv."""

    def __init__(self, cin: int, cout: int, rates=(1, 2, 4)):
        super().__init__()
        self.branches = nn.ModuleList([_conv_bn_relu(cin, cout, 3, r) for r in rates])
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1), nn.ReLU(inplace=True))
        self.fuse = _conv_bn_relu(cout * (len(rates) + 1), cout, 1)

    def forward(self, x):
        outs = [b(x) for b in self.branches]
        outs.append(self.pool(x).expand(-1, -1, *x.shape[-2:]))
        return self.fuse(torch.cat(outs, 1))


class Decoder(nn.Module):
    def __init__(self, enc_channels: list[int], c: int):
        super().__init__()
        n_sim = 2  # foreground + background cosine map per prototype level
        self.proj16 = _conv_bn_relu(enc_channels[2], c, 1)
        self.context = ContextBlock(c + n_sim, c)
        self.proj8 = _conv_bn_relu(enc_channels[1], c // 2, 1)
        self.up1 = _conv_bn_relu(c + c // 2 + n_sim, c // 2)          # stride 16 -> 8
        self.proj4 = _conv_bn_relu(enc_channels[0], c // 4, 1)
        self.up2 = _conv_bn_relu(c // 2 + c // 4, c // 4)             # stride 8 -> 4
        self.up3 = _conv_bn_relu(c // 4, c // 6)                      # stride 4 -> 1
        self.head = nn.Conv2d(c // 6, 1, 1)

    def forward(self, feats, sims, out_size):
        f4, f8, f16 = feats[0], feats[1], feats[2]
        x = self.context(torch.cat([self.proj16(f16), sims[2]], 1))
        x = F.interpolate(x, size=f8.shape[-2:], mode="bilinear", align_corners=False)
        x = self.up1(torch.cat([x, self.proj8(f8), sims[1]], 1))
        x = F.interpolate(x, size=f4.shape[-2:], mode="bilinear", align_corners=False)
        x = self.up2(torch.cat([x, self.proj4(f4)], 1))
        x = F.interpolate(x, size=out_size, mode="bilinear", align_corners=False)
        x = self.up3(x)
        return self.head(x)


@dataclass
class Prototypes:
    """Support prototypes, computed once and reusable for any number of queries."""

    foreground: dict[int, torch.Tensor]   # level -> (C,) combined over shots
    background: dict[int, torch.Tensor]
    per_shot_fg: dict[int, torch.Tensor]  # level -> (K, C)
    per_shot_bg: dict[int, torch.Tensor]

    @property
    def shots(self) -> int:
        return next(iter(self.per_shot_fg.values())).shape[0]


class PANetPlusPlus(nn.Module):
    def __init__(self, config: PANetConfig):
        super().__init__()
        self.config = config
        self.encoder = create_encoder(config.backbone, config.weights)
        config.weights_loaded = self.encoder.weights
        log_tau = torch.tensor(math.log(config.tau_init))
        if config.learn_tau:
            self.log_tau = nn.Parameter(log_tau)
        else:
            self.register_buffer("log_tau", log_tau)
        self.decoder = Decoder(self.encoder.channels, config.decoder_channels) if config.decoder else None

    def train(self, mode: bool = True):
        # Encoder BatchNorm keeps its ImageNet statistics: episodes are too small to re-estimate them.
        super().train(mode)
        for m in self.encoder.modules():
            if isinstance(m, nn.modules.batchnorm._BatchNorm):
                m.eval()
        return self

    @property
    def tau(self) -> torch.Tensor:
        return self.log_tau.exp()

    def prototypes(self, support_images: torch.Tensor, support_masks: torch.Tensor) -> Prototypes:
        """support_images (K, 3, H, W) in [0, 1]; support_masks (K, H, W) binary."""
        feats = self.encoder(support_images)
        fg, bg, sfg, sbg = {}, {}, {}, {}
        for level in PROTO_LEVELS:
            sfg[level], sbg[level] = support_prototypes(feats[level], support_masks)
            fg[level], bg[level] = combine_shots(sfg[level]), combine_shots(sbg[level])
        return Prototypes(fg, bg, sfg, sbg)

    def similarity(self, feats: list[torch.Tensor], protos: Prototypes) -> dict[int, torch.Tensor]:
        """level -> (B, 2, h, w): [foreground, background] scaled cosine maps."""
        return {lvl: torch.stack([cosine_similarity_map(feats[lvl], protos.foreground[lvl], self.tau),
                                  cosine_similarity_map(feats[lvl], protos.background[lvl], self.tau)], 1)
                for lvl in PROTO_LEVELS}

    def segment(self, query_images: torch.Tensor, protos: Prototypes) -> tuple[torch.Tensor, dict, list]:
        """Logits (B, 1, H, W) of the query, the cosine maps, and the query features."""
        feats = self.encoder(query_images)
        sims = self.similarity(feats, protos)
        return self.decode(feats, sims, query_images.shape[-2:]), sims, feats

    def decode(self, feats: list[torch.Tensor], sims: dict[int, torch.Tensor], out_size) -> torch.Tensor:
        """Logits (B, 1, H, W) from query features and cosine maps (the part a click refinement re-runs)."""
        if self.decoder is None:
            # original PANet: softmax over (bg, fg) cosine maps, upsampled; fg logit = fg - bg
            s = sims[max(PROTO_LEVELS)]
            logits = (s[:, :1] - s[:, 1:2])
            return F.interpolate(logits, size=out_size, mode="bilinear", align_corners=False)
        return self.decoder(feats, sims, out_size)

    def forward(self, support_images, support_masks, query_images):
        protos = self.prototypes(support_images, support_masks)
        logits, sims, feats = self.segment(query_images, protos)
        return logits, sims, protos, feats

    def alignment_loss(self, query_feats, query_logits, support_images, support_masks, loss_fn) -> torch.Tensor:
        """PAR: prototypes from the query's own prediction must segment the supports back."""
        q_mask = (torch.sigmoid(query_logits[:, 0]) > 0.5).float()
        if q_mask.sum() < 1 or (1 - q_mask).sum() < 1:  # no foreground or no background prototype
            return query_logits.sum() * 0
        protos = Prototypes({}, {}, {}, {})
        for lvl in PROTO_LEVELS:
            fg, bg = support_prototypes(query_feats[lvl], q_mask)
            protos.foreground[lvl], protos.background[lvl] = combine_shots(fg), combine_shots(bg)
            protos.per_shot_fg[lvl], protos.per_shot_bg[lvl] = fg, bg
        s_logits, _, _ = self.segment(support_images, protos)
        return loss_fn(s_logits[:, 0], support_masks)

    def config_dict(self) -> dict:
        return asdict(self.config)
