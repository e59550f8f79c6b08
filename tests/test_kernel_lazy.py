"""lazy(): heavy plugin dependencies load on first use, not when the plugin is imported."""

from __future__ import annotations

import subprocess
import sys

from herd_kernel.lazy import lazy


def test_a_lazy_module_imports_on_first_attribute_access():
    code = (
        "import sys\n"
        "from herd_kernel.lazy import lazy\n"
        "wave = lazy('wave')\n"
        "assert 'wave' not in sys.modules, 'imported too early'\n"
        "assert wave.WAVE_FORMAT_PCM == 1\n"
        "assert 'wave' in sys.modules\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)  # a fresh interpreter: no wave yet


def test_a_lazy_name_is_called_and_read_through():
    fraction = lazy("fractions", "Fraction")
    assert fraction(1, 3) + fraction(1, 6) == fraction(1, 2)
    assert fraction.from_float(0.5) == fraction(1, 2)
    assert "not loaded yet" in repr(lazy("this_module_does_not_exist"))


def test_plugins_that_only_node_agents_need_do_not_load_their_libraries_in_the_router():
    code = (
        "import sys\n"
        "from herd_kernel.config import ROUTER_SETTINGS, resolve\n"
        "from herd_node.settings import NODE_SETTINGS\n"
        "from herd_kernel.plugins import PluginHost\n"
        "host = PluginHost()\n"
        "config = resolve([*ROUTER_SETTINGS, *NODE_SETTINGS, *host.settings()], {}, {})\n"
        "host.signals(config), host.backends(config), host.discoveries(config)\n"
        "print(sorted(m for m in ('psutil', 'zeroconf', 'herd_sim.node') if m in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    assert out.stdout.strip() == "[]"
