"""Kubernetes manifests: the seeds through `--dry-run`, checked against the real schemas.

Every Job is validated with `kubernetes-validate --strict` (the Kubernetes
OpenAPI schemas, unknown fields refused); a custom resource's pod templates
are validated as `PodTemplate`s, since its own schema lives in its CRD.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import yaml

from conftest import SEEDS, cli

SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}
LABELS = {"prefect-launch/run-id": "k8srun1", "prefect-launch/attempt": "0"}
VALIDATE = str(Path(sys.executable).with_name("kubernetes-validate"))


def _dry_run(config: dict, *extra: str, check: bool = True):
    return cli("launch", "-r", "kubernetes", "-R", json.dumps(config), "-d", "registry.local/train:1",
               "-E", "python train.py --epochs 2", "--run-id", "k8srun1", "--dry-run", *extra, check=check)


def _validate(manifest: dict, tmp_path: Path) -> None:
    path = tmp_path / f"{manifest['kind']}.yaml"
    path.write_text(yaml.safe_dump(manifest))
    result = subprocess.run([VALIDATE, "--strict", "--no-warn", str(path)], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def test_job_seed_renders_with_security_defaults_and_validates(tmp_path):
    seed = yaml.safe_load((SEEDS / "000_k8s_job_1.yaml").read_text())
    manifest = json.loads(_dry_run(seed).stdout)["submission"]
    assert manifest["apiVersion"] == "batch/v1" and manifest["kind"] == "Job"
    assert manifest["metadata"] == {"name": "prefect-launch-k8srun1", "namespace": "wandb",
                                    "labels": {"queue": "k8s-test", **LABELS}}
    spec = manifest["spec"]
    assert spec["backoffLimit"] == 0 and spec["ttlSecondsAfterFinished"] == 60  # the seeds' defaults
    assert spec["template"]["metadata"]["labels"] == LABELS
    pod = spec["template"]["spec"]
    assert pod["restartPolicy"] == "Never"
    (container,) = pod["containers"]
    assert container["image"] == "registry.local/train:1"
    assert container["command"] == ["python", "train.py", "--epochs", "2"]
    assert container["resources"] == {"requests": {"cpu": "1000m", "memory": "1Gi"}}  # the admin's, kept
    assert container["securityContext"] == SECURITY
    env = {e["name"]: e for e in container["env"]}
    assert env["MY_ENV_VAR"] == {"name": "MY_ENV_VAR", "value": "some-value"}
    assert env["WANDB_RUN_ID"]["value"] == "k8srun1"
    # The API key only by reference, to the run's own Secret.
    assert env["WANDB_API_KEY"] == {"name": "WANDB_API_KEY", "valueFrom": {"secretKeyRef": {
        "name": "prefect-launch-k8srun1", "key": "WANDB_API_KEY", "optional": True}}}
    assert "WANDB_DIR" not in env
    _validate(manifest, tmp_path)


def test_admin_values_are_never_overwritten(tmp_path):
    config = {"spec": {"backoffLimit": 3, "ttlSecondsAfterFinished": 3600, "template": {"spec": {
        "serviceAccountName": "trainer", "nodeSelector": {"gpu": "a100"},
        "containers": [{"name": "main", "securityContext": {"allowPrivilegeEscalation": True,
                                                           "runAsNonRoot": True}}]}}}}
    manifest = json.loads(_dry_run(config).stdout)["submission"]
    spec = manifest["spec"]
    assert (spec["backoffLimit"], spec["ttlSecondsAfterFinished"]) == (3, 3600)
    pod = spec["template"]["spec"]
    assert pod["serviceAccountName"] == "trainer" and pod["nodeSelector"] == {"gpu": "a100"}  # the admin may
    assert pod["containers"][0]["securityContext"] == {
        "allowPrivilegeEscalation": True, "runAsNonRoot": True,
        "capabilities": {"drop": ["ALL"]}, "seccompProfile": {"type": "RuntimeDefault"}}
    assert manifest["metadata"]["namespace"] == "default"
    _validate(manifest, tmp_path)


def test_user_overrides_may_not_widen_access(tmp_path):
    seed = yaml.safe_load((SEEDS / "000_k8s_job_1.yaml").read_text())
    for override, named in (
        ({"spec": {"template": {"spec": {"hostNetwork": True}}}}, "hostNetwork: true"),
        ({"spec": {"template": {"spec": {"containers": [{"securityContext": {"privileged": True}}]}}}},
         "privileged: true"),
        ({"spec": {"template": {"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}}}, "hostPath"),
        ({"spec": {"template": {"spec": {"containers": [{"ports": [{"containerPort": 80, "hostPort": 80}]}]}}}},
         "hostPort"),
        ({"spec": {"template": {"spec": {"serviceAccountName": "cluster-admin"}}}}, "another service account"),
    ):
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"resource_args": {"kubernetes": override}}))
        result = _dry_run(seed, "-c", str(spec), check=False)
        assert result.returncode != 0, override
        assert named in result.stderr and "only the queue's config" in result.stderr, result.stderr


def test_queue_secrets_reach_every_container_by_reference_and_users_cannot_add_any(tmp_path):
    seed = yaml.safe_load((SEEDS / "000_k8s_custom_resource_1.yaml").read_text())
    seed["secrets"] = {"HF_TOKEN": "huggingface/token"}  # made with `kubectl create secret generic huggingface ...`
    manifest = json.loads(_dry_run(seed).stdout)["submission"]
    for replica in manifest["spec"]["pytorchReplicaSpecs"].values():
        env = replica["template"]["spec"]["containers"][0]["env"]
        assert {"name": "HF_TOKEN", "valueFrom": {"secretKeyRef": {"name": "huggingface", "key": "token"}}} in env
    assert "secrets" not in manifest

    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"resource_args": {"kubernetes": {"secrets": {"STOLEN": "admin-creds/token"}}}}))
    result = _dry_run({"namespace": "wandb"}, "-c", str(spec), check=False)
    assert result.returncode != 0 and "secrets at resource_args.secrets" in result.stderr
    bad = _dry_run({"secrets": {"HF_TOKEN": "no-key"}}, check=False)
    assert bad.returncode != 0 and "write `secret-name/key`" in bad.stderr


def test_custom_resource_seed_renders_every_replica(tmp_path):
    seed = yaml.safe_load((SEEDS / "000_k8s_custom_resource_1.yaml").read_text())
    manifest = json.loads(_dry_run(seed).stdout)["submission"]
    assert manifest["apiVersion"] == "kubeflow.org/v1" and manifest["kind"] == "PyTorchJob"
    assert manifest["metadata"]["name"] == "k8srun1-pytorch-job"  # '${run_id}-pytorch-job'
    assert manifest["metadata"]["labels"] == LABELS
    assert manifest["spec"]["ttlSecondsAfterFinished"] == 600
    replicas = manifest["spec"]["pytorchReplicaSpecs"]
    assert set(replicas) == {"Master", "Worker"} and replicas["Worker"]["replicas"] == 2
    for role, replica in replicas.items():
        assert replica["restartPolicy"] == "Never"
        assert replica["template"]["metadata"]["labels"] == LABELS  # scopes the watch
        (container,) = replica["template"]["spec"]["containers"]
        assert container["image"] == "registry.local/train:1"  # '${image_uri}'
        assert container["imagePullPolicy"] == "Always"
        assert container["securityContext"] == SECURITY
        names = [e["name"] for e in container["env"]]
        assert "WANDB_RUN_ID" in names and "WANDB_API_KEY" in names, role  # every container of every replica
        _validate({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
                   "template": replica["template"]}, tmp_path)
    master = replicas["Master"]["template"]["spec"]["containers"][0]
    assert master["command"] == ["python", "train.py", "--epochs", "2"]


def test_security_defaults_seed_is_what_the_renderer_injects():
    """Seed 000_k8s_job_2 is not YAML (Markdown backticks, stray commas); its values, cleaned, are ours."""
    text = (SEEDS / "000_k8s_job_2.yaml").read_text().replace("`", "").replace("False,", "false").replace("ALL,", "ALL")
    seed = yaml.safe_load(text)["spec"]["template"]
    assert seed["backOffLimit"] == 0 and seed["ttlSecondsAfterFinished"] == 60
    assert seed["securityContext"] == SECURITY
