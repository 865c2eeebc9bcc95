"""The shared SageMaker status poller (`prefect_launch/targets/sagemaker_status.py`) against moto's server.

Many followed training jobs cost one `Search` a round, plus a `DescribeTrainingJob` only for those
the search did not return; each run sees its own job's newest description; a refused Search falls
back to describing each job. Calls are counted with botocore's own event hooks on the real client.
The agent's end-to-end SageMaker runs are in test_sagemaker.py.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter

import pytest

from aws_standin import ACCOUNT, SageMakerStandIn
from conftest import SEEDS
from prefect_launch.targets.fanout import shared_fanouts
from prefect_launch.targets.sagemaker_status import TrainingJobPoller, follow_training_job

INTERVAL = 0.5


@pytest.fixture(scope="module")
def aws():
    with SageMakerStandIn() as aws:
        yield aws


@pytest.fixture(autouse=True)
def no_poller_outlives_its_runs():
    """Each test's runs are gone at its end: their poller ends at its next round (a test's own client then
    starts the next one)."""
    yield
    deadline = time.monotonic() + 30
    while shared_fanouts(TrainingJobPoller):
        assert time.monotonic() < deadline, "a SageMaker poller outlived its last run"
        time.sleep(0.1)


def _counted_client(aws: SageMakerStandIn) -> tuple[object, Counter]:
    client, calls = aws.client("sagemaker"), Counter()
    client.meta.events.register("before-call.sagemaker", lambda model, **_: calls.update([model.name]))
    return client, calls


def _create(aws: SageMakerStandIn, name: str) -> None:
    request = json.loads((SEEDS / "001_sagemaker_queue_1.json").read_text())
    request.update(TrainingJobName=name, RoleArn=f"arn:aws:iam::{ACCOUNT}:role/SageMakerExecution",
                   OutputDataConfig={"S3OutputPath": "s3://launch-out/models"},
                   AlgorithmSpecification={"TrainingImage": f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/t:1",
                                           "TrainingInputMode": "File"})
    aws.client("sagemaker").create_training_job(**request)


def _until(job, status: str, timeout: float = 30) -> dict:
    deadline = time.monotonic() + timeout
    while (described := job.next(timeout=timeout))["TrainingJobStatus"] != status:
        assert time.monotonic() < deadline, f"{job.name} still {described['TrainingJobStatus']} after {timeout} s"
    return described


def test_one_search_a_round_and_a_describe_only_for_jobs_that_left_in_progress(aws):
    names = [f"status-{index}" for index in range(6)]
    for name in names:
        _create(aws, name)
    client, calls = _counted_client(aws)
    with contextlib.ExitStack() as stack:
        followed = [stack.enter_context(follow_training_job(client, name, INTERVAL)) for name in names]
        for job in followed:
            assert job.next(timeout=30)["SecondaryStatus"] == "Starting"
        calls.clear()
        for job in followed:  # two whole rounds at least while all six are InProgress
            job.next(timeout=30)
            job.next(timeout=30)
        assert calls["Search"] >= 2 and calls["DescribeTrainingJob"] == 0, calls

        aws.set_status(names[2], "Failed", failure_reason="AlgorithmError: exit 3")
        assert _until(followed[2], "Failed")["FailureReason"] == "AlgorithmError: exit 3"
        assert followed[0].next(timeout=30)["TrainingJobStatus"] == "InProgress"  # the others go on as they were
        # One job out of InProgress: at most one describe a round, for it alone.
        assert 1 <= calls["DescribeTrainingJob"] <= calls["Search"], calls


def test_a_run_whose_job_cannot_be_described_gets_the_error(aws):
    client, _ = _counted_client(aws)
    with follow_training_job(client, "never-created", INTERVAL) as job:
        with pytest.raises(Exception, match="ValidationException|Could not find"):
            job.next(timeout=30)


def test_a_refused_search_falls_back_to_one_describe_per_job(aws, caplog):
    _create(aws, "fallback-1")
    client, calls = _counted_client(aws)
    aws.search_refused = True
    try:
        with follow_training_job(client, "fallback-1", INTERVAL) as job:
            for _ in range(3):
                assert job.next(timeout=30)["TrainingJobStatus"] == "InProgress"
    finally:
        aws.search_refused = False
    assert calls["Search"] == 1 and calls["DescribeTrainingJob"] >= 3, calls  # refused once, never asked again
    assert "allow sagemaker:Search" in caplog.text
