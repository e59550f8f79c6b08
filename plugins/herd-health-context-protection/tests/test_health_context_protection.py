from collections import Counter

import herd_health_context_protection
import pytest

from herd_kernel.config import SettingError
from herd_kernel.testing import (
    health_snapshot,
    heartbeat_payload,
    make_config,
    make_host,
    tally_window,
)

NOW = 1_750_000_000.0
NEEDED, WOULD, UPGRADE = "context_reload_needed", "context_num_ctx_would_reload", "context_upgrade"


def check(env=None):
    host = make_host("health-context-protection")
    [registered] = host.health_checks(make_config(host, env))
    return registered


def reload_event(kind=NEEDED, requested=32768, loaded=8192, action="reload", ago=60.0):
    """An event as herd-shaper-context emits it, as the kernel records it."""
    return {"kind": kind, "timestamp": NOW - ago, "node_id": "n1", "model": "llama3.1:8b",
            "requested": requested, "loaded": loaded, "action": action}


def upgrade_event(ago=60.0):
    return {"kind": UPGRADE, "timestamp": NOW - ago, "model": "qwen2.5:7b",
            "served": "qwen2.5:14b", "num_ctx": 16384}


def snapshot(events=(), day_events=None):
    """The windows count what ``events`` holds (the hour's, and the day's unless given)."""
    recent = Counter(e["kind"] for e in events if e["timestamp"] >= NOW - 3600)
    day = day_events if day_events is not None else Counter(e["kind"] for e in events)
    return health_snapshot(heartbeat_payload("n1", loaded=["llama3.1:8b"]), now=NOW,
                           events=events, hour=tally_window(events=recent),
                           day=tally_window(86400, events=day))


def test_registers_through_its_entry_point():
    registered = check()
    assert isinstance(registered, herd_health_context_protection.ContextProtectionCheck)
    assert registered.id == "context_protection"


def test_no_context_events_no_finding():
    assert check().evaluate(snapshot()) == []
    assert check().evaluate(snapshot([{"kind": "prewarm", "timestamp": NOW, "node_id": "n1"}])) == []


def test_reloads_for_more_context_warn_with_the_cases():
    events = [reload_event(), reload_event(), reload_event(requested=16384)]
    [finding] = check().evaluate(snapshot(events))
    assert (finding.check_id, finding.severity) == ("context_protection", "warning")
    assert finding.title == "Clients' num_ctx reloads models"
    assert finding.detail.startswith("3 requests in the last hour sent an options.num_ctx other "
                                     "than the context the model was loaded with")
    assert "llama3.1:8b on n1 loaded with 8192, num_ctx 32768 (2)" in finding.detail
    assert "num_ctx 16384 (1)" in finding.detail
    assert "OLLAMA_CONTEXT_LENGTH" in finding.advice
    assert "FLEET_CONTEXT_PROTECTION" not in finding.advice
    assert finding.data["reloads"] == 3


def test_fewer_reloads_than_the_setting_are_information():
    [finding] = check().evaluate(snapshot([reload_event()]))
    assert finding.severity == "info"
    setting = {"FLEET_HEALTH_CONTEXT_PROTECTION_RELOADS_PER_HOUR": "1"}
    assert check(setting).evaluate(snapshot([reload_event()]))[0].severity == "warning"
    with pytest.raises(SettingError, match="FLEET_HEALTH_CONTEXT_PROTECTION_RELOADS_PER_HOUR"):
        check({"FLEET_HEALTH_CONTEXT_PROTECTION_RELOADS_PER_HOUR": "-1"})


def test_reloads_earlier_in_the_day_only_are_reported_as_stopped():
    events = [reload_event(ago=4 * 3600) for _ in range(5)]
    [finding] = check().evaluate(snapshot(events))
    assert (finding.severity, finding.title) == ("info", "Context reloads stopped")
    assert "5 requests earlier in the last 24 hours, none in the last hour" in finding.detail
    assert check().evaluate(snapshot(events[:2])) == []  # a trickle earlier: nothing


def test_what_the_router_spared_is_information():
    events = [reload_event(WOULD, requested=2048, action="strip") for _ in range(4)]
    events.append(upgrade_event())
    [finding] = check().evaluate(snapshot(events))
    assert (finding.severity, finding.title) == ("info", "The router spared context reloads")
    assert finding.detail.startswith("5 requests in the last hour")
    assert "qwen2.5:7b -> qwen2.5:14b for num_ctx 16384 (1)" in finding.detail
    assert "llama3.1:8b on n1: num_ctx 2048 sent as the loaded 8192 (4)" in finding.detail
    assert finding.data == {"spared": 5, "upgrades": 1}


def test_in_warn_mode_a_smaller_num_ctx_is_a_reload_and_the_fix_is_strip():
    events = [reload_event(WOULD, requested=2048, action="warn") for _ in range(3)]
    [finding] = check().evaluate(snapshot(events))
    assert finding.severity == "warning"
    assert "num_ctx 2048 (3)" in finding.detail
    assert "FLEET_CONTEXT_PROTECTION=strip" in finding.advice
    assert "OLLAMA_CONTEXT_LENGTH" not in finding.advice
    assert finding.data["protection_warn_only"] is True


def test_reloads_and_spared_requests_are_two_findings():
    events = [reload_event(), reload_event(WOULD, requested=2048, action="strip")]
    assert [f.title for f in check().evaluate(snapshot(events))] == [
        "Clients' num_ctx reloads models", "The router spared context reloads"]


def test_reads_the_events_the_real_context_shaper_emits():
    pytest.importorskip("herd_shaper_context")
    from herd_kernel.models import RouteRequest
    from herd_kernel.testing import ShaperHarness, decision_for, load_shapers

    recorded = []
    harness = ShaperHarness(load_shapers("shaper-context", {"FLEET_CONTEXT_PROTECTION": "strip"},
                                         events=recorded))
    decision = decision_for("llama3.1:8b", loaded=[{"name": "llama3.1:8b", "context_length": 8192}])
    for num_ctx in (32768, 2048, 2048):
        harness.outbound(RouteRequest(model="llama3.1:8b", api="ollama", path="/api/chat",
                                      stream=False, num_ctx=num_ctx),
                         b"", {"model": "llama3.1:8b", "options": {"num_ctx": num_ctx}}, decision)
    events = [{"kind": kind, "timestamp": NOW, **fields} for kind, fields in recorded]
    reloads, spared = check().evaluate(snapshot(events))
    assert "llama3.1:8b on n loaded with 8192, num_ctx 32768 (1)" in reloads.detail
    assert "llama3.1:8b on n: num_ctx 2048 sent as the loaded 8192 (2)" in spared.detail
