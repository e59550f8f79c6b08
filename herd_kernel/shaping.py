"""Applies what request shapers return: a substitution or provision before scoring, body changes
once the endpoint is chosen. Every record is announced in a response header and the trace; a
shaper that raises or returns something else is logged once and skipped, never a 500."""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
import structlog

from herd_kernel.api import (
    Change,
    Meter,
    Provision,
    Refusal,
    ShapeContext,
    Shaping,
    Substitution,
)
from herd_kernel.models import AvailableModel, RouteRequest
from herd_kernel.wire import error_response

log = structlog.get_logger("herd.shaping")

_MISSING = object()


@attrs.define
class Announced:
    """What the shapers did before scoring, to be said with the answer."""

    headers: dict[str, str] = attrs.field(factory=dict)
    details: dict[str, Any] = attrs.field(factory=dict)


class Shapers:
    """The registered shapers, split by the moments they take part in (chosen once, at start)."""

    def __init__(self, shapers: Sequence[Any], ctx: ShapeContext) -> None:
        self.ctx = ctx
        self.substituters = [s for s in shapers if callable(getattr(s, "substitute", None))]
        self.providers = [s for s in shapers if callable(getattr(s, "provide", None))]
        self.editors = [s for s in shapers if callable(getattr(s, "shape", None))]
        self.early = bool(self.substituters or self.providers)  # anything to do before scoring
        self._broken: set[str] = set()

    def _skip(self, shaper: Any, exc: BaseException) -> None:
        if shaper.name not in self._broken:  # once: a broken shaper must not flood the log
            self._broken.add(shaper.name)
            log.error("request shaper failed; requests go on without it", shaper=shaper.name,
                      error=repr(exc))

    async def before(
        self, route: RouteRequest, *, substitute: bool = True
    ) -> tuple[RouteRequest, Announced] | Refusal:
        """Provision, then substitute (unless ``substitute`` is False: a load command means the
        model it names). The route to score, and what to announce; or the refusal to answer."""
        announced = Announced()
        ctx = self.ctx
        for shaper in self.providers:
            try:
                got = await shaper.provide(route, ctx)
                if got is None:
                    continue
                if isinstance(got, Refusal) and 400 <= got.status < 600:
                    return got
                if not isinstance(got, Provision):
                    raise TypeError(f"provide() returned {got!r}")
            except Exception as exc:  # noqa: BLE001 - a broken shaper leaves the request unshaped
                self._skip(shaper, exc)
                continue
            ctx.fleet.add_available(got.node_id, AvailableModel(name=got.model), got.kind)
            announced.headers[got.header] = got.node_id
            announced.details["provision"] = {"shaper": shaper.name, "node": got.node_id,
                                              "model": got.model}
        if not substitute:
            return route, announced
        for shaper in self.substituters:
            try:
                sub = shaper.substitute(route, ctx)
                if sub is None:
                    continue
                if not isinstance(sub, Substitution) or not sub.model or not sub.header:
                    raise TypeError(f"substitute() returned {sub!r}")
            except Exception as exc:  # noqa: BLE001
                self._skip(shaper, exc)
                continue
            ctx.event(sub.reason, model=route.model, served=sub.model, num_ctx=route.num_ctx)
            announced.headers[sub.header] = f"{route.model} -> {sub.model}"
            announced.details["substitution"] = {"reason": sub.reason, "requested": route.model,
                                                 "served": sub.model}
            return attrs.evolve(route, model=sub.model, original_model=route.model), announced
        return route, announced

    @staticmethod
    def refuse(api: str, refusal: Refusal, not_found: Callable[[str], str], model: str) -> Any:
        """The client's answer to a refusal, in its API's own error shape."""
        message = refusal.message if refusal.message is not None else not_found(model)
        return error_response(api, refusal.status, message, headers=dict(refusal.headers))

    def prepare(
        self, route: RouteRequest, raw: bytes, body: dict[str, Any], engines: Mapping[str, Any],
        announced: Announced | None = None,
    ) -> Callable[[Any], Any]:
        """The pipeline's ``prepare``: shape the body for the chosen endpoint, then let the engine
        of that endpoint's kind build what is sent."""

        def prepare(decision: Any) -> Any:
            sent, sent_body, headers, details, meters = self.shape(route, raw, body, decision)
            outbound = engines[decision.endpoint.kind].outbound(route, sent, sent_body, decision)
            if announced is not None and (announced.headers or announced.details):
                headers = {**announced.headers, **headers}
                details = {**announced.details, **details}
            if not headers and not details and not meters:
                return outbound
            return _merge(outbound, headers, details, meters)

        return prepare

    def shape(
        self, route: RouteRequest, raw: bytes, body: dict[str, Any], decision: Any
    ) -> tuple[bytes, dict[str, Any], dict[str, str], dict[str, Any], list[Meter]]:
        """Every shaper's changes applied to a copy of ``body`` (the client's bytes when none),
        with the headers and trace details that announce them and the meters to feed."""
        current = body
        headers: dict[str, str] = {}
        details: dict[str, Any] = {}
        meters: list[Meter] = []
        ctx = self.ctx
        for shaper in self.editors:
            try:
                shaped = shaper.shape(route, body, decision, ctx)
                if shaped is None:
                    continue
                if not isinstance(shaped, Shaping):
                    raise TypeError(f"shape() returned {shaped!r}")
                changed = _apply(current, shaped.changes) if shaped.changes else current
            except Exception as exc:  # noqa: BLE001 - a broken shaper leaves the request unshaped
                self._skip(shaper, exc)
                continue
            current = changed
            for change in shaped.changes:
                headers[change.header] = change.reason
                details[shaper.name] = change.reason  # the header's words, kept with the trace
            if shaped.meter is not None:
                meters.append(shaped.meter)
        if current is body:
            return raw, body, headers, details, meters
        return json.dumps(current).encode(), current, headers, details, meters


def _apply(body: dict[str, Any], changes: Sequence[Change]) -> dict[str, Any]:
    """``body`` with ``changes`` made, copying only the dicts on each change's path; raises
    ValueError for a change the body does not fit (a stale ``old``, a path through a non-object,
    a header that cannot be sent)."""
    out = dict(body)
    for change in changes:
        if not isinstance(change, Change):
            raise TypeError(f"not a Change: {change!r}")
        if not change.header or any(c in change.header + change.reason for c in "\r\n"):
            raise ValueError(f"{change.field}: no header, or one that cannot be sent")
        *parents, last = change.field.split(".")
        target = out
        for part in parents:
            inner = target.get(part)
            if inner is None:
                inner = {}
            elif not isinstance(inner, dict):
                raise ValueError(f"{change.field}: {part} is not an object")
            target[part] = inner = dict(inner)
            target = inner
        if target.get(last, None) != change.old:
            raise ValueError(f"{change.field} is {target.get(last)!r}, not {change.old!r}")
        target[last] = change.new
    return out


def _merge(outbound: Any, headers: dict[str, str], details: dict[str, Any],
           meters: list[Meter]) -> Any:
    """The engine's ``Outbound`` with the shapers' headers, details and meters added."""
    engine_summary = outbound.summary
    engine_complete = outbound.on_complete
    engine_observe = outbound.observe

    def summary() -> dict[str, Any]:
        out = dict(details)
        for meter in meters:
            out.update(meter.summary())
        if engine_summary is not None:
            out.update(engine_summary())
        return out

    changes: dict[str, Any] = {"headers": {**headers, **outbound.headers}, "summary": summary}
    if meters:
        def on_complete(payload: bytes) -> dict[str, str]:
            extra: dict[str, str] = {}
            for meter in meters:
                extra.update(meter.whole(payload))
            if engine_complete is not None:
                extra.update(engine_complete(payload))
            return extra

        def observe(frame: bytes) -> None:
            for meter in meters:
                meter.frame(frame)
            if engine_observe is not None:
                engine_observe(frame)

        changes.update(on_complete=on_complete, observe=observe)
    return attrs.evolve(outbound, **changes)
