import sys
from importlib.metadata import entry_points

import pytest

from herd_kernel.config import Setting
from herd_kernel.hookspecs import hookimpl
from herd_kernel.plugins import PluginError, PluginHost, PluginInfo
from herd_kernel.testing import make_config


def fake_dist(root, name, entries, module_code=None):
    """An installed distribution on sys.path declaring ``herd`` entry points."""
    info = root / f"{name.replace('-', '_')}-0.1.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.1\n")
    lines = "\n".join(f"{k} = {v}" for k, v in entries.items())
    (info / "entry_points.txt").write_text(f"[herd]\n{lines}\n")
    if module_code:
        for mod, code in module_code.items():
            (root / f"{mod}.py").write_text(code)


@pytest.fixture
def site(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for mod in [m for m in sys.modules if m.startswith("herd_fake_")]:
        del sys.modules[mod]


def test_installed_plugins_are_found_by_entry_point():
    host = PluginHost()
    names = {p.name for p in host.loaded}
    assert {"backend-ollama", "signal-thermal", "node-system"} <= names
    assert not host.failed


def test_selection_by_name_and_glob_happens_before_import(site):
    fake_dist(site, "herd-fake-bomb", {"signal-bomb": "herd_fake_bomb"},
              {"herd_fake_bomb": "raise SystemExit('imported!')\n"})
    host = PluginHost(["backend-*", "signal-thermal"])
    # every installed backend, however many there are (backend-ollama, backend-openai, ...)
    backends = {e.name for e in entry_points(group="herd") if e.name.startswith("backend-")}
    assert "backend-ollama" in backends
    assert {p.name for p in host.loaded} == backends | {"signal-thermal"}
    assert "signal-bomb" in {p.name for p in host.skipped}  # never imported


def test_a_plugin_that_fails_to_import_is_reported_by_name(site):
    fake_dist(site, "herd-fake-broken", {"signal-broken": "herd_fake_missing_module"})
    host = PluginHost()
    [failed] = host.failed
    assert failed.name == "signal-broken" and failed.dist == "herd-fake-broken"
    assert "ModuleNotFoundError" in failed.error
    assert "backend-ollama" in {p.name for p in host.loaded}  # the rest still load


def test_duplicate_entry_names_are_refused(site):
    fake_dist(site, "herd-fake-dup", {"signal-thermal": "herd_fake_dup"},
              {"herd_fake_dup": ""})
    host = PluginHost(["signal-thermal"])
    assert len(host.loaded) == 1 and len(host.failed) == 1
    assert "duplicate plugin name" in host.failed[0].error


class TwoSignals:
    @hookimpl
    def herd_signals(self, config):
        return [type("S", (), {"name": "thermal", "weight": 1, "low": 0, "high": 1,
                               "score": lambda self, c, x: []})()]


class BadReturn:
    @hookimpl
    def herd_signals(self, config):
        return "not a list"


def test_duplicate_signal_names_name_both_plugins():
    host = PluginHost(["signal-thermal"])
    host.register(TwoSignals())
    with pytest.raises(PluginError, match="'signal-thermal' and 'TwoSignals'"):
        host.signals(make_config(host))


def test_bad_registration_result_names_the_plugin():
    host = PluginHost([], load_entry_points=False)
    host.register(BadReturn())
    with pytest.raises(PluginError, match="BadReturn"):
        host.signals(make_config(host))


class DupSetting:
    @hookimpl
    def herd_settings(self):
        return [Setting(env="FLEET_SCORE_MODEL_HOT", type=float, default=1.0, help="dup")]


def test_duplicate_settings_are_a_startup_error():
    host = PluginHost(["signal-thermal"])
    host.register(DupSetting())
    with pytest.raises(PluginError, match="FLEET_SCORE_MODEL_HOT"):
        host.settings()


def test_describe_lists_what_each_plugin_registers():
    host = PluginHost(["signal-thermal", "backend-ollama"])
    rows = {r["name"]: r for r in host.describe(make_config(host))}
    assert rows["signal-thermal"]["provides"]["signals"] == ["thermal"]
    assert rows["backend-ollama"]["provides"]["backends"] == ["ollama"]


class Events:
    def __init__(self):
        self.calls = []

    @hookimpl
    def herd_startup(self, services):
        async def later():
            self.calls.append("async-start")
        self.calls.append("start")
        return later()

    @hookimpl
    def herd_request_finished(self, trace):
        raise RuntimeError("a broken listener must not break the others")


async def test_lifecycle_awaits_results_and_isolates_failures():
    host = PluginHost([], load_entry_points=False)
    events = Events()
    host.register(events)
    await host.lifecycle("herd_startup", services=None)
    assert events.calls == ["start", "async-start"]
    host.notify("herd_request_finished", trace=None)  # logged, not raised


# --- the plugin API: a plugin built for another kernel is refused by name -----------------------


@pytest.mark.parametrize("requires,refused", [
    (None, False),
    ([], False),
    (["herd-kernel>=0.1,<0.2"], False),
    (["herd-kernel"], False),
    (["herd_kernel >= 0.1, < 0.2", "psutil>=5.9"], False),
    (["herd-kernel==0.1.*"], False),
    (["herd-kernel~=0.1.0"], False),
    (["herd-kernel>=0.2,<0.3"], True),
    (["herd-kernel<0.1"], True),
    (["herd-kernel==0.2.*"], True),
    (["herd-kernel>=0.1,<0.2; extra == 'herd'"], False),
])
def test_a_kernel_requirement_that_excludes_this_kernel_is_named(requires, refused):
    from herd_kernel.plugins import kernel_mismatch

    problem = kernel_mismatch(requires, "0.1.0")
    assert (problem is not None) == refused
    if refused:
        assert "herd-kernel 0.1.0" in problem and "plugin API 1" in problem


def test_a_plugin_built_for_another_plugin_api_is_refused_by_name():
    from herd_kernel.plugins import PluginError

    class Future:
        PLUGIN_API = 2

        @hookimpl
        def herd_settings(self):
            return ()

    host = PluginHost(load_entry_points=False)
    with pytest.raises(PluginError, match="built for Herd plugin API 2"):
        host.register(Future(), PluginInfo(name="signal-future", dist="herd-signal-future",
                                           version="9.0", module="x"))
    assert host.loaded == []


def test_every_package_here_declares_the_kernel_it_was_built_for():
    import tomllib
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    for pyproject in [*root.glob("plugins/*/pyproject.toml"), root / "plugin_template/pyproject.toml"]:
        project = tomllib.loads(pyproject.read_text())["project"]
        deps = [d for d in project.get("dependencies", ()) if d.startswith("herd-kernel")]
        assert deps and ">=" in deps[0] and "<" in deps[0].split(",", 1)[-1], (
            f"{pyproject.parent.name}: herd-kernel dependency {deps} has no range")


def test_a_plugin_for_another_kernel_is_refused_before_its_code_is_imported(monkeypatch):
    import herd_kernel.plugins as plugins

    class Dist:
        name, version = "herd-signal-next", "3.0"
        requires = ["herd-kernel>=0.3,<0.4"]

    class EntryPoint:
        name, value, dist = "signal-next", "herd_signal_next", Dist()

        def load(self):
            raise AssertionError("imported a plugin built for another kernel")

    monkeypatch.setattr(plugins.md, "entry_points", lambda group: [EntryPoint()])
    host = PluginHost()
    [failed] = host.failed
    assert failed.name == "signal-next" and "herd-kernel >=0.3,<0.4" in failed.error
    assert host.loaded == []


# --- the registration hooks that have no engine behind them yet ---------------------------------


class ChecksAndPanels:
    class Offline:
        id = "offline-nodes"
        title = "Offline nodes"

        def evaluate(self, snapshot):
            from herd_kernel.api import Finding

            return [Finding(check_id=self.id, severity="warning", title="node n is offline",
                            detail="silent for 40 s", node_id=n["node_id"])
                    for n in snapshot["nodes"] if n["status"] == "offline"]

    @hookimpl
    def herd_health_checks(self, config):
        return [self.Offline()]

    @hookimpl
    def herd_dashboard_panels(self, config):
        from herd_kernel.api import Panel

        return [Panel(id="trends", title="Trends", order=20),
                Panel(id="overview", title="Fleet Overview", order=10)]


def test_health_checks_and_panels_are_collected_checked_and_ordered():
    host = PluginHost(load_entry_points=False)
    host.register(ChecksAndPanels())
    config = make_config(host)
    [check] = host.health_checks(config)
    findings = check.evaluate({"nodes": [{"node_id": "a", "status": "offline"},
                                         {"node_id": "b", "status": "online"}]})
    assert [(f.check_id, f.node_id, f.severity) for f in findings] == [
        ("offline-nodes", "a", "warning")]
    assert [p.id for p in host.panels(config)] == ["overview", "trends"]  # by order


def test_a_health_check_without_evaluate_is_refused_by_name():
    class Broken:
        @hookimpl
        def herd_health_checks(self, config):
            class NoEvaluate:
                id = "x"

            return [NoEvaluate()]

    host = PluginHost(load_entry_points=False)
    host.register(Broken(), PluginInfo(name="health-broken", dist="d", version="0", module="m"))
    with pytest.raises(PluginError, match="health-broken"):
        host.health_checks(make_config(host))
