"""One proxied request's life: score -> dispatch -> relay -> trace, with transparent retry on
another node while nothing has reached the client yet.

Bytes are relayed as they arrive, cut only at frame boundaries (the engine's dialect says what
separates its frames) so that a node dying mid-frame never leaves a half frame in the client's
stream; the stream then ends with an error frame in the client's own format. When the engine speaks
another dialect than the client, the backend's ``Translator`` rewrites each frame on the way.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, Protocol

import attrs
import structlog
from aiohttp import web

from herd_kernel.models import Attempt, RouteRequest, Trace
from herd_kernel.queues import Refused, Slot
from herd_kernel.scoring import Decision, NoRoute
from herd_kernel.upstream import AnswerTooLarge, Response
from herd_kernel.wire import BODY, BadRequest, Dialect, dialect, error_response, stream_error

if TYPE_CHECKING:
    from herd_kernel.config import Config
    from herd_kernel.fleet import Fleet
    from herd_kernel.queues import QueueManager
    from herd_kernel.scoring import Scorer
    from herd_kernel.upstream import Upstream

log = structlog.get_logger("herd.request")
_LOGGED_BODY = 64 * 1024  # bytes of a body FLEET_LOG_BODIES logs

_TAIL = 16384  # bytes of stream kept to read the final chunk's token counts
_FORWARD_HEADERS = ("Content-Type",)


class Translator(Protocol):
    """Rewrites an engine's answer into the client's dialect, for one request."""

    content_type: str  # of the translated answer

    def frame(self, frames: bytes) -> bytes:
        """Whole frames of the engine's stream (one or more, as they arrived) -> what the client
        gets for them (maybe b"")."""
        ...

    def end(self) -> bytes:
        """The stream ended normally: the client's closing frames."""
        ...

    def whole(self, body: bytes, status: int) -> bytes:
        """A whole (non-streamed, or error) answer with its status."""
        ...


@attrs.frozen(kw_only=True)
class Outbound:
    """What a backend sends for one routing decision: the bytes, where to (``path`` on the chosen
    endpoint; "" for the client's own path), the dialect the engine answers in ("" for the
    client's), a translator when those differ, extra response headers, and an optional function
    that derives more headers from a whole (non-streamed) answer."""

    body: bytes
    path: str = ""
    dialect: str = ""
    translate: Translator | None = None
    headers: Mapping[str, str] = attrs.field(factory=dict)
    on_complete: Callable[[bytes], Mapping[str, str]] | None = None  # whole answer -> headers
    observe: Callable[[bytes], None] | None = None  # each relayed frame of a stream
    summary: Callable[[], Mapping[str, Any]] | None = None  # -> Trace.details


class UpstreamFailed(Exception):
    """An attempt that failed before anything reached the client; ``node_fault`` False when the
    node is not to blame (it only lost the model, or was busy); ``timeout`` when it failed by
    waiting too long (connect, read, no progress), noted in the trace for the health engine."""

    def __init__(self, reason: str, status: int | None = None, *, node_fault: bool = True,
                 timeout: bool = False) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status
        self.node_fault = node_fault
        self.timeout = timeout


_ERROR_BODY_LIMIT = 1024 * 1024  # an error answer longer than this is not an error message


_ID_PREFIX = os.urandom(4).hex()  # this process's; the counter makes each id unique within it
_ids = itertools.count(1)


def new_request_id() -> str:
    """16 hex digits, unique across restarts (random prefix) without a system call per request."""
    return f"{_ID_PREFIX}{next(_ids) & 0xFFFFFFFF:08x}"


class Pipeline:
    """Built with what it uses; ``upstream`` is set once the router's event loop runs, and
    ``draining`` when it starts to stop (new requests then get 503)."""

    def __init__(
        self, config: Config, fleet: Fleet, scorer: Scorer, queues: QueueManager,
        record: Callable[[Trace], None], sign: Callable[[str, bytes], dict[str, str]],
    ) -> None:
        self.config = config
        self.fleet = fleet
        self.scorer = scorer
        self.queues = queues
        self.record = record
        self.sign = sign  # (path, body) -> the headers of a request to a node
        self.upstream: Upstream
        self.draining = False
        self.max_frame = int(config["FLEET_MAX_FRAME_MB"] * 2**20)
        self.max_response = int(config["FLEET_MAX_RESPONSE_MB"] * 2**20)

    async def proxy(
        self,
        request: web.Request,
        route: RouteRequest,
        prepare: Callable[[Decision], Outbound],
        *,
        upstream_path: str,
        not_found: Callable[[str], str],
    ) -> web.StreamResponse:
        """Route ``route`` and relay the chosen node's answer to ``request``.

        ``prepare(decision)`` gives what to send to the chosen node (the client's own bytes when
        nothing needs rewriting). ``not_found(model)`` is the API's 404 message.
        """
        started = time.monotonic()
        # every log line of this request (its own task: aiohttp gives each request one) names it
        structlog.contextvars.bind_contextvars(request_id=route.request_id)
        if BODY in request:  # FLEET_LOG_BODIES: the one place a prompt may reach the logs
            raw = request[BODY]
            log.info("request body", path=route.path, model=route.model, bytes=len(raw),
                     body=raw[:_LOGGED_BODY].decode("utf-8", "replace"),
                     truncated=len(raw) > _LOGGED_BODY)
        attempts: list[Attempt] = []
        if self.draining:
            return self._stopping(route, started, attempts, "the router is shutting down")
        exclude: set[str] = set()
        max_retries = self.config["FLEET_MAX_RETRIES"]
        alive = _client_alive(request)
        # the trace's details the health engine counts: "timeout" (an attempt timed out), "cold"
        # (the last chosen node did not hold the model in memory when the request was sent)
        notes: dict[str, Any] = {}
        while True:
            try:
                got = await self.queues.acquire(route, exclude, alive)
            except asyncio.CancelledError:
                self._finish(route, started, None, attempts, None, status="client_disconnected",
                             http_status=499, error_message="client disconnected while waiting",
                             notes=notes)
                raise
            if isinstance(got, NoRoute):
                return self._no_route(route, got, attempts, started, not_found, notes)
            if isinstance(got, Refused):
                return self._refused(route, got, attempts, started, notes)
            decision, slot = got
            slot.task = asyncio.current_task()
            node = decision.node
            if decision.model_key in node.loaded:
                notes.pop("cold", None)
            else:
                notes["cold"] = True
            upstream: Response | None = None
            node_ok: bool | None = False  # for the lane: completed, failed, or not the node's doing
            tokens: int | None = None
            try:
                outbound = prepare(decision)
                engine = dialect(outbound.dialect or route.api)
                upstream, early = await self._open(decision, outbound.path or upstream_path,
                                                   outbound.body, engine)
                slot.touch()
                response, fields = await self._relay(
                    request, route, decision, upstream, early, attempts, started, outbound, slot,
                    engine)
                node_ok = fields.pop("node_ok")
                tokens = fields.get("completion_tokens")
            except (UpstreamFailed, asyncio.CancelledError) as exc:
                if isinstance(exc, asyncio.CancelledError):
                    if slot.ended is None:
                        self._finish(route, started, decision, attempts, slot,
                                     status="client_disconnected", http_status=499,
                                     error_message="request cancelled", notes=notes)
                        raise
                    # the router ended it (reaper, shutdown) before anything reached the client
                    asyncio.current_task().uncancel()  # type: ignore[union-attr]
                    if not slot.reaped:
                        return self._stopping(route, started, attempts, slot.ended, notes)
                    exc = UpstreamFailed(f"no progress for {self.queues.stale_timeout:g} s "
                                         "(reaped)", timeout=True)
                elif not exc.node_fault:
                    node_ok = None
                if exc.timeout:
                    notes["timeout"] = True
                    notes.setdefault("timeout_nodes", []).append(node.node_id)
                # nothing has reached the client yet: try the next-best node, never this one again
                attempts.append(
                    Attempt(node_id=node.node_id, outcome=exc.reason, status=exc.status))
                exclude.add(node.node_id)
                if len(attempts) > max_retries:
                    return self._all_failed(route, attempts, started, notes)
                log.info("retrying on another node", node=node.node_id, reason=exc.reason,
                         request_id=route.request_id)
                continue
            except BadRequest as exc:  # the engine there cannot take this body as it is
                node_ok = None
                self._finish(route, started, decision, attempts, slot, status="rejected",
                             http_status=exc.status, error_message=exc.message, notes=notes)
                return error_response(route.api, exc.status, exc.message,
                                      headers={"X-Request-Id": route.request_id})
            except Exception:
                log.exception("request failed in the router", request_id=route.request_id,
                              node=node.node_id)
                self._finish(route, started, decision, attempts, slot, status="failed",
                             http_status=500, error_message="internal router error", notes=notes)
                raise
            finally:
                # the slot first: nothing below may keep a node's place taken
                try:
                    slot.release(node_ok, tokens)
                finally:
                    if upstream is not None:
                        upstream.release()
            if fields.pop("timeout", False):
                notes["timeout"] = True
                notes.setdefault("timeout_nodes", []).append(node.node_id)
            self._finish(route, started, decision, attempts, slot, notes=notes, **fields)
            return response

    # --- upstream ------------------------------------------------------------------------------

    async def _open(
        self, decision: Decision, path: str, payload: bytes, engine: Dialect
    ) -> tuple[Response, bytes | None]:
        """Send the request; the node's answer once its head is in, with its body already read
        when it is an error that goes back to the client as it is. Raises ``UpstreamFailed`` when
        another node should be tried: the node cannot be reached, dropped the connection, is
        unwell (5xx), busy (408, 429) or no longer has the model (404)."""
        node = decision.node
        if decision.endpoint is None:
            raise UpstreamFailed("no endpoint serves the model")
        try:
            response = await self.upstream.post(
                decision.endpoint.url, path, payload, self.sign(path, payload)
            )
        except (TimeoutError, OSError) as exc:  # UpstreamError is an OSError
            step = "dropped after sending" if getattr(exc, "sent", False) else "connect"
            raise UpstreamFailed(f"{step}: {type(exc).__name__}: {exc}".rstrip(": "),
                                 timeout=isinstance(exc, TimeoutError)) from None
        status = response.status
        if status < 400:
            return response, None
        try:
            body = await response.read(_ERROR_BODY_LIMIT)
        except (TimeoutError, OSError, AnswerTooLarge) as exc:
            response.release()
            raise UpstreamFailed(f"HTTP {status}, then {type(exc).__name__}", status,
                                 timeout=isinstance(exc, TimeoutError)) from None
        message = _error_text(body[:2048].decode("utf-8", "replace"))
        fault = engine.classify(status, message)
        if fault == "gone":
            # its model list changed since its last heartbeat: forget the model there at once
            self.fleet.forget_model(node.node_id, decision.model_key)
            response.release()
            raise UpstreamFailed(f"model gone: HTTP {status}: {message}", status,
                                 node_fault=False)
        if fault != "client":
            response.release()
            raise UpstreamFailed(f"HTTP {status}: {message}", status, node_fault=status >= 500)
        return response, body  # the client's own mistake: the engine's answer, as it is

    async def _relay(
        self,
        request: web.Request,
        route: RouteRequest,
        decision: Decision,
        upstream: Response,
        early: bytes | None,
        attempts: list[Attempt],
        started: float,
        outbound: Outbound,
        slot: Slot,
        engine: Dialect,
    ) -> tuple[web.StreamResponse, dict[str, Any]]:
        """Relay the answer. ``ttft_ms`` runs from the request's arrival to the first streamed
        byte; a non-streaming answer has none (it arrives whole). ``early``: an error body
        ``_open`` already read, relayed as it is."""
        headers = self._fleet_headers(route, decision, attempts, slot)
        headers.update(outbound.headers)
        for name in _FORWARD_HEADERS:
            value = upstream.headers.get(name.lower())
            if value is not None:
                headers[name] = value
        translate = outbound.translate
        told = engine  # the dialect of what the client gets: token counts are read from it
        if translate is not None:
            headers["Content-Type"] = translate.content_type
            told = dialect(route.api)

        if early is not None or not route.stream:
            payload = early
            if payload is None:
                try:
                    payload = await upstream.read(self.max_response)
                except (TimeoutError, OSError) as exc:
                    raise UpstreamFailed(f"read: {type(exc).__name__}: {exc}",
                                         timeout=isinstance(exc, TimeoutError)) from None
                except AnswerTooLarge as exc:  # another node would send as much: no retry
                    message = (f"node {decision.node.node_id}: {exc} (FLEET_MAX_RESPONSE_MB); "
                               "ask for less, or stream it")
                    return error_response(route.api, 502, message), {
                        "status": "failed", "http_status": 502, "error_message": message,
                        "node_ok": None}
            if translate is not None:
                payload = translate.whole(payload, upstream.status)
            fields = _counts(told, payload, whole=True)
            if outbound.on_complete is not None and upstream.status < 400:
                headers.update(outbound.on_complete(payload))
            response = web.Response(status=upstream.status, body=payload, headers=headers)
            status = "completed" if upstream.status < 400 else "failed"
            if outbound.summary is not None and status == "completed":
                fields["details"] = dict(outbound.summary())
            error = _error_text(payload[:300].decode("utf-8", "replace")) if status == "failed" else None
            return response, {
                "status": status,
                "http_status": upstream.status,
                "error_message": error,
                "node_ok": True,  # an answer, or the client's own mistake: the node did its job
                **fields,
            }

        delimiter = engine.delimiter
        try:
            first = await upstream.readany()
        except (TimeoutError, OSError) as exc:
            raise UpstreamFailed(f"read: {type(exc).__name__}: {exc}",
                                 timeout=isinstance(exc, TimeoutError)) from None
        if not first:
            raise UpstreamFailed("empty response")
        ttft_ms = (time.monotonic() - started) * 1000

        response = web.StreamResponse(status=upstream.status, headers=headers)
        pending = bytearray(first)  # bytes after the last whole frame
        searched = 0  # how much of ``pending`` holds no delimiter (a long frame is scanned once)
        tail = bytearray()
        error: str | None = None
        status = "completed"
        timed_out = False  # the node went silent past FLEET_READ_TIMEOUT, or was reaped
        max_frame = self.max_frame
        try:
            await response.prepare(request)
            while True:
                cut = pending.rfind(delimiter, max(0, searched - len(delimiter) + 1))
                if cut >= 0:
                    end = cut + len(delimiter)
                    frame = bytes(pending[:end])
                    del pending[:end]
                    if translate is not None:
                        frame = translate.frame(frame)
                    tail += frame
                    if frame:
                        await response.write(frame)  # waits while the client's buffer is full
                        if outbound.observe is not None:
                            outbound.observe(frame)
                    if len(tail) > _TAIL:
                        del tail[: len(tail) - _TAIL]
                searched = len(pending)
                if searched > max_frame:
                    error = (f"node {decision.node.node_id} sent a frame over "
                             f"{max_frame / 2**20:g} MiB (FLEET_MAX_FRAME_MB); "
                             "the stream was ended")
                    pending.clear()
                    break
                try:
                    chunk = await upstream.readany()
                except (TimeoutError, OSError) as exc:
                    error = f"node {decision.node.node_id} failed mid-stream: {type(exc).__name__}: {exc}"
                    timed_out = isinstance(exc, TimeoutError)
                    break
                if not chunk:
                    break
                slot.touch()
                pending += chunk
            if pending and error is None:  # a last frame without its delimiter
                last = bytes(pending)
                if translate is not None:
                    last = translate.frame(last)
                tail += last
                await response.write(last)
            if error is None and translate is not None:
                closing = translate.end()
                tail += closing
                if closing:
                    await response.write(closing)
            if error is not None:
                status = "failed"
                await response.write(stream_error(route.api, error))
            await response.write_eof()
        except ConnectionResetError:  # aiohttp's ClientConnectionResetError is one too
            status = "client_disconnected"
            error = "client disconnected"
        except asyncio.CancelledError:
            if slot.ended is None:
                raise
            asyncio.current_task().uncancel()  # type: ignore[union-attr]
            status = "reaped" if slot.reaped else "ended"
            timed_out = slot.reaped
            error = slot.ended
            try:  # the client may be the one that stopped reading: give up quickly
                async with asyncio.timeout(1.0):
                    await response.write(stream_error(route.api, error))
                    await response.write_eof()
            except (TimeoutError, ConnectionResetError):
                pass
        counts = _counts(told, bytes(tail), whole=False)
        if outbound.summary is not None:
            counts["details"] = dict(outbound.summary())
        return response, {
            "status": status,
            "http_status": upstream.status,
            "ttft_ms": ttft_ms,
            "error_message": error,
            # a client that left or a router that stopped is not the node's failure
            "node_ok": True if status in ("completed", "client_disconnected", "ended")
            else False,
            "timeout": timed_out,
            **counts,
        }

    # --- responses and traces ------------------------------------------------------------------

    def _fleet_headers(
        self, route: RouteRequest, decision: Decision, attempts: list[Attempt], slot: Slot
    ) -> dict[str, str]:
        headers = {
            "X-Fleet-Node": decision.node.node_id,
            "X-Fleet-Score": _fmt(decision.score),
            "X-Fleet-Score-Breakdown": decision.breakdown_header,
            "X-Fleet-Retries": str(len(attempts)),
            "X-Fleet-Served-Model": decision.model,
            "X-Request-Id": route.request_id,
        }
        if decision.fallback:
            headers["X-Fleet-Fallback"] = decision.model
        if slot.waited_s:
            headers["X-Fleet-Queued-Ms"] = str(round(slot.waited_s * 1000))
        return headers

    def _no_route(
        self,
        route: RouteRequest,
        decision: NoRoute,
        attempts: list[Attempt],
        started: float,
        not_found: Callable[[str], str],
        notes: Mapping[str, Any] | None = None,
    ) -> web.Response:
        gone = decision.kind == "unknown_model" and all(a.status == 404 for a in attempts)
        if attempts and not gone:
            return self._all_failed(route, attempts, started, notes)
        reporting = self.scorer.still_reporting() if decision.kind == "unknown_model" \
            else None
        if reporting is not None:  # not known *yet*: a 404 now would be a lie a client caches
            message = (f"fleet still reporting: model '{route.model}' is not listed yet "
                       f"({reporting[0]})")
            status = 503
        elif decision.kind == "unknown_model":  # also: every node that had it has lost it
            message = not_found(route.model)
            status = 404
        elif decision.kind == "refused":  # as Ollama's "... does not support ..." answers
            reasons = "; ".join(f"{n}: {r}" for n, r in sorted(decision.eliminated.items()))
            message = f"model '{route.model}' cannot serve {route.path} here ({reasons})"
            status = 400
        else:
            reasons = ", ".join(f"{n}: {r}" for n, r in sorted(decision.eliminated.items()))
            message = f"no node can serve model '{route.model}' right now ({reasons})"
            status = 503
        headers = {"X-Request-Id": route.request_id}
        if reporting is not None:
            headers["Retry-After"] = str(reporting[1])
        elif status == 503:
            headers.update({"Retry-After": "5", "x-should-retry": "false"})
        self._finish(route, started, None, attempts, None, status="rejected", http_status=status,
                     error_message=message, notes=notes)
        return error_response(route.api, status, message, headers=headers)

    def _stopping(
        self, route: RouteRequest, started: float, attempts: list[Attempt], reason: str,
        notes: Mapping[str, Any] | None = None,
    ) -> web.Response:
        """503 while the router shuts down; the connection closes with it."""
        self._finish(route, started, None, attempts, None, status="rejected", http_status=503,
                     error_message=reason, notes=notes)
        response = error_response(route.api, 503, reason,
                                  headers={"X-Request-Id": route.request_id, "Retry-After": "5"})
        response.force_close()
        return response

    def _refused(
        self, route: RouteRequest, refused: Refused, attempts: list[Attempt], started: float,
        notes: Mapping[str, Any] | None = None,
    ) -> web.Response:
        if refused.kind == "shutdown":
            return self._stopping(route, started, attempts, refused.reason, notes)
        if refused.kind == "gone":
            self._finish(route, started, None, attempts, None, status="client_disconnected",
                         http_status=499, error_message=refused.reason, notes=notes)
            return error_response(route.api, 499, refused.reason)
        retry_after = self.queues.retry_after(route.model)
        headers = {"X-Request-Id": route.request_id, "Retry-After": str(retry_after)}
        if refused.kind == "full":  # Ollama's own words when its queue is full
            message = "server busy, please try again.  maximum pending requests exceeded"
        else:
            message = (f"no node could take model '{route.model}' within "
                       f"{refused.limit_s:g} s: {refused.reason}")
            # the router already waited for the client: an SDK should not retry on its own
            headers["x-should-retry"] = "false"
        self._finish(route, started, None, attempts, None, status="rejected", http_status=503,
                     error_message=message, notes=notes)
        return error_response(route.api, 503, message, headers=headers)

    def _all_failed(self, route: RouteRequest, attempts: list[Attempt], started: float,
                    notes: Mapping[str, Any] | None = None) -> web.Response:
        detail = "; ".join(f"{a.node_id}: {a.outcome}" for a in attempts)
        message = f"every node that can serve model '{route.model}' failed ({detail})"
        self._finish(route, started, None, attempts, None, status="failed", http_status=502,
                     error_message=message, notes=notes)
        headers = {"X-Request-Id": route.request_id, "X-Fleet-Retries": str(len(attempts) - 1),
                   "x-should-retry": "false"}
        return error_response(route.api, 502, message, headers=headers)

    def _finish(
        self,
        route: RouteRequest,
        started: float,
        decision: Decision | None,
        attempts: list[Attempt],
        slot: Slot | None,
        *,
        status: str,
        http_status: int,
        ttft_ms: float | None = None,
        error_message: str | None = None,
        prompt_tokens: int | None = None,
        completion_tokens: int | None = None,
        details: Mapping[str, Any] | None = None,
        notes: Mapping[str, Any] | None = None,
    ) -> None:
        final = list(attempts)
        if notes:
            details = {**notes, **(details or {})}
        if slot is not None and slot.waited_s:
            details = {**(details or {}), "queued_ms": round(slot.waited_s * 1000, 3)}
        if decision is not None:
            final.append(Attempt(node_id=decision.node.node_id, outcome=status, status=http_status))
        trace = Trace(
            request_id=route.request_id,
            timestamp=time.time(),
            model=decision.model if decision else route.model,
            api=route.api,
            path=route.path,
            node_id=decision.node.node_id if decision else None,
            status=status,
            http_status=http_status,
            latency_ms=round((time.monotonic() - started) * 1000, 3),
            ttft_ms=None if ttft_ms is None else round(ttft_ms, 3),
            prompt_tokens=prompt_tokens,
            completion_tokens=completion_tokens,
            retries=max(0, len(final) - 1),  # attempts after the first
            score=decision.score if decision else None,
            score_breakdown=dict(decision.breakdown) if decision else {},
            attempts=tuple(final),
            tags=route.tags,
            error_message=error_message,
            stream=route.stream,
            original_model=route.original_model or route.model,
            details=dict(details or {}),
        )
        try:
            self.record(trace)
        except Exception:  # noqa: BLE001 - a broken plugin hook must not fail a served request
            log.exception("recording a trace failed", request_id=route.request_id)


def _client_alive(request: web.Request) -> Callable[[], bool]:
    """Whether the client of ``request`` is still connected (checked before dispatching a request
    that waited, so one whose client left never reaches a node)."""

    def alive() -> bool:
        transport = request.transport
        return transport is not None and not transport.is_closing()

    return alive


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0")


def _error_text(text: str) -> str:
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:200]
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        err = err.get("message")
    return str(err if err is not None else text)[:200]


def _counts(engine: Dialect, data: bytes, *, whole: bool) -> dict[str, Any]:
    prompt, completion = engine.counts(data, whole)
    return {"prompt_tokens": prompt, "completion_tokens": completion}
