"""One status cadence for every SageMaker training job an agent follows in one account and region.

Describing each of 200 training jobs every `cloud_poll_seconds` (10 s) is 20
`DescribeTrainingJob` calls a second, past SageMaker's default rate for it. The
agent's runs share one poller per client endpoint instead: each round makes one
`Search` for the account's InProgress training jobs (full descriptions, 100 a
page) and describes on its own only the followed jobs the search did not return,
those that just left InProgress (where a run learns its outcome) and those the
search index has not caught up with yet. Without the `sagemaker:Search`
permission it describes every job, saying so once. A job that is described
with an error gets the error in its run, as before.

Example::

    with follow_training_job(client, "my-job", interval=10) as job:
        description = job.next(timeout=60)
        print(description["TrainingJobStatus"])
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any, Iterator

from prefect_launch.errors import LaunchError
from prefect_launch.targets.fanout import Fanout, Mailbox, subscribe_shared

logger = logging.getLogger(__name__)
SEARCH_PAGE = 100  # the most Search returns at once
# Error codes that mean the agent's role may not call Search: it describes each job instead.
SEARCH_REFUSED = {"AccessDenied", "AccessDeniedException", "UnauthorizedOperation"}


class TrainingJob:
    """One run's view of its training job: the newest description the poller made."""

    def __init__(self, name: str, mailbox: Mailbox) -> None:
        self.name = name
        self._mailbox = mailbox

    def next(self, timeout: float) -> dict[str, Any]:
        """The newest description after the last one returned, waiting up to `timeout` for the next round; raises
        the describe call's error."""
        descriptions = self._mailbox.take(timeout)
        if not descriptions:
            raise LaunchError(f"no status of SageMaker training job {self.name} for {timeout:.0f} s")
        return descriptions[-1]


class TrainingJobPoller(Fanout):
    """The rounds of one SageMaker client endpoint: a thread while any run follows a job."""

    def __init__(self, client: Any, interval: float) -> None:
        super().__init__()
        self.client = client
        self.interval = interval
        self.search_allowed = True
        self._new: set[str] = set()  # followed since the last round: described at once, not a round later
        self._due = 0.0  # when the next whole round is

    def subscribed(self, mailbox: Mailbox) -> None:
        self._new.add(mailbox.key)

    def stopped(self) -> None:
        self._due = 0.0

    def _search_in_progress(self) -> dict[str, dict[str, Any]]:
        """The account's InProgress training jobs, by name, from Search; {} once Search is refused."""
        from botocore.exceptions import ClientError

        found: dict[str, dict[str, Any]] = {}
        request: dict[str, Any] = {
            "Resource": "TrainingJob", "MaxResults": SEARCH_PAGE,
            "SearchExpression": {"Filters": [{"Name": "TrainingJobStatus", "Operator": "Equals", "Value": "InProgress"}]},
        }
        try:
            while True:
                page = self.client.search(**request)
                for result in page.get("Results", []):
                    job = result.get("TrainingJob") or {}
                    if job.get("TrainingJobName"):
                        found[job["TrainingJobName"]] = job
                if not page.get("NextToken"):
                    return found
                request["NextToken"] = page["NextToken"]
        except ClientError as exc:
            code = exc.response.get("Error", {}).get("Code")
            if code in SEARCH_REFUSED:
                self.search_allowed = False
                logger.warning("SageMaker Search is not allowed (%s): each training job is described on its own; "
                               "allow sagemaker:Search to follow many jobs within SageMaker's rate limits", code)
            else:
                logger.warning("SageMaker Search failed (%s); describing each training job this round", code)
            return {}

    def _describe(self, names: set[str], found: dict[str, dict[str, Any]]) -> None:
        """Each job's description to its runs: the one Search found, else its own DescribeTrainingJob."""
        for name in names:
            try:
                description: Any = found.get(name) or self.client.describe_training_job(TrainingJobName=name)
            except Exception as exc:  # the run that follows this job fails with it, as a describe of its own would
                description = exc
            self.deliver(name, description)

    def serve(self) -> None:
        """A whole round when one is due (one Search, then describes of the rest), else the new jobs alone."""
        self.wake.clear()
        with self.lock:
            new, self._new = self._new, set()
        try:
            if time.monotonic() >= self._due:
                self._due = time.monotonic() + self.interval
                self._describe(set(self.keys()), self._search_in_progress() if self.search_allowed else {})
            elif new:
                self._describe(new, {})
        except Exception as exc:  # never let one bad round end the cadence every run relies on
            logger.warning("SageMaker status round failed: %s", exc)
        self.wake.wait(max(0.0, self._due - time.monotonic()))


@contextlib.contextmanager
def follow_training_job(client: Any, name: str, interval: float) -> Iterator[TrainingJob]:
    """The descriptions of training job `name`, from the shared poller of `client`'s endpoint, every `interval` s."""
    where = ("sagemaker", client.meta.region_name, client.meta.endpoint_url, interval)
    with subscribe_shared(where, lambda: TrainingJobPoller(client, interval), name) as mailbox:
        yield TrainingJob(name, mailbox)
