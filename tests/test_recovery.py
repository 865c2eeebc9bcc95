"""Agents and servers that die mid-run: nothing is lost and nothing runs twice.

- The restart drill (`drills/restart.py`) at CI size: local-container jobs on a
  real Docker engine, the agent `kill -9`ed at random moments and restarted.
- A job removed from its target while no agent followed it ends Crashed with
  the reason and is not submitted again; one its dead agent never created is
  created once; a local-process job, which dies with its agent, ends Crashed.
- The Prefect server restarted mid-run: a job that ends during the outage,
  one waiting on the queue and one enqueued after the restart all complete;
  a run whose job lost the server as it started is put back, not crashed;
  an orphan whose agent recorded its job's submission as it died is not started again;
  a local-process job whose agent died before starting it is started by the adopter, once.

- The restart drill on the Kubernetes stand-in, whose TTL controller removes
  finished Jobs 2 s after they end.
- Containers that dead agents left Exited or Created: removed when their run
  has ended or not started, started once when their run is adopted.
- Agents on hosts of their own (namespaces): the heartbeat rule, not the pid,
  decides a takeover (`drills/cross_host.py` at CI size).

Adoption on Kubernetes, SageMaker and Vertex AI is in `test_kubernetes.py`,
`test_sagemaker.py` and `test_vertex.py`, next to their stand-ins.
"""

from __future__ import annotations

import os
import random
import re
import socket
import subprocess
import sys
import time
from pathlib import Path
from uuid import uuid5

import pytest
from prefect.states import Cancelled, Completed

import cross_host  # drills/cross_host.py (conftest puts drills/ on the path)
import restart  # drills/restart.py
from prefect_server import stable_port  # drills/prefect_server.py
from conftest import (DEAD_AGENT, AgentProcess, cancel_run, cli, dry_run_submission, flow_run_of, held_by, launch, on_server,
                      run_id_of, run_logs, seed_database, wait_for_final, wait_for_log)
from prefect_launch.server import start_server, stop_server
from prefect_launch.worker.orphans import ADOPTION_NAMESPACE, adoption_variable
from services import BASE_IMAGE, docker_engine

WAIT_FOR_RELEASE = "import os, time\nwhile not os.path.exists({release!r}): time.sleep(0.1)\nprint('released', flush=True)\n"


@pytest.fixture(scope="module")
def engine():
    return docker_engine()


def _container_queue(tmp_path: Path, **docker_options: object) -> str:
    name = f"adopt-{random.randrange(16**8):08x}"
    restart.create_queue(name, tmp_path, **docker_options)
    return name


@pytest.mark.parametrize("rm", [False, True], ids=["kept", "rm"])
def test_restart_drill_loses_nothing_runs_nothing_twice_and_fails_nothing(engine, home, tmp_path, rm):
    """With `--rm` (as the seed's docker config has it) an adopted container removes itself as it exits."""
    logs = tmp_path / "agents"
    logs.mkdir()
    result = restart.run_round(_container_queue(tmp_path, rm=rm), home, jobs=8, kills=2, logs=logs, rng=random.Random(7))
    print(restart.table([result]))
    assert result.lost == [] and result.twice == [] and result.false_failures == [], restart.table([result])
    assert result.adopted + result.requeued >= 1, "no kill caught a job: the drill exercised nothing"


def test_restart_drill_on_kubernetes_with_a_ttl_loses_nothing_runs_nothing_twice_and_fails_nothing(home, tmp_path):
    """The stand-in's TTL controller removes a finished Job and its pods 2 s after it ends, while agents are
    killed and restarted: runs whose Jobs ended unseen are settled from the Jobs' events."""
    logs = tmp_path / "agents"
    logs.mkdir()
    queue = f"adopt-k8s-{random.randrange(16**8):08x}"
    with restart.kubernetes_cluster(tmp_path) as agent_env:
        restart.create_kubernetes_queue(queue, tmp_path, home)
        result = restart.run_round(queue, home, jobs=8, kills=2, logs=logs, rng=random.Random(7), agent_env=agent_env)
    print(restart.table([result]))
    assert result.lost == [] and result.twice == [] and result.false_failures == [], restart.table([result])
    assert result.adopted + result.requeued >= 1, "no kill caught a job: the drill exercised nothing"


def test_an_agent_on_another_host_with_the_same_name_takes_over_by_the_heartbeat_rule_not_the_pid(home, tmp_path):
    """Two agents in separate PID, UTS, mount and network namespaces (`drills/hosts.py`) cannot see each other's
    pids: the second leaves the first's job alone while the first beats, and takes it over within the heartbeat
    rule's window once the first's node is lost; the job runs once and completes. Both are started with one
    `--name`: the second's heartbeats do not keep the first alive."""
    queue = f"cross-host-{random.randrange(16**8):08x}"
    with restart.kubernetes_cluster(tmp_path) as agent_env:
        restart.create_kubernetes_queue(queue, tmp_path, home)
        result = cross_host.run_takeover(queue, home, tmp_path / "hosts", 2.0, Path(agent_env["KUBECONFIG"]),
                                         name="twin")
    print(cross_host.table([result]))
    assert result.ok, cross_host.table([result])


def test_a_job_removed_while_no_agent_followed_it_ends_as_it_exited_and_is_not_submitted_again(engine, start_agent,
                                                                                           tmp_path):
    queue = _container_queue(tmp_path, rm=True)  # `docker run --rm`: the engine removes the container when it exits
    agent = start_agent("-q", queue)
    run_id = run_id_of(launch("-q", queue, "-d", BASE_IMAGE, "-E",
                              "sh -c 'echo up; until [ -e /launch/run/release ]; do sleep 0.1; done; exit 3'"))
    wait_for_log(run_id, lambda line: line == "up")
    agent.kill()
    (Path(os.environ["PREFECT_LAUNCH_HOME"]) / "runs" / run_id / "release").touch()  # the job ends; --rm removes it
    _wait_until_gone(f"prefect-launch-{run_id}")

    start_agent("-q", queue)
    flow_run = wait_for_final(run_id, timeout=90)
    # Its true end, read from the engine's events, not a guess: exit code 3.
    assert flow_run.state.is_failed() and flow_run.state.message == "container exited with code 3", flow_run.state
    assert any(f"prefect-launch-{run_id} exited with code 3 while no agent followed it" in line
               for line in run_logs(flow_run.id))
    assert subprocess.run(["docker", "container", "inspect", f"prefect-launch-{run_id}"],
                          capture_output=True).returncode != 0  # not created again


@pytest.mark.parametrize("rm", [False, True], ids=["kept", "rm"])
def test_a_job_its_dead_agent_never_created_is_submitted_once(engine, start_agent, tmp_path, rm):
    """The agent died between recording the submission and creating the container: the adopter creates it.

    With `--rm` a missing container may also have run and removed itself: the engine's events,
    which reach back before the run started and never name it, show it was never created."""
    queue = _container_queue(tmp_path, rm=rm)
    run_id = run_id_of(launch("-q", queue, "-d", BASE_IMAGE, "-E", "python -c 'print(\"trained once\")'"))
    held_by(run_id, DEAD_AGENT, submitted=True)  # its agent died after recording the submission
    adoption = adoption_variable(uuid5(ADOPTION_NAMESPACE, str(flow_run_of(run_id).state.id)))
    agent = start_agent("-q", queue)
    final = wait_for_final(run_id, timeout=90)
    assert final.state.is_completed(), final.state
    lines = run_logs(final.id)
    assert lines.count("trained once") == 1
    why = "whose events show it was never created" if rm else "where a job stays once created"
    assert any(why in line and "agent gone [" in line and "died before creating it" in line for line in lines)
    assert "Adopted 1 running job(s)" in agent.output()
    deadline = time.monotonic() + 30
    while on_server("read_variable_by_name", adoption) is not None:  # the adopter deletes it once the run ends
        assert time.monotonic() < deadline, f"variable {adoption} left after its run ended"
        time.sleep(0.2)


def _wait_for_file_job(release: Path, line: str) -> str:
    """A container job that says `line`, then runs until `release` (in its run folder, /launch/run) exists."""
    return f"sh -c 'echo {line}; until [ -e /launch/run/{release.name} ]; do sleep 0.1; done'"


def test_a_run_cancelled_while_its_agent_is_dead_has_its_job_stopped_and_ends_cancelled(engine, start_agent, tmp_path,
                                                                                       home):
    queue = _container_queue(tmp_path)
    agent = start_agent("-q", queue)
    run_id = run_id_of(launch("-q", queue, "-d", BASE_IMAGE, "-E", _wait_for_file_job(Path("never"), "up")))
    wait_for_log(run_id, lambda line: line == "up")
    agent.kill()
    cancel_run(run_id)  # its job was submitted (infrastructure_pid): the server leaves it Cancelling for an agent
    assert flow_run_of(run_id).state.is_cancelling()

    start_agent("-q", queue)
    final = wait_for_final(run_id, timeout=90)
    assert final.state.is_cancelled(), final.state
    assert "Cancelled while its agent launch-agent-" in final.state.message and "its job was stopped" in final.state.message
    _wait_until_gone(f"prefect-launch-{run_id}")  # stopped, and removed once Cancelled was on record


def test_an_orphan_is_adopted_into_a_free_job_slot_before_any_new_run_is_claimed(engine, start_agent, tmp_path, home):
    """Agent B (max_jobs 1) is busy when agent A dies: A's running job waits, unfollowed, for B's slot; B claims
    nothing new meanwhile, and adopts the orphan the moment its own job ends, before the run waiting on the queue."""
    queue = _container_queue(tmp_path)
    runs = home / "runs"
    a = start_agent("-q", queue, "--max-jobs", "1")
    orphan = run_id_of(launch("-q", queue, "-d", BASE_IMAGE, "-E", _wait_for_file_job(Path("release"), "orphan up")))
    wait_for_log(orphan, lambda line: line == "orphan up")
    b = AgentProcess(["-q", queue, "--max-jobs", "1"], tmp_path / "agent-b.log",
                     env={**os.environ, "PREFECT_WORKER_HEARTBEAT_SECONDS": "2"}).wait_ready()  # a round every 2 s
    start_agent.agents.append(b)
    busy = run_id_of(launch("-q", queue, "-d", BASE_IMAGE, "-E", _wait_for_file_job(Path("release"), "busy up")))
    wait_for_log(busy, lambda line: line == "busy up")
    waiting = run_id_of(launch("-q", queue, "-d", BASE_IMAGE, "-E", "echo waited"))
    a.kill()
    deadline = time.monotonic() + 60
    while f"Run {orphan} is orphaned" not in b.output():
        assert time.monotonic() < deadline, b.output()[-3000:]
        time.sleep(0.2)
    assert "adopted" not in (flow_run_of(orphan).state.message or "") and flow_run_of(waiting).state.is_scheduled()

    (runs / busy / "release").touch()
    wait_for_log(orphan, lambda line: "Adopted on agent" in line)
    assert wait_for_final(busy, timeout=60).state.is_completed()
    (runs / orphan / "release").touch()
    assert wait_for_final(orphan, timeout=90).state.is_completed()
    assert wait_for_final(waiting, timeout=90).state.is_completed()
    states = {run_id: on_server("read_flow_run_states", flow_run_of(run_id).id) for run_id in (orphan, waiting)}
    adoption = next(state for state in states[orphan] if "adopted" in (state.message or ""))
    claim = next(state for state in states[waiting] if state.is_pending())
    assert claim.timestamp > adoption.timestamp  # the orphan took the freed slot first


def _start_ticks() -> int:
    """This process's start time in clock ticks (`/proc/self/stat` field 22), as an owner tag holds it."""
    return int(Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()[19])


def _exists(container: str) -> bool:
    return subprocess.run(["docker", "container", "inspect", container], capture_output=True).returncode == 0


def test_what_dead_agents_left_on_docker_is_removed_when_its_run_is_done_or_waiting_and_run_once_when_adopted(
        engine, start_agent, tmp_path, home):
    """An agent killed between a run's final state and `docker rm` leaves its container Exited; a `docker run` killed
    between create and start leaves it Created. A starting agent removes those of runs that ended or wait on the
    queue (which then runs without a name conflict), leaves those of a live agent's run or of runs it does not know,
    and an adopter starts a Created container of a Running orphan once."""
    queue = _container_queue(tmp_path)
    job = "python -c 'print(\"trained once\")'"
    ended, waiting, live, adopted = (run_id_of(launch("-q", queue, "-d", BASE_IMAGE, "-E", job)) for _ in range(4))
    unknown = f"unkn{random.randrange(16**4):04x}"
    ran = ["docker", "run", "--network", "host", "--label"]
    for run_id in (ended, live):  # exited, its run's final state (or a live agent) on record
        subprocess.run([*ran, f"prefect-launch.run-id={run_id}", "--name", f"prefect-launch-{run_id}", BASE_IMAGE, "true"],
                       check=True, capture_output=True)
    for run_id in (waiting, unknown):  # created, never started
        subprocess.run(["docker", "create", "--label", f"prefect-launch.run-id={run_id}", "--name",
                        f"prefect-launch-{run_id}", BASE_IMAGE, "true"], check=True, capture_output=True)
    # The adopted run's container as its dead agent's `docker run` created it, from the same submission.
    submission = dry_run_submission("-q", queue, "-d", BASE_IMAGE, "-E", job, "--run-id", adopted, home_dir=tmp_path / "h")
    (home / "runs" / adopted).mkdir(parents=True, exist_ok=True)
    subprocess.run(["docker", "create", *submission["argv"][2:]], env={**os.environ, **submission["env"]}, check=True,
                   capture_output=True)
    alive = f"on agent tester [{socket.gethostname()}:{os.getpid()}:{_start_ticks()}]"  # this test's own process
    on_server("set_flow_run_state", flow_run_of(ended).id, Completed(), force=True)
    held_by(live, alive, submitted=True)
    held_by(adopted, DEAD_AGENT, submitted=True)
    try:
        agent = start_agent("-q", queue)
        for run_id in (waiting, adopted):
            final = wait_for_final(run_id, timeout=90)
            assert final.state.is_completed(), final.state  # `waiting` ran: its stale container was gone
            assert run_logs(final.id).count("trained once") == 1
        assert any("was created but never started: starting it" in line for line in run_logs(flow_run_of(adopted).id))
        assert not _exists(f"prefect-launch-{ended}")
        assert _exists(f"prefect-launch-{live}") and _exists(f"prefect-launch-{unknown}")
        assert re.search(rf"Removed 2 leftover\(s\) .*: prefect-launch-({ended}|{waiting}) .*prefect-launch-({ended}|{waiting})",
                         agent.output()), agent.output()
    finally:
        subprocess.run(["docker", "rm", "--force", f"prefect-launch-{live}", f"prefect-launch-{unknown}"], capture_output=True)
        on_server("set_flow_run_state", flow_run_of(live).id, Cancelled(), force=True)


def _wait_until_gone(container: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while subprocess.run(["docker", "container", "inspect", container], capture_output=True).returncode == 0:
        assert time.monotonic() < deadline, f"{container} was not removed"
        time.sleep(0.2)


def test_a_local_process_job_ends_crashed_when_its_agent_dies(start_agent, make_queue, tmp_path):
    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    code = tmp_path / "code"
    code.mkdir()
    (code / "job.py").write_text(WAIT_FOR_RELEASE.format(release=str(tmp_path / "never")).replace(
        "import os, time\n", "import os, time\nprint('up', flush=True)\n"))
    agent = start_agent("-q", queue)
    run_id = run_id_of(launch("-q", queue, "-u", str(code), "-E", "python job.py"))
    wait_for_log(run_id, lambda line: line == "up")
    agent.kill()
    start_agent("-q", queue)
    state = wait_for_final(run_id, timeout=60).state
    assert state.is_crashed() and "local-process jobs cannot be adopted by another agent" in state.message, state


def test_a_local_process_job_whose_agent_died_is_settled_by_its_record_or_started_if_it_never_was(
        start_agent, make_queue, tmp_path, home):
    """An agent died between its job's exit and the run's final state: the exit code it wrote into the run
    folder as the job exited settles the run (the adopter is on the same machine), not Crashed. One that died
    before it put the job's submission on record never started the job: the adopter starts it, once."""
    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    code = tmp_path / "code"
    code.mkdir()
    (code / "job.py").write_text("print('job ran', flush=True)\n")
    runs = {end: run_id_of(launch("-q", queue, "-u", str(code), "-E", "python job.py")) for end in ("0", "3", "unstarted")}
    for end, run_id in runs.items():
        held_by(run_id, DEAD_AGENT, submitted=end != "unstarted")
    for end in ("0", "3"):  # what the dead agent wrote as its job exited
        (home / "runs" / runs[end]).mkdir(parents=True, exist_ok=True)
        (home / "runs" / runs[end] / ".prefect-launch-exit-code").write_text(f"{end}\n")
    start_agent("-q", queue)
    completed, failed, unstarted = (wait_for_final(run_id, timeout=90) for run_id in runs.values())
    assert completed.state.is_completed(), completed.state
    assert failed.state.is_failed() and failed.state.message == "process exited with code 3", failed.state
    assert unstarted.state.is_completed(), unstarted.state
    lines = {end: run_logs(flow_run_of(run_id).id) for end, run_id in runs.items()}
    assert any("exited with code 0 before its agent died" in line for line in lines["0"])
    assert "job ran" not in lines["0"] and "job ran" not in lines["3"]  # followed to their recorded end
    assert lines["unstarted"].count("job ran") == 1
    assert any("died before it started the job: starting it" in line for line in lines["unstarted"])


def test_a_local_process_job_whose_agent_died_before_starting_it_is_started_once(start_agent, make_queue, tmp_path,
                                                                                 home):
    """Three runs whose agent recorded the submission, then died. Its death watcher, told of the three jobs,
    writes into each run folder how many of the job's processes it found to stop. Never started (no start on
    record, none found): the adopter starts it, once. Stopped as it started (found one, its start not yet on
    record) and started (its start on record): both may have run, and end Crashed, never run twice."""
    from prefect_launch.targets import process_tree
    from prefect_launch.targets.local_process import FOUND_RECORD, STARTED_RECORD

    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    code = tmp_path / "code"
    code.mkdir()
    (code / "job.py").write_text("print('job ran', flush=True)\n")
    runs = {kind: run_id_of(launch("-q", queue, "-u", str(code), "-E", "python job.py"))
            for kind in ("never started", "stopped as it started", "started")}
    cookies = {kind: str(flow_run_of(run_id).id) for kind, run_id in runs.items()}
    for kind, run_id in runs.items():
        held_by(run_id, DEAD_AGENT, submitted=True)
        (home / "runs" / run_id).mkdir(parents=True, exist_ok=True)
    (home / "runs" / runs["started"] / STARTED_RECORD).write_text("4194306\n")
    running = subprocess.Popen(["sleep", "600"], env={**os.environ, process_tree.COOKIE_ENV: cookies["stopped as it started"]})
    watcher = subprocess.Popen([sys.executable, "-I", process_tree.__file__, str(os.getpid())], stdin=subprocess.PIPE)
    registered = "".join(f"+{cookies[kind]}\t{home / 'runs' / run_id / FOUND_RECORD}\n" for kind, run_id in runs.items())
    watcher.communicate(registered.encode(), timeout=60)  # its input ends: the agent is gone
    assert running.wait(timeout=30) != 0  # stopped by the watcher
    found = {kind: (home / "runs" / run_id / FOUND_RECORD).read_text() for kind, run_id in runs.items()}
    assert found == {"never started": "0\n", "stopped as it started": "1\n", "started": "0\n"}

    start_agent("-q", queue)
    never, stopped, started = (wait_for_final(run_id, timeout=90) for run_id in runs.values())
    assert never.state.is_completed(), never.state
    lines = run_logs(never.id)
    assert lines.count("job ran") == 1
    assert any("the agent died before starting it" in line for line in lines)
    for run in (stopped, started):
        assert run.state.is_crashed() and "cannot be adopted by another agent" in run.state.message, run.state
        assert "job ran" not in run_logs(run.id)


# An agent killed the moment its job's submission is on record: its launch flow puts the job on the death
# watch (before the record, as the agent's submit task does), and the process dies before starting the job.
DIES_AFTER_THE_RECORD = """\
import os, sys
from prefect import flow
from prefect_launch.targets.local_process import LocalProcessTarget

@flow
def launch():
    LocalProcessTarget().before_record({"argv": ["python", "job.py"], "env": {"WANDB_DIR": sys.argv[1]}, "cwd": "."})
    os._exit(9)

launch()
"""


def test_an_agent_killed_once_the_submission_is_on_record_leaves_its_watchers_word_that_the_job_never_ran(tmp_path):
    """The window the sixth full chaos drill lost 2 local-process runs in: the agent recorded the
    submission and died before its job was on the death watch, so no record told the adopter the job never
    ran. Put on the watch before the record, the job is found in none of its processes: the watcher writes 0,
    and the adopter starts the job (test_a_local_process_job_whose_agent_died_before_starting_it_is_started_once)."""
    from prefect_launch.targets.local_process import FOUND_RECORD

    folder = tmp_path / "run"
    agent = subprocess.run([sys.executable, "-c", DIES_AFTER_THE_RECORD, str(folder)], capture_output=True, text=True,
                           timeout=120)
    assert agent.returncode == 9, agent.stderr[-2000:]
    record, deadline = folder / FOUND_RECORD, time.monotonic() + 30
    while not record.exists():  # the watcher writes it within a second or so of the agent's death
        assert time.monotonic() < deadline, f"the dead agent's watcher wrote no {FOUND_RECORD}"
        time.sleep(0.1)
    assert record.read_text() == "0\n"


@pytest.fixture
def own_server(tmp_path, monkeypatch):
    """A second Prefect server, for this test to stop and start again on the same port and database."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    server_home = tmp_path / "server"
    url = start_server(seed_database(server_home), port=stable_port())
    monkeypatch.setenv("PREFECT_API_URL", url)  # the CLI and agents
    with temporary_settings({PREFECT_API_URL: url}):  # this process's client (settings are read at import)
        yield server_home, url
    stop_server(server_home)


def test_a_server_restart_mid_run_loses_no_job(own_server, start_agent, tmp_path):
    server_home, url = own_server
    port = int(url.rsplit(":", 1)[1].split("/")[0])
    cli("queue", "create", "outage", "--resource", "local-process", "--no-require-wandb-run")
    code = tmp_path / "code"
    code.mkdir()
    release = tmp_path / "release"
    (code / "job.py").write_text("print('up', flush=True)\n" + WAIT_FOR_RELEASE.format(release=str(release)))
    agent = start_agent("-q", "outage", "--max-jobs", "1")
    running = run_id_of(launch("-q", "outage", "-u", str(code), "-E", "python job.py"))
    waiting = run_id_of(launch("-q", "outage", "-u", str(code), "-E", "python job.py"))  # behind it: max-jobs 1
    wait_for_log(running, lambda line: line == "up")

    stop_server(server_home)
    release.touch()  # the running job ends while the server is down; the waiting one starts only after
    time.sleep(8)
    assert start_server(server_home, port=port) == url

    assert wait_for_final(running, timeout=180).state.is_completed()
    assert wait_for_final(waiting, timeout=180).state.is_completed()
    after = launch("-q", "outage", "-u", str(code), "-E", "python job.py", "--wait", timeout=180)
    assert "Completed" in after.stdout
    assert agent.alive()
    assert "released" in run_logs(flow_run_of(waiting).id)


def test_a_run_whose_job_lost_the_server_as_it_started_is_put_back_not_crashed(make_queue, tmp_path):
    """The server went away between the claim and the job's start (a restart): the run was claimed, its
    job never ran. It is not ended Crashed: the agent's orphan round puts it back on its queue once the
    server answers, and its job runs once. The in-thread engine's client is the one that meets the
    outage (Prefect does not retry a refused connection); runs borrow clients by the API URL their
    settings name, so the run after the outage gets a client of the reachable server."""
    from datetime import timedelta

    import anyio
    from prefect.context import SettingsContext
    from prefect.settings import PREFECT_API_URL

    from prefect_launch.worker.launch_worker import LaunchWorker

    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    code = tmp_path / "code"
    code.mkdir()
    (code / "job.py").write_text("print('job ran', flush=True)\n")
    run_id = run_id_of(launch("-q", queue, "-u", str(code), "-E", "python job.py"))
    flow_run_id = flow_run_of(run_id).id
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        gone = f"http://127.0.0.1:{free.getsockname()[1]}/api"  # nothing listens once it is closed

    async def scenario() -> None:
        async with LaunchWorker(work_pool_name=queue, create_pool_if_not_found=False) as worker:
            await worker.sync_with_backend()
            reachable = worker._run_settings
            worker._run_settings = SettingsContext(
                profile=reachable.profile, settings=reachable.settings.copy_with_update(updates={PREFECT_API_URL: gone}))
            assert [run.id for run in await worker.get_and_submit_flow_runs()] == [flow_run_id]
            with anyio.fail_after(60):  # the claim and the engine's failed start
                while worker._claimed:
                    await anyio.sleep(0.1)
            state = on_server("read_flow_run", flow_run_id).state
            assert state.is_pending(), state  # claimed, not Crashed
            worker._run_settings = reachable  # the server answers again
            requeued, adopted = await worker.take_over_orphans(300, timedelta(seconds=90))
            assert (requeued, adopted) == ([flow_run_id], [])
            assert [run.id for run in await worker.get_and_submit_flow_runs()] == [flow_run_id]

    anyio.run(scenario)
    final = wait_for_final(run_id, timeout=60)
    assert final.state.is_completed(), final.state
    assert run_logs(final.id).count("job ran") == 1


def test_the_orphan_round_reads_every_active_run_of_its_queue_page_by_page(make_queue):
    """A read of flow runs returns one page (the server's default, 200 runs); an agent may run more than that,
    and an orphan past the first page must still be found. Five runs Pending on the queue, read in pages of two."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.states import Pending

    from prefect_launch.spec import ImageSource, LaunchSpec
    from prefect_launch.worker.launch_worker import LaunchWorker

    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    spec = LaunchSpec(source=ImageSource(image="registry.local/train:1"), entry_point=["python", "train.py"])

    async def scenario() -> None:
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(f"launch/{queue}")
            created = [(await client.create_flow_run_from_deployment(
                deployment.id, parameters={"spec": spec.model_dump(mode="json", exclude_none=True)},
                state=Pending())).id for _ in range(5)]
        async with LaunchWorker(work_pool_name=queue, create_pool_if_not_found=False) as worker:
            await worker.sync_with_backend()
            assert sorted(run.id for run in await worker._active_runs(page_size=2)) == sorted(created)

    anyio.run(scenario)


def _left_running_by_a_dead_agent(queue: str, folder: Path) -> str:
    """A local-process run of a job that prints 'job ran', Running under an agent that died before submitting."""
    code = folder / "code"
    code.mkdir()
    (code / "job.py").write_text("print('job ran', flush=True)\n")
    run_id = run_id_of(launch("-q", queue, "-u", str(code), "-E", "python job.py"))
    held_by(run_id, DEAD_AGENT, submitted=False)
    return run_id


def test_an_orphan_whose_agent_recorded_its_submission_as_it_died_is_not_started_again(make_queue, tmp_path, home):
    """The orphan round reads the queue's runs, then judges each one's agent: an agent that put its job's
    submission on record between the two (and died) started the job. The adopter goes by that record, not
    by what it read first: the job is not started a second time."""
    import anyio

    from prefect_launch.ownership import Owner
    from prefect_launch.targets.local_process import FOUND_RECORD
    from prefect_launch.worker.launch_worker import LaunchWorker

    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    run_id = _left_running_by_a_dead_agent(queue, tmp_path)
    as_read = flow_run_of(run_id)  # what the round read
    on_server("update_flow_run", as_read.id, infrastructure_pid=f"submitted/{run_id}")  # the agent's last acts:
    (home / "runs" / run_id).mkdir(parents=True, exist_ok=True)
    (home / "runs" / run_id / FOUND_RECORD).write_text("1\n")  # its watcher found the job it had started

    async def adopt() -> None:
        async with LaunchWorker(work_pool_name=queue, create_pool_if_not_found=False) as worker:
            await worker.sync_with_backend()
            assert await worker._adopt(as_read, Owner.parse(as_read.state.message))

    anyio.run(adopt)
    final = wait_for_final(run_id, timeout=60)
    assert final.state.is_crashed() and "cannot be adopted by another agent" in final.state.message, final.state
    assert "job ran" not in run_logs(final.id)


def test_of_two_adopting_claims_both_accepted_only_the_one_holding_the_adoption_variable_runs_the_job(make_queue,
                                                                                                     tmp_path):
    """On PostgreSQL the server accepted two agents' adopting claims made in the same instant under the same
    transition id, and both ran the job (the chaos drill's fifth full run). The adoption's variable, named
    after the transition id, has one creator: here another, live agent made it first, so this agent leaves the
    run and names that agent on it again. Its own later rounds see a live owner, not an orphan."""
    from datetime import timedelta

    import anyio
    from prefect.client.schemas.actions import VariableCreate

    from prefect_launch.ownership import Owner
    from prefect_launch.worker.launch_worker import LaunchWorker

    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    run_id = _left_running_by_a_dead_agent(queue, tmp_path)
    as_read = flow_run_of(run_id)
    winner = Owner.this_process("winner").tag()  # alive as long as this test
    variable = adoption_variable(uuid5(ADOPTION_NAMESPACE, str(as_read.state.id)))
    on_server("create_variable", VariableCreate(name=variable, value=winner))

    async def adopt() -> None:
        async with LaunchWorker(work_pool_name=queue, create_pool_if_not_found=False) as worker:
            await worker.sync_with_backend()
            assert not await worker._adopt(as_read, Owner.parse(as_read.state.message))  # its claim is accepted
            assert not worker._claimed
            assert await worker.take_over_orphans(300, timedelta(seconds=90)) == ([], [])

    anyio.run(adopt)
    flow_run = flow_run_of(run_id)
    assert flow_run.state.is_running() and flow_run.state.message == f"Running {winner}, adopted", flow_run.state
    assert "job ran" not in run_logs(flow_run.id)
    on_server("delete_variable_by_name", variable)
