"""A run's processes end with it: on completion, on cancel, when its agent dies, and a cancel during a build.

Real jobs on a real local-process agent: a job that starts a `setsid` daemon and exits, a daemon
that keeps the job's stdout open, an agent `kill -9`ed under a running job (another agent takes
the queue over), and a cancel while a docker build runs.
"""

from __future__ import annotations

import os
import subprocess
import time
from pathlib import Path

import pytest

from conftest import cancel_run, flow_run_of, launch, run_id_of, run_logs, unique, wait_for_final, wait_for_log

# Starts a daemon that leaves the job's session and process group and one that also keeps the job's
# stdout open, writes their pids, then runs for as many seconds as its second argument says.
# (`setsid` execs in place: it is not a process group leader, so it does not fork.) The holder writes
# nothing: the job runs with PYTHONUNBUFFERED, so print's text and newline are two writes, and a line
# from the holder could land between them.
DAEMON_JOB = """\
import subprocess, sys, time
pids = sys.argv[1]
daemon = subprocess.Popen(["setsid", "sleep", "300"], stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL)
holder = subprocess.Popen(["setsid", "sleep", "300"])
with open(pids, "w") as f:
    f.write(f"{daemon.pid} {holder.pid}")
print("daemons-up", flush=True)
time.sleep(float(sys.argv[2]) if len(sys.argv) > 2 else 0)
print("job-done", flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def _pids(path: Path, timeout: float = 60) -> list[int]:
    deadline = time.monotonic() + timeout
    while not (path.exists() and path.read_text().strip()):
        assert time.monotonic() < deadline, f"{path} was not written"
        time.sleep(0.1)
    return [int(pid) for pid in path.read_text().split()]


def _wait_gone(pids: list[int], timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while any(_alive(pid) for pid in pids):
        assert time.monotonic() < deadline, f"still running: {[pid for pid in pids if _alive(pid)]}"
        time.sleep(0.1)


def _code(tmp_path: Path, script: str) -> Path:
    code = tmp_path / "code"
    code.mkdir()
    (code / "job.py").write_text(script)
    return code


@pytest.fixture
def local_queue(make_queue):
    return make_queue("--resource", "local-process", "--no-require-wandb-run", prefix="procs")


def _daemon_job(local_queue, start_agent, tmp_path, *job_args: str):
    """An agent on the queue and a DAEMON_JOB run on it: the agent, the run id and its daemons' pids."""
    code = _code(tmp_path, DAEMON_JOB)
    pids_file = tmp_path / "pids"
    agent = start_agent("-q", local_queue)
    run_id = run_id_of(launch("-q", local_queue, "-u", str(code), "-E", " ".join(["python job.py", str(pids_file), *job_args])))
    return agent, run_id, _pids(pids_file)


def test_daemons_a_completed_job_started_are_stopped(local_queue, start_agent, tmp_path):
    _, run_id, pids = _daemon_job(local_queue, start_agent, tmp_path)
    # The daemon holding stdout does not hold the run: it completes when the job's main process exits.
    flow_run = wait_for_final(run_id, timeout=60)
    assert flow_run.state.is_completed(), flow_run.state
    _wait_gone(pids, timeout=15)
    stopped = [line for line in run_logs(flow_run.id) if "the job left running" in line]
    assert stopped and all(f"{pid} (" in stopped[0] for pid in pids), stopped


def test_cancel_stops_a_job_whose_daemon_holds_its_output(local_queue, start_agent, tmp_path):
    _, run_id, pids = _daemon_job(local_queue, start_agent, tmp_path, "300")
    wait_for_log(run_id, lambda line: line == "daemons-up")
    started = time.monotonic()
    cancel_run(run_id)
    flow_run = wait_for_final(run_id, timeout=60)
    assert flow_run.state.is_cancelled(), flow_run.state
    assert time.monotonic() - started < 45
    _wait_gone(pids, timeout=15)


@pytest.mark.parametrize("who_stops_it", ["death-watch", "adopter"])
def test_a_local_job_dies_with_its_agent_and_its_run_is_not_crashed_while_it_runs(who_stops_it, local_queue,
                                                                                   start_agent, tmp_path):
    """The agent's death watch stops the job when the agent is killed; with the watch killed too, the
    agent that adopts the run stops the job before it settles the run."""
    agent, run_id, pids = _daemon_job(local_queue, start_agent, tmp_path, "300")
    wait_for_log(run_id, lambda line: line == "daemons-up")
    # Every process of the job (its main process and the daemons), found by the run's cookie as the agents do.
    cookie = f"PREFECT_LAUNCH_RUN_COOKIE={flow_run_of(run_id).id}".encode()
    job_pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _has(p, cookie)]
    assert set(pids) < set(job_pids), (pids, job_pids)
    assert agent.pid in {_parent(pid) for pid in job_pids}  # the job's main process is the agent's child
    if who_stops_it == "adopter":
        watch = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit() and _parent(int(p.name)) == agent.pid
                 and b"process_tree.py" in _read(p / "cmdline")]
        assert len(watch) == 1, watch
        os.kill(watch[0], 9)
        _wait_gone(watch)
    agent.kill()
    start_agent("-q", local_queue)
    deadline = time.monotonic() + 90
    while True:
        state = flow_run_of(run_id).state
        if state.is_final():
            assert not [pid for pid in job_pids if _alive(pid)], "the run ended while its job still ran"
            break
        assert time.monotonic() < deadline, f"run {run_id} did not end: {state}"
        time.sleep(0.05)
    assert state.is_crashed() and "local-process jobs cannot be adopted by another agent" in state.message, state
    if who_stops_it == "adopter":
        assert "still running on this machine were stopped" in state.message, state
    _wait_gone(job_pids, timeout=5)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError:
        return b""


def _has(proc: Path, cookie: bytes) -> bool:
    return cookie in _read(proc / "environ").split(b"\0")


def _parent(pid: int) -> int | None:
    stat = _read(Path(f"/proc/{pid}/stat")).decode(errors="replace")
    return int(stat.rsplit(")", 1)[1].split()[1]) if stat else None


@pytest.mark.parametrize("buildkit", ["1", "0"], ids=["buildkit-cli", "classic-sdk"])
def test_cancel_during_a_docker_build_stops_the_build_and_starts_no_container(buildkit, make_queue, start_agent,
                                                                               tmp_path, monkeypatch):
    from services import BASE_IMAGE, docker_engine

    docker_engine()
    monkeypatch.setenv("PREFECT_LAUNCH_BUILDKIT", buildkit)  # the agent's builder: the BuildKit CLI or the SDK
    marker = unique("building")
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('never runs')\n")
    (code / "Dockerfile.wandb").write_text(f"FROM {BASE_IMAGE}\nRUN echo {marker} && sleep 300 && echo {marker}-done\n")
    config = tmp_path / "launch-config.yaml"
    config.write_text(f"builder:\n  type: docker\n  base_image: {BASE_IMAGE}\n")
    queue_config = tmp_path / "queue.json"
    queue_config.write_text('{"network": "host"}')
    queue = make_queue("--resource", "local-container", "--config", str(queue_config), prefix="build-cancel")
    start_agent("-q", queue, "--config", str(config))
    run_id = run_id_of(launch("-q", queue, "-u", str(code), "-E", "python train.py"))
    wait_for_log(run_id, lambda line: line.strip().endswith(marker), timeout=120)
    assert _build_containers(marker), "the build's RUN step is not running"
    started = time.monotonic()
    cancel_run(run_id)
    flow_run = wait_for_final(run_id, timeout=60)
    assert flow_run.state.is_cancelled(), flow_run.state
    assert time.monotonic() - started < 45
    deadline = time.monotonic() + 30
    while left := _build_containers(marker):
        assert time.monotonic() < deadline, f"the build still runs: {left}"
        time.sleep(0.3)
    logs = run_logs(flow_run.id)
    assert any(line.endswith("with BuildKit" if buildkit == "1" else "with the classic builder") for line in logs)
    assert not any(line.startswith("Submitting to") for line in logs), logs[-20:]
    assert "the job was never started" in flow_run.state.message or "stopped" in flow_run.state.message, flow_run.state
    assert not subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label=prefect-launch.run-id={run_id}"],
                              capture_output=True, text=True, check=True).stdout.split()


def _build_containers(marker: str) -> list[str]:
    """The build's RUN step: processes on this machine (the engine's containers' too) whose command carries the marker."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if proc.name.isdigit() and marker in cmdline and _alive(int(proc.name)):
            found.append(f"{proc.name} {cmdline}")
    return found
