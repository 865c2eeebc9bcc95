"""What the in-cluster builders share (kaniko, BuildKit): a build as a Kubernetes Job, no Docker daemon.

A build goes:

1. the plan's context, gzipped, to `builder.build-context-store` under the
   image tag (`context_store.py`);
2. the registry login to a `kubernetes.io/dockerconfigjson` Secret, which the
   build pod mounts to push with;
3. a build Job named `<build-job-name>-<tag>`, so agents building the same
   source attach to one build instead of starting two, with a deadline
   (`PREFECT_LAUNCH_BUILD_TIMEOUT`, default 3600 s); each builder renders its own
   (`ClusterBuilder.render_job`, pure);
4. its pod's log into the build task's log while it runs; the Job and the
   Secret are deleted when it ends, built or not.

Skipping a build whose tag the registry already holds happens before, in the
build task, as for every builder.
"""

from __future__ import annotations

import abc
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

DEFAULT_JOB_NAME = "prefect-launch-build"
BUILD_LABEL = "prefect-launch/build"
POLL_SECONDS = 2


def build_job_name(settings: BuildSettings, tag: str) -> str:
    return f"{settings.build_job_name or DEFAULT_JOB_NAME}-{tag[:12]}"[:63].rstrip("-")


def build_job(name: str, namespace: str, tag: str, pod: dict[str, Any]) -> dict[str, Any]:
    """The Job around a build pod spec: labelled with the tag, no retry, the build deadline, gone a minute after."""
    labels = {BUILD_LABEL: tag}
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace, "labels": labels},
        "spec": {
            "backoffLimit": 0,
            "ttlSecondsAfterFinished": 60,
            "activeDeadlineSeconds": launch_settings().build_timeout,
            "template": {"metadata": {"labels": labels}, "spec": {"restartPolicy": "Never", **pod}},
        },
    }


def registry_login_volume(secret: str, folder: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """(volume, mount) putting a dockerconfigjson Secret at `<folder>/config.json`, where the builder reads logins."""
    volume = {"name": "registry-login", "secret": {"secretName": secret,
                                                   "items": [{"key": ".dockerconfigjson", "path": "config.json"}]}}
    return volume, {"name": "registry-login", "mountPath": folder}


class ClusterBuilder(Builder):
    """A builder that runs each build as a Kubernetes Job and pushes the image itself."""

    pushes = True
    # Shown in log lines and errors: "Kaniko", "BuildKit".
    title: str

    def __init__(self, settings: BuildSettings, registry: Registry, environment: Environment | None) -> None:
        if not settings.destination:  # the agent's registry is then the local engine's store
            raise LaunchError(f"the {self.name} builder pushes its images to a registry: set builder.destination")
        self.settings = settings
        self.registry = registry
        self.environment = environment
        self.store = context_store.check_store(settings.build_context_store, environment)

    @abc.abstractmethod
    def render_job(self, plan: BuildPlan, context: str, namespace: str, registry_login: str | None) -> dict[str, Any]:
        """The build Job for a plan whose context is stored at `context` (a store URL); pure.

        `registry_login` is the name of the dockerconfigjson Secret to push with, if any.
        """

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
        manifest = self.render_job(plan, context, namespace, secret)
        try:
            kube.create(functools.partial(batch.create_namespaced_job, namespace, manifest),
                        f"{self.title} build Job {namespace}/{name}", log)
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
                    log.info("%s built and pushed the image", self.title)
                    return
                why = f"{failed.get('reason')}: {failed.get('message')}" if failed else "its pod failed"
                raise build_log.failure(f"{self.title} Job {namespace}/{name}: {why}")
            if time.monotonic() > deadline:
                raise LaunchError(f"image build failed: {self.title} Job {namespace}/{name} did not finish "
                                  f"within {timeout} s")
            time.sleep(POLL_SECONDS)

    def _delete(self, batch, namespace: str, name: str, log: Log) -> None:
        from kubernetes.client.exceptions import ApiException

        try:
            batch.delete_namespaced_job(name, namespace, propagation_policy="Background")
            log.info("Deleted the %s build Job %s", self.title, name)
        except ApiException as exc:
            if exc.status != 404:
                log.warning("Could not delete the %s build Job %s: %s", self.title, name, kube.api_error(exc))
