"""Herd's microkernel: plugin host, models, settings, fleet registry, scoring, proxying and CLI.

Everything that is policy (signals, backends, sensors, discovery, health checks, panels) lives in
plugin packages under ``plugins/``; this package holds only the mechanisms they plug into.
"""

__version__ = "0.1.0"

#: Version of the plugin contract in ``herd_kernel.hookspecs`` and ``herd_kernel.api``.
#: Bumped when a hook or a registered object's protocol changes incompatibly.
PLUGIN_API = 1

from herd_kernel.hookspecs import hookimpl  # noqa: E402 - the marker plugin authors import

__all__ = ["PLUGIN_API", "__version__", "hookimpl"]
