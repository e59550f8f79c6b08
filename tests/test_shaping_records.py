"""The kernel's side of request shaping, with no server: records applied to a copy of the body,
a change the body does not fit refused, the client's bytes kept when nothing changes."""

import json

import pytest

from herd_kernel.api import Change, ShapeContext, Shaping
from herd_kernel.fleet import Fleet
from herd_kernel.models import Heartbeat, RouteRequest, structure
from herd_kernel.scoring import Decision
from herd_kernel.shaping import Shapers, _apply
from herd_kernel.testing import heartbeat_payload, make_config, passthrough_engines


def change(field, old, new, header="X-Test"):
    return Change(field=field, old=old, new=new, header=header, reason=f"{field}={new}")


def test_changes_are_applied_to_a_copy():
    body = {"model": "m", "options": {"num_ctx": 2048, "seed": 1}}
    out = _apply(body, [change("options.num_ctx", 2048, 8192), change("max_tokens", None, 9)])
    assert out == {"model": "m", "options": {"num_ctx": 8192, "seed": 1}, "max_tokens": 9}
    assert body == {"model": "m", "options": {"num_ctx": 2048, "seed": 1}}


@pytest.mark.parametrize("bad", [
    change("options.num_ctx", 4096, 8192),  # the body holds 2048: a stale record
    change("model.name", None, "x"),  # through a string
    change("options.seed", None, 1, header=""),  # nothing announces it
    change("options.seed", None, 1, header="X-A\r\nSet-Cookie: a=b"),
])
def test_a_change_the_body_does_not_fit_is_refused(bad):
    with pytest.raises(ValueError):
        _apply({"model": "m", "options": {"num_ctx": 2048}}, [bad])


class Shaper:
    def __init__(self, name, result):
        self.name, self.order, self.result = name, 0, result

    def shape(self, route, body, decision, ctx):
        if isinstance(self.result, Exception):
            raise self.result
        return self.result


def prepare(*shapers, raw=b'{"model": "m",  "options": {"num_ctx": 2048}}'):
    ctx = ShapeContext(fleet=Fleet(), config=make_config(), event=lambda *a, **k: None,
                       endpoint_post=None)
    state = Fleet().apply_heartbeat(structure(heartbeat_payload("n", available=["m"]), Heartbeat))
    decision = Decision(node=state, model="m", model_key="m", score=0, breakdown={},
                        endpoint=state.endpoint("ollama"))
    route = RouteRequest(model="m", api="ollama", path="/api/chat", stream=False, num_ctx=2048)
    return Shapers(list(shapers), ctx).prepare(route, raw, json.loads(raw),
                                               passthrough_engines)(decision), raw


def test_nothing_to_change_sends_the_clients_bytes():
    out, raw = prepare(Shaper("idle", None), Shaper("empty", Shaping()))
    assert out.body is raw and not out.headers and out.summary is None


def test_a_raising_or_wrong_shaper_is_skipped_and_the_others_still_apply():
    good = Shaper("good", Shaping(changes=(change("options.num_ctx", 2048, 4096),)))
    out, _ = prepare(Shaper("raises", RuntimeError("boom")), Shaper("wrong", {"num_ctx": 1}),
                     Shaper("stale", Shaping(changes=(change("options.num_ctx", 1, 2),))), good)
    assert json.loads(out.body)["options"] == {"num_ctx": 4096}
    assert out.headers == {"X-Test": "options.num_ctx=4096"}
    assert out.summary() == {"good": "options.num_ctx=4096"}
