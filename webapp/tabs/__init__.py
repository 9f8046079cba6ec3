"""The page's tabs, one module each: `build(ctx, shared)` lays the tab out and wires its events to
module-level handlers (which only convert and call `core` or `webapp.handlers`)."""
from __future__ import annotations

from dataclasses import dataclass, field

import gradio as gr


@dataclass
class Shared:
    """Components more than one tab reads or writes."""

    session: gr.State
    ckpt: gr.Dropdown
    editors: list = field(default_factory=list)      # the support slots' editors (Segment tab)
    mask_files: list = field(default_factory=list)   # their mask uploads
    supports_md: gr.Markdown | None = None           # the line saying which slots are ready
    corrector: gr.ImageEditor | None = None          # the correction editor (Segment; Classify reads it)
