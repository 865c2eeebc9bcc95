"""Where one dispatch's time goes: an idle agent, from the create-flow-run call to the job's first line.

For each sample (one job at a time, after a warm-up job), the milestones are read back from the
server once the run has ended, as offsets from just before the create call:

- the run's own states: Pending (the agent's claim), Running (its flow engine), the final state;
- each launch task's run (resolve, build, render, submit, monitor, ...): start and end;
- each artifact the run wrote: when it was created;
- the job's first line (it stamps `time.time()` into a file, as in `dispatch.py`).

The agent logs nothing when the event that wakes it arrives, so the first milestone after the
create call is the claim. Server timestamps and the stamp share this machine's clock.

Run it from the repository root, with nothing else busy:

    .venv/bin/python bench/dispatch_timeline.py               # 10 samples
    .venv/bin/python bench/dispatch_timeline.py --samples 20

The table (stdout) has one row per milestone, in the order of their medians: median and p95
offset (s) and the median step from the row before. Everything runs against an embedded server
(SQLite) in a temporary home that is removed at the end.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import dispatch  # bench/dispatch.py: the server, the queue, the job and the agent
from dispatch import IDLE_GAP_SECONDS, LAUNCH_QUEUE, MAX_JOBS, VENV_BIN, p95, progress

FIRST_LINE = "job's first line"


async def milestones(client: Any, flow_run_id: Any, created: float, stamped: float) -> dict[str, float]:
    """Each milestone of one run as seconds after `created` (epoch seconds)."""
    import anyio
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    def offset(moment: Any) -> float:
        return moment.timestamp() - created

    found = {FIRST_LINE: stamped - created}
    for state in await client.read_flow_run_states(flow_run_id):
        if state.type.value != "SCHEDULED":
            found.setdefault(f"run {state.name}", offset(state.timestamp))
    # Task runs reach the server through its task run recorder, a moment after the run ends.
    deadline = time.monotonic() + 10
    while True:
        task_runs = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        if task_runs and all(task_run.end_time for task_run in task_runs) or time.monotonic() > deadline:
            break
        await anyio.sleep(0.2)
    for task_run in task_runs:
        name = task_run.name.rsplit("-", 1)[0]
        if task_run.start_time:
            found[f"task {name} starts"] = offset(task_run.start_time)
        if task_run.end_time:
            found[f"task {name} ends"] = offset(task_run.end_time)
    artifacts = await client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id])))
    for artifact in artifacts:
        label = "artifact " + re.sub(r"^launch-[a-z0-9]+", "launch-<run id>", artifact.key or artifact.type)
        found[label] = min(found.get(label, float("inf")), offset(artifact.created))
    return found


async def timeline(ctx: Any, samples: int) -> list[dict[str, float]]:
    submit = dispatch.launch_submitter(ctx.client, ctx.source, ctx.job_dir)
    agent_argv = [str(VENV_BIN / "prefect-launch"), "agent", "-q", LAUNCH_QUEUE, "--max-jobs", str(MAX_JOBS)]
    import anyio

    runs = []
    with dispatch.running(ctx.processes, "agent", agent_argv, ready_text="ready on"):
        for index in range(samples + 1):  # the first is a warm-up, not counted
            out = ctx.stamps / f"timeline-{index}"
            created, run_id = await submit(out, None)
            stamped = await dispatch.wait_for_stamp(out)
            dispatch.check_completed(await dispatch.wait_for_runs(ctx.client, [run_id]), "launch")
            if index:
                runs.append(await milestones(ctx.client, run_id, created, stamped))
                progress(f"  sample {index}/{samples}: first line after {stamped - created:.3f} s")
            await anyio.sleep(IDLE_GAP_SECONDS)
    return runs


def report(runs: list[dict[str, float]]) -> str:
    names = {name for run in runs for name in run}
    rows = sorted(((statistics.median([run[name] for run in runs if name in run]), name) for name in names))
    lines = [f"{len(runs)} samples; seconds after the create-flow-run call",
             "| milestone | median | p95 | step from the row before |", "|---|---|---|---|"]
    before = 0.0
    for median, name in rows:
        values = [run[name] for run in runs if name in run]
        lines.append(f"| {name} | {median:.3f} | {p95(values):.3f} | {median - before:+.3f} |")
        before = median
    return "\n".join(lines)


async def run_timeline(home: Path, processes: Any, samples: int) -> str:
    from prefect.client.orchestration import get_client

    from prefect_launch.server import read_state

    job_dir, _ = dispatch.write_job_code(home)
    stamps = home / "stamps"
    stamps.mkdir()
    async with get_client() as client:
        ctx = dispatch.Context(client=client, processes=processes, sizes=None, job_dir=job_dir, stamps=stamps,
                               source=await dispatch.create_launch_queue(client, home, job_dir), deployment_id=None,
                               server_pid=read_state(home)["pid"])
        return report(await timeline(ctx, samples))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=10)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (server and agent logs)")
    args = parser.parse_args()
    began, load_before = time.monotonic(), os.getloadavg()[0]
    table = dispatch.on_embedded_server(run_timeline, args.samples, args.keep)
    if table is None:
        return 130
    dispatch.print_table(table, load_before, began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
