"""Injected failures (``Fault``), the per-node set of active faults (``FaultBoard``) and the
response writer (``Reply``) that carries out the faults that strike in the middle of a response.

Where each kind acts:

- ``refuse``: the node's listening socket (see ``SimNode``); never reaches HTTP.
- ``http500``, ``drop_before_first_byte``: on arrival, in the node's middleware.
- ``drop_mid_stream``, ``stall``: while the response is written, here in ``Reply``.
- ``slow_load``: in the scheduler, when a model load starts.
"""

from __future__ import annotations

import asyncio
import fnmatch
import socket
import struct
from collections.abc import Callable, Iterable
from typing import Any

import attrs
from aiohttp import web

from herd_sim.wire import JSON_TYPE, go_json

__all__ = ["FAULT_KINDS", "INFERENCE_PATHS", "Fault", "FaultBoard", "Reply"]

FAULT_KINDS = ("refuse", "http500", "drop_before_first_byte", "drop_mid_stream", "stall",
               "slow_load")
# faults with empty ``paths`` hit these (the routes that run a model)
INFERENCE_PATHS = ("/api/chat", "/api/generate", "/api/embed", "/api/embeddings",
                   "/v1/chat/completions", "/v1/completions", "/v1/embeddings",
                   "/v1/responses", "/v1/messages")
# the kinds that decide what happens to one request (at most one applies per request)
REQUEST_KINDS = ("http500", "drop_before_first_byte", "drop_mid_stream", "stall")


def _check_kind(_instance: object, _attribute: object, value: str) -> None:
    if value not in FAULT_KINDS:
        raise ValueError(f"unknown fault kind {value!r} (one of {', '.join(FAULT_KINDS)})")


def _check_count(_instance: object, _attribute: object, value: int | None) -> None:
    if value is not None and (isinstance(value, bool) or value < 1):
        raise ValueError("count must be a positive integer or None")


def _as_paths(value: Iterable[str]) -> tuple[str, ...]:
    return tuple(value)


@attrs.frozen
class Fault:
    """A failure to inject into a node.

    ``count``: ``None`` until cleared, ``N`` for the next N matching requests. A ``refuse`` fault
    cannot count connections while the port is closed, so ``refuse`` with a count resets the next
    N connections right after the TCP handshake instead (``ECONNRESET``), and ``refuse`` without a
    count closes the port for real (``ECONNREFUSED``) until cleared or ``duration_s`` has passed.
    ``after_chunks``: chunks (NDJSON lines, SSE events, or halves of a JSON body) sent before
    ``drop_mid_stream``/``stall`` strike. ``stall_s``: wall-clock seconds a stall lasts (cut short
    by ``clear_faults()``; not scaled by ``time_scale``). ``paths``: request paths (``fnmatch``
    patterns allowed) the fault applies to; empty means every inference path.
    ``duration_s`` (an addition): the fault removes itself after this many wall-clock seconds,
    which is how a ``refuse`` set over HTTP can end.
    """

    kind: str = attrs.field(validator=_check_kind)
    count: int | None = attrs.field(default=None, validator=_check_count)
    after_chunks: int = attrs.field(default=2, validator=attrs.validators.ge(0))
    stall_s: float = attrs.field(default=3600.0, validator=attrs.validators.ge(0))
    paths: tuple[str, ...] = attrs.field(default=(), converter=_as_paths)
    duration_s: float | None = None

    def matches(self, path: str) -> bool:
        patterns = self.paths or INFERENCE_PATHS
        return any(fnmatch.fnmatchcase(path, p) for p in patterns)

    def to_dict(self) -> dict[str, Any]:
        return {**attrs.asdict(self), "paths": list(self.paths)}

    @classmethod
    def from_dict(cls, data: Any) -> Fault:
        """From a ``POST /_sim/fault`` body; raises ``ValueError``/``TypeError`` when invalid."""
        if not isinstance(data, dict):
            raise TypeError("the fault must be a JSON object")
        fields = {f.name for f in attrs.fields(cls)}
        unknown = set(data) - fields
        if unknown:
            raise ValueError(f"unknown fault fields: {', '.join(sorted(unknown))}")
        if "paths" in data and not (isinstance(data["paths"], list)
                                    and all(isinstance(p, str) for p in data["paths"])):
            raise TypeError("paths must be a list of strings")
        for name in ("after_chunks", "count"):
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)):
                raise TypeError(f"{name} must be an integer")
        for name in ("stall_s", "duration_s"):
            value = data.get(name)
            if value is not None and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise TypeError(f"{name} must be a number")
        if not isinstance(data.get("kind"), str):
            raise TypeError("kind is required")
        return cls(**data)


@attrs.define(eq=False)
class _Active:
    fault: Fault
    remaining: int | None
    timer: asyncio.TimerHandle | None = None


class FaultBoard:
    """The faults active on one node. ``on_change`` runs after every change (the node uses it to
    close or reopen its port for ``refuse``)."""

    def __init__(self, on_change: Callable[[], None]) -> None:
        self._active: list[_Active] = []
        self._on_change = on_change
        self._cleared: asyncio.Future[None] | None = None
        self.triggered: dict[str, int] = {}
        # bumped by clear(): faults drawn by requests before a clear no longer strike
        self.epoch = 0

    # --- changing the set --------------------------------------------------------------------

    def set(self, fault: Fault) -> None:
        """Add ``fault``; it replaces an active fault of the same kind."""
        for entry in [e for e in self._active if e.fault.kind == fault.kind]:
            self._drop(entry, notify=False)
        entry = _Active(fault, fault.count)
        self._active.append(entry)
        if fault.duration_s is not None:
            self._arm(entry)
        self._on_change()

    def clear(self) -> None:
        self.epoch += 1
        for entry in list(self._active):
            self._drop(entry, notify=False)
        # wake every stalled response
        if self._cleared is not None and not self._cleared.done():
            self._cleared.set_result(None)
        self._cleared = None
        self._on_change()

    def arm_timers(self) -> None:
        """Start ``duration_s`` timers of faults set before the event loop was running."""
        for entry in self._active:
            if entry.fault.duration_s is not None and entry.timer is None:
                self._arm(entry)

    def _arm(self, entry: _Active) -> None:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return  # armed later by arm_timers() when the node starts
        assert entry.fault.duration_s is not None
        entry.timer = loop.call_later(entry.fault.duration_s, self._expire, entry)

    def _expire(self, entry: _Active) -> None:
        entry.timer = None
        if entry in self._active:
            self._drop(entry)

    def _drop(self, entry: _Active, *, notify: bool = True) -> None:
        if entry.timer is not None:
            entry.timer.cancel()
            entry.timer = None
        if entry in self._active:
            self._active.remove(entry)
        if notify:
            self._on_change()

    # --- reading -----------------------------------------------------------------------------

    @property
    def faults(self) -> tuple[Fault, ...]:
        return tuple(e.fault for e in self._active)

    def refuse_mode(self) -> str | None:
        """``"closed"`` (port closed), ``"reset"`` (counted refuse) or ``None``."""
        for entry in self._active:
            if entry.fault.kind == "refuse":
                return "closed" if entry.remaining is None else "reset"
        return None

    def take_reset(self) -> bool:
        """Consume one counted ``refuse``; True when this connection must be reset."""
        for entry in self._active:
            if entry.fault.kind == "refuse" and entry.remaining is not None:
                self._count(entry)
                return True
        return False

    def take_request_fault(self, path: str) -> Fault | None:
        """The fault that decides this request's fate, consuming one of its count."""
        for entry in self._active:
            if entry.fault.kind in REQUEST_KINDS and entry.fault.matches(path):
                self._count(entry)
                return entry.fault
        return None

    def slow_load_for(self, path: str) -> Fault | None:
        """An active ``slow_load`` for this path (consumed by ``consume`` when a load uses it)."""
        for entry in self._active:
            if entry.fault.kind == "slow_load" and entry.fault.matches(path):
                return entry.fault
        return None

    def consume(self, fault: Fault) -> bool:
        """Count one use of ``fault``; False when it is no longer active."""
        for entry in self._active:
            if entry.fault is fault:
                self._count(entry)
                return True
        return False

    def _count(self, entry: _Active) -> None:
        self.triggered[entry.fault.kind] = self.triggered.get(entry.fault.kind, 0) + 1
        if entry.remaining is None:
            return
        entry.remaining -= 1
        if entry.remaining <= 0:
            self._drop(entry)

    async def wait_cleared(self, timeout: float) -> None:
        """Sleep ``timeout`` seconds or until ``clear()``, whichever comes first."""
        if self._cleared is None or self._cleared.done():
            self._cleared = asyncio.get_running_loop().create_future()
        try:
            await asyncio.wait_for(asyncio.shield(self._cleared), timeout)
        except TimeoutError:
            pass


def reset_connection(transport: asyncio.BaseTransport | None) -> None:
    """Close with RST (SO_LINGER 0), not FIN: the peer sees ``ECONNRESET``."""
    if transport is None:
        return
    sock = transport.get_extra_info("socket")
    if sock is not None:
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            pass
    if isinstance(transport, asyncio.Transport):
        transport.abort()
    else:
        transport.close()


class Dropped(Exception):
    """Raised by ``Reply`` after it aborted the connection; the middleware swallows it."""


class Reply:
    """Writes one HTTP response, applying ``drop_mid_stream``/``stall`` when the request drew one.

    Streams count one chunk per ``line()``/``event()``; a plain JSON body counts as two chunks
    (its halves), so ``after_chunks=1`` cuts it in the middle.
    """

    def __init__(self, request: web.Request, fault: Fault | None, board: FaultBoard,
                 stopping: asyncio.Event) -> None:
        self.request = request
        self.fault = fault if fault is not None and fault.kind in ("drop_mid_stream", "stall") \
            else None
        self._board = board
        self._epoch = board.epoch
        self._stopping = stopping
        self._response: web.StreamResponse | None = None
        self._chunks = 0
        self._struck = False

    @property
    def started(self) -> bool:
        return self._response is not None

    async def _maybe_strike(self, *, final: bool = False) -> None:
        fault = self.fault
        if fault is None or self._struck:
            return
        if self._board.epoch != self._epoch:
            # clear_faults() ran after this request drew its fault: it no longer applies
            self.fault = None
            return
        if self._chunks < fault.after_chunks and not final:
            return
        self._struck = True
        if fault.kind == "drop_mid_stream" or self._stopping.is_set():
            self.abort()
        # a stall is a pause: it ends after stall_s, on clear_faults(), or (by abort) on stop
        stop_wait = asyncio.ensure_future(self._stopping.wait())
        clear_wait = asyncio.ensure_future(self._board.wait_cleared(fault.stall_s))
        try:
            await asyncio.wait({stop_wait, clear_wait}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop_wait.cancel()
            clear_wait.cancel()
        if self._stopping.is_set():
            self.abort()

    def abort(self) -> None:
        """Cut the connection without finishing the response, then unwind the handler."""
        transport = self.request.transport
        if transport is not None:
            transport.abort()
        raise Dropped()

    # --- plain responses ---------------------------------------------------------------------

    async def send(self, body: bytes, *, status: int = 200, content_type: str | None = JSON_TYPE,
                   headers: dict[str, str] | None = None) -> web.StreamResponse:
        response: web.StreamResponse
        if self.fault is None:
            response = web.Response(body=body, status=status, headers=headers)
        else:
            response = web.StreamResponse(status=status, headers=headers)
        if content_type is not None:
            response.headers["Content-Type"] = content_type
        if self.fault is None:
            return response
        response.content_length = len(body)
        await response.prepare(self.request)
        self._response = response
        half = len(body) // 2
        for piece in (body[:half], body[half:]):
            await self._maybe_strike()
            await response.write(piece)
            self._chunks += 1
        await self._maybe_strike(final=True)
        await response.write_eof()
        return response

    async def json(self, value: Any, *, status: int = 200,
                   headers: dict[str, str] | None = None) -> web.StreamResponse:
        return await self.send(go_json(value).encode(), status=status, headers=headers)

    async def error(self, status: int, message: str) -> web.StreamResponse:
        return await self.json({"error": message}, status=status)

    # --- streams -----------------------------------------------------------------------------

    async def start(self, content_type: str, headers: dict[str, str] | None = None) -> None:
        response = web.StreamResponse(status=200, headers=headers)
        response.headers["Content-Type"] = content_type
        await response.prepare(self.request)
        self._response = response
        await self._maybe_strike()  # after_chunks=0: right after the headers

    async def raw(self, data: bytes) -> None:
        assert self._response is not None, "start() first"
        await self._maybe_strike()
        await self._response.write(data)
        self._chunks += 1

    async def line(self, value: Any) -> None:
        """One NDJSON line (``\\n``-terminated, never blank)."""
        await self.raw(go_json(value).encode() + b"\n")

    async def event(self, value: Any) -> None:
        """One SSE event ``data: <json>\\n\\n`` (``value`` may be the string ``[DONE]``)."""
        text = value if isinstance(value, str) else go_json(value)
        await self.raw(f"data: {text}\n\n".encode())

    async def finish(self) -> web.StreamResponse:
        assert self._response is not None, "start() first"
        await self._maybe_strike(final=True)
        await self._response.write_eof()
        return self._response
