from herd_backend_ollama.substitutes import pull_target, vram_substitute
from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, structure
from herd_kernel.testing import heartbeat_payload


def m(name, family, size=1, caps=()):
    return {"name": name, "size_bytes": size, "details": {"family": family}, "capabilities": list(caps)}


def nodes(*beats):
    fleet = Fleet()
    for b in beats:
        fleet.apply_heartbeat(structure(b, Heartbeat))
    return list(fleet.nodes.values())


def test_same_family_first_then_same_kind_closest_in_size():
    ns = nodes(heartbeat_payload("a", available=[m("qwen2.5:7b", "qwen2", 5)],
                                 loaded=[m("llama3.2:3b", "llama", 2), m("qwen2.5:3b", "qwen2", 2),
                                         m("nomic-embed-text", "nomic-bert", 1, ["embedding"])]))
    assert vram_substitute(ns, "qwen2.5:7b") == "qwen2.5:3b"
    ns = nodes(heartbeat_payload("a", available=[m("qwen2.5:7b", "qwen2", 5)],
                                 loaded=[m("llama3.2:3b", "llama", 2), m("llama3.1:8b", "llama", 5),
                                         m("nomic-embed-text", "nomic-bert", 5, ["embedding"])]))
    assert vram_substitute(ns, "qwen2.5:7b") == "llama3.1:8b"  # same kind, closest size


def test_no_substitute_when_loaded_unknown_or_only_other_kinds():
    ns = nodes(heartbeat_payload("a", loaded=[m("qwen2.5:7b", "qwen2")]))
    assert vram_substitute(ns, "qwen2.5:7b") is None  # loaded after all
    assert vram_substitute(ns, "unknown:1b") is None
    ns = nodes(heartbeat_payload("a", available=[m("all-minilm", "bert", 1, ["embedding"])],
                                 loaded=[m("llama3.2:3b", "llama")]))
    assert vram_substitute(ns, "all-minilm") is None  # a chat model cannot embed


def test_pull_target_prefers_free_disk_among_healthy_online_nodes():
    a, b = heartbeat_payload("a"), heartbeat_payload("b")
    a["disk"]["available_gb"], b["disk"]["available_gb"] = 50, 400
    assert pull_target(nodes(a, b)).node_id == "b"
    b["ollama"]["healthy"] = False
    assert pull_target(nodes(a, b)).node_id == "a"
    assert pull_target([]) is None
