import herd_health_vram_fallback
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
GB = 1024**3


def check(env=None):
    host = make_host("health-vram-fallback")
    [registered] = host.health_checks(make_config(host, env))
    return registered


def fallback(asked="qwen2.5:7b", served="qwen2.5:14b", ago=60.0):
    """A routing event as the kernel records a substitution by herd-shaper-vram-fallback."""
    return {"kind": "vram_fallback", "timestamp": NOW - ago, "model": asked, "served": served,
            "num_ctx": None}


def snapshot(hour=0, day=None, events=(), *beats):
    beats = beats or (heartbeat_payload("n1", loaded=["qwen2.5:14b"]),)
    return health_snapshot(*beats, now=NOW, events=events,
                           hour=tally_window(events={"vram_fallback": hour} if hour else {}),
                           day=tally_window(86400, events={"vram_fallback": day if day is not None
                                                           else hour}))


def test_registers_through_its_entry_point():
    registered = check()
    assert isinstance(registered, herd_health_vram_fallback.VramFallbackCheck)
    assert registered.id == "vram_fallback"


def test_no_fallbacks_no_finding():
    assert check().evaluate(snapshot()) == []
    # other routing events are not its business
    other = tally_window(events={"context_upgrade": 40})
    assert check().evaluate(health_snapshot(heartbeat_payload("n1"), hour=other, day=other)) == []


def test_a_few_fallbacks_in_the_hour_are_information_naming_the_substitutions():
    events = [fallback(), fallback(), fallback("llama3.2:1b", "llama3.2:3b"),
              fallback(ago=7200)]  # before the hour: not among the hour's cases
    [finding] = check().evaluate(snapshot(3, 5, events))
    assert (finding.check_id, finding.severity) == ("vram_fallback", "info")
    assert finding.title == "Requests served by a larger model"
    assert finding.detail.startswith("3 requests in the last hour asked for a model loaded on "
                                     "no node")
    assert "Most often: qwen2.5:7b -> qwen2.5:14b (2); llama3.2:1b -> llama3.2:3b (1)." \
        in finding.detail
    assert finding.data["substitutions"][0] == {"requested": "qwen2.5:7b",
                                                "served": "qwen2.5:14b", "count": 2}


def test_many_fallbacks_in_the_hour_warn_at_the_configured_count():
    assert check().evaluate(snapshot(10))[0].severity == "warning"
    assert check().evaluate(snapshot(9))[0].severity == "info"
    setting = {"FLEET_HEALTH_VRAM_FALLBACK_WARN_PER_HOUR": "4"}
    assert check(setting).evaluate(snapshot(4))[0].severity == "warning"
    with pytest.raises(SettingError, match="FLEET_HEALTH_VRAM_FALLBACK_WARN_PER_HOUR"):
        check({"FLEET_HEALTH_VRAM_FALLBACK_WARN_PER_HOUR": "0"})


def test_a_burst_earlier_in_the_day_is_reported_as_stopped_and_a_trickle_not_at_all():
    [finding] = check().evaluate(snapshot(0, 25, [fallback(ago=5 * 3600)]))
    assert (finding.severity, finding.title) == ("info", "VRAM fallbacks stopped")
    assert "25 requests earlier in the last 24 hours, none in the last hour" in finding.detail
    assert "qwen2.5:7b -> qwen2.5:14b (1)" in finding.detail
    assert check().evaluate(snapshot(0, 3)) == []


def test_the_fix_names_the_node_that_can_hold_the_requested_model():
    room = heartbeat_payload("n2", memory_gb=64.0,
                             available=[{"name": "qwen2.5:7b", "size_bytes": int(4.7 * GB)}])
    [finding] = check().evaluate(snapshot(2, 2, [fallback()],
                                          heartbeat_payload("n1", loaded=["qwen2.5:14b"]), room))
    assert "qwen2.5:7b (4.7 GB) is on n2's disk with 60.0 GB free: load it there" in finding.advice


def test_the_fix_says_where_to_pull_or_that_there_is_no_room():
    held = heartbeat_payload("n1", memory_gb=8.0,
                             available=[{"name": "qwen2.5:7b", "size_bytes": int(4.7 * GB)}])
    roomy = heartbeat_payload("n2", memory_gb=16.0)
    [finding] = check().evaluate(snapshot(1, 1, [fallback()], held, roomy))
    assert "pull qwen2.5:7b (4.7 GB) onto n2, 12.0 GB free" in finding.advice
    [finding] = check().evaluate(snapshot(1, 1, [fallback()], held))
    assert "no online node has room for qwen2.5:7b (4.7 GB) now" in finding.advice
    # room without an Ollama to pull with is no room for it
    elsewhere = heartbeat_payload("n3", memory_gb=64.0, kind="openai")
    [finding] = check().evaluate(snapshot(1, 1, [fallback()], held, elsewhere))
    assert "no online node has room for qwen2.5:7b" in finding.advice


async def test_reads_the_events_the_kernel_records_for_the_real_shaper():
    pytest.importorskip("herd_shaper_vram_fallback")
    from herd_kernel.fleet import Fleet
    from herd_kernel.models import Heartbeat, RouteRequest, structure
    from herd_kernel.testing import load_shapers

    def model(name, params, size):
        return {"name": name, "size_bytes": size, "details": {"family": "qwen2",
                                                              "parameter_size": params}}

    beat = heartbeat_payload("n1", loaded=[model("qwen2.5:14b", "14.8B", 9 * GB)],
                             available=[model("qwen2.5:7b", "7.6B", 5 * GB)])
    fleet = Fleet()
    fleet.apply_heartbeat(structure(beat, Heartbeat))
    recorded = []
    shapers = load_shapers("shaper-vram-fallback", {"FLEET_VRAM_FALLBACK": "1"},
                           events=recorded, fleet=fleet)
    for _ in range(2):
        await shapers.before(RouteRequest(model="qwen2.5:7b", api="ollama", path="/api/chat",
                                          stream=False))
    events = [{"kind": kind, "timestamp": NOW, **fields} for kind, fields in recorded]
    [finding] = check().evaluate(snapshot(2, 2, events, beat))
    assert "Most often: qwen2.5:7b -> qwen2.5:14b (2)." in finding.detail
