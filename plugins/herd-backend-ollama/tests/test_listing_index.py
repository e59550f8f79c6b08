"""The listing index kept node by node says what a listing built from scratch says, after every
kind of change, and serves the same bytes while nothing changes."""

import json

from herd_backend_ollama.router import FleetIndex

from herd_kernel.fleet import Fleet
from herd_kernel.models import AvailableModel, Heartbeat, structure
from herd_kernel.testing import heartbeat_payload


def beat(fleet, node_id, loaded=(), available=(), version="0.12.3", **extra):
    body = heartbeat_payload(node_id, loaded=loaded, available=available, **extra)
    body["endpoints"][0]["version"] = version
    fleet.apply_heartbeat(structure(body, Heartbeat))


def same_as_fresh(index):
    fresh = FleetIndex(index.fleet)
    assert json.loads(index.tags_bytes()) == fresh.tags()
    assert json.loads(index.ps_bytes()) == fresh.ps()
    assert [m["id"] for m in json.loads(index.v1_models_bytes())["data"]] == \
        [m["name"] for m in fresh.tags()["models"]]


def test_incremental_listings_match_a_fresh_build_after_each_change():
    fleet = Fleet()
    index = FleetIndex(fleet)
    beat(fleet, "b", loaded=["m:1"], available=["z:2"])
    beat(fleet, "a", available=["m:1"], version="0.11.0")
    same_as_fresh(index)
    first = index.tags_bytes()
    beat(fleet, "b", loaded=["m:1"], available=["z:2"])  # the same report again
    assert index.tags_bytes() is first  # nothing re-serialized
    beat(fleet, "b", available=["z:2", "q:3"])  # m:1 unloaded and gone from b, q:3 new
    same_as_fresh(index)
    fleet.add_available("a", AvailableModel(name="new:1"))  # a router-side change in place
    same_as_fresh(index)
    assert "new:1" in [m["name"] for m in index.tags()["models"]]
    assert index.version_string() == "0.11.0"
    beat(fleet, "a", draining=True)  # offline: out of every listing, its version remembered
    beat(fleet, "b", draining=True)
    same_as_fresh(index)
    assert index.tags()["models"] == [] and index.version_string() == "0.11.0"
