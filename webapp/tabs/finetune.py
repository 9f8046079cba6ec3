"""The Fine-tune tab: adapt the selected few-shot checkpoint to the session's images or the data folder;
the result is a new checkpoint of the user's own, saved only when it beats its start."""
from __future__ import annotations

import gradio as gr

from .. import finetune, jobs
from ..events import bind, owner
from ..session import Session, UserError
from . import Shared
from .segment import MAX_WAITING_JOBS

SESSION_IMAGES = "this session's supports and corrected queries"


def run(ctx, ckpt_name, source, epochs, episodes, lr, name, sess: Session, request: gr.Request):
    pairs = [p for p in sess.supports if p is not None] + list(sess.extra_pairs) if source != "data folder" else []
    who = owner(ctx, request)
    try:
        for status, fig, new_name in finetune.run(ctx, ckpt_name, source, pairs, epochs, episodes, lr, name, owner=who):
            upd = gr.update(choices=ctx.checkpoint_choices("panet", who), value=new_name) if new_name else gr.skip()
            yield status, fig if fig is not None else gr.skip(), upd
    except (UserError, ValueError) as exc:
        # said in the status line (and a toast), not raised: a raised error would mark every output of this
        # event, the checkpoint menu included, as failed
        gr.Warning(str(exc))
        yield f"**Not done:** {exc}", gr.skip(), gr.skip()


def cancel(ctx, request: gr.Request):
    return jobs.cancel(owner(ctx, request))


def build(ctx, shared: Shared) -> None:
    gr.Markdown("Adapts the selected few-shot checkpoint to your images. Runs on the GPU when present, else the CPU. "
                "The shipped checkpoints are never changed: the result is a new one.")
    with gr.Row():
        source = gr.Radio([SESSION_IMAGES, "data folder"], value=SESSION_IMAGES, label="Images")
        name = gr.Textbox(label="Name of the new checkpoint", placeholder="my_hospital")
    with gr.Row():
        epochs = gr.Slider(1, 20, value=3, step=1, label="Epochs")
        episodes = gr.Slider(10, 500, value=50, step=10, label="Episodes per epoch")
        lr = gr.Number(value=5e-5, label="Learning rate")
    with gr.Row():
        start = gr.Button("Start fine-tuning", variant="primary")
        stop = gr.Button("Cancel", variant="stop")
    status = gr.Markdown()
    plot = gr.Plot(label="Loss and Dice")
    start.click(bind(ctx, run), [shared.ckpt, source, epochs, episodes, lr, name, shared.session],
                [status, plot, shared.ckpt], api_name="finetune", concurrency_limit=MAX_WAITING_JOBS,
                concurrency_id="jobs")
    stop.click(bind(ctx, cancel), None, status, api_name="cancel_finetune")
