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
import statistics
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))

import dispatch  # noqa: E402  (bench/dispatch.py: the server, processes, RSS and CPU sampling)
from dispatch import progress  # noqa: E402
from kube_lean import LeanKube  # noqa: E402

NAMESPACE = "bench"
IMAGE = "registry.local/train:1"
RUN_ID_LABEL = "prefect-launch/run-id"
GOAL_RSS_MB, GOAL_CPU_PERCENT, GOAL_LATENCY_S = 600, 20, 1.0


@dataclass
class Results:
    jobs: int
    started_in: float = 0.0  # seconds from the first enqueue until every job ran
    idle_rss: float = 0.0
    running_rss: float = 0.0
    cpu_percent: float = 0.0
    threads: int = 0
    requests_per_s: float = 0.0
    latencies: list[float] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)


async def bench(home: Path, processes: dispatch.Processes, args: argparse.Namespace) -> Results:
    import anyio
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import QueueDefinition, create_queue, enqueue
    from prefect_launch.spec import ImageSource, LaunchSpec, Resource

    results = Results(args.jobs)
    with LeanKube() as kube:
        env = {"KUBECONFIG": kube.kubeconfig(home / "kubeconfig"), "WANDB_API_KEY": "",
               **({"PYTHONPATH": args.agent_path} if args.agent_path else {})}
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
                requests, cpu = kube.requests, dispatch.cpu_seconds(agent.pid)
                results.running_rss = await dispatch.sample_rss(agent.pid, args.hold)
                results.cpu_percent = 100 * (dispatch.cpu_seconds(agent.pid) - cpu) / args.hold
                results.requests_per_s = (kube.requests - requests) / args.hold
                results.threads = dispatch.threads(agent.pid)

                progress(f"ending {args.sample} jobs, {args.pace} per second, timed; then the rest")
                ended: dict[str, tuple[float, str, bool]] = {}  # run id -> (when its pod ended, state expected, timed)
                for index, (namespace, name) in enumerate(key for key, pod in list(kube.pods.items())
                                                          if pod["status"]["phase"] == "Running"):
                    run_id = kube.jobs[namespace, name]["metadata"]["labels"][RUN_ID_LABEL]
                    failing = index % 10 == 9
                    ended[run_id] = (time.time(), "FAILED" if failing else "COMPLETED", index < args.sample)
                    kube.set_phase(namespace, name, "Failed" if failing else "Succeeded", exit_code=3 if failing else 0)
                    await anyio.sleep(1 / args.pace if index < args.sample else 1 / dispatch.REST_PACE)
                runs = await dispatch.wait_for_runs(client, run_ids, timeout=args.timeout)
        for run in runs:
            when, expected, timed = ended.get(run.name, (None, None, False))
            if when is None or run.state.type.value != expected:
                results.wrong.append(f"{run.name}: {run.state.type.value} ({run.state.message}), expected {expected}")
            elif timed:
                results.latencies.append(run.state.timestamp.timestamp() - when)
    return results


def report(results: Results, args: argparse.Namespace) -> str:
    lat = sorted(results.latencies)
    median = statistics.median(lat) if lat else float("nan")
    p95 = dispatch.p95(lat) if lat else float("nan")
    grow = results.running_rss - results.idle_rss
    lines = [
        f"One agent, {results.jobs} Kubernetes jobs running at once (lean API stand-in, one namespace, "
        f"server on {args.database})"
        + (f", agent from {args.agent_path}" if args.agent_path else ""),
        "| measure | value | goal |", "|---|---:|---:|",
        f"| all jobs running after (s) | {results.started_in:.0f} | |",
        f"| agent RSS idle / with the jobs running (MB) | {results.idle_rss:.0f} / {results.running_rss:.0f} "
        f"({grow / max(results.jobs, 1):.2f} MB/job) | <= {GOAL_RSS_MB} {dispatch.verdict(results.running_rss <= GOAL_RSS_MB)} |",
        f"| agent CPU while the jobs only run (% of one core, {args.hold} s) | {results.cpu_percent:.1f} | "
        f"<= {GOAL_CPU_PERCENT} {dispatch.verdict(results.cpu_percent <= GOAL_CPU_PERCENT)} |",
        f"| agent threads | {results.threads} | |",
        f"| API requests per second while the jobs only run | {results.requests_per_s:.1f} | |",
        f"| pod phase change to final run state ({len(lat)} jobs, {args.pace}/s) (s), median / p95 / max | {median:.2f} / {p95:.2f} / "
        f"{max(lat, default=float('nan')):.2f} | <= {GOAL_LATENCY_S} {dispatch.verdict(p95 <= GOAL_LATENCY_S)} |",
        f"| runs ended as their pods did | {results.jobs - len(results.wrong)}/{results.jobs} | all "
        f"{dispatch.verdict(not results.wrong)} |",
    ]
    lines += [f"wrong: {line}" for line in results.wrong[:5]]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--jobs", type=int, default=1000, help="jobs running at once (the agent's --max-jobs)")
    parser.add_argument("--hold", type=float, default=30, help="seconds of samples while the jobs only run")
    parser.add_argument("--settle", type=float, default=10, help="seconds to wait once all run, before sampling")
    parser.add_argument("--ahead", type=int, default=32, help="runs enqueued ahead of the Jobs created")
    parser.add_argument("--sample", type=int, default=100, help="jobs ended one by one and timed, the rest running")
    parser.add_argument("--pace", type=float, default=2, help="timed jobs ended per second")
    parser.add_argument("--timeout", type=float, default=3600)
    parser.add_argument("--agent-path", help="import the agent's prefect_launch from this folder (a before side)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (server and agent logs)")
    parser.add_argument("--database", choices=("sqlite", "postgres"), default="postgres",
                        help="the server's database (on SQLite, Prefect's create_flow_run slows to seconds once "
                             "~150 runs are Running)")
    args = parser.parse_args()
    if args.database == "postgres":
        return dispatch.bench_and_report_on_postgres(bench, args, "bench-kube-many", report)
    return dispatch.bench_and_report(bench, args, args.keep, report)


if __name__ == "__main__":
    sys.exit(main())
