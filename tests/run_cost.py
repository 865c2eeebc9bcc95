"""What a test run cost, printed at its end: the slowest tests and the machine's wall and CPU time.

Registered by `conftest.py` in the process that reports (the controller of a parallel run). CPU
is the whole machine's busy time from /proc/stat, so it counts everything the tests start:
servers, agents, jobs, containers, the Docker engine. On a machine running nothing else, that is
the run's own cost. "CPU-bound" is the share of seconds in which the cores were at least 90% busy.

`.ci/run` sets `PREFECT_LAUNCH_CI_STARTED` to what `python3 tests/run_cost.py` prints at its start
(epoch seconds and the machine's busy seconds) so that the last line counts the install too.

Example (the end of a `.ci/run` on 2 cores, before pytest's own closing line)::

    25 slowest tests (setup + call + teardown):
       129.9 s  gw2  tests/test_load.py::test_thirty_six_jobs_on_three_agents_over_postgresql_never_exceed_twelve_at_once
       ...
    run cost: 624 s wall, 1159 s CPU on 2 cores (1.86 busy on average), CPU-bound 85% of the time
    .ci/run so far, install included: 714 s wall, 1254 s CPU
"""

from __future__ import annotations

import os
import threading
import time
from collections import defaultdict

from typing import TYPE_CHECKING

if TYPE_CHECKING:  # run as a script by .ci/run before any venv exists
    import pytest

SLOWEST = 25
BOUND = 0.9  # a second counts as CPU-bound when the cores were this busy


def busy_seconds() -> float:
    """CPU seconds the machine has spent busy since boot (every core, every process)."""
    with open("/proc/stat") as stat:
        ticks = [int(value) for value in stat.readline().split()[1:8]]
    idle = ticks[3] + ticks[4]  # idle and iowait
    return (sum(ticks) - idle) / os.sysconf("SC_CLK_TCK")


class RunCost:
    def __init__(self) -> None:
        self.cores = os.cpu_count() or 1
        self.started, self.busy_at_start = time.monotonic(), busy_seconds()
        self.seconds = self.bound_seconds = 0
        self.durations: dict[str, float] = defaultdict(float)
        self.workers: dict[str, str] = {}
        self._stop = threading.Event()
        threading.Thread(target=self._sample, daemon=True, name="run-cost").start()

    def _sample(self) -> None:
        last = busy_seconds()
        while not self._stop.wait(1.0):
            now = busy_seconds()
            self.seconds += 1
            self.bound_seconds += (now - last) >= BOUND * self.cores
            last = now

    def pytest_runtest_logreport(self, report: pytest.TestReport) -> None:
        self.durations[report.nodeid] += report.duration
        node = getattr(report, "node", None)  # the worker that ran it, in a parallel run
        self.workers[report.nodeid] = node.gateway.id if node else ""

    def pytest_terminal_summary(self, terminalreporter) -> None:
        self._stop.set()
        wall, cpu = time.monotonic() - self.started, busy_seconds() - self.busy_at_start
        write = terminalreporter.write_line
        write(f"{SLOWEST} slowest tests (setup + call + teardown):")
        for nodeid, seconds in sorted(self.durations.items(), key=lambda item: -item[1])[:SLOWEST]:
            write(f"  {seconds:6.1f} s  {self.workers.get(nodeid) or '-':4s} {nodeid}")
        bound = f"{100 * self.bound_seconds / self.seconds:.0f}%" if self.seconds else "n/a"
        write(f"run cost: {wall:.0f} s wall, {cpu:.0f} s CPU on {self.cores} cores "
              f"({cpu / wall:.2f} busy on average), CPU-bound {bound} of the time")
        ci_started = os.environ.get("PREFECT_LAUNCH_CI_STARTED")
        if ci_started:
            at, busy = (float(value) for value in ci_started.split())
            write(f".ci/run so far, install included: {time.time() - at:.0f} s wall, {busy_seconds() - busy:.0f} s CPU")


if __name__ == "__main__":
    print(time.time(), busy_seconds())
