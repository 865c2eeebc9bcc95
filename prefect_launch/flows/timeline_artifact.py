"""A launch run's timeline, published live as its table artifact `launch-<run id>-timeline`.

Writes go out at most once per `TIMELINE_PUBLISH_SECONDS`, the newest rows
only, on threads the agent's runs share; `prefect-launch status` reads them.

Example (a run's flow does this, with its own client and logger)::

    published = TimelineArtifact(run_id, flow_run.id, client, log)
    timeline = Timeline(publish=published)
    timeline.begin("resolve")
    ...
    timeline.end()
    published.flush()  # the newest rows on record before the run's final state
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Callable
from uuid import UUID

from prefect.client.orchestration import SyncPrefectClient
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate

from prefect_launch.timeline import Rows, timeline_key


class TimelineArtifact:
    """Publishes a run's timeline rows: its table artifact, created at the first write, updated in place after.

    Writes go out at most once per `TIMELINE_PUBLISH_SECONDS`, the newest rows only, on threads shared by
    the agent's runs: before a job starts, its stages (queue wait, resolve, build, push, submit, start)
    follow each other within milliseconds for a job with nothing to build, and a write per stage put six
    database writes between the claim and the job's start. A stage that lasts is on record within that
    time; a job that starts and ends within it gets one write, `flush`, as its run ends. A failed write is
    logged and skipped (the next one writes the whole table again): the timeline informs, the job goes on.
    """

    def __init__(self, run_id: str, flow_run_id: UUID, client: SyncPrefectClient,
                 log: logging.Logger | logging.LoggerAdapter) -> None:
        self.key = timeline_key(run_id)
        self.flow_run_id = flow_run_id
        self.artifact_id: UUID | None = None
        self._client = client  # an httpx client underneath: it may be shared between threads
        self._log = log
        self._newest: Rows | None = None
        self._due: float | None = None  # when the rows waiting are to be written, if a write is planned
        self._writing = False
        self._flushing = False  # the run is ending: no more waiting between writes
        self._idle = threading.Condition()

    def __call__(self, rows: Rows) -> None:
        with self._idle:
            self._newest = rows
            if self._due is None and not self._writing:
                self._plan()

    def flush(self, timeout: float = 60.0) -> None:
        """Write the newest rows now and wait until they are (or `timeout` s pass: the server may be down)."""
        with self._idle:
            self._flushing = True
            if self._due is not None:
                self._plan()
            self._idle.wait_for(lambda: self._due is None and not self._writing, timeout)

    def _plan(self) -> None:
        due = self._due = time.monotonic() + (0 if self._flushing else TIMELINE_PUBLISH_SECONDS)
        _TIMELINE_CLOCK.call_at(due, lambda: self._write_if_due(due))

    def _write_if_due(self, due: float) -> None:
        with self._idle:
            if self._due != due:
                return  # planned again since (a flush)
            rows, self._newest, self._due, self._writing = self._newest, None, None, True
        _TIMELINE_WRITERS.submit(self._write_then_plan, rows)

    def _write_then_plan(self, rows: Rows) -> None:
        self._write(rows)
        with self._idle:
            self._writing = False
            if self._newest is not None:
                self._plan()
            self._idle.notify_all()

    def _write(self, rows: Rows) -> None:
        try:
            if self.artifact_id is None:
                self.artifact_id = self._client.create_artifact(ArtifactCreate(
                    key=self.key, type="table", data=rows, flow_run_id=self.flow_run_id,
                    description="Launch run stages, live: queue wait, resolve, build, push, submit, start, run",
                )).id
            else:
                self._client.update_artifact(self.artifact_id, ArtifactUpdate(data=rows))
        except Exception as exc:  # the server is briefly unreachable: the run's own states retry on their own
            self._log.warning("Timeline not published (%s); the next stage change writes it again", exc)


class _Clock:
    """Calls functions at given times (`time.monotonic`), all from one thread for the whole agent process:
    a timer thread per run would be a thread per running job."""

    def __init__(self) -> None:
        self._calls: list[tuple[float, int, Callable[[], None]]] = []
        self._order = itertools.count()  # ties on the time go first in, first out
        self._changed = threading.Condition()
        self._thread: threading.Thread | None = None

    def call_at(self, when: float, call: Callable[[], None]) -> None:
        with self._changed:
            heapq.heappush(self._calls, (when, next(self._order), call))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name="launch-timeline-clock", daemon=True)
                self._thread.start()
            self._changed.notify()

    def _run(self) -> None:
        while True:
            with self._changed:
                while not self._calls or self._calls[0][0] > time.monotonic():
                    self._changed.wait(self._calls[0][0] - time.monotonic() if self._calls else None)
                _, _, call = heapq.heappop(self._calls)
            call()


TIMELINE_PUBLISH_SECONDS = 1.0
_TIMELINE_CLOCK = _Clock()
# The threads that write timelines, shared by the runs of an agent process (a write takes milliseconds).
_TIMELINE_WRITERS = ThreadPoolExecutor(max_workers=4, thread_name_prefix="launch-timeline")
