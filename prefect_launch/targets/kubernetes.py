"""kubernetes: a Job, or any custom resource, per launch run.

The queue config is written as W&B writes it: a Job spec (`spec`, `metadata`,
and `namespace` at the top level), or a custom resource under `kubernetes:`
with `kind`, `apiVersion`, `metadata` and `spec` (Kubeflow `PyTorchJob`,
Volcano `Job`, any CRD). Rendering fills in every pod template it finds
(`spec.template` of a Job; every dict holding `containers` in a custom
resource):

- the image where a container has none (or `${image_uri}`, already resolved);
  the first container's command is the entry point and its args;
- the W&B variables on every container, and `WANDB_API_KEY` from the run's own
  Secret through `secretKeyRef` (never a plain value);
- the seeds' security defaults, only where absent: `backoffLimit: 0`,
  `ttlSecondsAfterFinished: 60` (Jobs), and on every container
  `allowPrivilegeEscalation: false`, `capabilities.drop: [ALL]`,
  `seccompProfile.type: RuntimeDefault`;
- the run id as the label `prefect-launch/run-id` on the object and its pods.

A job's own resource args (the user's, not the admin's queue config) may not
ask for privileged containers, host namespaces, host ports, hostPath volumes
or another service account: `check_overrides` refuses them.

Submitting to a cluster is not available yet: `--dry-run` shows the manifest.

Example:
    >>> from prefect_launch.spec import ResolvedJob
    >>> job = ResolvedJob(run_id="r1", run_name="r1", project="p", argv=["python", "t.py"], image="img:1")
    >>> manifest = KubernetesTarget().render(job, {"namespace": "wandb"})
    >>> manifest["metadata"]["namespace"], manifest["spec"]["backoffLimit"]
    ('wandb', 0)
    >>> manifest["spec"]["template"]["spec"]["containers"][0]["command"]
    ['python', 't.py']
"""

from __future__ import annotations

import copy
import threading
from typing import Any, Iterator

from prefect_launch.errors import LaunchError
from prefect_launch.jobenv import wandb_env
from prefect_launch.spec import LAUNCH_KEYS, Resource, ResolvedJob
from prefect_launch.targets.base import Handle, Outcome, Target
from prefect_launch.targets.process import Log
from prefect_launch.targets.remote import unfilled

RUN_ID_LABEL = "prefect-launch/run-id"
DEFAULT_NAMESPACE = "default"
JOB_DEFAULTS = {"backoffLimit": 0, "ttlSecondsAfterFinished": 60}
CONTAINER_SECURITY = {
    "allowPrivilegeEscalation": False,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
_POD_HOST_KEYS = ("hostNetwork", "hostPID", "hostIPC")


def object_name(run_id: str) -> str:
    """The Job's (and the run Secret's) name: a DNS label of at most 63 characters."""
    return f"prefect-launch-{run_id}"[:63].rstrip("-")


def api_key_secret(run_id: str) -> dict[str, Any]:
    """The env entry that reads the W&B API key from the run's own Secret (created at submit when the agent has a key)."""
    return {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": object_name(run_id), "key": "WANDB_API_KEY", "optional": True}},
    }


def pod_specs(value: Any) -> Iterator[dict[str, Any]]:
    """Every pod spec inside a manifest: each mapping that holds a `containers` list."""
    if isinstance(value, dict):
        if isinstance(value.get("containers"), list):
            yield value
        for item in value.values():
            yield from pod_specs(item)
    elif isinstance(value, list):
        for item in value:
            yield from pod_specs(item)


def _fill_pod(pod: dict[str, Any], job: ResolvedJob, first: bool) -> None:
    env = [{"name": k, "value": v} for k, v in wandb_env(job).items()] + [api_key_secret(job.run_id)]
    ours = {entry["name"] for entry in env}
    for index, container in enumerate(pod["containers"]):
        if not isinstance(container, dict):
            raise LaunchError("kubernetes queue config: every entry of containers must be a mapping")
        container.setdefault("name", "launch" if index == 0 else f"launch-{index}")
        if unfilled(container.get("image")):
            container["image"] = job.image
        if first and index == 0 and job.argv:
            container["command"] = list(job.argv)
            container.pop("args", None)
        container["env"] = [e for e in container.get("env", []) if e.get("name") not in ours] + copy.deepcopy(env)
        security = container.setdefault("securityContext", {})
        for key, value in CONTAINER_SECURITY.items():
            security.setdefault(key, copy.deepcopy(value))


def _privileged(value: Any, where: str) -> Iterator[tuple[str, str]]:
    """(path, what) for every setting that widens a pod's access to its node or the cluster."""
    if isinstance(value, list):
        for index, item in enumerate(value):
            yield from _privileged(item, f"{where}[{index}]")
        return
    if not isinstance(value, dict):
        return
    for key, item in value.items():
        path = f"{where}.{key}"
        if key in _POD_HOST_KEYS and item:
            yield path, f"{key}: true"
        elif key in ("privileged", "allowPrivilegeEscalation") and item:
            yield path, f"{key}: true"
        elif key in ("serviceAccountName", "serviceAccount"):
            yield path, "another service account"
        elif key in ("hostPath", "hostPort"):
            yield path, key
        else:
            yield from _privileged(item, path)


def _labelled(metadata: dict[str, Any], run_id: str) -> dict[str, Any]:
    metadata.setdefault("labels", {})[RUN_ID_LABEL] = run_id
    return metadata


class KubernetesTarget(Target):
    resource = Resource.kubernetes

    def check_overrides(self, overrides: dict[str, Any]) -> None:
        refused = [f"{what} at {where}" for where, what in _privileged(overrides, "resource_args")]
        if refused:
            raise LaunchError(
                "a job's own resource args may not ask for " + "; ".join(refused)
                + " on a kubernetes queue: only the queue's config (its admin) can"
            )

    def render(self, job: ResolvedJob, resource_args: dict[str, Any]) -> dict[str, Any]:
        if not job.image:
            raise LaunchError("kubernetes runs an image: this job has none (a code job needs a builder and a registry)")
        args = {k: copy.deepcopy(v) for k, v in resource_args.items() if k not in LAUNCH_KEYS}
        if isinstance(args.get("kubernetes"), dict) and "kind" in args["kubernetes"]:
            manifest = self._custom_resource(job, args)
        else:
            manifest = self._job(job, args)
        pods = list(pod_specs(manifest.get("spec", {})))
        if not pods:
            raise LaunchError(f"kubernetes queue config: the {manifest.get('kind')} has no pod template with containers")
        for index, pod in enumerate(pods):
            _fill_pod(pod, job, first=index == 0)
        return manifest

    def _job(self, job: ResolvedJob, args: dict[str, Any]) -> dict[str, Any]:
        unknown = set(args) - {"spec", "metadata", "namespace", "apiVersion", "kind"}
        if unknown:
            raise LaunchError(
                f"kubernetes queue config: unknown key(s) {', '.join(sorted(unknown))}; a Job config has spec, "
                "metadata and namespace, a custom resource sits under `kubernetes:` with a kind"
            )
        metadata = _labelled(args.get("metadata") or {}, job.run_id)
        metadata.setdefault("name", object_name(job.run_id))
        metadata["namespace"] = args.get("namespace") or metadata.get("namespace") or DEFAULT_NAMESPACE
        spec = args.get("spec") or {}
        for key, value in JOB_DEFAULTS.items():
            spec.setdefault(key, value)
        template = spec.setdefault("template", {})
        _labelled(template.setdefault("metadata", {}), job.run_id)
        pod = template.setdefault("spec", {})
        pod.setdefault("restartPolicy", "Never")
        pod.setdefault("containers", [{}])
        return {"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}

    def _custom_resource(self, job: ResolvedJob, args: dict[str, Any]) -> dict[str, Any]:
        resource = args["kubernetes"]
        missing = [key for key in ("apiVersion", "kind", "spec") if not resource.get(key)]
        if missing:
            raise LaunchError(f"kubernetes queue config: the custom resource needs {', '.join(missing)}")
        metadata = _labelled(resource.setdefault("metadata", {}), job.run_id)
        metadata.setdefault("name", object_name(job.run_id))
        metadata["namespace"] = args.get("namespace") or metadata.get("namespace") or DEFAULT_NAMESPACE
        return resource

    def submit(self, submission: dict[str, Any], log: Log) -> Handle:
        raise LaunchError("submitting to a Kubernetes cluster is not available yet; --dry-run shows the manifest")

    def wait(self, handle: Handle, cancel: threading.Event, log: Log) -> Outcome:
        raise LaunchError("following a Kubernetes job is not available yet")
