"""Engineers' own flows on launch queues (`prefect_launch.deploy`), end to end: real server, real agent."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import anyio
import pytest
from conftest import EXAMPLES, JOBS, AgentProcess, cli, flow_runs_named, job_report, on_server, run_logs, wait_for_final
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId
from prefect.deployments import run_deployment
from prefect.exceptions import PrefectHTTPStatusError
from prefect.flows import load_flow_from_entrypoint
from prefect.states import Cancelling

import prefect_launch
from prefect_launch.blocks.job import LaunchJob
from prefect_launch.errors import LaunchError
from prefect_launch.spec import run_id_for

OWN_FLOW = JOBS / "own_flow"


@pytest.fixture
def scaled_queue(make_queue, start_agent, tmp_path) -> str:
    """A local-process queue with a template field the job sees as JOB_SCALE, and its agent."""
    config, templates = tmp_path / "queue.yaml", tmp_path / "t.yaml"
    config.write_text("env:\n  JOB_SCALE: '{{ scale }}'\n")
    templates.write_text("scale: {type: integer, default: 1, minimum: 1, maximum: 5}\n")
    name = make_queue("--resource", "local-process", "--config", str(config), "--templates", str(templates))
    start_agent("-q", name, "--max-jobs", "2")
    return name


def own_flow(folder: Path = OWN_FLOW):
    return load_flow_from_entrypoint(f"{folder / 'flow.py'}:own")


def start(deployment_id, **parameters):
    return run_deployment(deployment_id, parameters=parameters, timeout=0)


def cancel(flow_run_id) -> None:
    """Ask a run to cancel as the UI's Cancel button does."""
    on_server("set_flow_run_state", flow_run_id, Cancelling(message="cancelled by the test"))


def wait_final(flow_run_id, timeout: float = 180, until=lambda state: state.is_final()):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        flow_run = on_server("read_flow_run", flow_run_id)
        if flow_run.state and until(flow_run.state):
            return flow_run
        time.sleep(0.3)
    raise AssertionError(f"flow run {flow_run_id} did not finish within {timeout} s: {flow_run.state}")


def completed_tasks(flow_run_id, name: str, count: int) -> int:
    """How many `name` task runs of the flow run completed, waiting up to 20 s for `count` of them
    (task runs reach the server as events, recorded a moment after the flow ends)."""
    deadline = time.monotonic() + 20
    while True:
        task_runs = on_server("read_task_runs", flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        done = sum(1 for t in task_runs if t.name.startswith(name) and t.state and t.state.is_completed())
        if done >= count or time.monotonic() > deadline:
            return done
        time.sleep(0.5)


def test_a_deployed_flow_runs_on_the_queue_with_its_parameters_and_template_value(scaled_queue):
    deployment_id = prefect_launch.deploy(own_flow(), queue=scaled_queue, name=scaled_queue,
                                          parameters={"epochs": 3}, job_variables={"scale": 4})
    flow_run = wait_final(start(deployment_id, lr=0.5).id)
    assert flow_run.state.is_completed(), flow_run.state

    # The flow ran under Prefect's engine in the job: its own tasks and logs are on its run.
    assert completed_tasks(flow_run.id, "double", 3) == 3
    lines = run_logs(flow_run.id)
    report = job_report(lines, "OWN-FLOW")
    assert report["lr"] == 0.5 and report["epochs"] == 3 and report["doubled"] == [0, 2, 4]
    assert report["scale"] == "4", "the deployment's template value reached the job through the queue config"
    assert any(line.startswith("Handed to launch run") for line in lines)

    # Built and run as a launch job: a launch run beside it, named after the W&B run the flow joined.
    launch_run = wait_for_final(run_id_for(flow_run.id))
    assert launch_run.state.is_completed(), launch_run.state
    assert launch_run.parameters["spec"]["flow_run"] == str(flow_run.id)
    assert report["wandb_run"] == launch_run.name

    # A per-run template value replaces the deployment's; the queue's bounds hold for it too.
    async def run_with(scale):
        async with get_client() as client:
            return await client.create_flow_run_from_deployment(deployment_id, job_variables={"scale": scale})

    scaled = wait_final(anyio.run(run_with, 2).id)
    assert scaled.state.is_completed() and job_report(run_logs(scaled.id), "OWN-FLOW")["scale"] == "2"
    with pytest.raises(PrefectHTTPStatusError) as refused:
        anyio.run(run_with, 9)
    assert refused.value.response.status_code == 422 and "scale" in refused.value.response.text


def test_deploy_refuses_what_the_queue_refuses(scaled_queue):
    with pytest.raises(LaunchError, match="refused deployment .*scale"):
        prefect_launch.deploy(own_flow(), queue=scaled_queue, job_variables={"scale": 9})
    with pytest.raises(LaunchError, match="not found"):
        prefect_launch.deploy(own_flow(), queue=f"missing-{uuid.uuid4().hex[:6]}")
    with pytest.raises(LaunchError, match="without --prioritization"):
        prefect_launch.deploy(own_flow(), queue=scaled_queue, priority="high")


def test_a_run_waiting_for_its_launch_run_follows_it(make_queue, tmp_path):
    """While a deployed flow's launch run waits for a slot: cancelling the flow run cancels both at
    once and no job starts; cancelling the launch run ends the flow run Cancelled; deleting the
    launch run puts the flow run back on the queue, to be handed over again and run. (Before, the
    first two stayed Cancelling or Pending for good, and the third stayed Pending.)"""
    name = make_queue("--resource", "local-process")
    deployment_id = prefect_launch.deploy(own_flow(), queue=name, name=name)
    busy = start(deployment_id, sleep=60.0)  # holds the only slot while the others wait
    by_flow_run, by_launch_run, deleted = start(deployment_id), start(deployment_id), start(deployment_id)
    env = {**os.environ, "PREFECT_LAUNCH_PENDING_TIMEOUT": "3"}
    agent = AgentProcess(["-q", name, "--max-jobs", "1"], tmp_path / "agent.log", env=env).wait_ready()

    def launch_run_of(run):
        return flow_runs_named(run_id_for(run.id))

    try:
        waiting = (by_flow_run, by_launch_run, deleted)
        deadline = time.monotonic() + 60
        # The mark comes first, its launch run a moment later: wait for both.
        while not all((on_server("read_flow_run", run.id).state.message or "").startswith("Handed to")
                      and launch_run_of(run) for run in waiting):
            assert time.monotonic() < deadline, "never handed over"
            time.sleep(0.3)
        asked_at = time.monotonic()
        cancel(by_flow_run.id)
        cancel(launch_run_of(by_launch_run)[0].id)
        on_server("delete_flow_run", launch_run_of(deleted)[0].id)
        ended = [wait_final(run.id, timeout=40) for run in (by_flow_run, by_launch_run)]
        waited = time.monotonic() - asked_at
        still_busy = on_server("read_flow_run", busy.id).state
        cancel(busy.id)  # frees the slot: the run whose launch run was deleted is handed over again
        rerun = wait_final(deleted.id)
    finally:
        agent.stop()
    assert [run.state.name for run in ended] == ["Cancelled", "Cancelled"], [run.state for run in ended]
    assert not still_busy.is_final() and waited < 20, f"ended only after {waited:.0f} s, busy run {still_busy.name}"
    for run in ended:
        launch_run = launch_run_of(run)[0]
        assert launch_run.state.is_cancelled(), launch_run.state
        for flow_run_id in (run.id, launch_run.id):  # neither ever ran: no job started
            assert not any(state.is_running() for state in on_server("read_flow_run_states", flow_run_id))
    assert rerun.state.is_completed(), rerun.state
    assert len(launch_run_of(deleted)) == 1, "a new launch run"
    assert any("its launch run" in line and "does not exist" in line for line in run_logs(deleted.id))


def test_a_failing_flow_and_a_lost_build_end_both_runs_and_say_why(scaled_queue, tmp_path):
    failing = prefect_launch.deploy(own_flow(), queue=scaled_queue, name=scaled_queue)
    flow_run = wait_final(start(failing, lr=-1.0).id)
    assert flow_run.state.is_failed() and "lr must be positive" in flow_run.state.message
    assert wait_for_final(run_id_for(flow_run.id)).state.is_failed()

    # Its code is gone from storage: the launch run fails before the flow starts, and the flow run says why.
    folder = tmp_path / "own_flow"
    shutil.copytree(OWN_FLOW, folder)
    (folder / "marker.txt").write_text(uuid.uuid4().hex)  # code of its own, so deleting it hurts no other test
    lost = prefect_launch.deploy(own_flow(folder), queue=scaled_queue, name=f"{scaled_queue}-lost")
    digest = LaunchJob.find(f"own/{scaled_queue}-lost").source["digest"].removeprefix("sha256:")
    (Path(os.environ["PREFECT_LAUNCH_HOME"]) / "code-store" / f"{digest}.tar.gz").unlink()
    crashed = wait_final(start(lost).id)
    assert crashed.state.is_crashed(), crashed.state
    assert "ended Failed before the flow did" in crashed.state.message and digest[:12] in crashed.state.message


def test_cancelling_a_deployed_flow_run_stops_its_job(scaled_queue):
    deployment_id = prefect_launch.deploy(own_flow(), queue=scaled_queue, name=scaled_queue)
    flow_run = start(deployment_id, sleep=120.0)
    deadline = time.monotonic() + 90
    while not any(line.startswith("OWN-FLOW") for line in run_logs(flow_run.id)):
        assert time.monotonic() < deadline, "the flow never started"
        time.sleep(0.5)

    cancel(flow_run.id)
    # Its engine, stopped by a signal, records Crashed first; the agent then ends it Cancelled.
    cancelled = wait_final(flow_run.id, timeout=60, until=lambda state: state.is_cancelled())
    assert cancelled.state.is_cancelled(), cancelled.state
    assert wait_for_final(run_id_for(flow_run.id)).state.is_cancelled()


def test_a_deployment_with_no_code_fails_saying_what_to_do(scaled_queue):
    async def plain():
        async with get_client() as client:
            flow_id = await client.create_flow_from_name("plain")
            deployment_id = await client.create_deployment(flow_id=flow_id, name=scaled_queue, work_pool_name=scaled_queue,
                                                           entrypoint="flow.py:plain")
            return await client.create_flow_run_from_deployment(deployment_id)

    flow_run = wait_final(anyio.run(plain).id, timeout=60)
    assert flow_run.state.is_failed(), flow_run.state
    assert "names no image and no pull steps, so nothing fetches its code" in flow_run.state.message
    assert flow_run.state.message in run_logs(flow_run.id), "the reason is in the run's logs too"


def test_the_readme_example_deploys_its_flow_and_runs_it(make_queue, start_agent):
    name = make_queue("--resource", "local-process")
    start_agent("-q", name)
    result = subprocess.run([sys.executable, str(EXAMPLES / "flow" / "deploy.py"), name],
                            capture_output=True, text=True, timeout=600, env=os.environ.copy())
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"deployed train/train to queue {name}" in result.stdout and ": Completed" in result.stdout


def test_a_run_waiting_for_its_launch_run_is_not_taken_for_orphaned(make_queue, tmp_path):
    """Pending until its launch run gets a slot, a deployed flow's run outlives the agents' pending
    timeout without being put back on the queue (which would hand it over a second time)."""
    name = make_queue("--resource", "local-process")
    deployment_id = prefect_launch.deploy(own_flow(), queue=name, name=name)
    # Both runs wait before the agent starts, so it hands both over before either launch run runs:
    # the second launch run then waits 8 s for the only slot, its flow run Pending all that time.
    busy = start(deployment_id, sleep=8.0)
    waiting = start(deployment_id)
    env = {**os.environ, "PREFECT_LAUNCH_PENDING_TIMEOUT": "1"}
    agent = AgentProcess(["-q", name, "--max-jobs", "1"], tmp_path / "agent.log", env=env).wait_ready()
    try:
        # While it waits, `status` says for what, and where to follow it.
        deadline = time.monotonic() + 30
        while "Handed to launch run" not in (shown := cli("status", str(waiting.id)).stdout):
            assert time.monotonic() < deadline, shown
            time.sleep(0.2)
        assert f"`prefect-launch status {run_id_for(waiting.id)}` follows it" in shown
        runs = [wait_final(busy.id), wait_final(waiting.id)]
    finally:
        agent.stop()
    assert all(run.state.is_completed() for run in runs), [run.state for run in runs]
    for run in runs:
        assert len(flow_runs_named(run_id_for(run.id))) == 1, "handed over once"
        assert not any(line.startswith("Back on queue") for line in run_logs(run.id))

    history = on_server("read_flow_run_states", runs[1].id)
    handed = next(state for state in history if state.is_pending() and (state.message or "").startswith("Handed to"))
    running = next(state for state in history if state.is_running())
    assert (running.timestamp - handed.timestamp).total_seconds() > 3, "it waited well past the 1 s pending timeout"
