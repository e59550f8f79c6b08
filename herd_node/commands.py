"""Run one external command without blocking the event loop, and never for longer than asked:
the one subprocess runner node-side plugins share (sensors probing ``nvidia-smi``, ``sysctl``,
macOS frameworks...).

``run_command`` is also the seam: a sensor takes any coroutine with its signature, and tests hand
it recorded output instead of the real machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import Awaitable, Callable, Sequence

# (return code, stdout); the code is None when the command could not be started or ran too long
Result = tuple[int | None, str]
Runner = Callable[[Sequence[str], float], Awaitable[Result]]

NO_ANSWER: Result = (None, "")


async def run_command(argv: Sequence[str], timeout: float) -> Result:
    """Run ``argv`` (no shell) and return its exit code and stdout.

    A missing or unrunnable command, or one still running after ``timeout`` seconds, gives
    ``(None, "")``. A command that times out, or whose caller is cancelled, is killed with its
    whole process group, so a script's children die with it.
    """
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            start_new_session=True,  # its own process group: see _kill
        )
    except OSError:  # not found, not executable, no such interpreter...
        return NO_ANSWER
    try:
        stdout, _ = await asyncio.wait_for(proc.communicate(), timeout)
    except TimeoutError:
        await _kill(proc)
        return NO_ANSWER
    except asyncio.CancelledError:
        # the caller's budget (e.g. the agent's per-sensor timeout) ran out first: no orphans
        await _kill(proc)
        raise
    return proc.returncode, stdout.decode("utf-8", "replace")


async def _kill(proc: asyncio.subprocess.Process) -> None:
    with contextlib.suppress(ProcessLookupError):
        if hasattr(os, "killpg"):
            os.killpg(proc.pid, signal.SIGKILL)
        else:  # Windows has no process groups; the sensor never runs commands there anyway
            proc.kill()
    await proc.wait()
    # read the pipe to its end so its transport closes now rather than warn when collected; a
    # grandchild that left the group could hold it open, hence the bound
    if proc.stdout is not None:
        with contextlib.suppress(Exception):
            await asyncio.wait_for(proc.stdout.read(), 1.0)
