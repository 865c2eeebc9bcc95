"""ACR end to end: DefaultAzureCredential (App Service managed identity) -> /oauth2/exchange -> docker push.

W&B's docker builder leaves ACR login to `az acr login`; here the agent logs in
itself. The stand-in's registry accepts only the refresh token that its
exchange hands out for the managed identity's Azure AD token.
"""

from __future__ import annotations


from urllib.parse import parse_qs, urlsplit

import pytest

from azure_standin import AD_TOKEN, AcrStandIn
from conftest import cli, flow_run_of, launch, run_id_of, run_logs, write_json
from services import BASE_IMAGE, docker_engine

REPOSITORY = "launch-acr"


@pytest.fixture(scope="module")
def acr(tmp_path_factory):
    docker_engine()
    with AcrStandIn(tmp_path_factory.mktemp("acr"), base_in=REPOSITORY) as acr:
        yield acr


def test_code_job_is_pushed_to_acr_with_default_azure_credential(acr, make_queue, start_agent, monkeypatch,
                                                                  tmp_path):
    monkeypatch.setenv("IDENTITY_ENDPOINT", acr.identity_endpoint)
    monkeypatch.setenv("IDENTITY_HEADER", acr.identity_header)
    monkeypatch.setenv("SSL_CERT_FILE", str(acr.cert))
    config = tmp_path / "launch-config.yaml"
    # The seed's ACR destination form: https://<registry>/<repository>.
    config.write_text("environment:\n  type: azure\nregistry:\n  type: acr\n"
                      f"builder:\n  type: docker\n  destination: https://{acr.host}/{REPOSITORY}\n"
                      f"  base_image: {BASE_IMAGE}\n")
    assert cli("agent", "--config", str(config), "-q", "x", "--check").returncode == 0
    queue = make_queue("--resource", "local-container", "--config",
                       str(write_json(tmp_path / "queue.json", {"network": "host"})), prefix="acr")
    start_agent("-q", queue, "--config", str(config))
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("import wandb\nwandb.init()\nprint('trained on acr image')\n")

    first = run_id_of(launch("-q", queue, "-u", str(code), "-E", "python train.py", "--wait", timeout=600))
    flow_run = flow_run_of(first)
    assert flow_run.state.is_completed(), flow_run.state
    logs = run_logs(flow_run.id)
    assert "trained on acr image" in logs
    image = next(line.split()[1] for line in logs if line.startswith("Built "))
    repository, tag = image.rsplit(":", 1)
    assert repository == f"{acr.host}/{REPOSITORY}"
    assert acr.registry.manifest_digest(REPOSITORY, tag)
    resources = [parse_qs(urlsplit(path).query)["resource"] for path in acr.identity_requests]
    assert ["https://management.azure.com"] in resources  # the managed identity was asked for an ARM token
    exchange = acr.exchanges[-1]
    assert exchange["service"] == [acr.host] and exchange["access_token"] == [AD_TOKEN]

    second = run_id_of(launch("-q", queue, "-u", str(code), "-E", "python train.py", "--wait", timeout=300))
    logs = run_logs(flow_run_of(second).id)
    assert any(line.endswith("already exists: build skipped") for line in logs)  # the manifest check logged in too
