"""The node agent is a package of its own (``herd_node``) and ``herd --demo`` comes from a plugin:
the kernel loads neither the agent nor the simulator when it is imported, and the agent never
loads the router's command line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys

import pytest

from herd_kernel.cli import _demo_fleet
from herd_kernel.config import ROUTER_SETTINGS, resolve
from herd_kernel.hookspecs import hookimpl
from herd_kernel.plugins import PluginHost, PluginInfo
from herd_kernel.testing import make_config, make_host
from herd_node.settings import NODE_SETTINGS


def loaded_after(imports: str) -> list[str]:
    """Top-level packages of interest in sys.modules after ``imports``, in a fresh interpreter."""
    code = (
        f"import json, sys\n{imports}\n"
        "print(json.dumps(sorted({m.split('.')[0] for m in sys.modules}"
        " & {'herd_node', 'herd_sim'})))\n"
        "print(json.dumps(sorted(m for m in sys.modules if m == 'herd_kernel.cli')))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True,
                         timeout=60)
    packages, cli = out.stdout.splitlines()
    return json.loads(packages) + json.loads(cli)


def test_importing_the_kernel_loads_neither_the_agent_nor_the_simulator():
    assert loaded_after("import herd_kernel.app, herd_kernel.cli, herd_kernel.plugins") == [
        "herd_kernel.cli"]


def test_the_node_agent_does_not_load_the_routers_command_line():
    assert loaded_after("import herd_node.cli, herd_node.agent, herd_node.proxy") == ["herd_node"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_demo_without_a_plugin_that_offers_one_is_a_clear_error(tmp_path):
    # herd-sim is installed, but the selection leaves its demo-sim plugin out
    out = subprocess.run(
        [sys.executable, "-m", "herd_kernel.cli", "--demo", "--plugins", "backend-ollama",
         "--no-local-node", "--port", str(free_port())],
        check=False, capture_output=True, text=True, timeout=60,
        env={"FLEET_DATA_DIR": str(tmp_path), "PATH": ""},
    )
    assert out.returncode == 2
    assert "--demo needs a plugin that offers a simulated fleet" in out.stderr
    assert "herd-sim" in out.stderr and "demo-sim" in out.stderr
    assert "Traceback" not in out.stderr
    assert "routing on" not in out.stderr  # it says so before it listens


class _Fleet:
    def __init__(self, name: str) -> None:
        self.name = name

    async def start(self, router_url, nodes, start_agent):  # pragma: no cover - never started
        raise AssertionError("not started in this test")


class _Offers:
    def __init__(self, *names: str) -> None:
        self.names = names

    @hookimpl
    def herd_demo_fleet(self, config):
        return [_Fleet(name) for name in self.names]


def test_the_one_demo_on_offer_is_chosen_and_two_are_an_error_naming_both():
    def info(name: str) -> PluginInfo:
        return PluginInfo(name=f"demo-{name}", dist=f"herd-demo-{name}", version="0", module="t")

    host = PluginHost(load_entry_points=False)
    host.register(_Offers("alpha"), info("alpha"))
    assert _demo_fleet(host, make_config(host)).name == "alpha"
    host.register(_Offers("beta"), info("beta"))
    with pytest.raises(RuntimeError, match=r"several plugins .*\(alpha, beta\).*--plugins"):
        _demo_fleet(host, make_config(host))


def test_herd_sim_offers_the_demo_and_describes_it():
    host = make_host("demo-sim")
    [fleet] = host.demo_fleets(make_config(host))
    assert fleet.name == "herd-sim"
    [row] = host.describe(make_config(host))
    assert row["provides"]["demo"] == ["herd-sim"]


def test_node_settings_fall_back_to_the_shared_variables(tmp_path):
    specs = (*ROUTER_SETTINGS, *NODE_SETTINGS)
    shared = {"FLEET_SECRET": "s3cret", "FLEET_DATA_DIR": str(tmp_path / "shared")}
    config = resolve(specs, shared)
    assert config["FLEET_NODE_SECRET"] == "s3cret"
    assert config["FLEET_NODE_DATA_DIR"] == tmp_path / "shared"
    own = resolve(specs, {**shared, "FLEET_NODE_SECRET": "", "FLEET_NODE_DATA_DIR": str(tmp_path)})
    assert own["FLEET_NODE_SECRET"] == "" and own["FLEET_NODE_DATA_DIR"] == tmp_path
    assert resolve(specs, shared, {"FLEET_NODE_SECRET": "flag"})["FLEET_NODE_SECRET"] == "flag"
