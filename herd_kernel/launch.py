"""What ``herd`` and ``herd-node`` both do around their work: resolve the settings with those of
the selected plugins, report plugins that did not load, and run one coroutine on uvloop until
SIGINT or SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any

from herd_kernel.config import Config, Setting, SettingError, parse_value, resolve
from herd_kernel.plugins import PluginError, PluginHost, parse_selection


def load(
    specs: Iterable[Setting],
    flags: Mapping[str, Any],
    plugins_env: str,
    environ: Mapping[str, str] | None = None,
) -> tuple[PluginHost, Config]:
    """Resolve ``specs``, load the plugins ``plugins_env`` selects, then resolve theirs too."""
    environ = os.environ if environ is None else environ
    specs = tuple(specs)
    own = {s.env for s in specs}
    known = own | {s.key for s in specs}
    # flags for plugins' settings wait until the plugins have declared them
    early = resolve(specs, environ, {k: v for k, v in flags.items() if k in known})
    host = PluginHost(parse_selection(early[plugins_env]))
    plugin_specs = host.settings()
    clash = sorted(s.env for s in plugin_specs if s.env in own)
    if clash:
        raise PluginError(f"plugins re-declare kernel settings: {', '.join(clash)}")
    return host, resolve((*specs, *plugin_specs), environ, flags)


def add_setting_flags(parser: argparse.ArgumentParser, specs: Iterable[Setting]) -> None:
    """Command-line flags for the settings that declare one (``Setting.flag``)."""
    for spec in specs:
        if spec.flag:
            try:
                parser.add_argument(spec.flag, dest=spec.env, default=None,
                                    action="append" if spec.repeat else "store",
                                    help=f"{spec.help} ({spec.env})")
            except argparse.ArgumentError as exc:  # a plugin's flag that another already has
                raise SettingError(f"{spec.env} declares the flag {spec.flag}, which is taken: "
                                   f"{exc}") from None


def setting_flags(args: argparse.Namespace, specs: Iterable[Setting]) -> dict[str, Any]:
    """The values ``add_setting_flags``' flags were given, by variable name."""
    flags: dict[str, Any] = {}
    for spec in specs:
        value = getattr(args, spec.env, None) if spec.flag else None
        if value is not None:
            flags[spec.env] = ",".join(value) if spec.repeat else value
    return flags


def with_plugin_flags(parser: argparse.ArgumentParser, argv: Sequence[str] | None,
                      host: PluginHost, config: Config) -> tuple[argparse.Namespace, Config]:
    """Parse ``argv`` again, strictly, with the flags the loaded plugins' settings declare (a
    command reads what it knows first, then loads the plugins the settings select): the parsed
    arguments, and ``config`` with those flags' values. A flag no loaded plugin declares is
    argparse's error (exit 2)."""
    specs = [spec for spec in host.settings() if spec.flag]
    add_setting_flags(parser, specs)
    args = parser.parse_args(argv)
    given = setting_flags(args, specs)
    return args, config.with_overrides(**{spec.env: parse_value(spec, given[spec.env])
                                          for spec in specs if spec.env in given})


def report_plugins(host: PluginHost, prog: str) -> None:
    for info in host.failed:
        print(f"{prog}: plugin {info.name} ({info.dist}) was not loaded: {info.error}",
              file=sys.stderr)
    for pattern in host.unmatched_patterns():
        print(f"{prog}: no installed plugin matches {pattern!r}", file=sys.stderr)


def run_loop(main: Coroutine[Any, Any, int], uvloop: bool = True) -> int:
    """Run ``main`` on uvloop when it is installed (and wanted), else on asyncio's own loop."""
    factory = None
    if uvloop:
        try:
            import uvloop as _uvloop
        except ImportError:
            pass
        else:
            factory = _uvloop.new_event_loop
    with asyncio.Runner(loop_factory=factory) as runner:
        return runner.run(main)


def on_signals(callback: Callable[[], None]) -> None:
    """Call ``callback`` on SIGINT and SIGTERM (from inside the running loop)."""
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        try:
            loop.add_signal_handler(sig, callback)
        except (NotImplementedError, RuntimeError):  # Windows
            signal.signal(sig, lambda *_: loop.call_soon_threadsafe(callback))
