"""Chaos drill: jobs on every local target and on Kubernetes while agents are killed and the server restarts.

A real Prefect server on its own PostgreSQL cluster (`prefect_server.py`), N agents each serving
four queues with one `--max-jobs M`: local-process, local-container, local-container with
`"rm": true` (the seed's docker config), and kubernetes on the stand-in (`tests/kube_standin.py`
with its Job, TTL-after-finished and garbage-collection controllers; Jobs go 2 s after they end;
its kubelet `tests/kube_kubelet.py` runs each Job's container as a process). J jobs, spread
evenly over the four queues, each sleeping 0.5-3 s; one in ten exits 3. Every job writes its
start (one line per start) and, at its end, its exit code into its run folder (`WANDB_DIR`:
the agent's `runs/<run id>`, mounted into a container, set by the Kubernetes queue's config).

Once every job is enqueued, as the runs end, the drill kills a random agent with SIGKILL at
KILLS random moments (starting a new one in its place 0.5-3 s later) and stops and starts the
Prefect server RESTARTS times (same port and database, down 2-8 s plus its start), all spread
over 20-90% of the runs' ends. Then, per job, from its own records and its run's states:

- lost: never started (no start of its own, and for local-process no process the agent started);
  started twice: more than one start;
- its final state matches what it did: exit 0 Completed, exit 3 Failed, and a local-process job
  killed with its agent (started, never ended) Crashed, also when the agent's record shows the
  process started and the job's first line had not run yet (counted apart); a false failure is a
  job that exited 0 whose run did not end Completed;
- at most `max_jobs` runs Running at once per agent process (from the owner tags on the runs'
  states, each agent's time ending at its kill);
- each orphan's wait: from its agent's kill to the state that took it over (adopted: the
  adopting Running state; requeued: Scheduled back on its queue).

Run it from the repository root, as root (PostgreSQL runs as `postgres`), with Docker up:

    .venv/bin/python drills/chaos.py                                  # 1,000 jobs, 3 agents x 4, 12 kills, 2 restarts
    .venv/bin/python drills/chaos.py --jobs 24 --max-jobs 2 --kills 3 --restarts 1   # the CI size (tests/test_chaos.py)

Progress on stderr, the table on stdout; exit code 1 when a check failed, 2 when the drill
could not run.
"""

from __future__ import annotations

import argparse
import contextlib
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
from load import max_overlap
from prefect_server import (child_env, cli, over_max_jobs, progress, run_and_report, stable_port, start_drill_server,
                            start_server_on, table_row)
from restart import BASE_IMAGE, create_kubernetes_queue, create_queue, kubernetes_cluster

from prefect_launch.targets.local_process import STARTED_RECORD

QUEUES = ("process", "container", "container-rm", "kubernetes")
JOB_SECONDS = (0.5, 3.0)
FAILING_EXIT = 3
FAILING_SHARE = 0.1
ENQUEUE_CONCURRENCY = 8
CHAOS_BETWEEN = (0.2, 0.9)  # kills and restarts fall between these shares of runs ended
AGENT_RESTART_DELAY = (0.5, 3.0)
SERVER_DOWN_SECONDS = (2.0, 8.0)
SECONDS_PER_JOB_ALLOWED = 6.0
MIN_SECONDS = 300.0
POLL_SECONDS = 1.0

# Writes each start and, at its end, its exit code into its run folder; sleeps argv[1] s, exits argv[2].
JOB_PY = """\
import os, sys, time
folder = os.environ["WANDB_DIR"]
os.makedirs(folder, exist_ok=True)
seconds, code = float(sys.argv[1]), int(sys.argv[2])
with open(os.path.join(folder, "starts"), "a") as out:
    out.write(f"{time.time()}\\n")
print("working", flush=True)
time.sleep(seconds)
with open(os.path.join(folder, "exit"), "w") as out:
    out.write(f"{code}\\n")
sys.exit(code)
"""


@dataclass(frozen=True)
class Job:
    run_id: str
    queue: str  # one of QUEUES
    seconds: float
    exit_code: int


@dataclass
class Result:
    jobs: int
    agents: int
    max_jobs: int
    postgres_version: str = ""
    per_queue: dict[str, int] = field(default_factory=dict)
    kills: int = 0
    restarts: int = 0
    restart_seconds: list[float] = field(default_factory=list)  # each outage, stop to answering again
    lost: list[str] = field(default_factory=list)
    twice: list[str] = field(default_factory=list)
    false_failures: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)  # final state not what the job did
    # local-process jobs whose process the agent started, stopped with their agent before the job's first line
    killed_before_first_line: int = 0
    outcomes: dict[str, int] = field(default_factory=dict)  # expected state -> runs that ended so
    max_running_per_agent: dict[str, int] = field(default_factory=dict)  # agent process -> peak Running
    orphan_waits: dict[str, list[float]] = field(default_factory=dict)  # adopted / requeued -> seconds
    wall_seconds: float = 0.0

    def failures(self) -> list[str]:
        problems = [f"{len(runs)} run(s) {what}, e.g. {runs[:3]}" for what, runs in (
            ("lost (the job never ran)", self.lost), ("started twice", self.twice),
            ("failed falsely (exit 0, not Completed)", self.false_failures),
            ("ended in a state other than what the job did", self.mismatched)) if runs]
        problems += over_max_jobs(self.max_running_per_agent, self.max_jobs)
        if not self.max_running_per_agent:
            problems.append("no run was seen Running")
        return problems

    def table(self) -> str:
        row = table_row(58, 16, 6)

        def waits(kind: str) -> str:
            seconds = sorted(self.orphan_waits.get(kind, []))
            if not seconds:
                return "-"
            return (f"{statistics.median(seconds):.1f} / {seconds[int(0.9 * (len(seconds) - 1))]:.1f} "
                    f"/ {seconds[-1]:.1f}")

        mix = "/".join(str(self.per_queue.get(queue, 0)) for queue in QUEUES)
        peaks = sorted(self.max_running_per_agent.values(), reverse=True)
        ended = sum(self.outcomes.values())
        lines = [
            f"Chaos drill: {self.jobs} jobs ({'/'.join(QUEUES)}: {mix}), {self.agents} agents x max_jobs "
            f"{self.max_jobs}, Prefect server on {self.postgres_version}",
            f"  {'':58} {'measured':>16} {'limit':>6}  check",
            row("agents killed (kill -9) / server restarts", f"{self.kills} / {self.restarts}"),
            row("  server outages, stop to answering again (s)",
                ", ".join(f"{seconds:.0f}" for seconds in self.restart_seconds) or "-"),
            row("lost (never started)", len(self.lost), 0, not self.lost),
            row("started twice", len(self.twice), 0, not self.twice),
            row("false failures (exit 0, run not Completed)", len(self.false_failures), 0, not self.false_failures),
            row("final state matches what the job did", f"{ended - len(self.mismatched)}/{self.jobs}", "",
                not self.mismatched and ended == self.jobs),
            row("  Completed (exit 0) / Failed (exit 3) / Crashed (killed with",
                "/".join(str(self.outcomes.get(state, 0)) for state in ("Completed", "Failed", "Crashed"))),
            row("  its local-process agent)", ""),
            row("  of the Crashed, killed before the job's first line ran", self.killed_before_first_line),
            row("most runs Running at once per agent process", max(peaks, default=0), self.max_jobs,
                bool(peaks) and peaks[0] <= self.max_jobs),
            row(f"  agent processes at max_jobs / below (of {len(peaks)})",
                f"{sum(p == self.max_jobs for p in peaks)} / {sum(p < self.max_jobs for p in peaks)}"),
            row("orphans adopted / put back on their queue",
                f"{len(self.orphan_waits.get('adopted', []))} / {len(self.orphan_waits.get('requeued', []))}"),
            row("  wait, kill to adoption (s): median / p90 / max", waits("adopted")),
            row("  wait, kill to requeue (s): median / p90 / max", waits("requeued")),
            row("wall time, first enqueue to last end (s)", f"{self.wall_seconds:.0f}"),
            row("jobs per minute", f"{self.jobs / self.wall_seconds * 60:.0f}" if self.wall_seconds else "-"),
            f"  result: {'FAILED' if self.failures() else 'PASSED'}",
        ]
        return "\n".join(lines + [f"  - {problem}" for problem in self.failures()])


def plan_jobs(count: int, rng: random.Random, prefix: str) -> list[Job]:
    """`count` jobs spread evenly over the queues, each with its sleep and exit code.

    >>> jobs = plan_jobs(8, random.Random(1), "x")
    >>> [job.queue for job in jobs[:4]], len({job.run_id for job in jobs})
    (['process', 'container', 'container-rm', 'kubernetes'], 8)
    """
    return [Job(run_id=f"{prefix}{index:05d}", queue=QUEUES[index % len(QUEUES)],
                seconds=round(rng.uniform(*JOB_SECONDS), 2),
                exit_code=FAILING_EXIT if rng.random() < FAILING_SHARE else 0)
            for index in range(count)]


@dataclass
class Agent:
    """One agent process of the drill, and when it was killed."""

    process: AgentProcess
    started_ticks: int
    killed_at: float | None = None

    @property
    def identity(self) -> tuple[int, int]:
        """(pid, start ticks): what its owner tag on a run's states says."""
        return self.process.pid, self.started_ticks


def _start_ticks(pid: int) -> int:
    return int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])


def expected_state(starts: int, exit_code: int | None, queue: str, process_started: bool = False) -> str | None:
    """What a job's run should end as, from what the job did; None for a job that never ran. `process_started`:
    the agent started a local-process job's process (its record in the run folder), whether or not the job's
    first line ran before its agent died and took it along.

    >>> expected_state(1, 0, "container"), expected_state(1, 3, "kubernetes"), expected_state(1, None, "process")
    ('Completed', 'Failed', 'Crashed')
    >>> expected_state(0, None, "container") is None, expected_state(1, None, "container")
    (True, 'Running')
    >>> expected_state(0, None, "process") is None, expected_state(0, None, "process", process_started=True)
    (True, 'Crashed')
    """
    if starts == 0 and not process_started:
        return None
    if exit_code is not None:
        return "Completed" if exit_code == 0 else "Failed"
    # Only a local-process job dies with its agent; any other job that never ended is still running.
    return "Crashed" if queue == "process" else "Running"


def running_spans(states: list[Any], deaths: dict[tuple[int, int], float], now: float) -> dict[tuple[int, int], list[tuple[float, float]]]:
    """Per agent process (pid, start ticks): the spans a run was Running under its owner tag, each ended by the
    run's next state or by the agent's death, whichever came first."""
    from prefect_launch.ownership import Owner

    spans: dict[tuple[int, int], list[tuple[float, float]]] = {}
    ordered = sorted(states, key=lambda state: state.timestamp)
    for state, following in zip(ordered, [*ordered[1:], None]):
        owner = Owner.parse(state.message) if state.is_running() else None
        if owner is None:
            continue
        identity = (owner.pid, owner.started)
        end = following.timestamp.timestamp() if following is not None else now
        end = min(end, deaths.get(identity, end))
        spans.setdefault(identity, []).append((state.timestamp.timestamp(), max(end, state.timestamp.timestamp())))
    return spans


def orphan_waits(states: list[Any], deaths: dict[tuple[int, int], float]) -> list[tuple[str, float]]:
    """(kind, seconds) for each time this run's agent was killed while holding it (Pending or Running): the wait
    until the state that took it over, `adopted` (an adopting Running state) or `requeued` (Scheduled)."""
    from prefect_launch.ownership import Owner

    ordered = sorted(states, key=lambda state: state.timestamp)
    found = []
    for identity, died in deaths.items():
        before = [state for state in ordered if state.timestamp.timestamp() <= died]
        after = [state for state in ordered if state.timestamp.timestamp() > died]
        held = before[-1] if before else None
        owner = Owner.parse(held.message) if held is not None and (held.is_running() or held.is_pending()) else None
        if owner is None or (owner.pid, owner.started) != identity or not after:
            continue
        taken = next((state for state in after if state.is_scheduled()
                      or (state.is_running() and "adopted" in (state.message or ""))), None)
        if taken is not None:
            found.append(("requeued" if taken.is_scheduled() else "adopted", taken.timestamp.timestamp() - died))
    return found


class Chaos:
    """The drill's processes: the agents it kills and replaces, and the server it restarts."""

    def __init__(self, queues: list[str], agents: int, max_jobs: int, env: dict[str, str], logs: Path,
                 home: Path, database_url: str, port: int, rng: random.Random) -> None:
        self.args = [arg for queue in queues for arg in ("-q", queue)] + ["--max-jobs", str(max_jobs)]
        self.env, self.logs, self.home, self.database_url, self.port, self.rng = env, logs, home, database_url, port, rng
        self.slots: list[Agent] = []
        self.all: list[Agent] = []
        self.restart_seconds: list[float] = []
        for _ in range(agents):
            self.slots.append(self._start())
        for agent in self.slots:
            agent.process.wait_ready()

    def _start(self) -> Agent:
        process = AgentProcess(self.args, self.logs / f"agent-{len(self.all)}.log", self.env)
        agent = Agent(process, _start_ticks(process.pid))
        self.all.append(agent)
        return agent

    def kill_one(self) -> None:
        slot = self.rng.randrange(len(self.slots))
        agent = self.slots[slot]
        agent.process.kill()
        agent.killed_at = time.time()
        progress(f"killed agent {agent.process.pid}")
        time.sleep(self.rng.uniform(*AGENT_RESTART_DELAY))
        self.slots[slot] = self._start()
        self.slots[slot].process.wait_ready()

    def restart_server(self) -> None:
        from prefect_launch.server import stop_server

        stopped = time.monotonic()
        stop_server(self.home)
        progress("server stopped")
        time.sleep(self.rng.uniform(*SERVER_DOWN_SECONDS))
        start_server_on(self.home, self.database_url, self.port)
        self.restart_seconds.append(time.monotonic() - stopped)
        progress(f"server back after {self.restart_seconds[-1]:.0f} s")

    def stop(self) -> None:
        for agent in self.slots:
            agent.process.stop()

    @property
    def deaths(self) -> dict[tuple[int, int], float]:
        return {agent.identity: agent.killed_at for agent in self.all if agent.killed_at is not None}


async def enqueue_all(jobs: list[Job], queues: dict[str, str], code_source: Any) -> None:
    import anyio
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import enqueue
    from prefect_launch.spec import ImageSource, LaunchSpec

    def spec(job: Job) -> LaunchSpec:
        args = [f"{job.seconds}", str(job.exit_code)]
        if job.queue == "process":
            return LaunchSpec(source=code_source, run_id=job.run_id, project="chaos-drill",
                              entry_point=["python", "job.py", *args])
        return LaunchSpec(source=ImageSource(image=BASE_IMAGE), run_id=job.run_id, project="chaos-drill",
                          entry_point=["python", "-c", JOB_PY, *args])

    limiter = anyio.Semaphore(ENQUEUE_CONCURRENCY)
    async with get_client() as client:

        async def put(job: Job) -> None:
            async with limiter:
                await enqueue(client, queues[job.queue], spec(job), None, {})

        async with anyio.create_task_group() as group:
            for job in jobs:
                group.start_soon(put, job)


async def ended_count(queues: list[str]) -> int:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (FlowRunFilter, FlowRunFilterState, FlowRunFilterStateType,
                                                WorkPoolFilter, WorkPoolFilterName)
    from prefect.client.schemas.objects import StateType

    final = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    async with get_client() as client:
        return await client.count_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=queues)),
            flow_run_filter=FlowRunFilter(state=FlowRunFilterState(type=FlowRunFilterStateType(any_=final))))


async def read_runs(queues: list[str]) -> dict[str, tuple[Any, list[Any]]]:
    """Every run of the queues by name (its run id), with its states."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import WorkPoolFilter, WorkPoolFilterName

    runs: list[Any] = []
    async with get_client() as client:
        while True:
            page = await client.read_flow_runs(work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=queues)),
                                               limit=200, offset=len(runs))
            runs += page
            if len(page) < 200:
                break
        states: dict[Any, list[Any]] = {}
        limiter = anyio.Semaphore(ENQUEUE_CONCURRENCY)

        async def read(run: Any) -> None:
            async with limiter:
                states[run.id] = await client.read_flow_run_states(run.id)

        async with anyio.create_task_group() as group:
            for run in runs:
                group.start_soon(read, run)
    return {run.name: (run, states[run.id]) for run in runs}


def judge(result: Result, jobs: list[Job], runs: dict[str, tuple[Any, list[Any]]], home: Path,
          deaths: dict[tuple[int, int], float], now: float) -> None:
    """Fill `result` from each job's records and its run's states."""
    spans: dict[tuple[int, int], list[tuple[float, float]]] = {}
    for job in jobs:
        folder = home / "runs" / job.run_id
        starts = len((folder / "starts").read_text().splitlines()) if (folder / "starts").exists() else 0
        exit_code = int((folder / "exit").read_text()) if (folder / "exit").exists() else None
        run, states = runs.get(job.run_id, (None, []))
        actual = run.state.name if run is not None and run.state is not None else "missing"
        process_started = job.queue == "process" and (folder / STARTED_RECORD).exists()
        if process_started and starts == 0:
            result.killed_before_first_line += 1
        expected = expected_state(starts, exit_code, job.queue, process_started)
        described = f"{job.run_id} ({job.queue}: {actual}: {run.state.message if run and run.state else ''})"
        if expected is None:
            result.lost.append(described)
        elif actual != expected:
            result.mismatched.append(f"{described}, expected {expected}")
        else:
            result.outcomes[expected] = result.outcomes.get(expected, 0) + 1
        if starts > 1:
            result.twice.append(described)
        if exit_code == 0 and actual != "Completed":
            result.false_failures.append(described)
        for identity, agent_spans in running_spans(states, deaths, now).items():
            spans.setdefault(identity, []).extend(agent_spans)
        for kind, seconds in orphan_waits(states, deaths):
            result.orphan_waits.setdefault(kind, []).append(seconds)
    result.max_running_per_agent = {f"{pid}:{ticks}": max_overlap(agent_spans) for (pid, ticks), agent_spans in spans.items()}


def run_drill(jobs: int = 1000, agents: int = 3, max_jobs: int = 4, kills: int = 12, restarts: int = 2,
              seed: int = 0, keep: bool = False) -> Result:
    """Run the whole drill and return what it measured (check `result.failures()`); DrillError if it cannot run."""
    import anyio

    rng = random.Random(seed)
    result = Result(jobs=jobs, agents=agents, max_jobs=max_jobs)
    with contextlib.ExitStack() as cleanup:
        server = start_drill_server(cleanup, "chaos-drill", keep, port=stable_port())
        workdir, home, api_url = server.workdir, server.home, server.api_url
        result.postgres_version = server.cluster.version()
        logs, job_dir = workdir / "agents", workdir / "job"
        for folder in (logs, job_dir):
            folder.mkdir()
        (job_dir / "job.py").write_text(JOB_PY)
        agent_env = cleanup.enter_context(kubernetes_cluster(workdir))
        env = {**child_env(home, api_url), **agent_env}

        nonce = secrets.token_hex(3)
        queues = {kind: f"chaos-{nonce}-{kind}" for kind in QUEUES}
        cli(env, "queue", "create", queues["process"], "--resource", "local-process", "--no-require-wandb-run")
        create_queue(queues["container"], workdir, env)
        create_queue(queues["container-rm"], workdir, env, rm=True)
        create_kubernetes_queue(queues["kubernetes"], workdir, home, env)
        chaos = Chaos(list(queues.values()), agents, max_jobs, env, logs, home, server.cluster.url, server.port, rng)
        cleanup.callback(chaos.stop)
        progress(f"{agents} agents ready on {', '.join(queues.values())}")

        planned = plan_jobs(jobs, rng, f"ch{nonce}")
        result.per_queue = {kind: sum(job.queue == kind for job in planned) for kind in QUEUES}
        events = sorted([(rng.uniform(*CHAOS_BETWEEN), "kill") for _ in range(kills)]
                        + [(rng.uniform(*CHAOS_BETWEEN), "restart") for _ in range(restarts)])
        from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_KEY, PREFECT_API_URL, temporary_settings

        with temporary_settings(updates={PREFECT_API_URL: api_url},
                                restore_defaults={PREFECT_API_AUTH_STRING, PREFECT_API_KEY}):
            from prefect_launch.sources import code

            source = code.upload(job_dir, code.ensure_default_storage(home))
            began = time.time()
            anyio.run(enqueue_all, planned, queues, source)
            progress(f"{jobs} jobs enqueued in {time.time() - began:.0f} s")
            deadline = time.monotonic() + max(MIN_SECONDS, SECONDS_PER_JOB_ALLOWED * jobs)
            ended, reported = 0, 0.0
            while ended < jobs and time.monotonic() < deadline:
                try:
                    ended = anyio.run(ended_count, list(queues.values()))
                except Exception as exc:  # the server is restarting, or busy: look again
                    progress(f"could not count runs ({type(exc).__name__}); again")
                while events and ended >= events[0][0] * jobs:
                    _, what = events.pop(0)
                    if what == "kill":
                        chaos.kill_one()
                        result.kills += 1
                    else:
                        chaos.restart_server()
                        result.restarts += 1
                if time.monotonic() - reported > 15:
                    reported = time.monotonic()
                    progress(f"{ended}/{jobs} runs ended; {result.kills} kills, {result.restarts} restarts")
                time.sleep(POLL_SECONDS)
            if ended < jobs:
                progress(f"timeout: {jobs - ended} runs not ended")
            runs = anyio.run(read_runs, list(queues.values()))
        now = time.time()
        ends = [run.end_time.timestamp() for run, _ in runs.values() if run.end_time]
        result.wall_seconds = max(ends, default=now) - began
        result.restart_seconds = chaos.restart_seconds
        judge(result, planned, runs, home, chaos.deaths, now)
        progress("done; stopping agents, server, stand-in and PostgreSQL")
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000)
    parser.add_argument("--agents", type=int, default=3)
    parser.add_argument("--max-jobs", type=int, default=4)
    parser.add_argument("--kills", type=int, default=12, help="agents killed with SIGKILL (default 12)")
    parser.add_argument("--restarts", type=int, default=2, help="server restarts (default 2)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--keep", action="store_true", help="keep the temporary folders (logs, run folders, database)")
    args = parser.parse_args()
    return run_and_report(lambda: run_drill(args.jobs, args.agents, args.max_jobs, args.kills, args.restarts, args.seed,
                                            args.keep), f" (seed {args.seed})")


if __name__ == "__main__":
    sys.exit(main())
