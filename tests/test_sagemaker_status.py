"""The shared SageMaker status poller and log reader (`prefect_launch/targets/sagemaker_status.py`,
`sagemaker_logs.py`) against moto's server.

Many followed training jobs cost one `Search` a round, plus a `DescribeTrainingJob` only for those
the search did not return; each run sees its own job's newest description; a refused Search falls
back to describing each job. Their log lines cost one `FilterLogEvents` a round, each line handed
once to the runs of its own job. Calls are counted with botocore's own event hooks on the real client.
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
from prefect_launch.targets.sagemaker_logs import TrainingJobLines, TrainingJobLogReader, follow_training_job_logs
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
    while shared_fanouts(TrainingJobPoller) or shared_fanouts(TrainingJobLogReader):
        assert time.monotonic() < deadline, "a SageMaker poller or log reader outlived its last run"
        time.sleep(0.1)


def _counted_client(aws: SageMakerStandIn, service: str = "sagemaker") -> tuple[object, Counter]:
    client, calls = aws.client(service), Counter()
    client.meta.events.register(f"before-call.{client.meta.service_model.service_id.hyphenize()}",
                                lambda model, **_: calls.update([model.name]))
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


def _lines(lines: TrainingJobLines, count: int, timeout: float = 30) -> list[str]:
    """The next `count` lines the run is handed."""
    got: list[str] = []
    deadline = time.monotonic() + timeout
    while len(got) < count:
        assert time.monotonic() < deadline, f"{lines.name}: {got} after {timeout} s, expected {count} lines"
        got += lines.new()
        time.sleep(0.05)
    return got


def test_one_log_read_a_round_hands_each_run_its_own_lines_once(aws):
    client, calls = _counted_client(aws, "logs")
    aws.log("lines-1", "one: before it was followed")
    with contextlib.ExitStack() as stack:
        followed = {name: stack.enter_context(follow_training_job_logs(client, name, INTERVAL))
                    for name in ("lines-1", "lines-2", "lines-3")}
        assert _lines(followed["lines-1"], 1) == ["one: before it was followed"]
        aws.log("lines-2", "two: a", "two: b")
        aws.log("lines-3", "three: a")
        aws.log("not-followed", "someone else's job")
        assert _lines(followed["lines-2"], 2) == ["two: a", "two: b"]
        assert _lines(followed["lines-3"], 1) == ["three: a"]
        # Each round reads the last minute again: what was handed out is not handed out twice.
        rounds = calls["FilterLogEvents"]
        aws.log("lines-1", "one: later")
        assert _lines(followed["lines-1"], 1) == ["one: later"]
        assert calls["FilterLogEvents"] > rounds
        assert followed["lines-2"].new() == [] and followed["lines-3"].new() == []
    assert set(calls) == {"FilterLogEvents"}, calls  # no DescribeLogStreams or GetLogEvents per job


def test_a_jobs_last_lines_are_read_when_it_ends_not_a_round_later(aws):
    client = aws.client("logs")
    aws.log("lines-last", "epoch 1")
    with follow_training_job_logs(client, "lines-last", interval=3600) as lines:
        assert _lines(lines, 1) == ["epoch 1"]
        aws.log("lines-last", "epoch 2", "model saved")
        assert lines.rest(timeout=30) == ["epoch 2", "model saved"]
