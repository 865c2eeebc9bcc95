"""The kaniko builder: builds and pushes in the cluster, with no Docker daemon and no privileged pod.

A build goes:

1. the plan's context, gzipped, to `builder.build-context-store` under the
   image tag (`context_store.py`);
2. the registry login to a `kubernetes.io/dockerconfigjson` Secret, mounted
   at `/kaniko/.docker/config.json`;
3. a Kaniko Job named `<build-job-name>-<tag>`, so agents building the same
   source attach to one build instead of starting two. `builder.kaniko-config`
   (a Job spec, as in W&B) is merged over the defaults: its first container's
   `args` replace the default of the same `--key` (each must be `key=value`),
   its `env` entries replace by name, anything else merges in. The Job has a
   deadline (`PREFECT_LAUNCH_BUILD_TIMEOUT`, default 3600 s);
4. its pod's log into the build task's log while it runs; the Job and the
   Secret are deleted when it ends, built or not.

`secret-name` / `secret-key` (as in W&B) name a Secret holding cloud
credentials for Kaniko itself: an AWS credentials file (mounted at
`/root/.aws/credentials`) or a GCP service-account key
(`GOOGLE_APPLICATION_CREDENTIALS`). On Azure, Kaniko reads the context with
`AZURE_STORAGE_ACCESS_KEY` from the `azure-storage-access-key` Secret the Helm
chart makes from `azureStorageAccessKey`.

Example, the Job for a plan (pure, no cluster)::

    >>> from prefect_launch.builders.base import BuildSettings
    >>> from prefect_launch.builders.plan import BuildPlan
    >>> plan = BuildPlan(context=b"", dockerfile=".launch/Dockerfile", image="reg:5000/launch:3f2a9c", generated=True)
    >>> settings = BuildSettings(builder="kaniko", destination="reg:5000/launch", build_job_name="wandb-image-build",
    ...                          kaniko_config={"spec": {"template": {"spec": {"containers": [{"args": ["--cache=false"]}]}}}})
    >>> from prefect_launch.environments import AwsEnvironment
    >>> job = render_build_job(plan, "s3://b/3f2a9c.tar.gz", settings, "wandb", AwsEnvironment("us-east-1"), "login")
    >>> job["metadata"]["name"], job["spec"]["template"]["spec"]["containers"][0]["args"][:4]
    ('wandb-image-build-3f2a9c', ['--context=s3://b/3f2a9c.tar.gz', '--dockerfile=.launch/Dockerfile', '--destination=reg:5000/launch:3f2a9c', '--cache=false'])
"""

from __future__ import annotations

import copy
import functools
import threading
import time
from typing import Any

from prefect_launch import kube
from prefect_launch.builders import context_store
from prefect_launch.builders.base import Builder, BuildLog, BuildSettings, Log
from prefect_launch.builders.plan import BuildPlan
from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment, Registry
from prefect_launch.settings import settings as launch_settings

KANIKO_IMAGE = "gcr.io/kaniko-project/executor:v1.23.2"
DEFAULT_JOB_NAME = "prefect-launch-build"
BUILD_LABEL = "prefect-launch/build"
POLL_SECONDS = 2
# Where Kaniko finds cloud credentials mounted from `secret-name`/`secret-key`: (folder, file, env).
_CLOUD_CREDENTIALS = {
    "aws": ("/root/.aws", "credentials", None),
    "gcp": ("/kaniko/.gcp", "credentials.json", "GOOGLE_APPLICATION_CREDENTIALS"),
}


def build_job_name(settings: BuildSettings, tag: str) -> str:
    return f"{settings.build_job_name or DEFAULT_JOB_NAME}-{tag[:12]}"[:63].rstrip("-")


def _arg_key(arg: Any) -> str:
    if not isinstance(arg, str) or not arg.startswith("--") or "=" not in arg:
        raise LaunchError(f"builder.kaniko-config: Kaniko argument {arg!r} must have the form --key=value")
    return arg.split("=", 1)[0]


def render_build_job(
    plan: BuildPlan,
    context: str,
    settings: BuildSettings,
    namespace: str,
    environment: Environment | None,
    registry_login: str | None,
) -> dict[str, Any]:
    """The Kaniko Job for a plan whose context is stored at `context`; pure.

    `environment` gives the cloud and region (read, never called); `registry_login`
    is the name of the dockerconfigjson Secret to push with, if any.
    """
    from prefect_launch.spec import deep_merge

    repository = plan.image.rsplit(":", 1)[0]
    defaults = [f"--context={context}", f"--dockerfile={plan.dockerfile}", f"--destination={plan.image}",
                "--cache=true", f"--cache-repo={repository}/cache", "--snapshot-mode=redo",
                "--compressed-caching=false"]
    config = copy.deepcopy(settings.kaniko_config or {})
    containers = (((config.get("spec") or {}).get("template") or {}).get("spec") or {}).pop("containers", None) or [{}]
    own = copy.deepcopy(containers[0])
    args = {_arg_key(arg): arg for arg in defaults}
    args.update({_arg_key(arg): arg for arg in own.pop("args", None) or []})
    cloud = environment.type if environment else None
    env: dict[str, dict[str, Any]] = {}
    if cloud == "aws":  # Kaniko reads an s3:// context with the AWS SDK, which needs the bucket's region
        env["AWS_REGION"] = {"name": "AWS_REGION", "value": environment.region}
    volumes: list[dict[str, Any]] = []
    mounts: list[dict[str, Any]] = []
    if registry_login:
        volumes.append({"name": "registry-login", "secret": {"secretName": registry_login,
                                                             "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}})
        mounts.append({"name": "registry-login", "mountPath": "/kaniko/.docker"})
    if settings.secret_name and settings.secret_key and cloud in _CLOUD_CREDENTIALS:
        folder, file, variable = _CLOUD_CREDENTIALS[cloud]
        volumes.append({"name": "cloud-credentials", "secret": {"secretName": settings.secret_name,
                                                                "items": [{"key": settings.secret_key, "path": file}]}})
        mounts.append({"name": "cloud-credentials", "mountPath": folder})
        if variable:
            env[variable] = {"name": variable, "value": f"{folder}/{file}"}
    if cloud == "azure":
        env["AZURE_STORAGE_ACCESS_KEY"] = {"name": "AZURE_STORAGE_ACCESS_KEY", "valueFrom": {
            "secretKeyRef": {"name": "azure-storage-access-key", "key": "password"}}}
    env.update({entry["name"]: entry for entry in own.pop("env", None) or []})
    container = deep_merge({"name": "kaniko", "image": settings.kaniko_image or KANIKO_IMAGE}, own)
    container.update(args=list(args.values()), env=list(env.values()),
                     volumeMounts=mounts + list(container.get("volumeMounts") or []))
    labels = {BUILD_LABEL: plan.tag}
    job = {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": build_job_name(settings, plan.tag), "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 60,
            "activeDeadlineSeconds": launch_settings().build_timeout,
            "template": {
                "metadata": {"labels": labels},
                "spec": {"restartPolicy": "Never", "containers": [container], "volumes": volumes},
            },
        },
    }
    merged = deep_merge(job, config)
    pod = merged["spec"]["template"]["spec"]
    pod["volumes"] = volumes + [v for v in pod["volumes"] if v not in volumes]
    pod["containers"] = [container] + containers[1:]
    return merged


class KanikoBuilder(Builder):
    name = "kaniko"
    pushes = True

    def __init__(self, settings: BuildSettings, registry: Registry, environment: Environment | None) -> None:
        if not settings.destination:  # the agent's registry is then the local engine's store
            raise LaunchError("the kaniko builder pushes its images to a registry: set builder.destination")
        self.settings = settings
        self.registry = registry
        self.environment = environment
        self.store = context_store.check_store(settings.build_context_store, environment)

    @functools.cached_property
    def _api(self):
        return kube.api_client(self.settings.cluster)

    def build(self, plan: BuildPlan, log: Log, cancel: threading.Event | None = None) -> None:
        # `cancel` is not watched: the launch flow checks it before its job is submitted.
        from kubernetes import client

        namespace = kube.agent_namespace()
        context = context_store.upload(self.store, plan.tag, plan.context, self.environment)
        log.info("Build context (%d kB) stored at %s", len(plan.context) // 1024, context)
        name = build_job_name(self.settings, plan.tag)
        core, batch = client.CoreV1Api(self._api), client.BatchV1Api(self._api)
        login = self.registry.pull_credentials(plan.image)
        secret = f"{name}-registry" if login else None
        if secret:
            body = kube.registry_secret(secret, plan.image.split("/", 1)[0], login, {BUILD_LABEL: plan.tag})
            kube.create(functools.partial(core.create_namespaced_secret, namespace, body), f"Secret {secret}", log)
        manifest = render_build_job(plan, context, self.settings, namespace, self.environment, secret)
        try:
            kube.create(functools.partial(batch.create_namespaced_job, namespace, manifest),
                        f"Kaniko build Job {namespace}/{name}", log)
            self._wait(namespace, name, plan.tag, log)
        finally:
            self._delete(batch, namespace, name, log)
            if secret:
                kube.delete_secret(self._api, namespace, secret, log)

    def _wait(self, namespace: str, name: str, tag: str, log: Log) -> None:
        """Follow the build Job to its end, its pod's log into `log`; raise LaunchError if it fails."""
        from kubernetes import client

        core, batch = client.CoreV1Api(self._api), client.BatchV1Api(self._api)
        build_log = BuildLog(log)
        streams: dict[str, threading.Thread] = {}
        reasons: dict[str, str] = {}
        timeout = launch_settings().build_timeout
        deadline = time.monotonic() + timeout + 60
        while True:
            status = self._api.sanitize_for_serialization(batch.read_namespaced_job_status(name, namespace)).get("status") or {}
            pods = self._api.sanitize_for_serialization(
                core.list_namespaced_pod(namespace, label_selector=f"{BUILD_LABEL}={tag}")).get("items", [])
            for pod in pods:
                pod_name, phase = pod["metadata"]["name"], (pod.get("status") or {}).get("phase")
                reason = kube.pending_reason(pod)
                if reason and reasons.get(pod_name) != reason:
                    reasons[pod_name] = reason
                    log.info("Build pod %s waits: %s", pod_name, reason)
                if phase in ("Running", "Succeeded", "Failed") and pod_name not in streams:
                    streams[pod_name] = kube.stream_logs(core, namespace, pod_name, build_log)
            failed = next((c for c in status.get("conditions") or [] if c.get("type") == "Failed" and c.get("status") == "True"), None)
            if status.get("succeeded") or status.get("failed") or failed:
                for thread in streams.values():
                    thread.join(timeout=10)
                if status.get("succeeded"):
                    log.info("Kaniko built and pushed the image")
                    return
                why = f"{failed.get('reason')}: {failed.get('message')}" if failed else "its pod failed"
                raise build_log.failure(f"Kaniko Job {namespace}/{name}: {why}")
            if time.monotonic() > deadline:
                raise LaunchError(f"image build failed: Kaniko Job {namespace}/{name} did not finish "
                                  f"within {timeout} s")
            time.sleep(POLL_SECONDS)

    def _delete(self, batch, namespace: str, name: str, log: Log) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
            log.info("Deleted the Kaniko build Job %s", name)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("Could not delete the Kaniko build Job %s: %s", name, kube.api_error(exc))

