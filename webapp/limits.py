"""Request bodies bounded before anything parses them (issue 27).

An ASGI middleware in front of every route of the app (Gradio's and the canvas's component server): a
body whose `Content-Length` passes the limit is answered 413 at once, and a body sent without one (chunked)
is counted as it streams and cut off, with a 413, as soon as it passes the limit. The JSON routes get
`JSON_LIMIT` (a painted mask travels as a PNG data URL of at most 2 MB); Gradio's upload route gets the
upload limit plus room for the multipart framing."""
from __future__ import annotations

from core.io import MAX_UPLOAD_BYTES

JSON_LIMIT = 3 * 2**20
UPLOAD_LIMIT = MAX_UPLOAD_BYTES + 2**20


class TooLarge(BaseException):
    """A BaseException on purpose: a route's own `except Exception` around its body parse (Gradio's
    component server answers 'Invalid JSON body') must not turn the refusal into another answer."""


class BodyLimit:
    def __init__(self, app, json_limit: int = JSON_LIMIT, upload_limit: int = UPLOAD_LIMIT):
        self.app = app
        self.json_limit, self.upload_limit = json_limit, upload_limit

    def limit_for(self, path: str) -> int:
        return self.upload_limit if path.rstrip("/").endswith("/upload") else self.json_limit

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http" or scope["method"] in ("GET", "HEAD", "OPTIONS"):
            return await self.app(scope, receive, send)
        limit = self.limit_for(scope.get("path", ""))
        declared = dict(scope.get("headers") or []).get(b"content-length")
        try:
            if declared is not None and int(declared) > limit:
                return await _refuse(send, limit)
        except ValueError:
            return await _refuse(send, limit, 400, b"bad Content-Length")
        seen, started = 0, False

        async def counted():
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise TooLarge
            return message

        async def watched(message):
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, counted, watched)
        except TooLarge:
            if not started:
                await _refuse(send, limit)


async def _refuse(send, limit: int, status: int = 413, text: bytes | None = None) -> None:
    body = text or f"request body over the limit ({limit // 2**20} MB): refused before reading it".encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"text/plain"), (b"content-length", str(len(body)).encode()),
                            (b"connection", b"close")]})
    await send({"type": "http.response.body", "body": body})


def app_kwargs(ctx=None) -> dict:
    """FastAPI keyword arguments for `demo.launch(app_kwargs=...)`: the body limit first (outermost), then
    the page gate (webapp/pages.py: identity cookie, a session only for its owner)."""
    from starlette.middleware import Middleware

    from .pages import PageGate

    middleware = [Middleware(BodyLimit)]
    if ctx is not None:
        middleware.append(Middleware(PageGate, registry=ctx.pages, identities=ctx.identities))
    return {"middleware": middleware}
