"""Build benchmark: cold build, code-only rebuild, and re-launch of unchanged code vs a prebuilt image.

Everything real: an embedded Prefect server (SQLite) in a temporary home, a
prefect-launch agent with the docker builder, the local Docker engine, a
`docker-registry` on 127.0.0.1 as `builder.destination`, and a PEP 503 index
on 127.0.0.1 serving the job's one requirement. Each round, on a
local-container queue:

1. cold: new code and a new requirements.txt, with the engine's build cache
   emptied first (`docker builder prune --all`: no layer and no pip cache; only
   the base image is local), as on a fresh agent;
2. requirements: new code and requirements again, now with a warm build cache
   (the pip cache mount is shared by every build on the engine);
3. rebuild: only the code changed (the requirements layer comes from cache);
4. re-launch: the same code again (the tag is in the registry: no build);
5. prebuilt: `-d` the image step 4 used (the baseline: nothing to pack or check).

The job's requirements are `--requirements` (default: numpy and pandas, a
small but real ML stack) from the local index; their wheels are downloaded
once with pip into ~/.cache/prefect-launch/bench-wheels, the only network
this script uses. Before the rounds, one unmeasured build pushes the base
image's layers to the fresh registry (a once-per-registry cost).

Per job it records enqueue -> final state (s, measured here: packing and
uploading the code, creating the flow run, the agent's stages, the
container) and the build+push stages (s, from the run's timeline artifact).
Goals (issue 3): re-launch costs <= 1 s more than a prebuilt image (medians);
a code-only rebuild's build+push takes <= 25% of the cold one's.

Needs what `./dev services` sets up (engine, registry binary, base image):

    .venv/bin/python bench/build.py            # 5 rounds, about 3 minutes
    .venv/bin/python bench/build.py --rounds 2

Progress goes to stderr, the table to stdout. Binds only 127.0.0.1.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
REPO = BENCH.parent
sys.path[:0] = [str(REPO), str(BENCH), str(REPO / "tests")]

from dispatch import Processes, child_env, p95, print_table, progress, start_server, verdict  # noqa: E402
from services import BASE_IMAGE, PackageIndex, Registry, docker_engine  # noqa: E402

QUEUE = "bench-build"
GOAL_RELAUNCH_EXTRA_SECONDS = 1.0
GOAL_REBUILD_FRACTION = 0.25
RUN_TIMEOUT_SECONDS = 600.0
JOB = "print('bench job', {marker!r})\n"
WHEEL_CACHE = Path("~/.cache/prefect-launch/bench-wheels").expanduser()


@dataclass
class Sample:
    total: float
    build_push: float
    image: str


@dataclass
class Results:
    builder: str
    requirements: str
    samples: dict[str, list[Sample]] = field(default_factory=dict)

    def add(self, kind: str, sample: Sample) -> None:
        self.samples.setdefault(kind, []).append(sample)


def write_code(folder: Path, index_url: str, requirements: list[str], code_marker: str, requirements_marker: str) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "train.py").write_text(JOB.format(marker=code_marker))
    lines = [f"# {requirements_marker}", f"--index-url {index_url}", *requirements]
    (folder / "requirements.txt").write_text("\n".join(lines) + "\n")


def serve_requirements(index: PackageIndex, requirements: list[str]) -> None:
    """Download the requirements' wheels once (cached) and serve them from the local index."""
    folder = WHEEL_CACHE / "-".join(sorted(requirements))
    if not folder.is_dir():
        progress(f"downloading wheels for {' '.join(requirements)} into {folder}")
        subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--only-binary=:all:", "-d", str(folder),
                        *requirements], check=True)
    for wheel in sorted(folder.glob("*.whl")):
        index.add(wheel)


async def launch_once(client: Any, spec: Any) -> Sample:
    """Enqueue `spec` (its code already in `spec.source`, or uploaded by the caller) and wait for the end."""
    import anyio

    from prefect_launch.deployments.queues import enqueue

    flow_run = await enqueue(client, QUEUE, spec, None, {})
    deadline = time.monotonic() + RUN_TIMEOUT_SECONDS
    while True:
        flow_run = await client.read_flow_run(flow_run.id)
        if flow_run.state and flow_run.state.is_final():
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"run {spec.run_id} did not finish in {RUN_TIMEOUT_SECONDS} s")
        await anyio.sleep(0.05)
    if not flow_run.state.is_completed():
        raise RuntimeError(f"run {spec.run_id} ended {flow_run.state.name}: {flow_run.state.message}")
    return flow_run


async def stages(client: Any, run_id: str) -> tuple[float, str]:
    """(build + push seconds, image) from the run's timeline artifact."""
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey

    (artifact,) = await client.read_artifacts(artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=[f"launch-{run_id}"])))
    text = artifact.data
    seconds = {name: float(value) for name, value in re.findall(r"^\| (build|push) \| ([\d.]+) s \|$", text, re.M)}
    image = re.search(r"^- image: `([^`]+)`", text, re.M).group(1)
    return seconds["build"] + seconds["push"], image


async def run_rounds(rounds: int, index: PackageIndex, requirements: list[str], work: Path) -> Results:
    from prefect.client.orchestration import get_client

    from prefect_launch.home import launch_home
    from prefect_launch.sources import code
    from prefect_launch.spec import ImageSource, LaunchSpec, new_run_id

    from prefect_launch.docker_engine import buildkit_cli

    results = Results(builder="BuildKit" if buildkit_cli() else "classic", requirements=" ".join(requirements))
    storage = code.code_storage(None, launch_home())
    async with get_client() as client:

        async def measure(kind: str, source_of) -> Sample:
            started = time.perf_counter()
            spec = LaunchSpec(source=source_of(), entry_point=["python", "train.py"], run_id=new_run_id(), project="bench")
            await launch_once(client, spec)
            total = time.perf_counter() - started
            build_push, image = await stages(client, spec.run_id)
            sample = Sample(total=total, build_push=build_push, image=image)
            results.add(kind, sample)
            progress(f"  {kind:9} {total:6.2f} s total, {build_push:6.2f} s build+push")
            return sample

        progress("warm-up: one build pushes the base image's layers to the registry")
        write_code(work / "warm-up", index.url, [], "warm-up", "warm-up")
        await measure("warm-up", lambda: code.upload(work / "warm-up", storage))
        for number in range(1, rounds + 1):
            progress(f"round {number}/{rounds}")
            folder = work / f"round-{number}"
            salt = uuid.uuid4().hex
            write_code(folder, index.url, requirements, f"code {salt}", f"requirements {salt}")
            subprocess.run(["docker", "builder", "prune", "--all", "--force"], check=True, capture_output=True)
            await measure("cold", lambda: code.upload(folder, storage))
            write_code(folder, index.url, requirements, f"code {salt} warm", f"requirements {salt} warm")
            await measure("warm", lambda: code.upload(folder, storage))
            (folder / "train.py").write_text(JOB.format(marker=f"code {salt} changed"))
            await measure("rebuild", lambda: code.upload(folder, storage))
            relaunched = await measure("relaunch", lambda: code.upload(folder, storage))
            await measure("prebuilt", lambda: ImageSource(image=relaunched.image))
    return results


ROWS = {
    "cold": "cold: new code and requirements, no cache",
    "warm": "new code and requirements, warm cache",
    "rebuild": "rebuild: code-only change",
    "relaunch": "re-launch: unchanged code (build skipped)",
    "prebuilt": "prebuilt image (-d), the baseline",
}


def report(results: Results) -> str:
    samples = results.samples
    lines = [
        f"Builds on a local-container queue ({results.builder} builder; requirements: {results.requirements}):",
        "enqueue -> final state, and the build+push stages (s)",
        f"  {'':44} {'n':>3} {'total med':>9} {'p95':>7} {'build+push med':>14} {'p95':>7}",
    ]
    for kind, label in ROWS.items():
        totals = [s.total for s in samples[kind]]
        builds = [s.build_push for s in samples[kind]]
        lines.append(
            f"  {label:44} {len(totals):>3} {statistics.median(totals):>9.2f} {p95(totals):>7.2f} "
            f"{statistics.median(builds):>14.2f} {p95(builds):>7.2f}"
        )
    extra = statistics.median(s.total for s in samples["relaunch"]) - statistics.median(s.total for s in samples["prebuilt"])
    fraction = statistics.median(s.build_push for s in samples["rebuild"]) / statistics.median(
        s.build_push for s in samples["cold"])
    cold_total = statistics.median(s.total for s in samples["cold"])
    relaunch_total = statistics.median(s.total for s in samples["relaunch"])
    lines += [
        f"  re-launch - prebuilt (medians): {extra:+.2f} s; goal <= {GOAL_RELAUNCH_EXTRA_SECONDS:.0f} s: "
        + verdict(extra <= GOAL_RELAUNCH_EXTRA_SECONDS),
        f"  rebuild / cold build+push (medians): {fraction:.0%}; goal <= {GOAL_REBUILD_FRACTION:.0%}: "
        + verdict(fraction <= GOAL_REBUILD_FRACTION),
        f"  re-launch vs cold, end to end: {cold_total / relaunch_total:.1f}x faster",
    ]
    return "\n".join(lines)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--requirements", default="numpy pandas", help="the job's requirements (space-separated)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary home (logs) after the run")
    args = parser.parse_args()
    began = time.monotonic()
    load_before = os.getloadavg()[0]
    docker_engine()
    home = Path(tempfile.mkdtemp(prefix="bench-build-"))
    from prefect_launch.server import stop_server

    processes = registry = index = None
    try:
        url = start_server(home)
        env = child_env(home, url)
        for name in [name for name in os.environ if name.startswith("PREFECT_")]:
            del os.environ[name]
        os.environ.update(env, WANDB_MODE="offline")
        registry = Registry(home)
        index = PackageIndex(home / "index")
        requirements = args.requirements.split()
        serve_requirements(index, requirements)
        agent_config = home / "launch-config.yaml"
        agent_config.write_text(
            f"builder:\n  type: docker\n  destination: {registry.host}/bench\n  base_image: {BASE_IMAGE}\n"
        )
        queue_config = home / "queue.json"
        queue_config.write_text(json.dumps({"network": "host"}))
        cli = str(Path(sys.executable).with_name("prefect-launch"))
        subprocess.run([cli, "queue", "create", QUEUE, "--resource", "local-container", "--config",
                        str(queue_config), "--no-require-wandb-run"], check=True, env={**os.environ}, capture_output=True)
        processes = Processes({**os.environ}, home)
        processes.start("agent", [cli, "agent", "-q", QUEUE, "--config", str(agent_config)], "ready on")
        progress(f"server {url}, registry {registry.host}, index {index.url}")
        import anyio

        results = anyio.run(run_rounds, args.rounds, index, requirements, home / "code")
    finally:
        if processes:
            processes.stop_all()
        for service in (registry, index):
            if service:
                service.close()
        stop_server(home)
        if not args.keep:
            shutil.rmtree(home, ignore_errors=True)
    print_table(report(results), load_before, began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
