"""Child processes for targets that run a command on the agent's machine.

Both local targets start an argv list in its own process group, stream its
output line by line into the run's log, and map its exit to an outcome;
they differ only in how a cancelled job is stopped.

Given a run cookie (local-process, see `process_tree`), every process the job
starts carries it: whatever is left when its main process exits or is stopped
on cancel is stopped too, and the agent's death watch stops the whole job if
the agent dies. The run ends when the job's main process exits, not when its
output closes: a daemon that keeps stdout open does not hold the run (or its
job slot).
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import threading
import time
from pathlib import Path
from typing import Callable

from prefect_launch.cancel import CancelWatch
from prefect_launch.errors import LaunchError
from prefect_launch.redact import redact
from prefect_launch.targets import process_tree
from prefect_launch.targets.base import Handle, Outcome

Log = logging.Logger | logging.LoggerAdapter

STOP_GRACE_SECONDS = process_tree.STOP_GRACE_SECONDS
# A longer line of the job's output goes to its log in pieces of this many characters.
MAX_LOG_LINE = 65_536
# After the main process exits, output still arriving is read this long (a process outside the run may hold it).
DRAIN_SECONDS = 5.0


class Job(subprocess.Popen):
    """The started process, with the run cookie every process of the job carries (None: not tracked), and where
    its target records its exit code (None: nowhere)."""

    cookie: str | None = None
    exit_record: Path | None = None


def start(argv: list[str], env: dict[str, str], cwd: str | None, log: Log, cookie: str | None = None,
          found_record: Path | None = None) -> Handle:
    """Start `argv` in a new session; with a `cookie`, in its environment and on this agent's death watch (which
    writes into `found_record` how many of the job's processes it found if the agent dies first)."""
    if cookie is not None:
        env = {**env, process_tree.COOKIE_ENV: cookie}
        # Before the job exists: an agent dying at once still stops it.
        process_tree.DeathWatch.register(cookie, str(found_record or ""))
    try:
        proc = Job(
            argv,
            cwd=cwd,
            env=env,
            stdin=subprocess.DEVNULL,
            # Two pipes, not one: a line the job writes in pieces (`print` under PYTHONUNBUFFERED writes its
            # text, then its newline) is never cut by a line of the other stream in the run's log.
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            start_new_session=True,
            text=True,
            errors="replace",
            bufsize=1,
        )
    except OSError as exc:
        if cookie is not None:
            process_tree.DeathWatch.unregister(cookie)
        raise LaunchError(f"entry point {argv[0]!r} could not start: {exc.strerror or exc}") from None
    proc.cookie = cookie
    log.info("Started process %s: %s", proc.pid, " ".join(redact(argv)))
    return Handle(id=str(proc.pid), detail=proc)


def follow(
    handle: Handle,
    cancel: threading.Event,
    log: Log,
    stop: Callable[[subprocess.Popen[str]], None],
    describe_exit: Callable[[int], str] = lambda code: f"process exited with code {code}",
    on_exit: Callable[[int], None] | None = None,
) -> Outcome:
    """Stream the process's output until it exits; call `stop` once if `cancel` is set first, and `on_exit`
    with its exit code the moment it exits (before what is left of its output is read)."""
    proc: subprocess.Popen[str] = handle.detail
    lines: queue.Queue[str | None] = queue.Queue()  # both streams' lines; None as each one closes
    streams = (proc.stdout, proc.stderr)

    def read(stream) -> None:
        try:
            # Bounded reads: a job printing megabytes without a newline costs the agent one piece at a time.
            while line := stream.readline(MAX_LOG_LINE):
                lines.put(line)
        except (OSError, ValueError):
            pass
        lines.put(None)

    watch = CancelWatch(cancel, lambda: stop(proc), name=f"cancel-{proc.pid}")
    for stream in streams:
        threading.Thread(target=read, args=(stream,), name=f"output-{proc.pid}", daemon=True).start()
    open_streams, eof = len(streams), False
    while not eof:
        try:
            line = lines.get(timeout=0.25)
        except queue.Empty:
            if proc.poll() is not None:
                break
            continue
        if line is None:
            open_streams -= 1
            eof = open_streams == 0
        else:
            log.info(line.rstrip("\n"))
    code = proc.wait()
    watch.done()
    if on_exit is not None and not watch.stopped:
        on_exit(code)
    cookie = getattr(proc, "cookie", None)
    try:
        if cookie is not None:
            # The run ends with its main process: what it left running (daemons included) is stopped.
            left = process_tree.kill_tree(cookie, process_tree.LEFTOVER_GRACE_SECONDS)
            if left:
                log.warning("Stopped %d process(es) the job left running: %s", len(left), ", ".join(left))
        deadline = time.monotonic() + DRAIN_SECONDS
        while not eof:
            try:
                line = lines.get(timeout=max(0.0, deadline - time.monotonic()))
            except queue.Empty:
                log.warning("The job's output is still held open by a process outside the run; not read further")
                break
            if line is None:
                open_streams -= 1
                eof = open_streams == 0
            else:
                log.info(line.rstrip("\n"))
    finally:
        if cookie is not None:
            process_tree.DeathWatch.unregister(cookie)
    if watch.stopped:
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
    """SIGTERM the process group, then SIGKILL what is left after a grace period (by run cookie, if any:
    processes that left the group too)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=STOP_GRACE_SECONDS)
        return
    except subprocess.TimeoutExpired:
        pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    cookie = getattr(proc, "cookie", None)
    if cookie is not None:
        process_tree.kill_tree(cookie, grace=0.0)
