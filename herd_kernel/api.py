"""The objects plugins hand to the kernel, and the read-only views the kernel hands back.

A registration hook (see ``hookspecs``) returns instances of these protocols once, at start-up;
the kernel then calls them directly. Everything a plugin receives is a narrow, typed view, so the
kernel can change inside without breaking plugins.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Collection, Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal, Protocol, runtime_checkable

from attrs import define, field, frozen

from herd_kernel.models import AvailableModel, Endpoint, LoadedModel, NodeState, RouteRequest

if TYPE_CHECKING:
    from aiohttp import web

    from herd_kernel.config import Config, RuntimeSettings
    from herd_kernel.fleet import Fleet


# --- scoring -----------------------------------------------------------------------------------


@frozen(kw_only=True, slots=True)
class Candidate:
    """One (node, model) pair that survived elimination."""

    node: NodeState
    model: str  # normalized model name
    loaded: LoadedModel | None
    available: AvailableModel | None
    in_flight: int  # requests this router has running on node:model now
    pending: int = 0  # requests waiting in the router's queue for node:model
    node_in_flight: int  # requests this router has running on the node, any model
    unloaded_ago: float | None  # seconds since the model left memory here, None if never seen
    limit: int = 0  # the router's concurrency limit for node:model (0: not known yet)

    @property
    def node_id(self) -> str:
        return self.node.node_id

    @property
    def slots(self) -> int:
        """Requests run at once for one model on this node: the router's queue limit once it has
        one, else the parallelism its engine reports, else 1."""
        if self.limit > 0:
            return self.limit
        endpoint = self.node.serving.get(self.model)
        parallel = endpoint.num_parallel if endpoint is not None else 0
        return parallel if parallel > 0 else 1

    @property
    def model_size_bytes(self) -> int:
        if self.loaded is not None and self.loaded.size_bytes:
            return self.loaded.size_bytes
        return self.available.size_bytes if self.available is not None else 0


# --- routing decisions (made by herd_kernel.scoring) ------------------------------------------


@frozen(kw_only=True)
class Decision:
    node: NodeState
    model: str  # the model name to send upstream (as requested, or the fallback as written)
    model_key: str
    score: float
    breakdown: dict[str, float]
    eliminated: dict[str, str] = field(factory=dict)  # node_id -> reason
    fallback: bool = False
    endpoint: Endpoint | None = None  # the engine on the node that serves the model

    @property
    def breakdown_header(self) -> str:
        return ";".join(f"{name}={_fmt(value)}" for name, value in self.breakdown.items())


@frozen(kw_only=True)
class NoRoute:
    # "refused": every node that lists the model serves it through an engine that cannot take
    # this request (waiting would not help)
    kind: Literal["unknown_model", "unavailable", "refused"]
    model: str
    eliminated: dict[str, str] = field(factory=dict)


def _fmt(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else f"{value:.2f}".rstrip("0")



class LatencyView(Protocol):
    """Read-only latency history per node and model (normalized name), kept by the kernel from
    finished requests. Every call is O(1); nothing here waits on a database."""

    def p75_ms(self, node_id: str, model: str) -> float | None: ...

    def samples(self, node_id: str, model: str) -> int: ...

    def ttft_p50_ms(self, node_id: str, model: str) -> float | None: ...


@frozen(kw_only=True, slots=True)
class ScoringContext:
    request: RouteRequest
    model: str  # normalized name of the model being scored (may be a fallback)
    now: float  # monotonic seconds
    config: Config
    latency: LatencyView


class Signal(Protocol):
    """A scoring signal. ``score`` is pure and synchronous: one float per candidate, in order.

    The kernel clamps each value to ``[low, high]`` and multiplies it by ``weight``; a plugin that
    wants its weight configurable declares a setting for it and reads it in ``herd_signals``. A
    signal that raises scores 0 for that request and is logged once.
    """

    name: str
    weight: float
    low: float
    high: float

    def score(self, ctx: ScoringContext, candidates: Sequence[Candidate]) -> Sequence[float]: ...


# --- backends ----------------------------------------------------------------------------------


@frozen(kw_only=True)
class RouteDef:
    """An HTTP route a backend serves on the router (or a panel on the dashboard)."""

    method: str
    path: str
    handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
    name: str | None = None
    #: a client API route that other backends may serve too (each can run alone): when several
    #: offer it, the highest ``priority`` serves it, and it reaches every backend's engines
    shared: bool = False
    priority: int = 0
    #: who may call it: a client (``public``: anyone, or a client key once FLEET_API_KEYS is
    #: set), or behind the ``/fleet/*`` guard: ``read`` (open until FLEET_ADMIN_KEY or
    #: FLEET_API_KEYS is set, then loopback, either kind of key or a dashboard session) or
    #: ``write`` (loopback or the admin key, a JSON body, no foreign Origin); docs/security.md
    access: Literal["public", "read", "write"] = "public"


@frozen(kw_only=True)
class NodeContext:
    """What node-side plugins get: the agent's settings and its HTTP client."""

    config: Config
    node_id: str
    http: Any  # aiohttp.ClientSession
    budget: float = 4.0  # seconds a read may take before the agent cancels it


class Engine(Protocol):
    """Drives one kind of endpoint (``Endpoint.kind``): what a routed request becomes on its way
    to an engine of that kind. A backend offers one as ``Backend.engine``; whichever backend's
    route parsed the request, the kernel asks the engine of the chosen endpoint."""

    kind: str

    def refuses(self, route: RouteRequest) -> str | None:
        """Why no endpoint of this kind can serve ``route`` (e.g. an API it does not speak), or
        None. Called for every candidate node: keep it a lookup."""
        ...

    def outbound(self, route: RouteRequest, raw: bytes, body: dict[str, Any],
                 decision: Any) -> Any:
        """The ``herd_kernel.pipeline.Outbound`` for the chosen endpoint (``decision.endpoint``):
        the bytes, the upstream path, the engine's dialect and a translator when it differs
        from the client's. May raise ``UpstreamFailed`` to move on to the next-best node."""
        ...

    async def warm(self, endpoint: Endpoint, model: str) -> str | None:
        """Load ``model`` there ahead of demand (pre-warming); the error, or None."""
        ...


class RouterAPI(Protocol):
    """The running router as plugins see it: what ``Backend.routes``, ``herd_startup`` and
    ``herd_shutdown`` receive there (``side == "router"``)."""

    side: Literal["router"]
    config: Config
    fleet: Fleet  # the registry: read it; note router-side model changes with its add_/remove_
    engines: Mapping[str, Engine]  # endpoint kind -> the engine that drives it
    http: Any  # an aiohttp.ClientSession for the router's own calls, open while it runs
    #: changes to ``runtime`` settings while the router runs: ``await settings.change({...})``
    #: checks, saves (in the data dir) and puts them in force in ``config``
    settings: RuntimeSettings
    #: extra sections of the ``/fleet/status`` body: name -> a quick, synchronous function that
    #: returns the section (e.g. ``"trace_store"``: a store's counters); a name the body already
    #: has is not replaced, and a function that raises shows as ``{"error": ...}``
    status_sections: dict[str, Callable[[], Mapping[str, Any]]]

    async def read_json(self, request: web.Request,
                        max_bytes: int | None = None) -> tuple[bytes, dict[str, Any]]:
        """The request's whole JSON body (raw bytes and parsed), or ``BadRequest``."""
        ...

    async def proxy(self, request: web.Request, route: RouteRequest,
                    prepare: Callable[[Any], Any], *, upstream_path: str,
                    not_found: Callable[[str], str]) -> web.StreamResponse:
        """Score, queue, dispatch with retries, relay and trace one request; ``prepare(decision)``
        gives the ``Outbound`` for the chosen endpoint (normally its engine's ``outbound``)."""
        ...

    def event(self, kind: str, **fields: Any) -> None:
        """Note a routing event (a fallback, a pre-warm...) for health checks and the dashboard."""
        ...

    async def endpoint_post(self, url: str, path: str, payload: Mapping[str, Any],
                            timeout: float) -> tuple[int, bytes]:
        """POST a JSON command of the router's own to an engine, signed like routed requests."""
        ...

    def upstream_headers(self, path: str, body: bytes, method: str = "POST") -> dict[str, str]:
        """The headers of a request to a node (signed when a fleet secret is set)."""
        ...

    def restore_latency(self, rows: Iterable[tuple[str, str, float]]) -> None:
        """Seed the in-memory latency history that signals read from stored ``(node_id, model,
        latency_ms)`` rows of completed requests, oldest first (``model`` normalized); the
        kernel keeps the newest 256 per node and model. The nodes named are expected back: until
        one reports, a request for a model only it served waits instead of getting a 404. For a
        store plugin at ``herd_startup``."""
        ...

    @property
    def health(self) -> HealthView:
        """The health engine: its snapshot and its report (what /dashboard/api/health serves)."""
        ...


class HealthView(Protocol):
    """The router's health engine as plugins read it (the dashboard); both calls reuse one
    snapshot for ``FLEET_HEALTH_CACHE_S`` seconds, so polling them costs nothing per request."""

    def snapshot(self) -> HealthSnapshot:
        """The snapshot every check last evaluated."""
        ...

    def report(self) -> Mapping[str, Any]:
        """``{"score", "checks", "vitals", "checks_run", "generated_at"}`` (docs/health.md)."""
        ...


class NodeAPI(Protocol):
    """The running node agent as plugins see it: what ``herd_startup`` and ``herd_shutdown``
    receive there (``side == "node"``)."""

    side: Literal["node"]
    config: Config
    node_id: str
    sensors: Sequence[Sensor]
    backends: Sequence[Backend]


class Backend(Protocol):
    """Serves one family of traffic (Ollama, OpenAI-compatible engines, image generation,
    speech...).

    Router side, ``routes(services)`` returns the HTTP routes it owns; handlers use ``services``
    (a ``herd_kernel.app.Services``) to score, dispatch and trace; ``engine`` (optional) drives the
    endpoints of one kind. Node side, ``probe(ctx)`` returns a heartbeat fragment, normally
    ``{"endpoints": [{"kind": ..., "url": ..., "models_available": [...], ...}]}``; it runs once
    per heartbeat and must not block the event loop.
    """

    name: str
    modalities: tuple[str, ...]

    def routes(self, services: RouterAPI) -> Sequence[RouteDef]: ...

    async def probe(self, ctx: NodeContext) -> Mapping[str, Any]: ...


# --- node sensors ------------------------------------------------------------------------------


class Sensor(Protocol):
    """Contributes a fragment to every heartbeat (``{"cpu": {...}, "memory": {...}}``).

    Sensors run in ``order``; a later sensor's keys replace an earlier one's. ``read`` must not
    block the event loop: use ``asyncio.to_thread`` or asyncio subprocesses. A sensor that raises
    or times out is skipped for that heartbeat and logged.
    """

    name: str
    order: int

    async def read(self, ctx: NodeContext) -> Mapping[str, Any]: ...


# --- discovery ---------------------------------------------------------------------------------


class Discovery(Protocol):
    """Lets nodes find the router with no configuration.

    ``announce`` runs on the router at start and returns an async callable that withdraws the
    announcement. ``find_router`` runs on a node and returns a router URL, or None on timeout.
    """

    name: str

    async def announce(self, url: str, config: Config) -> Callable[[], Awaitable[None]]: ...

    async def find_router(self, config: Config, timeout: float) -> str | None: ...


# --- the demo ----------------------------------------------------------------------------------

Stop = Callable[[], Awaitable[None]]


class DemoFleet(Protocol):
    """A simulated fleet for ``herd --demo`` (``contrib/herd-sim`` provides one).

    ``start`` runs on the router once it listens: it starts ``nodes`` simulated machines, and for
    each a node agent through ``await start_agent(node_id, **settings)`` (an agent in the router's
    process, with the router's plugins, reporting to ``router_url``; ``settings`` are
    ``FLEET_NODE_*`` overrides, among them where the simulated machine's engine listens). It returns an async callable that stops the machines; the
    router stops the agents first.
    """

    name: str

    async def start(
        self, router_url: str, nodes: int, start_agent: Callable[..., Awaitable[None]]
    ) -> Stop: ...


# --- health checks -----------------------------------------------------------------------------

Severity = Literal["info", "warning", "critical"]


@frozen(kw_only=True)
class Finding:
    """What a check found. ``detail`` is plain prose with the numbers that triggered it; ``advice``
    is a fix a person can act on (the API shows them as ``description`` and ``fix``)."""

    check_id: str
    severity: Severity
    title: str
    detail: str
    advice: str = ""
    node_id: str | None = None
    data: Mapping[str, Any] = field(factory=dict)


@define(slots=True)
class Tally:
    """Finished requests over a window, counted as each trace is recorded (O(1), never a query).
    A request counts once in ``requests`` and once in the status it ended with."""

    requests: int = 0
    completed: int = 0
    failed: int = 0  # the router or the nodes could not answer (incomplete streams included)
    rejected: int = 0  # refused before an answer began: no node, bad body, shutting down
    client_disconnects: int = 0
    incomplete_streams: int = 0  # a stream that failed after its first bytes reached the client
    timeouts: int = 0  # requests with an attempt that timed out (connect, read, no progress)
    retried: int = 0  # requests that needed another node
    retries: int = 0  # attempts beyond the first, summed
    fallbacks: int = 0  # served by a model other than the one the client asked for
    cold_loads: int = 0  # completed on a node that did not hold the model in memory
    ttft_ms_sum: float = 0.0
    ttft_count: int = 0
    latency_ms_sum: float = 0.0
    prompt_tokens: int = 0
    completion_tokens: int = 0

    @property
    def errors(self) -> int:
        """Requests the fleet failed (not the client's doing, not a refusal)."""
        return self.failed


@frozen(kw_only=True)
class Window:
    """The traces and routing events of the last ``seconds``: fleet-wide, per node, per model."""

    seconds: float
    total: Tally
    by_node: Mapping[str, Tally]
    by_model: Mapping[str, Tally]  # normalized model name
    events: Mapping[str, int]  # routing event kind -> count
    node_events: Mapping[str, Mapping[str, int]]  # node_id -> event kind -> count


@frozen(kw_only=True)
class HealthSnapshot:
    """One consistent, read-only view of the fleet that every check evaluates: the registry as
    ``/fleet/status`` shows it, the last hour and day of traces and events, the store's counters."""

    now: float  # wall clock
    router_version: str
    status: Mapping[str, Any]  # the /fleet/status body
    hour: Window
    day: Window
    events: Sequence[Mapping[str, Any]]  # recent routing events, oldest first (bounded)
    trace_store: Mapping[str, int]  # written, dropped, failed, queued (empty without a store)


class HealthCheck(Protocol):
    """One health check. ``evaluate`` gets the snapshot and returns findings (none when all is
    well: a quiet, healthy fleet shows nothing); it must be fast and free of I/O. A check that
    raises becomes a ``check_crashed`` finding naming the plugin."""

    id: str
    title: str

    def evaluate(self, snapshot: HealthSnapshot) -> Sequence[Finding]: ...


# --- dashboard panels --------------------------------------------------------------------------


@frozen(kw_only=True)
class Panel:
    """One dashboard tab: its static assets and JSON routes under ``/dashboard/api/<id>/``."""

    id: str
    title: str
    order: int
    static_dir: str | None = None
    routes: tuple[RouteDef, ...] = ()


@runtime_checkable
class Named(Protocol):
    name: str


# --- lane policies -----------------------------------------------------------------------------


class LaneView(Protocol):
    """One ``node:model`` lane as a policy sees it (``herd_kernel.fleet.Lane``). ``waiting``
    holds the lane's waiters, oldest first; ``state`` is the policies' own per-lane store (key it
    by the policy's name): it goes when the lane goes."""

    node_id: str
    model: str  # normalized name
    limit: int
    in_flight: int
    waiting: Sequence[WaiterView]
    state: dict[str, Any]
    completed: int  # requests that completed here since the lane was made
    failed: int
    last_used: float  # wall clock when this router last started a request here (0: never)

    @property
    def pending(self) -> int: ...

    def busy_integral(self, now: float) -> float:
        """Request-seconds run in the lane up to ``now`` (monotonic)."""
        ...


class WaiterView(Protocol):
    """A request waiting in a lane (``herd_kernel.queues.Ticket``)."""

    route: RouteRequest
    exclude: Collection[str]  # nodes that already failed this request
    since: float  # event-loop time it started waiting
    decision: Decision | NoRoute | None  # in a lane: the ``Decision`` that put it there
    lane: LaneView | None


class SlotView(Protocol):
    """A running request's place in a lane (``herd_kernel.queues.Slot``)."""

    lane: LaneView
    started: float  # monotonic
    busy_start: float  # the lane's ``busy_integral`` when it started


class QueueView(Protocol):
    """What a lane policy may read of the queue, and ask of it (``queues.QueueManager``)."""

    waiting_lanes: Collection[LaneView]  # lanes with requests waiting

    @property
    def nodes(self) -> Mapping[str, NodeState]: ...

    def lane(self, node_id: str, model: str) -> LaneView: ...

    def servable(self, node: NodeState) -> bool:
        """The node can take requests now (online, admitted, not paused or draining)."""
        ...

    def refresh_limit(self, node: NodeState, lane: LaneView) -> int:
        """The lane's limit, worked out again (every policy's ``limit`` included) and stored."""
        ...

    def choose(self, route: RouteRequest, model: str, exclude: Collection[str] = (),
               only: str | None = None) -> Decision | NoRoute:
        """Score ``route`` for ``model`` as the router would (a ``Decision`` or ``NoRoute``);
        ``only`` restricts it to one node. Pure: nothing is reserved."""
        ...

    def move(self, waiter: WaiterView, decision: Decision) -> None:
        """Take ``waiter`` out of its lane and give it a slot where ``decision`` says, at once
        (the lane there must have a free slot); counted, and announced as a ``rebalanced``
        event."""
        ...

    def warm(self, decision: Decision, *, behind: str, waiting: int) -> bool:
        """Load ``decision.model`` on ``decision.node`` ahead of demand, in the background (a
        ``prewarm`` event names the node it helps, ``behind``, and how many wait there). False
        when that ``node:model`` is already warming or was tried in the last minute, or the
        router cannot warm."""
        ...


class LanePolicy(Protocol):
    """Tunes the queue: lane limits, pre-warming, moving waiters. Every callback is optional: the
    kernel looks once, at start-up, at which ones a policy defines, and calls only those, in
    plugin order. Callbacks are synchronous, run on the event loop and must be quick; ``limit``
    and ``finished`` run once per request. A callback that raises is logged once and skipped;
    the queue goes on as if the policy had not been asked.

    - ``limit(node, lane, limit) -> int``: the lane's limit given the one worked out so far
      (the engine's parallelism, capped); the kernel keeps the result at 1 or more.
    - ``finished(slot, ok, completion_tokens)``: a request ended (``ok`` True: completed, False:
      failed, None: given back unused).
    - ``waiting(queue, waiter)``: a request joined a lane's line.
    - ``pump(queue)``: a pass of the pump while requests wait, after freed slots were given out
      (on completions, fleet changes and the periodic pass).
    - ``tick(queue)``: the periodic pass, every ``FLEET_REBALANCE_INTERVAL`` seconds.
    - ``describe(lane) -> Mapping``: extra fields for the lane in ``/fleet/queue``.
    """

    name: str

    def limit(self, node: NodeState, lane: LaneView, limit: int) -> int: ...

    def finished(self, slot: SlotView, ok: bool | None, completion_tokens: int | None) -> None: ...

    def waiting(self, queue: QueueView, waiter: WaiterView) -> None: ...

    def pump(self, queue: QueueView) -> None: ...

    def tick(self, queue: QueueView) -> None: ...

    def describe(self, lane: LaneView) -> Mapping[str, Any]: ...


LANE_POLICY_CALLBACKS = ("limit", "finished", "waiting", "pump", "tick", "describe")


# --- request shapers ---------------------------------------------------------------------------
# A shaper never edits a request itself: it returns records of what it would change, and the
# kernel applies them, says each one in a response header and the trace, or skips the shaper.


@frozen(kw_only=True, slots=True)
class Substitution:
    """Before scoring: serve ``model`` instead of the one the client named. Announced as
    ``header: asked -> served``, in the trace's ``substitution`` detail and as event ``reason``."""

    model: str
    reason: str  # e.g. "vram_fallback"
    header: str  # e.g. "X-Fleet-Vram-Fallback"


@frozen(kw_only=True, slots=True)
class Provision:
    """Before scoring: the model was made to exist on ``node_id`` (an endpoint of ``kind``), e.g.
    pulled there. The registry learns of it at once; announced as ``header: node_id``."""

    node_id: str
    model: str
    kind: str
    header: str


@frozen(kw_only=True, slots=True)
class Refusal:
    """Before scoring: the request cannot be served. The client gets ``status`` in its API's own
    error shape; ``message`` None means that API's own "model not found" words."""

    status: int
    message: str | None = None
    headers: Mapping[str, str] = field(factory=dict)


@frozen(kw_only=True, slots=True)
class Change:
    """After the decision: one edit of the JSON body sent to the chosen endpoint.

    ``field`` is a dotted path (``"options.num_ctx"``, ``"max_tokens"``); ``old`` the value the
    body holds there (None: absent). The kernel applies it only while the body still holds
    ``old``, sends response header ``header`` with value ``reason``, and records the change in the
    trace's details (``changes``, and ``reason`` under the shaper's name)."""

    field: str
    old: Any
    new: Any
    header: str
    reason: str


class Meter(Protocol):
    """Watches the answer to a shaped request: each relayed frame of a stream, or the whole answer
    (which may add response headers); ``summary`` goes in the trace's details."""

    def frame(self, frame: bytes) -> None: ...

    def whole(self, payload: bytes) -> Mapping[str, str]: ...

    def summary(self) -> Mapping[str, Any]: ...


@frozen(kw_only=True, slots=True)
class Shaping:
    """What one shaper changes in one request once the endpoint is chosen."""

    changes: tuple[Change, ...] = ()
    meter: Meter | None = None


@frozen(kw_only=True)
class ShapeContext:
    """What shapers may read and do: the fleet registry (read only), settings, routing events and
    a signed POST to an engine (for a shaper that provisions, e.g. pulls a model)."""

    fleet: Any  # herd_kernel.fleet.Fleet: nodes, holders(model)
    config: Config
    event: Callable[..., None]
    endpoint_post: Callable[[str, str, Mapping[str, Any], float], Awaitable[tuple[int, bytes]]]


class Shaper(Protocol):
    """Shapes requests at two moments; a shaper implements any of these methods (the kernel calls
    only the ones it has, in ``(order, name)`` order):

    - ``substitute(route, ctx) -> Substitution | None``: before scoring, synchronous; the first
      substitution wins. Not called for load/unload commands.
    - ``async provide(route, ctx) -> Provision | Refusal | None``: before scoring, may do I/O
      (auto-pull); a refusal answers the client.
    - ``shape(route, body, decision, ctx) -> Shaping | None``: after the decision, synchronous and
      cheap (it runs for every request); ``decision.endpoint.kind`` says which engine gets it.

    A shaper that raises or returns anything else is logged once and skipped: the request goes on
    without its changes, never a 500.
    """

    name: str
    order: int
