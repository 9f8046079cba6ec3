"""Inference: load a checkpoint once, then segment queries from supports (few-shot) or classify.

Inputs are arrays of any size and mode (or paths); outputs come back at the query's original size.
"""
from __future__ import annotations

import hashlib
import weakref
import threading
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from . import checkpoint
from .cache import LRU
from .data.dataset import resize_image, resize_mask, to_tensor
from .data.io import DataError, check_mask_matches, mask_from_array, read_image, read_mask, to_rgb_uint8
from .models.panet import PANetPlusPlus, Prototypes, PROTO_LEVELS
from .models.clicks import (ClickConfig, box_mask, check_box, click_bias, edge_distances, parse_clicks,
                            refined_similarity)
from .models.prototypes import EmptySupportMask, cosine_similarity_map
from .models.loading import load_classifier, load_panet, load_segmenter  # noqa: F401  (the public loaders)

MAX_SHOTS = 5
CACHE_SIZE = 64  # prototype sets kept (a few KB each)
ADAPTED_CACHE_SIZE = 4  # adapted model copies kept in memory (about 19 MB each)
FEATURE_CACHE_SIZE = 8  # queries whose encoder features are kept for click refinement (about 0.7 MB each)
PREPARED_CACHE_SIZE = 8  # support sets kept prepared at the working size (5 supports at 256 px: about 5 MB)


def presence_scores(prob: np.ndarray) -> dict[str, float]:
    """Image-level lesion-presence scores read off a few-shot probability map (no model of their own):
    `mass` (mean of p where p > 0.5), `peak` (mean of the top 1%), `confidence` (mean p inside the mask)."""
    fg = prob > 0.5
    flat = np.sort(prob.ravel())
    top = flat[-max(1, flat.size // 100):]
    return {"mass": float((prob * fg).mean()), "peak": float(top.mean()),
            "confidence": float(prob[fg].mean()) if fg.any() else 0.0}


def as_image(x, name: str = "image") -> np.ndarray:
    """Path, PIL image or array (any mode) -> uint8 RGB array."""
    if isinstance(x, (str, Path)):
        return read_image(x)
    if x is None:
        raise DataError(f"{name}: no image given")
    return to_rgb_uint8(x, name)


def as_mask(x, name: str = "mask") -> np.ndarray:
    if isinstance(x, (str, Path)):
        return read_mask(x)
    if x is None:
        raise DataError(f"{name}: no mask given")
    if isinstance(x, Image.Image):
        x = np.asarray(x.convert("RGBA") if x.mode == "P" else x)
    return mask_from_array(np.asarray(x), name)


@dataclass
class FewShotResult:
    probability: np.ndarray            # (H, W) float32 in [0, 1], query's original size
    mask: np.ndarray                   # (H, W) bool
    heatmaps: dict = field(default_factory=dict)  # name -> (H, W) cosine similarity in [-1, 1]
    threshold: float = 0.5
    adapted: bool = False              # segmented by the owner's adapted copy of the model
    agreement: list = field(default_factory=list)  # leave-one-out Dice among the supports (on request)
    lesion_score: float | None = None  # image-level lesion-presence score (when a calibration is in use)
    lesion_present: bool = True        # False: the presence decision emptied the mask ("no lesion")


class FewShotSegmenter:
    """Load a PANet++ checkpoint once; prototypes are cached until the supports change."""

    def __init__(self, checkpoint_path: str | Path, device: str = "cpu"):
        self.model, self.meta = load_panet(checkpoint_path, device)
        self.device = torch.device(device)
        self.size = self.model.config.image_size
        # (support-set hash, owner of the adapted copy or None for the checkpoint) -> prototypes (LRU)
        self._cache = LRU(CACHE_SIZE)
        self._lock = threading.Lock()
        self._cache_key: str | None = None
        self._protos: Prototypes | None = None
        self._model_for_protos: PANetPlusPlus | None = None
        self.cache_hits = 0
        # (owner, support-set key) -> (adapted model copy, summary); never written over a checkpoint
        self._adapted = LRU(ADAPTED_CACHE_SIZE)
        self._agreement = LRU(CACHE_SIZE)
        self._features = LRU(FEATURE_CACHE_SIZE)   # (id(model), query hash) -> encoder features
        self._prepared = LRU(PREPARED_CACHE_SIZE)  # the support arrays' content hash -> (images, masks, key)
        self._raw_ids = LRU(PREPARED_CACHE_SIZE)   # the support arrays' ids -> (weak references, content hash)

    def _prepare_supports(self, supports) -> tuple[torch.Tensor, torch.Tensor, str]:
        """The supports checked, at the working size, and their key. Arrays are prepared once per content (a
        page's Segment, its redraw's choice and the agreement check name the same supports: one resize)."""
        raw = self._raw_key(supports)
        if raw is None:
            return self._prepare(supports)
        return self._prepared.get_or_compute(raw, lambda: self._prepare(supports))

    def _raw_key(self, supports) -> str | None:
        """A hash of the supports' own pixels (exact), or None when they are not all arrays (paths, PIL). The
        same array objects as a recent call are not hashed again (supports are read, never changed in place:
        a caller that changes one gives a new array)."""
        if not supports or len(supports) > MAX_SHOTS:
            return None
        arrays = [a for pair in supports for a in pair]
        if not all(isinstance(a, np.ndarray) for a in arrays):
            return None
        ids = tuple(id(a) for a in arrays)
        known = self._raw_ids.get(ids)
        if known is not None and all(r() is a for r, a in zip(known[0], arrays)):
            return known[1]
        h = hashlib.sha1()
        for a in arrays:
            h.update(repr((a.shape, str(a.dtype))).encode())
            h.update(np.ascontiguousarray(a).data)
        key = h.hexdigest()
        self._raw_ids.put(ids, (tuple(weakref.ref(a) for a in arrays), key))
        return key

    def _prepare(self, supports) -> tuple[torch.Tensor, torch.Tensor, str]:
        if not supports:
            raise DataError("no support images: add at least one support image with its lesion mask")
        if len(supports) > MAX_SHOTS:
            raise DataError(f"at most {MAX_SHOTS} supports, got {len(supports)}")
        imgs, msks, h = [], [], hashlib.sha1()
        for i, (image, mask) in enumerate(supports, 1):
            img = as_image(image, f"support {i} image")
            m = as_mask(mask, f"support {i} mask")
            check_mask_matches(img, m, f"support {i} mask")
            if not m.any():
                raise DataError(f"support {i}: the mask is empty: mark the lesion on every support")
            small_img, small_m = resize_image(img, self.size), resize_mask(m, self.size)
            if not small_m.any():  # a lesion smaller than a pixel at the working size: keep it
                small_m = cv2.resize(m.astype(np.float32), (self.size, self.size), interpolation=cv2.INTER_AREA) > 0
            if small_m.all():
                raise DataError(f"support {i}: the mask covers the whole image: mark only the lesion (the model "
                                "also needs the tissue around it, as the background)")
            h.update(small_img.tobytes())
            h.update(np.packbits(small_m).tobytes())
            imgs.append(to_tensor(small_img))
            msks.append(torch.from_numpy(small_m).float())
        return torch.stack(imgs).to(self.device), torch.stack(msks).to(self.device), h.hexdigest()

    def _model_for(self, key: str, owner: str) -> tuple[PANetPlusPlus, tuple[str, str | None]]:
        """The model for this support set and owner (the owner's adapted copy if there is one), and
        the key its prototypes and agreement are cached under."""
        entry = self._adapted.get((owner, key))
        return (entry[0], (key, owner)) if entry is not None else (self.model, (key, None))

    def set_supports(self, supports, owner: str = "") -> Prototypes:
        """supports: list of (image, mask) pairs (arrays, PIL images or paths). Cached by content.
        If `owner` adapted the model to exactly these supports, the adapted copy is used."""
        return self._resolve(supports, owner)[0]

    @torch.no_grad()
    def _resolve(self, supports, owner: str):
        """Prepare the supports once: (prototypes, model, support images, masks, cache key)."""
        imgs, msks, key = self._prepare_supports(supports)
        model, cache_key = self._model_for(key, owner)
        if cache_key in self._cache:
            self.cache_hits += 1

        def compute():
            try:
                return model.prototypes(imgs, msks)
            except EmptySupportMask as exc:
                raise DataError(str(exc)) from exc
        # computed once even when a background prefetch (a slot just changed) is computing the same set
        protos = self._cache.get_or_compute(cache_key, compute)
        self._protos, self._cache_key, self._model_for_protos = protos, key, model
        return protos, model, imgs, msks, cache_key

    def support_key(self, supports) -> str:
        return self._prepare_supports(supports)[2]

    def adapt(self, supports, seconds: float = 30.0, steps: int = 0, owner: str = "", job=None,
              on_progress=None) -> dict:
        """Fine-tune a copy of the model on these supports only (time-boxed; on the GPU when the
        segmenter lives there). The copy is kept in memory for (owner, this support set) and used by
        predict() with the same supports and owner; the checkpoint on disk is never touched.
        Returns a summary (status, steps, seconds, leave-one-out Dice among the supports before/after)."""
        from .training.adapt import AdaptConfig, adapt_model

        imgs, msks, key = self._prepare_supports(supports)
        net, summary = adapt_model(self.model, imgs, msks, AdaptConfig(seconds=seconds, steps=steps),
                                   job=job, on_progress=on_progress)
        if net is not None:
            with self._lock:
                self._adapted.put((owner, key), (net, summary))
                self._cache.pop((key, owner))
                self._agreement.pop((key, owner))
                self._features.clear()   # keyed by id(model): never reuse features of a freed copy's id
        summary["support_key"] = key
        return summary

    def support_agreement(self, supports, owner: str = "") -> list[float]:
        """Leave-one-out Dice among the supports (each segmented from the others; k >= 2), cached per
        support set: low values mean the supports disagree or the target is unlike the training data."""
        _, model, imgs, msks, cache_key = self._resolve(supports, owner)
        return self._agreement_for(cache_key, model, imgs, msks)

    def agreement_ready(self, supports, owner: str = "") -> bool:
        """Whether these supports' leave-one-out agreement is known (a Segment then does not wait for it)."""
        if len(supports) < 2:
            return True
        _, _, key = self._prepare_supports(supports)
        return self._model_for(key, owner)[1] in self._agreement

    def _agreement_for(self, cache_key, model, imgs, msks) -> list[float]:
        from .training.adapt import leave_one_out_dice

        return self._agreement.get_or_compute(cache_key, lambda: leave_one_out_dice(model, imgs, msks))

    def clear(self) -> None:
        """Forget every cached prototype set, agreement score, query feature and adapted copy."""
        for cache in (self._cache, self._agreement, self._features, self._adapted, self._prepared):
            cache.clear()
        self._protos = self._cache_key = self._model_for_protos = None

    def is_adapted(self, supports, owner: str = "") -> bool:
        return (owner, self.support_key(supports)) in self._adapted

    def forget_adapted(self, owner: str) -> None:
        with self._lock:
            self._adapted.discard_where(lambda k: k[0] == owner)
            self._features.clear()

    def save_adapted(self, supports, path, owner: str = "", note: str = "") -> Path:
        """Save the adapted copy for these supports as a new named checkpoint (never over an existing one)."""
        entry = self._adapted.get((owner, self.support_key(supports)))
        if entry is None:
            raise DataError("no adapted model for these supports: adapt first")
        net, summary = entry
        weights, json_path = checkpoint.paths(path)
        if weights.exists() or json_path.exists():
            raise DataError(f"a checkpoint named {json_path.stem} already exists: choose another name")
        meta = {**self.meta, "note": note or "adapted to a support set (test-time fine-tuning)",
                "adapted": {k: v for k, v in summary.items() if k not in ("message",)}}
        meta.pop("save_path", None)
        return checkpoint.save(path, net.state_dict(), meta, half=False)

    @torch.no_grad()
    def prefetch(self, query) -> None:
        """The query's encoder features, computed now (a background job) and cached for its Segment."""
        self._query_features(self.model, as_image(query, "query"))

    def _query_features(self, model: PANetPlusPlus, img: np.ndarray) -> list[torch.Tensor]:
        """Encoder features of a query at the working size, cached (LRU) per (model, image content):
        a click refinement of the same query runs only the decoder."""
        small = resize_image(img, self.size)
        key = (id(model), hashlib.sha1(small.tobytes()).hexdigest())
        feats = self._features.get(key)
        if feats is None:
            feats = model.encoder(to_tensor(small)[None].to(self.device))
            self._features.put(key, feats)
        return feats

    @torch.no_grad()
    def predict(self, query, supports=None, threshold: float = 0.5, heatmaps: bool = True,
                owner: str = "", agreement: bool = False, clicks=None, box=None,
                click_config: ClickConfig = ClickConfig(), per_support_maps: bool = True,
                presence=None, heatmap_side: int | None = None) -> FewShotResult:
        """Segment `query`. With `supports`, their prototypes are used (computed once per support set,
        shared across callers); without, the last support set given to this object. agreement=True
        also reports the supports' leave-one-out Dice (k >= 2; cached per support set).

        clicks=[(x, y, positive), ...] (query pixels; positive True or "+") refine the prediction and
        box=(x0, y0, x1, y1) restricts the lesion to it (`core.models.clicks`); the query's encoder
        features are cached, so a refinement runs only the decoder. supports=[] (none at all): positive
        clicks alone define the target.

        heatmap_side: the cosine maps at this longer side (the page shows them as small tiles), else the query's size.

        presence={"score": ..., "threshold": ...}: the lesion-presence decision (`core.evaluation.presence`;
        calibrated on one target's validation images, so off by default); below the threshold the mask is
        emptied and `lesion_present` is False. Ignored when clicks are given (a click says where the lesion is)."""
        agree: list[float] = []
        clicks = parse_clicks(clicks)
        if supports is not None and len(supports) == 0:   # clicks only
            protos, model = None, self.model
        elif supports is not None:
            protos, model, imgs, msks, cache_key = self._resolve(supports, owner)
            if agreement and imgs.shape[0] >= 2:
                agree = self._agreement_for(cache_key, model, imgs, msks)
        else:
            protos, model = self._protos, (self._model_for_protos or self.model)
        if protos is None and not any(c[2] for c in clicks):
            raise DataError("no supports set: add at least one support image with its lesion mask "
                            "(or click on the lesion)")
        img = as_image(query, "query image")
        h, w = img.shape[:2]
        try:
            box = check_box(box, (h, w))
        except ValueError as exc:
            raise DataError(str(exc)) from exc
        feats = self._query_features(model, img)
        sims = model.similarity(feats, protos) if protos is not None else None
        radii = None
        if clicks and click_config.adaptive and sims is not None:
            base = F.interpolate(model.decode(feats, sims, (self.size, self.size)), size=(h, w), mode="bilinear",
                                 align_corners=False)[0, 0] > 0
            radii = edge_distances(clicks, base.cpu().numpy())
        if clicks and (click_config.prototypes or sims is None):
            sims = refined_similarity(feats, sims, model.tau, clicks, (h, w), PROTO_LEVELS)
        logits = model.decode(feats, sims, (self.size, self.size))
        logits = F.interpolate(logits, size=(h, w), mode="bilinear", align_corners=False)[0, 0]
        if clicks:
            logits = logits + click_bias(clicks, (h, w), click_config, logits.device, radii)
        prob = torch.sigmoid(logits).cpu().numpy().astype(np.float32)
        if box is not None:
            prob[~box_mask(box, (h, w))] = 0.0
        map_size = (h, w)
        if heatmap_side and max(h, w) > heatmap_side:      # maps only shown small: computed small
            f = heatmap_side / max(h, w)
            map_size = (max(1, int(h * f)), max(1, int(w * f)))
        maps = self._heatmaps(feats, sims, protos if per_support_maps else None, map_size, model.tau) if heatmaps else {}
        calib = None if clicks else presence
        mask = prob > threshold
        score, present = None, True
        if callable(calib):          # an image-level decision (the lesion probe's presence head)
            score, present = calib(img)
        elif calib:                  # a threshold on a score of the probability map
            score = presence_scores(prob)[calib["score"]]
            present = score >= calib["threshold"]
        if not present:
            mask = np.zeros_like(mask)
        return FewShotResult(prob, mask, maps, threshold, model is not self.model, agree, score, present)

    def _heatmaps(self, feats, sims, protos: Prototypes | None, size, tau) -> dict:
        """Cosine maps (tau removed, so values are in [-1, 1]) at the finest prototype level; per-support
        maps too when `protos` is given."""
        level = min(PROTO_LEVELS)
        up = lambda t: F.interpolate(t[None, None], size=size, mode="bilinear", align_corners=False)[0, 0].cpu().numpy()
        out = {"foreground": up(sims[level][0, 0] / tau), "background": up(sims[level][0, 1] / tau)}
        for k in range(protos.shots if protos is not None else 0):
            out[f"support {k + 1} foreground"] = up(cosine_similarity_map(feats[level], protos.per_shot_fg[level][k], 1.0)[0])
            out[f"support {k + 1} background"] = up(cosine_similarity_map(feats[level], protos.per_shot_bg[level][k], 1.0)[0])
        return out


@dataclass
class ClassResult:
    label: str
    confidence: float
    probabilities: dict
    mask: np.ndarray
    lesion_fraction: float
    lesion_probability: float | None = None   # the presence head's p(lesion), when the classifier has one
    lesion_present: bool = True               # False: "no lesion" (the mask is empty, the class normal)

    def save_mask(self, path) -> None:
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(self.mask.astype(np.uint8) * 255).save(path)


def _checked_odds(odds: float | None) -> float | None:
    """A site's malignant:benign odds (None: the mix the classifier was calibrated at), refused unless positive."""
    if odds is not None and not 0 < odds < 1e6:
        raise DataError(f"malignant odds must be a positive number (got {odds})")
    return odds


class SupervisedPipeline:
    """Segmenter -> lesion classifier, both loaded once. With the LiteMedSAM lesion probe, its presence
    head decides first: below its threshold the answer is "no lesion" (class normal, an empty mask),
    whatever mask was given; the type head reads the image and the lesion's crop."""

    def __init__(self, seg_path: str | Path | None, cls_path: str | Path | None, device: str = "cpu",
                 malignant_odds: float | None = None, kind_head: str | Path | None = None):
        """`malignant_odds`: the deployment site's malignant:benign odds among its lesions (known from its own
        records): the image classifier's p(malignant | lesion) is moved from the mix it was calibrated at to it
        (the kind's threshold moves with it, so the labels stay and only the probabilities change).
        `kind_head`: a lesion-crop head whose `fusion` was fitted with this image classifier: the kind is then
        read from both (`fuse_kind`), the crop cut around the lesion's mask."""
        self.device = torch.device(device)
        self.malignant_odds = _checked_odds(malignant_odds)
        self.segmenter = load_segmenter(seg_path, device) if seg_path else None
        self.classifier = load_classifier(cls_path, device) if cls_path else None
        self.kind_head, self.fusion = self._load_kind_head(kind_head, cls_path, device) if kind_head else (None, None)
        self._sam = None
        self._last_probs = None     # (image key, probabilities, feature maps) of the last image classified

    def _load_kind_head(self, path, cls_path, device):
        from .models.crop import CropClassifier

        head = load_classifier(path, device)
        fusion = checkpoint.load_meta(path).get("fusion")
        if not isinstance(head, CropClassifier) or not isinstance(fusion, dict):
            raise checkpoint.CheckpointError(f"{Path(path).name}: not a lesion-crop head with a fitted fusion")
        if not self.is_image or fusion.get("with") != Path(cls_path).name:
            raise checkpoint.CheckpointError(f"{Path(path).name}: its fusion was fitted with {fusion.get('with')}, "
                                             f"not with {Path(cls_path).name if cls_path else 'no classifier'}")
        return head, fusion

    @property
    def is_probe(self) -> bool:
        from .models.lesion_probe import LesionProbe
        return isinstance(self.classifier, LesionProbe)

    @property
    def is_image(self) -> bool:
        """The image-level classifier (issue 28): its p(normal) is the presence decision."""
        from .models.supervised import ImageClassifier
        return isinstance(self.classifier, ImageClassifier)

    def _points(self) -> dict:
        return getattr(self.classifier, "decision_points", None) or {"presence_threshold": 0.5,
                                                                     "malignant_threshold": 0.5}

    def image_probabilities(self, image) -> np.ndarray:
        """The image classifier's probabilities (temperature, flip TTA); the last image's are kept, so that
        presence and the kind (`predict`, Classify) cost one pass."""
        img = as_image(image)
        key = self._image_key(img)
        last = self._last_probs
        if last is not None and last[0] == key:
            return last[1].copy()
        probs, feats = self.classifier.predict_with_features(self._classifier_input(img))
        probs = probs[0].cpu().numpy()
        self._last_probs = (key, probs, feats)     # one tuple: a concurrent call sees a whole entry or none
        return probs.copy()

    def _classifier_input(self, img: np.ndarray) -> torch.Tensor:
        """The image at the classifier's size, resized as its training images were (area averaging: a bilinear
        downsampling of the full image aliases the speckle the model never saw in training)."""
        return to_tensor(resize_image(img, self.classifier.config.image_size))[None].to(self.device)

    def _image_key(self, img: np.ndarray) -> tuple:
        return id(self.classifier), img.shape, hashlib.sha1(np.ascontiguousarray(img).tobytes()).hexdigest()

    def presence_threshold(self) -> float | None:
        """The threshold the presence decision compares p(lesion) with (None: no presence decision)."""
        if self.is_image:
            return float(self._points()["presence_threshold"])
        return float(self.classifier.threshold) if self.is_probe else None

    def explain(self, image, label: str) -> np.ndarray | None:
        """Grad-CAM of `label` on the image ([0, 1] map at the image's size): what the image classifier looked
        at; None for the other classifiers."""
        if not self.is_image:
            return None
        img = as_image(image)
        k = list(self.classifier.config.classes).index(label)
        last = self._last_probs      # the feature maps of the image just classified: the encoder is not run again
        feats = last[2] if last is not None and last[0] == self._image_key(img) else None
        cam = self.classifier.grad_cam(self._classifier_input(img), k, feats).cpu().numpy()
        return np.clip(cv2.resize(cam, (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR), 0.0, 1.0)

    def _combined_presence(self, image, p_lesion: float, points: dict) -> float:
        from .models.presence import logistic_score, presence_features, segmenter_evidence

        if self.segmenter is None:      # the presence decision needs the segmenter it was chosen with
            self.segmenter = load_segmenter(checkpoint.default_checkpoint("segmenter"), self.device)
        x = presence_features(np.array([p_lesion]), segmenter_evidence(self.probability_map(image))[None])
        return float(logistic_score(points["presence_weights"], x)[0])

    @property
    def classes(self) -> list[str]:
        if self.classifier is None:
            raise DataError("no classifier checkpoint loaded")
        return list(self.classifier.meta["classes"]) if self.is_probe else list(self.classifier.config.classes)

    def sam(self):
        if self._sam is None:
            from .models.promptable import shared
            self._sam = shared(str(self.device))
        return self._sam

    def presence(self, image) -> tuple[float, bool]:
        """(p(lesion), lesion present?) from the probe's presence head or the image classifier's
        1 - p(normal) against its decision point (chosen on validation parts to miss at most 2% of
        lesions); (1, True) for the 4-channel CNN, which has no presence decision of its own."""
        if self.is_image:
            probs = self.image_probabilities(image)
            p = float(1.0 - probs[list(self.classifier.config.classes).index("normal")])
            points = self._points()
            if points.get("presence") == "combined":     # the segmenter's evidence joins (chosen on val parts)
                p = self._combined_presence(image, p, points)
            return p, p >= points["presence_threshold"]
        if not self.is_probe:
            return 1.0, True
        p = self.classifier.lesion_probability(self.sam(), as_image(image))
        return p, p >= self.classifier.threshold

    @torch.no_grad()
    def probability_map(self, image) -> np.ndarray:
        """The segmenter's lesion probability at its working size (the presence evidence reads this)."""
        s = self.segmenter.config.image_size
        logits = self.segmenter.predict(to_tensor(resize_image(as_image(image), s))[None].to(self.device))
        return torch.sigmoid(logits[0, 0]).cpu().numpy()

    @torch.no_grad()
    def segment(self, image) -> np.ndarray:
        if self.segmenter is None:
            raise DataError("no segmenter checkpoint loaded")
        img = as_image(image)
        size = self.segmenter.config.image_size
        logits = self.segmenter.predict(to_tensor(resize_image(img, size))[None].to(self.device), img.shape[:2])
        return (logits[0, 0] > 0).cpu().numpy()

    @torch.no_grad()
    def classify(self, image, mask, presence: tuple[float, bool] | None = None,
                 malignant_odds: float | None = None) -> ClassResult:
        """`malignant_odds`: this call's site prior (as the constructor's, which it overrides for this call)."""
        if self.classifier is None:
            raise DataError("no classifier checkpoint loaded")
        img = as_image(image)
        m = as_mask(mask)
        check_mask_matches(img, m)
        if self.is_probe:
            return self._classify_probe(img, m, presence or self.presence(img))
        if self.is_image:
            odds = self.malignant_odds if malignant_odds is None else _checked_odds(malignant_odds)
            return self._classify_image(img, m, presence or self.presence(img), odds)
        size = self.classifier.config.image_size
        x = to_tensor(resize_image(img, size))[None].to(self.device)
        mt = torch.from_numpy(resize_mask(m, size)).float()[None, None].to(self.device)
        p = self.classifier.predict(x, mt)[0].cpu().numpy()
        classes = list(self.classifier.config.classes)
        k = int(p.argmax())
        return ClassResult(classes[k], float(p[k]), {c: float(v) for c, v in zip(classes, p)}, m, float(m.mean()))

    def _classify_image(self, img: np.ndarray, m: np.ndarray, presence: tuple[float, bool],
                        malignant_odds: float | None = None) -> ClassResult:
        """The image classifier: every probability (calibrated, flip TTA); the label from the decision points."""
        from .models.presence import at_kind_prior, calibrate_kind

        classes, points = list(self.classifier.config.classes), self._points()
        probs = calibrate_kind(self.image_probabilities(img)[None], points.get("kind_calibration"), classes)
        threshold = points["malignant_threshold"]
        if self.kind_head is not None and presence[1] and m.any():
            probs, points, threshold = self._fused(img, m, probs, points, classes)
        if malignant_odds is not None:
            if not points.get("kind_odds"):
                raise DataError("this classifier does not record the mix it was calibrated at: no site prior")
            ratio = malignant_odds / points["kind_odds"]
            probs, threshold = at_kind_prior(probs, threshold, ratio, classes)
        out = {c: float(v) for c, v in zip(classes, probs[0])}
        p_lesion, present = presence
        if not present:
            return ClassResult("normal", 1 - p_lesion, out, np.zeros_like(m), 0.0, p_lesion, False)
        p_mal = out["malignant"] / max(out["malignant"] + out["benign"], 1e-9)
        label = "malignant" if p_mal >= threshold else "benign"
        # the shown label's own probability given a lesion (the threshold is chosen for balanced accuracy, not
        # at 0.5, so "malignant" can come with p(malignant | lesion) below one half: say so, not 1 - p)
        return ClassResult(label, p_mal if label == "malignant" else 1 - p_mal, out, m, float(m.mean()), p_lesion, True)

    def _fused(self, img, m, probs, points, classes):
        """The kind read from the image classifier and the lesion's crop together (`fuse_kind`)."""
        from .models.crop import fuse_kind

        b, k, n = (classes.index(c) for c in ("benign", "malignant", "normal"))
        p_les = 1.0 - probs[0, n]
        p_mal = fuse_kind([probs[0, k] / max(probs[0, k] + probs[0, b], 1e-9)], [self.kind_head.malignancy(img, m)],
                          self.fusion)[0]
        out = probs.copy()
        out[0, k], out[0, b] = p_les * p_mal, p_les * (1 - p_mal)
        return out, {**points, "kind_odds": self.fusion["kind_odds"]}, float(self.fusion["malignant_threshold"])

    def _classify_probe(self, img: np.ndarray, m: np.ndarray, presence: tuple[float, bool]) -> ClassResult:
        p_lesion, present = presence
        if not present:
            probs = self.classifier.probabilities(p_lesion, 0.5)
            empty = np.zeros_like(m)
            return ClassResult("normal", 1 - p_lesion, probs, empty, 0.0, p_lesion, False)
        p_mal = self.classifier.malignant_probability(self.sam(), img, m)
        probs = self.classifier.probabilities(p_lesion, p_mal)
        label = "malignant" if p_mal >= 0.5 else "benign"
        # the confidence of the kind, given the decision that a lesion is there (p(lesion) is reported beside it:
        # the presence threshold is set low so that lesions are not missed)
        return ClassResult(label, max(p_mal, 1 - p_mal), probs, m, float(m.mean()), p_lesion, True)

    def predict(self, image) -> ClassResult:
        """The whole pipeline on one image: presence, then (if a lesion is there) its mask and its kind."""
        img = as_image(image)
        presence = self.presence(img)
        if not presence[1]:
            return self.classify(img, np.zeros(img.shape[:2], bool), presence)
        return self.classify(img, self.segment(img), presence)

    def predict_file(self, path) -> ClassResult:
        return self.predict(as_image(path))


def presence_check(cls_path: str | Path | None = None, device: str = "cpu"):
    """The lesion probe's presence decision as a callable image -> (p(lesion), present?), for
    `FewShotSegmenter.predict(presence=...)`: one decision shared by `predict`, the app and `annotate
    --no-lesion`. Raises CheckpointError when the classifier has no presence head."""
    path = cls_path or checkpoint.default_checkpoint("classifier")
    pipe = SupervisedPipeline(None, path, device)
    if not (pipe.is_probe or pipe.is_image):
        raise checkpoint.CheckpointError(f"{Path(path).name}: this classifier has no lesion-presence decision "
                                         "(the image classifier and the LiteMedSAM lesion probe have one)")
    return pipe.presence
