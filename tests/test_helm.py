"""The agent's Helm chart (`infra/helm/prefect-launch-agent`), rendered by Helm itself and checked against the schemas.

Helm 4 runs in-process (helm-python-sdk binds Helm's Go SDK; no `helm`
binary, no cluster). Every rendered object is validated with
`kubernetes-validate --strict`, and the chart passes `helm lint --strict`.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from conftest import SEEDS, validate_strict
from helm_chart import CHART, render
from prefect_launch.agent_config import load_agent_config_text

def _render(values: dict, tmp_path: Path) -> dict[tuple[str, str | None, str], dict]:
    """(kind, namespace, name) -> object, every one validated strictly."""
    objects = render(values)
    for document in objects.values():
        validate_strict(document, tmp_path)
    return objects


@pytest.mark.parametrize("seed", ["000_helm_values_1.yaml", "001_helm_values_1.yaml"])
def test_the_seed_values_render_and_validate(seed, tmp_path):
    values = yaml.safe_load((SEEDS / seed).read_text())
    objects = _render(values, tmp_path)
    name = "launch-prefect-launch-agent"
    deployment = objects["Deployment", "wandb", name]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "wandb/launch-agent:latest" and container["imagePullPolicy"] == "Always"
    assert container["resources"] == {"limits": {"cpu": "1000m", "memory": "1Gi"}}
    env = {e["name"]: e for e in container["env"]}
    assert env["WANDB_BASE_URL"]["value"] == "https://api.wandb.ai"
    assert "WANDB_API_KEY" not in env  # apiKey is '' in the seed
    assert "PREFECT_LAUNCH_GIT_CREDENTIALS" not in env  # gitCreds is empty
    assert deployment["spec"]["template"]["spec"]["serviceAccountName"] == name

    # launchConfig reaches the agent verbatim, and is an agent config (placeholders still to fill).
    config = objects["ConfigMap", "wandb", f"{name}-config"]["data"]["launch-config.yaml"]
    assert config == values["launchConfig"]
    agent_config = load_agent_config_text(config, "launchConfig")
    assert agent_config.builder.type == "kaniko" and agent_config.environment.type == "aws"
    assert sorted(agent_config.placeholders()) == ["builder.build-context-store", "environment.region", "max_jobs",
                                                   "queues[0]", "registry.uri"]

    # A Role and binding in the agent's namespace and in each additional target namespace.
    for namespace in ("wandb", "default"):
        role = objects["Role", namespace, name]
        assert {"apiGroups": ["batch"], "resources": ["jobs", "jobs/status"],
                "verbs": ["create", "get", "list", "watch", "delete"]} in role["rules"]
        assert objects["RoleBinding", namespace, name]["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": "wandb"}]
    assert ("ClusterRole", None, name) in objects and ("ClusterRoleBinding", None, name) in objects
    # The seed's empty workload-identity annotations are left out rather than rendered as nulls.
    assert "annotations" not in objects["ServiceAccount", "wandb", name]["metadata"]
    assert ("Secret", "wandb", "azure-storage-access-key") not in objects


def test_filled_values_reach_the_agent_as_secrets_and_mounts(tmp_path):
    values = yaml.safe_load((SEEDS / "001_helm_values_1.yaml").read_text())
    values["agent"].update(apiKey="wandb-key-0f9e", labels={"team": "vision"})
    values.update(
        namespace="launch", additionalTargetNamespaces=["training"], prefectApiAuthString="admin:pa55",
        gitCreds="https://bot:ghp_token@github.com\n", azureStorageAccessKey="azure-key-77",
        serviceAccount={"annotations": {"iam.gke.io/gcp-service-account": "launch@proj.iam.gserviceaccount.com",
                                        "azure.workload.identity/client-id": "0000-1111"}},
        launchConfig="queues:\n  - gpu\nmax_jobs: 4\nbuilder:\n  type: kaniko\n  build-context-store: s3://b/ctx\n",
    )
    objects = _render(values, tmp_path)
    name = "launch-prefect-launch-agent"
    assert {(kind, ns) for kind, ns, n in objects if kind == "Role"} == {("Role", "launch"), ("Role", "training")}
    deployment = objects["Deployment", "launch", name]
    pod = deployment["spec"]["template"]
    assert pod["metadata"]["labels"]["team"] == "vision"
    (container,) = pod["spec"]["containers"]
    env = {e["name"]: e for e in container["env"]}
    assert env["WANDB_API_KEY"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": "WANDB_API_KEY"}
    assert env["PREFECT_API_AUTH_STRING"]["valueFrom"]["secretKeyRef"] == {"name": name, "key": "PREFECT_API_AUTH_STRING"}
    assert env["PREFECT_LAUNCH_GIT_CREDENTIALS"]["value"] == "/etc/prefect-launch/git/credentials"
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/etc/prefect-launch/launch-config.yaml",
                                                                   "/etc/prefect-launch/git"}
    # Secrets only in Secrets: nothing of them in the Deployment or the ConfigMap.
    plain = yaml.safe_dump(deployment) + yaml.safe_dump(objects["ConfigMap", "launch", f"{name}-config"])
    for secret in ("wandb-key-0f9e", "pa55", "ghp_token", "azure-key-77"):
        assert secret not in plain
    assert objects["Secret", "launch", name]["stringData"] == {"WANDB_API_KEY": "wandb-key-0f9e",
                                                               "PREFECT_API_AUTH_STRING": "admin:pa55"}
    assert objects["Secret", "launch", f"{name}-git-credentials"]["stringData"]["credentials"].startswith("https://bot:")
    # Kaniko pods on Azure read AZURE_STORAGE_ACCESS_KEY from this Secret (see builders/kaniko.py).
    assert objects["Secret", "launch", "azure-storage-access-key"]["stringData"] == {"password": "azure-key-77"}
    assert objects["ServiceAccount", "launch", name]["metadata"]["annotations"] == {
        "iam.gke.io/gcp-service-account": "launch@proj.iam.gserviceaccount.com",
        "azure.workload.identity/client-id": "0000-1111"}
    # A changed launchConfig changes the pod template, so the agent restarts with it.
    assert len(pod["metadata"]["annotations"]["checksum/launch-config"]) == 64


def test_the_chart_lints_clean():
    import helm_python as helm

    result = helm.lint(str(CHART), strict=True)
    assert result["errors"] == [], result
    assert [m for m in result["messages"] if m["severity"] > 1] == [], result["messages"]
