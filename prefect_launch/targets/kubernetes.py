"""kubernetes: a Job, or any custom resource, per launch run.

The queue config is written as W&B writes it (`KubernetesConfig`): a Job spec
(`spec`, `metadata`, and `namespace` at the top level), or any other object
under `kubernetes:` with `kind`, `apiVersion`, `metadata` and `spec`, or
pasted whole with its `kind` as W&B's App takes it (Kubeflow `PyTorchJob`,
Volcano `Job`, any CRD, or a built-in kind such as a CronJob). A built-in kind
is checked field by field against the API's own schema (the client's models),
a custom resource's pod templates as pod templates, so a misspelt field is
refused naming its path before anything is sent. Rendering fills in every pod
template it finds (`spec.template` of a Job; every template of a custom resource):

- the image where a container has none (or `${image_uri}`, already resolved);
  every container's command is the entry point and its args;
- the W&B variables on every container (`WANDB_RUN_ID` on the first pod
  template's first container only, as W&B does), `WANDB_API_KEY` from the run's own
  Secret through `secretKeyRef` (never a plain value), and each secret the
  queue names under `secrets:` (`ENV_NAME: secret-name/key`, e.g. made with
  `kubectl create secret generic`) the same way;
- the seeds' security defaults, field by field where the queue config left
  them unset: `backoffLimit: 0`, `ttlSecondsAfterFinished: 60` (Jobs), and on
  every container, init container and ephemeral container
  `allowPrivilegeEscalation: false`, `capabilities.drop: [ALL]`,
  `seccompProfile.type: RuntimeDefault`;
- the run id as the label `prefect-launch/run-id` on the object and its pods.

A job's own resource args (the user's, not the admin's queue config) may set
anything but what widens a pod's access (`RestrictedPods`, the target's job
policy): privileged containers, privilege escalation, added capabilities, root
users, unconfined seccomp or AppArmor profiles, host namespaces, paths and
ports, Bidirectional mount propagation, sysctls, a chosen node, another service
account or its token, or another Secret; a queue config opts a field back in with
`job_may_set`.

An image the agent pushed to a registry that needs a login (ECR, Artifact
Registry, ACR, or a `docker login` of the agent's) is pulled with that login:
every pod template names the run's `<object name>-registry` Secret under
`imagePullSecrets`, and submit creates it (`kubernetes.io/dockerconfigjson`).

Submitting creates the run's Secrets (the agent's `WANDB_API_KEY`, when it has
one; the registry login) and the object; "already exists" attaches to it. The
monitor (`kubernetes_monitor.py`) watches the run's pods; cancelling deletes
the Job or custom resource; the Secrets are deleted when the run ends.

A finished Job is deleted with its pods `ttlSecondsAfterFinished` seconds after it
ended, whether or not an agent saw the end (its agent died, a watch was
relisting). A run whose object is gone is then settled from what is left, never
guessed: the Job controller's last event on it (`Completed`, or
`BackoffLimitExceeded` and the other failure reasons; events outlive the Job by an
hour), else the exit code its W&B run recorded, where the job's `WANDB_DIR` (set
in the queue config, e.g. on a volume the agent mounts at the same path) is a
folder the agent reads. With neither, the run ends Crashed saying so.

Example:
    >>> from prefect_launch.spec import ResolvedJob
    >>> job = ResolvedJob(run_id="r1", run_name="r1", project="p", argv=["python", "t.py"], image="img:1")
    >>> manifest = KubernetesTarget().render(job, KubernetesTarget.parse_config({"namespace": "wandb"}, "queue config"))
    >>> manifest["metadata"]["namespace"], manifest["spec"]["backoffLimit"]
    ('wandb', 0)
    >>> manifest["spec"]["template"]["spec"]["containers"][0]["command"]
    ['python', 't.py']
"""

from __future__ import annotations

import copy
import functools
import logging
import os
import threading
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
import re
from typing import Any, Callable, Iterator

from pydantic import Field, model_validator

from prefect_launch import kube
from prefect_launch.errors import AdoptionFailed, LaunchError
from prefect_launch.jobenv import wandb_env
from prefect_launch.spec import Resource, ResolvedJob
from prefect_launch.targets.base import Handle, Outcome, Progress, Target, TargetConfig
from prefect_launch.targets.kubernetes_monitor import RunPods
from prefect_launch.targets.kubernetes_watch import ATTEMPT_LABEL, RUN_ID_LABEL, WATCH_SECONDS, watch_pods
from prefect_launch.targets.policy import Refusal
from prefect_launch.targets.process import Log
from prefect_launch.targets.remote import unfilled
from prefect_launch.wandb_files import run_exit_code, run_files

DEFAULT_NAMESPACE = "default"
logger = logging.getLogger(__name__)

JOB_DEFAULTS = {"backoffLimit": 0, "ttlSecondsAfterFinished": 60}
CONTAINER_KINDS = ("containers", "initContainers", "ephemeralContainers")
# The Job controller's event reasons for a Job that has ended: completed, or failed for good.
# How long Kubernetes keeps events (the API server's --event-ttl is an hour by default), less a margin.
EVENTS_KEPT = timedelta(minutes=50)
JOB_COMPLETED_REASONS = {"Completed"}
JOB_FAILED_REASONS = {"BackoffLimitExceeded", "DeadlineExceeded", "PodFailurePolicy", "MaxFailedIndexesExceeded",
                      "FailedIndexes"}


def object_name(run_id: str) -> str:
    """The Job's (and the run Secret's) name: a DNS label of at most 63 characters."""
    return f"prefect-launch-{run_id}"[:63].rstrip("-")


def pull_secret_name(run_id: str) -> str:
    """The run's registry-login Secret (a Secret name may be longer than a Job's)."""
    return object_name(run_id) + "-registry"


def api_key_secret(run_id: str) -> dict[str, Any]:
    """The env entry that reads the W&B API key from the run's own Secret (created at submit when the agent has a key)."""
    return {
        "name": "WANDB_API_KEY",
        "valueFrom": {"secretKeyRef": {"name": object_name(run_id), "key": "WANDB_API_KEY", "optional": True}},
    }


def pod_templates(value: Any) -> Iterator[dict[str, Any]]:
    """Every pod template inside a manifest: each mapping whose `spec` holds a `containers` list."""
    return (template for _, template in kube.pod_templates_at(value, ""))


def secret_env(secrets: dict[str, str]) -> list[dict[str, Any]]:
    """The queue's `secrets:` (`ENV_NAME: secret-name/key`) as env entries that read each Secret by reference.

    >>> secret_env({"HF_TOKEN": "huggingface/token"})
    [{'name': 'HF_TOKEN', 'valueFrom': {'secretKeyRef': {'name': 'huggingface', 'key': 'token'}}}]
    """
    entries = []
    for variable, reference in secrets.items():
        name, _, key = reference.partition("/")
        entries.append({"name": variable, "valueFrom": {"secretKeyRef": {"name": name, "key": key}}})
    return entries


JOB_KEYS = ("apiVersion", "kind", "metadata", "spec")


class KubernetesConfig(TargetConfig):
    """A kubernetes queue config in any of W&B's forms, as one object to create.

    - a batch/v1 Job: `spec` and `metadata` (and `apiVersion`/`kind`) at the top level;
    - any other object (a custom resource, a CronJob) under `kubernetes:`, or pasted whole with its `kind`
      at the top level, as W&B's App takes it;
    - beside either: `namespace`, and `secrets` (`ENV_NAME: secret-name/key`).

    A built-in kind is checked against the API's own schema (the client's models), field by field; a custom
    resource's pod templates are checked as pod templates (its own schema lives in its CRD).
    """

    namespace: str | None = None
    secrets: dict[str, str] = Field(default_factory=dict)
    manifest: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _one_object(cls, args: dict[str, Any]) -> dict[str, Any]:
        args = dict(args)
        namespace, secrets = args.pop("namespace", None), args.pop("secrets", None) or {}
        if "kubernetes" in args:
            beside = sorted(set(args) - {"kubernetes"})
            if beside:
                raise ValueError(f"{', '.join(beside)}: a custom resource under `kubernetes:` has only namespace and "
                                 "secrets beside it; its own keys go inside it")
            manifest, where = args["kubernetes"], "kubernetes"
        elif args.get("kind") and not (args["kind"] == "Job" and args.get("apiVersion", "batch/v1") == "batch/v1"):
            manifest, where = args, ""
        else:
            unknown = sorted(set(args) - set(JOB_KEYS))
            if unknown:
                raise ValueError(
                    f"{', '.join(unknown)}: unknown key(s); a Job config has spec, metadata and namespace, a custom "
                    "resource sits under `kubernetes:` (or whole, with its kind)")
            manifest, where = {"apiVersion": "batch/v1", "kind": "Job", **args}, ""
            manifest["spec"] = manifest.get("spec") or {}
        problems = _manifest_problems(manifest, where) + _secret_problems(secrets)
        if problems:
            raise ValueError("; ".join(problems))
        return {"namespace": namespace, "secrets": secrets, "manifest": manifest}

    @property
    def is_job(self) -> bool:
        return (self.manifest.get("apiVersion"), self.manifest.get("kind")) == ("batch/v1", "Job")


def _manifest_problems(manifest: Any, where: str) -> list[str]:
    def at(key: str) -> str:
        return f"{where}.{key}" if where else key

    if not isinstance(manifest, dict):
        return [f"{where}: a mapping (apiVersion, kind, metadata, spec)"]
    missing = [at(key) for key in ("apiVersion", "kind", "spec") if not manifest.get(key) and manifest.get(key) != {}]
    if missing:
        return [f"{', '.join(missing)}: required for a {manifest.get('kind') or 'custom resource'}"]
    model = kube.builtin_model(str(manifest["apiVersion"]), str(manifest["kind"]))
    if model is not None:
        return kube.schema_problems(manifest, model, where)
    problems = kube.schema_problems(manifest.get("metadata"), "V1ObjectMeta", at("metadata"))
    for path, template in kube.pod_templates_at(manifest["spec"], at("spec")):
        problems += kube.schema_problems(template, "V1PodTemplateSpec", path)
    return problems


def _secret_problems(secrets: Any) -> list[str]:
    if not isinstance(secrets, dict):
        return ["secrets: map an environment variable to `secret-name/key`"]
    return [f"secrets.{variable}: {reference!r}; write `secret-name/key`" for variable, reference in secrets.items()
            if not isinstance(reference, str) or not all(reference.partition("/")[::2])]


def _fill_pod(pod: dict[str, Any], job: ResolvedJob, first: bool, secrets: list[dict[str, Any]]) -> None:
    if job.pull_secret:
        pulls = pod.setdefault("imagePullSecrets", [])
        if {"name": pull_secret_name(job.run_id)} not in pulls:
            pulls.append({"name": pull_secret_name(job.run_id)})
    env = [{"name": k, "value": v} for k, v in wandb_env(job).items()] + [api_key_secret(job.run_id), *secrets]
    ours = {entry["name"] for entry in env}
    for index, container in enumerate(pod["containers"]):
        if not isinstance(container, dict):
            raise LaunchError("kubernetes queue config: every entry of containers must be a mapping")
        container.setdefault("name", "launch" if index == 0 else f"launch-{index}")
        if unfilled(container.get("image")):
            container["image"] = job.image
        # As W&B's Kubernetes runner does: every container of every replica runs the entry point and
        # gets the W&B environment; only the first gets the run id, so the replicas do not all write
        # into one W&B run.
        if job.argv:
            container["command"] = list(job.argv)
            container.pop("args", None)
        own = [e for e in env if first and index == 0 or e["name"] != "WANDB_RUN_ID"]
        container["env"] = [e for e in container.get("env", []) if e.get("name") not in ours] + copy.deepcopy(own)
    for kind in CONTAINER_KINDS:
        for container in pod.get(kind) or []:
            restrict(container)


def restrict(container: dict[str, Any]) -> None:
    """The seeds' security defaults, field by field, where the config left each unset: no privilege
    escalation, every capability dropped, the runtime's default seccomp profile.

    >>> container = {"securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}, "runAsUser": 1000}}
    >>> restrict(container); container["securityContext"]  # doctest: +NORMALIZE_WHITESPACE
    {'capabilities': {'add': ['NET_BIND_SERVICE'], 'drop': ['ALL']}, 'runAsUser': 1000,
     'allowPrivilegeEscalation': False, 'seccompProfile': {'type': 'RuntimeDefault'}}
    """
    security = container.get("securityContext")
    if not isinstance(security, dict):
        security = container["securityContext"] = {}
    capabilities = security.get("capabilities")
    if not isinstance(capabilities, dict):
        capabilities = security["capabilities"] = {}
    capabilities.setdefault("drop", ["ALL"])
    security.setdefault("allowPrivilegeEscalation", False)
    security.setdefault("seccompProfile", {"type": "RuntimeDefault"})


def _truthy(value: Any) -> bool:
    return value is True or (isinstance(value, (int, float)) and not isinstance(value, bool) and value != 0) or (
        isinstance(value, str) and value.strip().lower() in ("1", "true", "yes"))


def _unconfined(profile: Any) -> bool:
    return isinstance(profile, dict) and str(profile.get("type", "")).lower() == "unconfined"


# key -> (refused when its value is..., why): every field that widens a pod's access to its node, the
# cluster's API or other Secrets. A key refused wherever it stands, so custom resources are covered too.
_WIDENING: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{key: (_truthy, "shares the node's namespaces") for key in
       ("hostNetwork", "hostPID", "hostIPC", "hostUsers", "shareProcessNamespace")},
    "privileged": (_truthy, "a privileged container"),
    "allowPrivilegeEscalation": (_truthy, "privilege escalation"),
    "procMount": (lambda value: str(value) == "Unmasked", "an unmasked /proc"),
    "hostProcess": (_truthy, "a host process"),
    "runAsUser": (lambda value: value == 0, "runs as root"),
    "runAsGroup": (lambda value: value == 0, "runs as root's group"),
    "runAsNonRoot": (lambda value: value is False, "may run as root"),
    "seccompProfile": (_unconfined, "an unconfined seccomp profile"),
    "appArmorProfile": (_unconfined, "an unconfined AppArmor profile"),
    "sysctls": (lambda value: bool(value), "kernel parameters"),
    "hostPath": (lambda value: value is not None, "a folder of the node"),
    "hostPort": (_truthy, "a port of the node"),
    "mountPropagation": (lambda value: str(value) == "Bidirectional", "mounts shared with the node"),
    "nodeName": (lambda value: bool(value), "a node chosen past the scheduler"),
    "serviceAccountName": (lambda value: bool(value), "another service account"),
    "serviceAccount": (lambda value: bool(value), "another service account"),
    "automountServiceAccountToken": (_truthy, "the service account's API token"),
    "serviceAccountToken": (lambda value: value is not None, "a service account token"),
    **{key: (lambda value: value is not None, "another Secret") for key in
       ("secrets", "secret", "secretKeyRef", "secretRef", "imagePullSecrets")},
}


class RestrictedPods:
    """The Kubernetes target's job policy: a job's own resource args may set anything but what `_WIDENING`
    names (and AppArmor or seccomp annotations that unconfine), and no capability beyond the defaults."""

    def refusals(self, own: dict[str, Any]) -> list[Refusal]:
        return list(self._walk(own, ""))

    def _walk(self, value: Any, path: str) -> Iterator[Refusal]:
        if isinstance(value, list):
            for index, item in enumerate(value):
                yield from self._walk(item, f"{path}[{index}]")
            return
        if not isinstance(value, dict):
            return
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            rule = _WIDENING.get(key)
            if rule is not None and rule[0](item):
                yield Refusal(key, where, rule[1])
            elif key == "capabilities" and isinstance(item, dict) and item.get("add"):
                yield Refusal("capabilities.add", f"{where}.add", "capabilities beyond the defaults")
            elif key == "annotations" and isinstance(item, dict):
                yield from (Refusal("annotations", f"{where}.{name}", "an unconfined profile")
                            for name, text in item.items()
                            if re.search("apparmor|seccomp", str(name), re.I) and "unconfined" in str(text).lower())
            else:
                yield from self._walk(item, where)


def _labelled(metadata: dict[str, Any], job: ResolvedJob) -> dict[str, Any]:
    labels = metadata.setdefault("labels", {})
    labels[RUN_ID_LABEL] = job.run_id
    labels[ATTEMPT_LABEL] = str(job.attempt)
    return metadata


class KubernetesTarget(Target):
    resource = Resource.kubernetes
    config_model = KubernetesConfig
    job_policy = RestrictedPods()
    adoptable = True
    pulls_with_login = True
    runs_remotely = True

    def render(self, job: ResolvedJob, config: KubernetesConfig) -> dict[str, Any]:
        if not job.image:
            raise LaunchError("kubernetes runs an image: this job has none (a code job needs a builder and a registry)")
        manifest = copy.deepcopy(config.manifest)
        metadata = _labelled(manifest.setdefault("metadata", {}), job)
        metadata.setdefault("name", object_name(job.run_id))
        metadata["namespace"] = config.namespace or metadata.get("namespace") or DEFAULT_NAMESPACE
        if config.is_job:
            spec = manifest["spec"]
            for key, value in JOB_DEFAULTS.items():
                spec.setdefault(key, value)
            pod = spec.setdefault("template", {}).setdefault("spec", {})
            pod.setdefault("restartPolicy", "Never")
            pod.setdefault("containers", [{}])
        templates = list(pod_templates(manifest.get("spec", {})))
        if not templates:
            raise LaunchError(f"kubernetes queue config: the {manifest.get('kind')} has no pod template with containers")
        secrets = secret_env(config.secrets)
        for index, template in enumerate(templates):
            # The label scopes the monitor's pod watch to this run, replicas included.
            _labelled(template.setdefault("metadata", {}), job)
            _fill_pod(template["spec"], job, first=index == 0, secrets=secrets)
        return manifest

    @functools.cached_property
    def _api(self):
        return kube.api_client(self.cluster)

    def submit(self, submission: dict[str, Any], log: Log) -> Handle:
        from kubernetes import client

        submitted = Submitted.of(submission, since=datetime.now(timezone.utc))
        for secret in self._run_secrets(submission, submitted):
            create_secret = functools.partial(client.CoreV1Api(self._api).create_namespaced_secret,
                                              submitted.namespace, secret)
            kube.create(create_secret, f"Secret {secret['metadata']['name']}", log)
        if submitted.is_batch_job:
            create = functools.partial(client.BatchV1Api(self._api).create_namespaced_job, submitted.namespace, submission)
        else:
            submitted.plural = self._plural(submitted)
            create = functools.partial(client.CustomObjectsApi(self._api).create_namespaced_custom_object,
                                       submitted.group, submitted.version, submitted.namespace, submitted.plural,
                                       submission)
        kube.create(create, f"{submitted.kind} {submitted.namespace}/{submitted.name}", log)
        return Handle(id=f"{submitted.namespace}/{submitted.name}", detail=submitted)

    def attach(self, submission: dict[str, Any], log: Log, since: datetime | None) -> Handle | None:
        from kubernetes.client.exceptions import ApiException

        submitted = Submitted.of(submission, since=since)
        if not submitted.is_batch_job:
            submitted.plural = self._plural(submitted)
        try:
            found = self._exists(submitted)
        except ApiException as exc:
            raise LaunchError(f"Kubernetes refused to read {submitted.kind} {submitted.name}: {kube.api_error(exc)}") from None
        if not found:
            self._delete_run_secrets(submitted, log)  # the dead agent may have made them before the object
            submitted.ended = self._ended_unseen(submitted, log)
            if submitted.ended is None:
                return None
            return Handle(id=f"{submitted.namespace}/{submitted.name}", detail=submitted, attached=True)
        log.info("Following %s %s/%s", submitted.kind, submitted.namespace, submitted.name)
        return Handle(id=f"{submitted.namespace}/{submitted.name}", detail=submitted, attached=True)

    def _run_secrets(self, submission: dict[str, Any], submitted: "Submitted") -> Iterator[dict[str, Any]]:
        """The run's own Secrets: the agent's W&B API key, and the registry login its pods pull with."""
        labels = {RUN_ID_LABEL: submitted.run_id}
        key = os.environ.get("WANDB_API_KEY")
        if key:
            yield {"metadata": {"name": object_name(submitted.run_id), "labels": labels},
                   "stringData": {"WANDB_API_KEY": key}}
        if submitted.pull_secret:
            yield self._registry_login(submission, submitted.run_id, labels)

    def _registry_login(self, submission: dict[str, Any], run_id: str, labels: dict[str, str]) -> dict[str, Any]:
        """The registry-login Secret for the first image in the run's pods that the agent's registry holds."""
        images = [c.get("image") or "" for t in pod_templates(submission.get("spec", {})) for c in t["spec"]["containers"]]
        for image in images:
            login = self.registry.pull_credentials(image) if self.registry else None
            if login:
                return kube.registry_secret(pull_secret_name(run_id), image.split("/", 1)[0], login, labels)
        raise LaunchError(f"no registry login to pull {', '.join(images)} with: the agent's registry has none for them")

    def _plural(self, submitted: "Submitted") -> str:
        """The resource's plural name from the cluster's API discovery; the English rule if discovery fails."""
        try:
            found = self._api.call_api(f"/apis/{submitted.group}/{submitted.version}", "GET",
                                       response_type="object", _return_http_data_only=True)
            for resource in found.get("resources", []):
                if resource.get("kind") == submitted.kind and "/" not in resource.get("name", ""):
                    return resource["name"]
        except Exception:  # a cluster that does not serve discovery for the group: derive the name
            pass
        return english_plural(submitted.kind)

    def wait(self, handle: Handle, cancel: threading.Event, log: Log, progress: Progress) -> Outcome:
        submitted: Submitted = handle.detail
        if submitted.ended is not None:  # gone when it was adopted; its end was read from what it left
            return submitted.ended
        try:
            return self._follow(submitted, cancel, log, progress)
        finally:
            self._delete_run_secrets(submitted, log)

    def _delete_run_secrets(self, submitted: "Submitted", log: Log) -> None:
        kube.delete_secret(self._api, submitted.namespace, object_name(submitted.run_id), log)
        if submitted.pull_secret:
            kube.delete_secret(self._api, submitted.namespace, pull_secret_name(submitted.run_id), log)

    def _follow(self, submitted: "Submitted", cancel: threading.Event, log: Log, progress: Progress) -> Outcome:
        from kubernetes import client

        core = client.CoreV1Api(self._api)
        pods = RunPods(progress)
        streams: dict[str, threading.Thread] = {}

        def on_running(pod: str) -> None:
            streams[pod] = kube.stream_logs(core, submitted.namespace, pod, log)

        with watch_pods(self._api, submitted.namespace, submitted.run_id, submitted.attempt) as pod_events:
            while True:
                if not pods.pods:  # at most once a round (WATCH_SECONDS), and only while no pod exists
                    object_events = self._object_events(core, submitted, log) or []
                    pods.see_object_warning(_latest_warning(object_events), log)
                    if not self._exists(submitted):  # its end went by unseen: removed after its TTL, or deleted
                        ended = self._ended_unseen(submitted, log, object_events)
                        if ended is None:
                            raise _gone(submitted)
                        return ended
                outcome = pods.outcome()
                if outcome is None and cancel.is_set():
                    self._delete(submitted, log)
                    outcome = Outcome(state="cancelled", message=f"{submitted.kind} {submitted.name} deleted")
                if outcome is not None and outcome.state == "preempted":
                    # Gone before the run goes back to its queue, so the next attempt creates a new object.
                    self._delete(submitted, log, wait=True)
                if outcome is not None:
                    for thread in streams.values():
                        thread.join(timeout=5)  # the last lines of a finished pod
                    return outcome
                for event_type, pod in pod_events.take(timeout=WATCH_SECONDS):
                    pods.see(event_type, pod, log, on_running)

    def _object_events(self, core: Any, submitted: "Submitted", log: Log) -> list[dict[str, Any]] | None:
        """The events on the run's object since the run started (an earlier attempt's object had the same
        name), oldest first; None if they cannot be read."""
        from kubernetes.client.exceptions import ApiException

        try:
            listing = self._api.sanitize_for_serialization(core.list_namespaced_event(
                submitted.namespace, field_selector=f"involvedObject.name={submitted.name}"))
        except ApiException as exc:  # a hint only: the pods still decide the run
            log.debug("Events of %s %s not readable: %s", submitted.kind, submitted.name, kube.api_error(exc))
            return None
        since = submitted.since.replace(microsecond=0) if submitted.since else None

        def this_objects(event: dict[str, Any]) -> bool:
            involved = event.get("involvedObject") or {}
            if involved.get("name") != submitted.name or involved.get("kind", submitted.kind) != submitted.kind:
                return False
            if submitted.uid and involved.get("uid"):
                return involved["uid"] == submitted.uid
            when = _event_time(event)  # the object is gone unseen: its time tells it from an earlier attempt's
            return since is None or when is None or when >= since

        events = [event for event in listing.get("items", []) if this_objects(event)]
        return sorted(events, key=lambda event: _event_time(event) or since or datetime.min.replace(tzinfo=timezone.utc))

    def _ended_unseen(self, submitted: "Submitted", log: Log, events: list[dict[str, Any]] | None = None) -> Outcome | None:
        """How a run whose object is gone ended, when no agent saw its pods end; None if nothing left says.

        A Job controller's last word on the Job (its events outlive it) decides; else the exit code the
        job's W&B run recorded, where its WANDB_DIR is a folder this agent reads.
        """
        from kubernetes import client

        if submitted.is_batch_job:
            if events is None:
                events = self._object_events(client.CoreV1Api(self._api), submitted, log) or []
            ended = [event for event in events if event.get("reason") in JOB_COMPLETED_REASONS | JOB_FAILED_REASONS]
            if ended:
                last = ended[-1]
                log.info("%s %s/%s is gone; its events say how it ended: %s: %s", submitted.kind, submitted.namespace,
                         submitted.name, last.get("reason"), last.get("message", ""))
                if last["reason"] in JOB_COMPLETED_REASONS:
                    return Outcome(state="completed")
                return Outcome(state="failed", message=f"{submitted.kind} {submitted.name} failed: {last['reason']}: "
                                                       f"{last.get('message', '')} (from its events; it was gone before its pods were read)")
        if submitted.wandb_dir and Path(submitted.wandb_dir).is_dir():
            code = run_exit_code(Path(submitted.wandb_dir), submitted.run_id, submitted.since)
            if code is not None:
                log.info("%s %s/%s is gone and no event says how it ended; its W&B run %s recorded exit code %d",
                         submitted.kind, submitted.namespace, submitted.name, submitted.run_id, code)
                return Outcome(state="completed", exit_code=0) if code == 0 else Outcome(
                    state="failed", exit_code=code, message=f"the job exited with code {code} (recorded by its W&B run "
                                                            f"{submitted.run_id}; its {submitted.kind} was gone before its pods were read)")
        return None

    def never_created(self, submission: dict[str, Any], since: datetime) -> bool:
        """A batch Job that is not found, and on which nothing was recorded since its run started, was never created.

        Its controller records each pod it creates at once (`SuccessfulCreate`), a Job cannot end (and go
        after its TTL) without a pod, and events outlive the Job for an hour (`--event-ttl`), so a run started
        within that hour whose Job left no event had its agent die before creating it. The job's W&B run
        folder, where this agent reads it, must hold nothing of the run either. A custom resource's
        controller may record nothing: it is never presumed uncreated.
        """
        from kubernetes import client

        submitted = Submitted.of(submission, since=since)
        if not submitted.is_batch_job:
            return False
        if datetime.now(timezone.utc) - since > EVENTS_KEPT:
            return False
        events = self._object_events(client.CoreV1Api(self._api), submitted, logger)
        if events is None or events:
            return False
        run_dir = Path(submitted.wandb_dir) if submitted.wandb_dir else None
        return not (run_dir and any(path.stat().st_mtime >= since.timestamp() for path in run_files(run_dir, submitted.run_id)))

    def _delete(self, submitted: "Submitted", log: Log, wait: bool = False) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        log.info("Deleting %s %s/%s", submitted.kind, submitted.namespace, submitted.name)
        try:
            if submitted.plural is None:
                client.BatchV1Api(self._api).delete_namespaced_job(
                    submitted.name, submitted.namespace, propagation_policy="Background")
            else:
                client.CustomObjectsApi(self._api).delete_namespaced_custom_object(
                    submitted.group, submitted.version, submitted.namespace, submitted.plural, submitted.name)
        except ApiException as exc:
            if exc.status != 404:
                raise LaunchError(f"Kubernetes refused to delete {submitted.kind} {submitted.name}: {kube.api_error(exc)}") from None
        deadline = time.monotonic() + 120
        while wait and self._exists(submitted):
            if time.monotonic() > deadline:
                raise LaunchError(f"{submitted.kind} {submitted.name} was not deleted within 120 s")
            time.sleep(1)

    def _exists(self, submitted: "Submitted") -> bool:
        """Whether the run's object exists; its uid is noted (its events name it)."""
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        try:
            if submitted.plural is None:
                found = client.BatchV1Api(self._api).read_namespaced_job(submitted.name, submitted.namespace)
            else:
                found = client.CustomObjectsApi(self._api).get_namespaced_custom_object(
                    submitted.group, submitted.version, submitted.namespace, submitted.plural, submitted.name)
        except ApiException as exc:
            if exc.status == 404:
                return False
            raise
        submitted.uid = (self._api.sanitize_for_serialization(found).get("metadata") or {}).get("uid") or submitted.uid
        return True


@dataclass
class Submitted:
    """The object a run created: enough to watch its pods, delete it, and settle it once it is gone."""

    kind: str
    group: str
    version: str
    namespace: str
    name: str
    run_id: str
    attempt: str
    pull_secret: bool = False  # its pods pull with the run's registry-login Secret
    plural: str | None = None  # None for a batch/v1 Job
    # The object was not created before this (events and W&B files older than it are an earlier attempt's).
    since: datetime | None = None
    # Its uid, once read: its events name it (an earlier attempt's object had the same name).
    uid: str | None = None
    # The job's W&B run folder when the queue config sets a plain WANDB_DIR on its first container.
    wandb_dir: str | None = None
    # How it ended, read when it was found gone at adoption.
    ended: Outcome | None = None

    @property
    def is_batch_job(self) -> bool:
        """A batch/v1 Job (else a custom resource)."""
        return self.kind == "Job" and self.group == "batch"

    @classmethod
    def of(cls, manifest: dict[str, Any], since: datetime | None) -> "Submitted":
        group, _, version = manifest["apiVersion"].rpartition("/")
        metadata = manifest["metadata"]
        run_id = metadata["labels"][RUN_ID_LABEL]
        templates = list(pod_templates(manifest.get("spec", {})))
        pulls = [ref for t in templates for ref in t["spec"].get("imagePullSecrets", [])]
        first = (templates[0]["spec"]["containers"] or [{}])[0] if templates else {}
        wandb_dir = next((entry.get("value") for entry in first.get("env", []) if entry.get("name") == "WANDB_DIR"), None)
        return cls(kind=manifest["kind"], group=group, version=version, namespace=metadata["namespace"],
                   name=metadata["name"], run_id=run_id, attempt=metadata["labels"][ATTEMPT_LABEL],
                   pull_secret={"name": pull_secret_name(run_id)} in pulls, since=since, wandb_dir=wandb_dir)


def _event_time(event: dict[str, Any]) -> datetime | None:
    stamp = event.get("eventTime") or event.get("lastTimestamp") or event.get("firstTimestamp")
    try:
        return datetime.fromisoformat(stamp) if stamp else None
    except ValueError:
        return None


def _latest_warning(events: list[dict[str, Any]]) -> str | None:
    """The newest Warning event, e.g. a Job's `FailedCreate: ... exceeded quota`."""
    warnings = [event for event in events if event.get("type") == "Warning"]
    return f"{warnings[-1].get('reason')}: {warnings[-1].get('message', '')}".rstrip(": ") if warnings else None


def _gone(submitted: Submitted) -> AdoptionFailed:
    return AdoptionFailed(
        f"{submitted.kind} {submitted.namespace}/{submitted.name} is gone (deleted, or removed after its "
        "ttlSecondsAfterFinished) and neither its events nor its W&B run show how it ended: not submitted again"
    )


def english_plural(kind: str) -> str:
    """A kind's resource name by Kubernetes' own rule (`PyTorchJob` -> `pytorchjobs`, `Policy` -> `policies`).

    >>> [english_plural(k) for k in ("PyTorchJob", "Policy", "Ingress", "Gateway")]
    ['pytorchjobs', 'policies', 'ingresses', 'gateways']
    """
    lower = kind.lower()
    if lower.endswith("y") and lower[-2:-1] not in "aeiou":
        return lower[:-1] + "ies"
    if lower.endswith(("s", "x", "z", "ch", "sh")):
        return lower + "es"
    return lower + "s"

