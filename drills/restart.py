"""Restart drill: `kill -9` the agent at random moments while jobs run; nothing is lost, run twice or failed falsely.

Each round puts JOBS image jobs on a queue served by one agent with
`--max-jobs 4` (local-container on the real Docker engine, or Kubernetes:
the API stand-in `tests/kube_standin.py`, with its Job, TTL-after-finished and
garbage-collection controllers, and its kubelet `tests/kube_kubelet.py`
running each Job's container as a process), then kills that agent with SIGKILL KILLS times at
random moments (so jobs are caught queued, claimed, resolving, submitting,
running or finishing) and starts a new one each time. The last agent serves
until every run is final. Then it checks, for every job:

- its flow run ended Completed: every job exits 0, so a job that ran and whose run ended
  Failed or Crashed is a false failure, and one that never ran is lost;
- its container started exactly once: each job appends a line to a file in
  its own run folder (`WANDB_DIR`: mounted from the agent's home into a
  container; on Kubernetes the queue config sets it to the same folder, as a
  volume both the agent and the pods mount would) when it starts, so a
  second submission would show as a second line (and as a name conflict).

It prints a table per round and in total (jobs, kills, runs adopted, runs put
back on the queue, lost, false failures, started twice, wall time) and exits 1
if any job was lost, falsely failed or started twice. `--rm` runs the queues
with `"rm": true`, as the seed's docker queue config does: an adopted container
then removes itself the moment it exits. `--target kubernetes` runs the Jobs
with `ttlSecondsAfterFinished: 2`: a Job that ends while no agent follows it is
soon gone with its pods, and its run is settled from its events.

Run it from the repository root with Docker up (`./dev services`):

    .venv/bin/python drills/restart.py                     # 20 jobs x 5 rounds, 3 kills each
    .venv/bin/python drills/restart.py --jobs 6 --rounds 1 --kills 2
    .venv/bin/python drills/restart.py --rm                # queues with `docker run --rm`
    .venv/bin/python drills/restart.py --target kubernetes # the Kubernetes stand-in, Jobs with a TTL

It starts its own Prefect server (SQLite) in a temporary home on 127.0.0.1
and stops it at the end. `tests/test_recovery.py` runs a smaller round
against the test session's server.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import subprocess
import sys
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from agent_process import CLI, REPO, AgentProcess
from prefect_server import sqlite_server

BASE_IMAGE = "prefect-launch/python:3.11"
MAX_JOBS = 4
FINAL_TIMEOUT_SECONDS = 300.0
KUBERNETES_TTL_SECONDS = 2
KUBERNETES_NAMESPACE = "drill"

# Appends its start to its run folder, works 2-5 s, exits 0.
JOB = (
    "import os, random, time; os.makedirs(os.environ['WANDB_DIR'], exist_ok=True); "
    "open(os.path.join(os.environ['WANDB_DIR'], 'starts'), 'a').write(f'{time.time()}\\n'); "
    "print('working', flush=True); time.sleep(random.uniform(2, 5)); print('done', flush=True)"
)


@dataclass
class RoundResult:
    jobs: int
    kills: int
    adopted: int = 0
    requeued: int = 0
    lost: list[str] = field(default_factory=list)  # run ids whose job never ran or whose run never ended
    false_failures: list[str] = field(default_factory=list)  # run ids whose job ran (exit 0) but whose run did not complete
    twice: list[str] = field(default_factory=list)  # run ids whose container started more than once
    seconds: float = 0.0
    caught: list[str] = field(default_factory=list)  # the runs' states at each kill

    @property
    def ok(self) -> bool:
        return not self.lost and not self.false_failures and not self.twice


def _agent(queue: str, logs: Path, env: dict[str, str] | None) -> AgentProcess:
    return AgentProcess(["-q", queue, "--max-jobs", str(MAX_JOBS)], logs / f"agent-{len(list(logs.iterdir()))}.log",
                        env={**os.environ, **(env or {})}).wait_ready()


def _counted(pattern: str, text: str) -> int:
    return sum(int(n) for n in re.findall(pattern, text))


def run_round(queue: str, home: Path, jobs: int, kills: int, logs: Path, rng: random.Random,
              agent_env: dict[str, str] | None = None) -> RoundResult:
    """One round against the Prefect server in PREFECT_API_URL and a queue made for it (`create_queue`,
    `create_kubernetes_queue`); `agent_env` goes to the agents (a kubernetes queue's KUBECONFIG)."""
    import anyio
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import enqueue
    from prefect_launch.spec import ImageSource, LaunchSpec, new_run_id

    result = RoundResult(jobs=jobs, kills=kills)
    run_ids = [new_run_id() for _ in range(jobs)]

    async def put_on_queue() -> dict[str, uuid.UUID]:
        async with get_client() as client:
            flow_runs = {}
            for run_id in run_ids:
                spec = LaunchSpec(source=ImageSource(image=BASE_IMAGE), entry_point=["python", "-c", JOB], run_id=run_id)
                flow_runs[run_id] = (await enqueue(client, queue, spec, None, {})).id
            return flow_runs

    async def states(ids: dict[str, uuid.UUID]) -> dict[str, object]:
        async with get_client() as client:
            return {run_id: (await client.read_flow_run(flow_run_id)).state for run_id, flow_run_id in ids.items()}

    flow_runs = anyio.run(put_on_queue)  # a backlog first, so the kills find jobs at every stage
    start = time.monotonic()
    agents = [_agent(queue, logs, agent_env)]
    try:
        for _ in range(kills):
            time.sleep(rng.uniform(0.5, 4.0))
            agents[-1].kill()
            caught = Counter(state.name for state in anyio.run(states, flow_runs).values())
            result.caught.append(", ".join(f"{n} {name}" for name, n in sorted(caught.items())))
            time.sleep(rng.uniform(0.0, 2.0))
            agents.append(_agent(queue, logs, agent_env))
        deadline = time.monotonic() + FINAL_TIMEOUT_SECONDS
        while True:
            final = anyio.run(states, flow_runs)
            if all(state.is_final() for state in final.values()) or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        agents[-1].stop()
    result.seconds = time.monotonic() - start
    output = "".join(agent.output() for agent in agents)
    result.adopted = _counted(r"Adopted (\d+) running job", output)
    result.requeued = _counted(r"Put (\d+) orphaned run", output)
    for run_id, state in final.items():
        starts = home / "runs" / run_id / "starts"
        ran = len(starts.read_text().splitlines()) if starts.exists() else 0
        if not state.is_completed():
            (result.false_failures if ran and state.is_final() else result.lost).append(
                f"{run_id} ({state.name}: {state.message})")
        if ran > 1:
            result.twice.append(run_id)
    return result


def create_queue(name: str, folder: Path, env: dict[str, str] | None = None, **docker_options: object) -> None:
    """A local-container queue for the drill's jobs (host network: this engine has no bridge), made by the CLI
    with `env` (default: this process's)."""
    _create(name, folder, "local-container", {"network": "host", **docker_options}, env)


def create_kubernetes_queue(name: str, folder: Path, home: Path, env: dict[str, str] | None = None) -> None:
    """A kubernetes queue whose Jobs go within KUBERNETES_TTL_SECONDS of their end, each job's WANDB_DIR
    its run folder in `home` (where the drill reads what it did)."""
    job_env = [{"name": "WANDB_DIR", "value": f"{home}/runs/${{run_id}}"}]
    _create(name, folder, "kubernetes", {"namespace": KUBERNETES_NAMESPACE, "spec": {
        "ttlSecondsAfterFinished": KUBERNETES_TTL_SECONDS, "template": {"spec": {"containers": [{"env": job_env}]}}}},
        env)


def _create(name: str, folder: Path, resource: str, config: dict[str, object], env: dict[str, str] | None) -> None:
    path = folder / f"{name}.json"
    path.write_text(json.dumps(config))
    subprocess.run([CLI, "queue", "create", name, "--resource", resource, "--config", str(path),
                    "--no-require-wandb-run"], check=True, capture_output=True, env=env)


@contextlib.contextmanager
def kubernetes_cluster(folder: Path) -> Iterator[dict[str, str]]:
    """The Kubernetes stand-in with its kubelet, for the time of the drill; yields the agents' environment."""
    sys.path.insert(0, str(REPO / "tests"))
    from kube_kubelet import Kubelet
    from kube_standin import KubeStandIn

    with KubeStandIn() as kube, Kubelet(kube, folder / "node"):
        yield {"KUBECONFIG": kube.kubeconfig(folder / "kubeconfig")}


def table(results: list[RoundResult]) -> str:
    rows = ["| round | jobs | kills | adopted | put back | lost | false failures | started twice | seconds |",
            "|---|---|---|---|---|---|---|---|---|"]
    for number, r in enumerate(results, 1):
        rows.append(f"| {number} | {r.jobs} | {r.kills} | {r.adopted} | {r.requeued} | {len(r.lost)} "
                    f"| {len(r.false_failures)} | {len(r.twice)} | {r.seconds:.0f} |")
    rows.append(
        f"| all | {sum(r.jobs for r in results)} | {sum(r.kills for r in results)} | {sum(r.adopted for r in results)} "
        f"| {sum(r.requeued for r in results)} | {sum(len(r.lost) for r in results)} "
        f"| {sum(len(r.false_failures) for r in results)} | {sum(len(r.twice) for r in results)} "
        f"| {sum(r.seconds for r in results):.0f} |"
    )
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--kills", type=int, default=3, help="agent kills per round")
    parser.add_argument("--seed", type=int, default=None)
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (server and agent logs)")
    parser.add_argument("--rm", action="store_true", help='queues with "rm": true (docker run --rm)')
    parser.add_argument("--target", choices=["local-container", "kubernetes"], default="local-container")
    args = parser.parse_args()
    seed = args.seed if args.seed is not None else random.randrange(10**6)
    rng = random.Random(seed)

    print(f"Seed {seed}", file=sys.stderr)
    results = []
    with sqlite_server("restart-drill", args.keep) as home, contextlib.ExitStack() as stack:
        agent_env = stack.enter_context(kubernetes_cluster(home)) if args.target == "kubernetes" else None
        for number in range(1, args.rounds + 1):
            queue = f"restart-drill-{number}"
            if agent_env is None:
                create_queue(queue, home, **({"rm": True} if args.rm else {}))
            else:
                create_kubernetes_queue(queue, home, home)
            logs = home / f"round-{number}"
            logs.mkdir()
            print(f"Round {number}: {args.jobs} jobs, {args.kills} kills ...", file=sys.stderr)
            results.append(run_round(queue, home, args.jobs, args.kills, logs, rng, agent_env))
            for kill, caught in enumerate(results[-1].caught, 1):
                print(f"  kill {kill} caught: {caught}", file=sys.stderr)
            problems = (results[-1].lost + [f"{r} failed falsely" for r in results[-1].false_failures]
                        + [f"{r} started twice" for r in results[-1].twice])
            for problem in problems:
                print(f"  {problem}", file=sys.stderr)
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
