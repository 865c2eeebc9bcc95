"""Flows deployed Prefect's own ways on launch queues, end to end: real server, real agent, real Docker.

`flow.deploy(..., work_pool_name=Q, image=...)` (an existing image, or one Prefect builds),
`flow.from_source(...).deploy(...)` and `prefect deploy` from a `prefect.yaml` each put runs on
the queue's target with its template fields and bounds, handed to a launch run like any
`prefect_launch.deploy` flow; a combination that cannot work is refused, saying what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import pytest
from conftest import JOBS, cli, job_report, on_server, run_logs, unique, wait_for_final
from prefect.docker import DockerImage
from prefect.deployments.runner import DeploymentApplyError
from prefect.flows import Flow, load_flow_from_entrypoint
from services import BASE_IMAGE, docker_engine, git, prefect_image
from test_flows import completed_tasks, start, wait_final
from test_kubernetes import _job, _labels, _sent, kube_agent  # noqa: F401 (a fixture)

from prefect_launch.spec import run_id_for

PREFECT = str(Path(sys.executable).with_name("prefect"))
SCALE_TEMPLATE = "scale: {type: integer, default: 1, minimum: 1, maximum: 5}\n"


def _queue(make_queue, start_agent, tmp_path: Path, resource: str, config: str) -> str:
    """A queue of `resource` whose template field `scale` the job sees as JOB_SCALE, and its agent."""
    (tmp_path / "queue.yaml").write_text(config)
    (tmp_path / "t.yaml").write_text(SCALE_TEMPLATE)
    name = make_queue("--resource", resource, "--config", str(tmp_path / "queue.yaml"),
                      "--templates", str(tmp_path / "t.yaml"))
    start_agent("-q", name, "--max-jobs", "2")
    return name


@pytest.fixture
def process_queue(make_queue, start_agent, tmp_path) -> str:
    return _queue(make_queue, start_agent, tmp_path, "local-process", "env:\n  JOB_SCALE: '{{ scale }}'\n")


@pytest.fixture
def container_queue(make_queue, start_agent, tmp_path) -> str:
    docker_engine()
    return _queue(make_queue, start_agent, tmp_path, "local-container",
                  "network: host\nenv: ['JOB_SCALE={{ scale }}']\n")


@pytest.fixture
def flow_folder(tmp_path, monkeypatch) -> Path:
    """A copy of the engineer's flow, the working directory (Prefect takes entrypoints relative to it)."""
    folder = tmp_path / "own_flow"
    shutil.copytree(JOBS / "own_flow", folder)
    monkeypatch.chdir(folder)
    return folder


def own(folder: Path) -> Flow:
    return load_flow_from_entrypoint(f"{folder / 'flow.py'}:own")


def ran_on_the_queue(flow_run_id, scale: int, epochs: int = 2) -> dict:
    """Check that a deployed flow's run completed as a launch job: its tasks, its template value, its launch run."""
    flow_run = wait_final(flow_run_id)
    lines = run_logs(flow_run.id)
    assert flow_run.state.is_completed(), (flow_run.state, lines[-30:])
    assert completed_tasks(flow_run.id, "double", epochs) == epochs
    report = job_report(lines, "OWN-FLOW")
    assert report["scale"] == str(scale), "the template value reached the job through the queue config"
    assert any(line.startswith("Handed to launch run") for line in lines)
    launch_run = wait_for_final(run_id_for(flow_run.id))
    assert launch_run.state.is_completed(), launch_run.state
    assert launch_run.parameters["spec"]["flow_run"] == str(flow_run.id)
    assert report["wandb_run"] == launch_run.name
    # The launch run's timeline, as for any launch job.
    shown = cli("status", launch_run.name).stdout
    assert "submit" in shown and "run" in shown, shown
    return report


def test_from_source_on_a_local_process_queue_clones_and_runs(process_queue, flow_folder):
    repository = flow_folder.parent / "repo.git"
    git(flow_folder, "init", "-q", "-b", "main")
    git(flow_folder, "add", "flow.py")
    git(flow_folder, "commit", "-q", "-m", "flow")
    git(flow_folder.parent, "clone", "-q", "--bare", str(flow_folder), str(repository))

    remote = Flow.from_source(source=str(repository), entrypoint="flow.py:own")
    deployment_id = remote.deploy(name=process_queue, work_pool_name=process_queue, job_variables={"scale": 3},
                                  print_next_steps=False)
    ran_on_the_queue(start(deployment_id, epochs=3).id, scale=3, epochs=3)

    # The queue's bounds hold for a deployment made Prefect's way too.
    with pytest.raises(DeploymentApplyError, match="scale.*greater than the maximum"):
        remote.deploy(name=f"{process_queue}-big", work_pool_name=process_queue, job_variables={"scale": 9},
                      print_next_steps=False)
    with pytest.raises(DeploymentApplyError, match="privileged"):
        remote.deploy(name=f"{process_queue}-priv", work_pool_name=process_queue,
                      job_variables={"privileged": True}, print_next_steps=False)


def test_prefect_deploy_from_a_prefect_yaml_runs_on_a_local_process_queue(process_queue, flow_folder):
    (flow_folder / "prefect.yaml").write_text(
        "name: own\n"
        f"pull:\n- prefect.deployments.steps.set_working_directory:\n    directory: {flow_folder}\n"
        "deployments:\n"
        f"- name: {process_queue}\n  entrypoint: flow.py:own\n  parameters: {{epochs: 2}}\n"
        f"  work_pool:\n    name: {process_queue}\n    job_variables: {{scale: 2}}\n"
    )
    done = subprocess.run([PREFECT, "--no-prompt", "deploy", "--name", process_queue], cwd=flow_folder,
                          capture_output=True, text=True, timeout=120, env=os.environ.copy())
    assert done.returncode == 0, done.stdout + done.stderr
    deployment = on_server("read_deployment_by_name", f"own/{process_queue}")
    ran_on_the_queue(start(deployment.id).id, scale=2)


def test_an_image_on_a_local_process_queue_is_refused_at_deploy_time(process_queue, flow_folder):
    with pytest.raises(ValueError, match="does not support custom Docker images"):
        own(flow_folder).deploy(name=process_queue, work_pool_name=process_queue, image=BASE_IMAGE, build=False,
                                push=False, print_next_steps=False)


def _flow_dockerfile(folder: Path) -> Path:
    """The engineer's Dockerfile: Prefect (and wandb) from the tests' image, the flow's folder as the working directory."""
    dockerfile = folder / "Dockerfile"
    dockerfile.write_text(f"FROM {prefect_image()}\nCOPY . /opt/flow\nWORKDIR /opt/flow\n")
    return dockerfile


def test_an_existing_image_runs_on_a_local_container_queue(container_queue, flow_folder):
    tag = f"prefect-launch-tests/own-flow:{uuid.uuid4().hex[:12]}"
    _flow_dockerfile(flow_folder)
    subprocess.run(["docker", "build", "-q", "-t", tag, "."], cwd=flow_folder, check=True, capture_output=True)
    try:
        deployment_id = own(flow_folder).deploy(name=container_queue, work_pool_name=container_queue, image=tag,
                                                build=False, push=False, job_variables={"scale": 4},
                                                print_next_steps=False)
        assert on_server("read_deployment", deployment_id).job_variables["image"] == tag
        ran_on_the_queue(start(deployment_id).id, scale=4)
    finally:
        subprocess.run(["docker", "rmi", "-f", tag], capture_output=True)


def test_an_image_prefect_builds_runs_on_a_local_container_queue(container_queue, flow_folder):
    tag = uuid.uuid4().hex[:12]
    image = DockerImage(name="prefect-launch-tests/own-flow-built", tag=tag,
                        dockerfile=_flow_dockerfile(flow_folder).name, pull=False)  # the base is local
    try:
        deployment_id = own(flow_folder).deploy(name=container_queue, work_pool_name=container_queue, image=image,
                                                push=False, print_next_steps=False)
        ran_on_the_queue(start(deployment_id, epochs=1).id, scale=1, epochs=1)
    finally:
        subprocess.run(["docker", "rmi", "-f", image.reference], capture_output=True)


def test_a_deployment_without_an_image_on_a_container_queue_fails_saying_what_to_do(container_queue, flow_folder):
    remote = Flow.from_source(source=str(flow_folder), entrypoint="flow.py:own")
    deployment_id = remote.deploy(name=unique("noimage"), work_pool_name=container_queue, print_next_steps=False)
    flow_run = wait_final(start(deployment_id).id, timeout=60)
    assert flow_run.state.is_failed(), flow_run.state
    assert "runs images and this flow's deployment names none" in flow_run.state.message
    lines = run_logs(flow_run.id)
    assert [line for line in lines if "flow.deploy(..., image=...)" in line] == [flow_run.state.message], lines


def test_an_image_deployment_runs_as_a_kubernetes_job(kube, kube_agent, flow_folder):
    """On the Kubernetes stand-in the test plays the kubelet: it runs the Job's container command with its
    environment (a local process: the flow's folder stands in for the image's working directory)."""
    image = "registry.local/own-flow:1"
    queue = kube_agent({"namespace": "flows"})
    deployment_id = own(flow_folder).deploy(name=queue, work_pool_name=queue, image=image, build=False, push=False,
                                            print_next_steps=False)
    flow_run = start(deployment_id, epochs=2)
    run_id = run_id_for(flow_run.id)
    (container,) = _sent(_job(kube, "flows", run_id))["spec"]["template"]["spec"]["containers"]
    assert container["image"] == image and container["command"] == ["python", "-m", "prefect.engine"]
    env = {item["name"]: item["value"] for item in container["env"] if "value" in item}
    assert env["PREFECT__FLOW_RUN_ID"] == str(flow_run.id) and env["PREFECT_API_URL"] == os.environ["PREFECT_API_URL"]

    pod = f"prefect-launch-{run_id}-f1"
    kube.create_pod("flows", pod, _labels(run_id), phase="Running")
    kubelet = {**os.environ, **env, "PATH": os.environ["PATH"]}
    done = subprocess.run([sys.executable, *container["command"][1:]], cwd=flow_folder, env=kubelet,
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    kube.update_pod("flows", pod, phase="Succeeded",
                    container_statuses=[{"name": "launch", "state": {"terminated": {"exitCode": 0}}}])
    flow_run = wait_final(flow_run.id)
    assert flow_run.state.is_completed(), flow_run.state
    assert job_report(run_logs(flow_run.id), "OWN-FLOW")["wandb_run"] == run_id
    assert wait_for_final(run_id).state.is_completed()
