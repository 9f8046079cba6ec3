"""The Help tab: how to use the page, in order."""
from __future__ import annotations

import gradio as gr

from . import Shared

HELP = """### How to use it
1. **Supports.** The supports' canvas has five slots (buttons 1-5, or keys 1-5 once you used that canvas). Upload
   an image into a slot, or pick one in the gallery and press *Put in support slot* (dataset images bring their
   ground-truth mask). Then drag a **box** around the target (b): LiteMedSAM draws its mask at once; *Add* (a) and
   *Remove* (r) clicks correct it, the brush (p) and eraser (e) paint it, *Undo* (z) takes the last change back.
   Or upload its mask PNG (white = target; the image's size). A slot button turns green when the slot is ready,
   amber while it waits for a mask; the line under the canvas says which are ready. 1 support works; 3-5 work
   better.
2. **Query.** Choose a file on the canvas (*Query image*) or pick one in the gallery (*Use as query*): it shows on
   the canvas at once. Press **Segment**. The red overlay is the prediction, drawn in your browser (opacity slider,
   *Overlay* or space to hide it); a green contour is the ground truth when the query comes from the data folder.
   The heatmaps (panel below) show how similar each part of the query is to the lesion (foreground) and tissue
   (background) prototypes of the supports: bright = similar (tick the box for each support's own maps).
3. **Refine on the canvas.** *Add* (a) where the lesion was missed, *Remove* (r) where it is not, *Box* (b): drag
   a box around the target. Your click or box shows at once; the boundary is then drawn by **LiteMedSAM**, a
   medical foundation model, from your box and clicks and the supports' map (the query is encoded once, in the
   background, when it arrives: each click then takes tens of ms). *Brush* (p) and *Eraser* (e) correct the mask
   by hand. *Undo* (z) takes back the last click, box or brush stroke; *Clear* (c) the clicks and box. *Prepare
   downloads* writes the mask at the query's size, the overlay and the heatmaps. Press **?** for every key.
4. **Reuse.** *Add the query with this mask as a support* (the mask as you corrected it on the canvas) puts it in
   the first empty slot.
5. **Classify** runs the lesion classifier on the query and its (corrected) mask, and shows the mask it was given.
6. **Adapt to these supports** (under Segment) fine-tunes a private copy of the model on your supports for the
   seconds you choose (GPU when present); Segment then uses it for exactly these supports, in your session only.
   Use it when the target is unlike breast lesions (another organ): it reports how well the supports agree.
7. **Fine-tune** trains on more images; the result is saved as a new checkpoint ("yours": listed to you only)
   when it beats the checkpoint it started from.

The synthetic demo images are computer-generated phantoms, not patient data."""


def build(ctx, shared: Shared) -> None:
    gr.Markdown(HELP)
