"""Acceptance test of ``plugin_template/``: what a third-party author copies must work once renamed.

The template is copied, renamed to ``herd-signal-pinned`` everywhere, installed with uv into an
isolated directory (offline, no dependencies) and then treated like any stranger's package: Herd
must find it through the ``herd`` entry point group, it must change a routing decision, and its
own tests must pass from the copy.
"""

from __future__ import annotations

import fnmatch
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from types import SimpleNamespace

import pytest

from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, RouteRequest, structure
from herd_kernel.plugins import PluginHost
from herd_kernel.scoring import Decision, Scorer
from herd_kernel.testing import heartbeat_payload, make_config

ROOT = Path(__file__).resolve().parents[1]
TEMPLATE = ROOT / "plugin_template"

# The four spellings of the template's name (the table in plugin_template/README.md), longest
# first so that a shorter one never rewrites part of a longer one.
RENAMES = (
    ("herd-signal-example", "herd-signal-pinned"),
    ("herd_signal_example", "herd_signal_pinned"),
    ("signal-example", "signal-pinned"),
    ("signal_example", "signal_pinned"),
)
NEW_MODULE = "herd_signal_pinned"
SETTINGS = ["FLEET_SCORE_PREFER_NODES", "FLEET_SCORE_PREFER_POINTS"]
JUNK = shutil.ignore_patterns(
    "__pycache__", "*.pyc", ".pytest_cache", "*.egg-info", "build", "dist", ".venv"
)


def renamed(text: str) -> str:
    for old, new in RENAMES:
        text = text.replace(old, new)
    return text


def copy_and_rename(source: Path, target: Path) -> Path:
    """What the README asks an author to do: copy, then rename in contents and in paths."""
    shutil.copytree(source, target, ignore=JUNK)
    # deepest paths first, so renaming a directory never invalidates a path still to visit
    for path in sorted(target.rglob("*"), key=lambda p: len(p.parts), reverse=True):
        if path.is_file():
            path.write_text(renamed(path.read_text(encoding="utf-8")), encoding="utf-8")
        if renamed(path.name) != path.name:
            path.rename(path.with_name(renamed(path.name)))
    return target


def clean_env(**extra: str) -> dict[str, str]:
    # the outer environment must not select plugins or change settings under the subprocess
    env = {
        k: v for k, v in os.environ.items() if not k.startswith("FLEET_") and k != "PYTEST_ADDOPTS"
    }
    return {**env, **extra}


@pytest.fixture(scope="module")
def pinned(tmp_path_factory: pytest.TempPathFactory) -> SimpleNamespace:
    """The template copied, renamed to herd-signal-pinned and installed into its own site dir."""
    uv = shutil.which("uv")
    if uv is None:
        pytest.skip(
            "uv is not on PATH; this test installs the copied template with `uv pip install`"
        )
    base = tmp_path_factory.mktemp("template")
    copy = copy_and_rename(TEMPLATE, base / "herd-signal-pinned")
    site = base / "site"
    out = subprocess.run(
        [
            uv,
            "pip",
            "install",
            "--offline",
            "--no-deps",
            "--python",
            sys.executable,
            "--target",
            str(site),
            str(copy),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env=clean_env(),
    )
    assert out.returncode == 0, f"uv could not build and install the copied template:\n{out.stderr}"
    return SimpleNamespace(copy=copy, site=site)


@pytest.fixture
def pinned_on_path(pinned: SimpleNamespace, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """The installed copy importable in this process, as if pip had put it in site-packages."""
    monkeypatch.syspath_prepend(str(pinned.site))
    yield pinned
    for name in [m for m in sys.modules if m == NEW_MODULE or m.startswith(f"{NEW_MODULE}.")]:
        del sys.modules[name]


# --- the template itself -----------------------------------------------------------------------


def test_the_template_is_a_standalone_package_not_a_workspace_member():
    project = tomllib.loads((TEMPLATE / "pyproject.toml").read_text())
    thermal = tomllib.loads((ROOT / "plugins/herd-signal-thermal/pyproject.toml").read_text())
    root = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert project["project"]["name"] == "herd-signal-example"
    # the kernel releases it was built for (issue 11: every plugin declares its range)
    assert project["project"]["dependencies"] == ["herd-kernel>=0.1,<0.2"]
    assert project["project"]["entry-points"]["herd"] == {"signal-example": "herd_signal_example"}
    # built the same way as the in-tree plugins ...
    assert project["build-system"] == thermal["build-system"]
    assert project["tool"]["uv"]["build-backend"] == thermal["tool"]["uv"]["build-backend"]
    # ... but with no workspace source, or it would not build outside this repository
    assert "sources" not in project["tool"]["uv"]
    members = root["tool"]["uv"]["workspace"]["members"]
    assert not any(fnmatch.fnmatchcase("plugin_template", m) for m in members)
    assert (TEMPLATE / "herd_signal_example" / "__init__.py").is_file()
    assert not (TEMPLATE / "tests" / "__init__.py").exists()


def test_the_readme_names_every_spelling_this_test_renames():
    readme = (TEMPLATE / "README.md").read_text()
    for old, _new in RENAMES:
        assert f"`{old}`" in readme, (
            f"plugin_template/README.md does not tell authors to rename {old}"
        )
    assert "uv pip install -e ." in readme and "pip install -e ." in readme
    assert "herd plugins" in readme


def test_renaming_leaves_no_trace_of_the_example_name(pinned):
    assert (pinned.copy / NEW_MODULE / "__init__.py").is_file()
    assert (pinned.copy / "tests" / "test_signal_pinned.py").is_file()
    left = [
        str(path.relative_to(pinned.copy))
        for path in pinned.copy.rglob("*")
        if any(
            old in path.name or (path.is_file() and old in path.read_text()) for old, _ in RENAMES
        )
    ]
    assert not left
    project = tomllib.loads((pinned.copy / "pyproject.toml").read_text())
    assert project["project"]["name"] == "herd-signal-pinned"
    assert project["project"]["entry-points"]["herd"] == {"signal-pinned": NEW_MODULE}


# --- the renamed copy, installed ---------------------------------------------------------------


def test_herd_plugins_lists_the_installed_copy(pinned):
    out = subprocess.run(
        [sys.executable, "-m", "herd_kernel.cli", "plugins", "--json"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(PYTHONPATH=str(pinned.site)),
    )
    assert out.returncode == 0, out.stderr
    report = json.loads(out.stdout)
    rows = {row["name"]: row for row in report["plugins"]}
    assert "signal-pinned" in rows, f"not listed; failed: {report['failed']}"
    row = rows["signal-pinned"]
    assert (row["dist"], row["version"], row["module"]) == (
        "herd-signal-pinned",
        "0.1.0",
        NEW_MODULE,
    )
    assert row["provides"] == {"settings": SETTINGS, "signals": ["preferred-nodes"]}
    # found the same way as the repository's own plugins: no private door
    assert "signal-thermal" in rows
    assert "signal-pinned" not in {f["name"] for f in report["failed"]}


def test_loading_the_copy_changes_which_node_is_chosen(pinned_on_path):
    fleet = Fleet()
    for body in (
        heartbeat_payload("hot", loaded=["m"]),
        heartbeat_payload("cold", available=["m"]),
    ):
        fleet.apply_heartbeat(structure(body, Heartbeat))
    env = {"FLEET_SCORE_PREFER_NODES": "cold", "FLEET_SCORE_PREFER_POINTS": "100"}
    request = RouteRequest(model="m", api="ollama", path="/api/chat", stream=True)

    def decide(plugins: list[str]) -> Decision:
        host = PluginHost(plugins)
        assert sorted(p.name for p in host.loaded) == sorted(plugins), host.failed
        config = make_config(host, env)
        decision = Scorer(fleet, host.signals(config), config).choose(request)
        assert isinstance(decision, Decision)
        return decision

    thermal_only = decide(["signal-thermal"])
    assert thermal_only.node.node_id == "hot"  # loaded (50) beats on disk (10)
    assert thermal_only.breakdown == {"thermal": 50}

    with_pinned = decide(["signal-thermal", "signal-pinned"])
    assert with_pinned.node.node_id == "cold"  # 10 + 100 beats 50 + 0
    assert with_pinned.breakdown == {"thermal": 10, "preferred-nodes": 100}
    assert with_pinned.score == 110
    # and it was the installed copy that ran, not a source tree on the path
    assert Path(sys.modules[NEW_MODULE].__file__).is_relative_to(pinned_on_path.site)


def test_the_copy_passes_its_own_tests(pinned):
    # -P keeps the copy's directory (the cwd) off sys.path, so the tests import the installed
    # package; cwd=<copy> means the copy's own pytest settings apply, not this repository's.
    out = subprocess.run(
        [
            sys.executable,
            "-P",
            "-m",
            "pytest",
            str(pinned.copy / "tests"),
            "-q",
            "-p",
            "no:cacheprovider",
        ],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=pinned.copy,
        env=clean_env(PYTHONPATH=str(pinned.site)),
    )
    assert out.returncode == 0, out.stdout + out.stderr
    summary = out.stdout.strip().splitlines()[-1]
    assert re.search(r"\b\d+ passed\b", summary), summary
    assert not re.search(r"skipped|error|failed|warning", summary), summary
