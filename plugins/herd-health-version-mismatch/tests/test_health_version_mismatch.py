import attrs
import herd_health_version_mismatch
from herd_health_version_mismatch import release_key

from herd_kernel import __version__ as ROUTER
from herd_kernel.testing import health_snapshot, heartbeat_payload, make_config, make_host


def check():
    host = make_host("health-version-mismatch")
    [registered] = host.health_checks(make_config(host))
    return registered


def node(node_id, agent=ROUTER, engine_version="0.12.3", **extra):
    beat = heartbeat_payload(node_id, agent_version=agent, **extra)
    beat["endpoints"][0].update(version=engine_version, engine="ollama")
    return beat


def test_registers_through_its_entry_point():
    registered = check()
    assert isinstance(registered, herd_health_version_mismatch.VersionMismatchCheck)
    assert registered.id == "version_mismatch"


def test_a_fleet_on_one_release_of_everything_is_silent():
    snap = health_snapshot(node("n1"), node("n2"), node("n3", engine_version=""))
    assert check().evaluate(snap) == []


def test_an_agent_behind_the_router_warns_naming_it_and_its_release():
    snap = health_snapshot(node("n1"), node("n2", agent="0.0.9"))
    [finding] = check().evaluate(snap)
    assert (finding.check_id, finding.severity, finding.node_id) == ("version_mismatch", "warning", "n2")
    assert f"The router runs Herd {ROUTER}; agents of another release: 0.0.9 on n2." \
        in finding.detail
    assert finding.advice == (f"Upgrade Herd on n2 to {ROUTER} (the router's release) and restart "
                              "herd-node there.")
    assert finding.data["agents"] == {"0.0.9": ["n2"]}


def test_agents_ahead_of_the_router_ask_for_the_router_to_be_upgraded():
    snap = health_snapshot(node("n1", agent="0.0.9"), node("n2", agent="0.0.9"),
                           node("n3", agent="99.0.0"))
    [finding] = check().evaluate(snap)
    assert finding.node_id is None  # several nodes: the finding is the fleet's
    assert "0.0.9 on n1, n2; 99.0.0 on n3" in finding.detail
    assert "Upgrade Herd on n1, n2" in finding.advice
    assert "Upgrade the router: n3 runs a newer Herd" in finding.advice


def test_engines_of_one_kind_on_different_versions_warn_with_who_runs_what():
    snap = health_snapshot(node("n1", engine_version="0.12.10"), node("n2", engine_version="0.12.9"),
                           node("n3", engine_version="0.12.10"), node("n4", engine_version="0.12.3"))
    [finding] = check().evaluate(snap)
    assert finding.title == "ollama runs in 3 versions across the fleet"
    assert "0.12.3 on n4; 0.12.9 on n2; 0.12.10 on n1, n3" in finding.detail
    assert finding.advice == "Upgrade ollama on n2, n4 to 0.12.10."
    assert finding.data["versions"]["0.12.10"] == ["n1", "n3"]


def test_different_engines_are_not_compared_with_each_other():
    llama = heartbeat_payload("n2", kind="openai", agent_version=ROUTER)
    llama["endpoints"][0].update(engine="llama.cpp", version="b4500")
    snap = health_snapshot(node("n1"), llama)
    assert check().evaluate(snap) == []


def test_pending_nodes_are_not_part_of_the_fleet_yet():
    snap = health_snapshot(node("n1"))
    stranger = {"node_id": "x", "status": "pending", "agent_version": "0.0.1", "endpoints": []}
    snap = attrs.evolve(snap, status={**snap.status, "nodes": [*snap.status["nodes"], stranger]})
    assert check().evaluate(snap) == []


def test_versions_order_as_releases():
    ordered = ["nonsense", "0.9", "0.12.3-rc1", "0.12.3", "v0.12.10", "1.0"]
    shuffled = [ordered[i] for i in (3, 0, 5, 2, 4, 1)]
    assert sorted(shuffled, key=release_key) == ordered
