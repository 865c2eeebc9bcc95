"""Following a launch run from the command line: its log lines on stdout, its progress on stderr.

`stream_logs` prints a run's log lines (the agent's stages and the job's own
output) as they reach the server. `RunProgress` shows the run's state, its
current stage with its time so far, and why it waits (`prefect_launch.status`):
on a terminal as one spinner line on stderr, elsewhere (a pipe, CI) as plain
lines on stderr, one per change. `working` does the same for long work the CLI
does itself (packing and uploading code).

Example::

    async with get_client() as client:
        final = await stream_logs(client, flow_run_id, until_final=True, on_poll=RunProgress(client))
"""

from __future__ import annotations

import sys
import time
from contextlib import contextmanager
from datetime import datetime, timedelta
from typing import Awaitable, Callable, Iterator
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import LogFilter, LogFilterFlowRunId, LogFilterTimestamp
from prefect.client.schemas.objects import FlowRun, Log
from prefect.client.schemas.sorting import LogSort
from rich.console import Console
from rich.status import Status

from prefect_launch.status import RunStatus, human_seconds, render_run, run_status

POLL_SECONDS = 0.5
PAGE = 200  # log lines per request: the Prefect API's default limit
REREAD_WINDOW = timedelta(seconds=10)
# Progress needs a few reads per look (run, queue, timeline): look this often, not at every log poll.
PROGRESS_SECONDS = 2.0
# Logs reach the server in batches: after the run's end, read until this many polls brought nothing new
# and the flow engine's last line ("Finished in state ...") has arrived, or this long after the end
# (a crashed run has no such line). Agents send their log batches every few seconds, later under load.
DRAIN_POLLS = 4
LAST_LINE_SECONDS = 15.0


def _spinner_allowed() -> bool:
    """A spinner only when both streams are a terminal: rich's live display routes stdout through itself."""
    return sys.stderr.isatty() and sys.stdout.isatty()


@contextmanager
def working(message: str) -> Iterator[None]:
    """Show `message` while the block runs: a spinner on a terminal, else one line on stderr."""
    if not _spinner_allowed():
        print(f"{message}...", file=sys.stderr, flush=True)
        yield
        return
    with Console(stderr=True).status(message):
        yield


async def stream_logs(
    client: PrefectClient,
    flow_run_id: UUID,
    until_final: bool,
    on_poll: Callable[[FlowRun], Awaitable[None]] | None = None,
    tail: int | None = None,
) -> FlowRun:
    """Print the run's log lines (every one, page by page; with `tail`, the last `tail` only); with
    `until_final`, follow them until the run ends. Returns the run as last read."""
    import anyio

    seen: dict[UUID, datetime] = {}  # what was printed within the re-read window
    since: datetime | None = None
    quiet_polls_after_end = 0
    ended_at: float | None = None
    last_line_seen = False
    first = True
    while True:
        flow_run = await client.read_flow_run(flow_run_id)
        if on_poll is not None:
            await on_poll(flow_run)
        if first and tail is not None:
            logs = await _last_lines(client, flow_run_id, tail)
        else:
            # Batches can land out of order: re-read a short window and skip what was printed.
            logs = [log for log in await _lines_after(client, flow_run_id, since and since - REREAD_WINDOW)
                    if log.id not in seen]
        first = False
        for log in logs:
            seen[log.id] = log.timestamp
            since = max(since or log.timestamp, log.timestamp)
            last_line_seen = last_line_seen or (log.task_run_id is None and log.message.startswith("Finished in state"))
            print(log.message, flush=True)
        if since is not None:
            seen = {log_id: at for log_id, at in seen.items() if at >= since - REREAD_WINDOW}
        if not until_final:
            return flow_run
        if flow_run.state and flow_run.state.is_final():
            ended_at = ended_at or time.monotonic()
            quiet_polls_after_end = 0 if logs else quiet_polls_after_end + 1
            if quiet_polls_after_end >= DRAIN_POLLS and (
                    last_line_seen or time.monotonic() - ended_at > LAST_LINE_SECONDS):
                return flow_run
        await anyio.sleep(POLL_SECONDS)


async def _lines_after(client: PrefectClient, flow_run_id: UUID, after: datetime | None) -> list[Log]:
    """Every log line of the run from `after` on, oldest first, read page by page (the API gives at most a page)."""
    lines: list[Log] = []
    while True:
        page = await client.read_logs(
            LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id]),
                      timestamp=LogFilterTimestamp(after_=after) if after else None),
            sort=LogSort.TIMESTAMP_ASC, limit=PAGE, offset=len(lines))
        lines += page
        if len(page) < PAGE:
            return lines


async def _last_lines(client: PrefectClient, flow_run_id: UUID, count: int) -> list[Log]:
    """The run's last `count` log lines, oldest first."""
    lines: list[Log] = []
    while len(lines) < count:
        page = await client.read_logs(LogFilter(flow_run_id=LogFilterFlowRunId(any_=[flow_run_id])),
                                      sort=LogSort.TIMESTAMP_DESC, limit=min(PAGE, count - len(lines)),
                                      offset=len(lines))
        lines += page
        if len(page) < PAGE:
            break
    return lines[::-1]


class RunProgress:
    """The state and stage changes of a followed run, on stderr (an `on_poll` for `stream_logs`)."""

    def __init__(self, client: PrefectClient) -> None:
        self.client = client
        self.last_look = 0.0
        self.last_line = ""
        self.latest: RunStatus | None = None
        self.spinner: Status | None = Console(stderr=True).status("") if _spinner_allowed() else None

    async def __call__(self, flow_run: FlowRun) -> None:
        final = bool(flow_run.state and flow_run.state.is_final())
        if not final and time.monotonic() - self.last_look < PROGRESS_SECONDS:
            return
        self.last_look = time.monotonic()
        status = self.latest = await run_status(self.client, flow_run)
        stage = status.timeline.current
        line = f"[{status.state}]" + (f" {stage.name}" if stage else "") + (f": {status.waiting}" if status.waiting else "")
        if self.spinner is None:
            if line != self.last_line:
                print(line, file=sys.stderr, flush=True)
        elif final:
            self.spinner.stop()
        else:
            self.spinner.update(line + (f" ({human_seconds(stage.seconds())})" if stage else ""))
            self.spinner.start()
        self.last_line = line

    def summary(self) -> str:
        """The run's last status with its full timeline, for the end of `--wait`."""
        return render_run(self.latest) if self.latest else ""
