"""The LAN proxy: when a node's Ollama listens only on localhost, the agent can offer the router a
way in that is not a raw TCP pipe. It forwards only the routes the router uses, streams answers
as they arrive, and, when a fleet secret is set, only requests the router signed with it.
"""

from __future__ import annotations

import aiohttp
import structlog
from aiohttp import web

from herd_kernel import auth

log = structlog.get_logger("herd.node.proxy")

# what the router sends to a node; model management (delete, create, push, copy) is not on it
ALLOWED = frozenset({
    ("POST", "/api/chat"), ("POST", "/api/generate"), ("POST", "/api/embed"),
    ("POST", "/api/embeddings"), ("POST", "/api/show"), ("POST", "/api/pull"),
    ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"), ("POST", "/v1/embeddings"),
    ("GET", "/api/tags"), ("GET", "/api/ps"), ("GET", "/api/version"), ("GET", "/"),
})
MAX_BODY = 256 * 1024 * 1024
_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "server", "date"}

SECRET = web.AppKey("secret", str)
TARGET = web.AppKey("target", str)
NONCES = web.AppKey("nonces", auth.NonceCache)
HTTP = web.AppKey("http", aiohttp.ClientSession)


async def forward(request: web.Request) -> web.StreamResponse:
    if (request.method, request.path) not in ALLOWED:
        return web.json_response({"error": "not available through the Herd node proxy"}, status=404)
    body = await request.read()
    secret = request.app[SECRET]
    if secret:
        problem = auth.verify(secret, request.headers.get(auth.HEADER), request.method,
                              request.path, body, request.app[NONCES])
        if problem:
            log.warning("proxy request refused", peer=request.remote, reason=problem)
            return web.json_response({"error": f"unauthorized: {problem}"}, status=401)
    headers = {"Content-Type": request.headers.get("Content-Type", "application/json")}
    url = request.app[TARGET] + request.path_qs
    try:
        async with request.app[HTTP].request(request.method, url, data=body or None,
                                             headers=headers) as upstream:
            response = web.StreamResponse(
                status=upstream.status,
                headers={k: v for k, v in upstream.headers.items() if k.lower() not in _HOP},
            )
            await response.prepare(request)
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
            return response
    except aiohttp.ClientError as exc:
        return web.json_response({"error": f"local Ollama unreachable: {exc}"}, status=502)


def make_app(target: str, secret: str) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[SECRET] = secret
    app[TARGET] = target.rstrip("/")
    app[NONCES] = auth.NonceCache()
    app.router.add_route("*", "/{tail:.*}", forward)

    async def session(app: web.Application):
        app[HTTP] = aiohttp.ClientSession(
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=5), auto_decompress=False
        )
        yield
        await app[HTTP].close()

    app.cleanup_ctx.append(session)
    return app


async def start(target: str, secret: str, host: str, port: int) -> tuple[web.AppRunner, int]:
    runner = web.AppRunner(make_app(target, secret), access_log=None, handle_signals=False)
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return runner, bound
