"""A deep backlog: how fast a `critical` run starts with thousands of runs Scheduled on its queue.

Issue 21, item 4. One embedded server (SQLite) and one agent (`--max-jobs 8`) serving a queue made
with `--prioritization` (Prefect work queues critical, high, medium, low). In one run:

- *idle*: `critical` probe jobs on the empty queue, one at a time, timed as `bench/dispatch.py`
  times them: the create-flow-run call inside `enqueue()` -> the job's first line;
- `--backlog` runs are Scheduled on `low`, from now on (a deployment of the launch flow with interval
  schedules: Prefect's scheduler service inserts them in bulk), as a sweep or a schedule leaves
  them; those that fall due while the probes run (one every 6 s for 10,000) start too;
- *backlog*: the same `critical` probes, on a new agent, with the backlog on the queue.

It also times the agent's poll itself (the request the agent makes for runs, `limit` 1, sent by
this script 20 times) on the empty queue and with the backlog waiting: the server's work for a poll
must not grow with the runs that wait.

    .venv/bin/python bench/backlog.py                   # 10,000 runs, 10 probes each side
    .venv/bin/python bench/backlog.py --backlog 1000 --probes 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import dispatch  # noqa: E402  (bench/dispatch.py: the job, the server, processes, waiting)
from dispatch import progress  # noqa: E402

MAX_JOBS = 8
SCHEDULE_SECONDS = 60  # each schedule's interval: its runs fall due one a minute, all of them every 60/n s


async def probe_latencies(client: Any, source: Any, stamps: Path, probes: int, label: str) -> list[float]:
    """`probes` critical jobs one at a time (after one uncounted warm-up): create call -> first line (s)."""
    import anyio

    from prefect_launch.deployments.queues import enqueue
    from prefect_launch.spec import LaunchSpec

    latencies = []
    for index in range(probes + 1):
        out = stamps / f"{label}-probe-{index}"
        spec = LaunchSpec(source=source, entry_point=["python", "job.py", str(out)])
        created = time.time()
        run = await enqueue(client, dispatch.LAUNCH_QUEUE, spec, "critical", {})
        latency = await dispatch.wait_for_stamp(out) - created
        dispatch.check_completed(await dispatch.wait_for_runs(client, [run.id]), label)
        if index:
            latencies.append(latency)
            progress(f"  {label} probe {index}/{probes}: {latency:.3f} s")
        await anyio.sleep(dispatch.IDLE_GAP_SECONDS)
    return latencies


async def poll_seconds(client: Any, samples: int = 20) -> list[float]:
    """The agent's poll for runs (`limit` 1), sent `samples` times: its round trip (s)."""

    times = []
    for _ in range(samples):
        body = {"scheduled_before": datetime.now(timezone.utc).isoformat(), "limit": 1}
        started = time.perf_counter()
        await client.request("POST", "/work_pools/{name}/get_scheduled_flow_runs",
                             path_params={"name": dispatch.LAUNCH_QUEUE}, json=body)
        times.append(time.perf_counter() - started)
    return times


async def schedule_backlog(client: Any, source: Any, stamps: Path, count: int) -> None:
    """`count` runs Scheduled on `low`, from now on: a deployment of the launch flow on the queue with
    interval schedules, whose runs Prefect's scheduler service inserts in bulk (creating them one request
    each would take the embedded server tens of minutes). A schedule makes at most 1,000 runs
    (`MAX_ITERATIONS` of Prefect's schedules), so there is one schedule per 1,000 runs, each every
    `SCHEDULE_SECONDS` s, their anchors apart so that no two runs fall at the same time."""
    import anyio
    from prefect.client.schemas.actions import DeploymentScheduleCreate
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType
    from prefect.client.schemas.schedules import IntervalSchedule

    from prefect_launch.deployments.queues import LAUNCH_ENTRYPOINT
    from prefect_launch.spec import LaunchSpec

    backlog = stamps / "backlog"
    backlog.mkdir()
    schedules = -(-count // 1000)
    anchor = datetime.now(timezone.utc)
    spec = LaunchSpec(source=source, entry_point=["python", "job.py", str(backlog / "stamp")])
    await client.create_deployment(
        flow_id=await client.create_flow_from_name("launch"), name="bench-backlog", entrypoint=LAUNCH_ENTRYPOINT,
        work_pool_name=dispatch.LAUNCH_QUEUE, work_queue_name="low",
        parameters={"spec": spec.model_dump(mode="json", exclude_none=True)},
        schedules=[DeploymentScheduleCreate(schedule=IntervalSchedule(
            interval=timedelta(seconds=SCHEDULE_SECONDS), anchor_date=anchor + timedelta(seconds=index * SCHEDULE_SECONDS / schedules)))
            for index in range(schedules)])
    scheduled = FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED])))
    deadline = time.monotonic() + 600
    while (waiting := await client.count_flow_runs(flow_run_filter=scheduled)) < count:
        if time.monotonic() > deadline:
            raise TimeoutError(f"the scheduler made {waiting} of {count} runs in 600 s")
        progress(f"  {waiting} runs scheduled")
        await anyio.sleep(5)
    progress(f"  {waiting} runs scheduled")


async def bench(home: Path, processes: dispatch.Processes, args: argparse.Namespace) -> dict[str, Any]:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    from prefect_launch.deployments.queues import QueueDefinition, create_queue
    from prefect_launch.sources import code
    from prefect_launch.spec import Resource

    job_dir, _ = dispatch.write_job_code(home)
    stamps = home / "stamps"
    stamps.mkdir()
    agent_argv = [str(dispatch.VENV_BIN / "prefect-launch"), "agent", "-q", dispatch.LAUNCH_QUEUE, "--max-jobs", str(MAX_JOBS)]
    results: dict[str, Any] = {}
    async with get_client() as client:
        await create_queue(client, QueueDefinition(name=dispatch.LAUNCH_QUEUE, resource=Resource.local_process,
                                                   prioritization=True, require_wandb_run=False))
        source = code.upload(job_dir, code.ensure_default_storage(home))
        with dispatch.running(processes, "agent-idle", agent_argv, ready_text="ready on"):
            results["idle"] = await probe_latencies(client, source, stamps, args.probes, "idle")
        results["poll idle"] = await poll_seconds(client)
        progress(f"scheduling {args.backlog} runs on low")
        await schedule_backlog(client, source, stamps, args.backlog)
        results["poll backlog"] = await poll_seconds(client)
        with dispatch.running(processes, "agent-backlog", agent_argv, ready_text="ready on"):
            results["backlog"] = await probe_latencies(client, source, stamps, args.probes, "backlog")
            results["waiting"] = await client.count_flow_runs(
                flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))
    return results


def report(results: dict[str, Any], args: argparse.Namespace) -> str:
    idle, backlog = results["idle"], results["backlog"]
    poll_idle, poll_backlog = results["poll idle"], results["poll backlog"]
    rows = [
        ("critical run: create call -> first line, empty queue (s)", idle, 1.0),
        (f"critical run: the same, {args.backlog:,} runs Scheduled on low (s)", backlog,
         statistics.median(backlog) / statistics.median(idle)),
        ("the agent's poll (limit 1), empty queue (s)", poll_idle, 1.0),
        (f"the agent's poll (limit 1), {args.backlog:,} runs waiting (s)", poll_backlog,
         statistics.median(poll_backlog) / statistics.median(poll_idle)),
    ]
    lines = ["| | n | median | p95 | ratio to the empty queue (median) |", "|---|---:|---:|---:|---:|"]
    lines += [f"| {label} | {len(values)} | {statistics.median(values):.3f} | {dispatch.p95(values):.3f} | {ratio:.2f}x |"
              for label, values, ratio in rows]
    lines.append(f"\n{results['waiting']:,} runs still waiting on low after the last probe; "
                 f"goal: backlog median <= 2x idle: {dispatch.verdict(rows[1][2] <= 2.0)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backlog", type=int, default=10_000)
    parser.add_argument("--probes", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (server and agent logs)")
    args = parser.parse_args()
    # Prefect's scheduler inserts the fewest runs that meet its minimums (runs and time ahead). Its service for
    # deployments updated in the last few seconds inserts the backlog as the deployment is made; the main loop
    # then rests: a visit every 5 s re-inserted the whole backlog (conflicts ignored) and held SQLite's lock.
    os.environ["PREFECT_SERVER_SERVICES_SCHEDULER_MIN_RUNS"] = os.environ["PREFECT_SERVER_SERVICES_SCHEDULER_MAX_RUNS"] = str(args.backlog)
    os.environ["PREFECT_SERVER_SERVICES_SCHEDULER_MIN_SCHEDULED_TIME"] = "P2D"
    os.environ["PREFECT_SERVER_SERVICES_SCHEDULER_LOOP_SECONDS"] = "86400"
    return dispatch.bench_and_report(bench, args, args.keep, report)


if __name__ == "__main__":
    sys.exit(main())
