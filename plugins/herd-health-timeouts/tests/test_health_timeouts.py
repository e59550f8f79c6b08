import herd_health_timeouts
import pytest

from herd_kernel.config import SettingError
from herd_kernel.testing import (
    health_snapshot,
    heartbeat_payload,
    make_config,
    make_host,
    tally_window,
)


def check(env=None):
    host = make_host("health-timeouts")
    [registered] = host.health_checks(make_config(host, env or {}))
    return registered


def windows(by_node=None, by_model=None, **beats):
    return health_snapshot(*(heartbeat_payload(n) for n in beats or ("n1",)),
                           hour=tally_window(by_node=by_node, by_model=by_model),
                           day=tally_window(86400, by_node=by_node, by_model=by_model))


def test_registered_through_the_entry_point_with_its_settings():
    host = make_host("health-timeouts")
    assert [p.name for p in host.loaded] == ["health-timeouts"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_health_timeouts.SETTINGS}
    assert check().id == "request_timeouts"


def test_an_idle_fleet_and_rare_timeouts_are_silent():
    assert check().evaluate(health_snapshot(heartbeat_payload("n1", loaded=["qwen3:8b"]))) == []
    rare = {"n1": {"requests": 200, "timeouts": 4}}  # above the count, 2% of the requests
    few = {"n1": {"requests": 4, "timeouts": 2}}  # half of them, but two are not a pattern
    assert check().evaluate(windows(rare, {"qwen3:8b": rare["n1"]})) == []
    assert check().evaluate(windows(few, {"qwen3:8b": few["n1"]})) == []


def test_a_node_that_times_out_warns_with_its_numbers():
    finding, = check().evaluate(windows({"n1": {"requests": 40, "timeouts": 6},
                                         "n2": {"requests": 40}}))
    assert (finding.check_id, finding.severity, finding.node_id) == ("request_timeouts", "warning",
                                                                     "n1")
    assert "6 of 40 requests (15%) in the last hour" in finding.detail
    assert "thresholds: 3 timeouts and 5%" in finding.detail and "6 today" in finding.detail
    assert "FLEET_READ_TIMEOUT (now 600 s)" in finding.advice
    assert finding.data["timeouts"] == 6


def test_a_model_that_times_out_warns_and_says_how_many_waited_for_a_load():
    model = {"llama3.1:70b": {"requests": 10, "timeouts": 4, "cold_loads": 3}}
    finding, = check({"FLEET_READ_TIMEOUT": "900"}).evaluate(windows(by_model=model))
    assert finding.node_id is None and finding.data["model"] == "llama3.1:70b"
    assert "For llama3.1:70b, 4 of 10 requests (40%)" in finding.detail
    assert "3 of its answered requests waited for it to load" in finding.detail
    assert "Keep llama3.1:70b loaded" in finding.advice and "(now 900 s)" in finding.advice


def test_both_a_node_and_a_model_can_speak():
    tally = {"requests": 20, "timeouts": 5}
    findings = check().evaluate(windows({"n1": tally}, {"qwen3:8b": tally}))
    assert [(f.node_id, f.data.get("model")) for f in findings] == [("n1", None),
                                                                    (None, "qwen3:8b")]


def test_a_node_not_online_says_so():
    snap = health_snapshot(heartbeat_payload("n1"), status={"n1": "degraded"},
                           hour=tally_window(by_node={"n1": {"requests": 10, "timeouts": 3}}))
    assert "n1 is degraded now" in check().evaluate(snap)[0].detail


def test_thresholds_come_from_the_settings():
    rare = {"n1": {"requests": 200, "timeouts": 4}}
    assert check().evaluate(windows(rare)) == []
    assert len(check({"FLEET_HEALTH_TIMEOUTS_PCT": "2"}).evaluate(windows(rare))) == 1
    assert check({"FLEET_HEALTH_TIMEOUTS_PCT": "2",
                  "FLEET_HEALTH_TIMEOUTS_MIN_COUNT": "5"}).evaluate(windows(rare)) == []


@pytest.mark.parametrize("pct", ["0", "101", "-5"])
def test_a_share_outside_0_to_100_is_a_setting_error(pct):
    with pytest.raises(SettingError, match="FLEET_HEALTH_TIMEOUTS_PCT"):
        check({"FLEET_HEALTH_TIMEOUTS_PCT": pct})
