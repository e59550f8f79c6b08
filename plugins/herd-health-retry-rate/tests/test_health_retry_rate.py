import herd_health_retry_rate
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
    host = make_host("health-retry-rate")
    [registered] = host.health_checks(make_config(host, env or {}))
    return registered


def hour(by_node, total=None):
    return health_snapshot(heartbeat_payload("n1"), hour=tally_window(by_node=by_node, total=total))


def test_registered_through_the_entry_point_with_its_settings():
    host = make_host("health-retry-rate")
    assert [p.name for p in host.loaded] == ["health-retry-rate"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_health_retry_rate.SETTINGS}
    assert check().id == "high_retry_rate"


def test_an_idle_fleet_and_rare_retries_are_silent():
    assert check().evaluate(health_snapshot(heartbeat_payload("n1", loaded=["qwen3:8b"]))) == []
    assert check().evaluate(hour({"n1": {"requests": 100, "retried": 9, "retries": 9}})) == []
    assert check().evaluate(hour({"n1": {"requests": 19, "retried": 19, "retries": 30}})) == []


def test_a_node_with_many_retried_requests_warns_with_its_numbers():
    [finding] = check().evaluate(hour({"n1": {"requests": 50, "retried": 8, "retries": 11},
                                       "n2": {"requests": 50, "retried": 1, "retries": 1}}))
    assert (finding.check_id, finding.severity, finding.node_id) == ("high_retry_rate", "warning",
                                                                     "n1")
    assert "8 of 50 requests counted for n1 in the last hour (16%" in finding.detail
    assert "warns from 10% of at least 20 requests" in finding.detail
    assert "11 extra attempts" in finding.detail
    assert "attempts" in finding.advice
    assert finding.data == {"requests": 50, "retried": 8, "retries": 11, "rate": 0.16}


def test_retries_spread_thin_are_judged_fleet_wide():
    by_node = {f"n{i}": {"requests": 10, "retried": 2, "retries": 2} for i in range(3)}
    [finding] = check().evaluate(hour(by_node))
    assert finding.node_id is None
    assert "6 of 30 requests across the fleet in the last hour (20%" in finding.detail


def test_thresholds_come_from_the_settings():
    snap = hour({"n1": {"requests": 100, "retried": 9, "retries": 9}})
    assert len(check({"FLEET_HEALTH_RETRY_RATE_PCT": "9"}).evaluate(snap)) == 1
    assert check({"FLEET_HEALTH_RETRY_RATE_PCT": "9",
                  "FLEET_HEALTH_RETRY_RATE_MIN_REQUESTS": "101"}).evaluate(snap) == []


def test_a_share_outside_0_to_100_is_a_setting_error():
    with pytest.raises(SettingError, match="FLEET_HEALTH_RETRY_RATE_PCT"):
        check({"FLEET_HEALTH_RETRY_RATE_PCT": "0"})
