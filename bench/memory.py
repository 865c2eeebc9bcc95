"""Agent memory per running local-process job (issue 21, item 5).

One embedded server (SQLite) and one agent (`--max-jobs N`): the agent's RSS idle, then while N
jobs run at once (each stamps, then waits for a release file, so all N surely run together), as
`bench/dispatch.py` measures it for 8 jobs. *MB/job* = (busy - idle) / N, the agent process alone;
the job processes are the jobs' own. Round 1 is what running jobs cost a fresh agent (its goal);
later rounds, on the same agent, show whether it keeps growing.

    .venv/bin/python bench/memory.py              # 64 jobs at once, 3 rounds on one agent
    .venv/bin/python bench/memory.py --jobs 16 --rounds 1
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import dispatch  # noqa: E402  (bench/dispatch.py: the job, the server, processes, RSS sampling)
from dispatch import progress  # noqa: E402


@dataclass
class Context:
    """What `dispatch.measure_memory` reads."""

    client: Any
    stamps: Path
    sizes: Any


async def bench(home: Path, processes: dispatch.Processes, args: argparse.Namespace) -> list[dispatch.Memory]:
    from prefect.client.orchestration import get_client

    job_dir, _ = dispatch.write_job_code(home)
    stamps = home / "stamps"
    stamps.mkdir()
    agent_argv = [str(dispatch.VENV_BIN / "prefect-launch"), "agent", "-q", dispatch.LAUNCH_QUEUE, "--max-jobs", str(args.jobs)]
    rounds = []
    async with get_client() as client:
        source = await dispatch.create_launch_queue(client, home, job_dir)
        submit = dispatch.launch_submitter(client, source, job_dir)
        with dispatch.running(processes, "agent", agent_argv, ready_text="ready on") as agent:
            await submit(stamps / "warm-up", None)  # not counted: the agent's first job imports what jobs need
            await dispatch.wait_for_stamp(stamps / "warm-up")
            for index in range(args.rounds):
                ctx = Context(client, stamps, dispatch.Sizes(0, 0, 0, args.jobs))
                rounds.append(await dispatch.measure_memory(ctx, submit, agent.pid, f"round-{index}"))
    return rounds


def report(rounds: list[dispatch.Memory], args: argparse.Namespace) -> str:
    lines = [f"Agent RSS idle and with {args.jobs} local-process jobs running at once ({len(rounds)} rounds, one agent)",
             "| round | idle MB | busy MB | MB/job |", "|---:|---:|---:|---:|"]
    lines += [f"| {i + 1} | {m.idle_mb:.1f} | {m.busy_mb:.1f} | {m.mb_per_job:.2f} |" for i, m in enumerate(rounds)]
    # The first round is what running jobs cost a fresh agent; later rounds reuse what the first one grew.
    first = rounds[0].mb_per_job
    lines.append(f"growth per running job, round 1: {first:.2f} MB; goal <= 0.5: {dispatch.verdict(first <= 0.5)}")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=64, help="jobs running at once (the agent's --max-jobs)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (server and agent logs)")
    args = parser.parse_args()
    return dispatch.bench_and_report(bench, args, args.keep, report)


if __name__ == "__main__":
    sys.exit(main())
