import pytest

from herd_kernel.models import Heartbeat, PayloadError, normalize_model, structure
from herd_kernel.testing import heartbeat_payload


def test_heartbeat_round_trip_from_agent_shape():
    hb = structure(heartbeat_payload("n1", loaded=["llama3.2:3b"], available=["qwen3:8b"]), Heartbeat)
    assert hb.node_id == "n1"
    assert [m.name for m in hb.endpoints[0].models_loaded] == ["llama3.2:3b"]
    assert {m.name for m in hb.endpoints[0].models_available} == {"llama3.2:3b", "qwen3:8b"}
    assert hb.memory.total_gb == 32.0


@pytest.mark.parametrize(
    "patch,field",
    [
        ({"cpu": {"cores_physical": "eight"}}, "cpu.cores_physical"),
        ({"memory": {"total_gb": -1}}, "memory.total_gb"),
        ({"memory": {"pressure": "on fire"}}, "memory.pressure"),
        ({"draining": "yes"}, "draining"),
        ({"endpoints": [{"kind": "ollama", "models_loaded": []}]}, "endpoints[0].url"),
        ({"endpoints": [{"kind": "ollama", "url": "http://x",
                         "models_loaded": [{"name": "m", "size_bytes": "big"}]}]},
         "endpoints[0].models_loaded[0].size_bytes"),
    ],
)
def test_bad_heartbeat_names_the_field(patch, field):
    body = {**heartbeat_payload("n1"), **patch}
    with pytest.raises(PayloadError) as info:
        structure(body, Heartbeat)
    assert info.value.field == field


@pytest.mark.parametrize("node_id", ["", "   ", "a\nb", "x" * 129])
def test_bad_node_ids_are_refused(node_id):
    with pytest.raises(PayloadError):
        structure({"node_id": node_id}, Heartbeat)


def test_missing_node_id_and_non_objects():
    with pytest.raises(PayloadError, match="node_id"):
        structure({}, Heartbeat)
    for value in (None, [], "x", 3):
        with pytest.raises(PayloadError, match="JSON object"):
            structure(value, Heartbeat)


def test_html_in_node_id_is_kept_as_text():
    hb = structure({"node_id": "<img src=x onerror=alert(1)>"}, Heartbeat)
    assert hb.node_id == "<img src=x onerror=alert(1)>"


def test_unknown_fields_are_tolerated_for_newer_agents():
    hb = structure({"node_id": "n", "future_field": {"a": 1}}, Heartbeat)
    assert hb.node_id == "n"


@pytest.mark.parametrize(
    "name,key",
    [("llama3.2", "llama3.2:latest"), ("Llama3.2:3B", "llama3.2:3b"),
     ("hf.co/org/repo", "hf.co/org/repo:latest"), ("localhost:5000/m", "localhost:5000/m:latest")],
)
def test_normalize_model(name, key):
    assert normalize_model(name) == key
