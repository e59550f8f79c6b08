"""Cross-origin requests as Ollama answers them (gin-contrib/cors with ``OLLAMA_ORIGINS``).

The allowed origins are ``FLEET_ORIGINS`` plus Ollama's defaults: localhost, 127.0.0.1 and
0.0.0.0 on any port over http or https, and the ``app``, ``file``, ``tauri``, ``vscode-webview``
and ``vscode-file`` schemes. One ``*`` per origin is a wildcard; ``*`` alone allows every origin.
A request from its own origin passes untouched; one from an origin not allowed gets 403, as
Ollama's does; a preflight (``OPTIONS`` with ``Origin``) from an allowed origin gets 204.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from aiohttp import web

DEFAULT_ORIGINS: tuple[str, ...] = (
    *(f"{scheme}://{host}{port}" for host in ("localhost", "127.0.0.1", "0.0.0.0")
      for port in ("", ":*") for scheme in ("http", "https")),
    "app://*", "file://*", "tauri://*", "vscode-webview://*", "vscode-file://*",
)
ALLOW_METHODS = "GET,POST,PUT,PATCH,DELETE,HEAD,OPTIONS"
ALLOW_HEADERS = ",".join((
    "Authorization", "Content-Type", "User-Agent", "Accept", "X-Requested-With",
    # OpenAI SDK headers, as Ollama lists them
    "Openai-Beta", "X-Stainless-Arch", "X-Stainless-Async", "X-Stainless-Custom-Poll-Interval",
    "X-Stainless-Helper-Method", "X-Stainless-Lang", "X-Stainless-Os",
    "X-Stainless-Package-Version", "X-Stainless-Poll-Helper", "X-Stainless-Retry-Count",
    "X-Stainless-Runtime", "X-Stainless-Runtime-Version", "X-Stainless-Timeout",
))
MAX_AGE = "43200"  # 12 h, gin-contrib/cors's default

_ORIGIN = web.RequestKey("cors_origin", str)  # this request's allowed origin, for on_prepare


class Origins:
    """Which origins may call the router from a browser."""

    def __init__(self, extra: str = "") -> None:
        listed = [o.strip().lower() for o in extra.split(",") if o.strip()]
        listed += DEFAULT_ORIGINS
        self.any = "*" in listed
        self.exact = frozenset(o for o in listed if "*" not in o)
        self.wildcards = tuple(tuple(o.split("*", 1)) for o in listed if o.count("*") == 1)

    def allowed(self, origin: str) -> bool:
        if self.any or origin in self.exact:
            return True
        return any(origin.startswith(head) and origin.endswith(tail)
                   for head, tail in self.wildcards)


def middleware(origins: Origins) -> Callable[..., Awaitable[web.StreamResponse]]:
    """Answers preflights and refuses foreign origins before routing (so an ``OPTIONS`` never
    meets the 405 of a route without one); ``on_prepare`` adds the headers to every answer."""

    @web.middleware
    async def cors(request: web.Request, handler) -> web.StreamResponse:
        origin = request.headers.get("Origin")
        if not origin or origin in (f"http://{request.host}", f"https://{request.host}"):
            return await handler(request)
        if not origins.allowed(origin):
            return web.Response(status=403)
        request[_ORIGIN] = "*" if origins.any else origin
        if request.method == "OPTIONS":
            return web.Response(status=204, headers={
                "Access-Control-Allow-Methods": ALLOW_METHODS,
                "Access-Control-Allow-Headers": ALLOW_HEADERS,
                "Access-Control-Max-Age": MAX_AGE,
            })
        return await handler(request)

    return cors


async def on_prepare(request: web.Request, response: web.StreamResponse) -> None:
    """Before any answer's headers go out (streamed ones and errors too): the allowed origin."""
    origin = request.get(_ORIGIN)
    if origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        if origin == "*":
            return
        response.headers.add("Vary", "Origin")
        if request.method == "OPTIONS":
            response.headers.add("Vary", "Access-Control-Request-Method")
            response.headers.add("Vary", "Access-Control-Request-Headers")
