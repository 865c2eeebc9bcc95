"""What the many-running-jobs benches share (`kube_many.py`, `sagemaker_many.py`, issue 21, item 3).

Their arguments, their results (how long until all ran, the agent's RSS, CPU and
threads while the jobs only run, each timed ending's latency, the runs that did
not end as their jobs did), the rows of the table they print about those, and
the choice of server (PostgreSQL by default, or the embedded one on SQLite).
"""

from __future__ import annotations

import argparse
import statistics
from dataclasses import dataclass, field
from typing import Any, Awaitable, Callable

import dispatch

GOAL_RSS_MB, GOAL_CPU_PERCENT = 600, 20


@dataclass
class ManyJobsResults:
    jobs: int
    started_in: float = 0.0  # seconds from the first enqueue until every job ran
    idle_rss: float = 0.0
    running_rss: float = 0.0
    cpu_percent: float = 0.0
    threads: int = 0
    latencies: list[float] = field(default_factory=list)  # each timed ending to its run's final state
    wrong: list[str] = field(default_factory=list)  # runs that did not end as their jobs did

    async def sample_agent(self, pid: int, seconds: float) -> None:
        """The agent's RSS, CPU and threads over `seconds` while the jobs only run."""
        cpu = dispatch.cpu_seconds(pid)
        self.running_rss = await dispatch.sample_rss(pid, seconds)
        self.cpu_percent = 100 * (dispatch.cpu_seconds(pid) - cpu) / seconds
        self.threads = dispatch.threads(pid)

    def check(self, runs: list[Any], ended: dict[str, tuple[float, str, bool]]) -> None:
        """Each run's final state against its job's ending (`ended`: W&B run id -> when, state expected, timed)."""
        for run in runs:
            when, expected, timed = ended.get(run.name, (None, None, False))
            if when is None or run.state.type.value != expected:
                self.wrong.append(f"{run.name}: {run.state.type.value} ({run.state.message}), expected {expected}")
            elif timed:
                self.latencies.append(run.state.timestamp.timestamp() - when)

    def latency_text(self) -> str:
        """`median / p95 / max` of the timed endings."""
        lat = sorted(self.latencies) or [float("nan")]
        return f"{statistics.median(lat):.2f} / {dispatch.p95(lat):.2f} / {max(lat):.2f}"

    def rows(self, args: argparse.Namespace, what: str, extra: list[str]) -> list[str]:
        """The table: a header, the rows every such bench has, `extra` before the last (`what` names the jobs)."""
        grow = self.running_rss - self.idle_rss
        return [
            "| measure | value | goal |", "|---|---:|---:|",
            f"| all {what} after (s) | {self.started_in:.0f} | |",
            f"| agent RSS idle / with the jobs running (MB) | {self.idle_rss:.0f} / {self.running_rss:.0f} "
            f"({grow / max(self.jobs, 1):.2f} MB/job) | <= {GOAL_RSS_MB} {dispatch.verdict(self.running_rss <= GOAL_RSS_MB)} |",
            f"| agent CPU while the jobs only run (% of one core, {args.hold} s) | {self.cpu_percent:.1f} | "
            f"<= {GOAL_CPU_PERCENT} {dispatch.verdict(self.cpu_percent <= GOAL_CPU_PERCENT)} |",
            f"| agent threads | {self.threads} | |",
            *extra,
            f"| runs ended as their jobs did | {self.jobs - len(self.wrong)}/{self.jobs} | all "
            f"{dispatch.verdict(not self.wrong)} |",
            *(f"wrong: {line}" for line in self.wrong[:5]),
        ]


def command_line(description: str, jobs: int, hold: float, settle: float, sample: int) -> argparse.ArgumentParser:
    """The benches' command line, with their own defaults."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--jobs", type=int, default=jobs, help="jobs running at once (the agent's --max-jobs)")
    parser.add_argument("--hold", type=float, default=hold, help="seconds of samples while the jobs only run")
    parser.add_argument("--settle", type=float, default=settle, help="seconds to wait once all run, before sampling")
    parser.add_argument("--ahead", type=int, default=32, help="runs enqueued ahead of the jobs created")
    parser.add_argument("--sample", type=int, default=sample, help="jobs ended one by one and timed, the rest running")
    parser.add_argument("--pace", type=float, default=2, help="timed jobs ended per second")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--agent-path", help="import the agent's prefect_launch from this folder (a before side)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (server and agent logs)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="postgres",
                        help="the server's database (on SQLite, Prefect's create_flow_run slows to seconds once "
                             "~150 runs are Running)")
    return parser


def agent_env(args: argparse.Namespace, env: dict[str, str]) -> dict[str, str]:
    """The agent's environment: `env`, no W&B key, and the older checkout's code with `--agent-path`."""
    return {**env, "WANDB_API_KEY": "", **({"PYTHONPATH": args.agent_path} if args.agent_path else {})}


def run(bench: Callable[..., Awaitable[ManyJobsResults]], args: argparse.Namespace, name: str,
        report: Callable[[ManyJobsResults, argparse.Namespace], str]) -> int:
    """`bench` on the server `--database` names, then its report."""
    if args.database == "postgres":
        return dispatch.bench_and_report_on_postgres(bench, args, name, report)
    return dispatch.bench_and_report(bench, args, args.keep, report)
