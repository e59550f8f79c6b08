"""The plugin host: the single place that touches pluggy.

It discovers plugins through the ``herd`` entry point group, filters them by name or glob *before*
importing them, reports a plugin that fails to import by name instead of crashing, and exposes
typed, validated, flattened results of the registration hooks.
"""

from __future__ import annotations

import fnmatch
import importlib.metadata as md
import inspect
import re
from collections.abc import Iterable, Sequence
from types import ModuleType
from typing import Any

import attrs
import pluggy
import structlog

from herd_kernel import PLUGIN_API, __version__, hookspecs
from herd_kernel.config import Config, Setting

ENTRY_POINT_GROUP = "herd"
log = structlog.get_logger("herd.plugins")


@attrs.frozen(kw_only=True)
class PluginInfo:
    name: str  # entry point name, e.g. "signal-thermal"
    dist: str  # distribution, e.g. "herd-signal-thermal"
    version: str
    module: str
    error: str | None = None  # why it could not be loaded


class PluginError(RuntimeError):
    """A plugin returned something the kernel cannot use; the message names the plugin."""


def parse_selection(text: str | Sequence[str] | None) -> list[str]:
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    return [item.strip() for item in items if item.strip()]


def selected(name: str, patterns: Sequence[str]) -> bool:
    return not patterns or any(fnmatch.fnmatchcase(name, p) for p in patterns)


_OPS = {">=": lambda a, b: a >= b, "<=": lambda a, b: a <= b, "!=": lambda a, b: a != b,
        "==": lambda a, b: a == b, ">": lambda a, b: a > b, "<": lambda a, b: a < b}
_REQUIREMENT = re.compile(r"^\s*herd[-_.]kernel\s*(?:\[[^\]]*\])?\s*([^;]*)(;.*)?$", re.IGNORECASE)
_CLAUSE = re.compile(r"^\s*(>=|<=|==|!=|~=|>|<)\s*([0-9][0-9.]*)(\.\*)?\s*$")


def _version(text: str) -> tuple[int, ...]:
    parts = []
    for piece in text.split("."):
        digits = re.match(r"\d+", piece)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts)


def _pad(a: tuple[int, ...], b: tuple[int, ...]) -> tuple[tuple[int, ...], tuple[int, ...]]:
    width = max(len(a), len(b))
    return a + (0,) * (width - len(a)), b + (0,) * (width - len(b))


def kernel_mismatch(requires: Sequence[str] | None, version: str = __version__) -> str | None:
    """Why a distribution's ``herd-kernel`` requirement excludes this kernel (None: it does
    not, or it says nothing). A plugin built for another kernel is refused by name, before its
    code is imported."""
    have = _version(version)
    for requirement in requires or ():
        match = _REQUIREMENT.match(requirement)
        if match is None or (match.group(2) and "extra" in match.group(2)):
            continue
        for clause in filter(None, (c.strip() for c in match.group(1).split(","))):
            parsed = _CLAUSE.match(clause)
            if parsed is None:
                continue  # a form this check does not read: the installer has judged it
            op, wanted, star = parsed.group(1), _version(parsed.group(2)), parsed.group(3)
            if star and op in ("==", "!="):
                ok = (have[:len(wanted)] == wanted) == (op == "==")
            elif op == "~=":
                ok = _pad(have, wanted)[0] >= _pad(have, wanted)[1] \
                    and have[:max(1, len(wanted) - 1)] == wanted[:max(1, len(wanted) - 1)]
            else:
                ok = _OPS[op](*_pad(have, wanted))
            if not ok:
                return (f"built for herd-kernel {match.group(1).strip()}, but this is "
                        f"herd-kernel {version} (plugin API {PLUGIN_API}): install a release of "
                        "the plugin made for it")
    return None


class PluginHost:
    """Loads plugins and calls their hooks. ``patterns`` selects by entry name (globs allowed)."""

    def __init__(self, patterns: Sequence[str] = (), *, load_entry_points: bool = True) -> None:
        self.pm = pluggy.PluginManager("herd")
        self.pm.add_hookspecs(hookspecs.HerdSpec)
        self.patterns = list(patterns)
        self.loaded: list[PluginInfo] = []
        self.failed: list[PluginInfo] = []
        self.skipped: list[PluginInfo] = []
        if load_entry_points:
            self._load_entry_points()

    # --- loading -------------------------------------------------------------------------------

    def _load_entry_points(self) -> None:
        seen: dict[str, str] = {}
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist = ep.dist.name if ep.dist is not None else "?"
            version = ep.dist.version if ep.dist is not None else "?"
            info = PluginInfo(name=ep.name, dist=dist, version=version, module=ep.value)
            if not selected(ep.name, self.patterns):
                self.skipped.append(info)
                continue
            if ep.name in seen:
                self.failed.append(
                    attrs.evolve(info, error=f"duplicate plugin name, also provided by {seen[ep.name]}")
                )
                continue
            # a plugin built for another kernel is refused before its code runs
            problem = kernel_mismatch(ep.dist.requires if ep.dist is not None else None)
            if problem is not None:
                self.failed.append(attrs.evolve(info, error=problem))
                log.warning("plugin refused", plugin=ep.name, dist=dist, error=problem)
                continue
            try:
                module = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, not fatal
                self.failed.append(attrs.evolve(info, error=f"{type(exc).__name__}: {exc}"))
                log.warning("plugin failed to load", plugin=ep.name, dist=dist, error=str(exc))
                continue
            try:
                self.register(module, info)
            except Exception as exc:  # noqa: BLE001 - e.g. a hook with a misspelt name or argument
                self.failed.append(attrs.evolve(info, error=f"{type(exc).__name__}: {exc}"))
                log.warning("plugin refused", plugin=ep.name, dist=dist, error=str(exc))
                continue
            seen[ep.name] = dist

    def register(self, plugin: ModuleType | object, info: PluginInfo | None = None) -> None:
        """Register a plugin object directly (tests, embedding applications). A plugin that says
        which plugin API it was built for (a ``PLUGIN_API`` attribute) must say this one."""
        if info is None:
            name = getattr(plugin, "__name__", type(plugin).__name__)
            info = PluginInfo(name=name, dist="(registered)", version="", module=name)
        built_for = getattr(plugin, "PLUGIN_API", PLUGIN_API)
        if built_for != PLUGIN_API:
            raise PluginError(f"plugin {info.name} was built for Herd plugin API {built_for!r}; "
                              f"this Herd ({__version__}) speaks plugin API {PLUGIN_API}")
        self.pm.register(plugin, name=info.name)
        try:
            # a herd_* function that matches no hook is a typo the author wants to hear about
            self.pm.check_pending()
        except pluggy.PluginValidationError:
            self.pm.unregister(plugin)
            raise
        self.loaded.append(info)

    def unmatched_patterns(self) -> list[str]:
        names = [p.name for p in (*self.loaded, *self.failed, *self.skipped)]
        return [p for p in self.patterns if not any(fnmatch.fnmatchcase(n, p) for n in names)]

    # --- calling -------------------------------------------------------------------------------

    def _call(self, hook_name: str, **kwargs: Any) -> list[tuple[str, Any]]:
        """Call one hook on every plugin, keeping which plugin produced each result."""
        hook = getattr(self.pm.hook, hook_name)
        results: list[tuple[str, Any]] = []
        for impl in hook.get_hookimpls():  # registration order
            args = {k: v for k, v in kwargs.items() if k in impl.argnames}
            results.append((impl.plugin_name, impl.function(**args)))
        return results

    def _collect(self, hook_name: str, kind: type | None, required: Iterable[str], **kwargs: Any):
        out: list[tuple[str, Any]] = []
        for plugin, items in self._call(hook_name, **kwargs):
            if items is None:
                continue
            if not isinstance(items, list | tuple):
                raise PluginError(f"plugin {plugin!r}: {hook_name} must return a list, got {items!r}")
            for item in items:
                if kind is not None and not isinstance(item, kind):
                    raise PluginError(f"plugin {plugin!r}: {hook_name} returned {item!r}")
                missing = [a for a in required if not hasattr(item, a)]
                if missing:
                    raise PluginError(
                        f"plugin {plugin!r}: {hook_name} returned {item!r} without {missing}"
                    )
                out.append((plugin, item))
        return out

    def _unique(self, hook_name: str, pairs: list[tuple[str, Any]], attr: str) -> list[Any]:
        owners: dict[str, str] = {}
        for plugin, item in pairs:
            key = getattr(item, attr)
            if key in owners:
                raise PluginError(
                    f"{hook_name}: {attr} {key!r} registered by both {owners[key]!r} and {plugin!r}"
                )
            owners[key] = plugin
        return [item for _, item in pairs]

    def settings(self) -> list[Setting]:
        pairs = self._collect("herd_settings", Setting, ())
        return self._unique("herd_settings", [(plugin, attrs.evolve(setting, plugin=plugin))
                                              for plugin, setting in pairs], "env")

    def signals(self, config: Config) -> list[Any]:
        pairs = self._collect(
            "herd_signals", None, ("name", "weight", "low", "high", "score"), config=config
        )
        return self._unique("herd_signals", pairs, "name")

    def backends(self, config: Config) -> list[Any]:
        pairs = self._collect("herd_backends", None, ("name", "routes", "probe"), config=config)
        return self._unique("herd_backends", pairs, "name")

    def sensors(self, config: Config) -> list[Any]:
        pairs = self._collect("herd_node_sensors", None, ("name", "read"), config=config)
        items = self._unique("herd_node_sensors", pairs, "name")
        return sorted(items, key=lambda s: (getattr(s, "order", 100), s.name))

    def discoveries(self, config: Config) -> list[Any]:
        pairs = self._collect("herd_discovery", None, ("name", "find_router"), config=config)
        return self._unique("herd_discovery", pairs, "name")

    def demo_fleets(self, config: Config) -> list[Any]:
        pairs = self._collect("herd_demo_fleet", None, ("name", "start"), config=config)
        return self._unique("herd_demo_fleet", pairs, "name")

    def health_checks(self, config: Config) -> list[Any]:
        return [check for _plugin, check in self.named_health_checks(config)]

    def named_health_checks(self, config: Config) -> list[tuple[str, Any]]:
        """(plugin, HealthCheck) pairs: the health engine names the plugin of a check that
        crashes."""
        pairs = self._collect("herd_health_checks", None, ("id", "evaluate"), config=config)
        self._unique("herd_health_checks", pairs, "id")
        return pairs

    def routes(self, services: Any) -> list[tuple[str, Any]]:
        """(plugin, RouteDef) for every route plugins serve beside the client APIs."""
        return self._collect("herd_routes", None, ("method", "path", "handler"), services=services)

    def lane_policies(self, config: Config) -> list[Any]:
        pairs = self._collect("herd_lane_policies", None, ("name",), config=config)
        return self._unique("herd_lane_policies", pairs, "name")

    def panels(self, config: Config) -> list[Any]:
        pairs = self._collect("herd_dashboard_panels", None, ("id", "title"), config=config)
        return sorted(self._unique("herd_dashboard_panels", pairs, "id"), key=lambda p: (p.order, p.id))

    def shapers(self, config: Config) -> list[Any]:
        pairs = self._collect("herd_request_shapers", None, ("name",), config=config)
        items = self._unique("herd_request_shapers", pairs, "name")
        return sorted(items, key=lambda s: (getattr(s, "order", 100), s.name))

    async def lifecycle(self, hook_name: str, services: Any, *, reverse: bool = False) -> None:
        """Call herd_startup / herd_shutdown on each plugin, awaiting results that are awaitable."""
        calls = self._call_lazy(hook_name)
        for plugin, function, argnames in reversed(calls) if reverse else calls:
            try:
                result = function(**({"services": services} if "services" in argnames else {}))
                if inspect.isawaitable(result):
                    await result
            except Exception as exc:  # noqa: BLE001 - a plugin must not take the router down
                log.error("plugin lifecycle hook failed", plugin=plugin, hook=hook_name, error=repr(exc))

    def _call_lazy(self, hook_name: str) -> list[tuple[str, Any, tuple[str, ...]]]:
        hook = getattr(self.pm.hook, hook_name)
        return [(i.plugin_name, i.function, i.argnames) for i in hook.get_hookimpls()]

    def has_impls(self, hook_name: str) -> bool:
        return bool(getattr(self.pm.hook, hook_name).get_hookimpls())

    def notify(self, hook_name: str, **kwargs: Any) -> None:
        """Fire an event hook; a plugin that raises is logged by name and the rest still run."""
        for plugin, function, argnames in self._call_lazy(hook_name):
            try:
                function(**{k: v for k, v in kwargs.items() if k in argnames})
            except Exception as exc:  # noqa: BLE001
                log.error("plugin event hook failed", plugin=plugin, hook=hook_name, error=repr(exc))

    # --- describing ----------------------------------------------------------------------------

    def describe(self, config: Config) -> list[dict[str, Any]]:
        """What each loaded plugin registers, for ``herd plugins``."""
        rows = []
        families = {
            "settings": ("herd_settings", "env", {}),
            "signals": ("herd_signals", "name", {"config": config}),
            "backends": ("herd_backends", "name", {"config": config}),
            "sensors": ("herd_node_sensors", "name", {"config": config}),
            "discovery": ("herd_discovery", "name", {"config": config}),
            "health checks": ("herd_health_checks", "id", {"config": config}),
            "panels": ("herd_dashboard_panels", "id", {"config": config}),
            "demo": ("herd_demo_fleet", "name", {"config": config}),
            "lane policies": ("herd_lane_policies", "name", {"config": config}),
            "shapers": ("herd_request_shapers", "name", {"config": config}),
        }
        for info in self.loaded:
            plugin = self.pm.get_plugin(info.name)
            provides: dict[str, list[str]] = {}
            for family, (hook_name, attr, kwargs) in families.items():
                for impl in getattr(self.pm.hook, hook_name).get_hookimpls():
                    if impl.plugin is not plugin:
                        continue
                    items = impl.function(**{k: v for k, v in kwargs.items() if k in impl.argnames})
                    provides[family] = [str(getattr(i, attr, i)) for i in items or ()]
            events = [
                name
                for name in ("herd_startup", "herd_shutdown", "herd_request_finished", "herd_node_status_changed")
                if any(i.plugin is plugin for i in getattr(self.pm.hook, name).get_hookimpls())
            ]
            if events:
                provides["events"] = events
            rows.append({**attrs.asdict(info), "provides": provides})
        return rows
