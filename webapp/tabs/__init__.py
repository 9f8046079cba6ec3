"""The page's tabs, one module each: `build(ctx, shared)` lays the tab out and wires its events to
module-level handlers (which only convert and call `core` or `webapp.handlers`)."""
from __future__ import annotations

from dataclasses import dataclass

import gradio as gr


@dataclass
class Shared:
    """Components more than one tab reads or writes."""

    session: gr.State
    ckpt: gr.Dropdown
    link: object = None      # canvas.PageLink: the one way to the page's session (one lock per page)
