"""Agent start-up benchmark: a new agent's time and CPU to get ready and to run its first code job.

Prefect imports every installed integration (`prefect.collections` entry points:
prefect-aws, prefect-gcp with google-cloud-aiplatform, ...) when a worker lists them for the server
and when `Block.load` looks up a block's class. The agent does neither: it reads the list from
package metadata and loads the code-storage block as its class. The baseline is the same agent
with Prefect's own two paths put back (`BaseWorker._worker_metadata`, `Block.load`), measured in
the same run, the two alternating sample by sample.

Each sample starts an agent on a local-process queue of one embedded Prefect server (SQLite, in
a temporary home), waits for its "ready on" line, then runs one code job (`launch -u ... --wait`)
and stops the agent. Measured: start to ready (wall, agent CPU), the agent's CPU for the job, and
the two together (the baseline pays its imports at start, a code job without the metadata fix
would pay them in its resolve stage).

    .venv/bin/python bench/agent_start.py              # 7 samples of each
    .venv/bin/python bench/agent_start.py --samples 3

Progress goes to stderr, the table to stdout. Binds only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH)]

from dispatch import PYTHON, VENV_BIN, Processes, child_env, cpu_seconds, p95, print_table, progress, start_server  # noqa: E402

QUEUE = "bench-agent-start"
# The agent with Prefect's own integration lookups put back: the baseline.
PREFECT_LOOKUPS = """
import sys
from prefect.blocks.core import Block
from prefect.workers.base import BaseWorker
import prefect_launch.sources.code as code
import prefect_launch.worker.launch_worker as worker
worker.LaunchWorker._worker_metadata = BaseWorker._worker_metadata
code._load_storage = lambda name: Block.load(name, _sync=True)
from prefect_launch.cli.main import app
sys.argv = ["prefect-launch", *sys.argv[1:]]
app()
"""
VARIANTS = {
    "prefect-launch agent": [str(VENV_BIN / "prefect-launch"), "agent", "-q", QUEUE],
    "with Prefect's integration lookups (baseline)": [PYTHON, "-c", PREFECT_LOOKUPS, "agent", "-q", QUEUE],
}


def sample(processes: Processes, name: str, argv: list[str], job: Path, index: int) -> tuple[float, float, float, float]:
    """(start-to-ready wall s, agent CPU s at ready, agent CPU s for its first code job, the two CPUs together)."""
    started = time.monotonic()
    agent = processes.start(f"agent-{index}-{list(VARIANTS).index(name)}", argv, "ready on")
    ready_wall, ready_cpu = time.monotonic() - started, cpu_seconds(agent.pid)
    subprocess.run([str(VENV_BIN / "prefect-launch"), "launch", "-q", QUEUE, "-u", str(job), "-E", "python job.py",
                    "--wait"], env=processes.env, check=True, capture_output=True, timeout=120)
    job_cpu = cpu_seconds(agent.pid) - ready_cpu
    processes.stop(agent)
    progress(f"{name}: ready in {ready_wall:.2f} s, {ready_cpu:.2f} s CPU; first job {job_cpu:.2f} s CPU")
    return ready_wall, ready_cpu, job_cpu, ready_cpu + job_cpu


def report(results: dict[str, list[tuple[float, float, float, float]]]) -> str:
    base = results[list(VARIANTS)[1]]
    lines = ["Agent start-up; ratio = baseline / this (higher is better)",
             f"  {'':46} {'n':>3} {'median':>8} {'p95':>8} {'ratio med':>10}"]
    for column, what in enumerate(("start to ready, wall s", "start to ready, agent CPU s", "first code job, agent CPU s",
                                   "start and first code job, agent CPU s")):
        lines.append(f"{what}:")
        for name, samples in results.items():
            values, baseline = [s[column] for s in samples], [s[column] for s in base]
            ratio = statistics.median(baseline) / statistics.median(values)
            lines.append(f"  {name:46} {len(values):3d} {statistics.median(values):8.2f} {p95(values):8.2f} {ratio:9.2f}x")
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=7, help="samples of each variant")
    args = parser.parse_args()
    began, load_before = time.monotonic(), os.getloadavg()[0]
    home = Path(tempfile.mkdtemp(prefix="bench-home-"))
    from prefect_launch.server import stop_server

    processes = None
    try:
        url = start_server(home)
        processes = Processes(child_env(home, url), home)
        subprocess.run([str(VENV_BIN / "prefect-launch"), "queue", "create", QUEUE, "--resource", "local-process",
                        "--no-require-wandb-run"], env=processes.env, check=True, capture_output=True)
        job = home / "job"
        job.mkdir()
        (job / "job.py").write_text("print('bench job')\n")
        results: dict[str, list[tuple[float, float, float, float]]] = {name: [] for name in VARIANTS}
        for index in range(args.samples):  # alternating, so drift in the machine's speed hits both
            for name, argv in VARIANTS.items():
                results[name].append(sample(processes, name, argv, job, index))
    finally:
        if processes:
            processes.stop_all()
        stop_server(home)
        shutil.rmtree(home, ignore_errors=True)
    print_table(report(results), load_before, began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
