"""The Gradio Blocks of PANet++ Studio: the page's frame (header, checkpoint menu, user key) and its tabs,
one module each under webapp/tabs/ (layout + wiring); the work is in webapp.handlers and core."""
from __future__ import annotations

import gradio as gr

from . import shortcuts
from .context import AppContext
from .events import bind, owner
from .session import Session
from .tabs import Shared, classify, finetune, help, review, segment

# the user key: kept (encrypted) in the browser's local storage, made there on the first visit, and sent to
# the server with every request as a same-site cookie (no server event at page load: a load event that
# reaches the server makes Gradio drop an editor upload started meanwhile)
NEW_KEY_JS = """(key) => {
  if (!(typeof key === "string" && /^[0-9a-f]{32}$/.test(key))) {
    key = Array.from(crypto.getRandomValues(new Uint8Array(16)), (b) => b.toString(16).padStart(2, "0")).join("");
  }
  document.cookie = "panet_user=" + key + "; path=/; max-age=31536000; SameSite=Strict";
  return key;
}"""
SESSION_TTL = 3600  # seconds a session's state outlives its last use (API clients never "close a tab")

HEADER = """# PANet++ Studio
Few-shot segmentation of breast tumours on ultrasound: annotate 1-5 **support** images, and the model
outlines the tumour on a new **query** image. *Research tool: not for diagnosis.*"""
TABS = (("Segment", segment), ("Annotate a folder", review), ("Classify", classify), ("Fine-tune", finetune),
        ("Help", help))


def refresh_checkpoints(ctx, current, request: gr.Request):
    choices = ctx.checkpoint_choices("panet", owner(ctx, request))
    names = [n for _, n in choices]
    return gr.update(choices=choices, value=current if current in names else (names[0] if names else None))


def forget(ctx, request: gr.Request):
    """A closed tab's adapted model copies are dropped (memory stays bounded); its page leaves the registry."""
    ctx.forget_session(owner(ctx, request))
    ctx.pages.forget(request.session_hash)


def open_page(ctx, link, request: gr.Request):
    """A page load: the page's session belongs to the identity that loaded it (webapp/pages.py). A reload (or
    a new tab) of that identity starts from the page it used last: the supports, the query and its result,
    the open project come back (they belong to the user, not to the tab); this tab's own decisions start
    empty (its Undo undoes nothing another tab did)."""
    from .pages import auth_user

    raw = getattr(request, "request", None)
    cookies = dict(getattr(raw, "cookies", {}) or {})
    user = getattr(request, "username", None) or auth_user(raw.scope.get("app") if raw is not None else None, cookies)
    identity = ctx.identities.of(cookies, user)
    previous = ctx.pages.last_page(identity)
    try:
        ctx.pages.register(request.session_hash, identity)
    except PermissionError as exc:
        raise gr.Error(str(exc), duration=None) from None
    if previous and previous != request.session_hash and raw is not None:
        link.adopt(raw, previous, request.session_hash)


def _opener(link):
    def fn(ctx, request: gr.Request):
        return open_page(ctx, link, request)
    return fn


# after the page's load: the canvases show what the session holds (a reload's supports, query, project)
RESTORE_JS = """() => {
  window.panetRestored = true;     // a canvas drawn later (a tab opened later) restores itself when it loads
  for (const c of [window.panetSupports, window.panetCanvas, window.panetReview]) if (c && c.restore) c.restore();
}"""


def build_app(ctx: AppContext) -> gr.Blocks:
    from . import gradio_fixes

    gradio_fixes.apply()
    from core.annotate.db import preload

    preload()                # a user's first Open of a project does not wait for Alembic's import
    ctx.use_own_cache()      # Gradio's uploads and results go to the app's cache folder, set before any component
    ttl = int(ctx.config.cache_ttl)
    # analytics off: a medical tool sends nothing out unless the user asks (issue 27)
    with gr.Blocks(title="PANet++ Studio", delete_cache=(max(60, ttl // 4), ttl), analytics_enabled=False) as demo:
        session = gr.State(Session(), time_to_live=SESSION_TTL)
        # the user key, kept (encrypted) in the browser: the same user after a reload or a restart
        user_key = gr.BrowserState("", storage_key="panet_user", secret=ctx.browser_secret())
        gr.Markdown(HEADER)
        with gr.Row():
            # custom values are let through to the handlers, which accept only names this session may use
            # (so an API client can name a checkpoint it saved after the page was built)
            ckpt = gr.Dropdown(ctx.checkpoint_choices("panet"), value=ctx.default_checkpoint("panet"),
                               label="Few-shot checkpoint", scale=3, allow_custom_value=True)
            refresh = gr.Button("Refresh list", scale=0, min_width=120)
        gr.Markdown(f"{ctx.data_message} Running on the **{ctx.device().upper()}**. {ctx.promptable_message()}")
        from .canvas import PageLink

        shared = Shared(session=session, ckpt=ckpt, link=PageLink(session))
        for title, tab in TABS:
            with gr.Tab(title):
                tab.build(ctx, shared)
        refresh.click(bind(ctx, refresh_checkpoints), ckpt, ckpt, api_name="refresh_checkpoints")
        demo.load(None, user_key, user_key, js=NEW_KEY_JS, queue=False, show_progress="hidden")
        # the page's session is created by its load, for the identity that loaded it (and by nothing else)
        demo.load(bind(ctx, _opener(shared.link)), None, None, queue=False, show_progress="hidden",
                  api_name="open_page").then(None, js=RESTORE_JS)
        # the menu lists this user's saved checkpoints whenever it is opened (also after a reload)
        ckpt.focus(bind(ctx, refresh_checkpoints), ckpt, ckpt, api_name=False, show_progress="hidden")
        demo.unload(bind(ctx, forget))
        from . import script_api, session_api
        script_api.register(ctx)
        session_api.register(ctx, shared.link)
        if ctx.config.db_url:
            from . import team_api
            team_api.register(ctx)
    demo.queue(default_concurrency_limit=2)
    return demo


def launch_options(ctx: AppContext) -> dict:
    """demo.launch() settings that belong to the app (app.py and the tests use the same): nothing
    below outputs/ is served by URL except Gradio's own cache; saved checkpoints are blocked too; the
    page's keyboard shortcuts (Gradio 6 takes `head` at launch)."""
    from core.io import MAX_UPLOAD_BYTES

    from .limits import app_kwargs

    return {"max_file_size": MAX_UPLOAD_BYTES, "blocked_paths": [str(ctx.saved_dir)], "head": shortcuts.head(),
            "app_kwargs": app_kwargs(ctx)}
