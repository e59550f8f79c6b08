"""Meeting sensor for the node agent: while a Mac's camera or microphone is in use the node reports
``paused`` and the router gives it no work; it resumes once the meeting is over.

Each heartbeat asks CoreMediaIO and CoreAudio from a short-lived child process (``macos_probe``),
with the unified log (camera) and ``ioreg`` (microphone) as fallbacks when that child cannot
answer. Every command is an asyncio subprocess with a timeout. Linux and Windows report
``supported: false`` and never pause.
"""

from __future__ import annotations

import asyncio
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import structlog

from herd_kernel.api import NodeContext
from herd_kernel.config import Config, Setting
from herd_kernel.hookspecs import hookimpl
from herd_node_meeting.parse import (
    LOG_PREDICATE,
    UNKNOWN,
    Answer,
    camera_events,
    camera_from_probe,
    load_probe,
    microphone_from_ioreg,
    microphone_from_probe,
)
from herd_node_meeting.runner import NO_ANSWER, Result, Runner, run_command

__all__ = ["SETTINGS", "Debounce", "MeetingSensor", "run_command"]

log = structlog.get_logger("herd.node.meeting")

PROBE_SCRIPT = Path(__file__).with_name("macos_probe.py")
# absolute paths: launchd starts agents with a minimal PATH, and nothing on PATH can stand in
LOG_COMMAND = "/usr/bin/log"
IOREG_ARGV = ("/usr/sbin/ioreg", "-r", "-c", "IOAudioEngine", "-l", "-w0")

SETTINGS = (
    Setting(env="FLEET_NODE_MEETING_DETECTION", type=bool, default=True, scope="node",
            help="Pause this node while its camera or microphone is in use (macOS; other "
                 "systems report meeting detection as unsupported and never pause)."),
    Setting(env="FLEET_NODE_MEETING_CONFIRM", type=int, default=1, scope="node",
            help="Heartbeats in a row that must see the camera or microphone in use before the "
                 "node pauses."),
    Setting(env="FLEET_NODE_MEETING_RELEASE", type=int, default=2, scope="node",
            help="Heartbeats in a row that must see neither in use (or cannot tell) before a "
                 "paused node resumes."),
    Setting(env="FLEET_NODE_MEETING_TIMEOUT", type=float, default=2.0, scope="node",
            help="Seconds a detection command may run before it is killed and its answer counts "
                 "as unknown; one heartbeat's commands run side by side, so this bounds the "
                 "whole reading."),
    Setting(env="FLEET_NODE_MEETING_IGNORE", type=str, default="", scope="node",
            help="Comma-separated, case-insensitive parts of device names or app bundle ids that "
                 "never count as a meeting (e.g. 'blackhole,com.apple.dictation')."),
)


class Debounce:
    """Go active after ``confirm`` positive readings in a row, idle after ``release`` negative
    ones; a reading that agrees with the current state resets the count."""

    def __init__(self, confirm: int = 1, release: int = 2) -> None:
        self.confirm = max(1, confirm)
        self.release = max(1, release)
        self.active = False
        self._streak = 0

    def update(self, seen: bool) -> bool:
        if seen == self.active:
            self._streak = 0
        else:
            self._streak += 1
            if self._streak >= (self.release if self.active else self.confirm):
                self.active = seen
                self._streak = 0
        return self.active


class MeetingSensor:
    name = "meeting"
    order = 60

    def __init__(
        self,
        *,
        run: Runner = run_command,
        platform: str = sys.platform,
        enabled: bool = True,
        confirm: int = 1,
        release: int = 2,
        timeout: float = 2.0,
        ignore: Sequence[str] = (),
        log_window: float = 10.0,
        python: str = sys.executable,
    ) -> None:
        self.run = run
        self.platform = platform
        self.enabled = enabled
        self.timeout = max(0.1, timeout)
        self.ignore = tuple(p.lower() for p in ignore if p)
        self.log_window = log_window
        self.python = python
        self.debounce = Debounce(confirm, release)
        # which kinds the probe could not answer last time: their fallback runs this time, side
        # by side with the probe, so a reading never takes longer than one timeout
        self._fallback: set[str] = set()
        self._log_camera: bool | None = None  # the camera state the log last showed
        self._probe_answered: bool | None = None

    @classmethod
    def from_config(
        cls, config: Config, *, run: Runner = run_command, platform: str | None = None
    ) -> MeetingSensor:
        interval = float(config["FLEET_NODE_HEARTBEAT_INTERVAL"])
        return cls(
            run=run,
            platform=sys.platform if platform is None else platform,
            enabled=config["FLEET_NODE_MEETING_DETECTION"],
            confirm=config["FLEET_NODE_MEETING_CONFIRM"],
            release=config["FLEET_NODE_MEETING_RELEASE"],
            timeout=config["FLEET_NODE_MEETING_TIMEOUT"],
            ignore=[p.strip() for p in str(config["FLEET_NODE_MEETING_IGNORE"]).split(",")],
            # the log is read back over a window that covers the gap since the last heartbeat
            log_window=max(10.0, 2 * interval),
        )

    @property
    def supported(self) -> bool:
        return self.platform == "darwin"

    def probe_argv(self) -> list[str]:
        # -I: ignore PYTHON* variables and user site; -S: skip site-packages (stdlib only), which
        # also keeps the child's start-up short
        return [self.python, "-I", "-S", str(PROBE_SCRIPT)]

    def log_argv(self) -> list[str]:
        return [LOG_COMMAND, "show", "--last", f"{math.ceil(self.log_window)}s",
                "--style", "compact", "--predicate", LOG_PREDICATE]

    async def read(self, ctx: NodeContext | None) -> Mapping[str, Any]:
        if not self.supported:
            return {"extras": {"meeting": {"supported": False}}}
        if not self.enabled:
            return {"extras": {"meeting": {"supported": True, "enabled": False, "active": False}}}
        camera, microphone = await self.observe()
        seen = camera.in_use is True or microphone.in_use is True
        was = self.debounce.active
        active = self.debounce.update(seen)
        if active != was:
            log.info("meeting started: pausing this node" if active
                     else "meeting over: this node takes work again",
                     camera=camera.in_use, microphone=microphone.in_use,
                     in_use=[*camera.using, *microphone.using])
        report = {
            "supported": True,
            "enabled": True,
            "active": active,
            "camera": camera.in_use,
            "microphone": microphone.in_use,
            "source": {"camera": camera.source, "microphone": microphone.source},
            "in_use": [*camera.using, *microphone.using],
        }
        fragment: dict[str, Any] = {"extras": {"meeting": report}}
        if active:
            # only ever set it true: the agent merges later sensors' keys over earlier ones, and a
            # "paused": false here would undo another sensor's pause
            fragment["paused"] = True
        return fragment

    async def observe(self) -> tuple[Answer, Answer]:
        """One reading: (camera, microphone)."""
        commands: dict[str, Sequence[str]] = {"probe": self.probe_argv()}
        if "camera" in self._fallback:
            commands["log"] = self.log_argv()
        if "microphone" in self._fallback:
            commands["ioreg"] = IOREG_ARGV
        results = dict(zip(commands, await asyncio.gather(
            *(self._run(argv) for argv in commands.values())
        ), strict=True))

        data = load_probe(*results["probe"])
        self._note_probe(data is not None)
        camera = camera_from_probe(data, self.ignore)
        microphone = microphone_from_probe(data, self.ignore)
        self._fallback = {
            kind for kind, answer in (("camera", camera), ("microphone", microphone))
            if answer.in_use is None
        }
        if camera.in_use is not None:
            self._log_camera = None  # the log's view goes stale while it is not being read
        elif "log" in results:
            camera = self._camera_from_log(*results["log"])
        if microphone.in_use is None and "ioreg" in results:
            code, text = results["ioreg"]
            microphone = microphone_from_ioreg(text) if code == 0 else UNKNOWN
        return camera, microphone

    async def _run(self, argv: Sequence[str]) -> Result:
        try:
            return await self.run(argv, self.timeout)
        except Exception as exc:  # noqa: BLE001 - an injected runner may raise; that is "unknown"
            log.debug("meeting command failed", command=argv[0], error=repr(exc))
            return NO_ANSWER

    def _camera_from_log(self, code: int | None, text: str) -> Answer:
        if code != 0:
            self._log_camera = None  # events in the missed window are lost
            return UNKNOWN
        events = camera_events(text)
        if events:
            self._log_camera = events[-1]
        if self._log_camera is None:
            return UNKNOWN
        return Answer(in_use=self._log_camera, source="unified-log")

    def _note_probe(self, answered: bool) -> None:
        if answered == self._probe_answered:
            return
        if not answered:
            log.warning("CoreAudio/CoreMediaIO probe gave no answer; trying the log and ioreg",
                        probe=str(PROBE_SCRIPT), timeout=self.timeout)
        elif self._probe_answered is False:
            log.info("CoreAudio/CoreMediaIO probe answers again")
        self._probe_answered = answered


@hookimpl
def herd_settings() -> Sequence[Setting]:
    return SETTINGS


@hookimpl
def herd_node_sensors(config: Config) -> list[MeetingSensor]:
    return [MeetingSensor.from_config(config)]
