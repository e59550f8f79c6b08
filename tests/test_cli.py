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


def test_herd_settings_shows_changes_kept_in_the_data_dir(tmp_path):
    # a toggle changed on the dashboard (kept in settings.json) is what a router started now
    # runs with, so `herd settings` shows it, and says where it comes from
    env = {"PATH": "", "FLEET_DATA_DIR": str(tmp_path), "FLEET_AUTO_PULL": "true"}
    before = run("settings", env=env)
    assert before.returncode == 0, before.stderr
    assert [line.split() for line in before.stdout.splitlines()
            if line.startswith("FLEET_AUTO_PULL ")] == [["FLEET_AUTO_PULL", "True"]]
    (tmp_path / "settings.json").write_text(
        json.dumps({"version": 1, "settings": {"FLEET_AUTO_PULL": False}}))
    after = run("settings", env=env)
    assert after.returncode == 0, after.stderr
    [line] = [line for line in after.stdout.splitlines() if line.startswith("FLEET_AUTO_PULL ")]
    assert line.split()[1] == "False" and "settings.json" in line and "configured: True" in line
    assert after.stdout.count("settings.json") == 1  # nothing else changed, nothing logged
