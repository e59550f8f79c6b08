"""What the Ollama engine sends once the node is known: the client's bytes, minus router-only
fields, with the model named as it was routed (shapers' changes arrive already applied)."""

import json

from herd_backend_ollama.engine import OllamaEngine

from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, RouteRequest, structure
from herd_kernel.scoring import Decision
from herd_kernel.testing import heartbeat_payload


def decision(model="llama3.2:3b"):
    state = Fleet().apply_heartbeat(structure(heartbeat_payload("n", available=[model]),
                                              Heartbeat))
    return Decision(node=state, model=model, model_key=model, score=0, breakdown={},
                    endpoint=state.endpoint("ollama"))


def route(model="llama3.2:3b"):
    return RouteRequest(model=model, api="ollama", path="/api/chat", stream=False)


def test_untouched_requests_forward_the_clients_bytes():
    raw = b'{"model": "llama3.2:3b",   "messages": []}'
    out = OllamaEngine().outbound(route(), raw, json.loads(raw), decision())
    assert out.body is raw and not out.headers


def test_router_only_fields_are_stripped():
    body = {"model": "llama3.2:3b", "fallback_models": ["x"], "messages": []}
    out = OllamaEngine().outbound(route(), b"", body, decision())
    assert json.loads(out.body) == {"model": "llama3.2:3b", "messages": []}


def test_a_fallback_is_sent_under_its_own_name():
    body = {"model": "gone:1b", "fallback_models": ["llama3.2:3b"], "messages": []}
    out = OllamaEngine().outbound(route("gone:1b"), b"", body, decision())
    assert json.loads(out.body) == {"model": "llama3.2:3b", "messages": []}
