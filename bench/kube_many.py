"""Many running Kubernetes jobs on one agent (issue 21, item 3).

One Prefect server (on PostgreSQL, or the embedded one on SQLite), the lean API stand-in (`bench/kube_lean.py`) and
one agent (`--max-jobs N`) on a kubernetes queue in one namespace. N runs are
enqueued with a prebuilt image (nothing to build), at most `--ahead` ahead of the
Jobs the agent has created (a deep backlog is `bench/backlog.py`'s subject); the bench plays the kubelet,
giving each Job a Running pod with one log line as soon as it is created (after
one warm-up job, not counted, so the agent has imported the kubernetes client). Once
all N run, it samples the agent for `--hold` seconds while the jobs only run:
RSS, CPU in % of one core, threads, and the API requests per second the
stand-in served. Then it ends `--sample` jobs, `--pace` per second, each pod
Succeeded (every tenth Failed, exit code 3), and times each phase change to its
run's final state in Prefect (the state's own timestamp) while the rest still
run; then it ends the rest, untimed. Every run must end as its pod did.

For a before/after ratio, run it on an older checkout with the same Python
(`--agent-path`: the folder whose `prefect_launch` the agent imports).

    .venv/bin/python bench/kube_many.py --jobs 1000
    .venv/bin/python bench/kube_many.py --jobs 200 --agent-path /work/wt-before
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

import dispatch  # noqa: E402  (bench/dispatch.py: the server, processes, RSS and CPU sampling)
from dispatch import progress  # noqa: E402
from kube_lean import LeanKube  # noqa: E402
import many_jobs  # noqa: E402  (bench/many_jobs.py: what the many-running-jobs benches share)
from many_jobs import ManyJobsResults  # noqa: E402

NAMESPACE = "bench"
IMAGE = "registry.local/train:1"
RUN_ID_LABEL = "prefect-launch/run-id"
GOAL_LATENCY_S = 1.0


@dataclass
class Results(ManyJobsResults):
    requests_per_s: float = 0.0  # to the API stand-in while the jobs only run


async def bench(home: Path, processes: dispatch.Processes, args: argparse.Namespace) -> Results:
    import anyio
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import QueueDefinition, create_queue, enqueue
    from prefect_launch.spec import ImageSource, LaunchSpec, Resource

    results = Results(args.jobs)
    with LeanKube() as kube:
        env = many_jobs.agent_env(args, {"KUBECONFIG": kube.kubeconfig(home / "kubeconfig")})
        agent_argv = [str(dispatch.VENV_BIN / "prefect-launch"), "agent", "-q", "k8s", "--max-jobs", str(args.jobs)]
        async with get_client() as client:
            await create_queue(client, QueueDefinition(name="k8s", resource=Resource.kubernetes, require_wandb_run=False,
                                                       resource_args={"namespace": NAMESPACE}))
            with dispatch.running(processes, "agent", agent_argv, ready_text="ready on", extra_env=env) as agent:
                # One job first, not counted: the agent imports the kubernetes client and starts its pod watch.
                spec = LaunchSpec(source=ImageSource(image=IMAGE), entry_point=["python", "train.py"])
                warm_up = (await enqueue(client, "k8s", spec, None, {})).id
                while not kube.jobs_without_pods():
                    await anyio.sleep(0.1)
                (namespace, job), = kube.jobs_without_pods()
                kube.run_pod(namespace, job, "Succeeded", [])
                await dispatch.wait_for_runs(client, [warm_up], timeout=args.timeout)
                results.idle_rss = await dispatch.sample_rss(agent.pid, 2)
                progress(f"enqueueing {args.jobs} runs; pods run as their Jobs appear")
                began = time.monotonic()
                run_ids: list[Any] = []

                async def enqueue_all() -> None:
                    # At most `--ahead` runs wait to be claimed: the bench is about runs that run, not a backlog.
                    for _ in range(args.jobs):
                        while len(run_ids) - (len(kube.jobs) - 1) >= args.ahead:
                            await anyio.sleep(0.05)
                        spec = LaunchSpec(source=ImageSource(image=IMAGE), entry_point=["python", "train.py"])
                        run_ids.append((await enqueue(client, "k8s", spec, None, {})).id)

                async with anyio.create_task_group() as group:
                    group.start_soon(enqueue_all)
                    while len(kube.pods) < args.jobs + 1:  # the kubelet: a Running pod for every new Job
                        for namespace, job in kube.jobs_without_pods():
                            kube.run_pod(namespace, job, "Running", [f"{job} epoch 1"])
                        if time.monotonic() - began > args.timeout:
                            raise TimeoutError(f"only {len(kube.pods)} of {args.jobs} jobs were created within {args.timeout} s")
                        await anyio.sleep(0.2)
                results.started_in = time.monotonic() - began
                progress(f"all {args.jobs} jobs running after {results.started_in:.0f} s; settling, then {args.hold} s of samples")
                await anyio.sleep(args.settle)
                requests = kube.requests
                await results.sample_agent(agent.pid, args.hold)
                results.requests_per_s = (kube.requests - requests) / args.hold

                progress(f"ending {args.sample} jobs, {args.pace} per second, timed; then the rest")
                ended: dict[str, tuple[float, str, bool]] = {}  # run id -> (when its pod ended, state expected, timed)
                for index, (namespace, name) in enumerate(key for key, pod in list(kube.pods.items())
                                                          if pod["status"]["phase"] == "Running"):
                    run_id = kube.jobs[namespace, name]["metadata"]["labels"][RUN_ID_LABEL]
                    failing = index % 10 == 9
                    ended[run_id] = (time.time(), "FAILED" if failing else "COMPLETED", index < args.sample)
                    kube.set_phase(namespace, name, "Failed" if failing else "Succeeded", exit_code=3 if failing else 0)
                    await anyio.sleep(1 / args.pace if index < args.sample else 1 / dispatch.REST_PACE)
                results.check(await dispatch.wait_for_runs(client, run_ids, timeout=args.timeout), ended)
    return results


def report(results: Results, args: argparse.Namespace) -> str:
    p95 = dispatch.p95(results.latencies) if results.latencies else float("nan")
    return "\n".join([
        f"One agent, {results.jobs} Kubernetes jobs running at once (lean API stand-in, one namespace, "
        f"server on {args.database})" + (f", agent from {args.agent_path}" if args.agent_path else ""),
        *results.rows(args, "jobs running", [
            f"| API requests per second while the jobs only run | {results.requests_per_s:.1f} | |",
            f"| pod phase change to final run state ({len(results.latencies)} jobs, {args.pace}/s) (s), median / p95 / "
            f"max | {results.latency_text()} | <= {GOAL_LATENCY_S} {dispatch.verdict(p95 <= GOAL_LATENCY_S)} |",
        ]),
    ])


def main() -> int:
    args = many_jobs.command_line(__doc__.splitlines()[0], jobs=1000, hold=30, settle=10, sample=100).parse_args()
    return many_jobs.run(bench, args, "bench-kube-many", report)


if __name__ == "__main__":
    sys.exit(main())
