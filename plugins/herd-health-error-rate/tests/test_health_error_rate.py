import herd_health_error_rate
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
    host = make_host("health-error-rate")
    [registered] = host.health_checks(make_config(host, env or {}))
    return registered


def snap(hour=None, day=None, **beats):
    nodes = [heartbeat_payload(n, **kw) for n, kw in (beats or {"n1": {}}).items()]
    return health_snapshot(*nodes, hour=tally_window(3600, by_node=hour),
                           day=tally_window(86400, by_node=day or hour))


def test_registered_through_the_entry_point_with_its_settings():
    host = make_host("health-error-rate")
    assert [p.name for p in host.loaded] == ["health-error-rate"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_health_error_rate.SETTINGS}
    assert (check().id, check().title) == ("high_error_rate", "High error rate")


def test_an_idle_fleet_and_a_healthy_busy_one_are_silent():
    assert check().evaluate(health_snapshot(heartbeat_payload("n1", loaded=["llama3.2:3b"]))) == []
    busy = {"n1": {"requests": 400, "completed": 395, "failed": 5},
            "n2": {"requests": 300, "completed": 300}}
    assert check().evaluate(snap(busy)) == []


def test_a_failing_node_warns_with_its_numbers():
    hour = {"n1": {"requests": 40, "completed": 34, "failed": 6}, "n2": {"requests": 50}}
    [finding] = check().evaluate(snap(hour, day={"n1": {"requests": 90, "failed": 7}}))
    assert (finding.check_id, finding.severity, finding.node_id) == ("high_error_rate", "warning",
                                                                     "n1")
    assert "6 of 40 requests (15%) in the last hour" in finding.detail
    assert "7 of 90 today" in finding.detail
    assert "warning at 10%, critical at 30%" in finding.detail
    assert "n1" in finding.advice and "/fleet/traces" in finding.advice
    assert finding.data["rate"] == 0.15


def test_critical_above_the_higher_share_and_the_node_state_is_said():
    hour = {"n1": {"requests": 20, "failed": 6}}
    memory = {"total_gb": 16.0, "used_gb": 15.5, "available_gb": 0.5, "pressure": "critical"}
    [finding] = check().evaluate(snap(hour, n1={"memory": memory}))
    assert finding.severity == "critical"
    assert "6 of 20 requests (30%)" in finding.detail
    assert "memory pressure is critical" in finding.detail
    offline = health_snapshot(heartbeat_payload("n1"), status={"n1": "offline"},
                              hour=tally_window(by_node=hour))
    assert "offline now" in check().evaluate(offline)[0].detail


def test_too_few_requests_say_nothing_however_many_failed():
    assert check().evaluate(snap({"n1": {"requests": 9, "failed": 9}})) == []
    env = {"FLEET_HEALTH_ERROR_RATE_MIN_REQUESTS": "5"}
    assert check(env).evaluate(snap({"n1": {"requests": 9, "failed": 9}}))[0].severity == "critical"


def test_thresholds_come_from_the_settings():
    hour = {"n1": {"requests": 100, "failed": 5}}
    assert check().evaluate(snap(hour)) == []
    lower = check({"FLEET_HEALTH_ERROR_RATE_WARNING_PCT": "5",
                   "FLEET_HEALTH_ERROR_RATE_CRITICAL_PCT": "50"})
    [finding] = lower.evaluate(snap(hour))
    assert finding.severity == "warning"
    assert "warning at 5%, critical at 50%" in finding.detail
    assert check({"FLEET_HEALTH_ERROR_RATE_CRITICAL_PCT": "5",
                  "FLEET_HEALTH_ERROR_RATE_WARNING_PCT": "5"}).evaluate(snap(hour))[0].severity \
        == "critical"


@pytest.mark.parametrize("env", [{"FLEET_HEALTH_ERROR_RATE_WARNING_PCT": "40"},
                                 {"FLEET_HEALTH_ERROR_RATE_WARNING_PCT": "0"},
                                 {"FLEET_HEALTH_ERROR_RATE_CRITICAL_PCT": "150"}])
def test_thresholds_out_of_order_are_a_setting_error(env):
    # out of (0, 100] is refused as the variable is read; out of order, when the check is made
    with pytest.raises(SettingError, match="|".join(env)):
        check(env)


def test_a_problem_only_the_day_shows_is_info_resolved():
    day = {"n1": {"requests": 80, "failed": 25}}
    [finding] = check().evaluate(snap({"n1": {"requests": 30, "failed": 1}}, day=day))
    assert (finding.severity, finding.node_id) == ("info", "n1")
    assert "(resolved)" in finding.title
    assert "25 of 80 requests (31%) today, but 1 of 30 in the last hour" in finding.detail
    assert finding.data["resolved"] is True


def test_a_day_problem_with_too_few_requests_in_the_hour_is_not_called_resolved():
    day = {"n1": {"requests": 80, "failed": 25}}
    [finding] = check().evaluate(snap({"n1": {"requests": 3, "failed": 3}}, day=day))
    assert finding.severity == "info" and "resolved" not in finding.title
    assert "3 of 3 in the last hour, too few to tell" in finding.detail
    [idle] = check().evaluate(snap({}, day=day))  # no request at all in the last hour
    assert "0 of 0 in the last hour" in idle.detail and idle.data["resolved"] is False


def test_failures_spread_thin_over_nodes_are_judged_fleet_wide():
    hour = {f"n{i}": {"requests": 8, "failed": 2} for i in range(4)}
    [finding] = check().evaluate(health_snapshot(hour=tally_window(
        by_node=hour, total={"requests": 40, "failed": 14})))
    assert finding.node_id is None and finding.severity == "critical"
    assert "14 of 40 requests (35%) failed across the fleet" in finding.detail
    assert "6 of them failed on every node they were tried on" in finding.detail
    assert finding.data["unattributed"] == 6


def test_a_node_finding_is_not_repeated_fleet_wide():
    hour = {"n1": {"requests": 20, "failed": 20}, "n2": {"requests": 5}}
    findings = check().evaluate(snap(hour))
    assert [f.node_id for f in findings] == ["n1"]
