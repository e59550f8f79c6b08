import herd_health_memory_pressure
import pytest

from herd_kernel.config import SettingError
from herd_kernel.testing import health_snapshot, heartbeat_payload, make_config, make_host


def check(env=None):
    host = make_host("health-memory-pressure")
    [registered] = host.health_checks(make_config(host, env))
    return registered


def node(node_id="n1", *, pressure="normal", swap_gb=0.0, used_gb=4.0, total_gb=32.0, **extra):
    memory = {"total_gb": total_gb, "used_gb": used_gb, "available_gb": total_gb - used_gb,
              "pressure": pressure, "swap_total_gb": 16.0, "swap_used_gb": swap_gb}
    return heartbeat_payload(node_id, memory_gb=total_gb, memory=memory, **extra)


def test_registers_through_its_entry_point():
    registered = check()
    assert isinstance(registered, herd_health_memory_pressure.MemoryPressureCheck)
    assert (registered.id, registered.title) == ("memory_pressure", "Memory pressure")


def test_nodes_with_memory_to_spare_are_silent():
    # a little swap is normal (macOS swaps routinely): below the threshold it says nothing
    snap = health_snapshot(node("n1", swap_gb=2.0, loaded=["llama3.2:3b"]), node("n2"))
    assert check().evaluate(snap) == []


@pytest.mark.parametrize(("pressure", "severity"), [("warn", "warning"), ("critical", "critical")])
def test_the_nodes_own_pressure_level_sets_the_severity(pressure, severity):
    loaded = [{"name": "llama3.2:3b", "size_bytes": 2_400_000_000},
              {"name": "qwen2.5:32b", "size_bytes": 21_000_000_000}]
    snap = health_snapshot(node("n1"), node("n2", pressure=pressure, used_gb=30.5, loaded=loaded))
    [finding] = check().evaluate(snap)
    assert (finding.check_id, finding.severity, finding.node_id) == (
        "memory_pressure", severity, "n2")
    assert f"reports memory pressure '{pressure}'" in finding.detail
    assert "30.5 of 32.0 GB used, 1.5 GB available" in finding.detail
    # the biggest model first: the one to unload
    assert "Models loaded: qwen2.5:32b 19.6 GB, llama3.2:3b 2.2 GB." in finding.detail
    assert "ollama stop" in finding.advice
    assert finding.data["pressure"] == pressure


def test_deep_swap_warns_without_reported_pressure():
    snap = health_snapshot(node("n1", swap_gb=9.0))
    [finding] = check().evaluate(snap)
    assert finding.severity == "warning"
    assert "has 9.0 GB in swap (28% of its RAM, the threshold is 25%)" in finding.detail
    assert "Models loaded: none." in finding.detail
    assert finding.data["swap_fraction"] == pytest.approx(0.281, abs=0.001)


def test_swap_and_critical_pressure_make_one_critical_finding():
    [finding] = check().evaluate(health_snapshot(node("n1", pressure="critical", swap_gb=12.0)))
    assert finding.severity == "critical"
    assert "'critical' and has 12.0 GB in swap" in finding.detail


def test_the_swap_threshold_is_a_setting():
    snap = health_snapshot(node("n1", swap_gb=4.0))
    assert check().evaluate(snap) == []
    [finding] = check({"FLEET_HEALTH_MEMORY_PRESSURE_SWAP_FRACTION": "0.1"}).evaluate(snap)
    assert "the threshold is 10%" in finding.detail
    with pytest.raises(SettingError, match="FLEET_HEALTH_MEMORY_PRESSURE_SWAP_FRACTION"):
        check({"FLEET_HEALTH_MEMORY_PRESSURE_SWAP_FRACTION": "0"})


def test_an_offline_nodes_stale_reading_is_not_judged():
    snap = health_snapshot(node("n1", pressure="critical"), status={"n1": "offline"})
    assert check().evaluate(snap) == []
    snap = health_snapshot(node("n1", pressure="critical"), status={"n1": "degraded"})
    assert len(check().evaluate(snap)) == 1
