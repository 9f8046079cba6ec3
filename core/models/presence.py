"""The combined presence decision's scoring (issue 28): the image classifier's p(lesion) joined with the
segmenter's own evidence by a logistic combiner fitted on validation parts (`core.evaluation.image_classifier`).
Pure numpy: the pipeline (`core.inference`) scores with the stored weights."""
from __future__ import annotations

import numpy as np


def segmenter_evidence(prob: np.ndarray) -> np.ndarray:
    """[max probability, probability mass of the largest component (share of the image), its area share]
    of the segmenter's lesion probability map: what the segmenter itself says about a lesion being there."""
    from .boxes import largest_component

    part = largest_component(prob > 0.5)
    if not part.any():
        return np.array([float(prob.max()), 0.0, 0.0])
    return np.array([float(prob.max()), float(prob[part].sum() / prob.size), float(part.mean())])


def presence_features(p_les: np.ndarray, evidence: np.ndarray) -> np.ndarray:
    """The combined presence decision's inputs: logit p(lesion), then the segmenter's evidence (area terms
    on a square-root scale: small lesions count)."""
    z = np.log(np.clip(p_les, 1e-6, 1 - 1e-6) / np.clip(1 - p_les, 1e-6, 1))
    return np.column_stack([z, evidence[:, 0], np.sqrt(evidence[:, 1]), np.sqrt(evidence[:, 2])])


def logistic_score(params, x: np.ndarray) -> np.ndarray:
    params = np.asarray(params, float)
    k = x.shape[1]
    mu, sd, w, b = params[:k], params[k:2 * k], params[2 * k:3 * k], params[3 * k]
    return 1 / (1 + np.exp(-(((x - mu) / sd) @ w + b)))


def kind_logit(p_mal: np.ndarray) -> np.ndarray:
    """logit of p(malignant | lesion): the kind calibration's one input."""
    p = np.clip(np.asarray(p_mal, float), 1e-6, 1 - 1e-6)
    return np.log(p / (1 - p))[:, None]


def calibrate_kind(probs: np.ndarray, weights, classes=("benign", "malignant", "normal")) -> np.ndarray:
    """(n, 3) probabilities with p(malignant | lesion) recalibrated by `weights` (a logistic fit on its logit,
    fitted on validation lesions); p(lesion) is kept, so p(normal) and the presence decision do not change."""
    if not weights:
        return probs
    b, m, n = (list(classes).index(c) for c in ("benign", "malignant", "normal"))
    probs = np.asarray(probs, float)
    p_les = 1.0 - probs[:, n]
    p_mal = logistic_score(weights, kind_logit(probs[:, m] / np.maximum(probs[:, m] + probs[:, b], 1e-9)))
    out = probs.copy()
    out[:, m], out[:, b] = p_les * p_mal, p_les * (1 - p_mal)
    return out



def shift_odds(p: np.ndarray | float, ratio: float):
    """p(malignant | lesion) moved to another prior: its odds multiplied by `ratio` (the deployment site's
    malignant:benign odds over those it was calibrated on). Ranking is unchanged; a threshold moves with it."""
    p = np.clip(np.asarray(p, float), 1e-9, 1 - 1e-9)
    return p * ratio / (p * ratio + 1 - p)


def shift_kind_prior(probs: np.ndarray, ratio: float, classes=("benign", "malignant", "normal")) -> np.ndarray:
    """(n, 3) probabilities with the kind's prior shifted by `ratio` (`shift_odds`); p(lesion) is kept."""
    b, m, n = (list(classes).index(c) for c in ("benign", "malignant", "normal"))
    probs = np.asarray(probs, float)
    p_les = 1.0 - probs[:, n]
    p_mal = shift_odds(probs[:, m] / np.maximum(probs[:, m] + probs[:, b], 1e-9), ratio)
    out = probs.copy()
    out[:, m], out[:, b] = p_les * p_mal, p_les * (1 - p_mal)
    return out


def at_kind_prior(probs: np.ndarray, malignant_threshold: float, ratio: float,
                  classes=("benign", "malignant", "normal")) -> tuple[np.ndarray, float]:
    """(probabilities, kind threshold) with the kind's prior moved by `ratio` (`shift_kind_prior`) and the threshold
    moved with it (`shift_odds`), so that every label stays and only p(malignant | lesion) changes."""
    return shift_kind_prior(probs, ratio, classes), float(shift_odds(malignant_threshold, ratio))
