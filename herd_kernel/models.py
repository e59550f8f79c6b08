"""The attrs models that cross a boundary (heartbeat, node, model, request, trace) and the one
cattrs converter that reads them from JSON and writes them back.

Proxied Ollama/OpenAI bodies are never round-tripped through these models: the router reads the
few fields it needs (``RouteRequest``) and forwards the client's bytes.
"""

from __future__ import annotations

import math
import re
import time
from typing import Any, Literal

import attrs
import cattrs
from attrs import define, field, frozen
from cattrs.errors import ClassValidationError, IterableValidationError

NodeStatus = Literal["online", "degraded", "offline"]
Pressure = Literal["normal", "warn", "critical"]

_NODE_ID = re.compile(r"^[^\x00-\x1f\x7f]{1,128}$")


class PayloadError(ValueError):
    """A payload failed validation; ``field`` names the first offending field (dotted path)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}" if field else message)
        self.field = field
        self.message = message


def _non_negative(_inst: Any, attribute: attrs.Attribute, value: float | None) -> None:
    if value is not None and (not math.isfinite(value) or value < 0):
        raise ValueError(f"{attribute.name} must be a finite number >= 0")


def _node_id(_inst: Any, _attribute: attrs.Attribute, value: str) -> None:
    if not _NODE_ID.match(value) or not value.strip():
        raise ValueError("node_id must be 1-128 printable characters")


# the registry a name without a host comes from, and the namespace a name without one is in:
# names written with them are the same model as names written without. Backends whose engines
# name models so register them (herd-api-formats: Ollama's registry.ollama.ai and library).
_DEFAULTS: dict[str, str] = {}


def register_default_registry(host: str, namespace: str) -> None:
    """Fold ``host/namespace/model`` and ``namespace/model`` into ``model`` when matching."""
    _DEFAULTS.setdefault(host.lower(), namespace.lower())


def normalize_model(name: str) -> str:
    """The matching key for a model name, as Ollama's ``model.ParseName`` fills names in and
    compares them: lower-case, ``:latest`` when no tag is given, and a registered default
    registry and namespace dropped (``registry.ollama.ai/library/llama3.2`` and
    ``library/llama3.2`` are ``llama3.2:latest``)."""
    name = name.strip().lower()
    slash = name.rfind("/")
    if name.rfind(":") <= slash:  # a colon before the last slash is a host's port, not a tag
        name += ":latest"
    if slash < 0:
        return name  # the common case: a bare model name
    rest, model = name[:slash], name[slash + 1:]
    host, _, namespace = rest.rpartition("/")
    host = host.partition("://")[2] or host  # a scheme may come before the host
    if host == "" or host in _DEFAULTS:  # the default registry, written or implied
        default = _DEFAULTS[host] if host else next(iter(_DEFAULTS.values()), None)
        return model if namespace == default else f"{namespace}/{model}"
    return f"{host}/{namespace}/{model}"


# --- heartbeat: what a node agent reports every few seconds -------------------------------------


@frozen(kw_only=True)
class CpuReading:
    cores_physical: int = 0
    cores_logical: int = 0
    utilization_pct: float = field(default=0.0, validator=_non_negative)
    load_avg_1m: float | None = None


@frozen(kw_only=True)
class MemoryReading:
    total_gb: float = field(default=0.0, validator=_non_negative)
    used_gb: float = field(default=0.0, validator=_non_negative)
    available_gb: float = field(default=0.0, validator=_non_negative)
    pressure: Pressure = "normal"
    swap_total_gb: float = field(default=0.0, validator=_non_negative)
    swap_used_gb: float = field(default=0.0, validator=_non_negative)
    unified: bool = False  # Apple silicon: the GPU works from this same memory


@frozen(kw_only=True)
class DiskReading:
    total_gb: float = field(default=0.0, validator=_non_negative)
    used_gb: float = field(default=0.0, validator=_non_negative)
    available_gb: float = field(default=0.0, validator=_non_negative)


@frozen(kw_only=True)
class ThermalReading:
    state: Literal["nominal", "fair", "serious", "critical", "unknown"] = "unknown"
    temperature_c: float | None = None
    source: str = ""


@frozen(kw_only=True)
class GpuReading:
    name: str
    memory_total_gb: float = field(default=0.0, validator=_non_negative)
    memory_used_gb: float = field(default=0.0, validator=_non_negative)
    utilization_pct: float | None = None
    temperature_c: float | None = None


@frozen(kw_only=True)
class LoadedModel:
    """A model resident in memory on a node (Ollama ``/api/ps``)."""

    name: str
    size_bytes: int = field(default=0, validator=_non_negative)
    size_vram: int = field(default=0, validator=_non_negative)
    context_length: int = field(default=0, validator=_non_negative)
    expires_at: str | None = None
    digest: str = ""
    details: dict[str, Any] = field(factory=dict)  # Ollama's details object, as reported


@frozen(kw_only=True)
class AvailableModel:
    """A model on a node's disk (Ollama ``/api/tags``)."""

    name: str
    size_bytes: int = field(default=0, validator=_non_negative)
    modified_at: str | None = None
    digest: str = ""
    details: dict[str, Any] = field(factory=dict)  # Ollama's details object, as reported
    capabilities: tuple[str, ...] = ()
    context_length: int = 0  # training context, when the node knows it


_KIND = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")


def _kind(_inst: Any, _attribute: attrs.Attribute, value: str) -> None:
    if not _KIND.match(value):
        raise ValueError("kind must be 1-32 lower-case letters, digits, '-' or '_'")


@frozen(kw_only=True)
class Endpoint:
    """One inference engine on a node, as that engine's backend probe saw it. ``kind`` names the
    backend that drives it (e.g. ``ollama``, ``openai``); the kernel routes a model to the
    endpoint that listed it and leaves the wire format to that backend."""

    kind: str = field(validator=_kind)
    url: str
    engine: str = ""  # what answers there, when the probe could tell (e.g. ``llama.cpp``)
    version: str = ""
    healthy: bool = True
    models_loaded: tuple[LoadedModel, ...] = ()
    models_available: tuple[AvailableModel, ...] = ()
    num_parallel: int = 0


@frozen(kw_only=True)
class Heartbeat:
    """``POST /heartbeat`` body. Sensor plugins contribute fragments. A fragment the kernel has
    no field for belongs under ``extras`` (``{"extras": {"capacity": {...}}}``); other unknown
    top-level keys are ignored, so a newer agent can still talk to an older router."""

    node_id: str = field(validator=_node_id)
    instance_id: str = ""  # the agent installation's own id: a node id cannot be taken over
    agent_version: str = ""
    timestamp: float = 0.0
    hostname: str = ""
    arch: str = ""
    os: str = ""
    draining: bool = False
    paused: bool = False
    cpu: CpuReading = CpuReading()
    memory: MemoryReading = MemoryReading()
    disk: DiskReading = DiskReading()
    thermal: ThermalReading = ThermalReading()
    gpus: tuple[GpuReading, ...] = ()
    endpoints: tuple[Endpoint, ...] = ()
    extras: dict[str, Any] = field(factory=dict)


# --- router-side state --------------------------------------------------------------------------


@define(kw_only=True, slots=True)
class NodeState:
    """The registry's view of one node. Mutated only by the registry."""

    node_id: str
    heartbeat: Heartbeat
    status: NodeStatus = "online"
    endpoints: tuple[Endpoint, ...] = ()  # as reported, URLs made reachable from the router
    first_seen: float = 0.0  # wall clock
    last_seen: float = 0.0  # monotonic
    last_seen_wall: float = 0.0
    loaded: dict[str, LoadedModel] = field(factory=dict)  # normalized name -> model
    available: dict[str, AvailableModel] = field(factory=dict)
    serving: dict[str, Endpoint] = field(factory=dict)  # normalized name -> its endpoint
    unloaded_at: dict[str, float] = field(factory=dict)  # normalized name -> monotonic time
    heartbeats: int = 0
    admission: str = ""  # how it was let in: local | admitted | secret (herd_kernel.admission)

    @property
    def routable(self) -> bool:
        hb = self.heartbeat
        return self.status != "offline" and not hb.draining and not hb.paused

    @property
    def url(self) -> str:
        """The first endpoint's URL ("" when the node reports none): for display."""
        return self.endpoints[0].url if self.endpoints else ""

    def endpoint(self, kind: str) -> Endpoint | None:
        """The node's first endpoint of ``kind``."""
        for endpoint in self.endpoints:
            if endpoint.kind == kind:
                return endpoint
        return None


@frozen(kw_only=True)
class RouteRequest:
    """The few facts about a client request that routing needs; parsed once per request."""

    model: str  # as the client sent it
    api: str  # the client API's dialect (``herd_kernel.wire``), e.g. ``openai``
    path: str
    stream: bool
    num_ctx: int | None = None
    num_predict: int | None = None
    fallback_models: tuple[str, ...] = ()
    tags: tuple[str, ...] = ()
    estimated_tokens: int = 0
    request_id: str = ""
    original_model: str = ""  # set when the router substituted ``model`` before scoring

    @property
    def key(self) -> str:
        return normalize_model(self.model)


@frozen(kw_only=True)
class Attempt:
    node_id: str
    outcome: str  # "ok" | reason the attempt failed
    status: int | None = None


@frozen(kw_only=True)
class Trace:
    """One finished request, as the store, the log line and ``request_finished`` hooks see it."""

    request_id: str
    timestamp: float
    model: str  # the model that served (a fallback when one was used)
    api: str
    path: str
    node_id: str | None
    status: str  # completed | failed | client_disconnected | rejected
    http_status: int
    latency_ms: float
    ttft_ms: float | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    retries: int = 0
    score: float | None = None
    score_breakdown: dict[str, float] = field(factory=dict)
    attempts: tuple[Attempt, ...] = ()
    tags: tuple[str, ...] = ()
    error_message: str | None = None
    stream: bool = False
    original_model: str = ""  # the model the client asked for
    details: dict[str, Any] = field(factory=dict)  # backend specifics, e.g. a thinking budget


# --- the converter -----------------------------------------------------------------------------

converter = cattrs.Converter(forbid_extra_keys=False)


_SCALARS = {int: (int,), float: (int, float), str: (str,), bool: (bool,)}


def _strict_scalar(cls: type) -> Any:
    accepted = _SCALARS[cls]

    def structure(value: Any, _t: Any) -> Any:
        # JSON gives us bool, int, float, str; refuse silent coercions like "12" -> 12 or 1 -> True
        if isinstance(value, bool) and cls is not bool:
            raise TypeError(f"expected {cls.__name__}, got a boolean")
        if not isinstance(value, accepted):
            raise TypeError(f"expected {cls.__name__}, got {type(value).__name__}")
        if cls is float:
            value = float(value)
            if not math.isfinite(value):
                raise ValueError("must be finite")
        return value

    return structure


for _cls in _SCALARS:
    converter.register_structure_hook(_cls, _strict_scalar(_cls))


def _strict_sequence(type_: Any) -> None:
    """JSON arrays only: a string must not be iterated into a tuple of characters."""
    default = converter.get_structure_hook(type_)

    def structure(value: Any, t: Any) -> Any:
        if not isinstance(value, list | tuple):
            raise TypeError(f"expected a list, got {type(value).__name__}")
        return default(value, t)

    converter.register_structure_hook_func(lambda t: t == type_, structure)


for _seq in (
    tuple[LoadedModel, ...], tuple[AvailableModel, ...], tuple[GpuReading, ...], tuple[str, ...],
    tuple[Endpoint, ...],
):
    _strict_sequence(_seq)


def _describe(exc: BaseException, type_: Any) -> str:
    if type(exc) is ValueError and str(exc):
        return str(exc)
    return cattrs.v.format_exception(exc, type_)


def structure(data: Any, cls: type[Any]) -> Any:
    """Structure JSON data into ``cls`` or raise ``PayloadError`` naming the bad field."""
    if not isinstance(data, dict):
        raise PayloadError("", f"expected a JSON object, got {type(data).__name__}")
    try:
        return converter.structure(data, cls)
    except (ClassValidationError, IterableValidationError) as exc:
        # transform_error gives "expected int @ $.cpu.cores_physical"; keep the first problem
        first = cattrs.transform_error(exc, format_exception=_describe)[0]
        message, _, where = first.rpartition(" @ ")
        where = where.removeprefix("$").lstrip(".")
        # our attrs validators say "<field> must ..." about a field of the class at `where`
        name, sep, _rest = message.partition(" must ")
        if sep and name.isidentifier():
            where = f"{where}.{name}" if where else name
        raise PayloadError(where, message or first) from None
    except (TypeError, ValueError, KeyError) as exc:
        raise PayloadError("", str(exc)) from None


def unstructure(obj: Any) -> Any:
    return converter.unstructure(obj)


def wall_now() -> float:
    return time.time()
