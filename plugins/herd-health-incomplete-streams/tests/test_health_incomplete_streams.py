import herd_health_incomplete_streams

from herd_kernel.testing import (
    health_snapshot,
    heartbeat_payload,
    make_config,
    make_host,
    tally_window,
)


def check(env=None):
    host = make_host("health-incomplete-streams")
    [registered] = host.health_checks(make_config(host, env or {}))
    return registered


def snap(by_node, *, status=None, **beat):
    return health_snapshot(heartbeat_payload("n1", **beat), status=status,
                           hour=tally_window(by_node=by_node),
                           day=tally_window(86400, by_node={"n1": {"incomplete_streams": 7}}))


def test_registered_through_the_entry_point_with_its_settings():
    host = make_host("health-incomplete-streams")
    assert [p.name for p in host.loaded] == ["health-incomplete-streams"]
    assert {s.env for s in host.settings()} == \
        {s.env for s in herd_health_incomplete_streams.SETTINGS}
    assert check().id == "incomplete_streams"


def test_an_idle_fleet_and_a_single_broken_stream_are_silent():
    assert check().evaluate(health_snapshot(heartbeat_payload("n1", loaded=["qwen3:8b"]))) == []
    assert check().evaluate(snap({"n1": {"requests": 50, "incomplete_streams": 1}})) == []


def test_broken_streams_on_a_node_warn_with_the_numbers():
    [finding] = check().evaluate(snap({"n1": {"requests": 30, "failed": 3,
                                              "incomplete_streams": 3},
                                       "n2": {"requests": 30}}))
    assert (finding.check_id, finding.severity, finding.node_id) == ("incomplete_streams",
                                                                     "warning", "n1")
    assert "3 streamed answers from n1 broke" in finding.detail
    assert "(3 of its 30 requests; the check warns from 2); 7 today" in finding.detail
    assert "Now" not in finding.detail  # online, memory fine: nothing more to say
    assert "crashed or ran out of memory" in finding.advice
    assert finding.data["incomplete_streams"] == 3


def test_the_node_state_that_explains_it_is_said():
    memory = {"total_gb": 16.0, "used_gb": 15.2, "available_gb": 0.8, "pressure": "critical"}
    [finding] = check().evaluate(snap({"n1": {"requests": 5, "incomplete_streams": 2}},
                                      status={"n1": "degraded"}, memory=memory))
    assert "Now it is degraded and its memory pressure is critical (15.2 of 16 GB used)." \
        in finding.detail


def test_the_count_comes_from_the_setting():
    one = {"n1": {"requests": 50, "incomplete_streams": 1}}
    [finding] = check({"FLEET_HEALTH_INCOMPLETE_STREAMS_MIN_COUNT": "1"}).evaluate(snap(one))
    assert finding.detail.startswith("1 streamed answer from n1 broke")
    assert check({"FLEET_HEALTH_INCOMPLETE_STREAMS_MIN_COUNT": "4"}).evaluate(
        snap({"n1": {"requests": 50, "incomplete_streams": 3}})) == []
