"""moto's AWS server in the test process, with SageMaker training jobs the test moves through their states.

moto serves the real AWS APIs on 127.0.0.1 (SageMaker, ECR, S3, STS,
CloudWatch Logs) to the real boto3 in the agent. Two gaps are closed here, in
the stand-in and never in the client: moto completes a training job the moment
it is created, so new jobs start `InProgress` and wait for `set_status`; and it
has no `StopTrainingJob`, so one is added that stops the job as SageMaker does.
With `search_refused`, `Search` answers AccessDeniedException, as AWS does for a
role without `sagemaker:Search`. Every `CreateTrainingJob` body is recorded as received (moto drops fields such
as `Environment`).

Example::

    with SageMakerStandIn() as aws:
        monkeypatch.setattr(os, "environ", {**os.environ, **aws.env})
        ...  # an agent creates a job
        name = aws.wait_for_job()
        aws.log(name, "epoch 1 loss 0.5")
        aws.set_status(name, "Completed")
"""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

import boto3
from moto.core.exceptions import JsonRESTError
from moto.sagemaker.models import FakeTrainingJob, sagemaker_backends
from moto.sagemaker.responses import SageMakerResponse
from moto.server import ThreadedMotoServer

from prefect_launch.server import free_port

ACCOUNT = "123456789012"  # moto's default account
REGION = "us-east-1"
LOG_GROUP = "/aws/sagemaker/TrainingJobs"


class SageMakerStandIn:
    def __init__(self) -> None:
        self.port = free_port()
        self.requests: list[dict[str, Any]] = []
        # Answer Search as AWS does for a role without sagemaker:Search.
        self.search_refused = False
        self._originals: dict[tuple[type, str], Any] = {}
        self._server = ThreadedMotoServer(ip_address="127.0.0.1", port=self.port, verbose=False)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def env(self) -> dict[str, str]:
        """What a process needs to reach this stand-in through boto3's default chain."""
        return {
            "AWS_ENDPOINT_URL": self.url,
            "AWS_ACCESS_KEY_ID": "testing",
            "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_DEFAULT_REGION": REGION,
        }

    def client(self, service: str):
        return boto3.client(service, endpoint_url=self.url, region_name=REGION,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    def __enter__(self) -> "SageMakerStandIn":
        recorded = self.requests
        create = SageMakerResponse.create_training_job
        init = FakeTrainingJob.__init__
        original_search = SageMakerResponse.search

        def create_training_job(response: SageMakerResponse):
            # Recorded once moto holds the job: a test that sees the request then moves the job.
            try:
                return create(response)
            finally:
                recorded.append(json.loads(response.body))

        def stop_training_job(response: SageMakerResponse):
            job = _backend().training_jobs[response._get_param("TrainingJobName")]
            _move(job, "Stopped", "Stopped", "Stopped by StopTrainingJob")
            return "{}"

        def search(response: SageMakerResponse):
            if self.search_refused:
                raise JsonRESTError("AccessDeniedException", f"User: arn:aws:iam::{ACCOUNT}:user/agent is not "
                                    "authorized to perform: sagemaker:Search")
            return original_search(response)

        def starts_in_progress(job: FakeTrainingJob, *args, **kwargs) -> None:
            init(job, *args, **kwargs)
            _move(job, "InProgress", "Starting", "Preparing the instances for training")
            job.training_end_time = None

        self._patch(SageMakerResponse, "create_training_job", create_training_job)
        self._patch(SageMakerResponse, "stop_training_job", stop_training_job)
        self._patch(SageMakerResponse, "search", search)
        self._patch(FakeTrainingJob, "__init__", starts_in_progress)
        self._server.start()
        # moto keeps every service's state in this process, not in the server: a stand-in started
        # again in the same test worker (a module's tests can come back to it after others') would
        # find the last one's repositories and jobs. Start from none, with moto's own reset call.
        urllib.request.urlopen(urllib.request.Request(f"{self.url}/moto-api/reset", method="POST"), timeout=10).close()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._server.stop()
        for (owner, name), original in self._originals.items():
            if original is None:
                delattr(owner, name)
            else:
                setattr(owner, name, original)

    def _patch(self, owner: type, name: str, replacement: Any) -> None:
        self._originals[(owner, name)] = owner.__dict__.get(name)
        setattr(owner, name, replacement)

    def wait_for_job(self, count: int = 1, timeout: float = 120) -> str:
        """The name of the `count`-th training job created (waits for it)."""
        deadline = time.monotonic() + timeout
        while len(self.requests) < count:
            if time.monotonic() > deadline:
                raise AssertionError(f"no training job #{count} was created within {timeout} s")
            time.sleep(0.2)
        return self.requests[count - 1]["TrainingJobName"]

    def job(self, name: str) -> FakeTrainingJob:
        return _backend().training_jobs[name]

    def set_status(self, name: str, status: str, secondary: str | None = None, message: str = "",
                   failure_reason: str | None = None) -> None:
        job = self.job(name)
        _move(job, status, secondary or status, message)
        if failure_reason:
            job.failure_reason = failure_reason

    def log(self, name: str, *lines: str) -> None:
        """Write lines to the job's CloudWatch stream, as SageMaker's log agent does."""
        logs = self.client("logs")
        stream = f"{name}/algo-1-1700000000"
        if not any(g["logGroupName"] == LOG_GROUP for g in logs.describe_log_groups()["logGroups"]):
            logs.create_log_group(logGroupName=LOG_GROUP)
        if not logs.describe_log_streams(logGroupName=LOG_GROUP, logStreamNamePrefix=stream)["logStreams"]:
            logs.create_log_stream(logGroupName=LOG_GROUP, logStreamName=stream)
        now = int(time.time() * 1000)
        logs.put_log_events(logGroupName=LOG_GROUP, logStreamName=stream,
                            logEvents=[{"timestamp": now + i, "message": line} for i, line in enumerate(lines)])


def _backend():
    return sagemaker_backends[ACCOUNT][REGION]


def _move(job: FakeTrainingJob, status: str, secondary: str, message: str) -> None:
    job.training_job_status = status
    job.secondary_status = secondary
    job.secondary_status_transitions = [
        *job.secondary_status_transitions,
        {"Status": secondary, "StartTime": job.creation_time, "StatusMessage": message},
    ]
