"""Meeting detection through the command seam, with recorded macOS output; the real subprocess
runner against fake executables; the ctypes probe against a fake framework built from C; and the
real router and node agent on loopback.

Every macOS output below is a HAND-WRITTEN SAMPLE in the shape the command prints (this machine
is not a Mac); device names, ids and pids are invented.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from aiohttp import web
from herd_node_meeting import (
    IOREG_ARGV,
    LOG_COMMAND,
    PROBE_SCRIPT,
    SETTINGS,
    Debounce,
    MeetingSensor,
    herd_settings,
)
from herd_node_meeting.parse import (
    camera_events,
    camera_from_probe,
    load_probe,
    microphone_from_ioreg,
    microphone_from_probe,
)
from herd_node_meeting.runner import run_command

from herd_kernel.hookspecs import hookimpl
from herd_kernel.models import RouteRequest
from herd_kernel.scoring import Decision, NoRoute
from herd_kernel.testing import make_config, make_host, wait_for
from herd_node.agent import NodeAgent

# --- recorded output (hand-written samples) ------------------------------------------------------


def probe_output(*, camera=False, mic_app=None, processes=True, headset_running=False) -> str:
    """What macos_probe.py prints on a MacBook Pro (Sonoma 14.4) with a USB headset plugged in,
    Teams' virtual audio device installed and OBS's virtual camera running.
    HAND-WRITTEN SAMPLE."""
    data = {
        "cameras": [
            {"id": 67, "name": "MacBook Pro Camera", "transport": "bltn", "running": camera},
            # OBS keeps its virtual camera running while OBS is open: never a meeting
            {"id": 70, "name": "OBS Virtual Camera", "transport": "bltn", "running": True},
        ],
        "microphones": [
            {"id": 91, "name": "MacBook Pro Microphone", "transport": "bltn",
             "running": mic_app is not None, "output": False},
            {"id": 104, "name": "Jabra EVOLVE 20 MS", "transport": "usb",
             "running": headset_running, "output": True},
            {"id": 112, "name": "Microsoft Teams Audio", "transport": "virt", "running": True,
             "output": True},
        ],
        "processes": [
            {"pid": 538, "bundle_id": "com.apple.Music", "running_input": False,
             "input_devices": []},
            {"pid": 1207, "bundle_id": "com.microsoft.teams2", "running_input": True,
             "input_devices": [112]},  # Teams reading its own loopback device: not a person
        ] + ([{"pid": 2290, "bundle_id": mic_app, "running_input": True, "input_devices": [91]}]
             if mic_app else []),
        "errors": {},
    }
    if not processes:  # macOS before 14.2 has no per-process audio objects
        data["processes"] = None
    return json.dumps(data)


IDLE = probe_output()
CAMERA_ON = probe_output(camera=True)
MIC_ON = probe_output(mic_app="us.zoom.xos")

# `log show --last 10s --style compact --predicate ...` on an Apple Silicon Mac.
# HAND-WRITTEN SAMPLE.
LOG_CAMERA_STARTED = """\
Filtering the log data using "subsystem == "com.apple.cmio" OR process == "VDCAssistant" OR process == "UVCAssistant" OR process == "appleh13camerad""
Timestamp               Ty Process[PID:TID]
2024-05-14 10:02:11.301 Df appleh13camerad[354:5c21] TCC preflight access returned allowed for pid 2290
2024-05-14 10:02:11.482 Df appleh13camerad[354:5c21] StartStream: Powering ON camera
2024-05-14 10:02:11.517 Df zoom.us[2290:1f00a] [com.apple.cmio:CMIOExtensionProvider] <CMIOExtensionProviderHostContext> device 0x4321 startStream
"""
LOG_CAMERA_STOPPED = """\
Timestamp               Ty Process[PID:TID]
2024-05-14 10:41:52.090 Df zoom.us[2290:1f00a] [com.apple.cmio:CMIOExtensionProvider] <CMIOExtensionProviderHostContext> device 0x4321 stopStream
2024-05-14 10:41:52.113 Df appleh13camerad[354:5c21] StopStream : Powering OFF camera
2024-05-14 10:41:52.140 Df appleh13camerad[354:5c21] Removing client: pid 2290
"""
LOG_QUIET = "Timestamp               Ty Process[PID:TID]\n"
# older Intel Macs (Big Sur), VDCAssistant. HAND-WRITTEN SAMPLE after the messages people quote.
LOG_INTEL = """\
2021-10-07 10:40:54.892 Df VDCAssistant[48943:e7dcf2] [com.apple.VDCAssistant:device] [guid:0x1130000046d0892] Post event kCameraStreamStart
2021-10-07 10:40:57.851 Df VDCAssistant[48943:e7dcf2] [com.apple.VDCAssistant:device] [guid:0x1130000046d0892] Post event kCameraStreamStop
2021-10-07 10:41:03.004 Df UVCAssistant[266:b35b3] (UVCFamily) [com.apple.UVCFamily:device] UVCUSBDeviceStreamingInterface: 0x1000005a6 [start stream] format : UVCDeviceStreamFormat:[1280 * 720 (YUV420_420v)]
"""


def ioreg_output(*, input_state=0, output_state=1, duplex_state=None) -> str:
    """`ioreg -r -c IOAudioEngine -l -w0` on an Intel MacBook Pro (AppleHDA), optionally with a
    USB audio device whose one engine has streams both ways. HAND-WRITTEN SAMPLE."""
    text = f"""\
+-o AppleHDAEngineInput  <class AppleHDAEngineInput, id 0x100000459, registered, matched, active, busy 0 (0 ms), retain 11>
  | {{
  |   "IOAudioEngineState" = {input_state}
  |   "IOAudioEngineDescription" = "Built-in Input"
  |   "IOAudioEngineGlobalUniqueID" = "AppleHDAEngineInput:1B,0,1,0:1"
  |   "IOAudioEngineNumActiveUserClients" = {input_state}
  | }}
  | 
  +-o IOAudioStream  <class IOAudioStream, id 0x10000045c, registered, matched, active, busy 0 (0 ms), retain 7>
      {{
        "IOAudioStreamDirection" = 1
        "IOAudioStreamID" = 1
      }}
      
+-o AppleHDAEngineOutput  <class AppleHDAEngineOutput, id 0x100000461, registered, matched, active, busy 0 (0 ms), retain 12>
  | {{
  |   "IOAudioEngineState" = {output_state}
  |   "IOAudioEngineDescription" = "Built-in Output"
  | }}
  | 
  +-o IOAudioStream  <class IOAudioStream, id 0x100000464, registered, matched, active, busy 0 (0 ms), retain 7>
      {{
        "IOAudioStreamDirection" = 0
      }}
      
"""
    if duplex_state is not None:
        text += f"""\
+-o IOAudioEngine  <class IOAudioEngine, id 0x1000007a0, registered, matched, active, busy 0 (0 ms), retain 9>
  | {{
  |   "IOAudioEngineState" = {duplex_state}
  |   "IOAudioEngineDescription" = "USB Audio CODEC"
  | }}
  | 
  +-o IOAudioStream  <class IOAudioStream, id 0x1000007a3, registered, matched, active, busy 0 (0 ms), retain 7>
  |   {{
  |     "IOAudioStreamDirection" = 0
  |   }}
  |   
  +-o IOAudioStream  <class IOAudioStream, id 0x1000007a5, registered, matched, active, busy 0 (0 ms), retain 7>
      {{
        "IOAudioStreamDirection" = 1
      }}
      
"""
    return text


IOREG_IDLE = ioreg_output()


class FakeMac:
    """The seam: answers the sensor's commands with recorded output, by command; an output of
    None stands for a command that timed out or is missing."""

    def __init__(self, probe=IDLE, log=LOG_QUIET, ioreg=IOREG_IDLE):
        self.probe = probe
        self.log = log
        self.ioreg = ioreg
        self.calls: list[str] = []
        self.on_probe = None  # called with the output each time the probe runs

    def kind(self, argv) -> str:
        if argv[-1] == str(PROBE_SCRIPT):
            return "probe"
        if argv[0] == LOG_COMMAND:
            return "log"
        if tuple(argv) == IOREG_ARGV:
            return "ioreg"
        raise AssertionError(f"unexpected command {argv}")

    async def __call__(self, argv, timeout):
        assert timeout > 0
        kind = self.kind(argv)
        self.calls.append(kind)
        output = getattr(self, kind)
        if kind == "probe" and self.on_probe is not None:
            self.on_probe(output)
        # what the real runner returns for a command that timed out or is missing
        return (None, "") if output is None else (0, output)


def mac_sensor(fake: FakeMac, **kwargs) -> MeetingSensor:
    return MeetingSensor(run=fake, platform="darwin", python="/usr/bin/python3", **kwargs)


def meeting(fragment):
    return fragment["extras"]["meeting"]


# --- detection through the seam ------------------------------------------------------------------


async def test_idle_mac_is_not_paused():
    fake = FakeMac(IDLE)
    fragment = await mac_sensor(fake).read(None)
    assert "paused" not in fragment
    assert meeting(fragment) == {
        "supported": True, "enabled": True, "active": False, "camera": False,
        "microphone": False, "source": {"camera": "coremediaio", "microphone": "coreaudio-process"},
        "in_use": [],
    }
    assert fake.calls == ["probe"]  # no fallback while the probe answers


async def test_camera_on_pauses():
    fragment = await mac_sensor(FakeMac(CAMERA_ON)).read(None)
    assert fragment["paused"] is True
    report = meeting(fragment)
    assert report["active"] is True and report["camera"] is True and report["microphone"] is False
    assert report["in_use"] == ["MacBook Pro Camera"]


async def test_microphone_on_pauses_and_names_the_app():
    fragment = await mac_sensor(FakeMac(MIC_ON)).read(None)
    assert fragment["paused"] is True
    report = meeting(fragment)
    assert report["camera"] is False and report["microphone"] is True
    assert report["in_use"] == ["us.zoom.xos"]


async def test_resumes_only_after_the_release_count():
    fake = FakeMac(CAMERA_ON)
    sensor = mac_sensor(fake, release=2)
    assert (await sensor.read(None))["paused"] is True
    fake.probe = IDLE
    still = await sensor.read(None)
    assert still["paused"] is True and meeting(still)["camera"] is False  # one quiet beat: a blip
    resumed = await sensor.read(None)
    assert "paused" not in resumed and meeting(resumed)["active"] is False


async def test_a_blip_in_a_meeting_restarts_the_release_count():
    fake = FakeMac(MIC_ON)
    sensor = mac_sensor(fake, release=2)
    states = []
    for probe in (MIC_ON, IDLE, MIC_ON, IDLE, IDLE):
        fake.probe = probe
        states.append("paused" in await sensor.read(None))
    assert states == [True, True, True, True, False]


async def test_confirm_needs_consecutive_positive_reads():
    fake = FakeMac(CAMERA_ON)
    sensor = mac_sensor(fake, confirm=2)
    assert "paused" not in await sensor.read(None)
    assert (await sensor.read(None))["paused"] is True


def test_debounce_counts():
    d = Debounce(confirm=2, release=3)
    seen = (True, False, True, True, False, False, True, False, False, False)
    assert [d.update(s) for s in seen] == [
        False, False, False, True, True, True, True, True, True, False,
    ]
    assert Debounce(confirm=0, release=-1).confirm == 1  # nonsense settings still debounce


async def test_timeouts_and_missing_commands_are_unknown_never_paused():
    fake = FakeMac(probe=None, log=None, ioreg=None)
    sensor = mac_sensor(fake)
    for _ in range(3):
        fragment = await sensor.read(None)
        assert "paused" not in fragment
        report = meeting(fragment)
        assert report["camera"] is None and report["microphone"] is None
        assert report["active"] is False
    # after the probe failed once, its fallbacks run beside it (each bounded by the timeout)
    assert fake.calls == ["probe", "probe", "log", "ioreg", "probe", "log", "ioreg"]


async def test_a_runner_that_raises_is_unknown_not_a_crash():
    async def broken(argv, timeout):
        raise OSError("fork failed")

    fragment = await MeetingSensor(run=broken, platform="darwin").read(None)
    assert "paused" not in fragment and meeting(fragment)["camera"] is None


def test_garbage_from_the_probe_is_unknown():
    for code, text in ((0, "Traceback (most recent call last):\n"), (1, IDLE), (0, "[]")):
        assert load_probe(code, text) is None


async def test_a_detector_that_breaks_mid_meeting_lets_the_node_go():
    # fail open: a broken detector must not keep a machine out of the fleet forever
    fake = FakeMac(CAMERA_ON)
    sensor = mac_sensor(fake, release=2)
    assert (await sensor.read(None))["paused"] is True
    fake.probe = fake.log = fake.ioreg = None
    assert (await sensor.read(None))["paused"] is True
    assert "paused" not in await sensor.read(None)


@pytest.mark.parametrize("platform", ["linux", "win32"])
async def test_other_platforms_are_unsupported_and_run_nothing(platform):
    fake = FakeMac(CAMERA_ON)
    fragment = await MeetingSensor(run=fake, platform=platform).read(None)
    assert fragment == {"extras": {"meeting": {"supported": False}}}
    assert fake.calls == []


async def test_switched_off_runs_nothing():
    fake = FakeMac(CAMERA_ON)
    fragment = await mac_sensor(fake, enabled=False).read(None)
    off = {"supported": True, "enabled": False, "active": False}
    assert fragment == {"extras": {"meeting": off}}
    assert fake.calls == []


async def test_never_sends_paused_false():
    fake = FakeMac(IDLE)
    sensor = mac_sensor(fake)
    for probe in (IDLE, CAMERA_ON, IDLE, IDLE, None):
        fake.probe = probe
        assert (await sensor.read(None)).get("paused", True) is True


# --- what counts ---------------------------------------------------------------------------------


def test_virtual_devices_and_loopback_recording_do_not_count():
    data = json.loads(IDLE)
    # OBS Virtual Camera and Teams' loopback device are running in the sample, yet:
    assert camera_from_probe(data).in_use is False
    assert microphone_from_probe(data).in_use is False


def test_ignore_list_matches_names_and_bundle_ids():
    assert microphone_from_probe(json.loads(MIC_ON), ["zoom"]).in_use is False
    assert camera_from_probe(json.loads(CAMERA_ON), ["macbook pro camera"]).in_use is False


def test_before_macos_14_2_only_input_only_devices_are_trusted():
    mic = microphone_from_probe(json.loads(probe_output(mic_app="x", processes=False)))
    assert (mic.in_use, mic.source) == (True, "coreaudio-device")
    assert mic.using == ("MacBook Pro Microphone",)
    # a running headset may only be playing music: cannot tell, so no pause
    headset = json.loads(probe_output(processes=False, headset_running=True))
    assert microphone_from_probe(headset).in_use is None
    assert microphone_from_probe(json.loads(probe_output(processes=False))).in_use is False


def test_processes_without_the_recording_flag_fall_back_to_devices():
    # macOS 14.0/14.1 list audio processes but have no IsRunningInput yet
    data = json.loads(probe_output(mic_app="us.zoom.xos"))
    for proc in data["processes"]:
        proc["running_input"] = None
    mic = microphone_from_probe(data)
    assert (mic.in_use, mic.source) == (True, "coreaudio-device")


def test_a_mac_without_a_camera_has_no_camera_in_use():
    assert camera_from_probe({"cameras": [], "microphones": []}).in_use is False
    assert camera_from_probe({"cameras": None, "errors": {"coremediaio": "x"}}).in_use is None


# --- fallbacks -----------------------------------------------------------------------------------


def test_camera_events_across_macos_releases():
    assert camera_events(LOG_CAMERA_STARTED) == [True, True]
    assert camera_events(LOG_CAMERA_STOPPED) == [False, False]
    assert camera_events(LOG_INTEL) == [True, False, True]
    assert camera_events(LOG_QUIET) == []


@pytest.mark.parametrize(
    "kwargs,expected",
    [
        ({"input_state": 1}, True),
        ({"input_state": 0, "output_state": 1}, False),  # music playing is not a meeting
        ({"input_state": 0, "duplex_state": 1}, None),  # a duplex engine running: cannot tell
        ({"input_state": 1, "duplex_state": 1}, True),
    ],
)
def test_ioreg_input_engines(kwargs, expected):
    assert microphone_from_ioreg(ioreg_output(**kwargs)).in_use is expected


def test_ioreg_without_audio_engines_is_unknown():
    # Apple Silicon Macs have no IOAudioFamily engines
    assert microphone_from_ioreg("").in_use is None


async def test_fallbacks_take_over_when_the_probe_fails():
    fake = FakeMac(probe=None, log=LOG_CAMERA_STARTED, ioreg=ioreg_output(input_state=0))
    sensor = mac_sensor(fake)
    first = await sensor.read(None)
    assert meeting(first)["camera"] is None  # fallbacks are armed by this failure
    second = await sensor.read(None)
    assert second["paused"] is True
    report = meeting(second)
    assert report["source"] == {"camera": "unified-log", "microphone": "ioreg"}
    assert report["camera"] is True and report["microphone"] is False
    fake.log = LOG_QUIET  # no new events: the camera is still on
    assert meeting(await sensor.read(None))["camera"] is True
    fake.log = LOG_CAMERA_STOPPED
    assert meeting(await sensor.read(None))["camera"] is False
    fake.probe = IDLE  # the probe answers again: after that heartbeat the fallbacks stop
    fake.calls.clear()
    await sensor.read(None)
    await sensor.read(None)
    assert fake.calls == ["probe", "log", "ioreg", "probe"]


# --- settings and registration -------------------------------------------------------------------


def test_registered_through_the_entry_point_with_its_settings():
    host = make_host("node-meeting")
    config = make_config(host, {"FLEET_NODE_MEETING_CONFIRM": "3",
                                "FLEET_NODE_MEETING_IGNORE": " BlackHole , ,com.apple.dictation",
                                "FLEET_NODE_HEARTBEAT_INTERVAL": "30"})
    [sensor] = host.sensors(config)
    assert (sensor.name, sensor.order) == ("meeting", 60)
    assert sensor.debounce.confirm == 3 and sensor.debounce.release == 2
    assert sensor.timeout == 2.0 and sensor.enabled is True
    assert sensor.ignore == ("blackhole", "com.apple.dictation")
    assert sensor.log_argv()[:4] == [LOG_COMMAND, "show", "--last", "60s"]
    assert sensor.platform == sys.platform
    assert {s.env for s in herd_settings()} == {s.env for s in SETTINGS}
    assert all(s.scope == "node" and s.env.startswith("FLEET_NODE_MEETING_") for s in SETTINGS)


def test_the_probe_runs_isolated_with_this_interpreter():
    argv = MeetingSensor().probe_argv()
    assert argv == [sys.executable, "-I", "-S", str(PROBE_SCRIPT)] and PROBE_SCRIPT.is_file()


# --- the real runner, against fake executables ---------------------------------------------------


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def dead(pid: int) -> bool:
    """Gone, or a zombie nobody has reaped yet (PID 1 in a container may not reap)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except FileNotFoundError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] in ("Z", "X")


posix_only = pytest.mark.skipif(sys.platform == "win32" or not Path("/proc").is_dir(),
                                reason="fake executables are shell scripts; liveness via /proc")


@posix_only
async def test_runner_returns_a_commands_output(tmp_path):
    recorded = ioreg_output(input_state=1)
    printer = script(tmp_path / "ioreg", f"cat <<'EOF'\n{recorded}EOF\n")
    code, out = await run_command([str(printer), "-r", "-l"], 5.0)
    assert code == 0 and out == recorded
    assert microphone_from_ioreg(out).in_use is True


@posix_only
async def test_runner_reports_a_failing_commands_exit_code(tmp_path):
    failing = script(tmp_path / "log", "echo 'log: Could not open local log store' >&2\nexit 64\n")
    assert await run_command([str(failing)], 5.0) == (64, "")


@posix_only
async def test_runner_kills_a_command_that_outlives_its_timeout(tmp_path):
    pids = tmp_path / "pids"
    slow = script(tmp_path / "slow", f'echo $$ > {pids}\nsleep 60 &\necho $! >> {pids}\nwait\n')
    assert await run_command([str(slow)], 0.5) == (None, "")
    shell, child = (int(p) for p in pids.read_text().split())
    await wait_for(lambda: dead(shell) and dead(child), timeout=5)  # the whole group, not just sh


@posix_only
async def test_runner_kills_the_command_when_the_caller_is_cancelled(tmp_path):
    pids = tmp_path / "pids"
    slow = script(tmp_path / "slow", f'echo $$ > {pids}\nsleep 60 &\necho $! >> {pids}\nwait\n')
    task = asyncio.create_task(run_command([str(slow)], 60.0))
    await wait_for(lambda: pids.exists() and len(pids.read_text().split()) == 2)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    shell, child = (int(p) for p in pids.read_text().split())
    await wait_for(lambda: dead(shell) and dead(child), timeout=5)


@posix_only
async def test_runner_treats_missing_and_unrunnable_commands_as_no_answer(tmp_path):
    assert await run_command([str(tmp_path / "no-such-command")], 1.0) == (None, "")
    not_executable = tmp_path / "ioreg"
    not_executable.write_text("#!/bin/sh\necho hi\n")  # no execute bit
    assert await run_command([str(not_executable)], 1.0) == (None, "")


@posix_only
async def test_sensor_with_the_real_runner_and_a_slow_probe(tmp_path):
    # the probe's interpreter hangs: the reading still comes back, unknown, within the timeout
    hang = script(tmp_path / "python3", "sleep 60\n")
    sensor = MeetingSensor(platform="darwin", python=str(hang), timeout=0.3)
    fragment = await sensor.read(None)
    assert "paused" not in fragment and meeting(fragment)["camera"] is None


# --- the ctypes probe, against fake frameworks built from C --------------------------------------


@pytest.fixture(scope="module")
def fake_frameworks(tmp_path_factory):
    compiler = shutil.which("cc") or shutil.which("gcc") or shutil.which("clang")
    if compiler is None or sys.platform == "win32":
        pytest.skip("no C compiler to build the fake frameworks")
    library = tmp_path_factory.mktemp("frameworks") / "fake_frameworks.so"
    source = Path(__file__).with_name("fake_frameworks.c")
    subprocess.run([compiler, "-shared", "-fPIC", "-o", str(library), str(source)], check=True)
    return [arg for name in ("coreaudio", "coremediaio", "corefoundation")
            for arg in ("--library", f"{name}={library}")]


async def run_probe(library_args, monkeypatch, **env):
    # the child inherits the environment (-I only ignores PYTHON* variables): the fake reads it
    for key in ("FAKE_MIC", "FAKE_CAM", "FAKE_OLD_MACOS"):
        monkeypatch.delenv(key, raising=False)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    code, out = await run_command([*MeetingSensor().probe_argv(), *library_args], 10.0)
    data = load_probe(code, out)
    assert data is not None and data["errors"] == {}, out
    return data


async def test_probe_reads_the_framework_properties_through_ctypes(fake_frameworks, monkeypatch):
    idle = await run_probe(fake_frameworks, monkeypatch)
    assert [c["name"] for c in idle["cameras"]] == ["FaceTime HD Camera", "OBS Virtual Camera"]
    # the speakers have no input streams, so they are not listed as a microphone
    assert [(m["name"], m["transport"], m["output"]) for m in idle["microphones"]] == [
        ("MacBook Pro Microphone", "bltn", False), ("BlackHole 2ch", "virt", True)]
    assert idle["processes"][1] == {"pid": 903, "bundle_id": "com.obsproject.obs-studio",
                                    "running_input": True, "input_devices": [42]}
    assert camera_from_probe(idle).in_use is False  # only the virtual camera runs
    assert microphone_from_probe(idle).in_use is False  # only OBS, from the virtual device

    mic = microphone_from_probe(await run_probe(fake_frameworks, monkeypatch, FAKE_MIC="1"))
    assert (mic.in_use, mic.source, mic.using) == (True, "coreaudio-process", ("us.zoom.xos",))

    old = await run_probe(fake_frameworks, monkeypatch, FAKE_CAM="1", FAKE_OLD_MACOS="1")
    assert old["processes"] is None
    assert camera_from_probe(old).using == ("FaceTime HD Camera",)
    assert microphone_from_probe(old).source == "coreaudio-device"


async def test_probe_on_a_machine_without_the_frameworks_says_so():
    if sys.platform == "darwin":
        pytest.skip("this is a Mac: the frameworks exist")
    code, out = await run_command(MeetingSensor().probe_argv(), 10.0)
    data = load_probe(code, out)
    assert data["cameras"] is None and data["microphones"] is None and data["errors"]
    assert camera_from_probe(data).in_use is None and microphone_from_probe(data).in_use is None


# --- end to end: the real router and node agent on loopback --------------------------------------


class FakeMacPlugin:
    """The meeting plugin's hooks, with its sensor on a fake Mac."""

    def __init__(self, fake: FakeMac) -> None:
        self.fake = fake

    @hookimpl
    def herd_settings(self):
        return herd_settings()

    @hookimpl
    def herd_node_sensors(self, config):
        return [MeetingSensor.from_config(config, run=self.fake, platform="darwin")]


def fake_ollama() -> web.Application:
    async def tags(_):
        return web.json_response({"models": [{"name": "llama3.2:3b", "model": "llama3.2:3b",
                                              "size": 2019393189, "details": {"family": "llama"}}]})

    async def ps(_):
        return web.json_response({"models": []})

    async def version(_):
        return web.json_response({"version": "0.12.3"})

    app = web.Application()
    app.router.add_get("/api/tags", tags)
    app.router.add_get("/api/ps", ps)
    app.router.add_get("/api/version", version)
    return app


async def test_router_stops_and_resumes_routing_to_a_mac_in_a_meeting(
    herd_router, aiohttp_server, tmp_path
):
    ollama = await aiohttp_server(fake_ollama())
    router = await herd_router(plugins="backend-ollama")
    fleet = router.services.fleet
    applied: list[bool] = []  # `paused` of every heartbeat the router applied, in order
    original = fleet.apply_heartbeat

    def spy(hb, peer_ip=None, **kwargs):
        applied.append(hb.paused)
        return original(hb, peer_ip=peer_ip, **kwargs)

    fleet.apply_heartbeat = spy

    fake = FakeMac(IDLE)
    host = make_host("backend-ollama", extra=[FakeMacPlugin(fake)])
    config = make_config(
        host, {"FLEET_NODE_DATA_DIR": str(tmp_path / "node")},
        FLEET_NODE_ROUTER_URL=router.url, FLEET_NODE_OLLAMA_HOST=str(ollama.make_url("/"))[:-1],
        FLEET_NODE_NODE_ID="studio-mac", FLEET_NODE_HEARTBEAT_INTERVAL=0.2,
    )
    agent = NodeAgent(config, host)
    task = asyncio.create_task(agent.run())
    request = RouteRequest(model="llama3.2:3b", api="ollama", path="/api/chat", stream=True)
    try:
        await wait_for(lambda: "studio-mac" in fleet.nodes and fleet.nodes["studio-mac"].available)
        node = fleet.nodes["studio-mac"]
        assert node.heartbeat.extras["meeting"]["active"] is False
        assert isinstance(router.services.scorer.choose(request), Decision)

        # the camera comes on. The agent collects, then sends, then sleeps, so when the probe
        # runs no heartbeat is in flight: the one being collected is the next the router applies
        marks: list[int] = []
        fake.on_probe = lambda output: marks.append(len(applied)) if output is CAMERA_ON else None
        fake.probe = CAMERA_ON
        await wait_for(lambda: fleet.nodes["studio-mac"].heartbeat.paused)
        assert applied[marks[0]] is True  # paused by the very next heartbeat
        assert fleet.nodes["studio-mac"].heartbeat.extras["meeting"]["camera"] is True
        result = router.services.scorer.choose(request)
        assert isinstance(result, NoRoute) and result.eliminated == {"studio-mac": "paused"}

        # the meeting ends: still paused for one heartbeat (release 2), then routable again
        marks.clear()
        fake.on_probe = lambda output: marks.append(len(applied)) if output is IDLE else None
        fake.probe = IDLE
        await wait_for(lambda: not fleet.nodes["studio-mac"].heartbeat.paused)
        assert applied[marks[0]:marks[0] + 2] == [True, False]
        decision = router.services.scorer.choose(request)
        assert isinstance(decision, Decision) and decision.node.node_id == "studio-mac"
    finally:
        agent.stop()
        await task
