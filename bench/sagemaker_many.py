"""Many running SageMaker training jobs on one agent (issue 21, item 3).

One Prefect server (on PostgreSQL, or the embedded one on SQLite), moto's AWS
server in this process (`tests/aws_standin.py`: a new training job stays
InProgress until the bench moves it) and one agent (`--max-jobs N`) on a
sagemaker queue built from the seed's `CreateTrainingJob` body, polling every
`--poll` seconds (the agent's `PREFECT_LAUNCH_CLOUD_POLL_SECONDS`). N runs are
enqueued with a prebuilt image, at most `--ahead` ahead of the jobs created;
the bench plays SageMaker, moving each new job to `Training` with one
CloudWatch log line. Once all N train, it samples the agent for `--hold`
seconds: RSS, CPU in % of one core, threads, and the AWS calls a second by
action (AWS throttles an account's calls per region: DescribeLogStreams at 5 a
second, for one). Then it ends `--sample` jobs, `--pace` a second, each
Completed (every tenth Failed), and times each status change to its run's final
state in Prefect (bounded by the poll interval) while the rest still train;
then it ends the rest, untimed. Every run must end as its job did.

    .venv/bin/python bench/sagemaker_many.py --jobs 200
    .venv/bin/python bench/sagemaker_many.py --jobs 200 --agent-path /work/wt-before
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "tests")]

import dispatch  # noqa: E402  (bench/dispatch.py: the server, processes, RSS and CPU sampling)
from aws_standin import ACCOUNT, SageMakerStandIn  # noqa: E402  (moto's server, jobs held InProgress)
from dispatch import progress  # noqa: E402
import many_jobs  # noqa: E402  (bench/many_jobs.py: what the many-running-jobs benches share)
from many_jobs import ManyJobsResults  # noqa: E402

IMAGE = f"{ACCOUNT}.dkr.ecr.us-east-1.amazonaws.com/launch-sm:prebuilt"
SEED = BENCH.parent / "tests" / "seeds" / "001_sagemaker_queue_1.json"


@dataclass
class Results(ManyJobsResults):
    calls: dict[str, tuple[float, float]] = field(default_factory=dict)  # action -> (calls a second, mean seconds)


def counted_calls() -> tuple[Counter, Counter]:
    """Every AWS action moto serves in this process, counted and timed by name (moto answers each through
    `call_action`): how many, and the seconds moto took to answer them."""
    from moto.core.responses import BaseResponse

    calls: Counter = Counter()
    seconds: Counter = Counter()
    call_action = BaseResponse.call_action

    def counted(response: BaseResponse) -> Any:
        began = time.perf_counter()
        try:
            return call_action(response)
        finally:
            calls[response._get_action()] += 1
            seconds[response._get_action()] += time.perf_counter() - began

    BaseResponse.call_action = counted
    return calls, seconds


def queue_config() -> dict[str, Any]:
    """The seed's CreateTrainingJob body with its `<REQUIRED>` values filled in."""
    seed = json.loads(SEED.read_text())
    seed["RoleArn"] = f"arn:aws:iam::{ACCOUNT}:role/SageMakerExecution"
    seed["OutputDataConfig"]["S3OutputPath"] = "s3://launch-out/models"
    return seed


async def bench(home: Path, processes: dispatch.Processes, args: argparse.Namespace) -> Results:
    import anyio
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import QueueDefinition, create_queue, enqueue
    from prefect_launch.spec import ImageSource, LaunchSpec, Resource

    results, (calls, seconds) = Results(args.jobs), counted_calls()
    spec = LaunchSpec(source=ImageSource(image=IMAGE), entry_point=["python", "train.py"])
    config = home / "launch-config.yaml"
    config.write_text("environment:\n  type: aws\n  region: us-east-1\n")
    with SageMakerStandIn() as aws:
        env = many_jobs.agent_env(args, {**aws.env, "PREFECT_LAUNCH_CLOUD_POLL_SECONDS": str(args.poll)})
        agent_argv = [str(dispatch.VENV_BIN / "prefect-launch"), "agent", "-q", "sm", "--max-jobs", str(args.jobs),
                      "--config", str(config)]
        started: set[str] = set()

        def train_new_jobs() -> None:
            for request in aws.requests[len(started):]:
                name = request["TrainingJobName"]
                aws.set_status(name, "InProgress", "Training", "Training image download completed")
                aws.log(name, f"{name} epoch 1")
                started.add(name)

        async with get_client() as client:
            await create_queue(client, QueueDefinition(name="sm", resource=Resource.sagemaker, require_wandb_run=False,
                                                       resource_args=queue_config()))
            with dispatch.running(processes, "agent", agent_argv, ready_text="ready on", extra_env=env) as agent:
                # One job first, not counted: the agent imports boto3 and starts its status poller.
                warm_up = (await enqueue(client, "sm", spec, None, {})).id
                name = await anyio.to_thread.run_sync(aws.wait_for_job, 1, args.timeout)
                aws.set_status(name, "Completed")
                await dispatch.wait_for_runs(client, [warm_up], timeout=args.timeout)
                started.add(name)
                results.idle_rss = await dispatch.sample_rss(agent.pid, 2)
                progress(f"enqueueing {args.jobs} runs; jobs train as they are created")
                began = time.monotonic()
                run_ids: list[Any] = []

                async def enqueue_all() -> None:
                    for _ in range(args.jobs):
                        while len(run_ids) - (len(aws.requests) - 1) >= args.ahead:
                            await anyio.sleep(0.05)
                        run_ids.append((await enqueue(client, "sm", spec, None, {})).id)

                async with anyio.create_task_group() as group:
                    group.start_soon(enqueue_all)
                    while len(started) < args.jobs + 1:
                        train_new_jobs()
                        if time.monotonic() - began > args.timeout:
                            raise TimeoutError(f"only {len(started)} of {args.jobs} jobs were created within {args.timeout} s")
                        await anyio.sleep(0.2)
                results.started_in = time.monotonic() - began
                progress(f"all {args.jobs} jobs training after {results.started_in:.0f} s; settling, then {args.hold} s of samples")
                await anyio.sleep(args.settle)
                before, before_seconds = Counter(calls), Counter(seconds)
                await results.sample_agent(agent.pid, args.hold)
                results.calls = {action: (count / args.hold, (seconds[action] - before_seconds[action]) / count)
                                 for action, count in (calls - before).most_common()}

                progress(f"ending {args.sample} jobs, {args.pace} per second, timed; then the rest")
                ended: dict[str, tuple[float, str, bool]] = {}  # W&B run id -> (when its job ended, state expected, timed)
                for index, request in enumerate(aws.requests[1:]):
                    run_id = next(tag["Value"] for tag in request["Tags"] if tag["Key"] == "prefect-launch.run-id")
                    failing = index % 10 == 9
                    ended[run_id] = (time.time(), "FAILED" if failing else "COMPLETED", index < args.sample)
                    aws.set_status(request["TrainingJobName"], "Failed" if failing else "Completed",
                                   failure_reason="AlgorithmError: exit 3" if failing else None)
                    await anyio.sleep(1 / args.pace if index < args.sample else 1 / dispatch.REST_PACE)
                results.check(await dispatch.wait_for_runs(client, run_ids, timeout=args.timeout), ended)
    return results


def report(results: Results, args: argparse.Namespace) -> str:
    return "\n".join([
        f"One agent, {results.jobs} SageMaker training jobs at once (moto, polled every {args.poll} s, "
        f"server on {args.database})" + (f", agent from {args.agent_path}" if args.agent_path else ""),
        *results.rows(args, "jobs training", [
            *(f"| AWS {action} calls per second while the jobs only run (moto's mean answer time) | {rate:.2f} "
              f"({answer:.2f} s) | |" for action, (rate, answer) in results.calls.items()),
            f"| status change to final run state ({len(results.latencies)} jobs, {args.pace}/s) (s), median / p95 / "
            f"max | {results.latency_text()} | (a poll every {args.poll} s) |",
        ]),
    ])


def main() -> int:
    parser = many_jobs.command_line(__doc__.splitlines()[0], jobs=200, hold=60, settle=20, sample=50)
    parser.add_argument("--poll", type=float, default=10, help="the agent's cloud poll interval (its default: 10 s)")
    args = parser.parse_args()
    return many_jobs.run(bench, args, "bench-sagemaker-many", report)


if __name__ == "__main__":
    sys.exit(main())
