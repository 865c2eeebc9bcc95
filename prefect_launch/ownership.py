"""Which agent process holds a run, and whether that process is still alive.

An agent writes its owner tag into the message of the Pending state it claims
a run with and of the Running state its flow engine enters, so the tag is on
the run's current state for as long as the agent holds it, at no extra API
call. When another agent (or the same one after losing its engine to a server
outage) finds a Pending or Running run whose owner is gone, it takes the run
over: a Pending run goes back to its queue, a Running one is adopted.

A process on this host is alive if `/proc/<pid>` still shows the same start
time (so a reused pid is not mistaken for the agent). A process on another
host is alive while its agent's worker heartbeat on the queue is fresh: younger
than `MISSED_HEARTBEATS` of its heartbeat intervals (Prefect's
`PREFECT_WORKER_HEARTBEAT_SECONDS`, 30 s by default). An agent heartbeats as
`<name>@<host>` (`heartbeat_name`): two agents given the same `--name` on two
hosts beat apart, so a live one never keeps a dead one's runs from being taken
over (on one host the pid decides, not the heartbeat).

Example:
    >>> owner = Owner(agent="gpu-agent", host="node-1", pid=4242, started=987654)
    >>> owner.tag(), owner.heartbeat_name
    ('on agent gpu-agent [node-1:4242:987654]', 'gpu-agent@node-1')
    >>> Owner.parse("Running on agent gpu-agent [node-1:4242:987654]") == owner
    True
    >>> Owner.parse("Running") is None
    True
"""

from __future__ import annotations

import os
import re
import socket
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone

# A remote agent that missed this many heartbeats in a row is gone.
MISSED_HEARTBEATS = 3

_TAG = re.compile(r"on agent (?P<agent>.+?) \[(?P<host>[^\[\]:]+):(?P<pid>\d+):(?P<started>\d+)\]")


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (`/proc/<pid>/stat` field 22); None if it is gone."""
    try:
        stat = open(f"/proc/{pid}/stat", "rb").read().decode(errors="replace")
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: count fields after its closing one.
    return int(stat.rsplit(")", 1)[1].split()[19])


@dataclass(frozen=True)
class Owner:
    agent: str
    host: str
    pid: int
    started: int

    @classmethod
    def this_process(cls, agent: str) -> Owner:
        pid = os.getpid()
        return cls(agent=agent, host=socket.gethostname(), pid=pid, started=_start_ticks(pid) or 0)

    @property
    def label(self) -> str:
        return f"{self.agent} [{self.host}:{self.pid}:{self.started}]"

    def tag(self) -> str:
        return f"on agent {self.label}"

    @property
    def heartbeat_name(self) -> str:
        """The worker name its agent heartbeats under on its queues."""
        return f"{self.agent}@{self.host}"

    @classmethod
    def parse(cls, message: str | None) -> Owner | None:
        found = _TAG.search(message or "")
        if found is None:
            return None
        return cls(found["agent"], found["host"], int(found["pid"]), int(found["started"]))

    def alive(self, heartbeats: dict[str, datetime], stale_after: timedelta) -> bool:
        """Whether this owner still runs: by pid on this host, by its agent's heartbeat elsewhere."""
        if self.host == socket.gethostname():
            return _start_ticks(self.pid) == self.started
        beat = heartbeats.get(self.heartbeat_name)
        return beat is not None and datetime.now(timezone.utc) - beat < stale_after
