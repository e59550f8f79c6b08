"""Auto-pull: where a missing model goes."""

from herd_shaper_auto_pull import pull_target

from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, structure
from herd_kernel.testing import fleet_nodes, heartbeat_payload


def m(name, family, size=1, caps=(), params="", ctx=0):
    return {"name": name, "size_bytes": size, "context_length": ctx, "capabilities": list(caps),
            "details": {"family": family, "parameter_size": params}}


nodes = fleet_nodes


def test_pull_target_prefers_free_disk_among_healthy_online_nodes():
    a, b = heartbeat_payload("a"), heartbeat_payload("b")
    a["disk"]["available_gb"], b["disk"]["available_gb"] = 50, 400
    assert pull_target(nodes(a, b)).node_id == "b"
    b["endpoints"][0]["healthy"] = False
    assert pull_target(nodes(a, b)).node_id == "a"
    assert pull_target([]) is None


async def test_a_pull_that_cannot_reach_the_node_is_a_503_naming_it():
    from herd_kernel.api import Refusal
    from herd_kernel.models import RouteRequest
    from herd_kernel.testing import load_shapers

    fleet = Fleet()
    fleet.apply_heartbeat(structure(heartbeat_payload("a"), Heartbeat))
    events = []
    shapers = load_shapers("shaper-auto-pull", {"FLEET_AUTO_PULL": "1"}, events=events,
                           fleet=fleet)
    route = RouteRequest(model="qwen3:8b", api="ollama", path="/api/chat", stream=False)
    refusal = await shapers.before(route)
    assert isinstance(refusal, Refusal) and refusal.status == 503
    assert refusal.message.startswith("auto-pull of 'qwen3:8b' on a failed: OSError")
    assert refusal.headers == {"Retry-After": "5"}
    assert events == [("auto_pull", {"node_id": "a", "model": "qwen3:8b"})]


async def test_auto_pull_is_off_by_default_and_follows_the_live_setting():
    from herd_kernel.api import Refusal
    from herd_kernel.models import RouteRequest
    from herd_kernel.testing import load_shapers

    fleet = Fleet()
    fleet.apply_heartbeat(structure(heartbeat_payload("a"), Heartbeat))
    events = []
    shapers = load_shapers("shaper-auto-pull", events=events, fleet=fleet)
    route = RouteRequest(model="qwen3:8b", api="ollama", path="/api/chat", stream=False)
    served, announced = await shapers.before(route)
    assert served is route and not announced.headers and events == []
    # turned on while running (as POST /dashboard/api/settings does): the next request pulls
    shapers.ctx.config.set_runtime("FLEET_AUTO_PULL", True)
    refusal = await shapers.before(route)
    assert isinstance(refusal, Refusal) and refusal.status == 503
    assert [kind for kind, _ in events] == ["auto_pull"]
