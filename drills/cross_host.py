"""Cross-host drill: an agent's node is lost, and an agent on another host takes its job over by the heartbeat rule.

Two agents on hosts of their own (`hosts.py`: separate PID, UTS, mount and network namespaces on
this machine) serve one Kubernetes queue (the stand-in `tests/kube_standin.py` and its kubelet,
which both hosts reach, as two nodes reach one cluster). Host A's agent takes a job that runs
until it is released; then host B's agent starts on the same queue. B cannot see A's pid: only
A's heartbeat says A is alive, and B must leave the job to A. Then A's node is lost (everything
in its namespaces killed at once), and B adopts the job once A's heartbeat is MISSED_HEARTBEATS
intervals old (`PREFECT_WORKER_HEARTBEAT_SECONDS`, 30 s by default). With `--name`, both agents
have the same name, as two hosts started from one config would: B's heartbeats must not keep A
alive (they go out under `<name>@<host>`).

Measured, per trial: whether B left the job to A while A was alive, the takeover time (the kill
to B's adopting claim on the server), the job's end and how often it started. The rule gives the
window: at least MISSED_HEARTBEATS - 1 intervals (A's last beat may come just before the kill),
at most MISSED_HEARTBEATS + 1 (B's orphan rounds come once an interval), plus SLACK_SECONDS for
a busy machine. Exit code 1 when a trial missed any of it.

Run it as root (namespaces) from the repository root:

    .venv/bin/python drills/cross_host.py                          # 30 s heartbeats: takeover in 60-120 s
    .venv/bin/python drills/cross_host.py --heartbeat 2 --trials 3   # about the CI size (tests/test_recovery.py)
    .venv/bin/python drills/cross_host.py --name twin                # both agents started with one --name
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

from hosts import Host
from prefect_launch.ownership import MISSED_HEARTBEATS
from prefect_server import sqlite_server
from restart import BASE_IMAGE, create_kubernetes_queue, kubernetes_cluster

SLACK_SECONDS = 15.0
RUN_SECONDS = 300.0

# Writes its start to its run folder, says so, and runs until the file named by its argument exists.
JOB = (
    "import os, sys, time; os.makedirs(os.environ['WANDB_DIR'], exist_ok=True); "
    "open(os.path.join(os.environ['WANDB_DIR'], 'starts'), 'a').write('start\\n'); print('up', flush=True)\n"
    "while not os.path.exists(sys.argv[1]): time.sleep(0.2)"
)


@dataclass
class Takeover:
    heartbeat: float
    left_to_its_agent: bool = False  # B did not adopt the job while A was alive
    seconds: float | None = None  # from the kill to B's adopting claim on record
    completed: bool = False
    starts: int = 0

    @property
    def window(self) -> tuple[float, float]:
        return (MISSED_HEARTBEATS - 1) * self.heartbeat, (MISSED_HEARTBEATS + 1) * self.heartbeat + SLACK_SECONDS

    @property
    def ok(self) -> bool:
        low, high = self.window
        return (self.left_to_its_agent and self.seconds is not None and low <= self.seconds <= high
                and self.completed and self.starts == 1)


def run_takeover(queue: str, home: Path, folder: Path, heartbeat: float, kubeconfig: Path,
                 name: str | None = None) -> Takeover:
    """One trial against the Prefect server in PREFECT_API_URL and a kubernetes queue made for it; with `name`,
    both agents are started with that `--name` (the live one must not keep the dead one alive)."""
    import anyio
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import enqueue
    from prefect_launch.spec import ImageSource, LaunchSpec, new_run_id

    result = Takeover(heartbeat=heartbeat)
    cluster = json.loads(kubeconfig.read_text())["clusters"][0]["cluster"]["server"]
    ports = [urlsplit(os.environ["PREFECT_API_URL"]).port, urlsplit(cluster).port]
    env = {"PREFECT_WORKER_HEARTBEAT_SECONDS": str(heartbeat), "KUBECONFIG": str(kubeconfig)}
    release, run_id = folder / "release", new_run_id()

    async def put_on_queue():
        async with get_client() as client:
            spec = LaunchSpec(source=ImageSource(image=BASE_IMAGE), entry_point=["python", "-c", JOB, str(release)],
                              run_id=run_id)
            return (await enqueue(client, queue, spec, None, {})).id

    async def states():
        async with get_client() as client:
            return await client.read_flow_run_states(flow_run_id)

    def wait_for(what: str, found):
        deadline = time.monotonic() + RUN_SECONDS
        while (value := found()) is None:
            if time.monotonic() > deadline:
                raise RuntimeError(f"no {what} within {RUN_SECONDS:.0f} s")
            time.sleep(0.2)
        return value

    agent_args = ["-q", queue, *(["--name", name] if name else [])]
    a = Host("node-a", ports, folder, agent_args, env).start().wait_ready()
    b = Host("node-b", ports, folder, agent_args, env)
    try:
        flow_run_id = anyio.run(put_on_queue)
        wait_for("job running on node-a", lambda: True if (home / "runs" / run_id / "starts").exists()
                 and "[node-a:" in (anyio.run(states)[-1].message or "") else None)
        b.start().wait_ready()  # its first orphan round is behind it
        result.left_to_its_agent = "[node-a:" in (anyio.run(states)[-1].message or "")
        killed = time.time()
        a.kill()
        claim = wait_for("adoption by node-b", lambda: next(
            (state for state in anyio.run(states) if "adopted" in (state.message or "") and "[node-b:" in state.message), None))
        result.seconds = claim.timestamp.timestamp() - killed
        wait_for("node-b following the Job", lambda: True if "Following Job" in b.output() else None)
        release.touch()
        final = wait_for("final state", lambda: next((s for s in anyio.run(states)[-1:] if s.is_final()), None))
        result.completed = final.is_completed()
        result.starts = len((home / "runs" / run_id / "starts").read_text().splitlines())
    finally:
        a.kill()
        b.kill()
    return result


def table(results: list[Takeover]) -> str:
    rows = ["| trial | heartbeat (s) | left to its agent while alive | takeover (s) | window (s) | final | started |",
            "|---|---|---|---|---|---|---|"]
    for number, r in enumerate(results, 1):
        low, high = r.window
        taken = f"{r.seconds:.1f}" if r.seconds is not None else "never"
        rows.append(f"| {number} | {r.heartbeat:g} | {'yes' if r.left_to_its_agent else 'NO'} | {taken} "
                    f"| {low:.0f}-{high:.0f} | {'Completed' if r.completed else 'not Completed'} | {r.starts} |")
    return "\n".join(rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--heartbeat", type=float, default=30.0, help="PREFECT_WORKER_HEARTBEAT_SECONDS of both agents")
    parser.add_argument("--trials", type=int, default=1)
    parser.add_argument("--name", help="start both agents with this --name (each has its own by default)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (server and agent logs)")
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("the drill makes namespaces: run it as root", file=sys.stderr)
        return 2

    results = []
    with sqlite_server("cross-host-drill", args.keep) as home, kubernetes_cluster(home) as agent_env:
        for number in range(1, args.trials + 1):
            queue = f"cross-host-{number}"
            create_kubernetes_queue(queue, home, home)
            print(f"Trial {number}: heartbeat {args.heartbeat:g} s ...", file=sys.stderr)
            folder = home / f"trial-{number}"
            results.append(run_takeover(queue, home, folder, args.heartbeat, Path(agent_env["KUBECONFIG"]),
                                        args.name))
    print(table(results))
    return 0 if all(r.ok for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())
