"""A `prefect-launch agent` subprocess, as the drills and the tests start, stop and kill it.

Example::

    agent = AgentProcess(["-q", "demo", "--max-jobs", "4"], Path("/tmp/agent.log")).wait_ready()
    agent.kill()   # SIGKILL, as a crash: the jobs it started live on
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CLI = str(Path(sys.executable).with_name("prefect-launch"))
READY_SECONDS = 60.0
STOP_SECONDS = 60.0


class LoggedAgent:
    """An agent subprocess (`proc`) writing its output to `log`; `what` names it in errors."""

    log: Path
    proc: subprocess.Popen

    @property
    def what(self) -> str:
        return f"agent {self.proc.pid}"

    def output(self) -> str:
        return self.log.read_text(errors="replace") if self.log.exists() else ""

    def wait_ready(self, timeout: float = READY_SECONDS):
        """Itself once the agent says it is ready; RuntimeError if it exits or takes longer than `timeout`."""
        deadline = time.monotonic() + timeout
        while "ready on" not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{self.what} did not start; see {self.log}:\n{self.output()[-2000:]}")
            time.sleep(0.1)
        return self


class AgentProcess(LoggedAgent):
    """The agent in a session of its own, its output in a log file."""

    def __init__(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> None:
        self.log = log
        with log.open("wb") as out:
            self.proc = subprocess.Popen([CLI, "agent", *args], env=env if env is not None else os.environ.copy(),
                                         cwd=REPO, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True)

    @property
    def pid(self) -> int:
        return self.proc.pid

    def alive(self) -> bool:
        return self.proc.poll() is None

    def kill(self) -> None:
        """SIGKILL the agent alone, as a crash does: the jobs it started live on."""
        self.proc.kill()
        self.proc.wait()

    def stop(self) -> None:
        """SIGINT (the agent stops its running jobs and exits), then SIGKILL whatever is left of its session."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.proc.wait(timeout=STOP_SECONDS)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait()
