"""Every process of a local job, found and killed by a per-run cookie; and the watcher that kills them
when their agent dies.

Why a cookie, and not a process group or a cgroup:

- A process group is left by anything that calls `setsid` (every daemon does), so it cannot find a
  job's daemons; it is still what gets the polite SIGTERM on cancel.
- A cgroup per run would hold everything, but creating one needs a writable, delegated cgroup v2
  tree: root, or a systemd unit with `Delegate=`. Agents run as ordinary users, in containers, on
  cgroup v1 hosts (this machine mounts v2 only beside v1), so a cgroup cannot be what every agent
  relies on.
- The cookie (`PREFECT_LAUNCH_RUN_COOKIE=<launch flow run id>` in the job's environment, as Jenkins'
  ProcessTreeKiller does with its build cookie) is inherited by every process the job starts,
  through `fork`, `exec`, `setsid` and double forks, and `/proc/<pid>/environ` shows it to the same
  user (or root): any process on the machine, another agent adopting the run among them, finds them
  all from the run's id alone. A process that clears its own environment (`env -i`) escapes; that
  is the known limit.

The job stays a direct child of its agent (its parent pid is the agent's). The agent is not a child
subreaper: it would have to reap orphans it never started, racing `subprocess` for its own
children's exit statuses, and the cookie finds orphans without it.

When the agent dies, even by SIGKILL, its jobs die too: each agent process has one watcher (this file
run as a script, standard library only, in a session of its own) that reads the cookies of the
agent's running jobs from a pipe whose only writer is the agent. End-of-file on that pipe means the
agent is gone: the watcher stops every process of every job still registered at once, looks again
`EXEC_GRACE_SECONDS` later (for a job forked but not yet exec'd), and exits. For each job registered
with a record file it then writes how many of its processes it found (`found_record`): 0 tells an
adopter on this machine that the job never started (the agent died between registering it and
starting it), as no process of it was left to stop.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from typing import Iterable

COOKIE_ENV = "PREFECT_LAUNCH_RUN_COOKIE"
# What a job's main process leaves behind gets this long after SIGTERM before SIGKILL.
LEFTOVER_GRACE_SECONDS = 5.0
# The watcher looks for a dead agent's jobs again this long after its death: a job forked as the agent died
# carries its cookie only once it has exec'd.
EXEC_GRACE_SECONDS = 0.5
STOP_GRACE_SECONDS = 10.0
KILL_SECONDS = 30.0


def _state(pid: int) -> str | None:
    """The process's state letter (`Z` for a zombie); None if it is gone."""
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read().decode(errors="replace")
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[0]


def _alive(pid: int) -> bool:
    return _state(pid) not in (None, "Z", "X")


def processes_with(cookies: Iterable[str]) -> list[int]:
    """The live processes on this machine whose environment carries one of these run cookies."""
    needles = [f"\0{COOKIE_ENV}={cookie}\0".encode() for cookie in cookies]
    if not needles:
        return []
    found = []
    me = os.getpid()
    try:
        entries = os.listdir("/proc")
    except OSError:
        return []
    for entry in entries:
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            with open(f"/proc/{entry}/environ", "rb") as f:
                environ = b"\0" + f.read()
        except OSError:  # gone, or another user's
            continue
        if any(needle in environ for needle in needles) and _alive(int(entry)):
            found.append(int(entry))
    return found


def describe(pid: int) -> str:
    try:
        cmdline = open(f"/proc/{pid}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace").strip()
    except OSError:
        cmdline = ""
    return f"{pid} ({cmdline or '?'})"


def _signal_all(pids: list[int], sig: int) -> None:
    for pid in pids:
        try:
            os.kill(pid, sig)
        except (ProcessLookupError, PermissionError):
            pass


def kill_tree(cookies: str | Iterable[str], grace: float) -> list[str]:
    """SIGTERM every process of the run(s), SIGKILL what is left after `grace` s, and wait until none
    is left (processes forked meanwhile included). Returns what was found, described."""
    cookies = [cookies] if isinstance(cookies, str) else list(cookies)
    pids = processes_with(cookies)
    if not pids:
        return []
    seen = {pid: describe(pid) for pid in pids}
    _signal_all(pids, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while pids and time.monotonic() < deadline:
        time.sleep(0.05)
        pids = processes_with(cookies)
        seen.update({pid: describe(pid) for pid in pids if pid not in seen})
    give_up = time.monotonic() + KILL_SECONDS
    while pids and time.monotonic() < give_up:
        _signal_all(pids, signal.SIGKILL)
        time.sleep(0.02)
        pids = processes_with(cookies)
        seen.update({pid: describe(pid) for pid in pids if pid not in seen})
    return list(seen.values())


class DeathWatch:
    """This agent process's watcher: jobs registered here are stopped if the agent dies."""

    _lock = threading.Lock()
    _proc: subprocess.Popen | None = None
    _cookies: dict[str, str] = {}  # cookie -> the file the watcher writes what it found into ("": none)

    @classmethod
    def register(cls, cookie: str, found_record: str = "") -> None:
        """Watch the job with this cookie; if the agent dies first, write how many of its processes were left into
        `found_record` (when given), then stop them."""
        with cls._lock:
            cls._cookies[cookie] = found_record
            cls._send(f"+{cookie}\t{found_record}\n")

    @classmethod
    def unregister(cls, cookie: str) -> None:
        with cls._lock:
            cls._cookies.pop(cookie, None)
            cls._send(f"-{cookie}\n")

    @classmethod
    def _send(cls, line: str) -> None:
        for _ in range(2):
            if cls._proc is None or cls._proc.poll() is not None:
                if line.startswith("-"):
                    return  # a new watcher gets the cookies still registered, not this one
                cls._start()
            try:
                cls._proc.stdin.write(line.encode())
                cls._proc.stdin.flush()
                return
            except (BrokenPipeError, OSError):
                cls._proc = None

    @classmethod
    def _start(cls) -> None:
        cls._proc = subprocess.Popen(
            [sys.executable, "-I", os.path.abspath(__file__), str(os.getpid())],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            start_new_session=True, env={k: v for k, v in os.environ.items() if k != COOKIE_ENV},
        )
        cls._proc.stdin.write("".join(f"+{cookie}\t{record}\n" for cookie, record in cls._cookies.items()).encode())


def _watch(agent: int) -> None:
    """The watcher's loop: keep the registered cookies; at end-of-file (the agent is gone) stop their jobs."""
    for sig in (signal.SIGINT, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)  # a Ctrl-C to the agent's terminal is the agent's to handle
    cookies: dict[str, str] = {}  # cookie -> found record ("": none)
    for raw in sys.stdin.buffer:
        line = raw.decode(errors="replace").rstrip("\n")
        if line.startswith("+"):
            cookie, _, record = line[1:].partition("\t")
            cookies[cookie] = record
        elif line.startswith("-"):
            cookies.pop(line[1:], None)
    if cookies:
        looked = time.monotonic()
        found = {cookie: len(processes_with([cookie])) for cookie in cookies}
        kill_tree(list(cookies), STOP_GRACE_SECONDS)  # at once: a job must not outlive its agent to finish unseen
        time.sleep(max(0.0, looked + EXEC_GRACE_SECONDS - time.monotonic()))
        for cookie, record in cookies.items():
            found[cookie] += len(kill_tree(cookie, STOP_GRACE_SECONDS))  # one that had not exec'd at the first look
            if record:
                _write_found(record, found[cookie])


def _write_found(record: str, count: int) -> None:
    """`count` into `record`, whole or not at all (a reader never sees half a number)."""
    try:
        with open(record + ".tmp", "w") as out:
            out.write(f"{count}\n")
        os.replace(record + ".tmp", record)
    except OSError:  # the run folder is gone: an adopter then knows nothing, and does not start the job
        pass


if __name__ == "__main__":
    _watch(int(sys.argv[1]))
