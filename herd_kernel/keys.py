"""Client API keys (``FLEET_API_KEYS``): the key table, the middleware that guards every client
route with it, and the dashboard's login, whose cookie holds a session token derived by HMAC,
never a key.

Keys are kept only as HMAC-SHA256 digests under a random secret made at start-up, and a presented
key is found by its digest in a dict: one HMAC and one lookup per request whatever the number of
keys, and no comparison whose time depends on how much of a real key was guessed (the digest of a
guess says nothing about a key without the secret). docs/security.md says who may call what.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import secrets
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import structlog
from aiohttp import web

from herd_kernel.config import SettingError
from herd_kernel.wire import (
    KEY_APP,
    BadRequest,
    api_for_path,
    error_response,
    parse_json_object,
    read_body,
)

log = structlog.get_logger("herd.keys")

#: the attribute a route handler carries when the client-key middleware must let it through:
#: "node" (heartbeats, hello: nodes prove the fleet secret instead), "login", or the admin
#: guard's "read"/"write" (which accepts client keys itself, ``admission.admin_problem``)
ACCESS = "herd_access"
COOKIE = "herd_session"
SESSION_S = 12 * 3600
_UNAUTHORIZED = {"WWW-Authenticate": 'Bearer realm="herd"'}


def mark(handler: Any, access: str) -> Any:
    setattr(handler, ACCESS, access)
    return handler


def parse(value: str) -> dict[str, str]:
    """``FLEET_API_KEYS``: comma-separated entries, or, when the value starts with ``/``, ``~``
    or ``.``, a file of one entry per line (``#`` starts a comment). An entry is a key, then
    optionally whitespace and the app name that tags its requests. key -> app name ("": none)."""
    value = value.strip()
    if value[:1] in ("/", "~", "."):
        path = Path(value).expanduser()
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SettingError(f"FLEET_API_KEYS: cannot read the key file {path}: {exc}") from None
        items = [line.split("#", 1)[0] for line in text.splitlines()]
        where = f"the key file {path}"
    else:
        items, where = value.split(","), "FLEET_API_KEYS"
    keys: dict[str, str] = {}
    for item in items:
        fields = item.split()
        if not fields:
            continue
        if len(fields) > 2 or len(fields[-1]) > 128:
            raise SettingError(f"{where}: an entry is a key and at most one app name (of up to "
                               f"128 characters), separated by spaces; found {len(fields)} words")
        key, app = fields[0], fields[1] if len(fields) == 2 else ""
        if not key.isascii() or not key.isprintable():
            raise SettingError(f"{where}: keys must be printable ASCII")
        if keys.get(key, app) != app:
            raise SettingError(f"{where}: one key is listed with two app names")
        keys[key] = app
    if value and not keys:  # a file with no keys must not leave the router open
        raise SettingError(f"{where} holds no keys")
    return keys


class Keys:
    """The client keys and the dashboard sessions of one router process (a restart ends every
    session: the secret they are signed with is made at start-up)."""

    def __init__(self, keys: Mapping[str, str], admin_key: str = "") -> None:
        self._secret = secrets.token_bytes(32)
        self._apps = {self._digest(key): app for key, app in keys.items()}
        self._admin = self._digest(admin_key) if admin_key else None

    @property
    def required(self) -> bool:
        """Client routes need a key: some are configured."""
        return bool(self._apps)

    @property
    def any(self) -> bool:
        """Some key (client or admin) is configured: the dashboard has a login."""
        return bool(self._apps) or self._admin is not None

    def _digest(self, key: str) -> bytes:
        return hmac.digest(self._secret, key.encode(), hashlib.sha256)

    def client(self, headers: Mapping[str, str]) -> str | None:
        """The app name ("" for none) of the client key the request presents as
        ``Authorization: Bearer`` or ``X-API-Key``; None when it presents none that is valid."""
        bearer = headers.get("Authorization", "")
        if bearer[:7].lower() == "bearer ":
            app = self._apps.get(self._digest(bearer[7:].strip()))
            if app is not None:
                return app
        other = headers.get("X-API-Key")
        return self._apps.get(self._digest(other.strip())) if other else None

    def reader(self, request: web.Request) -> bool:
        """May read the owner's views (``/fleet/*``, ``/dashboard/api/*``, ``/metrics``) as a
        client: a client key, or, for a GET, a dashboard session."""
        if self.client(request.headers) is not None:
            return True
        return request.method in ("GET", "HEAD") and self.session_ok(request.cookies.get(COOKIE))

    # --- dashboard sessions: "<expires>.<who>.<hmac>", who = a digest prefix or "admin"

    def _who(self, key: str) -> str | None:
        digest = self._digest(key)
        if self._admin is not None and hmac.compare_digest(digest, self._admin):
            return "admin"
        return digest.hex()[:32] if digest in self._apps else None

    def _sign(self, expires: int, who: str) -> str:
        mac = hmac.digest(self._secret, f"session\n{expires}\n{who}".encode(), hashlib.sha256)
        return mac.hex()

    def session(self, key: str, now: float | None = None) -> str | None:
        """A session token for a valid key (client or admin), or None."""
        who = self._who(key)
        if who is None:
            return None
        expires = int((time.time() if now is None else now) + SESSION_S)
        return f"{expires}.{who}.{self._sign(expires, who)}"

    def session_ok(self, token: str | None, now: float | None = None) -> bool:
        if not token or len(token) > 200:
            return False
        expires, _, rest = token.partition(".")
        who, _, mac = rest.partition(".")
        if not expires.isdigit() or int(expires) < (time.time() if now is None else now):
            return False
        return hmac.compare_digest(self._sign(int(expires), who), mac)


def middleware(keys: Keys) -> Any:
    """Every route needs a client key, except the ones marked (``ACCESS``) and paths the router
    does not serve (their 404 says nothing a key protects). A GET of ``/dashboard...`` also
    passes with a session cookie; a browser without one is sent to the login form."""

    @web.middleware
    async def client_keys(request: web.Request, handler: Any) -> web.StreamResponse:
        match = request.match_info
        if match.http_exception is not None or hasattr(match.handler, ACCESS):
            return await handler(request)
        app = keys.client(request.headers)
        if app is None:
            dashboard = request.path.startswith("/dashboard") and request.method in ("GET", "HEAD")
            if dashboard and keys.session_ok(request.cookies.get(COOKIE)):
                return await handler(request)
            if dashboard and "text/html" in request.headers.get("Accept", ""):
                return _redirect("/dashboard/login")
            given = "Authorization" in request.headers or "X-API-Key" in request.headers
            message = ("invalid API key" if given else
                       "missing API key: send Authorization: Bearer <key> or X-API-Key: <key>")
            return error_response(api_for_path(request.path), 401, message, headers=_UNAUTHORIZED)
        if app:
            request[KEY_APP] = app
        return await handler(request)

    return client_keys


# --- the dashboard's login ------------------------------------------------------------------------

_FORM = """<!doctype html>
<html lang="en">
<head><meta charset="utf-8"><meta name="viewport" content="width=device-width, initial-scale=1">
<title>Herd: sign in</title></head>
<body>
<main>
<h1>Sign in to Herd</h1>
{message}<form method="post" action="/dashboard/login">
<label for="key">API key</label>
<input id="key" name="key" type="password" autocomplete="current-password" required autofocus>
<button type="submit">Sign in</button>
</form>
</main>
</body>
</html>
"""
_PAGE_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; form-action 'self'; frame-ancestors 'none'",
    "Cache-Control": "no-store", "X-Content-Type-Options": "nosniff",
}


def _redirect(location: str) -> web.Response:
    return web.Response(status=303, headers={"Location": location, "Cache-Control": "no-store"})


def _page(message: str = "", status: int = 200) -> web.Response:
    shown = f'<p role="alert">{html.escape(message)}</p>\n' if message else ""
    return web.Response(status=status, text=_FORM.format(message=shown), content_type="text/html",
                        charset="utf-8", headers=_PAGE_HEADERS)


def login_routes(keys: Keys) -> list[tuple[str, str, Any]]:
    """``GET /dashboard/login`` (the form) and ``POST /dashboard/login`` (a JSON body
    ``{"key": ...}`` or the form's): a valid client or admin key gets a session cookie
    (``HttpOnly``, ``SameSite=Strict``) that counts for the dashboard's GETs."""

    async def form(request: web.Request) -> web.Response:
        return _page("" if keys.any else "No keys are configured: the dashboard needs no login.")

    async def login(request: web.Request) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if origin and urlsplit(origin).netloc.lower() != request.host.lower():
            return web.json_response({"error": "cross-origin login refused"}, status=403)
        as_form = request.content_type == "application/x-www-form-urlencoded"
        raw = await read_body(request, 8 * 1024, 10.0)
        if as_form:
            key = (parse_qs(raw.decode("utf-8", "replace")).get("key") or [""])[0]
        elif request.content_type == "application/json":
            value = parse_json_object(raw).get("key")
            if not isinstance(value, str):
                raise BadRequest("send {\"key\": \"<an API key>\"}")
            key = value
        else:
            raise BadRequest("send the key as JSON ({\"key\": ...}) or as a form", 415)
        token = keys.session(key.strip()) if keys.any else None
        if token is None:
            log.warning("dashboard login refused", peer=request.remote)
            if as_form:
                return _page("That key is not valid." if keys.any else
                             "No keys are configured: the dashboard needs no login.", 401)
            return web.json_response({"error": "invalid key"}, status=401)
        response: web.Response
        if as_form:
            response = _redirect("/dashboard")
        else:
            response = web.json_response({"ok": True, "expires_in_s": SESSION_S})
        response.set_cookie(COOKIE, token, max_age=SESSION_S, path="/", httponly=True,
                            samesite="Strict", secure=request.secure)
        return response

    async def logout(request: web.Request) -> web.Response:
        response = web.json_response({"ok": True})
        response.del_cookie(COOKIE, path="/")
        return response

    return [("GET", "/dashboard/login", mark(form, "login")),
            ("POST", "/dashboard/login", mark(login, "login")),
            ("POST", "/dashboard/logout", mark(logout, "login"))]
