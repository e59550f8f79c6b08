"""VRAM fallback: a larger loaded model of the same line, and only that."""

from herd_shaper_vram_fallback import vram_substitute

from herd_kernel.testing import fleet_nodes, heartbeat_payload


def m(name, family, size=1, caps=(), params="", ctx=0):
    return {"name": name, "size_bytes": size, "context_length": ctx, "capabilities": list(caps),
            "details": {"family": family, "parameter_size": params}}


nodes = fleet_nodes


QWEN7 = m("qwen2.5:7b", "qwen2", 5, ["completion"], "7.6B")


def test_only_a_strictly_larger_model_of_the_same_line():
    ns = nodes(heartbeat_payload("a", available=[QWEN7], loaded=[
        m("deepseek-r1:7b", "qwen2", 5, ["completion", "thinking"], "7.6B"),  # same family
        m("qwen2.5-coder:14b", "qwen2", 9, ["completion"], "14.8B"),  # another line
        m("qwen2.5:3b", "qwen2", 2, ["completion"], "3.1B"),  # smaller
        m("llama3.1:8b", "llama", 5, ["completion"], "8.0B"),  # same kind
    ]))
    assert vram_substitute(ns, "qwen2.5:7b") is None
    ns = nodes(heartbeat_payload("a", available=[QWEN7], loaded=[
        m("qwen2.5:72b", "qwen2", 47, ["completion"], "72.7B")]),
        heartbeat_payload("b", loaded=[m("qwen2.5:14b", "qwen2", 9, ["completion"], "14.8B")]))
    assert vram_substitute(ns, "qwen2.5:7b") == "qwen2.5:14b"  # the smallest larger one


def test_size_on_disk_when_parameter_size_is_unknown():
    ns = nodes(heartbeat_payload("a", available=[m("mine:small", "x", 5)],
                                 loaded=[m("mine:big", "x", 9)]))
    assert vram_substitute(ns, "mine:small") == "mine:big"
    assert vram_substitute(nodes(heartbeat_payload("a", available=[m("mine:small", "x", 9)],
                                                   loaded=[m("mine:big", "x", 9)])),
                           "mine:small") is None


def test_never_a_thinking_model_for_a_non_thinking_one():
    ns = nodes(heartbeat_payload("a", available=[m("mix:8b", "x", 5, ["completion"], "8B")],
                                 loaded=[m("mix:32b", "x", 20, ["completion", "thinking"], "32B")]))
    assert vram_substitute(ns, "mix:8b") is None
    ns = nodes(heartbeat_payload("a", available=[m("qwen3:8b", "qwen3", 5, [], "8.2B")],
                                 loaded=[m("qwen3:32b", "qwen3", 20, [], "32.8B")]))
    assert vram_substitute(ns, "qwen3:8b") == "qwen3:32b"  # both think (by name)


def test_never_when_the_requested_model_is_hot_or_unknown():
    ns = nodes(heartbeat_payload("a", loaded=[QWEN7]),
               heartbeat_payload("b", loaded=[m("qwen2.5:14b", "qwen2", 9, [], "14.8B")]))
    assert vram_substitute(ns, "qwen2.5:7b") is None  # loaded on a: never swapped
    assert vram_substitute(ns, "qwen2.5:1b") is None  # on no node: nothing to compare with


def test_an_embedding_model_is_never_served_by_a_chat_model():
    ns = nodes(heartbeat_payload("a", available=[m("all-minilm", "bert", 1, ["embedding"])],
                                 loaded=[m("llama3.2:3b", "llama", 2)]))
    assert vram_substitute(ns, "all-minilm") is None


async def test_off_by_default_and_on_at_once_when_the_live_setting_changes():
    from herd_kernel.fleet import Fleet
    from herd_kernel.models import Heartbeat, RouteRequest, structure
    from herd_kernel.testing import load_shapers

    fleet = Fleet()
    fleet.apply_heartbeat(structure(heartbeat_payload("a", available=[QWEN7], loaded=[
        m("qwen2.5:14b", "qwen2", 9, ["completion"], "14.8B")]), Heartbeat))
    shapers = load_shapers("shaper-vram-fallback", fleet=fleet)
    route = RouteRequest(model="qwen2.5:7b", api="ollama", path="/api/chat", stream=False)
    served, _ = await shapers.before(route)
    assert served.model == "qwen2.5:7b"
    shapers.ctx.config.set_runtime("FLEET_VRAM_FALLBACK", True)
    served, announced = await shapers.before(route)
    assert served.model == "qwen2.5:14b"
    assert announced.headers == {"X-Fleet-Vram-Fallback": "qwen2.5:7b -> qwen2.5:14b"}
