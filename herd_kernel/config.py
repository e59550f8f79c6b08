"""Typed settings: every knob is a ``FLEET_*`` (router) or ``FLEET_NODE_*`` (node) variable,
declared once with its type, default and help. CLI flags override the environment, which
overrides the defaults. Plugins declare their own settings through the ``herd_settings`` hook and
read them from the same resolved ``Config``. Settings marked ``runtime`` may also be changed while
the router runs (``RuntimeSettings``); such a change is kept in the data dir and wins over all.
"""

from __future__ import annotations

import asyncio
import json
import math
import os
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Literal

import structlog
from attrs import field, frozen

Scope = Literal["router", "node", "both"]
Source = Literal["default", "env", "flag", "runtime"]

log = structlog.get_logger("herd.config")


@frozen(kw_only=True)
class Setting:
    """One configuration variable. ``env`` is the full variable name (``FLEET_SCORE_MODEL_HOT``)."""

    env: str
    type: type
    default: Any
    help: str
    scope: Scope = "router"
    # read this variable instead when ``env`` is not set (FLEET_NODE_SECRET -> FLEET_SECRET)
    fallback: str | None = None
    # a command-line flag for it (``--ollama-host``) on the commands of its scope; ``repeat``:
    # the flag may be given several times, its values joined with commas
    flag: str = ""
    repeat: bool = False
    # may be changed while the router runs: every reader must then read it per use, from the
    # ``Config`` (a dict lookup), never keep a copy taken at start-up
    runtime: bool = False
    # never shown (a key, a secret): APIs say only whether it is set
    secret: bool = False
    # for a ``str``: the only values it takes (case-insensitive; read as written here)
    choices: tuple[str, ...] = ()
    # for a number: the interval it must lie in, written as in mathematics: ``"[1, 65535]"``,
    # ``"(0, 100]"`` (above 0, at most 100), ``"[0, )"`` (0 or more). Numbers are always finite.
    bounds: str = field(default="", validator=lambda _s, _a, v: _interval(v))
    # the plugin that declared it (filled in by the plugin host; "" for the kernel's own)
    plugin: str = field(default="", eq=False)

    @property
    def key(self) -> str:
        """The short, lower-case name used in code: ``FLEET_NODE_ROUTER_URL`` -> ``router_url``."""
        for prefix in ("FLEET_NODE_", "FLEET_"):
            if self.env.startswith(prefix):
                return self.env[len(prefix) :].lower()
        return self.env.lower()


def _interval(text: str) -> tuple[float | None, bool, float | None, bool]:
    """``"(0, 100]"`` -> (0, False, 100, True): each end and whether it is included; an end left
    empty is unbounded. ``""``: no bounds."""
    if not text:
        return None, False, None, False
    body = text.strip()
    if len(body) < 3 or body[0] not in "[(" or body[-1] not in "])" or body.count(",") != 1:
        raise ValueError(f"bounds {text!r}: expected an interval such as '[0, 100]' or '(0, )'")
    low, high = (part.strip() for part in body[1:-1].split(","))
    try:
        lo = float(low) if low else None
        hi = float(high) if high else None
    except ValueError:
        raise ValueError(f"bounds {text!r}: the ends must be numbers") from None
    if lo is not None and hi is not None and lo > hi:
        raise ValueError(f"bounds {text!r}: the low end is above the high end")
    return lo, body[0] == "[", hi, body[-1] == "]"


def check_number(setting: Setting, value: Any, name: str | None = None) -> Any:
    """``value`` if it is a finite number within the setting's ``bounds`` (anything else that is
    no number passes as it is); else ``SettingError`` naming ``name`` (default: the variable)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return value
    name = name or setting.env
    if not math.isfinite(value):
        raise SettingError(f"{name}={value!r}: expected a finite number", name)
    lo, lo_in, hi, hi_in = _interval(setting.bounds)
    if (lo is not None and (value < lo or (value == lo and not lo_in))) or \
            (hi is not None and (value > hi or (value == hi and not hi_in))):
        raise SettingError(f"{name}={value:g}: expected a value in {setting.bounds} "
                           f"({describe_bounds(setting.bounds)})", name)
    return value


def describe_bounds(bounds: str) -> str:
    """``"(0, 100]"`` -> ``"above 0, at most 100"``."""
    lo, lo_in, hi, hi_in = _interval(bounds)
    parts = []
    if lo is not None:
        parts.append(f"{'at least' if lo_in else 'above'} {lo:g}")
    if hi is not None:
        parts.append(f"{'at most' if hi_in else 'below'} {hi:g}")
    return ", ".join(parts) or "any finite number"


class SettingError(ValueError):
    """A variable or flag has a value its declared type cannot take; ``field``: the name the
    caller used for it, when it came from an API call."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off", ""}


def parse_value(setting: Setting, raw: Any) -> Any:
    """``raw`` (a string from the environment or a flag) as the setting's type, checked."""
    if not isinstance(raw, str):
        return check_number(setting, raw)
    kind = setting.type
    try:
        if kind is bool:
            low = raw.strip().lower()
            if low in _TRUE:
                return True
            if low in _FALSE:
                return False
            raise ValueError(raw)
        if kind is int:
            number: float = int(raw.strip())
        elif kind is float:
            number = float(raw.strip())
        elif kind is Path:
            return Path(raw).expanduser()
    except ValueError:
        raise SettingError(
            f"{setting.env}={raw!r} is not a valid {kind.__name__}: {setting.help}"
        ) from None
    if kind is int or kind is float:
        return check_number(setting, number)
    if setting.choices:
        for choice in setting.choices:
            if choice.lower() == raw.strip().lower():
                return choice
        raise SettingError(f"{setting.env}={raw!r}: expected one of {', '.join(setting.choices)}")
    return raw


def runtime_value(setting: Setting, raw: Any, name: str) -> Any:
    """A JSON value for a runtime setting, checked as strictly as the environment's would be: a
    string goes through ``parse_value``; otherwise the JSON type must be the setting's own (``3``
    is no bool). ``name`` (what the caller called it) is named in the error."""
    kind = setting.type
    if isinstance(raw, str):
        try:
            return parse_value(setting, raw)
        except SettingError as exc:
            raise SettingError(f"{name}: {exc}", name) from None
    number = isinstance(raw, int | float) and not isinstance(raw, bool) and math.isfinite(raw)
    if kind is bool and isinstance(raw, bool):
        return raw
    if (kind is int and number and raw == int(raw)) or (kind is float and number):
        return check_number(setting, kind(raw), name)
    expected = {bool: "true or false", int: "an integer", float: "a number"}.get(kind, "a string")
    raise SettingError(f"{name} must be {expected}, not {json.dumps(raw)}", name)


class Config(Mapping[str, Any]):
    """Resolved settings, readable by env name (``cfg["FLEET_PORT"]``) or attribute (``cfg.port``).
    A runtime change (``RuntimeSettings``) replaces a value in place: every holder of this object
    reads the new one at its next lookup."""

    def __init__(self, specs: Iterable[Setting], values: Mapping[str, Any],
                 sources: Mapping[str, Source] | None = None) -> None:
        self._specs = {s.env: s for s in specs}
        self._values = dict(values)
        self._by_key = {s.key: s.env for s in self._specs.values()}
        self._sources: dict[str, Source] = dict(sources or {})  # absent: the default
        self._configured: dict[str, tuple[Any, Source]] = {}  # what runtime values replaced

    def __getitem__(self, env: str) -> Any:
        return self._values[env]

    def __iter__(self):
        return iter(self._values)

    def __len__(self) -> int:
        return len(self._values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[self._by_key[key]]
        except KeyError:
            raise AttributeError(key) from None

    @property
    def specs(self) -> list[Setting]:
        return list(self._specs.values())

    def spec(self, name: str) -> Setting | None:
        """The setting called ``name``: its variable (``FLEET_AUTO_PULL``) or key (``auto_pull``),
        in any case."""
        return self._specs.get(name.upper()) or self._specs.get(self._by_key.get(name.lower(), ""))

    def source(self, env: str) -> Source:
        """Where the value in force came from: default, env, flag or runtime."""
        return self._sources.get(env, "default")

    def configured(self, env: str) -> Any:
        """The value before any runtime change (from the defaults, environment or flags)."""
        return self._configured[env][0] if env in self._configured else self._values[env]

    def set_runtime(self, env: str, value: Any) -> None:
        """Put ``value`` in force for a runtime setting; ``None`` restores the configured one."""
        if not self._specs[env].runtime:
            raise SettingError(f"{env} cannot be changed while the router runs")
        if value is None:
            if env in self._configured:
                self._values[env], self._sources[env] = self._configured.pop(env)
            return
        self._configured.setdefault(env, (self._values[env], self.source(env)))
        self._values[env] = value
        self._sources[env] = "runtime"

    def with_overrides(self, **overrides: Any) -> Config:
        values, sources = dict(self._values), dict(self._sources)
        for key, value in overrides.items():
            env = self._by_key.get(key, key)
            values[env], sources[env] = value, "flag"
        return Config(self._specs.values(), values, sources)


def resolve(
    specs: Iterable[Setting],
    environ: Mapping[str, str] | None = None,
    flags: Mapping[str, Any] | None = None,
) -> Config:
    """Defaults, then the environment, then CLI flags (keyed by env name or short key)."""
    environ = os.environ if environ is None else environ
    flags = {k: v for k, v in (flags or {}).items() if v is not None}
    specs = list(specs)
    by_key = {s.key: s for s in specs}
    values: dict[str, Any] = {}
    sources: dict[str, Source] = {}
    for spec in specs:
        value = spec.default
        if spec.env in environ:
            value = parse_value(spec, environ[spec.env])
            sources[spec.env] = "env"
        elif spec.fallback is not None and spec.fallback in environ:
            value = parse_value(spec, environ[spec.fallback])
            sources[spec.env] = "env"
        values[spec.env] = value
    for name, raw in flags.items():
        spec = next((s for s in specs if s.env == name), None) or by_key.get(name)
        if spec is None:
            raise SettingError(f"unknown setting {name}")
        values[spec.env] = parse_value(spec, raw)
        sources[spec.env] = "flag"
    return Config(specs, values, sources)


class RuntimeSettings:
    """Changes to ``runtime`` settings made while the router runs: put in force in the live
    ``Config`` and kept in ``path`` (JSON, owner-only, written atomically), so they outlive a
    restart and win over the environment and flags until reset (a ``None`` value)."""

    def __init__(self, config: Config, path: Path) -> None:
        self.config = config
        self.path = path
        # what the file holds, env -> value; entries for settings no loaded plugin declares
        # are kept as they are (a plugin left out for one run keeps its toggle)
        self.saved: dict[str, Any] = {}
        self._lock = asyncio.Lock()

    def load(self, *, announce: bool = True) -> None:
        """Read the file and put its values in force (at start-up, before plugins read them);
        ``announce``: log each one put in force (the router does; ``herd settings`` does not)."""
        try:
            data = json.loads(self.path.read_text())
            saved = data["settings"]
            if not isinstance(saved, dict):
                raise ValueError("'settings' is not an object")
        except FileNotFoundError:
            return
        except (OSError, ValueError, KeyError, TypeError) as exc:
            log.error("runtime settings unreadable; the configured values are in force",
                      path=str(self.path), error=repr(exc))
            return
        self.saved = dict(saved)
        for env, raw in saved.items():
            spec = self.config.spec(env)
            if spec is None or not spec.runtime:
                continue
            try:
                value = runtime_value(spec, raw, env)
            except SettingError as exc:
                log.error("runtime setting unreadable; skipped", setting=env, error=str(exc))
                continue
            before, source = self.config[env], self.config.source(env)
            self.config.set_runtime(env, value)
            if announce:
                log.info("runtime setting in force (from the data dir, over the configured value)",
                         setting=env, value=value, configured=before, configured_from=source,
                         path=str(self.path))

    def check(self, changes: Mapping[str, Any]) -> dict[str, Any]:
        """``changes`` by key or variable, checked: env -> value (None: reset); or
        ``SettingError`` naming the first bad one."""
        checked: dict[str, Any] = {}
        for name, raw in changes.items():
            spec = self.config.spec(name)
            if spec is None:
                raise SettingError(f"{name}: no such setting", name)
            if not spec.runtime:
                raise SettingError(f"{name} ({spec.env}) cannot be changed while the router "
                                   "runs: set it in the environment and restart", name)
            checked[spec.env] = None if raw is None else runtime_value(spec, raw, name)
        return checked

    async def change(self, changes: Mapping[str, Any]) -> dict[str, tuple[Any, Any]]:
        """Check ``changes``, write them to the file, then put them in force (a change that
        cannot be saved is not made: ``OSError``). env -> (old, new) for each one named."""
        checked = self.check(changes)
        async with self._lock:
            saved = {**self.saved, **checked}
            saved = {env: value for env, value in saved.items() if value is not None}
            text = json.dumps({"version": 1, "settings": saved}, indent=1, sort_keys=True)
            await asyncio.to_thread(write_atomically, self.path, text)
            self.saved = saved
            done = {}
            for env, value in checked.items():
                old = self.config[env]
                self.config.set_runtime(env, value)
                done[env] = (old, self.config[env])
            return done


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` so that a crash leaves the old file or the new one, never half of either;
    readable by the owner only."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def default_data_dir() -> Path:
    """Where the router and the node agent keep their state unless told otherwise."""
    return Path("~/.fleet-manager").expanduser()


# The router's own settings; the node agent's are in ``herd_node.settings``. Plugins add theirs
# through the ``herd_settings`` hook.
ROUTER_SETTINGS: tuple[Setting, ...] = (
    Setting(env="FLEET_HOST", type=str, default="0.0.0.0", help="Address the router listens on."),
    Setting(env="FLEET_PORT", type=int, bounds="[0, 65535]", default=11435,
            help="Port the router listens on."),
    Setting(
        env="FLEET_DATA_DIR",
        type=Path,
        default=default_data_dir(),
        help="Where the router keeps its databases and logs (logs/herd.jsonl).",
        scope="both",
    ),
    Setting(
        env="FLEET_LOG_LEVEL",
        type=str,
        default="INFO",
        help="Log level for the console and the JSON log file (DEBUG, INFO, WARNING, ERROR).",
        scope="both",
    ),
    Setting(
        env="FLEET_PLUGINS",
        type=str,
        default="",
        help="Comma-separated plugin names or globs to load (e.g. 'signal-*,backend-ollama'); "
        "empty loads every installed plugin.",
        scope="both",
    ),
    Setting(
        env="FLEET_UVLOOP",
        type=bool,
        default=True,
        help="Run on uvloop (a faster event loop) when it is installed, as it is by default on "
        "Linux and macOS; false uses asyncio's own loop.",
        scope="both",
    ),
    Setting(
        env="FLEET_SECRET",
        type=str,
        default="",
        help="Fleet secret: when set, heartbeats must be signed with it (nodes set "
        "FLEET_NODE_SECRET to the same value) and nodes can verify this router.",
        secret=True,
    ),
    Setting(
        env="FLEET_ADMIN_KEY",
        type=str,
        default="",
        help="Key for the /fleet/* API (Authorization: Bearer <key> or X-API-Key): when set, "
        "reads need it too, and admin calls (herd nodes approve, herd enroll) may come from "
        "other machines with it; without it they are accepted only over loopback.",
        secret=True,
    ),
    Setting(
        env="FLEET_API_KEYS",
        type=str,
        default="",
        help="Client API keys: comma-separated, or a file path (starting with /, ~ or .) with "
        "one key per line, each optionally followed by a space and an app name that tags its "
        "requests. When set, every client route needs one (Authorization: Bearer <key> or "
        "X-API-Key), from this machine too; see docs/security.md.",
        secret=True,
    ),
    Setting(
        env="FLEET_LOG_BODIES",
        type=bool,
        default=False,
        help="Log every routed request's body (prompts included) in a 'request body' line at "
        "INFO, with its request id. Off: no prompt or answer ever reaches the logs.",
    ),
    Setting(
        env="FLEET_ENROLL_MINUTES",
        type=float,
        bounds="[0, )",
        default=10.0,
        help="Minutes after the router's first start (no admission state in the data dir yet) "
        "during which nodes on other machines are admitted without approval; `herd enroll` "
        "opens such a window later. 0: never on first start.",
    ),
    Setting(
        env="FLEET_EVICT_AFTER",
        type=float,
        bounds="(0, )",
        default=3600.0,
        help="Seconds an offline node stays listed before it is forgotten (an admitted node keeps "
        "its admission and rejoins with its next heartbeat). 0: never.",
    ),
    Setting(
        env="FLEET_PENDING_EVICT_AFTER",
        type=float,
        bounds="(0, )",
        default=300.0,
        help="Seconds a node waiting for approval stays listed after its last heartbeat.",
    ),
    Setting(
        env="FLEET_MAX_NODES",
        type=int,
        bounds="[1, )",
        default=256,
        help="Most nodes the registry keeps (admitted, any status); a new one beyond gets 503.",
    ),
    Setting(
        env="FLEET_MAX_PENDING_NODES",
        type=int,
        bounds="[0, )",
        default=32,
        help="Most nodes waiting for approval at once, counted apart from admitted ones so a "
        "flood of strangers cannot crowd out real nodes; a new one beyond gets 429.",
    ),
    Setting(
        env="FLEET_MAX_MODELS_PER_NODE",
        type=int,
        bounds="[1, )",
        default=1000,
        help="Most models a heartbeat may report (on disk plus loaded); more gets 400.",
    ),
    Setting(
        env="FLEET_HEARTBEAT_TIMEOUT",
        type=float,
        bounds="(0, )",
        default=15.0,
        help="Seconds without a heartbeat before a node is marked degraded.",
    ),
    Setting(
        env="FLEET_HEARTBEAT_OFFLINE",
        type=float,
        bounds="(0, )",
        default=30.0,
        help="Seconds without a heartbeat before a node is marked offline and stops getting work.",
    ),
    Setting(
        env="FLEET_MAX_RETRIES",
        type=int,
        bounds="[0, )",
        default=2,
        help="How many other nodes to try when a node fails before the first byte reaches the client.",
    ),
    Setting(
        env="FLEET_MAX_BODY_MB",
        type=float,
        bounds="(0, )",
        default=64.0,
        help="Largest request body accepted, in MiB (images travel base64 inside JSON).",
    ),
    Setting(
        env="FLEET_BODY_TIMEOUT",
        type=float,
        bounds="(0, )",
        default=30.0,
        help="Seconds a client may go silent while sending a request body before it gets 408 "
        "and the connection is closed.",
    ),
    Setting(
        env="FLEET_HEADER_TIMEOUT",
        type=float,
        bounds="(0, )",
        default=30.0,
        help="Seconds a new connection may take to send its first complete request head before "
        "it is closed (slow or half-open clients cannot hold sockets forever).",
    ),
    Setting(
        env="FLEET_KEEPALIVE_TIMEOUT",
        type=float,
        bounds="[0, )",
        default=75.0,
        help="Seconds an idle keep-alive client connection stays open between requests (a "
        "request head started in that time must also be complete by then).",
    ),
    Setting(
        env="FLEET_SHUTDOWN_GRACE",
        type=float,
        bounds="[0, )",
        default=10.0,
        help="On SIGTERM or Ctrl-C: seconds running requests get to finish (new ones get 503) "
        "before open streams are ended with an in-stream error and the router exits.",
    ),
    Setting(
        env="FLEET_MAX_FRAME_MB",
        type=float,
        bounds="(0, )",
        default=16.0,
        help="Largest single NDJSON line or SSE event a node may stream, in MiB; a longer one "
        "ends the stream with an in-stream error (a node that never sends a newline cannot grow "
        "the router's memory).",
    ),
    Setting(
        env="FLEET_MAX_RESPONSE_MB",
        type=float,
        bounds="(0, )",
        default=256.0,
        help="Largest non-streamed answer a node may send, in MiB (it is read whole before it is "
        "relayed, so that a node that fails half-way can still be retried); larger gets 502.",
    ),
    Setting(
        env="FLEET_CONNECT_TIMEOUT",
        type=float,
        bounds="(0, )",
        default=5.0,
        help="Seconds to wait for a TCP connection to a node before trying the next one.",
    ),
    Setting(
        env="FLEET_READ_TIMEOUT",
        type=float,
        bounds="(0, )",
        default=600.0,
        help="Seconds a node may stay silent mid-response before the request fails.",
    ),
    Setting(
        env="FLEET_SCORE_SHORTLIST",
        type=int,
        bounds="[1, )",
        default=32,
        help="When more nodes than this can serve a model, only this many are scored by the "
        "signals: those first in a quick order (model in memory, a free slot, least queued per "
        "slot, most free memory). Keeps a decision under 2 ms at 1,000 nodes.",
    ),
    Setting(
        env="FLEET_ORIGINS",
        type=str,
        default="",
        help="Comma-separated browser origins allowed to call the router, added to Ollama's "
        "defaults (localhost, 127.0.0.1 and 0.0.0.0 on any port, app://, file://, tauri://, "
        "vscode-webview://, vscode-file://), as OLLAMA_ORIGINS is; one '*' per origin is a "
        "wildcard, '*' alone allows any origin. Other origins get 403.",
    ),
    Setting(
        env="FLEET_HOLD_TIMEOUT",
        type=float,
        bounds="[0, )",
        default=0.0,
        help="Seconds a request may wait in total for a free slot before it gets 503 with "
        "Retry-After. 0: no limit; like Ollama, the request waits as long as its client does "
        "(FLEET_MAX_QUEUE bounds how many wait; FLEET_MAX_QUEUE=0 refuses instead of waiting).",
    ),
    Setting(
        env="FLEET_HOLDING_TIMEOUT",
        type=float,
        bounds="[0, )",
        default=30.0,
        help="Seconds a request may wait in the holding queue, while no node that has its model "
        "can serve it (all offline, paused or draining), before it gets 503 with Retry-After "
        "and x-should-retry: false. 0: 503 at once.",
    ),
    Setting(
        env="FLEET_MAX_QUEUE",
        type=int,
        bounds="[0, )",
        default=512,
        help="Requests that may wait at once (in all node:model queues and the holding queue); "
        "more get 503 at once with Ollama's 'maximum pending requests exceeded', as "
        "OLLAMA_MAX_QUEUE does. Bounds the memory that waiting bodies hold.",
    ),
    Setting(
        env="FLEET_DEFAULT_CONCURRENCY",
        type=int,
        bounds="[1, )",
        default=1,
        help="Requests run at once per node:model when a node does not report its "
        "OLLAMA_NUM_PARALLEL (the rest wait in the router's queue, where they can still move).",
    ),
    Setting(
        env="FLEET_MAX_CONCURRENCY",
        type=int,
        bounds="[1, )",
        default=16,
        help="Upper bound on any node:model's concurrency, whatever the node reports.",
    ),
    Setting(
        env="FLEET_REBALANCE_INTERVAL",
        type=float,
        bounds="(0, )",
        default=5.0,
        help="Seconds between periodic passes of the queue: the reaper, the holding queue's "
        "re-score, the rebalancer and the lane policies' tick such as pre-warming (all but the "
        "reaper also act at once on heartbeats and completions).",
    ),
    Setting(
        env="FLEET_STALE_TIMEOUT",
        type=float,
        bounds="(0, )",
        default=600.0,
        help="Seconds a running request may go without relaying a byte before the reaper ends it, "
        "frees its slot and counts it (non-streamed answers arrive whole, so keep this at least "
        "as long as the slowest whole answer).",
    ),
    Setting(
        env="FLEET_HEALTH_CACHE_S",
        type=float,
        bounds="[0, )",
        default=5.0,
        help="Seconds the health engine reuses one fleet snapshot and its findings "
        "(GET /dashboard/api/health); 0 builds them for every call.",
    ),
)
