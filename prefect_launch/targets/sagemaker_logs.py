"""One CloudWatch Logs cadence for the log lines of every SageMaker training job an agent follows.

SageMaker writes a training job's output to the `/aws/sagemaker/TrainingJobs`
log group, one stream per instance (`<job name>/algo-1-<time>`). Reading each
job's streams on its own costs a `DescribeLogStreams` and a `GetLogEvents` per
job a round: 200 jobs polled every 10 s are 20 `DescribeLogStreams` a second,
four times the rate CloudWatch Logs allows an account in a region (5 a second).
The agent's runs share one reader per client endpoint instead: each round is one
`FilterLogEvents` over the group since the last round (paged), its events handed
to the runs whose jobs wrote them; a job followed for the first time gets its
lines so far at once, from one `FilterLogEvents` for its streams. A round reads
back `OVERLAP_MS` before the newest event it has seen, and skips the events it
has already handed out (by event id): lines that reach CloudWatch later than
that after their own timestamp are not forwarded.

Example::

    with follow_training_job_logs(logs_client, "my-job", interval=10) as lines:
        print(lines.new())  # the lines read since the last call
        ...  # the job has ended
        print(lines.rest(timeout=30))  # its streams read once more: the lines left
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator

from prefect_launch.targets.fanout import Fanout, Mailbox, subscribe_shared

logger = logging.getLogger(__name__)
LOG_GROUP = "/aws/sagemaker/TrainingJobs"
# How far back past the newest event seen a round reads again, for events that arrive late.
OVERLAP_MS = 60_000
END = object()  # delivered after a job's last read: every line it had written is handed out


class TrainingJobLines:
    """One run's view of its training job's log lines."""

    def __init__(self, name: str, mailbox: Mailbox) -> None:
        self.name = name
        self._mailbox = mailbox

    def new(self) -> list[str]:
        """The lines read since the last call (none waited for)."""
        return [line for line in self._mailbox.take(timeout=0) if line is not END]

    def rest(self, timeout: float) -> list[str]:
        """The lines left once the job has ended: its streams are read once more, at the reader's next turn."""
        self._mailbox.fanout.finish(self.name)
        lines: list[str] = []
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            for line in self._mailbox.take(timeout=left):
                if line is END:
                    return lines
                lines.append(line)
        logger.warning("the last log lines of SageMaker training job %s were not read within %.0f s", self.name, timeout)
        return lines


def job_of_stream(stream: str) -> str:
    """The training job that wrote log stream `stream` (`<job name>/algo-1-1700000000`)."""
    return stream.split("/", 1)[0]


class TrainingJobLogReader(Fanout):
    """The log rounds of one CloudWatch Logs client endpoint: a thread while any run follows a job's lines."""

    def __init__(self, client: Any, interval: float) -> None:
        super().__init__()
        self.client = client
        self.interval = interval
        self._new: set[str] = set()  # followed since the last round: their lines so far are read at once
        self._ending: set[str] = set()  # ended: their streams are read once more, then END
        self._due = 0.0  # when the next whole round is
        self._since_ms = 0  # the newest event timestamp seen; a whole round reads from OVERLAP_MS before it
        self._handed: dict[str, int] = {}  # event id -> timestamp, of the events already handed to runs

    def subscribed(self, mailbox: Mailbox) -> None:
        self._new.add(mailbox.key)

    def finish(self, job: str) -> None:
        """Read `job`'s streams once more at the next turn, then deliver END to its runs."""
        with self.lock:
            self._ending.add(job)
        self.wake.set()

    def stopped(self) -> None:
        self._due, self._since_ms = 0.0, 0
        self._handed.clear()

    def _filter(self, **request: Any) -> Iterator[dict[str, Any]]:
        """The group's events that `request` selects, every page; none while the group does not exist yet."""
        try:
            while True:
                page = self.client.filter_log_events(logGroupName=LOG_GROUP, **request)
                yield from page.get("events", [])
                if not page.get("nextToken"):
                    return
                request["nextToken"] = page["nextToken"]
        except self.client.exceptions.ResourceNotFoundException:
            return  # no job of the account has written a line yet

    def _hand_out(self, events: Iterator[dict[str, Any]], jobs: set[str]) -> None:
        """Each event not handed out before to the runs of the job that wrote it, oldest first."""
        for event in sorted(events, key=lambda event: (event.get("timestamp", 0), event.get("eventId", ""))):
            job = job_of_stream(event.get("logStreamName", ""))
            if job not in jobs or event["eventId"] in self._handed:
                continue
            self._handed[event["eventId"]] = event.get("timestamp", 0)
            self._since_ms = max(self._since_ms, event.get("timestamp", 0))
            self.deliver(job, event.get("message", ""))

    def serve(self) -> None:
        """A whole round when one is due (one read of the group since the last), else the new jobs' lines so far."""
        self.wake.clear()
        with self.lock:
            new, self._new = self._new, set()
            ending, self._ending = self._ending, set()
        since = max(0, (self._since_ms or int(time.time() * 1000)) - OVERLAP_MS)
        try:
            for job in new:  # a job's lines from its first, by its streams' common prefix
                self._hand_out(self._filter(logStreamNamePrefix=f"{job}/"), {job})
            for job in ending:
                self._hand_out(self._filter(logStreamNamePrefix=f"{job}/", startTime=since), {job})
            if time.monotonic() >= self._due:
                self._due = time.monotonic() + self.interval
                jobs = set(self.keys())
                prefix = {"logStreamNamePrefix": f"{next(iter(jobs))}/"} if len(jobs) == 1 else {}
                self._hand_out(self._filter(startTime=since, **prefix), jobs)
                self._handed = {event: at for event, at in self._handed.items() if at >= since}
        except Exception as exc:  # a failed round loses no line: the next reads the same span again
            logger.warning("CloudWatch Logs round for SageMaker training jobs failed: %s", exc)
            with self.lock:
                self._new |= new  # and their lines so far, at the next turn
        for job in ending:
            self.deliver(job, END)
        self.wake.wait(max(0.0, self._due - time.monotonic()))


@contextlib.contextmanager
def follow_training_job_logs(client: Any, name: str, interval: float) -> Iterator[TrainingJobLines]:
    """The log lines of training job `name` as they come, from the shared reader of the CloudWatch Logs `client`'s
    endpoint, read every `interval` s."""
    where = ("sagemaker-logs", client.meta.region_name, client.meta.endpoint_url, interval)
    with subscribe_shared(where, lambda: TrainingJobLogReader(client, interval), name) as mailbox:
        yield TrainingJobLines(name, mailbox)
