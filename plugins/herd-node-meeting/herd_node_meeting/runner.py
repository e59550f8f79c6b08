"""The meeting sensor's command runner is the kernel's shared one (``herd_node.commands``);
re-exported here so the sensor's seam keeps its name."""

from herd_node.commands import NO_ANSWER, Result, Runner, run_command

__all__ = ["NO_ANSWER", "Result", "Runner", "run_command"]
