import json
import subprocess
import sys
from pathlib import Path

from herd_kernel.cli import settings_markdown
from herd_kernel.plugins import PluginHost
from herd_kernel.testing import make_config

ROOT = Path(__file__).resolve().parents[1]


def run(*args, env=None):
    return subprocess.run([sys.executable, "-m", "herd_kernel.cli", *args], capture_output=True,
                          text=True, timeout=60, env=env)


def test_herd_plugins_lists_the_kernels_plugins():
    out = run("plugins", "--json")
    assert out.returncode == 0, out.stderr
    rows = {r["name"]: r for r in json.loads(out.stdout)["plugins"]}
    assert rows["backend-ollama"]["provides"]["backends"] == ["ollama"]
    assert rows["signal-thermal"]["provides"]["signals"] == ["thermal"]
    assert rows["node-system"]["provides"]["sensors"] == ["system"]
    assert rows["signal-thermal"]["dist"] == "herd-signal-thermal"


def test_herd_plugins_text_and_selection():
    out = run("plugins", "--plugins", "signal-*")
    assert out.returncode == 0
    assert "signal-thermal" in out.stdout and "backend-ollama" not in out.stdout
    assert "signals: thermal" in out.stdout


def test_bad_setting_is_a_clear_error_not_a_traceback(tmp_path):
    env = {"PATH": "", "FLEET_PORT": "eleven", "FLEET_DATA_DIR": str(tmp_path)}
    out = run("--port", "x", env=env)
    assert out.returncode == 2 and "Traceback" not in out.stderr
    out = run(env=env)
    assert out.returncode == 2
    assert "FLEET_PORT='eleven'" in out.stderr and "Traceback" not in out.stderr


def test_configuration_doc_lists_every_setting():
    host = PluginHost()
    expected = settings_markdown(make_config(host))
    actual = (ROOT / "docs" / "configuration.md").read_text()
    assert actual == expected, "regenerate with: uv run herd settings --markdown > docs/configuration.md"
