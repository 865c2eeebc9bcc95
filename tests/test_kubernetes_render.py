"""Kubernetes manifests: the seeds through `--dry-run`, checked against the real schemas.

Every Job is validated with `kubernetes-validate --strict` (the Kubernetes
OpenAPI schemas, unknown fields refused); a custom resource's pod templates
are validated as `PodTemplate`s, since its own schema lives in its CRD.
"""

from __future__ import annotations

import json

import pytest
import yaml

from conftest import SEEDS, cli, validate_strict
from prefect_launch.errors import LaunchError

SECURITY = {"allowPrivilegeEscalation": False, "capabilities": {"drop": ["ALL"]},
            "seccompProfile": {"type": "RuntimeDefault"}}
LABELS = {"prefect-launch/run-id": "k8srun1", "prefect-launch/attempt": "0"}


def _dry_run(config: dict, *extra: str, check: bool = True):
    return cli("launch", "-r", "kubernetes", "-R", json.dumps(config), "-d", "registry.local/train:1",
               "-E", "python train.py --epochs 2", "--run-id", "k8srun1", "--dry-run", *extra, check=check)


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
    validate_strict(manifest, tmp_path)


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
    validate_strict(manifest, tmp_path)


def test_user_overrides_may_not_widen_access(tmp_path):
    seed = yaml.safe_load((SEEDS / "000_k8s_job_1.yaml").read_text())
    for override, named in (
        ({"spec": {"template": {"spec": {"hostNetwork": True}}}}, "hostNetwork at spec.template.spec.hostNetwork"),
        ({"spec": {"template": {"spec": {"containers": [{"securityContext": {"privileged": True}}]}}}},
         "privileged at spec.template.spec.containers[0].securityContext.privileged"),
        ({"spec": {"template": {"spec": {"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}}}}, "hostPath"),
        ({"spec": {"template": {"spec": {"containers": [{"ports": [{"containerPort": 80, "hostPort": 80}]}]}}}},
         "hostPort"),
        ({"spec": {"template": {"spec": {"serviceAccountName": "cluster-admin"}}}}, "another service account"),
    ):
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"resource_args": {"kubernetes": override}}))
        result = _dry_run(seed, "-c", str(spec), check=False)
        assert result.returncode != 0, override
        assert named in result.stderr and "only the queue's config (its admin) may set it" in result.stderr, result.stderr


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
    assert result.returncode != 0 and "may not set secrets (another Secret)" in result.stderr
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
        assert "WANDB_PROJECT" in names and "WANDB_API_KEY" in names, role  # every container of every replica
        # W&B's rule: the entry point everywhere, the run id in the first container only.
        assert container["command"] == ["python", "train.py", "--epochs", "2"], role
        assert ("WANDB_RUN_ID" in names) == (role == "Master"), role
        validate_strict({"apiVersion": "v1", "kind": "PodTemplate", "metadata": {"name": role.lower()},
                   "template": replica["template"]}, tmp_path)


def test_a_custom_resource_or_cronjob_pasted_without_the_kubernetes_wrapper_keeps_its_kind(tmp_path):
    """W&B's App takes a PyTorchJob as the whole queue config, without `kubernetes:`; any kind but a
    batch/v1 Job stays what it names."""
    seed = yaml.safe_load((SEEDS / "000_k8s_custom_resource_1.yaml").read_text())["kubernetes"]
    manifest = json.loads(_dry_run(seed).stdout)["submission"]
    assert (manifest["apiVersion"], manifest["kind"]) == ("kubeflow.org/v1", "PyTorchJob")
    assert set(manifest["spec"]["pytorchReplicaSpecs"]) == {"Master", "Worker"}
    cron = {"apiVersion": "batch/v1", "kind": "CronJob", "spec": {"schedule": "0 * * * *", "jobTemplate": {
        "spec": {"template": {"spec": {"restartPolicy": "Never", "containers": [{"image": "${image_uri}"}]}}}}}}
    manifest = json.loads(_dry_run(cron).stdout)["submission"]
    assert manifest["kind"] == "CronJob" and manifest["spec"]["schedule"] == "0 * * * *"
    (container,) = manifest["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "train.py", "--epochs", "2"]
    validate_strict(manifest, tmp_path)


def test_security_defaults_seed_is_what_the_renderer_injects():
    """Seed 000_k8s_job_2 is not YAML (Markdown backticks, stray commas); its values, cleaned, are ours."""
    text = (SEEDS / "000_k8s_job_2.yaml").read_text().replace("`", "").replace("False,", "false").replace("ALL,", "ALL")
    seed = yaml.safe_load(text)["spec"]["template"]
    assert seed["backOffLimit"] == 0 and seed["ttlSecondsAfterFinished"] == 60
    assert seed["securityContext"] == SECURITY


def test_kaniko_seed_renders_a_build_job_and_pull_secrets_thatvalidate_strict(tmp_path):
    from prefect_launch.agent_config import load_agent_config_text
    from prefect_launch.builders.base import BuildSettings
    from prefect_launch.builders.kaniko import render_build_job
    from prefect_launch.builders.plan import BuildPlan
    from prefect_launch.environments import AwsEnvironment
    from prefect_launch.kube import registry_secret
    from prefect_launch.spec import ResolvedJob
    from prefect_launch.targets.kubernetes import KubernetesTarget

    seed = (SEEDS / "001_launch_config_6.yaml").read_text()
    seed = seed.replace("<my-build-context-store>", "s3://builds/ctx").replace("<my-image-destination>", "reg.local/launch")
    settings = BuildSettings.from_agent_config(load_agent_config_text(seed, "001_launch_config_6.yaml"))
    settings = settings.model_copy(update={"secret_name": "aws-credentials", "secret_key": "credentials"})
    plan = BuildPlan(context=b"", dockerfile=".launch/Dockerfile", image="reg.local/launch:" + "a" * 32, generated=True)
    build = render_build_job(plan, "s3://builds/ctx/x.tar.gz", settings, "wandb", AwsEnvironment("us-east-1"), "login")
    (container,) = build["spec"]["template"]["spec"]["containers"]
    assert build["metadata"]["name"] == "wandb-image-build-aaaaaaaaaaaa"
    assert "--cache=false" in container["args"] and "--cache=true" not in container["args"]
    assert {"name": "MY_ENV_VAR", "value": "my-env-var-value"} in container["env"]
    assert {"name": "AWS_REGION", "value": "us-east-1"} in container["env"]
    assert {m["mountPath"] for m in container["volumeMounts"]} == {"/kaniko/.docker", "/root/.aws"}
    validate_strict(build, tmp_path)

    bad = settings.model_copy(update={"kaniko_config": {"spec": {"template": {"spec": {"containers": [{"args": ["--cache"]}]}}}}})
    with pytest.raises(LaunchError, match="must have the form --key=value"):
        render_build_job(plan, "s3://builds/ctx/x.tar.gz", bad, "wandb", None, None)

    job = ResolvedJob(run_id="k8srun1", run_name="r", project="p", argv=["python", "t.py"], image=plan.image,
                      pull_secret=True)
    config = KubernetesTarget.parse_config(yaml.safe_load((SEEDS / "000_k8s_job_1.yaml").read_text()), "000_k8s_job_1.yaml")
    manifest = KubernetesTarget().render(job, config)
    assert manifest["spec"]["template"]["spec"]["imagePullSecrets"] == [{"name": "prefect-launch-k8srun1-registry"}]
    validate_strict(manifest, tmp_path)
    validate_strict(registry_secret("prefect-launch-k8srun1-registry", "reg.local", {"username": "u", "password": "p"},
                              LABELS), tmp_path)
