import time

import herd_health_zombie_reaper
import pytest

from herd_kernel.config import SettingError
from herd_kernel.testing import (
    health_snapshot,
    heartbeat_payload,
    make_config,
    make_host,
    tally_window,
)

NOW = time.time()


def check(env=None):
    host = make_host("health-zombie-reaper")
    [registered] = host.health_checks(make_config(host, env or {}))
    return registered


def reaped(hour, day=None, events=()):
    return health_snapshot(
        heartbeat_payload("n1"), now=NOW, events=events,
        hour=tally_window(node_events={n: {"reaped": c} for n, c in hour.items()}),
        day=tally_window(86400, node_events={n: {"reaped": c} for n, c in (day or hour).items()}))


def event(model, ago, node="n1"):
    return {"kind": "reaped", "timestamp": NOW - ago, "node_id": node, "model": model,
            "silent_s": 600.0}


def test_registered_through_the_entry_point_with_its_settings():
    host = make_host("health-zombie-reaper")
    assert [p.name for p in host.loaded] == ["health-zombie-reaper"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_health_zombie_reaper.SETTINGS}
    assert check().id == "zombie_reaper"


def test_a_fleet_whose_reaper_ended_nothing_is_silent():
    assert check().evaluate(health_snapshot(heartbeat_payload("n1", loaded=["qwen3:8b"]))) == []
    other = health_snapshot(hour=tally_window(node_events={"n1": {"prewarm": 3}}))
    assert check().evaluate(other) == []


def test_one_reaped_request_warns_with_the_numbers_and_models():
    events = [event("llama3.1:70b", ago=7200), event("llama3.1:70b", ago=600),
              event("qwen3:8b", ago=60), event("qwen3:8b", ago=30, node="n2")]
    [finding] = check().evaluate(reaped({"n1": 2}, {"n1": 3}, events))
    assert (finding.check_id, finding.severity, finding.node_id) == ("zombie_reaper", "warning",
                                                                     "n1")
    assert "ended 2 requests on n1 in the last hour, each after 600 s" in finding.detail
    assert "warns from 1, critical from 5); 3 today" in finding.detail
    assert "Models: llama3.1:70b (1), qwen3:8b (1)." in finding.detail  # the one 2 h ago is not
    assert "FLEET_STALE_TIMEOUT" in finding.advice
    assert finding.data["models"] == {"llama3.1:70b": 1, "qwen3:8b": 1}


def test_many_reaped_requests_are_critical():
    [finding] = check({"FLEET_STALE_TIMEOUT": "120"}).evaluate(reaped({"n1": 5}))
    assert finding.severity == "critical" and "each after 120 s" in finding.detail


def test_reaped_earlier_today_only_is_info_resolved():
    [finding] = check().evaluate(reaped({}, {"n1": 1}))
    assert finding.severity == "info" and "(resolved)" in finding.title
    assert "ended 1 request on n1 today, 0 of them in the last hour" in finding.detail


def test_thresholds_come_from_the_settings():
    env = {"FLEET_HEALTH_ZOMBIE_REAPER_WARNING": "2", "FLEET_HEALTH_ZOMBIE_REAPER_CRITICAL": "3"}
    [below] = check(env).evaluate(reaped({"n1": 1}, {"n1": 4}))
    assert below.severity == "info" and "resolved" not in below.title  # one in the last hour
    assert check(env).evaluate(reaped({"n1": 2}))[0].severity == "warning"
    assert check(env).evaluate(reaped({"n1": 3}))[0].severity == "critical"


@pytest.mark.parametrize("env", [{"FLEET_HEALTH_ZOMBIE_REAPER_WARNING": "0"},
                                 {"FLEET_HEALTH_ZOMBIE_REAPER_WARNING": "6"}])
def test_thresholds_out_of_order_are_a_setting_error(env):
    with pytest.raises(SettingError, match="FLEET_HEALTH_ZOMBIE_REAPER_WARNING"):
        check(env)
