"""The meta-test that every hook is exercised: while the suite runs, note each hook the kernel
calls with at least one implementation registered; when the whole suite has run and passed, a
hook that was never called with one fails the run, naming it (so a hookspec cannot exist that no
test drives through the kernel)."""

from __future__ import annotations

import inspect
from typing import Any

import pytest

from herd_kernel import hookspecs
from herd_kernel.plugins import PluginHost

EXERCISED: set[str] = set()

_call, _call_lazy = PluginHost._call, PluginHost._call_lazy


def _noted_call(self: PluginHost, hook_name: str, **kwargs: Any) -> Any:
    results = _call(self, hook_name, **kwargs)
    if getattr(self.pm.hook, hook_name).get_hookimpls():
        EXERCISED.add(hook_name)
    return results


def _noted_call_lazy(self: PluginHost, hook_name: str) -> Any:
    calls = _call_lazy(self, hook_name)
    if calls:
        EXERCISED.add(hook_name)
    return calls


PluginHost._call = _noted_call  # type: ignore[method-assign]
PluginHost._call_lazy = _noted_call_lazy  # type: ignore[method-assign]


def all_hooks() -> set[str]:
    return {name for name, _ in inspect.getmembers(hookspecs.HerdSpec, inspect.isfunction)
            if name.startswith("herd_")}


def _whole_suite(config: pytest.Config) -> bool:
    option = config.option
    return (config.args_source == pytest.Config.ArgsSource.TESTPATHS
            and not option.keyword and not option.markexpr and not getattr(option, "lf", False)
            and not getattr(option, "deselect", None))


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if exitstatus != 0 or not _whole_suite(session.config):
        return
    missing = sorted(all_hooks() - EXERCISED)
    if missing:
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        message = ("hooks no test exercised (called by the kernel with an implementation "
                   f"registered): {', '.join(missing)}")
        if reporter is not None:
            reporter.write_line(message, red=True)
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
