"""A launch run's stage timeline, live: queue wait, resolve, build, push, submit, start, run.

`start` lasts from the submission until the target reports the job actually
running (a pod Running, a SageMaker job Training); `run` from then to the end.
While a stage waits on its target, its `note` says why, in the target's words
(`Unschedulable: 0/3 nodes are available ...`).

The flow keeps one `Timeline` per run and hands it to the target as its
`Progress`. Every change (a stage begins or ends, a new reason to wait) goes
at once to `publish` as table rows; the flow publishes them as the run's table
artifact `launch-<run id>-timeline`, created once and updated in place.
`prefect-launch status` and `launch --wait` read the rows back (`from_rows`).

Why an artifact: it lives on the Prefect server with the run (no other store
to run or secure), the Prefect UI shows it under the run as a table, the CLI
finds it with one query by flow run id (so the attempts of a requeued run stay
apart), and an update in place is one write per change, not a new version.
The run's logs carry the same reasons as text, but reading them back would tie
`status` to the wording of log lines.

Example:
    >>> ticks = iter([0.0, 2.0, 5.0, 5.5])
    >>> t = Timeline(clock=lambda: next(ticks))
    >>> t.begin("queue wait"); t.begin("start"); t.waiting("Unschedulable: no GPU")
    >>> t.current.note
    'Unschedulable: no GPU'
    >>> t.started(); t.end()
    >>> [(s.name, s.seconds()) for s in t.stages]
    [('queue wait', 2.0), ('start', 3.0), ('run', 0.5)]
    >>> Timeline.from_rows(t.rows()).stages == t.stages
    True
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Callable

Rows = list[dict[str, Any]]


def timeline_key(run_id: str) -> str:
    """The key of a run's live timeline artifact.

    >>> timeline_key("abc123")
    'launch-abc123-timeline'
    """
    return f"launch-{run_id}-timeline"


@dataclass
class Stage:
    name: str
    start: float  # wall-clock seconds
    end: float | None = None  # None while the stage goes on
    note: str = ""  # why the stage waits, as its target says

    def seconds(self, now: float | None = None) -> float:
        """How long the stage took, or has taken so far (until `now`) while it goes on."""
        end = self.end if self.end is not None else (now if now is not None else time.time())
        return max(0.0, end - self.start)


@dataclass
class Timeline:
    stages: list[Stage] = field(default_factory=list)
    publish: Callable[[Rows], None] | None = None
    clock: Callable[[], float] = time.time

    @property
    def current(self) -> Stage | None:
        """The stage going on, if any."""
        return self.stages[-1] if self.stages and self.stages[-1].end is None else None

    def begin(self, name: str, at: float | None = None) -> None:
        """End the stage going on and begin `name` (at `at`, default now)."""
        now = self.clock()
        if self.current is not None:
            self.current.end = now
        self.stages.append(Stage(name, start=now if at is None else min(at, now)))
        self._changed()

    def end(self) -> None:
        """End the stage going on (the run is over)."""
        if self.current is not None:
            self.current.end = self.clock()
            self._changed()

    # The target's progress (`targets.base.Progress`).

    def waiting(self, reason: str) -> None:
        """Why the job is not running yet, replacing the last reason; an empty one clears it (nothing holds the job)."""
        if self.current is not None and reason != self.current.note:
            self.current.note = reason
            self._changed()

    def started(self) -> None:
        """The target runs the job: `start` ends, `run` begins (once; later reports change nothing)."""
        if self.current is not None and self.current.name == "start":
            self.begin("run")

    def _changed(self) -> None:
        if self.publish is not None:
            self.publish(self.rows())

    def rows(self) -> Rows:
        """The table the artifact holds: stage, started (UTC), seconds (None while it goes on), note."""
        return [
            {
                "stage": s.name,
                "started": datetime.fromtimestamp(s.start, timezone.utc).isoformat(timespec="milliseconds"),
                "seconds": None if s.end is None else round(s.end - s.start, 3),
                "note": s.note,
            }
            for s in self.stages
        ]

    @classmethod
    def from_rows(cls, rows: Rows) -> Timeline:
        stages = []
        for row in rows:
            start = datetime.fromisoformat(row["started"]).timestamp()
            seconds = row.get("seconds")
            stages.append(Stage(row["stage"], start, None if seconds is None else start + seconds, row.get("note") or ""))
        return cls(stages)

    def markdown(self, now: float | None = None) -> str:
        """A markdown table; a stage going on shows its time so far, marked ongoing."""
        lines = ["| stage | duration | note |", "|---|---|---|"]
        for s in self.stages:
            ongoing = " (ongoing)" if s.end is None else ""
            lines.append(f"| {s.name} | {s.seconds(now):.2f} s{ongoing} | {s.note} |")
        return "\n".join(lines)
