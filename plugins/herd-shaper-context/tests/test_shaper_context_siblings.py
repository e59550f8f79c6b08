"""The one rule for another model: lines, sizes, and the context a substitute needs."""

import pytest
from herd_shaper_context.siblings import larger_hot_sibling, model_line, parameter_count

from herd_kernel.testing import fleet_nodes, heartbeat_payload


def m(name, family, size=1, caps=(), params="", ctx=0):
    return {"name": name, "size_bytes": size, "context_length": ctx, "capabilities": list(caps),
            "details": {"family": family, "parameter_size": params}}


nodes = fleet_nodes


def test_line_and_parameter_size():
    assert model_line("qwen2.5:7b") == "qwen2.5" and model_line("Qwen2.5") == "qwen2.5"
    assert model_line("qwen2.5-coder:14b") == "qwen2.5-coder"
    assert model_line("localhost:5000/team/m:q4") == "localhost:5000/team/m"
    assert parameter_count({"parameter_size": "7.6B"}) == pytest.approx(7.6e9)
    assert parameter_count({"parameter_size": "137M"}) == pytest.approx(1.37e8)
    assert parameter_count({"parameter_size": ""}) is None
    assert parameter_count({}) is None


QWEN7 = m("qwen2.5:7b", "qwen2", 5, ["completion"], "7.6B")


def test_a_context_upgrade_needs_the_context():
    ns = nodes(heartbeat_payload("a", available=[QWEN7], loaded=[
        m("qwen2.5:14b", "qwen2", 9, [], "14.8B", ctx=8192)]))
    assert larger_hot_sibling(ns, "qwen2.5:7b", min_context=16384) is None
    assert larger_hot_sibling(ns, "qwen2.5:7b", min_context=8192) == "qwen2.5:14b"
