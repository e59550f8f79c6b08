import herd_health_disconnects
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
    host = make_host("health-disconnects")
    [registered] = host.health_checks(make_config(host, env or {}))
    return registered


def hour(by_node=None, by_model=None, total=None):
    return health_snapshot(heartbeat_payload("n1"), hour=tally_window(
        by_node=by_node, by_model=by_model, total=total),
        day=tally_window(86400, total={"client_disconnects": 40}))


def test_registered_through_the_entry_point_with_its_settings():
    host = make_host("health-disconnects")
    assert [p.name for p in host.loaded] == ["health-disconnects"]
    assert {s.env for s in host.settings()} == {s.env for s in herd_health_disconnects.SETTINGS}
    assert check().id == "client_disconnects"


def test_an_idle_fleet_and_a_few_stop_buttons_are_silent():
    assert check().evaluate(health_snapshot(heartbeat_payload("n1", loaded=["qwen3:8b"]))) == []
    assert check().evaluate(hour({"n1": {"requests": 100, "client_disconnects": 14}})) == []
    assert check().evaluate(hour({"n1": {"requests": 19, "client_disconnects": 19}})) == []


def test_many_clients_leaving_warn_with_the_numbers_and_where():
    by_node = {"n1": {"requests": 20, "client_disconnects": 9, "ttft_ms_sum": 90000,
                      "ttft_count": 3},
               "n2": {"requests": 20, "client_disconnects": 1, "ttft_ms_sum": 30000,
                      "ttft_count": 17}}
    by_model = {"llama3.1:70b": {"requests": 12, "client_disconnects": 9},
                "qwen3:8b": {"requests": 28, "client_disconnects": 1}}
    [finding] = check().evaluate(hour(by_node, by_model))
    assert (finding.check_id, finding.severity, finding.node_id) == ("client_disconnects",
                                                                     "warning", None)
    assert "10 of 40 requests (25%) in the last hour" in finding.detail
    assert "warns from 15% of at least 20 requests" in finding.detail
    assert "40 today" in finding.detail
    assert "models llama3.1:70b (9 of 12), qwen3:8b (1 of 28)" in finding.detail
    assert "nodes n1 (9 of 20), n2 (1 of 20)" in finding.detail
    assert "took 6.0 s on average to start" in finding.detail
    assert "timeout" in finding.advice
    assert finding.data["rate"] == 0.25


def test_without_a_breakdown_the_detail_still_reads():
    [finding] = check().evaluate(hour(total={"requests": 20, "client_disconnects": 20}))
    assert finding.detail.endswith("40 today.")


def test_thresholds_come_from_the_settings():
    snap = hour({"n1": {"requests": 100, "client_disconnects": 14}})
    assert len(check({"FLEET_HEALTH_DISCONNECTS_PCT": "10"}).evaluate(snap)) == 1
    assert check({"FLEET_HEALTH_DISCONNECTS_PCT": "10",
                  "FLEET_HEALTH_DISCONNECTS_MIN_REQUESTS": "200"}).evaluate(snap) == []


def test_a_share_outside_0_to_100_is_a_setting_error():
    with pytest.raises(SettingError, match="FLEET_HEALTH_DISCONNECTS_PCT"):
        check({"FLEET_HEALTH_DISCONNECTS_PCT": "250"})
