"""Secrets never leak: the W&B API key and the registry password, searched for everywhere a run leaves a trace.

A code job is built, pushed to a registry that wants a login (the agent's
`docker login`, from DOCKER_CONFIG), and run on a local-container queue by an
agent holding a W&B API key, and its job really reads the key (so a key that
never reached the job would not pass either). Then every log line of the run,
its flow-run parameters, its artifacts, the dry-run output, the image's
history, config and every byte of `docker save` are searched for both: 0 hits.
"""

from __future__ import annotations

import base64
import hashlib
import json
import subprocess

import anyio
from prefect.client.orchestration import get_client
from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

from conftest import cli, flow_run_of, launch, run_id_of, run_logs, write_json
from services import BASE_IMAGE, Registry, docker_engine

API_KEY = "wandb-api-key-0e5b9d2c41"
REGISTRY_PASSWORD = "registry-pw-83f1aa"
SECRETS = (API_KEY, REGISTRY_PASSWORD)
JOB = """\
import hashlib, os
import wandb
run = wandb.init(mode="offline")
key = os.environ.get("WANDB_API_KEY", "")
print("KEY_SHA256 " + hashlib.sha256(key.encode()).hexdigest(), flush=True)
"""


def _hits(text: str) -> list[str]:
    return [secret for secret in SECRETS if secret in text]


def test_no_secret_in_logs_parameters_artifacts_dry_run_or_image(make_queue, start_agent, monkeypatch, tmp_path):
    engine = docker_engine()
    (tmp_path / "registry").mkdir()
    registry = Registry(tmp_path / "registry", login=("launch", REGISTRY_PASSWORD), base_in="secrets")
    try:
        docker_config = tmp_path / "docker"
        docker_config.mkdir()
        auth = base64.b64encode(f"launch:{REGISTRY_PASSWORD}".encode()).decode()
        (docker_config / "config.json").write_text(json.dumps({"auths": {registry.host: {"auth": auth}}}))
        monkeypatch.setenv("DOCKER_CONFIG", str(docker_config))
        monkeypatch.setenv("WANDB_API_KEY", API_KEY)
        agent_config = tmp_path / "launch-config.yaml"
        agent_config.write_text(
            f"builder:\n  type: docker\n  destination: {registry.host}/secrets\n  base_image: {BASE_IMAGE}\n")
        queue = make_queue("--resource", "local-container", "--config",
                           str(write_json(tmp_path / "queue.json", {"network": "host"})), prefix="secrets")
        agent = start_agent("-q", queue, "--config", str(agent_config))
        code = tmp_path / "code"
        code.mkdir()
        (code / "train.py").write_text(JOB)

        dry = cli("launch", "-q", queue, "-u", str(code), "-E", "python train.py", "--dry-run")
        result = launch("-q", queue, "-u", str(code), "-E", "python train.py", "--wait", timeout=600)
        flow_run = flow_run_of(run_id_of(result))
        assert flow_run.state.is_completed(), flow_run.state
        logs = run_logs(flow_run.id)
        # The job got the key (by name, from the agent's environment), and printed only its hash.
        assert f"KEY_SHA256 {hashlib.sha256(API_KEY.encode()).hexdigest()}" in logs
        image = next(line.split()[1] for line in logs if line.startswith("Built "))
        assert registry.manifest_digest("secrets", image.rsplit(":", 1)[1])  # pushed with the login

        async def artifacts() -> list[str]:
            async with get_client() as client:
                found = await client.read_artifacts(
                    artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id])))
                return [json.dumps(a.model_dump(mode="json")) for a in found]

        found_artifacts = anyio.run(artifacts)
        assert found_artifacts  # the run's summary artifact exists, so searching it means something
        history = subprocess.run(["docker", "history", "--no-trunc", image], capture_output=True, text=True,
                                 check=True).stdout
        config = json.dumps(engine.images.get(image).attrs)
        saved = b"".join(engine.images.get(image).save())
        traces = {
            "logs": "\n".join(logs),
            "parameters": json.dumps(flow_run.parameters) + json.dumps(flow_run.job_variables or {}),
            "artifacts": "\n".join(found_artifacts),
            "dry run": dry.stdout + dry.stderr,
            "CLI output": result.stdout + result.stderr,
            "agent log": agent.output(),
            "image history": history,
            "image config": config,
        }
        assert {where: _hits(text) for where, text in traces.items() if _hits(text)} == {}
        assert [s for s in SECRETS if s.encode() in saved] == []
    finally:
        registry.close()
