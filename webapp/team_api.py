"""The team's script API (`gr.api`, named endpoints under /gradio_api): claim the next image, decide, review,
what came back, progress, agreement. Every call acts as the signed-in user on the app's project store (a
team server database: every app process answers the same); a refusal is a `gr.Error` in plain words.

    from gradio_client import Client
    c = Client("http://127.0.0.1:7860/", auth=("ann", "password"))
    job = c.predict("study", api_name="/team_claim")             # {"rel_path", "token", "lease_until"}
    c.predict("study", job["rel_path"], "no lesion", job["token"], "", api_name="/team_decide")
"""
from __future__ import annotations


import gradio as gr
import numpy as np

from core.annotate.store import ProjectStore
from core.data.io import DataError

from .annotate import team_user
from .context import AppContext
from .session import UserError


def _store(ctx: AppContext, project: str, request: gr.Request) -> ProjectStore:
    from .events import owner

    try:
        user = team_user(owner(ctx, request))
        return ProjectStore(ctx.config.output_dir, project, db_url=ctx.config.db_url, user=user, create=False)
    except (DataError, UserError) as exc:
        raise gr.Error(str(exc)) from None


def _refused(fn):
    """DataError (stale, held by another, not allowed) -> gr.Error, the message as the store says it."""
    import functools

    @functools.wraps(fn)
    def call(*a, **k):
        try:
            return fn(*a, **k)
        except (DataError, UserError) as exc:
            raise gr.Error(str(exc)) from None
    return call


def _mask(png_b64: str) -> np.ndarray | None:
    """A mask sent as base64 (any image the uploads accept; white = target), checked before it is decoded by
    the script API's one reader (webapp/script_api.py)."""
    if not png_b64:
        return None
    from core.data.io import mask_from_array

    from .script_api import decode_image

    return mask_from_array(decode_image(png_b64, "the mask"), "the mask")


def register(ctx: AppContext) -> None:
    """Declare the endpoints (inside the app's Blocks)."""

    @_refused
    def team_claim(project: str, request: gr.Request) -> dict:
        """The next image nobody else holds, leased to you (sent back to you first); {} when none is left."""
        s = _store(ctx, project, request)
        r = s.claim(lease_s=ctx.config.lease_s)
        return {} if r is None else {"rel_path": r["rel_path"], "token": f"{r['id']}:{r['version']}",
                                     "lease_until": r["lease_until"], "review_note": r["review_note"] or ""}

    @_refused
    def team_decide(project: str, rel_path: str, action: str, token: str, mask_png_b64: str,
                    request: gr.Request) -> dict:
        """accept / no lesion / skip / correct (with the mask as base64 PNG at the image's size)."""
        from .annotate import parse_token

        s = _store(ctx, project, request)
        image_id, version = parse_token(token)
        return {"version": s.decide(rel_path, action, image_id, version, mask=_mask(mask_png_b64))}

    @_refused
    def team_review(project: str, rel_path: str, verdict: str, note: str, request: gr.Request) -> dict:
        """A reviewer approves a decision or sends it back with a note."""
        _store(ctx, project, request).review(rel_path, verdict, note)
        return {"ok": True}

    @_refused
    def team_sent_back(project: str, request: gr.Request) -> list:
        """What reviewers sent back to you, with their notes."""
        return _store(ctx, project, request).sent_back()

    @_refused
    def team_status(project: str, request: gr.Request) -> dict:
        """Counts, per-annotator progress and the leases held now."""
        s = _store(ctx, project, request)
        return {"status": s.counts(), "progress": s.progress(), "leases": s.leases()}

    @_refused
    def team_agreement(project: str, request: gr.Request) -> dict:
        """Dice between annotators on the overlap sample (per image, per pair, overall)."""
        return _store(ctx, project, request).agreement()

    @_refused
    def team_projects(request: gr.Request) -> list:
        """The projects you are a member of."""
        from core.annotate.store import project_names
        from .events import owner

        return project_names(ctx.config.output_dir, db_url=ctx.config.db_url, user=team_user(owner(ctx, request)))

    @_refused
    def team_add_member(project: str, user: str, role: str, request: gr.Request) -> dict:
        """The owner adds a member by sign-in name: annotator, reviewer or owner."""
        s = _store(ctx, project, request)
        s.add_member(user, role)
        return s.members()

    for fn in (team_claim, team_decide, team_review, team_sent_back, team_status, team_agreement, team_projects,
               team_add_member):
        gr.api(fn, api_name=fn.__name__, concurrency_limit=8, concurrency_id="team")
