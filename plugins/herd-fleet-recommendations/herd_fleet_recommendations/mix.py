"""The recommended model mix per node: a pure function of one ``HealthSnapshot`` (the registry as
``/fleet/status`` shows it, its lanes, the last day's requests per model) and the curated table.
No I/O; linear in nodes times models. The rules are in README.md, "How the mix is chosen"."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from attrs import define, field, frozen

from herd_fleet_recommendations.catalogue import CARDS, card_for
from herd_kernel.api import HealthSnapshot, Tally
from herd_kernel.models import normalize_model

OTHER = "(other)"  # the tallies' key for models beyond the ones they count apart
PULL_PATH = "/dashboard/api/pull"
DELETE_PATH = "/dashboard/api/delete"
DISK_MARGIN = 1.1  # a pull needs its size and a tenth more free on disk
DISK_LOW = 0.10  # a disk with less than this share free is short of room
SMALL_SHARE = 0.25  # a model using at most this share of a node's budget is small for it
UPGRADE_SHARE = 0.5  # an upgrade may take at most this share, leaving room for the rest
UPGRADE_FACTOR = 2.0  # an upgrade has at least this many times the parameters


@frozen(kw_only=True)
class Policy:
    headroom_pct: float = 20.0  # FLEET_RECOMMEND_HEADROOM_PCT
    min_requests: int = 20  # FLEET_RECOMMEND_MIN_REQUESTS


@define
class Node:
    """One node as the rules see it."""

    node_id: str
    status: str
    routable: bool
    total_gb: float
    available_gb: float
    pressure: str
    unified: bool
    gpu_gb: float
    gpu_count: int
    basis: str  # what the budget is taken from: unified, gpu or system memory
    basis_gb: float
    budget_gb: float
    disk_total_gb: float
    disk_free_gb: float
    on_disk: dict[str, tuple[str, float]]  # key -> (name as reported, GB on disk)
    loaded: dict[str, tuple[str, float]]  # key -> (name, GB in memory)
    served: dict[str, int]  # key -> requests run here since the router started (its lanes)
    kept: dict[str, float] = field(factory=dict)  # key -> memory counted for it
    planned_disk_gb: float = 0.0  # taken by pulls suggested here

    @property
    def committed_gb(self) -> float:
        return round(sum(self.kept.values()), 2)

    @property
    def room_gb(self) -> float:
        """Budget left once what is kept is loaded."""
        return round(self.budget_gb - self.committed_gb, 2)

    @property
    def disk_room_gb(self) -> float:
        return self.disk_free_gb - self.planned_disk_gb

    def holds(self, key: str) -> bool:
        return key in self.on_disk or key in self.loaded

    def name_of(self, key: str) -> str:
        return (self.loaded.get(key) or self.on_disk.get(key) or (key, 0.0))[0]

    def need_gb(self, key: str) -> float:
        """Memory ``key`` takes here once loaded: the table's figure, else what the node reports
        it holding, else its size on disk with the table's allowance for buffers and cache."""
        card = card_for(key)
        if card is not None:
            return card.memory_gb
        if key in self.loaded and self.loaded[key][1] > 0:
            return round(self.loaded[key][1], 2)
        return round(self.on_disk.get(key, ("", 0.0))[1] * 1.2 + 0.25, 2)


def _num(value: Any) -> float:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else 0.0


def read_nodes(status: Mapping[str, Any], headroom_pct: float) -> list[Node]:
    """The nodes of a ``/fleet/status`` body (pending ones left out), with their lanes."""
    served: dict[str, dict[str, int]] = {}
    for lane in (status.get("queues") or {}).values():
        count = int(_num(lane.get("completed")) + _num(lane.get("failed")))
        if count:
            served.setdefault(str(lane.get("node")), {})[str(lane.get("model"))] = count
    nodes = []
    keep = max(0.0, 1.0 - headroom_pct / 100.0)
    for entry in status.get("nodes") or ():
        if entry.get("status") == "pending":
            continue
        memory, disk = entry.get("memory") or {}, entry.get("disk") or {}
        gpus = [g for g in entry.get("gpus") or () if _num(g.get("memory_total_gb")) > 0]
        total, unified = _num(memory.get("total_gb")), bool(memory.get("unified"))
        gpu_gb = round(sum(_num(g.get("memory_total_gb")) for g in gpus), 2)
        if unified:
            basis, basis_gb = "unified", total
        elif gpus:  # a model beyond a discrete GPU's memory runs mostly on the CPU
            basis, basis_gb = "gpu", gpu_gb
        else:
            basis, basis_gb = "system", total
        on_disk: dict[str, tuple[str, float]] = {}
        loaded: dict[str, tuple[str, float]] = {}
        for endpoint in entry.get("endpoints") or ():
            sizes = endpoint.get("models_available_gb") or {}
            for name in endpoint.get("models_available") or ():
                on_disk.setdefault(normalize_model(name), (name, _num(sizes.get(name))))
            for model in endpoint.get("models_loaded") or ():
                loaded.setdefault(normalize_model(model["name"]),
                                  (model["name"], _num(model.get("size_gb"))))
        status_ = str(entry.get("status"))
        nodes.append(Node(
            node_id=str(entry["node_id"]), status=status_,
            routable=status_ != "offline" and not entry.get("draining")
            and not entry.get("paused"),
            total_gb=total, available_gb=_num(memory.get("available_gb")),
            pressure=str(memory.get("pressure") or "normal"), unified=unified, gpu_gb=gpu_gb,
            gpu_count=len(gpus), basis=basis, basis_gb=basis_gb,
            budget_gb=round(basis_gb * keep, 2), disk_total_gb=_num(disk.get("total_gb")),
            disk_free_gb=_num(disk.get("available_gb")), on_disk=on_disk, loaded=loaded,
            served=served.get(str(entry["node_id"]), {})))
    return nodes


def _gb(value: float) -> str:
    return f"{value:.1f} GB"


def _budget_words(node: Node, policy: Policy) -> str:
    what = {"unified": "unified memory", "gpu": "GPU memory", "system": "memory"}[node.basis]
    return (f"{node.node_id} gives models {_gb(node.budget_gb)} ({_gb(node.basis_gb)} of {what} "
            f"less {policy.headroom_pct:g} % headroom)")


def _row(node: Node, model: str, action: str, reason: str, size_gb: float, memory_gb: float,
         **extra: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "node_id": node.node_id, "model": model, "action": action, "reason": reason,
        "size_gb": round(size_gb, 3), "memory_gb": round(memory_gb, 2),
        "fits": memory_gb <= node.budget_gb, "pull": None, **extra}
    if action in ("pull", "replace"):
        row["pull"] = {"method": "POST", "path": PULL_PATH,
                       "body": {"model": model, "node_id": node.node_id}}
    if action == "remove":
        row["delete"] = {"method": "POST", "path": DELETE_PATH,
                         "body": {"model": model, "node_id": node.node_id}}
    return row


def _keep(node: Node, demand: Mapping[str, Tally], policy: Policy) -> list[dict[str, Any]]:
    """What the node holds that is in use (requested in the last day, or loaded): keep it."""
    rows = []
    for key in sorted(set(node.on_disk) | set(node.loaded)):
        tally = demand.get(key)
        if key not in node.loaded and tally is None:
            continue
        need = node.need_gb(key)
        node.kept[key] = need
        name = node.name_of(key)
        if tally is not None:
            words = f"{name} had {tally.requests} requests in the last 24 h across the fleet"
            here = node.served.get(key, 0)
            if here:
                words += f", {here} of them served here since the router started"
        else:
            words = (f"{name} is loaded here and had no requests in the last 24 h; nothing calls "
                     "for a change")
        if key in node.loaded and tally is not None:
            words += "; it is loaded here"
        words += f". It needs about {_gb(need)} loaded; {_budget_words(node, policy)}."
        card = card_for(key)
        size = card.size_gb if card else node.on_disk.get(key, (name, 0.0))[1]
        rows.append(_row(node, name, "keep", words, size, need, use=card.use if card else None))
    return rows


def _missing(nodes: list[Node], demand: Mapping[str, Tally], policy: Policy
             ) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """Models requested that no routable node holds: a pull where each fits best (the node with
    the most memory left once its kept models are loaded), and the list of every such model."""
    routable = [n for n in nodes if n.routable]
    rows, missing = [], []
    wanted = sorted((k for k in demand if not any(n.holds(k) for n in routable)),
                    key=lambda k: (-demand[k].requests, k))
    for key in wanted:
        tally, card = demand[key], card_for(key)
        entry: dict[str, Any] = {"model": key, "requests_24h": tally.requests,
                                 "rejected_24h": tally.rejected, "node_id": None}
        missing.append(entry)
        if card is None:
            entry["reason"] = (f"{key} is not in the curated table, so its size is unknown and no "
                               "node is suggested; pull it on a node with room for it")
            continue
        fitting = [n for n in routable if card.memory_gb <= n.budget_gb
                   and n.disk_room_gb >= card.size_gb * DISK_MARGIN]
        if not fitting:
            best = max((n.budget_gb for n in routable), default=0.0)
            entry["reason"] = (f"{card.name} needs about {_gb(card.memory_gb)} loaded and "
                               f"{_gb(card.size_gb)} on disk; no online node has that room (the "
                               f"most any gives models is {_gb(best)})")
            continue
        node = max(fitting, key=lambda n: (n.room_gb - card.memory_gb, n.node_id))
        beside = node.room_gb >= card.memory_gb
        words = (f"{card.name} was requested {tally.requests} times in the last 24 h "
                 f"({tally.rejected} refused) and no online node has it. It needs about "
                 f"{_gb(card.memory_gb)} loaded and {_gb(card.size_gb)} on disk; "
                 f"{_budget_words(node, policy)}, {_gb(node.room_gb)} of it free beside what it "
                 f"keeps loaded")
        words += "." if beside else ", so Ollama would unload another model to run it."
        rows.append(_row(node, card.name, "pull", words, card.size_gb, card.memory_gb,
                         use=card.use))
        entry["node_id"] = node.node_id
        entry["reason"] = f"pull it on {node.node_id}"
        node.kept[key] = card.memory_gb
        node.planned_disk_gb += card.size_gb
    return rows, missing


def _smaller(node: Node, demand: Mapping[str, Tally], policy: Policy) -> list[dict[str, Any]]:
    """A node at memory pressure, or holding more than its budget: the most-used large model it
    holds, as a smaller quantisation or size of the same family."""
    over = node.committed_gb > node.budget_gb
    if node.pressure not in ("warn", "critical") and not over:
        return []
    held = [(card, key) for key in node.loaded if key in demand
            and (card := card_for(key)) is not None]
    for card, key in sorted(held, key=lambda c: -c[0].memory_gb):
        options = [c for c in CARDS if c.family == card.family and card.use in c.uses
                   and c.memory_gb < card.memory_gb and c.memory_gb <= node.budget_gb]
        if not options:
            continue
        after = node.committed_gb - card.memory_gb
        # the same model in a smaller quantisation first, then the largest that fits the budget
        best = max(options, key=lambda c: (c.params_b == card.params_b,
                                           after + c.memory_gb <= node.budget_gb,
                                           c.memory_gb))
        why = (f"memory pressure is {node.pressure}" if node.pressure != "normal" else
               "what it keeps loaded exceeds its budget")
        words = (f"{node.node_id} is short of memory ({why}: its models need about "
                 f"{_gb(node.committed_gb)} of a {_gb(node.budget_gb)} budget, "
                 f"{_gb(node.available_gb)} free now). {card.name} ({card.quant}, "
                 f"{demand[key].requests} requests in 24 h) needs about {_gb(card.memory_gb)}; "
                 f"{best.name} ({best.quant}) needs about {_gb(best.memory_gb)}.")
        node.kept[key] = best.memory_gb
        return [_row(node, best.name, "replace", words, best.size_gb, best.memory_gb,
                     replaces=node.name_of(key), use=best.use)]
    return []


def _upgrade(node: Node, demand: Mapping[str, Tally], policy: Policy) -> list[dict[str, Any]]:
    """A node with room to spare serving a small model in high demand: a larger model for the
    same use, at most half its budget, beside what else it keeps."""
    small = [(card, key) for key in node.kept
             if (card := card_for(key)) is not None and card.default
             and key in demand and demand[key].requests >= policy.min_requests
             and (key in node.loaded or node.served.get(key, 0) > 0)
             and card.memory_gb <= SMALL_SHARE * node.budget_gb]
    for card, key in sorted(small, key=lambda c: (-demand[c[1]].requests, c[1])):
        room = node.room_gb + card.memory_gb  # the small model's memory goes to the new one
        options = [c for c in CARDS if c.default and c.use == card.use
                   and c.params_b >= UPGRADE_FACTOR * card.params_b
                   and c.memory_gb <= min(UPGRADE_SHARE * node.budget_gb, room)
                   and c.name.lower() not in node.kept
                   and (node.holds(c.name.lower())
                        or node.disk_room_gb >= c.size_gb * DISK_MARGIN)]
        if not options:
            continue
        # the most parameters; among equals the same family, then one already on disk
        best = min(options, key=lambda c: (-c.params_b, c.family != card.family,
                                           not node.holds(c.name.lower()), c.memory_gb, c.name))
        words = (f"{card.name} had {demand[key].requests} requests in the last 24 h "
                 f"({card.use} demand) and needs only {_gb(card.memory_gb)} here; "
                 f"{_budget_words(node, policy)}. {best.name} ({best.params_b:g}B, "
                 f"{best.quant}) needs about {_gb(best.memory_gb)} and fits beside the rest it "
                 f"keeps; point {card.use} clients at it (or name it as a fallback) and keep "
                 f"{card.name} until they move.")
        if node.holds(best.name.lower()):
            words += " It is already on this node's disk."
        else:
            node.planned_disk_gb += best.size_gb
        node.kept[best.name.lower()] = best.memory_gb
        return [_row(node, best.name, "replace", words, best.size_gb, best.memory_gb,
                     replaces=card.name, use=best.use)]
    return []


def _remove(node: Node, demand: Mapping[str, Tally], policy: Policy) -> list[dict[str, Any]]:
    """Models on disk nobody asked for in the last day: those too large to load here with
    headroom, and, on a disk short of room, the largest others until a tenth is free again."""
    unused = [key for key in node.on_disk if key not in node.kept and key not in demand]
    rows = []
    low = node.disk_total_gb * DISK_LOW
    for key in sorted(unused, key=lambda k: (-node.on_disk[k][1], k)):
        name, size = node.on_disk[key]
        need = node.need_gb(key)
        if need > node.budget_gb:
            words = (f"{name} had no requests in the last 24 h and needs about {_gb(need)} "
                     f"loaded, more than {_budget_words(node, policy)}: it only takes "
                     f"{_gb(size)} of disk here.")
        elif node.disk_room_gb < low:
            words = (f"{name} had no requests in the last 24 h and takes {_gb(size)} of disk; "
                     f"{node.node_id} has {_gb(node.disk_room_gb)} free of "
                     f"{_gb(node.disk_total_gb)} (less than {DISK_LOW:.0%}).")
        else:
            continue
        node.planned_disk_gb -= size
        card = card_for(key)
        rows.append(_row(node, name, "remove", words, size, need,
                         use=card.use if card else None))
    return rows


def _summary(node: Node, by_node: Mapping[str, Tally], policy: Policy) -> dict[str, Any]:
    tally = by_node.get(node.node_id)
    return {
        "node_id": node.node_id, "status": node.status, "routable": node.routable,
        "memory": {"total_gb": node.total_gb, "available_gb": node.available_gb,
                   "pressure": node.pressure, "unified": node.unified, "basis": node.basis,
                   "basis_gb": node.basis_gb, "budget_gb": node.budget_gb,
                   "committed_gb": node.committed_gb},
        "gpus": {"count": node.gpu_count, "memory_gb": node.gpu_gb},
        "disk_free_gb": node.disk_free_gb,
        "models_on_disk": sorted(name for name, _ in node.on_disk.values()),
        "models_loaded": sorted(name for name, _ in node.loaded.values()),
        "usage": {"requests_24h": tally.requests if tally else 0,
                  "served_since_start": {node.name_of(k): n for k, n in
                                         sorted(node.served.items())}},
    }


def recommend(snap: HealthSnapshot, policy: Policy = Policy()) -> dict[str, Any]:
    """The ``/dashboard/api/recommendations`` body for one snapshot."""
    # the tallies key models by normalized name already; a hand-made window may not
    demand = {normalize_model(key): tally for key, tally in snap.day.by_model.items()
              if key != OTHER and tally.requests > 0}
    nodes = read_nodes(snap.status, policy.headroom_pct)
    active = snap.day.total.requests > 0
    rows: list[dict[str, Any]] = []
    for node in nodes:
        if node.routable:
            rows += _keep(node, demand, policy)
    pulls, missing = _missing(nodes, demand, policy)
    rows += pulls
    for node in (n for n in nodes if n.routable and active):
        rows += _smaller(node, demand, policy)
        rows += _upgrade(node, demand, policy)
        if snap.day.total.requests >= policy.min_requests:
            rows += _remove(node, demand, policy)
    order = {"replace": 0, "pull": 1, "remove": 2, "keep": 3}
    rows.sort(key=lambda r: (r["node_id"], order[r["action"]], r["model"]))
    return {
        "generated_at": snap.now,
        "headroom_pct": policy.headroom_pct,
        "window_s": snap.day.seconds,
        "fleet": {"requests_24h": snap.day.total.requests, "models_requested": len(demand),
                  "active": active},
        "demand": [_demand(key, tally, nodes) for key, tally in
                   sorted(demand.items(), key=lambda kv: (-kv[1].requests, kv[0]))],
        "missing": missing,
        "nodes": [_summary(n, snap.day.by_node, policy) for n in nodes],
        "recommendations": rows,
    }


def _demand(key: str, tally: Tally, nodes: Iterable[Node]) -> dict[str, Any]:
    card = card_for(key)
    return {"model": key, "requests_24h": tally.requests, "rejected_24h": tally.rejected,
            "use": card.use if card else None,
            "nodes": sorted(n.node_id for n in nodes if n.routable and n.holds(key))}
