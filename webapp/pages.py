"""Who owns a page's state (issue 26, part 3): an identity per caller, a registry of pages, a gate.

- **Identity**: the signed-in user (an app started with `auth=`), the one local user (single-user
  install), else the browser's identity cookie `panet_id`, which only the server sets: random, signed
  with an HMAC key that never leaves the server, `HttpOnly` (no script reads it) and `SameSite=Strict`.
  A caller without one of these has no identity and owns nothing.
- **Pages**: a page's session (its Gradio session hash) is registered by the page load, for the identity
  that loaded it, and by nothing else. At most `per_identity` pages per identity (its own oldest page
  gives way) and `total` pages in all (a new page is then refused: a flood of identities never evicts
  another's page).
- **Gate**: an ASGI middleware in front of Gradio's component server (the canvas's calls). A call that
  names a session its caller does not own is refused with 403 before Gradio looks the session up, so a
  stream of fresh or stolen session hashes creates no state and evicts nothing.
"""
from __future__ import annotations

import hashlib
import hmac
import json
import secrets
import threading
import time
from collections import OrderedDict
from http.cookies import SimpleCookie

ID_COOKIE = "panet_id"
PER_IDENTITY = 8
TOTAL = 400


class PageRegistry:
    def __init__(self, per_identity: int = PER_IDENTITY, total: int = TOTAL, ttl_s: float = 3600.0):
        self.per_identity, self.total, self.ttl_s = per_identity, total, ttl_s
        self._pages: OrderedDict[str, tuple[str, float]] = OrderedDict()   # session hash -> (identity, last use)
        # identity -> the page it used last (kept after that page closes: a reload picks its state up again)
        self._last: OrderedDict[str, str] = OrderedDict()
        self._lock = threading.Lock()

    def _expire(self, now: float) -> None:
        for sh in [sh for sh, (_, seen) in self._pages.items() if now - seen > self.ttl_s]:
            del self._pages[sh]

    def register(self, session_hash: str, identity: str | None) -> list[str]:
        """The page `session_hash` belongs to `identity` from now on; returns the pages it evicted (only ever
        that identity's own). Raises PermissionError when there is no identity or no room."""
        if not identity or not isinstance(session_hash, str) or not session_hash:
            raise PermissionError("this page has no identity: reload it (cookies must be allowed)")
        now = time.time()
        with self._lock:
            self._expire(now)
            owner = self._pages.get(session_hash, (identity, now))[0]
            if owner != identity:
                raise PermissionError("this page belongs to someone else")
            self._pages[session_hash] = (identity, now)
            self._pages.move_to_end(session_hash)
            self._used(identity, session_hash)
            mine = [sh for sh, (who, _) in self._pages.items() if who == identity]
            evicted = mine[:max(0, len(mine) - self.per_identity)]
            for sh in evicted:
                del self._pages[sh]
            if len(self._pages) > self.total:
                del self._pages[session_hash]
                raise PermissionError("the app has as many open pages as it can hold: try again later")
            return evicted

    def owns(self, session_hash, identity: str | None) -> bool:
        with self._lock:
            entry = self._pages.get(session_hash) if isinstance(session_hash, str) else None
            if entry is None or not identity or not hmac.compare_digest(entry[0], identity):
                return False
            if time.time() - entry[1] > self.ttl_s:
                del self._pages[session_hash]
                return False
            self._pages[session_hash] = (identity, time.time())
            self._used(identity, session_hash)
            return True

    def _used(self, identity: str, session_hash: str) -> None:
        self._last[identity] = session_hash
        self._last.move_to_end(identity)
        while len(self._last) > self.total:
            self._last.popitem(last=False)

    def last_page(self, identity: str | None) -> str | None:
        """The page `identity` used last (open or closed), or None."""
        with self._lock:
            return self._last.get(identity) if identity else None

    def forget(self, session_hash: str) -> None:
        with self._lock:
            self._pages.pop(session_hash, None)

    def __len__(self) -> int:
        return len(self._pages)

    def count(self, identity: str) -> int:
        with self._lock:
            return sum(1 for who, _ in self._pages.values() if who == identity)


# ---------------------------------------------------------------------------------- identity
class Identities:
    """Signs and checks the identity cookie; names a caller."""

    def __init__(self, secret: bytes, single_user: bool):
        self._secret, self.single_user = secret, single_user

    def sign(self, key: str) -> str:
        return key + "." + hmac.new(self._secret, key.encode(), hashlib.sha256).hexdigest()[:32]

    def verify(self, value) -> str | None:
        if not isinstance(value, str) or value.count(".") != 1:
            return None
        key, _ = value.split(".")
        ok = len(key) == 32 and all(c in "0123456789abcdef" for c in key)
        return key if ok and hmac.compare_digest(self.sign(key), value) else None

    def of(self, cookies: dict, user: str | None = None) -> str | None:
        """'user:NAME', 'local', 'id:KEY', or None (no identity: owns nothing)."""
        if user:
            return f"user:{user}"
        if self.single_user:
            return "local"
        key = self.verify(cookies.get(ID_COOKIE))
        return f"id:{key}" if key else None

    def of_scope(self, scope) -> str | None:
        cookies = _cookies(scope)
        return self.of(cookies, auth_user(scope.get("app"), cookies))


def _cookies(scope) -> dict:
    raw = dict(scope.get("headers") or []).get(b"cookie", b"").decode("latin-1")
    jar = SimpleCookie()
    try:
        jar.load(raw)
    except Exception:   # a malformed cookie header: no identity from it
        return {}
    return {k: m.value for k, m in jar.items()}


def auth_user(app, cookies: dict) -> str | None:
    """The signed-in user of an app started with auth (Gradio's access-token cookie), else None."""
    if not getattr(app, "auth", None):
        return None
    cid = getattr(app, "cookie_id", "")
    token = cookies.get(f"access-token-{cid}") or cookies.get(f"access-token-unsecure-{cid}")
    return getattr(app, "tokens", {}).get(token)


# ---------------------------------------------------------------------------------- ASGI middleware
class PageGate:
    """Sets the identity cookie on every response to a caller without a valid one, and lets a call to
    the component server through only for a session its caller owns."""

    def __init__(self, app, registry: PageRegistry, identities: Identities):
        self.app, self.registry, self.identities = app, registry, identities

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        fresh = None
        if not self.identities.verify(_cookies(scope).get(ID_COOKIE)):
            fresh = self.identities.sign(secrets.token_hex(16))
            # this request already counts as that identity (the first page load carries no cookie yet); the
            # request's other cookies (a login's access token, the user key) are kept
            headers = list(scope.get("headers") or [])
            others = b"; ".join(v for k, v in headers if k == b"cookie")
            mine = f"{ID_COOKIE}={fresh}".encode()
            headers = [h for h in headers if h[0] != b"cookie"] + [(b"cookie", others + b"; " + mine if others else mine)]
            scope = dict(scope, headers=headers)

        async def with_cookie(message):
            if fresh and message["type"] == "http.response.start":
                secure = "; Secure" if scope.get("scheme") == "https" else ""
                value = f"{ID_COOKIE}={fresh}; Path=/; Max-Age=31536000; HttpOnly; SameSite=Strict{secure}"
                message = dict(message, headers=list(message.get("headers") or []) + [(b"set-cookie", value.encode())])
            await send(message)

        if scope["method"] == "POST" and scope.get("path", "").rstrip("/").endswith("/component_server"):
            body, more = b"", True
            while more:            # the body limit (webapp/limits.py) runs first: this is bounded
                message = await receive()
                body += message.get("body", b"")
                more = message.get("more_body", False)
            try:
                sh = json.loads(body).get("session_hash")
            except (ValueError, AttributeError):
                sh = None
            if not self.registry.owns(sh, self.identities.of_scope(scope)):
                return await _forbidden(with_cookie)
            sent = False

            async def replay():
                nonlocal sent
                if sent:
                    return await receive()
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await self.app(scope, replay, with_cookie)
        return await self.app(scope, receive, with_cookie)


async def _forbidden(send) -> None:
    body = json.dumps({"error": "This page's session is not yours, or it ended: reload the page."}).encode()
    await send({"type": "http.response.start", "status": 403,
                "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]})
    await send({"type": "http.response.body", "body": body})
