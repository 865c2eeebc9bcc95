"""Backlog throughput: trivial local-process jobs drained by one agent, on SQLite and on PostgreSQL.

Issue 21, item 2. For each database, in one run: a backlog of `--jobs` runs is created on a
`local-process` queue, then `prefect-launch agent --max-jobs N` is started and drains it; then a
backlog of `--stock-jobs` runs of a trivial flow is drained by Prefect's stock process worker
(`--limit N`, 1 s polling) on the same server, the baseline. Jobs per minute count from the first
run's start to the last run's end. CPU is the agent's (or worker's) own, its job processes apart,
and the server's, per job.

The server logs every API request (uvicorn's access log, `PREFECT_SERVER_LOGGING_LEVEL=INFO`, on for
both sides alike): the table counts the requests each drain made per job, by kind, less this
script's own (`flow_runs/count`, its wait). Events (which reach the server over one websocket,
not as requests) are counted from the server's event store afterwards, by name.

    .venv/bin/python bench/throughput.py                          # 500 jobs, 16 at a time, both databases
    .venv/bin/python bench/throughput.py --jobs 100 --stock-jobs 30 --databases sqlite
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH), str(BENCH.parent / "drills")]

import dispatch  # noqa: E402  (bench/dispatch.py: the job, the flow, the queue, processes, waiting)
from dispatch import progress  # noqa: E402

REQUEST = re.compile(r'"(GET|POST|PATCH|PUT|DELETE) /api/(\S*) HTTP/1.1" (\d+)')
ID = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
BENCH_OWN = {"POST flow_runs/count"}  # this script's wait for the backlog to end

# Request kinds, first match wins: (kind, method, path pattern).
KINDS = [
    ("state proposals", "POST", re.compile(r"flow_runs/ID/set_state$")),
    ("task runs", None, re.compile(r"^task_runs")),
    ("logs", "POST", re.compile(r"^logs/$")),
    ("artifacts", None, re.compile(r"^artifacts")),
    ("polls for runs", "POST", re.compile(r"get_scheduled_flow_runs$")),
    ("flow run updates", "PATCH", re.compile(r"^flow_runs/ID$")),
    ("flow run reads", None, re.compile(r"^flow_runs/(ID|filter)$")),
    ("heartbeats", "POST", re.compile(r"workers/heartbeat$")),
    ("deployments", None, re.compile(r"^deployments")),
    ("variables", None, re.compile(r"^variables")),
    ("block documents", None, re.compile(r"^block")),
    ("CSRF tokens", "GET", re.compile(r"^csrf-token$")),
]


def kind_of(method: str, path: str) -> str:
    for kind, kind_method, pattern in KINDS:
        if (kind_method is None or kind_method == method) and pattern.search(path):
            return kind
    return "other"


def requests_in(log: Path, start: int, end: int) -> tuple[Counter, Counter]:
    """Requests in the server's log between two offsets: by kind, and by method and path (ids as ID)."""
    with open(log, "rb") as handle:
        handle.seek(start)
        text = handle.read(end - start).decode(errors="replace")
    by_kind, by_path = Counter(), Counter()
    for method, path, _status in REQUEST.findall(text):
        path = ID.sub("ID", path.split("?")[0])
        if f"{method} {path}" in BENCH_OWN:
            continue
        by_kind[kind_of(method, path)] += 1
        by_path[f"{method} {path}"] += 1
    return by_kind, by_path


async def events_since(client: Any, since: datetime) -> Counter:
    """Events the server stored since `since`, by name, once its event persister has caught up (two equal counts)."""
    import anyio

    until = datetime.now(timezone.utc) + timedelta(hours=1)  # the events still on their way, not buckets of a century
    body = {"filter": {"occurred": {"since": since.isoformat(), "until": until.isoformat()}}, "time_unit": "hour"}
    previous: Counter | None = None
    for _ in range(30):
        response = await client.request("POST", "/events/count-by/event", json=body)
        counts = Counter({row["value"]: row["count"] for row in response.json()})
        if counts == previous:
            return counts
        previous = counts
        await anyio.sleep(1.0)
    return previous or Counter()


@dataclass
class Drain:
    jobs: int
    seconds: float
    dispatcher_cpu: float  # the agent's or worker's own
    children_cpu: float  # its job processes (or per-run engine processes)
    server_cpu: float
    requests: Counter
    paths: Counter
    events: Counter
    failed: list[str] = field(default_factory=list)  # the runs that did not complete, why

    @property
    def per_minute(self) -> float:
        return (self.jobs - len(self.failed)) / self.seconds * 60  # the runs that completed


def own_and_children_cpu(pid: int) -> tuple[float, float]:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return (int(fields[11]) + int(fields[12])) / tick, (int(fields[13]) + int(fields[14])) / tick


async def drain(ctx: Any, label: str, submit: Any, argv: list[str], jobs: int, ready_text: str,
                extra_env: dict[str, str] | None = None, may_fail: bool = False) -> Drain:
    """A backlog of `jobs` runs drained by the process `argv` starts. Every run must complete unless `may_fail`
    (the stock worker crashes a run now and then when SQLite keeps the server busy: it is counted, not fatal)."""
    run_ids = [(await submit(ctx.stamps / f"{label}-{index}", None))[1] for index in range(jobs)]
    progress(f"  {label}: {jobs} runs waiting; starting the dispatcher")
    log = ctx.server_log
    since = datetime.now(timezone.utc)
    log_start, server_before = log.stat().st_size, dispatch.cpu_seconds(ctx.server_pid)
    with dispatch.running(ctx.processes, label, argv, ready_text=ready_text, extra_env=extra_env) as process:
        runs = await dispatch.wait_for_runs(ctx.client, run_ids, timeout=max(600.0, 10.0 * jobs))
        own, children = own_and_children_cpu(process.pid)
    server_cpu = dispatch.cpu_seconds(ctx.server_pid) - server_before
    log_end = log.stat().st_size
    if not may_fail:
        dispatch.check_completed(runs, label)
    completed = [run for run in runs if run.state.is_completed()]
    seconds = max(r.end_time.timestamp() for r in completed) - min(r.start_time.timestamp() for r in completed)
    requests, paths = requests_in(log, log_start, log_end)
    events = await events_since(ctx.client, since)
    result = Drain(jobs, seconds, own, children, server_cpu, requests, paths, events, failed=dispatch.incomplete(runs))
    progress(f"  {label}: {jobs} jobs in {seconds:.1f} s ({result.per_minute:.0f}/min); CPU per job: "
             f"own {own / jobs:.3f} s, server {server_cpu / jobs:.3f} s; {sum(requests.values()) / jobs:.1f} requests/job")
    return result


@dataclass
class Context:
    client: Any
    processes: Any
    stamps: Path
    server_log: Path
    server_pid: int


@dataclass
class Results:
    drains: dict[tuple[str, str], Drain] = field(default_factory=dict)


async def bench_database(database: str, home: Path, args: argparse.Namespace, results: Results) -> None:
    from prefect.client.orchestration import get_client
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from prefect_launch.server import read_state

    job_dir, flow_dir = dispatch.write_job_code(home)
    stamps = home / "stamps"
    stamps.mkdir()
    processes = dispatch.Processes(dict(os.environ), home)
    # Prefect read its settings when first imported, maybe before this database's server was started.
    with temporary_settings({PREFECT_API_URL: os.environ["PREFECT_API_URL"]}):
        async with get_client() as client:
            ctx = Context(client, processes, stamps, home / "server.log", read_state(home)["pid"])
            try:
                source = await dispatch.create_launch_queue(client, home, job_dir)
                deployment_id = await dispatch.create_stock_deployment(client, flow_dir)
                agent = [str(dispatch.VENV_BIN / "prefect-launch"), "agent", "-q", dispatch.LAUNCH_QUEUE,
                         "--max-jobs", str(args.max_jobs)]
                results.drains[(database, "launch")] = await drain(
                    ctx, f"{database}-agent", dispatch.launch_submitter(client, source, job_dir), agent, args.jobs,
                    "ready on")
                if args.stock_jobs:
                    worker = [str(dispatch.VENV_BIN / "prefect"), "worker", "start", "--pool", dispatch.STOCK_POOL,
                              "--type", "process", "--limit", str(args.max_jobs)]
                    results.drains[(database, "stock")] = await drain(
                        ctx, f"{database}-stock", dispatch.stock_submitter(client, deployment_id), worker,
                        args.stock_jobs, "started", extra_env={"PREFECT_WORKER_QUERY_SECONDS": "1"}, may_fail=True)
            finally:
                processes.stop_all()


def on_sqlite(args: argparse.Namespace, results: Results) -> None:
    import anyio

    from prefect_server import sqlite_server

    with sqlite_server("bench-throughput", args.keep) as home:
        anyio.run(bench_database, "sqlite", home, args, results)


def on_postgres(args: argparse.Namespace, results: Results) -> None:
    import anyio

    from prefect_server import child_env, start_drill_server

    with contextlib.ExitStack() as cleanup:
        server = start_drill_server(cleanup, "bench-throughput", args.keep)
        saved = dict(os.environ)
        os.environ.update(child_env(server.home, server.api_url))
        try:
            anyio.run(bench_database, "postgres", server.home, args, results)
        finally:
            os.environ.clear()
            os.environ.update(saved)


def report(results: Results, args: argparse.Namespace) -> str:
    lines = [f"Backlog drained {args.max_jobs} at a time, first start to last end; CPU s per job "
             "(own: the agent's or worker's process alone; jobs: its children)",
             "| database | dispatcher | jobs | jobs/min | CPU own | CPU jobs | CPU server | own + server | ratio |",
             "|---|---|---:|---:|---:|---:|---:|---:|---:|"]
    for (database, side), d in results.drains.items():
        stock = results.drains.get((database, "stock"))
        ratio = f"{d.per_minute / stock.per_minute:.1f}x" if stock else "-"
        name = f"prefect-launch agent --max-jobs {args.max_jobs}" if side == "launch" else \
            f"stock process worker --limit {args.max_jobs}, 1 s poll"
        lines.append(f"| {database} | {name} | {d.jobs} | {d.per_minute:.0f} | {d.dispatcher_cpu / d.jobs:.3f} | "
                     f"{d.children_cpu / d.jobs:.3f} | {d.server_cpu / d.jobs:.3f} | "
                     f"{(d.dispatcher_cpu + d.server_cpu) / d.jobs:.3f} | {ratio} |")
    lines += [f"{database} {side}: {len(d.failed)} of {d.jobs} runs did not complete, e.g. {d.failed[0][:200]}"
              for (database, side), d in results.drains.items() if d.failed]
    kinds = [kind for kind, _, _ in KINDS] + ["other"]
    columns = list(results.drains)
    lines += ["", "API requests per job, by kind (access log; this script's own wait left out), and events per job",
              "| kind | " + " | ".join(f"{db} {side}" for db, side in columns) + " |",
              "|---|" + "---:|" * len(columns)]
    for kind in kinds:
        if any(results.drains[c].requests[kind] for c in columns):
            lines.append(f"| {kind} | " + " | ".join(f"{results.drains[c].requests[kind] / results.drains[c].jobs:.2f}"
                                                   for c in columns) + " |")
    lines.append("| **all requests** | " + " | ".join(
        f"**{sum(results.drains[c].requests.values()) / results.drains[c].jobs:.2f}**" for c in columns) + " |")
    for prefix, label in (("prefect.flow-run.", "events: flow run states"), ("prefect.task-run.", "events: task run states")):
        lines.append(f"| {label} | " + " | ".join(
            f"{sum(n for name, n in results.drains[c].events.items() if name.startswith(prefix)) / results.drains[c].jobs:.2f}"
            for c in columns) + " |")
    lines.append("| events: all | " + " | ".join(
        f"{sum(results.drains[c].events.values()) / results.drains[c].jobs:.2f}" for c in columns) + " |")
    if args.paths:
        for column in columns:
            lines += ["", f"{column[0]} {column[1]}: requests by path"]
            lines += [f"  {count:6d}  {path}" for path, count in results.drains[column].paths.most_common()]
            lines += ["", f"{column[0]} {column[1]}: events by name"]
            lines += [f"  {count:6d}  {name}" for name, count in results.drains[column].events.most_common()]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=500, help="the agent's backlog (default 500)")
    parser.add_argument("--stock-jobs", type=int, default=100,
                        help="the stock worker's backlog (default 100: it drains ~20/min; 0 skips it)")
    parser.add_argument("--max-jobs", type=int, default=16)
    parser.add_argument("--databases", default="sqlite,postgres", help="comma-separated: sqlite, postgres")
    parser.add_argument("--paths", action="store_true", help="also list the requests by method and path, the events by name")
    parser.add_argument("--keep", action="store_true", help="keep the temporary homes (server and agent logs)")
    args = parser.parse_args()
    os.environ["PREFECT_SERVER_LOGGING_LEVEL"] = "INFO"  # the access log the census reads
    began, load_before = time.monotonic(), os.getloadavg()[0]
    results = Results()
    for database in args.databases.split(","):
        progress(f"{database}: starting")
        {"sqlite": on_sqlite, "postgres": on_postgres}[database](args, results)
    dispatch.print_table(report(results, args), load_before, began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
