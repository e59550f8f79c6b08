"""The health snapshot builder that check plugins test with shows nodes as the router does."""

from __future__ import annotations

from herd_kernel.testing import health_snapshot, heartbeat_payload, tally_window


def test_the_builder_shows_nodes_through_the_real_status_view():
    snap = health_snapshot(heartbeat_payload("n1", loaded=["llama3.2:3b"]),
                           heartbeat_payload("n2", memory_gb=16.0), status={"n2": "offline"},
                           hour=tally_window(by_node={"n1": {"requests": 4, "failed": 1}}))
    n1, n2 = snap.status["nodes"]
    assert (n1["node_id"], n1["status"], n2["status"]) == ("n1", "online", "offline")
    assert n1["endpoints"][0]["models_loaded"][0]["name"] == "llama3.2:3b"
    assert n2["memory"]["total_gb"] == 16.0
    assert snap.status["fleet"]["nodes_offline"] == 1
    assert (snap.hour.total.requests, snap.hour.total.failed) == (4, 1)
    assert snap.day.total.requests == 0 and snap.day.seconds == 86400
