"""Analytics: every finished request goes to the trace store (``<data dir>/latency.db``), whose
roll-ups answer the analytics APIs under ``/dashboard/api/`` (docs/analytics.md). At start-up the
store's latest latencies seed the router's latency history; ``/fleet/status`` shows the store's
counters as ``trace_store``.
"""

from __future__ import annotations

import weakref
from pathlib import Path
from typing import TYPE_CHECKING, Any

import structlog

from herd_kernel.config import Setting
from herd_kernel.hookspecs import hookimpl

if TYPE_CHECKING:  # aiosqlite loads when the router starts, not when the plugin is imported
    from herd_analytics.reader import Reader
    from herd_analytics.store import TraceStore
    from herd_kernel.api import RouterAPI
    from herd_kernel.config import Config
    from herd_kernel.models import Trace

PLUGIN_API = 1
log = structlog.get_logger("herd.analytics")

SETTINGS = (
    Setting(env="FLEET_TRACE_RETENTION_DAYS", type=float, default=30.0,
            help="Days of request traces kept in <data dir>/latency.db (0 keeps everything)."),
    Setting(env="FLEET_TRACE_QUEUE_SIZE", type=int, default=10000,
            help="Traces waiting to be written before new ones are dropped (the request path "
            "never waits for the database)."),
    Setting(env="FLEET_ROLLUP_RETENTION_DAYS", type=float, default=400.0,
            help="Days of hourly and daily roll-ups kept in <data dir>/latency.db, what the "
            "analytics APIs read (0 keeps everything); they outlive the raw traces."),
)

#: the latency samples per node and model read back at start-up (the kernel's window)
RESTORED_PER_KEY = 256


class Analytics:
    """One router's store and the read-only connection its APIs query."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.path = Path(config["FLEET_DATA_DIR"]) / "latency.db"
        self.store: TraceStore | None = None
        self.reader: Reader | None = None

    async def open(self) -> None:
        from herd_analytics.reader import Reader
        from herd_analytics.store import TraceStore

        store = TraceStore(self.path, queue_size=self.config["FLEET_TRACE_QUEUE_SIZE"],
                           retention_days=self.config["FLEET_TRACE_RETENTION_DAYS"],
                           rollup_retention_days=self.config["FLEET_ROLLUP_RETENTION_DAYS"])
        await store.open()
        self.store = store
        reader = Reader(self.path)
        await reader.open()
        self.reader = reader

    async def close(self) -> None:
        reader, store = self.reader, self.store
        self.reader = self.store = None
        if reader is not None:
            await reader.close()
        if store is not None:
            await store.close()


_routers: weakref.WeakKeyDictionary[Any, Analytics] = weakref.WeakKeyDictionary()


def _analytics(services: RouterAPI) -> Analytics:
    analytics = _routers.get(services)
    if analytics is None:
        analytics = _routers[services] = Analytics(services.config)
    return analytics


def store_of(services: RouterAPI) -> TraceStore | None:
    """The trace store of a running router (None before start-up, after shutdown, or when it
    could not be opened): for tests and tools that need ``flush()``, ``path`` or ``db``."""
    analytics = _routers.get(services)
    return analytics.store if analytics is not None else None


@hookimpl
def herd_settings() -> tuple[Setting, ...]:
    return SETTINGS


@hookimpl
def herd_routes(services: RouterAPI) -> list[Any]:
    from herd_analytics.routes import routes

    return routes(_analytics(services))


@hookimpl
async def herd_startup(services: Any) -> None:
    if services.side != "router":
        return
    analytics = _analytics(services)
    await analytics.open()
    assert analytics.store is not None
    store = analytics.store
    services.restore_latency(await store.recent_latencies(RESTORED_PER_KEY))
    services.status_sections["trace_store"] = store.counters


@hookimpl
def herd_request_finished(trace: Trace, services: RouterAPI) -> None:
    analytics = _routers.get(services)
    if analytics is not None and analytics.store is not None:
        analytics.store.submit(trace)


@hookimpl
async def herd_shutdown(services: Any) -> None:
    if services.side != "router":
        return
    analytics = _routers.pop(services, None)
    if analytics is not None:
        services.status_sections.pop("trace_store", None)
        await analytics.close()
