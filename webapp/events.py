"""What every event handler of the page shares: the one error decorator, the caller's identity, and a
few page-level constants. Handlers are module-level functions `fn(ctx, *inputs, request)`; `bind(ctx,
fn)` makes the function Gradio calls (same inputs, no ctx), turning a mistake the user can fix into a
message in the page."""
from __future__ import annotations

import functools
import inspect

import gradio as gr

from core.data.io import DataError

from .session import UserError

SHOWN_ERRORS = (UserError, ValueError, DataError)   # said in the page; anything else is a bug (logged)


def error(exc: Exception) -> gr.Error:
    return gr.Error(str(exc), duration=12)


def bind(ctx, fn):
    """fn(ctx, *args) as a Gradio handler: ctx bound, errors the user can fix shown as messages.
    Keeps what Gradio reads: the signature without ctx (gr.Request / gr.SelectData by annotation) and
    whether it is a generator (streamed)."""
    sig = inspect.signature(fn)
    params = list(sig.parameters.values())[1:]

    if inspect.isgeneratorfunction(fn):
        @functools.wraps(fn)
        def handler(*args, **kwargs):
            try:
                yield from fn(ctx, *args, **kwargs)
            except SHOWN_ERRORS as exc:
                raise error(exc) from None
    else:
        @functools.wraps(fn)
        def handler(*args, **kwargs):
            try:
                return fn(ctx, *args, **kwargs)
            except SHOWN_ERRORS as exc:
                raise error(exc) from None
    handler.__signature__ = sig.replace(parameters=params)
    return handler


def owner(ctx, request: gr.Request | None) -> str:
    """The user a call comes from (AppContext.owner): jobs, projects and saved models belong to them."""
    return ctx.owner(request)
