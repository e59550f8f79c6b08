"""Child-process probe: ask CoreAudio and CoreMediaIO which capture devices are in use right now
and print the answer as one JSON object on stdout.

The node agent runs this file with its own interpreter (``python -I -S macos_probe.py``), never
imports it: a wedged ``coreaudiod`` or camera daemon then hangs a process the sensor can kill,
not a thread it cannot. Standard library only (``ctypes``), so no compiler, Xcode or Swift
toolchain is needed on the Mac. Asking these properties needs no camera or microphone permission:
nothing here opens a stream.

Output (``null`` where a framework could not be asked, with the reason under ``errors``)::

    {"cameras": [{"id": 33, "name": "FaceTime HD Camera", "transport": "bltn", "running": true}],
     "microphones": [{"id": 61, "name": "MacBook Pro Microphone", "transport": "bltn",
                      "running": false, "output": false}],
     "processes": [{"pid": 812, "bundle_id": "us.zoom.xos", "running_input": true,
                    "input_devices": [61]}],
     "errors": {}}

``processes`` is ``null`` before macOS 14.2, which has no per-process audio objects.
"""

from __future__ import annotations

import ctypes
import json
import sys
from typing import Any


def fourcc(code: str) -> int:
    return int.from_bytes(code.encode("ascii"), "big")


def fourcc_text(value: int) -> str:
    if not value:
        return ""
    return value.to_bytes(4, "big").decode("ascii", "replace").strip()


# Values from the SDK headers (AudioHardware.h, AudioHardwareBase.h, CMIOHardwareObject.h,
# CMIOHardwareDevice.h). CoreAudio and CoreMediaIO share the HAL property model and the codes.
SYSTEM_OBJECT = 1  # kAudioObjectSystemObject, kCMIOObjectSystemObject
SCOPE_GLOBAL = fourcc("glob")
SCOPE_INPUT = fourcc("inpt")
SCOPE_OUTPUT = fourcc("outp")
ELEMENT_MAIN = 0
DEVICES = fourcc("dev#")  # kAudioHardwarePropertyDevices, kCMIOHardwarePropertyDevices
NAME = fourcc("lnam")  # kAudioObjectPropertyName, kCMIOObjectPropertyName (a CFString, +1)
STREAMS = fourcc("stm#")  # kAudioDevicePropertyStreams (scoped input / output)
TRANSPORT = fourcc("tran")  # kAudioDevicePropertyTransportType, kCMIODevicePropertyTransportType
RUNNING_SOMEWHERE = fourcc("gone")  # k{Audio,CMIO}DevicePropertyDeviceIsRunningSomewhere
PROCESSES = fourcc("prs#")  # kAudioHardwarePropertyProcessObjectList (macOS 14.2+)
PROCESS_PID = fourcc("ppid")  # kAudioProcessPropertyPID
PROCESS_BUNDLE = fourcc("pbid")  # kAudioProcessPropertyBundleID (a CFString, +1)
PROCESS_INPUT = fourcc("piri")  # kAudioProcessPropertyIsRunningInput
PROCESS_DEVICES = fourcc("pdv#")  # kAudioProcessPropertyDevices (scoped)
CF_UTF8 = 0x08000100  # kCFStringEncodingUTF8

FRAMEWORKS = {
    "coreaudio": "/System/Library/Frameworks/CoreAudio.framework/CoreAudio",
    "coremediaio": "/System/Library/Frameworks/CoreMediaIO.framework/CoreMediaIO",
    "corefoundation": "/System/Library/Frameworks/CoreFoundation.framework/CoreFoundation",
}


class Address(ctypes.Structure):
    """AudioObjectPropertyAddress / CMIOObjectPropertyAddress: three UInt32s."""

    _fields_ = [
        ("selector", ctypes.c_uint32),
        ("scope", ctypes.c_uint32),
        ("element", ctypes.c_uint32),
    ]


class ProbeError(Exception):
    pass


class HAL:
    """The few HAL calls we need, over CoreAudio (``AudioObject*``) or CoreMediaIO
    (``CMIOObject*``).

    The two differ in one place: CoreAudio's GetPropertyData takes the buffer size in/out through
    one pointer, CoreMediaIO's takes it by value and reports the bytes used through another.
    """

    def __init__(self, lib: ctypes.CDLL, cf: ctypes.CDLL, prefix: str) -> None:
        self.cmio = prefix == "CMIO"
        self._size = getattr(lib, f"{prefix}ObjectGetPropertyDataSize")
        self._size.restype = ctypes.c_int32
        self._size.argtypes = [
            ctypes.c_uint32, ctypes.POINTER(Address), ctypes.c_uint32, ctypes.c_void_p,
            ctypes.POINTER(ctypes.c_uint32),
        ]
        self._get = getattr(lib, f"{prefix}ObjectGetPropertyData")
        self._get.restype = ctypes.c_int32
        if self.cmio:
            self._get.argtypes = [
                ctypes.c_uint32, ctypes.POINTER(Address), ctypes.c_uint32, ctypes.c_void_p,
                ctypes.c_uint32, ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p,
            ]
        else:
            self._get.argtypes = [
                ctypes.c_uint32, ctypes.POINTER(Address), ctypes.c_uint32, ctypes.c_void_p,
                ctypes.POINTER(ctypes.c_uint32), ctypes.c_void_p,
            ]
        self._cf_cstring = cf.CFStringGetCString
        self._cf_cstring.restype = ctypes.c_ubyte
        self._cf_cstring.argtypes = [
            ctypes.c_void_p, ctypes.c_char_p, ctypes.c_long, ctypes.c_uint32,
        ]
        self._cf_release = cf.CFRelease
        self._cf_release.restype = None
        self._cf_release.argtypes = [ctypes.c_void_p]

    def size(self, obj: int, selector: int, scope: int = SCOPE_GLOBAL) -> int:
        address = Address(selector, scope, ELEMENT_MAIN)
        out = ctypes.c_uint32(0)
        status = self._size(obj, ctypes.byref(address), 0, None, ctypes.byref(out))
        if status != 0:
            raise ProbeError(f"size of {fourcc_text(selector)!r} on {obj}: OSStatus {status}")
        return out.value

    def read_into(self, obj: int, selector: int, scope: int, buffer: Any) -> int:
        """Fill ``buffer`` (a ctypes object); return the bytes the framework wrote."""
        address = Address(selector, scope, ELEMENT_MAIN)
        capacity = ctypes.sizeof(buffer)
        if self.cmio:
            used = ctypes.c_uint32(0)
            status = self._get(obj, ctypes.byref(address), 0, None, capacity, ctypes.byref(used),
                               ctypes.byref(buffer))
            written = used.value
        else:
            io_size = ctypes.c_uint32(capacity)
            status = self._get(obj, ctypes.byref(address), 0, None, ctypes.byref(io_size),
                               ctypes.byref(buffer))
            written = io_size.value
        if status != 0:
            raise ProbeError(f"{fourcc_text(selector)!r} on {obj}: OSStatus {status}")
        return written

    def ids(self, obj: int, selector: int, scope: int = SCOPE_GLOBAL) -> list[int]:
        count = self.size(obj, selector, scope) // 4
        if count == 0:
            return []
        buffer = (ctypes.c_uint32 * count)()
        written = self.read_into(obj, selector, scope, buffer)
        return list(buffer[: written // 4])

    def uint32(self, obj: int, selector: int, scope: int = SCOPE_GLOBAL) -> int:
        value = ctypes.c_uint32(0)
        self.read_into(obj, selector, scope, value)
        return value.value

    def int32(self, obj: int, selector: int, scope: int = SCOPE_GLOBAL) -> int:
        value = ctypes.c_int32(0)
        self.read_into(obj, selector, scope, value)
        return value.value

    def string(self, obj: int, selector: int) -> str | None:
        ref = ctypes.c_void_p(None)
        self.read_into(obj, selector, SCOPE_GLOBAL, ref)
        if not ref.value:
            return None
        try:
            text = ctypes.create_string_buffer(1024)
            if not self._cf_cstring(ref.value, text, len(text), CF_UTF8):
                return None
            return text.value.decode("utf-8", "replace")
        finally:
            self._cf_release(ref.value)  # the property getters hand out a retained CFString

    def maybe(self, call: Any, *args: Any) -> Any:
        """A property that a device may lack: None instead of an error."""
        try:
            return call(*args)
        except ProbeError:
            return None


def _running(hal: HAL, device: int) -> bool | None:
    value = hal.maybe(hal.uint32, device, RUNNING_SOMEWHERE)
    return None if value is None else value != 0


def cameras(hal: HAL) -> list[dict[str, Any]]:
    out = []
    for device in hal.ids(SYSTEM_OBJECT, DEVICES):
        out.append({
            "id": device,
            "name": hal.maybe(hal.string, device, NAME),
            "transport": fourcc_text(hal.maybe(hal.uint32, device, TRANSPORT) or 0),
            "running": _running(hal, device),
        })
    return out


def microphones(hal: HAL) -> list[dict[str, Any]]:
    out = []
    for device in hal.ids(SYSTEM_OBJECT, DEVICES):
        if not hal.maybe(hal.size, device, STREAMS, SCOPE_INPUT):
            continue  # no input streams: a speaker, not a microphone
        out.append({
            "id": device,
            "name": hal.maybe(hal.string, device, NAME),
            "transport": fourcc_text(hal.maybe(hal.uint32, device, TRANSPORT) or 0),
            "running": _running(hal, device),
            # "running somewhere" covers both directions: on a device that also plays sound
            # (a USB headset, AirPods) it is true for music too
            "output": bool(hal.maybe(hal.size, device, STREAMS, SCOPE_OUTPUT)),
        })
    return out


def processes(hal: HAL) -> list[dict[str, Any]] | None:
    try:
        objects = hal.ids(SYSTEM_OBJECT, PROCESSES)
    except ProbeError:
        return None  # before macOS 14.2 the property does not exist
    out = []
    for process in objects:
        running = hal.maybe(hal.uint32, process, PROCESS_INPUT)
        out.append({
            "pid": hal.maybe(hal.int32, process, PROCESS_PID),
            "bundle_id": hal.maybe(hal.string, process, PROCESS_BUNDLE),
            "running_input": None if running is None else running != 0,
            "input_devices": hal.maybe(hal.ids, process, PROCESS_DEVICES, SCOPE_INPUT) or [],
        })
    return out


def probe(paths: dict[str, str]) -> dict[str, Any]:
    result: dict[str, Any] = {"cameras": None, "microphones": None, "processes": None, "errors": {}}
    try:
        cf = ctypes.CDLL(paths["corefoundation"])
    except OSError as exc:
        result["errors"]["corefoundation"] = str(exc)
        return result
    try:
        audio = HAL(ctypes.CDLL(paths["coreaudio"]), cf, "Audio")
        result["microphones"] = microphones(audio)
        result["processes"] = processes(audio)
    except (OSError, AttributeError, ProbeError) as exc:
        result["errors"]["coreaudio"] = str(exc)
    try:
        media = HAL(ctypes.CDLL(paths["coremediaio"]), cf, "CMIO")
        result["cameras"] = cameras(media)
    except (OSError, AttributeError, ProbeError) as exc:
        result["errors"]["coremediaio"] = str(exc)
    return result


def main(argv: list[str]) -> int:
    # ``--library name=path`` points at another build of a framework; the tests use it to load
    # a fake compiled from C, since this machine may not be a Mac
    paths = dict(FRAMEWORKS)
    args = iter(argv)
    for arg in args:
        if arg == "--library":
            name, _, path = next(args, "").partition("=")
            if name not in paths or not path:
                print(f"usage: macos_probe.py [--library {{{','.join(paths)}}}=PATH]...",
                      file=sys.stderr)
                return 2
            paths[name] = path
    print(json.dumps(probe(paths)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
