"""Auto-pull: where a missing model goes."""

from herd_shaper_auto_pull import pull_target

from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, structure
from herd_kernel.testing import heartbeat_payload


def m(name, family, size=1, caps=(), params="", ctx=0):
    return {"name": name, "size_bytes": size, "context_length": ctx, "capabilities": list(caps),
            "details": {"family": family, "parameter_size": params}}


def nodes(*beats):
    fleet = Fleet()
    for b in beats:
        fleet.apply_heartbeat(structure(b, Heartbeat))
    return list(fleet.nodes.values())


def test_pull_target_prefers_free_disk_among_healthy_online_nodes():
    a, b = heartbeat_payload("a"), heartbeat_payload("b")
    a["disk"]["available_gb"], b["disk"]["available_gb"] = 50, 400
    assert pull_target(nodes(a, b)).node_id == "b"
    b["endpoints"][0]["healthy"] = False
    assert pull_target(nodes(a, b)).node_id == "a"
    assert pull_target([]) is None
