"""Meta-tests that keep the plugin contract honest: every hook documented under its exact
signature, every hook with a docstring, every plugin package in the one shape, every setting
in the configuration reference."""

from __future__ import annotations

import ast
import inspect
import re
import tomllib
from collections import Counter
from pathlib import Path

import pytest

from herd_kernel.config import ROUTER_SETTINGS
from herd_kernel.hookspecs import HerdSpec
from herd_kernel.plugins import ENTRY_POINT_GROUP, PluginHost
from herd_node.settings import NODE_SETTINGS

ROOT = Path(__file__).resolve().parents[1]
HOOKS_DOC = ROOT / "docs" / "hooks.md"
CONFIG_DOC = ROOT / "docs" / "configuration.md"
PLUGINS = sorted(
    p for p in (ROOT / "plugins").iterdir() if p.is_dir() and not p.name.startswith(".")
)
# the families in DESIGN.md, ``fleet``: the owner's administration APIs (herd-fleet-admin),
# and ``metrics``: exporters of the router's numbers (herd-metrics-prometheus)
KINDS = {"signal", "backend", "discovery", "health", "node", "panel", "policy", "shaper", "fleet",
         "metrics"}
DIST = re.compile(r"^herd-(?P<kind>[a-z0-9]+)(?:-(?P<name>[a-z0-9]+(?:-[a-z0-9]+)*))?$")


def hookspecs() -> dict[str, object]:
    """Every method of HerdSpec that pluggy treats as a hookspec (marked ``herd_spec``)."""
    return {
        name: fn
        for name, fn in inspect.getmembers(HerdSpec, inspect.isfunction)
        if hasattr(fn, "herd_spec")
    }


def signature(name: str, fn: object) -> str:
    params = [p for p in inspect.signature(fn).parameters if p != "self"]
    return f"{name}({', '.join(params)})"


def hook_titles() -> list[str]:
    """The ``###`` titles inside the "## Hooks" section of docs/hooks.md."""
    titles: list[str] = []
    section = None
    for line in HOOKS_DOC.read_text().splitlines():
        if line.startswith("## "):
            section = line[3:].strip()
        elif line.startswith("### ") and section == "Hooks":
            titles.append(line[4:].strip())
    return titles


# --- hooks ------------------------------------------------------------------------------------


def test_there_are_hookspecs_to_check():
    assert "herd_signals" in hookspecs() and len(hookspecs()) >= 10


@pytest.mark.parametrize("name", sorted(hookspecs()))
def test_every_hook_is_documented_under_its_exact_signature(name):
    expected = signature(name, hookspecs()[name])
    assert expected in hook_titles(), f"docs/hooks.md needs a section titled: ### {expected}"


def test_every_hook_section_title_is_a_real_hook_signature():
    real = {signature(name, fn) for name, fn in hookspecs().items()}
    titles = hook_titles()
    assert titles, "docs/hooks.md has no ## Hooks section with ### titles"
    unknown = [t for t in titles if t not in real]
    assert not unknown, (
        f"docs/hooks.md documents hooks that do not exist (or stale signatures): {unknown}"
    )
    repeated = [t for t, n in Counter(titles).items() if n > 1]
    assert not repeated, f"documented twice: {repeated}"


def test_hook_titles_outside_the_hooks_section_are_not_hooks():
    # a signature-like title elsewhere would escape the check above
    stray = [
        line
        for line in HOOKS_DOC.read_text().splitlines()
        if line.startswith("### herd_") and line[4:].strip() not in hook_titles()
    ]
    assert not stray


def test_hooks_doc_covers_the_protocols_and_plugin_api():
    text = HOOKS_DOC.read_text()
    for name in ("Signal", "Backend", "Sensor", "Discovery", "HealthCheck", "Finding", "Panel"):
        assert re.search(rf"^### .*\b{name}\b", text, re.MULTILINE), f"no section on {name}"
    assert re.search(r"^## PLUGIN_API", text, re.MULTILINE)


@pytest.mark.parametrize("name", sorted(hookspecs()))
def test_every_hook_has_a_docstring(name):
    doc = inspect.getdoc(hookspecs()[name])
    assert doc and doc.strip(), f"hookspec {name} has no docstring"


# --- plugin packages --------------------------------------------------------------------------


def test_there_are_plugin_packages_to_check():
    assert PLUGINS, "no packages under plugins/"


@pytest.mark.parametrize("package", PLUGINS, ids=lambda p: p.name)
def test_plugin_package_shape(package):
    pyproject = package / "pyproject.toml"
    assert pyproject.is_file(), f"{package.name}: no pyproject.toml"
    project = tomllib.loads(pyproject.read_text())["project"]
    dist = project["name"]
    match = DIST.match(dist)
    assert match, f"{package.name}: distribution {dist!r} is not herd-<kind>-<name>"
    assert dist == package.name, f"directory {package.name} holds distribution {dist!r}"
    kind, name = match["kind"], match["name"]
    module = f"herd_{kind}_{name.replace('-', '_')}" if name else f"herd_{kind}"
    if tomllib.loads(pyproject.read_text()).get("tool", {}).get("herd", {}).get("library"):
        # a library that plugins share (``[tool.herd] library = true``): no entry point, never
        # loaded on its own, but documented and tested like a plugin
        assert not project.get("entry-points", {}).get(ENTRY_POINT_GROUP), (
            f"{dist}: a library must not declare plugins")
        assert (package / module / "__init__.py").is_file(), f"{dist}: no package {module}/"
        assert (package / "README.md").is_file(), f"{dist}: no README.md"
        assert list((package / "tests").glob("test_*.py")), f"{dist}: tests/ has no test_*.py"
        return
    if name is None:  # a feature of its own, one word (herd-analytics): entry and module too
        entry, module = kind, f"herd_{kind}"
    else:
        assert kind in KINDS, f"{dist}: kind {kind!r} is not one of {sorted(KINDS)}"
        entry = f"{kind}-{name}"
    entries = project.get("entry-points", {}).get(ENTRY_POINT_GROUP, {})
    assert entry in entries, (
        f"{dist}: no entry point {entry!r} in group {ENTRY_POINT_GROUP!r}: {entries}"
    )
    target = entries[entry].split(":")[0].strip()
    assert target == module or target.startswith(f"{module}."), (
        f"{dist}: entry point {entry} -> {entries[entry]!r}, expected module {module}"
    )
    assert (package / module / "__init__.py").is_file(), f"{dist}: no package {module}/"

    assert (package / "README.md").is_file(), f"{dist}: no README.md"
    tests = package / "tests"
    assert tests.is_dir(), f"{dist}: no tests/ folder"
    assert list(tests.glob("test_*.py")), f"{dist}: tests/ has no test_*.py"
    assert not (tests / "__init__.py").exists(), f"{dist}: tests/__init__.py must not exist"


def test_test_file_names_are_unique_across_the_repository():
    folders = [
        ROOT / "tests",
        *(p / "tests" for p in PLUGINS),
        *(ROOT / "contrib").glob("*/tests"),
        ROOT / "plugin_template" / "tests",
    ]
    names = Counter(
        f.name for folder in folders if folder.is_dir() for f in folder.glob("test_*.py")
    )
    assert not [n for n, count in names.items() if count > 1]


# --- settings ---------------------------------------------------------------------------------


def test_every_setting_is_in_the_configuration_reference():
    if not CONFIG_DOC.exists():
        pytest.skip("docs/configuration.md not written yet")
    text = CONFIG_DOC.read_text()
    host = PluginHost()
    settings = [*ROUTER_SETTINGS, *NODE_SETTINGS, *host.settings()]
    # a word boundary, so FLEET_PORT is not "found" inside FLEET_PORT_RANGE
    missing = [s.env for s in settings if not re.search(rf"\b{re.escape(s.env)}\b", text)]
    assert not missing, f"docs/configuration.md does not mention: {missing}"


def test_every_runtime_setting_is_in_the_runtime_settings_page():
    host = PluginHost()
    settings = [*ROUTER_SETTINGS, *NODE_SETTINGS, *host.settings()]
    rows = set(re.findall(r"^\| `[a-z0-9_]+` \| `(FLEET_[A-Z0-9_]+)` \|",
                          (ROOT / "docs" / "settings.md").read_text(), re.MULTILINE))
    runtime = {s.env for s in settings if s.runtime}
    assert runtime, "no runtime settings to check"
    assert rows == runtime, ("docs/settings.md's table and the runtime settings differ: "
                             f"missing {sorted(runtime - rows)}, "
                             f"not runtime {sorted(rows - runtime)}")
    assert not [s.env for s in settings if s.runtime and s.secret], "a secret cannot be runtime"


def test_every_setting_the_docs_name_exists():
    host = PluginHost()
    known = {s.env for s in (*ROUTER_SETTINGS, *NODE_SETTINGS, *host.settings())}
    for source in (ROOT / "plugin_template").rglob("*.py"):  # the example plugin's own settings
        known.update(re.findall(r'env="(FLEET_[A-Z0-9_]+)"', source.read_text()))
    named: dict[str, set[str]] = {}
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for name in re.findall(r"\bFLEET_[A-Z0-9_]*[A-Z0-9]\b", path.read_text()):
            named.setdefault(name, set()).add(path.name)
    unknown = {name: sorted(where) for name, where in named.items() if name not in known}
    assert not unknown, f"the docs name settings that do not exist: {unknown}"


# --- plugins reach the kernel only through its public modules -----------------------------------

PUBLIC_KERNEL = {"herd_kernel", "herd_kernel.api", "herd_kernel.hookspecs", "herd_kernel.models",
                 "herd_kernel.config", "herd_kernel.wire", "herd_kernel.pipeline",
                 "herd_kernel.testing", "herd_kernel.lazy", "herd_kernel.auth"}


def _runtime_imports(tree: ast.Module) -> list[tuple[int, str]]:
    """``herd_kernel`` modules a module imports when it runs (not under ``if TYPE_CHECKING:``)."""
    typing_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            typing_only.update(id(n) for child in node.body for n in ast.walk(child))
    found = []
    for node in ast.walk(tree):
        if id(node) in typing_only:
            continue
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] if node.module != "herd_kernel" else \
                [f"herd_kernel.{a.name}" if f"herd_kernel.{a.name}" in PUBLIC_KERNEL | {
                    "herd_kernel.app", "herd_kernel.scoring", "herd_kernel.fleet",
                    "herd_kernel.queues", "herd_kernel.store", "herd_kernel.cli"} else "herd_kernel"
                 for a in node.names]
            found += [(node.lineno, n) for n in names if n.startswith("herd_kernel")]
        elif isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names if a.name.startswith("herd_kernel")]
    return found


@pytest.mark.parametrize("package", PLUGINS, ids=lambda p: p.name)
def test_plugins_import_only_the_kernels_public_modules(package):
    private = []
    for source in sorted(package.glob("herd_*/**/*.py")):
        for line, module in _runtime_imports(ast.parse(source.read_text())):
            if module not in PUBLIC_KERNEL:
                private.append(f"{source.relative_to(ROOT)}:{line} imports {module}")
    assert not private, "plugins may import only " + ", ".join(sorted(PUBLIC_KERNEL)) + \
        ":\n" + "\n".join(private)


def test_the_readme_lists_every_plugin_package():
    readme = (ROOT / "README.md").read_text()
    missing = [d.name for d in sorted((ROOT / "plugins").iterdir())
               if (d / "pyproject.toml").exists() and f"`{d.name}`" not in readme]
    assert not missing, f"README.md's plugin table does not list: {missing}"
