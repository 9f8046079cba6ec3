"""The Classify tab: the lesion classifier on the query and its (corrected) mask: "no lesion" (class normal,
the mask emptied) when its presence decision says so, else benign or malignant; then where it looked."""
from __future__ import annotations

import gradio as gr

from .. import exports
from ..events import bind
from ..session import Session
from . import Shared


def classify(ctx, sess: Session, site_odds=None):
    """The query with its mask as the Segment canvas shows it (corrected there with the brush, or not): the
    answer with where the classifier looked (Grad-CAM, from the feature maps the answer computed: ~10 ms on
    2 CPU cores, so one message; streamed in two it came later, docs/results.md). `site_odds`: the site's
    malignant:benign odds among its lesions, when the user gives them (the labels do not change)."""
    return exports.classify(ctx, sess, site_odds)


def build(ctx, shared: Shared) -> None:
    gr.Markdown("Classifies the current query with its predicted mask (or your corrected mask). The default "
                "classifier first decides whether a lesion is there (p(lesion) against a threshold chosen on "
                "validation images to miss at most 2% of lesions), then benign or malignant, and shows where it "
                "looked (Grad-CAM).")
    with gr.Row():
        btn = gr.Button("Classify query", variant="primary", elem_id="classify-button")
        odds = gr.Number(value=None, minimum=0.01, maximum=100, elem_id="classify-site-odds",
                         label="Your site's malignant : benign odds among lesions (optional: p(malignant) at your "
                               "prior; e.g. 0.49 at BUSI, 0.46 at BUS-BRA; the labels do not change)")
    with gr.Row():
        label_out = gr.Label(num_top_classes=3, label="Class probabilities")
        shown = gr.Image(label="What the classifier was given (the query and this mask), or, for the image "
                               "classifier, where it looked (Grad-CAM) with the mask's outline", type="numpy",
                         format="png", interactive=False, height=280)
    text = gr.Markdown(elem_id="classify-text")
    btn.click(bind(ctx, classify), [shared.session, odds], [label_out, text, shown], api_name="classify")
