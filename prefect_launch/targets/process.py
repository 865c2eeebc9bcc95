"""Child processes for targets that run a command on the agent's machine.

Both local targets start an argv list in its own process group, stream its
output line by line into the run's log, and map its exit to an outcome;
they differ only in how a cancelled job is stopped.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import threading
from typing import Callable

from prefect_launch.errors import LaunchError
from prefect_launch.targets.base import Handle, Outcome

Log = logging.Logger | logging.LoggerAdapter

STOP_GRACE_SECONDS = 10.0


def start(argv: list[str], env: dict[str, str], cwd: str | None, log: Log) -> Handle:
    try:
        proc = subprocess.Popen(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except OSError as exc:
        raise LaunchError(f"entry point {argv[0]!r} could not start: {exc.strerror or exc}") from None
    log.info("Started process %s: %s", proc.pid, " ".join(argv))
    return Handle(id=str(proc.pid), detail=proc)


def follow(
    handle: Handle,
    cancel: threading.Event,
    log: Log,
    stop: Callable[[subprocess.Popen[str]], None],
    describe_exit: Callable[[int], str] = lambda code: f"process exited with code {code}",
) -> Outcome:
    """Stream the process's output until it ends; call `stop` once if `cancel` is set first."""
    proc: subprocess.Popen[str] = handle.detail
    finished = threading.Event()
    stopped = threading.Event()

    def stop_on_cancel() -> None:
        while not finished.is_set():
            if cancel.wait(0.25):
                stopped.set()
                stop(proc)
                return

    threading.Thread(target=stop_on_cancel, name=f"cancel-{proc.pid}", daemon=True).start()
    assert proc.stdout is not None
    for line in proc.stdout:
        log.info(line.rstrip("\n"))
    code = proc.wait()
    finished.set()
    if stopped.is_set():
        return Outcome(state="cancelled", message="stopped on cancel", exit_code=code)
    return exit_outcome(code, describe_exit)


def exit_outcome(code: int, describe_exit: Callable[[int], str] = lambda code: f"process exited with code {code}") -> Outcome:
    """A finished process's exit code as an outcome."""
    if code == 0:
        return Outcome(state="completed", exit_code=0)
    if code < 0:
        return Outcome(state="failed", message=f"process killed by {signal.Signals(-code).name}", exit_code=code)
    return Outcome(state="failed", message=describe_exit(code), exit_code=code)


def stop_group(proc: subprocess.Popen[str]) -> None:
    """SIGTERM the process group, then SIGKILL what is left after a grace period."""
    for sig, grace in ((signal.SIGTERM, STOP_GRACE_SECONDS), (signal.SIGKILL, None)):
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            return
        if grace is None:
            return
        try:
            proc.wait(timeout=grace)
            return
        except subprocess.TimeoutExpired:
            continue
