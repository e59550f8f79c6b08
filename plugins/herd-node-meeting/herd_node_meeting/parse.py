"""Turn what the macOS commands printed into "camera / microphone in use: yes, no or unknown".

Pure functions over text, so recorded output drives every branch in the tests. ``None`` always
means "could not tell"; it never pauses a node.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Sequence
from typing import Any

from attrs import frozen

# transports whose "running" says nothing about a person at the machine: a virtual device
# (BlackHole, Teams/Zoom audio drivers, OBS Virtual Camera) or an aggregate of others
_NOT_HARDWARE = {"virt", "grup"}


@frozen(kw_only=True)
class Answer:
    """One kind of device (camera or microphone): in use, and what said so."""

    in_use: bool | None
    source: str | None = None
    using: tuple[str, ...] = ()  # names of the devices, or apps, that are in use


UNKNOWN = Answer(in_use=None)


def ignored(name: str | None, patterns: Sequence[str]) -> bool:
    low = (name or "").lower()
    return bool(low) and any(p in low for p in patterns)


def _counts(device: dict[str, Any], patterns: Sequence[str], *, camera: bool) -> bool:
    name = device.get("name") or ""
    if device.get("transport") in _NOT_HARDWARE:
        return False
    # CoreMediaIO virtual cameras do not all declare a virtual transport; OverSight skips them by
    # name for the same reason
    if camera and "virtual" in name.lower():
        return False
    return not ignored(name, patterns)


def load_probe(returncode: int | None, stdout: str) -> dict[str, Any] | None:
    """The helper's JSON, or None when it did not run, failed or printed something else."""
    if returncode != 0:
        return None
    try:
        data = json.loads(stdout)
    except ValueError:
        return None
    return data if isinstance(data, dict) else None


def camera_from_probe(data: dict[str, Any] | None, patterns: Sequence[str] = ()) -> Answer:
    devices = data.get("cameras") if data else None
    if not isinstance(devices, list):
        return UNKNOWN
    counted = [d for d in devices if isinstance(d, dict) and _counts(d, patterns, camera=True)]
    on = tuple(str(d.get("name") or d.get("id")) for d in counted if d.get("running") is True)
    if on:
        return Answer(in_use=True, source="coremediaio", using=on)
    if any(d.get("running") is None for d in counted):
        return UNKNOWN
    # no camera at all (a Mac mini) is a definite "not in use"
    return Answer(in_use=False, source="coremediaio")


def microphone_from_probe(data: dict[str, Any] | None, patterns: Sequence[str] = ()) -> Answer:
    devices = data.get("microphones") if data else None
    if not isinstance(devices, list):
        return UNKNOWN
    counted = {
        d.get("id"): d
        for d in devices
        if isinstance(d, dict) and _counts(d, patterns, camera=False)
    }
    processes = data.get("processes") if data else None
    if isinstance(processes, list):
        answer = _microphone_by_process(processes, counted, patterns)
        if answer.in_use is not None:
            return answer
        # some process could not say (macOS 14.0 and 14.1 list processes but lack the flag):
        # the device-level answer is the next best
    return _microphone_by_device(list(counted.values()))


def _microphone_by_process(
    processes: list[Any], counted: dict[Any, dict[str, Any]], patterns: Sequence[str]
) -> Answer:
    """macOS 14.2+: each audio process says whether it is recording, and from which devices.

    This is exact where the device flag is not: it separates recording from playing on a headset.
    """
    recording = []
    unsure = False
    for proc in processes:
        if not isinstance(proc, dict):
            continue
        label = proc.get("bundle_id") or f"pid {proc.get('pid')}"
        if ignored(label, patterns):
            continue
        devices = [d for d in proc.get("input_devices") or [] if isinstance(d, int)]
        # recording only from virtual devices (a screen recorder capturing system sound) is no
        # one speaking; with no device list, count it
        if devices and not any(d in counted for d in devices):
            continue
        if proc.get("running_input") is True:
            recording.append(str(label))
        elif proc.get("running_input") is None:
            unsure = True
    if recording:
        return Answer(in_use=True, source="coreaudio-process", using=tuple(recording))
    if unsure:
        return UNKNOWN
    return Answer(in_use=False, source="coreaudio-process")


def _microphone_by_device(devices: list[dict[str, Any]]) -> Answer:
    """Before macOS 14.2: the device flag, trusted only on input-only devices."""
    on = [d for d in devices if d.get("running") is True]
    sure = [str(d.get("name") or d.get("id")) for d in on if d.get("output") is False]
    if sure:
        return Answer(in_use=True, source="coreaudio-device", using=tuple(sure))
    if on or any(d.get("running") is None for d in devices):
        # a running duplex device may only be playing sound: we cannot tell, so do not pause
        return UNKNOWN
    return Answer(in_use=False, source="coreaudio-device")


# --- fallback: the unified log (camera) ----------------------------------------------------------

# What the camera stacks log when a stream starts or stops, across macOS releases:
#   VDCAssistant (Intel, up to Big Sur):  "Post event kCameraStreamStart" / "...Stop"
#   UVCAssistant (USB cameras, 12+):      "[start stream]" / "[stop stream]"
#   appleh13camerad (Apple Silicon):      "StartStream: Powering ON camera" / "StopStream : ..."
#   CMIO extensions (12.3+):              "...startStream..." / "...stopStream..."
_CAMERA_EVENT = re.compile(
    r"kCameraStream(?P<a>Start|Stop)|\b(?P<b>start|stop)[ _]?stream|Powering (?P<c>ON|OFF) camera",
    re.IGNORECASE,
)

LOG_PREDICATE = (
    'subsystem == "com.apple.cmio" OR process == "VDCAssistant" OR process == "UVCAssistant" '
    'OR process == "appleh13camerad"'
)


def camera_events(log_text: str) -> list[bool]:
    """Every camera start (True) and stop (False) in ``log show`` output, oldest first."""
    events = []
    for line in log_text.splitlines():
        match = _CAMERA_EVENT.search(line)
        if match is None:
            continue
        word = (match["a"] or match["b"] or match["c"]).lower()
        events.append(word in ("start", "on"))
    return events


# --- fallback: ioreg (microphone) -----------------------------------------------------------------

_NODE = re.compile(r"\+-o (?P<name>\S.*?)\s+<class (?P<cls>[^,>]+)")
_PROPERTY = re.compile(r'^"(?P<key>[^"]+)" = (?P<value>.*)$')


@frozen(kw_only=True)
class _Node:
    depth: int
    name: str
    cls: str
    props: dict[str, str]


def _ioreg_nodes(text: str) -> list[_Node]:
    nodes: list[_Node] = []
    for line in text.splitlines():
        node = _NODE.search(line)
        if node is not None:
            nodes.append(_Node(depth=node.start(), name=node["name"], cls=node["cls"], props={}))
            continue
        prop = _PROPERTY.match(line.lstrip(" |"))
        if prop is not None and nodes:
            nodes[-1].props[prop["key"]] = prop["value"].strip()
    return nodes


def _descendants(nodes: list[_Node], index: int) -> Iterable[_Node]:
    depth = nodes[index].depth
    for node in nodes[index + 1 :]:
        if node.depth <= depth:
            return
        yield node


def microphone_from_ioreg(text: str) -> Answer:
    """IOAudioFamily engines (``ioreg -r -c IOAudioEngine -l -w0``): an engine whose streams are
    all input (IOAudioStreamDirection 1) and whose IOAudioEngineState is 1 is recording.

    The reference counted any running engine, so music playing looked like a meeting. An engine
    with streams both ways is ambiguous when running. Apple Silicon Macs show no such engines, so
    an empty answer is "unknown", not "idle".
    """
    nodes = _ioreg_nodes(text)
    inputs_seen = False
    ambiguous = False
    recording = []
    for index, node in enumerate(nodes):
        state = node.props.get("IOAudioEngineState")
        if state is None:
            continue
        directions = {
            n.props["IOAudioStreamDirection"]
            for n in _descendants(nodes, index)
            if "IOAudioStreamDirection" in n.props
        }
        if not directions:
            # no stream children listed: fall back on the engine's own name
            label = f"{node.name} {node.props.get('IOAudioEngineDescription', '')}".lower()
            directions = {"1"} if "input" in label else {"0"}
        if "1" not in directions:
            continue
        inputs_seen = True
        if state == "1":
            if directions == {"1"}:
                recording.append(node.props.get("IOAudioEngineDescription", node.name).strip('"'))
            else:
                ambiguous = True
    if recording:
        return Answer(in_use=True, source="ioreg", using=tuple(recording))
    if ambiguous or not inputs_seen:
        return UNKNOWN
    return Answer(in_use=False, source="ioreg")
