"""Dispatch benchmark: the prefect-launch agent against Prefect's stock process worker.

What it measures, all against one embedded Prefect server (SQLite) that this
script starts in a temporary home and stops at the end:

1. Latency, idle agent: from just before the create-flow-run API call to the
   first line of the job's code (the job stamps `time.time()` into a file).
   Samples are taken one at a time, ~1.5 s apart, each after the previous
   run has finished. Measured for the prefect-launch agent, the stock process
   worker at its default 10 s polling and at 1 s polling (the stamp is the
   first line of the flow function), and a bare `subprocess.Popen` of the
   same job (the floor: interpreter start-up only).
2. Throughput: a backlog of N trivial jobs, created before the dispatcher
   starts; the agent with `--max-jobs 8` against the stock worker with
   `--limit 8` and 1 s polling; jobs per minute from the first run's start to
   the last run's end (creating runs costs the server the same either way).
3. Memory: the agent process's RSS (VmRSS) idle and while 8 jobs run at once
   (each waits for a release file after it started), as MB per running job;
   the same with job processes included, for the agent and for the stock
   worker (whose per-run engine process is where the flow runs).

Run it from the repository root, with nothing else busy on the machine:

    .venv/bin/python bench/dispatch.py            # about 10 minutes
    .venv/bin/python bench/dispatch.py --quick    # about 3 minutes

Progress goes to stderr, the result table to stdout. Everything it starts
(server, agent, workers) is stopped on exit, Ctrl-C included; it binds only
127.0.0.1 and uses no other network.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Awaitable, Callable, Iterator

REPO = Path(__file__).resolve().parent.parent
VENV_BIN = Path(sys.executable).parent
PYTHON = sys.executable

LAUNCH_QUEUE = "bench-launch"
STOCK_POOL = "bench-stock"
MAX_JOBS = 8
IDLE_GAP_SECONDS = 1.5
READY_TIMEOUT_SECONDS = 60.0
RUN_TIMEOUT_SECONDS = 120.0
# The many-jobs benches end their untimed rest this many a second: at 50 a second, the agent's completions
# exhausted the server's database pool (SQLAlchemy's 5 + 10 connections, 30 s timeout) and its count queries failed.
REST_PACE = 10
STOP_TIMEOUT_SECONDS = 20.0

GOAL_LATENCY_MEDIAN = 0.5
GOAL_LATENCY_P95 = 1.0
GOAL_THROUGHPUT_RATIO = 5.0
GOAL_MB_PER_JOB = 15.0

# The job: its first line stamps the time; it writes the stamp to argv[1]
# (atomically, so a reader never sees half a number), then, if given a release
# file argv[2], waits until that file exists (so N jobs are surely running at once).
JOB_PY = """\
import time; started = time.time()
import os, sys
with open(sys.argv[1] + ".tmp", "w") as out:
    out.write(repr(started))
os.replace(sys.argv[1] + ".tmp", sys.argv[1])
deadline = time.time() + 120
while len(sys.argv) > 2 and not os.path.exists(sys.argv[2]) and time.time() < deadline:
    time.sleep(0.05)
"""

# The same job as a flow for the stock worker: the stamp is the flow's first line.
FLOW_PY = """\
import os
import time

from prefect import flow


@flow(name="bench-stamp", persist_result=False)
def stamp(out: str, release: str = "") -> None:
    started = time.time()
    with open(out + ".tmp", "w") as handle:
        handle.write(repr(started))
    os.replace(out + ".tmp", out)
    deadline = time.time() + 120
    while release and not os.path.exists(release) and time.time() < deadline:
        time.sleep(0.05)
"""


@dataclass(frozen=True)
class Sizes:
    latency_samples: int
    default_poll_samples: int
    throughput_jobs: int
    memory_jobs: int


FULL = Sizes(latency_samples=20, default_poll_samples=5, throughput_jobs=200, memory_jobs=MAX_JOBS)
QUICK = Sizes(latency_samples=5, default_poll_samples=2, throughput_jobs=40, memory_jobs=MAX_JOBS)


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- processes -------------------------------------------------------------


class Processes:
    """The agent and workers this run started; each is stopped by its own PID."""

    def __init__(self, env: dict[str, str], logs: Path) -> None:
        self.env = env
        self.logs = logs
        self.running: list[subprocess.Popen] = []

    def start(self, name: str, argv: list[str], ready_text: str, extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        """Start a long-running process in its own session; return once its log shows `ready_text`."""
        log_path = self.logs / f"{name}.log"
        with open(log_path, "ab") as log:
            proc = subprocess.Popen(
                argv,
                env={**self.env, **(extra_env or {})},
                cwd=self.logs,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self.running.append(proc)
        deadline = time.monotonic() + READY_TIMEOUT_SECONDS
        while ready_text not in log_path.read_text(errors="replace"):
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not become ready; see {log_path}")
            time.sleep(0.1)
        return proc

    def stop(self, proc: subprocess.Popen) -> None:
        """SIGINT (twice: a Prefect worker ignores its first), then SIGKILL its process group."""
        for _ in range(2):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    proc.wait(timeout=STOP_TIMEOUT_SECONDS / 2)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        if proc in self.running:
            self.running.remove(proc)

    def stop_all(self) -> None:
        for proc in list(reversed(self.running)):
            self.stop(proc)


@contextlib.contextmanager
def running(processes: Processes, *args: Any, **kwargs: Any) -> Iterator[subprocess.Popen]:
    proc = processes.start(*args, **kwargs)
    try:
        yield proc
    finally:
        processes.stop(proc)


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def tree_rss_mb(root: int) -> float:
    """RSS of `root` and all its descendants."""
    children: dict[int, list[int]] = {}
    for stat in Path("/proc").glob("[0-9]*/stat"):
        with contextlib.suppress(OSError):
            fields = stat.read_text().rsplit(")", 1)[1].split()
            children.setdefault(int(fields[1]), []).append(int(stat.parent.name))
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        with contextlib.suppress(OSError):
            total += rss_mb(pid)
        todo.extend(children.get(pid, []))
    return total


def threads(pid: int) -> int:
    """How many threads process `pid` has now."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Threads:"):
            return int(line.split()[1])
    return 0


def cpu_seconds(pid: int) -> float:
    """User + system CPU of `pid` and of its children it has waited for."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return sum(int(value) for value in fields[11:15]) / os.sysconf("SC_CLK_TCK")


async def sample_rss(pid: int, seconds: float, tree: bool = False) -> float:
    """Median RSS (MB) over `seconds`, sampled every 0.2 s."""
    import anyio

    samples = []
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        samples.append(tree_rss_mb(pid) if tree else rss_mb(pid))
        await anyio.sleep(0.2)
    return statistics.median(samples)


# --- setup ------------------------------------------------------------------


def start_server(home: Path) -> str:
    """Start prefect-launch's embedded server for `home`; Ctrl-C waits until it is recorded."""
    from prefect_launch.server import ensure_server

    # Deferring SIGINT means an interrupt can never leave an unrecorded server behind.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        return ensure_server(home)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def child_env(home: Path, url: str) -> dict[str, str]:
    """The environment for this process and its children: only our server, only our home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(
        PREFECT_API_URL=url,
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_LAUNCH_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
    )
    return env


def write_job_code(home: Path) -> tuple[Path, Path]:
    job_dir, flow_dir = home / "job", home / "flow"
    job_dir.mkdir()
    flow_dir.mkdir()
    (job_dir / "job.py").write_text(JOB_PY)
    (flow_dir / "flow.py").write_text(FLOW_PY)
    return job_dir, flow_dir


async def create_launch_queue(client: Any, home: Path, job_dir: Path) -> Any:
    """The prefect-launch queue and the uploaded job code; returns the code source."""
    from prefect_launch.deployments.queues import QueueDefinition, create_queue
    from prefect_launch.sources import code
    from prefect_launch.spec import Resource

    await create_queue(
        client, QueueDefinition(name=LAUNCH_QUEUE, resource=Resource.local_process, require_wandb_run=False)
    )
    return code.upload(job_dir, code.ensure_default_storage(home))


async def create_stock_deployment(client: Any, flow_dir: Path) -> Any:
    """A `process` work pool and a deployment of the stamp flow; returns the deployment id."""
    from prefect.client.schemas.actions import WorkPoolCreate
    from prefect.workers.process import ProcessWorker

    await client.create_work_pool(
        WorkPoolCreate(
            name=STOCK_POOL, type="process", base_job_template=ProcessWorker.get_default_base_job_template()
        )
    )
    flow_id = await client.create_flow_from_name("bench-stamp")
    return await client.create_deployment(
        flow_id=flow_id,
        name="bench-stamp",
        work_pool_name=STOCK_POOL,
        entrypoint="flow.py:stamp",
        job_variables={"working_dir": str(flow_dir)},
    )


# --- submitting and waiting -------------------------------------------------

# A submitter starts one job that stamps into `out` and, given a `release` file, waits
# for it; it returns (time just before the create-flow-run call, flow run id or None).
Submit = Callable[[Path, Path | None], Awaitable[tuple[float, Any]]]


def launch_submitter(client: Any, source: Any, job_dir: Path) -> Submit:
    """Jobs through prefect-launch's public `enqueue`, timed at its create-flow-run call."""
    from prefect_launch.deployments.queues import enqueue
    from prefect_launch.spec import LaunchSpec

    request = client.request
    call_times: list[float] = []

    async def timed_request(method: str, path: str, *args: Any, **kwargs: Any) -> Any:
        if path == "/deployments/{id}/create_flow_run":
            call_times.append(time.time())
        return await request(method, path, *args, **kwargs)

    client.request = timed_request

    async def submit(out: Path, release: Path | None) -> tuple[float, Any]:
        argv = ["python", "job.py", str(out)] + ([str(release)] if release else [])
        spec = LaunchSpec(source=source, entry_point=argv)
        run = await enqueue(client, LAUNCH_QUEUE, spec, None, {})
        return call_times[-1], run.id

    return submit


def stock_submitter(client: Any, deployment_id: Any) -> Submit:
    async def submit(out: Path, release: Path | None) -> tuple[float, Any]:
        started = time.time()
        run = await client.create_flow_run_from_deployment(
            deployment_id, parameters={"out": str(out), "release": str(release or "")}
        )
        return started, run.id

    return submit


async def subprocess_submit(out: Path, job_dir: Path) -> tuple[float, Any]:
    import anyio

    started = time.time()
    proc = subprocess.Popen([PYTHON, "job.py", str(out)], cwd=job_dir)
    await anyio.to_thread.run_sync(proc.wait)
    return started, None


async def wait_for_stamp(out: Path, timeout: float = RUN_TIMEOUT_SECONDS) -> float:
    import anyio

    deadline = time.monotonic() + timeout
    while not out.exists():
        if time.monotonic() > deadline:
            raise TimeoutError(f"no job stamped {out} within {timeout:.0f} s")
        await anyio.sleep(0.005)
    return float(out.read_text())


async def wait_for_runs(client: Any, run_ids: list[Any], timeout: float = RUN_TIMEOUT_SECONDS * 5) -> list[Any]:
    """Poll until every run is in a final state; return the runs.

    Polls count the runs not yet final (one cheap query); the runs themselves
    are read once at the end. Reading a 200-run backlog every second would
    load the server as much as the dispatcher under test does.
    """
    import anyio
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateType
    from prefect.client.schemas.objects import StateType

    final = [StateType.COMPLETED, StateType.FAILED, StateType.CRASHED, StateType.CANCELLED]
    deadline = time.monotonic() + timeout
    while True:
        pending = 0
        for start in range(0, len(run_ids), 200):
            pending += await client.count_flow_runs(
                flow_run_filter=FlowRunFilter(
                    id=FlowRunFilterId(any_=run_ids[start : start + 200]),
                    state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=final)),
                )
            )
        if pending == 0:
            break
        if time.monotonic() > deadline:
            raise TimeoutError(f"{pending} of {len(run_ids)} runs did not finish within {timeout:.0f} s")
        await anyio.sleep(1.0 if len(run_ids) > 1 else 0.1)
    runs = []
    for start in range(0, len(run_ids), 200):
        runs += await client.read_flow_runs(
            flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=run_ids[start : start + 200])), limit=200
        )
    return runs


def incomplete(runs: list[Any]) -> list[str]:
    """Each run of `runs` that did not complete: its id, its state and why."""
    return [f"{run.id} {run.state.name}: {run.state.message}" for run in runs if not run.state.is_completed()]


def check_completed(runs: list[Any], what: str) -> None:
    if bad := incomplete(runs):
        raise RuntimeError(f"{what}: {len(bad)} run(s) did not complete, e.g. {bad[0]}")


# --- measurements -------------------------------------------------------------


async def measure_latency(
    client: Any | None, submit: Submit, stamps: Path, samples: int, label: str
) -> list[float]:
    """`samples` one-at-a-time latencies (s), after one warm-up job that is not counted."""
    import anyio

    latencies = []
    for index in range(samples + 1):
        out = stamps / f"{label}-latency-{index}"
        started, run_id = await submit(out, None)
        latency = await wait_for_stamp(out) - started
        if run_id is not None:
            check_completed(await wait_for_runs(client, [run_id]), label)
        if index:
            latencies.append(latency)
            progress(f"  {label} latency {index}/{samples}: {latency:.3f} s")
        await anyio.sleep(IDLE_GAP_SECONDS)
    return latencies


@dataclass
class Throughput:
    jobs_per_minute: float
    worker_cpu: float
    server_cpu: float
    failed: list[str] = field(default_factory=list)  # the runs that did not complete, why


async def measure_throughput(ctx: "Context", submit: Submit, dispatcher: Callable[[], Any], label: str,
                             may_fail: bool = False) -> Throughput:
    """Jobs per minute draining a backlog: N runs created first, then the agent/worker started.

    Creating runs costs the server the same for both sides and is not what is
    compared, so the clock runs from the first run's start to the last completed one's end. Every
    run must complete unless `may_fail` (the stock worker crashes a run now and then when SQLite
    keeps the server busy: such runs are counted and left out of the jobs per minute, not fatal).
    """
    jobs = ctx.sizes.throughput_jobs
    run_ids = [(await submit(ctx.stamps / f"{label}-throughput-{index}", None))[1] for index in range(jobs)]
    progress(f"  {label}: {jobs} runs waiting; starting the dispatcher")
    server_before = cpu_seconds(ctx.server_pid)
    with dispatcher() as process:
        # The stock worker drains ~15 jobs/min here: allow 10 s per job.
        runs = await wait_for_runs(ctx.client, run_ids, timeout=max(RUN_TIMEOUT_SECONDS * 5, 10.0 * jobs))
        worker_cpu = cpu_seconds(process.pid)
    if not may_fail:
        check_completed(runs, f"{label} throughput")
    failed = incomplete(runs)
    runs = [run for run in runs if run.state.is_completed()]
    elapsed = max(run.end_time.timestamp() for run in runs) - min(run.start_time.timestamp() for run in runs)
    server_cpu = cpu_seconds(ctx.server_pid) - server_before
    progress(
        f"  {label}: {jobs} jobs in {elapsed:.1f} s; CPU per job: "
        f"worker+children {worker_cpu / jobs:.2f} s, server {server_cpu / jobs:.2f} s"
    )
    return Throughput(jobs_per_minute=len(runs) / elapsed * 60, worker_cpu=worker_cpu / jobs,
                      server_cpu=server_cpu / jobs, failed=failed)


@dataclass
class Memory:
    idle_mb: float
    busy_mb: float
    tree_busy_mb: float
    jobs: int

    @property
    def mb_per_job(self) -> float:
        return (self.busy_mb - self.idle_mb) / self.jobs

    @property
    def tree_mb_per_job(self) -> float:
        return (self.tree_busy_mb - self.idle_mb) / self.jobs


async def measure_memory(ctx: "Context", submit: Submit, pid: int, label: str) -> Memory:
    """RSS idle, then while N jobs run at once: each waits for a release file once it has started."""
    jobs = ctx.sizes.memory_jobs
    idle = await sample_rss(pid, 2.0)
    release = ctx.stamps / f"{label}-memory-release"
    outs = [ctx.stamps / f"{label}-memory-{index}" for index in range(jobs)]
    submitted = [await submit(out, release) for out in outs]
    for out in outs:
        await wait_for_stamp(out)
    busy = await sample_rss(pid, 2.0)
    tree_busy = await sample_rss(pid, 1.0, tree=True)
    release.touch()
    check_completed(await wait_for_runs(ctx.client, [run_id for _, run_id in submitted]), f"{label} memory")
    progress(f"  {label}: RSS idle {idle:.0f} MB, with {jobs} running {busy:.0f} MB ({tree_busy:.0f} MB with children)")
    return Memory(idle, busy, tree_busy, jobs)


# --- the benchmark ------------------------------------------------------------


@dataclass
class Results:
    latency: dict[str, list[float]]
    throughput: dict[str, Throughput]
    memory: dict[str, Memory]
    sizes: Sizes


async def bench_launch(ctx: "Context", results: Results) -> None:
    agent_argv = [str(VENV_BIN / "prefect-launch"), "agent", "-q", LAUNCH_QUEUE, "--max-jobs", str(MAX_JOBS)]
    progress("prefect-launch: starting the agent")
    submit = launch_submitter(ctx.client, ctx.source, ctx.job_dir)
    with running(ctx.processes, "agent", agent_argv, ready_text="ready on") as agent:
        results.latency["launch"] = await measure_latency(
            ctx.client, submit, ctx.stamps, ctx.sizes.latency_samples, "launch"
        )
        results.memory["launch"] = await measure_memory(ctx, submit, agent.pid, "launch")
    results.throughput["launch"] = await measure_throughput(
        ctx, submit, lambda: running(ctx.processes, "agent-drain", agent_argv, ready_text="ready on"), "launch"
    )


def stock_worker_argv() -> list[str]:
    return [str(VENV_BIN / "prefect"), "worker", "start", "--pool", STOCK_POOL, "--type", "process", "--limit", str(MAX_JOBS)]


async def bench_stock_fast(ctx: "Context", results: Results) -> None:
    progress("stock process worker, 1 s polling: starting")
    fast = {"PREFECT_WORKER_QUERY_SECONDS": "1"}
    submit = stock_submitter(ctx.client, ctx.deployment_id)
    with running(ctx.processes, "worker-1s", stock_worker_argv(), ready_text="started!", extra_env=fast) as worker:
        results.latency["stock-1s"] = await measure_latency(
            ctx.client, submit, ctx.stamps, ctx.sizes.latency_samples, "stock-1s"
        )
        results.memory["stock-1s"] = await measure_memory(ctx, submit, worker.pid, "stock-1s")
    results.throughput["stock-1s"] = await measure_throughput(
        ctx,
        submit,
        lambda: running(ctx.processes, "worker-1s-drain", stock_worker_argv(), ready_text="started!", extra_env=fast),
        "stock-1s",
        may_fail=True,
    )


async def bench_stock_default(ctx: "Context", results: Results) -> None:
    progress("stock process worker, default 10 s polling: starting")
    with running(ctx.processes, "worker-10s", stock_worker_argv(), ready_text="started!"):
        submit = stock_submitter(ctx.client, ctx.deployment_id)
        results.latency["stock-10s"] = await measure_latency(
            ctx.client, submit, ctx.stamps, ctx.sizes.default_poll_samples, "stock-10s"
        )


async def bench_floor(ctx: "Context", results: Results) -> None:
    progress("bare subprocess (floor)")

    async def submit(out: Path, release: Path | None) -> tuple[float, Any]:
        return await subprocess_submit(out, ctx.job_dir)

    results.latency["subprocess"] = await measure_latency(None, submit, ctx.stamps, ctx.sizes.latency_samples, "subprocess")


@dataclass
class Context:
    client: Any
    processes: Processes
    sizes: Sizes
    job_dir: Path
    stamps: Path
    source: Any
    deployment_id: Any
    server_pid: int


async def run_benchmark(home: Path, processes: Processes, sizes: Sizes) -> Results:
    from prefect.client.orchestration import get_client

    from prefect_launch.server import read_state

    job_dir, flow_dir = write_job_code(home)
    stamps = home / "stamps"
    stamps.mkdir()
    results = Results(latency={}, throughput={}, memory={}, sizes=sizes)
    async with get_client() as client:
        progress("creating the prefect-launch queue and the stock deployment")
        ctx = Context(
            client=client,
            processes=processes,
            sizes=sizes,
            job_dir=job_dir,
            stamps=stamps,
            source=await create_launch_queue(client, home, job_dir),
            deployment_id=await create_stock_deployment(client, flow_dir),
            server_pid=read_state(home)["pid"],
        )
        for part in (bench_floor, bench_launch, bench_stock_fast, bench_stock_default):
            await part(ctx, results)
    return results


# --- the report -----------------------------------------------------------------


def p95(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(0.95 * (len(ordered) - 1)))]


def verdict(ok: bool) -> str:
    return "MET" if ok else "MISSED"


LATENCY_ROWS = {
    "launch": "prefect-launch agent",
    "stock-10s": "stock process worker, 10 s poll (default)",
    "stock-1s": "stock process worker, 1 s poll",
    "subprocess": "bare subprocess (floor)",
}


def report(results: Results) -> str:
    lat, thr, mem = results.latency, results.throughput, results.memory
    stock_median, stock_p95 = statistics.median(lat["stock-1s"]), p95(lat["stock-1s"])
    lines = [
        "Latency: create-flow-run call -> job's first line (s); ratio = stock 1 s poll / this (higher is faster)",
        f"  {'':44} {'n':>3} {'median':>8} {'p95':>8} {'ratio med':>10} {'ratio p95':>10}",
    ]
    for key, label in LATENCY_ROWS.items():
        values = lat[key]
        median, tail = statistics.median(values), p95(values)
        lines.append(
            f"  {label:44} {len(values):>3} {median:>8.3f} {tail:>8.3f} "
            f"{stock_median / median:>9.1f}x {stock_p95 / tail:>9.1f}x"
        )
    launch_median, launch_p95 = statistics.median(lat["launch"]), p95(lat["launch"])
    lines.append(
        f"  goal: agent median <= {GOAL_LATENCY_MEDIAN} s and p95 <= {GOAL_LATENCY_P95} s: "
        + verdict(launch_median <= GOAL_LATENCY_MEDIAN and launch_p95 <= GOAL_LATENCY_P95)
    )
    ratio = thr["launch"].jobs_per_minute / thr["stock-1s"].jobs_per_minute
    lines += [
        "",
        f"Throughput: a backlog of {results.sizes.throughput_jobs} trivial jobs drained {MAX_JOBS} at a time (first start to last end)",
        f"  {'':44} {'jobs/min':>8} {'CPU s/job: worker':>18} {'server':>7}",
        *(
            f"  {label:44} {thr[key].jobs_per_minute:>8.0f} {thr[key].worker_cpu:>18.2f} {thr[key].server_cpu:>7.2f}"
            for key, label in (
                ("launch", "prefect-launch agent --max-jobs 8"),
                ("stock-1s", "stock process worker --limit 8, 1 s poll"),
            )
        ),
        *(f"  {key}: {len(thr[key].failed)} of {results.sizes.throughput_jobs} runs did not complete, e.g. "
          f"{thr[key].failed[0][:200]}" for key in ("launch", "stock-1s") if thr[key].failed),
        f"  ratio {ratio:.1f}x; goal >= {GOAL_THROUGHPUT_RATIO:.0f}x: {verdict(ratio >= GOAL_THROUGHPUT_RATIO)}",
        "",
        f"Memory: RSS idle and with {results.sizes.memory_jobs} jobs running at once",
        f"  {'':44} {'idle MB':>8} {'busy MB':>8} {'MB/job':>8} {'+children':>10} {'MB/job':>8}",
    ]
    for key, label in (("launch", "prefect-launch agent"), ("stock-1s", "stock process worker")):
        m = mem[key]
        lines.append(
            f"  {label:44} {m.idle_mb:>8.0f} {m.busy_mb:>8.0f} {m.mb_per_job:>8.1f} "
            f"{m.tree_busy_mb:>10.0f} {m.tree_mb_per_job:>8.1f}"
        )
    per_job = mem["launch"].mb_per_job
    tree_ratio = mem["stock-1s"].tree_mb_per_job / mem["launch"].tree_mb_per_job
    lines.append(
        f"  agent process alone: {per_job:.1f} MB/job; goal <= {GOAL_MB_PER_JOB:.0f}: {verdict(per_job <= GOAL_MB_PER_JOB)}"
        f"; with children the stock worker costs {tree_ratio:.1f}x more per job"
    )
    return "\n".join(lines)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer samples and jobs (about 3 minutes)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (logs) after the run")
    args = parser.parse_args()
    sizes = QUICK if args.quick else FULL
    # SIGTERM cleans up like Ctrl-C does.
    signal.signal(signal.SIGTERM, _interrupt)

    return bench_and_report(run_benchmark, sizes, args.keep, lambda results, _: report(results))


def on_embedded_server(bench: Callable[[Path, Processes, Any], Awaitable[Any]], sizes: Any, keep: bool) -> Any:
    """Run `bench(home, processes, sizes)` against an embedded Prefect server in a temporary home,
    stopping everything it started at the end; None if interrupted."""
    load_before = os.getloadavg()[0]
    if load_before > 0.5:
        progress(f"warning: load average {load_before:.1f} before starting; results will be slower than on an idle machine")
    home = Path(tempfile.mkdtemp(prefix="bench-home-"))
    progress(f"temporary home {home}; starting the embedded Prefect server")
    sys.path.insert(0, str(REPO))
    from prefect_launch.server import stop_server

    processes: Processes | None = None
    try:
        url = start_server(home)
        env = child_env(home, url)
        # Before prefect is imported: it reads its settings once.
        for name in [name for name in os.environ if name.startswith("PREFECT_")]:
            del os.environ[name]
        os.environ.update(env)
        progress(f"server at {url}")
        processes = Processes(env, home)
        import anyio

        return anyio.run(bench, home, processes, sizes)
    except KeyboardInterrupt:
        progress("interrupted; cleaning up")
        return None
    finally:
        if processes:
            processes.stop_all()
        stop_server(home)
        if keep:
            progress(f"kept {home} (agent.log, the server's log)")
        else:
            shutil.rmtree(home, ignore_errors=True)


def bench_and_report(bench: Callable[[Path, Processes, Any], Awaitable[Any]], sizes: Any, keep: bool,
                     report: Callable[[Any, Any], str]) -> int:
    """`bench(home, processes, sizes)` on an embedded server, then `report(results, sizes)` printed as a table;
    the exit code (130 if interrupted)."""
    began, load_before = time.monotonic(), os.getloadavg()[0]
    results = on_embedded_server(bench, sizes, keep)
    if results is None:
        return 130
    print_table(report(results, sizes), load_before, began)
    return 0


def bench_and_report_on_postgres(bench: Callable[[Path, Processes, Any], Awaitable[Any]], args: Any, name: str,
                                 report: Callable[[Any, Any], str]) -> int:
    """`bench_and_report` on a Prefect server over PostgreSQL (`drills/prefect_server.py`), its home kept with
    `args.keep`."""
    import anyio

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "drills"))
    from prefect_server import child_env, start_drill_server

    began, load_before = time.monotonic(), os.getloadavg()[0]
    with contextlib.ExitStack() as cleanup:
        server = start_drill_server(cleanup, name, args.keep)
        os.environ.update(child_env(server.home, server.api_url))
        processes = Processes(dict(os.environ), server.home)
        cleanup.callback(processes.stop_all)
        results = anyio.run(bench, server.home, processes, args)
    print_table(report(results, args), load_before, began)
    return 0


def print_table(table: str, load_before: float, began: float) -> None:
    """The result table on stdout, headed by the date, cores and load; the run time on stderr."""
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load average {load_before:.1f} before / {os.getloadavg()[0]:.1f} after")
    print(table)
    progress(f"done in {time.monotonic() - began:.0f} s")


if __name__ == "__main__":
    sys.exit(main())
