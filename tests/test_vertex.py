"""Vertex AI and Artifact Registry end to end: the real google-cloud-aiplatform over REST to a 127.0.0.1 stand-in.

The agent's gcp environment runs `google.auth.default()` on a generated
service-account key whose token endpoint is the stand-in; the stand-in only
accepts calls signed with that key. The Artifact Registry login
(`oauth2accesstoken` + the access token) is the only one the test registry
accepts. The test moves each CustomJob through its states.
"""

from __future__ import annotations

import inspect
import json
import os
import time
from pathlib import Path
from urllib.parse import parse_qs

import pytest
import yaml

from google.cloud.aiplatform_v1.types import Scheduling, WorkerPoolSpec

from conftest import (DEAD_AGENT, SEEDS, cancel_run, cli, dry_run_submission, held_by, launch, run_id_of, run_logs, unique,
                      wait_for_attempts, wait_for_final, wait_for_log, write_json)
from services import BASE_IMAGE, Registry, docker_engine
from vertex_standin import VertexStandIn

PROJECT, REGION = "ml-project", "us-central1"
REPOSITORY = f"{PROJECT}/launch/train"
RUNNER = "runner@ml-project.iam.gserviceaccount.com"


@pytest.fixture(scope="module")
def vertex():
    with VertexStandIn() as vertex:
        yield vertex


@pytest.fixture(scope="module")
def artifact_registry(vertex, tmp_path_factory):
    docker_engine()
    registry = Registry(tmp_path_factory.mktemp("gar"), login=("oauth2accesstoken", vertex.access_token),
                        base_in=REPOSITORY)
    yield registry
    registry.close()


@pytest.fixture
def gcp_env(vertex, monkeypatch, tmp_path):
    env = {
        "GOOGLE_APPLICATION_CREDENTIALS": vertex.credentials_file(tmp_path),
        "PREFECT_LAUNCH_VERTEX_API_ENDPOINT": vertex.endpoint,
        "PREFECT_LAUNCH_CLOUD_POLL_SECONDS": "0.3",
    }
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    return env


def _queue_config() -> dict:
    """Seed 003's queue config with its `<REQUIRED>` bucket filled in and the documented service account."""
    config = yaml.safe_load((SEEDS / "003_vertex_queue_1.yaml").read_text())
    config["spec"]["staging_bucket"] = "gs://ml-staging"
    config["spec"]["service_account"] = RUNNER
    return config


@pytest.fixture
def vertex_agent(gcp_env, artifact_registry, start_agent, make_queue, tmp_path):
    config = tmp_path / "launch-config.yaml"
    config.write_text(
        f"max_jobs: 1\nenvironment:\n  type: gcp\n  region: {REGION}\n  project: {PROJECT}\nregistry:\n  type: gcr\n"
        f"builder:\n  type: docker\n  destination: {artifact_registry.host}/{REPOSITORY}\n  base_image: {BASE_IMAGE}\n"
    )
    queue_file = tmp_path / "queue.yaml"
    queue_file.write_text(yaml.safe_dump(_queue_config()))
    queue = make_queue("--resource", "gcp-vertex", "--config", str(queue_file), prefix="vx")
    start_agent("-q", queue, "--config", str(config))
    return queue


def _created(vertex: VertexStandIn, count: int, timeout: float = 120) -> tuple[str, dict]:
    """The `count`-th CustomJob created: its resource name and the create request's body."""
    deadline = time.monotonic() + timeout
    while True:
        creates = [r for r in vertex.requests if r.method == "POST" and r.path.endswith("/customJobs")]
        if len(creates) >= count and len(vertex.jobs) >= count:
            return list(vertex.jobs)[count - 1], creates[count - 1]
        assert time.monotonic() < deadline, f"no CustomJob #{count} within {timeout} s"
        time.sleep(0.2)


def _creates(vertex: VertexStandIn) -> int:
    return sum(1 for r in vertex.requests if r.method == "POST" and r.path.endswith("/customJobs"))


def test_code_job_is_pushed_to_artifact_registry_and_run_as_a_custom_job(vertex, artifact_registry, vertex_agent,
                                                                         tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("import wandb\nwandb.init()\n")
    overrides = write_json(tmp_path / "spec.json", {"overrides": {"run_config": {"lr": 0.5}, "args": ["--fast"]}})
    before = _creates(vertex)
    run_id = run_id_of(launch("-q", vertex_agent, "-u", str(code), "-E", "python train.py", "-c", str(overrides)))

    name, create = _created(vertex, before + 1, timeout=600)
    assert create.path == f"/v1/projects/{PROJECT}/locations/{REGION}/customJobs"
    assert create.headers["authorization"].startswith("Bearer ")
    body = create.body
    assert body["displayName"] == run_id and body["labels"] == {"prefect-launch-run-id": run_id, "prefect-launch-attempt": "0"}
    spec = body["jobSpec"]
    assert spec["serviceAccount"] == RUNNER  # spec.service_account, as the seed documents it
    assert spec["baseOutputDirectory"]["outputUriPrefix"].startswith("gs://ml-staging/")
    (pool,) = spec["workerPoolSpecs"]
    assert pool["machineSpec"] == {"machineType": "n1-standard-4"}  # proto3 leaves out the default accelerator
    assert pool["replicaCount"] == "1"
    container = pool["containerSpec"]
    assert container["command"] == ["python", "train.py", "--fast"]
    env = {item["name"]: item["value"] for item in container["env"]}
    assert env["WANDB_RUN_ID"] == run_id and json.loads(env["WANDB_CONFIG"]) == {"lr": 0.5} and "WANDB_DIR" not in env
    repository, tag = container["imageUri"].rsplit(":", 1)  # ${image_uri}: the pushed image
    assert repository == f"{artifact_registry.host}/{REPOSITORY}"
    assert artifact_registry.manifest_digest(REPOSITORY, tag), "not pushed with the oauth2accesstoken login"
    # The dry run of the same job and run id, with the agent's config, shows what the agent created: its
    # worker pools as the SDK sends them (the REST body's proto JSON), its name, labels and service account.
    shown = dry_run_submission("-q", vertex_agent, "-u", str(code), "-E", "python train.py", "-c", str(overrides),
                               "--run-id", run_id, home_dir=tmp_path / "home", agent_config=tmp_path / "launch-config.yaml")
    assert [json.loads(WorkerPoolSpec.to_json(WorkerPoolSpec(pool), use_integers_for_enums=False,
                                               always_print_fields_with_no_presence=False))
            for pool in shown["spec"]["worker_pool_specs"]] == spec["workerPoolSpecs"]
    assert (shown["spec"]["display_name"], shown["spec"]["labels"], shown["run"]["service_account"]) == (
        body["displayName"], body["labels"], spec["serviceAccount"])

    vertex.set_state(name, "JOB_STATE_RUNNING")
    wait_for_log(run_id, lambda line: line.endswith("JOB_STATE_RUNNING"))  # the run follows the job's state
    vertex.set_state(name, "JOB_STATE_SUCCEEDED")
    flow_run = wait_for_final(run_id, timeout=60)
    assert flow_run.state.is_completed(), flow_run.state
    logs = run_logs(flow_run.id)
    assert any(f"Google {vertex.client_email}" in line for line in logs)  # google.auth.default() found the key


def test_vertex_failed_expired_and_cancelled(vertex, artifact_registry, vertex_agent):
    image = f"{artifact_registry.host}/{REPOSITORY}:prebuilt"
    before = _creates(vertex)

    failing = run_id_of(launch("-q", vertex_agent, "-d", image, "-E", "python train.py"))
    name, _ = _created(vertex, before + 1)
    vertex.set_state(name, "JOB_STATE_FAILED", error_message="The replica workerpool0-0 exited with a non-zero status of 1")
    state = wait_for_final(failing, timeout=60).state
    assert state.is_failed() and "non-zero status of 1" in state.message

    # max_jobs 1: the second job is created only once the first, expired, has freed the slot.
    expiring = run_id_of(launch("-q", vertex_agent, "-d", image, "-E", "python train.py"))
    queued = run_id_of(launch("-q", vertex_agent, "-d", image, "-E", "python train.py"))
    name, _ = _created(vertex, before + 2)
    time.sleep(2)
    assert _creates(vertex) == before + 2
    vertex.set_state(name, "JOB_STATE_EXPIRED")
    state = wait_for_final(expiring, timeout=60).state
    assert state.is_failed() and "expired" in state.message

    name, _ = _created(vertex, before + 3)
    cancel_run(queued)
    assert wait_for_final(queued, timeout=60).state.is_cancelled()
    assert any(r.path == f"/v1/{name}:cancel" for r in vertex.requests)  # the CustomJob was cancelled
    assert vertex.jobs[name]["state"] == "JOB_STATE_CANCELLED"


def test_a_new_agent_adopts_a_custom_job_by_its_label_and_creates_one_never_created(vertex, artifact_registry,
                                                                                   vertex_agent, start_agent, tmp_path):
    """CustomJob names are Vertex AI's numbers: the adopter lists the run-id label to find the dead agent's job.
    A run whose dead agent recorded the submission but never created the job (no CustomJob with its label: they
    stay listed) gets it created once."""
    image = f"{artifact_registry.host}/{REPOSITORY}:prebuilt"
    before = _creates(vertex)
    followed = run_id_of(launch("-q", vertex_agent, "-d", image, "-E", "python train.py"))
    name, _ = _created(vertex, before + 1)
    vertex.set_state(name, "JOB_STATE_RUNNING")
    wait_for_log(followed, lambda line: line.endswith("JOB_STATE_RUNNING"))
    start_agent.agents[-1].kill()

    never_created = run_id_of(launch("-q", vertex_agent, "-d", image, "-E", "python train.py"))
    held_by(never_created, DEAD_AGENT, submitted=True)  # its agent died after recording the submission
    # Two orphans, two slots: an orphan is adopted only into a free slot, and either may come first.
    start_agent("-q", vertex_agent, "--config", str(tmp_path / "launch-config.yaml"), "--max-jobs", "2")
    wait_for_log(followed, lambda line: line == f"Following Vertex AI CustomJob {name} (JOB_STATE_RUNNING)")
    listed = [r for r in vertex.requests if r.method == "GET" and r.path.endswith("/customJobs")]
    assert any(r.query.get("filter") == [f'labels.prefect-launch-run-id="{followed}" AND labels.prefect-launch-attempt="0"'] for r in listed), listed
    vertex.set_state(name, "JOB_STATE_SUCCEEDED")
    assert wait_for_final(followed, timeout=60).state.is_completed()

    created, _ = _created(vertex, before + 2)
    assert vertex.jobs[created]["labels"] == {"prefect-launch-run-id": never_created, "prefect-launch-attempt": "0"}
    vertex.set_state(created, "JOB_STATE_SUCCEEDED")
    final = wait_for_final(never_created, timeout=60)
    assert final.state.is_completed(), final.state
    assert any("where a job stays once created" in line for line in run_logs(final.id))
    assert _creates(vertex) == before + 2  # one CustomJob per run: followed, or created once


def test_an_adopter_finds_the_custom_job_of_its_runs_attempt_only(vertex, gcp_env):
    """A run requeued after a preemption keeps its run id. An adopter of attempt 1 whose dead agent never created
    its CustomJob must not follow attempt 0's, created moments before: the attempt label tells them apart."""
    import logging
    from datetime import datetime, timedelta, timezone

    from prefect_launch.agent_config import load_agent_config_text
    from prefect_launch.agent_setup import agent_setup
    from prefect_launch.spec import ResolvedJob
    from prefect_launch.targets.vertex import VertexTarget

    agent_config = f"environment:\n  type: gcp\n  region: {REGION}\n  project: {PROJECT}\n"
    _, environment, _ = agent_setup(load_agent_config_text(agent_config, "launch-config.yaml"))
    target, log = VertexTarget(environment=environment), logging.getLogger("test")
    config = VertexTarget.parse_config(_queue_config(), "queue config")
    job = ResolvedJob(run_id=unique("attempts"), run_name="attempts", project="p", argv=["python", "train.py"], image="img:1")
    since = datetime.now(timezone.utc) - timedelta(seconds=5)
    first = target.render(job, config)
    created = target.submit(first, log)
    assert target.attach(first, log, since).id == created.id
    assert target.attach(target.render(job.model_copy(update={"attempt": 1}), config), log, since) is None


def test_vertex_seeds_render_through_dry_run():
    for seed, missing in (("001_vertex_queue_1.yaml", "null"), ("003_vertex_queue_1.yaml", "<REQUIRED>")):
        result = cli("launch", "-r", "gcp-vertex", "-R", json.dumps(yaml.safe_load((SEEDS / seed).read_text())),
                     "-d", "img:1", "-E", "python t.py", "--dry-run", check=False)
        assert result.returncode != 0, missing
        assert "spec.staging_bucket: must be set" in result.stderr

    result = cli("launch", "-r", "gcp-vertex", "-R", json.dumps(_queue_config()), "-d", "img:1",
                 "-E", "python train.py --lr 0.1", "--run-id", "abc123", "--dry-run")
    submission = json.loads(result.stdout)["submission"]
    assert submission["run"] == {"restart_job_on_worker_restart": False, "service_account": RUNNER}
    spec = submission["spec"]
    assert spec["staging_bucket"] == "gs://ml-staging" and spec["display_name"] == "abc123"
    assert spec["labels"] == {"prefect-launch-run-id": "abc123", "prefect-launch-attempt": "0"}
    (pool,) = spec["worker_pool_specs"]
    assert pool["machine_spec"] == {"machine_type": "n1-standard-4", "accelerator_type": "ACCELERATOR_TYPE_UNSPECIFIED",
                                    "accelerator_count": 0}
    assert pool["container_spec"]["image_uri"] == "img:1"  # ${image_uri}
    assert pool["container_spec"]["command"] == ["python", "train.py", "--lr", "0.1"]
    assert {"name": "WANDB_RUN_ID", "value": "abc123"} in pool["container_spec"]["env"]

    camel = {"spec": {"workerPoolSpecs": [], "staging_bucket": "gs://b"}}
    result = cli("launch", "-r", "vertex", "-R", json.dumps(camel), "-d", "img:1", "--dry-run", check=False)
    assert result.returncode != 0 and "spec.workerPoolSpecs (write worker_pool_specs)" in result.stderr
    empty = {"spec": {"worker_pool_specs": [], "staging_bucket": "gs://b"}}
    result = cli("launch", "-r", "vertex", "-R", json.dumps(empty), "-d", "img:1", "--dry-run", check=False)
    assert result.returncode != 0 and "spec.worker_pool_specs: must be a non-empty list" in result.stderr


def test_vertex_keys_are_the_installed_sdks():
    from google.cloud.aiplatform import CustomJob

    from prefect_launch.targets.vertex import RUN_KEYS, SPEC_KEYS

    assert SPEC_KEYS == set(inspect.signature(CustomJob.__init__).parameters) - {"self", "credentials"}
    assert RUN_KEYS == set(inspect.signature(CustomJob.submit).parameters) - {"self"}


def test_gcp_environment_checks(tmp_path):
    config = tmp_path / "launch-config.yaml"
    config.write_text(f"environment:\n  type: gcp\n  region: {REGION}\n  project: {PROJECT}\n"
                      "builder:\n  type: docker\n  uri: europe-west4-docker.pkg.dev/other/launch/train\nqueues: [q]\n")
    result = cli("agent", "--config", str(config), "--check", check=False)
    assert result.returncode == 1
    assert "is in europe-west4 but environment.region is us-central1" in result.stderr
    assert "is in project other but environment.project is ml-project" in result.stderr
    config.write_text("environment:\n  type: gcp\n  region: us-central1\nqueues: [q]\n")
    result = cli("agent", "--config", str(config), "--check", check=False)
    assert result.returncode == 1 and "environment.type gcp needs environment.project" in result.stderr
    # A multi-region repository contains the environment's region.
    config.write_text(f"environment:\n  type: gcp\n  region: {REGION}\n  project: {PROJECT}\n"
                      f"builder:\n  type: docker\n  uri: us-docker.pkg.dev/{PROJECT}/launch/train\nqueues: [q]\n")
    assert cli("agent", "--config", str(config), "--check").returncode == 0


def test_gcp_credentials_from_a_prefect_block(vertex, tmp_path):
    """`environment.credentials: gcp-credentials/NAME`: the block's service account gets the token."""
    from prefect_gcp import GcpCredentials

    from prefect_launch.environments import GcpEnvironment

    assert "GOOGLE_APPLICATION_CREDENTIALS" not in os.environ
    block = unique("gcp")
    info = json.loads(Path(vertex.credentials_file(tmp_path)).read_text())
    GcpCredentials(service_account_info=info, project=PROJECT).save(block)
    environment = GcpEnvironment(region=REGION, project=PROJECT, credentials=f"gcp-credentials/{block}")
    assert vertex.client_email in environment.verify()
    assert environment.access_token() == vertex.access_token
    token_call = [r for r in vertex.requests if r.path == "/token"][-1]
    assert parse_qs(token_call.body)["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]


def test_a_spot_job_whose_vms_are_taken_back_goes_back_to_its_queue(vertex, artifact_registry, gcp_env, start_agent,
                                                                   make_queue, tmp_path):
    """A CustomJob on Spot VMs failing with a preemption goes back to its queue as the same W&B run; its
    checkpoint prefix is the same for every attempt; an ordinary failure of a spot job fails."""
    config = tmp_path / "launch-config.yaml"
    config.write_text(f"environment:\n  type: gcp\n  region: {REGION}\n  project: {PROJECT}\n")
    queue_config = {**_queue_config(), "run": {"scheduling_strategy": "SPOT"}, "checkpoints": "gs://ml-checkpoints/runs"}
    queue = make_queue("--resource", "vertex", "--config", str(write_json(tmp_path / "queue.json", queue_config)),
                       prefix="vxspot")
    start_agent("-q", queue, "--config", str(config))
    image = f"{artifact_registry.host}/{REPOSITORY}:spot"
    before = _creates(vertex)
    run_id = run_id_of(launch("-q", queue, "-d", image, "-E", "python train.py"))

    first, create = _created(vertex, before + 1)
    # The SDK's REST transport sends enums as numbers: read it back through the API's own enum.
    assert Scheduling.Strategy(create.body["jobSpec"]["scheduling"]["strategy"]).name == "SPOT"
    (pool,) = create.body["jobSpec"]["workerPoolSpecs"]
    env = {e["name"]: e["value"] for e in pool["containerSpec"]["env"]}
    assert env["LAUNCH_CHECKPOINT_URI"] == f"gs://ml-checkpoints/runs/{run_id}" and "WANDB_RESUME" not in env
    vertex.set_state(first, "JOB_STATE_RUNNING")
    vertex.set_state(first, "JOB_STATE_FAILED", error_message="The job was preempted: Spot VM capacity reclaimed (STOCKOUT)",
                     error_code=14)
    second, create = _created(vertex, before + 2)
    (pool,) = create.body["jobSpec"]["workerPoolSpecs"]
    env = {e["name"]: e["value"] for e in pool["containerSpec"]["env"]}
    assert env["WANDB_RUN_ID"] == run_id and env["WANDB_RESUME"] == "allow"
    assert env["LAUNCH_CHECKPOINT_URI"] == f"gs://ml-checkpoints/runs/{run_id}"
    vertex.set_state(second, "JOB_STATE_SUCCEEDED")
    assert sorted(run.state.name for run in wait_for_attempts(run_id, 2)) == ["Completed", "Preempted"]

    failing = run_id_of(launch("-q", queue, "-d", image, "-E", "python train.py"))
    name, _ = _created(vertex, before + 3)
    vertex.set_state(name, "JOB_STATE_FAILED", error_message="The replica workerpool0-0 exited with a non-zero status of 1.")
    state = wait_for_final(failing).state
    assert state.is_failed() and "non-zero status of 1" in state.message
    assert _creates(vertex) == before + 3  # not requeued
