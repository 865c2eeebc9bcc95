"""Load drill: many jobs, several agents, one Prefect server on PostgreSQL.

Issue 7, "concurrency under load": J trivial jobs on one local-process queue,
served by N `prefect-launch agent --max-jobs M` processes. Passes when never
more than N*M jobs ran at once, every job ran exactly once (none lost, none
twice) and every flow run ended Completed.

What it starts, all on 127.0.0.1 and all stopped when it ends (Ctrl-C and
SIGTERM included):

1. A throwaway PostgreSQL cluster and 2. a real Prefect server on it
   (`prefect_server.py`, which the chaos drill shares).
3. A queue made with the CLI (`prefect-launch queue create ... --resource
   local-process --no-require-wandb-run`) and N agents on it.

Then it enqueues J jobs through the API (as `prefect-launch launch` does, minus
one interpreter per job). Each job writes a record (its marker, pid, parent
pid = the agent, start and end times) to a file of its own, sleeps 0.2-1 s and
writes the record again with its end time. A sampler counts the pool's
Running flow runs every 0.5 s.

Measured: the most jobs running at once, exactly, from the jobs' own
timestamps (overall and per agent) and from the flow runs' start/end times on
the server; the sampler's peak and median; markers seen once, never, or more
than once; flow runs not Completed; wall time and jobs per minute.

Run it from the repository root (as root, or as a user who may run PostgreSQL):

    .venv/bin/python drills/load.py                           # 500 jobs, 3 agents, max_jobs 4
    .venv/bin/python drills/load.py --jobs 36 --agents 3      # the CI size (tests/test_load.py)
    .venv/bin/python drills/load.py --keep                    # keep the temp folders (logs, job records)

Progress goes to stderr, the result table to stdout; the exit code is 1 when a
check failed, 2 when the drill could not run (e.g. PostgreSQL missing).

From Python (tests/test_load.py)::

    result = run_drill(jobs=60, agents=3, max_jobs=4)
    assert not result.failures(), result.table()
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import secrets
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from agent_process import AgentProcess
from prefect_server import child_env, cli, over_max_jobs, progress, run_and_report, start_drill_server, table_row

QUEUE_PREFIX = "load"
SAMPLE_SECONDS = 0.5
ENQUEUE_CONCURRENCY = 8
AGENT_READY_SECONDS = 90.0
# Generous: on 2 busy cores a job costs about a second of CPU end to end.
SECONDS_PER_JOB_ALLOWED = 3.0
MIN_DRAIN_SECONDS = 300.0

# The job. Its record is rewritten atomically (never half a file) under a name
# of its own per execution, so a job run twice leaves two records, not one.
JOB_PY = """\
import json, os, sys, time
started = time.time()
marker, records, seconds = sys.argv[1], sys.argv[2], float(sys.argv[3])
path = os.path.join(records, f"{marker}.{os.getpid()}.{time.time_ns()}.json")
record = {"marker": marker, "run_id": os.environ.get("WANDB_RUN_ID"), "pid": os.getpid(),
          "agent_pid": os.getppid(), "start": started, "end": None}
def write():
    with open(path + ".tmp", "w") as out:
        json.dump(record, out)
    os.replace(path + ".tmp", path)
write()
time.sleep(seconds)
record["end"] = time.time()
write()
"""


# --- measurements (pure) --------------------------------------------------------


def max_overlap(intervals: list[tuple[float, float]]) -> int:
    """The most intervals open at one instant; one ending when another starts does not overlap it.

    >>> max_overlap([(0, 2), (1, 3), (2, 4)])
    2
    >>> max_overlap([(0, 1), (1, 2)]), max_overlap([])
    (1, 0)
    """
    # At equal times the end (-1) sorts before the start (+1).
    events = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    running = peak = 0
    for _, step in events:
        running += step
        peak = max(peak, running)
    return peak


def executions_per_marker(markers: list[str], records: list[dict[str, Any]]) -> tuple[list[str], list[str], list[str]]:
    """(lost, twice, unfinished): markers never run, run more than once, and records with no end.

    >>> executions_per_marker(["a", "b", "c"], [{"marker": "a", "end": 1.0}, {"marker": "a", "end": 2.0},
    ...                                         {"marker": "c", "end": None}])
    (['b'], ['a'], ['c'])
    """
    seen: dict[str, int] = {marker: 0 for marker in markers}
    for record in records:
        seen[record["marker"]] = seen.get(record["marker"], 0) + 1
    lost = [marker for marker, count in seen.items() if count == 0]
    twice = [marker for marker, count in seen.items() if count > 1]
    unfinished = [record["marker"] for record in records if record.get("end") is None]
    return lost, twice, unfinished


@dataclass
class Result:
    """What one drill measured; `failures()` says which checks failed."""

    jobs: int
    agents: int
    max_jobs: int
    postgres_version: str = ""
    records: list[dict[str, Any]] = field(default_factory=list)
    exactly_once: int = 0
    lost: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    unfinished: list[str] = field(default_factory=list)
    foreign: list[str] = field(default_factory=list)
    not_completed: list[str] = field(default_factory=list)
    flow_runs: int = 0
    flow_runs_in_postgres: int = 0
    max_running_jobs: int = 0
    max_running_per_agent: dict[int, int] = field(default_factory=dict)
    jobs_per_agent: dict[int, int] = field(default_factory=dict)
    max_running_flow_runs: int = 0
    samples: list[int] = field(default_factory=list)
    enqueue_seconds: float = 0.0
    wall_seconds: float = 0.0

    @property
    def limit(self) -> int:
        return self.agents * self.max_jobs

    @property
    def jobs_per_minute(self) -> float:
        return self.jobs / self.wall_seconds * 60 if self.wall_seconds else 0.0

    def failures(self) -> list[str]:
        problems = []
        if self.max_running_jobs > self.limit:
            problems.append(f"{self.max_running_jobs} job processes ran at once (limit {self.limit})")
        if self.max_running_flow_runs > self.limit:
            problems.append(f"{self.max_running_flow_runs} flow runs were Running at once (limit {self.limit})")
        if self.samples and max(self.samples) > self.limit:
            problems.append(f"the sampler saw {max(self.samples)} Running flow runs (limit {self.limit})")
        problems += over_max_jobs(self.max_running_per_agent, self.max_jobs)
        if self.foreign:
            problems.append(f"{len(self.foreign)} job(s) ran under a process that is not one of the agents")
        for what, markers in (("lost (never ran)", self.lost), ("ran twice or more", self.twice),
                              ("never finished", self.unfinished)):
            if markers:
                problems.append(f"{len(markers)} job(s) {what}, e.g. {markers[:3]}")
        if self.flow_runs != self.jobs:
            problems.append(f"{self.flow_runs} flow runs on the queue for {self.jobs} jobs")
        if self.flow_runs_in_postgres != self.jobs:
            problems.append(f"PostgreSQL holds {self.flow_runs_in_postgres} of the {self.jobs} flow runs: "
                            "the server did not use it")
        if self.not_completed:
            problems.append(f"{len(self.not_completed)} flow run(s) not Completed, e.g. {self.not_completed[:3]}")
        if not self.samples:
            problems.append("the sampler took no samples")
        return problems

    def table(self) -> str:
        row = table_row(52, 14, 7)

        per_agent = sorted(self.max_running_per_agent.values(), reverse=True)
        sample_median = statistics.median(self.samples) if self.samples else 0
        lines = [
            f"Load drill: {self.jobs} jobs, {self.agents} agents x max_jobs {self.max_jobs} "
            f"(at most {self.limit} at once), Prefect server on {self.postgres_version}",
            f"  {'':52} {'measured':>14} {'limit':>7}  check",
            row("most jobs running at once (job timestamps, exact)", self.max_running_jobs, self.limit,
                self.max_running_jobs <= self.limit),
            row("most flow runs Running at once (server times, exact)", self.max_running_flow_runs, self.limit,
                self.max_running_flow_runs <= self.limit),
            row(f"Running flow runs, sampled every {SAMPLE_SECONDS} s: peak",
                max(self.samples, default=0), self.limit, bool(self.samples) and max(self.samples) <= self.limit),
            row(f"  median of {len(self.samples)} samples", f"{sample_median:g}"),
            row("most jobs at once per agent", "/".join(map(str, per_agent)) or "-", self.max_jobs,
                all(peak <= self.max_jobs for peak in per_agent) and not self.foreign),
            row("jobs run exactly once, to the end", f"{self.exactly_once}/{self.jobs}", "",
                self.exactly_once == self.jobs),
            row("  lost / twice / unfinished", f"{len(self.lost)}/{len(self.twice)}/{len(self.unfinished)}", "0/0/0",
                not (self.lost or self.twice or self.unfinished)),
            row("flow runs Completed", f"{self.flow_runs - len(self.not_completed)}/{self.jobs}", "",
                self.flow_runs == self.jobs and not self.not_completed),
            row("flow runs found in PostgreSQL's flow_run table", f"{self.flow_runs_in_postgres}/{self.jobs}", "",
                self.flow_runs_in_postgres == self.jobs),
            row("jobs per agent", "/".join(str(n) for n in sorted(self.jobs_per_agent.values(), reverse=True)) or "-"),
            row("enqueue time (s)", f"{self.enqueue_seconds:.1f}"),
            row("wall time, first enqueue to last run's end (s)", f"{self.wall_seconds:.1f}"),
            row("throughput (jobs/min)", f"{self.jobs_per_minute:.0f}"),
        ]
        failures = self.failures()
        lines.append("  result: " + ("PASSED" if not failures else "FAILED: " + "; ".join(failures)))
        return "\n".join(lines)


def summarize(result: Result, markers: list[str], records: list[dict[str, Any]], agent_pids: set[int],
              runs: list[Any], started: float) -> None:
    """Fill `result` from the job records and the queue's flow runs."""
    result.records = records
    result.lost, result.twice, result.unfinished = executions_per_marker(markers, records)
    once = set(markers) - set(result.lost) - set(result.twice) - set(result.unfinished)
    result.exactly_once = len(once)
    result.foreign = [record["marker"] for record in records if record["agent_pid"] not in agent_pids]
    # A job or run that never ended counts as running until now: it held its slot.
    now = time.time()
    by_agent: dict[int, list[tuple[float, float]]] = {}
    for record in records:
        by_agent.setdefault(record["agent_pid"], []).append((record["start"], record["end"] or now))
    result.max_running_jobs = max_overlap([span for spans in by_agent.values() for span in spans])
    result.max_running_per_agent = {pid: max_overlap(spans) for pid, spans in by_agent.items()}
    result.jobs_per_agent = {pid: len(spans) for pid, spans in by_agent.items()}
    result.flow_runs = len(runs)
    result.not_completed = [f"{run.name} {run.state.name if run.state else 'no state'}"
                            for run in runs if not (run.state and run.state.is_completed())]
    spans = [(run.start_time.timestamp(), run.end_time.timestamp() if run.end_time else now)
             for run in runs if run.start_time]
    result.max_running_flow_runs = max_overlap(spans)
    result.wall_seconds = max((end for _, end in spans), default=now) - started


# --- the drill --------------------------------------------------------------------


async def enqueue_jobs(queue: str, source: Any, markers: list[str], records: Path, seed: int) -> None:
    """One run per marker, `ENQUEUE_CONCURRENCY` create calls in flight."""
    import anyio
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import enqueue
    from prefect_launch.spec import LaunchSpec

    sleeps = random.Random(seed)
    specs = [
        LaunchSpec(source=source, run_id=marker, project="load-drill",
                   entry_point=["python", "job.py", marker, str(records), f"{sleeps.uniform(0.2, 1.0):.2f}"])
        for marker in markers
    ]
    limiter = anyio.Semaphore(ENQUEUE_CONCURRENCY)
    async with get_client() as client:

        async def put(spec: LaunchSpec) -> None:
            async with limiter:
                await enqueue(client, queue, spec, None, {})

        async with anyio.create_task_group() as group:
            for spec in specs:
                group.start_soon(put, spec)


def pool_filter(queue: str) -> Any:
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    return WorkPoolFilter(name=WorkPoolFilterName(any_=[queue]))


def state_filter(*, any_: list[Any] | None = None, not_any_: list[Any] | None = None) -> Any:
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType

    return FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=any_, not_any_=not_any_)))


async def drain(queue: str, source: Any, markers: list[str], records: Path, seed: int,
                result: Result, timeout: float) -> list[Any]:
    """Enqueue, sample the Running count until every run is final (or `timeout`); return the queue's runs."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.objects import StateType

    final = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    async with get_client() as client:
        done = anyio.Event()

        async def sample() -> None:
            # One count per sample: a single SQL statement, so a consistent snapshot.
            while not done.is_set():
                result.samples.append(await client.count_flow_runs(
                    work_pool_filter=pool_filter(queue), flow_run_filter=state_filter(any_=[StateType.RUNNING])))
                await anyio.sleep(SAMPLE_SECONDS)

        async with anyio.create_task_group() as group:
            group.start_soon(sample)
            began = time.monotonic()
            await enqueue_jobs(queue, source, markers, records, seed)
            result.enqueue_seconds = time.monotonic() - began
            progress(f"{len(markers)} jobs enqueued in {result.enqueue_seconds:.1f} s")
            deadline = time.monotonic() + timeout
            reported = 0.0
            while True:
                open_runs = await client.count_flow_runs(
                    work_pool_filter=pool_filter(queue), flow_run_filter=state_filter(not_any_=final))
                if open_runs == 0:
                    break
                if time.monotonic() > deadline:
                    progress(f"timeout: {open_runs} runs still not final after {timeout:.0f} s")
                    break
                if time.monotonic() - reported > 10:
                    reported = time.monotonic()
                    progress(f"{len(markers) - open_runs}/{len(markers)} final; "
                             f"last sample {result.samples[-1] if result.samples else '-'} running")
                await anyio.sleep(1.0)
            done.set()
        runs: list[Any] = []
        while True:
            page = await client.read_flow_runs(work_pool_filter=pool_filter(queue), limit=200, offset=len(runs))
            runs += page
            if len(page) < 200:
                return runs


def read_records(folder: Path) -> list[dict[str, Any]]:
    return [json.loads(path.read_text()) for path in sorted(folder.glob("*.json"))]


def run_drill(jobs: int = 500, agents: int = 3, max_jobs: int = 4, keep: bool = False, seed: int = 0) -> Result:
    """Run the whole drill and return what it measured (check `result.failures()`).

    Raises DrillError when it cannot run: PostgreSQL missing, a process that
    would not start. Everything it started is stopped before it returns or raises.

    Example::

        result = run_drill(jobs=60, agents=3, max_jobs=4)
        print(result.table())
    """
    import anyio

    result = Result(jobs=jobs, agents=agents, max_jobs=max_jobs)
    with contextlib.ExitStack() as cleanup:
        server = start_drill_server(cleanup, "load-drill", keep)
        workdir, home, cluster, api_url = server.workdir, server.home, server.cluster, server.api_url
        result.postgres_version = cluster.version()
        records, job_dir = workdir / "records", workdir / "job"
        for folder in (records, job_dir):
            folder.mkdir()
        (job_dir / "job.py").write_text(JOB_PY)

        env = child_env(home, api_url)
        queue = f"{QUEUE_PREFIX}-{secrets.token_hex(4)}"
        cli(env, "queue", "create", queue, "--resource", "local-process", "--no-require-wandb-run",
            "--description", "load drill")
        started_agents: list[AgentProcess] = []

        def stop_agents() -> None:
            for agent in reversed(started_agents):
                agent.stop()

        cleanup.callback(stop_agents)
        for index in range(agents):
            started_agents.append(AgentProcess(["-q", queue, "--max-jobs", str(max_jobs), "--name", f"{queue}-agent-{index}"],
                                               workdir / f"agent-{index}.log", env))
        for agent in started_agents:
            agent.wait_ready(AGENT_READY_SECONDS)
        progress(f"{agents} agents ready on {queue} (pids {', '.join(str(a.pid) for a in started_agents)})")

        nonce = secrets.token_hex(3)
        markers = [f"ld{nonce}{index:05d}" for index in range(jobs)]
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL, temporary_settings

        # Prefect in this process may already point elsewhere (the test suite's
        # server): settings are read on import, so override them here.
        with temporary_settings(updates={PREFECT_API_URL: api_url},
                                restore_defaults={PREFECT_API_AUTH_STRING, PREFECT_API_KEY}):
            from prefect_launch.sources import code

            source = code.upload(job_dir, code.ensure_default_storage(home))
            started = time.time()
            timeout = max(MIN_DRAIN_SECONDS, SECONDS_PER_JOB_ALLOWED * jobs)
            runs = anyio.run(drain, queue, source, markers, records, seed, result, timeout)
        summarize(result, markers, read_records(records), {agent.pid for agent in started_agents}, runs, started)
        # The server's answers alone would not show which database it used.
        result.flow_runs_in_postgres = int(cluster.query(
            f"SELECT count(*) FROM flow_run WHERE name LIKE 'ld{nonce}%'"))
        progress(f"done: {result.jobs_per_minute:.0f} jobs/min; stopping agents, server and PostgreSQL")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="jobs to enqueue (default 500)")
    parser.add_argument("--agents", type=int, default=3, help="agent processes (default 3)")
    parser.add_argument("--max-jobs", type=int, default=4, help="each agent's max_jobs (default 4)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the jobs' sleep times")
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (logs, records, database)")
    args = parser.parse_args()
    return run_and_report(lambda: run_drill(args.jobs, args.agents, args.max_jobs, keep=args.keep, seed=args.seed))


if __name__ == "__main__":
    sys.exit(main())
