"""Health check ``version_mismatch``: node agents of another Herd release than the router, and
engines of one kind (Ollama, llama.cpp...) on different versions across the fleet, which then
differ in the models they can run and how they answer."""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from herd_kernel.api import Finding, HealthCheck, HealthSnapshot
from herd_kernel.config import Config
from herd_kernel.hookspecs import hookimpl

_RELEASE = re.compile(r"v?(\d+(?:\.\d+)*)(.*)")


def release_key(version: str) -> tuple[tuple[int, ...], int, str]:
    """Orders versions as releases: 0.12.10 after 0.12.9, 0.12.3 after 0.12.3-rc1; text that is
    no version sorts first."""
    match = _RELEASE.match(version.strip())
    if not match:
        return ((), 0, version)
    numbers = tuple(int(part) for part in match[1].split("."))
    return (numbers, 0 if match[2] else 1, match[2])


def listing(by_version: Mapping[str, Iterable[str]]) -> str:
    return "; ".join(f"{version} on {', '.join(sorted(nodes))}"
                     for version, nodes in sorted(by_version.items(),
                                                  key=lambda item: release_key(item[0])))


class VersionMismatchCheck:
    id = "version_mismatch"
    title = "Versions differ"

    def evaluate(self, snapshot: HealthSnapshot) -> Sequence[Finding]:
        nodes = [n for n in snapshot.status.get("nodes", ()) if n.get("status") != "pending"]
        findings = []
        agents = self.agents(nodes, snapshot.router_version)
        if agents is not None:
            findings.append(agents)
        findings += self.engines(nodes)
        return findings

    def agents(self, nodes: Sequence[Mapping[str, Any]], router: str) -> Finding | None:
        others: dict[str, list[str]] = {}
        for node in nodes:
            version = str(node.get("agent_version") or "")
            if version and version != router:
                others.setdefault(version, []).append(node["node_id"])
        if not others:
            return None
        mine = release_key(router)
        older = sorted(n for v, ids in others.items() if release_key(v) < mine for n in ids)
        newer = sorted(n for v, ids in others.items() if release_key(v) > mine for n in ids)
        fixes = []
        if older:
            fixes.append(f"Upgrade Herd on {', '.join(older)} to {router} (the router's release) "
                         "and restart herd-node there.")
        if newer:
            verb = "runs" if len(newer) == 1 else "run"
            fixes.append(f"Upgrade the router: {', '.join(newer)} {verb} a newer Herd than it does.")
        if not fixes:  # versions that do not compare as releases
            fixes.append(f"Install the router's release ({router}) on every node.")
        named = sorted(n for ids in others.values() for n in ids)
        return Finding(
            check_id=self.id, severity="warning", node_id=named[0] if len(named) == 1 else None,
            title="Node agents run another Herd release than the router",
            detail=f"The router runs Herd {router}; agents of another release: "
            f"{listing(others)}. An agent of another release may report fields the router reads "
            "differently.",
            advice=" ".join(fixes),
            data={"router_version": router, "agents": {v: sorted(ids) for v, ids in others.items()}})

    def engines(self, nodes: Sequence[Mapping[str, Any]]) -> list[Finding]:
        kinds: dict[tuple[str, str], dict[str, set[str]]] = {}
        for node in nodes:
            for endpoint in node.get("endpoints", ()):
                version = str(endpoint.get("version") or "")
                if version:  # an engine that does not say its version cannot be compared
                    key = (str(endpoint.get("kind")), str(endpoint.get("engine") or ""))
                    kinds.setdefault(key, {}).setdefault(version, set()).add(node["node_id"])
        findings = []
        for (kind, engine), by_version in sorted(kinds.items()):
            if len(by_version) < 2:
                continue
            name = engine or kind
            newest = max(by_version, key=release_key)
            behind = sorted(n for v, ids in by_version.items() if v != newest for n in ids)
            findings.append(Finding(
                check_id=self.id, severity="warning",
                title=f"{name} runs in {len(by_version)} versions across the fleet",
                detail=f"{name} versions: {listing(by_version)}. Different versions can run "
                "different models and answer differently, so the same request may behave "
                "differently depending on the node it lands on.",
                advice=f"Upgrade {name} on {', '.join(behind)} to {newest}.",
                data={"kind": kind, "engine": engine,
                      "versions": {v: sorted(ids) for v, ids in by_version.items()}}))
        return findings


@hookimpl
def herd_health_checks(config: Config) -> Sequence[HealthCheck]:
    return [VersionMismatchCheck()]
