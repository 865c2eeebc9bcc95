"""The Kubernetes API as the kubernetes target and the Kaniko builder both use it.

- `api_client(cluster)`: the cluster a prefect-kubernetes block holds, else in-cluster when the
  agent runs in a pod, else its kubeconfig;
- `create(...)`: idempotent creation, "already exists" (409) means attach;
- `pending_reason(pod)`: why a pod is not running yet, in Kubernetes' words;
- `stream_logs(...)`: a pod's log followed into a log, on a thread of its own;
- `registry_secret(...)`: a `kubernetes.io/dockerconfigjson` Secret holding a
  registry login, for `imagePullSecrets` and for Kaniko's push;
- `api_error(...)`: the API server's own message for a refusal;
- `schema_problems(...)`: the fields of an object the API's own schema (the
  client's models) does not have, by path, before anything is sent.

Example:
    >>> secret = registry_secret("run-1-registry", "127.0.0.1:5000", {"username": "u", "password": "p"}, {})
    >>> secret["type"], sorted(secret["stringData"])
    ('kubernetes.io/dockerconfigjson', ['.dockerconfigjson'])

What a waiting pod says::

    >>> pending_reason({"status": {"phase": "Pending", "conditions": [{"type": "PodScheduled",
    ...     "status": "False", "reason": "Unschedulable", "message": "0/3 nodes have 8 GPUs"}]}})
    'Unschedulable: 0/3 nodes have 8 GPUs'
"""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from pathlib import Path
import re
from typing import Any, Callable, Iterator

from prefect_launch.errors import LaunchError

Log = logging.Logger | logging.LoggerAdapter

# The namespace of the pod the agent runs in (Kubernetes mounts it into every pod).
POD_NAMESPACE_FILE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


# The prefect-kubernetes blocks an agent config may name for cluster access (`kubernetes.cluster`).
CLUSTER_BLOCKS = ("kubernetes-cluster-config", "kubernetes-credentials")


def api_client(cluster: str | None = None):
    """An API client for the agent's cluster: the cluster a Prefect block holds (`cluster`), else in-cluster
    when the agent runs in a pod, else its kubeconfig.

    `cluster` names a prefect-kubernetes block as `kubernetes-cluster-config/NAME` (a
    `KubernetesClusterConfig`: a kubeconfig and the context to use) or `kubernetes-credentials/NAME` (a
    `KubernetesCredentials` holding one), as AWS and GCP credentials come from their blocks.
    """
    from kubernetes import client, config

    try:
        if cluster:
            kubeconfig, context = cluster_config(cluster)
            return config.new_client_from_config_dict(kubeconfig, context=context)
        if os.environ.get("KUBERNETES_SERVICE_HOST"):
            configuration = client.Configuration()
            config.load_incluster_config(client_configuration=configuration)
            return client.ApiClient(configuration)
        return config.new_client_from_config()
    except config.ConfigException as exc:
        where = f"the cluster of block {cluster}" if cluster else "no cluster to submit to"
        raise LaunchError(f"kubernetes: {where} ({exc}); set kubernetes.cluster in the agent config, KUBECONFIG, "
                          "or run the agent in a pod") from None


def cluster_config(cluster: str) -> tuple[dict[str, Any], str]:
    """(kubeconfig, context) of a prefect-kubernetes block named `<block type slug>/<name>`."""
    slug, _, name = cluster.partition("/")
    if slug not in CLUSTER_BLOCKS or not name:
        raise LaunchError(f"kubernetes.cluster {cluster!r}: name a block as {' or '.join(s + '/NAME' for s in CLUSTER_BLOCKS)}")
    from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

    try:
        block = (KubernetesClusterConfig if slug == CLUSTER_BLOCKS[0] else KubernetesCredentials).load(name, _sync=True)
    except ValueError as exc:
        raise LaunchError(f"kubernetes.cluster {cluster!r}: block not found ({exc})") from None
    cluster_block = block if isinstance(block, KubernetesClusterConfig) else block.cluster_config
    if cluster_block is None:
        raise LaunchError(f"kubernetes.cluster {cluster!r}: the credentials block holds no cluster config")
    return cluster_block.config, cluster_block.context_name


def agent_namespace(default: str = "wandb") -> str:
    """The namespace the agent's pod runs in (the Helm chart's `namespace`), else `default`."""
    try:
        return POD_NAMESPACE_FILE.read_text().strip() or default
    except OSError:
        return default


def create(create_call: Callable[[], Any], what: str, log: Log) -> bool:
    """Create an object; True if created, False if it already existed (submitting is idempotent)."""
    from kubernetes.client.exceptions import ApiException

    try:
        create_call()
        log.info("Created %s", what)
        return True
    except ApiException as exc:
        if exc.status == 409:
            log.info("%s already exists: following it", what)
            return False
        raise LaunchError(f"Kubernetes refused {what}: {api_error(exc)}") from None


def delete_secret(api, namespace: str, name: str, log: Log) -> None:
    """Delete a Secret the agent made; one already gone is fine, any other refusal is logged."""
    from kubernetes import client
    from kubernetes.client.exceptions import ApiException

    try:
        client.CoreV1Api(api).delete_namespaced_secret(name, namespace)
        log.info("Deleted the Secret %s", name)
    except ApiException as exc:
        if exc.status != 404:
            log.warning("Could not delete the Secret %s: %s", name, api_error(exc))


def pending_reason(pod: dict[str, Any]) -> str | None:
    """Why a pod is not running yet, in Kubernetes' own words; None when nothing holds it."""
    status = pod.get("status") or {}
    for condition in status.get("conditions") or []:
        if condition.get("type") == "PodScheduled" and condition.get("status") == "False":
            return f"{condition.get('reason')}: {condition.get('message', '')}".rstrip(": ")
    for container in status.get("containerStatuses") or []:
        waiting = (container.get("state") or {}).get("waiting")
        if waiting and waiting.get("reason") not in (None, "ContainerCreating", "PodInitializing"):
            return f"{waiting['reason']}: {waiting.get('message', '')}".rstrip(": ")
    return None


def stream_logs(core: Any, namespace: str, pod: str, log: Log) -> threading.Thread:
    """Follow a pod's log into `log` (a run's, a build's), on a thread of its own."""

    def follow() -> None:
        try:
            response = core.read_namespaced_pod_log(pod, namespace, follow=True, _preload_content=False)
            for line in response.stream():
                for text in line.decode(errors="replace").splitlines():
                    log.info("%s", text)
        except Exception as exc:  # the pod went away: its outcome comes from the watch
            log.debug("log stream of %s ended: %s", pod, exc)

    thread = threading.Thread(target=follow, name=f"logs-{pod}", daemon=True)
    thread.start()
    return thread


def registry_secret(name: str, host: str, credentials: dict[str, str], labels: dict[str, str]) -> dict[str, Any]:
    """A dockerconfigjson Secret with one registry login (username and password, as docker's `auth_config`)."""
    username, password = credentials["username"], credentials["password"]
    auth = base64.b64encode(f"{username}:{password}".encode()).decode()
    config = {"auths": {host: {"username": username, "password": password, "auth": auth}}}
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "type": "kubernetes.io/dockerconfigjson",
        "metadata": {"name": name, "labels": labels},
        "stringData": {".dockerconfigjson": json.dumps(config)},
    }


def api_error(exc: Exception) -> str:
    try:
        message = json.loads(exc.body).get("message")  # type: ignore[attr-defined]
    except Exception:
        message = None
    return f"HTTP {getattr(exc, 'status', '?')} {getattr(exc, 'reason', '')}: {message or exc}".strip()


_LIST = re.compile(r"^List\[(.+)\]$")
_DICT = re.compile(r"^Dict\[str, (.+)\]$")


def schema_problems(value: Any, model: str, path: str) -> list[str]:
    """Where `value` does not fit the Kubernetes API's `model` (a client model: `V1JobSpec`), by path: a field
    the kind does not have, or a mapping, list or scalar where another is expected. Scalars are not typed
    further (the API server coerces `cpu: 1`, and template fields hold strings until they are filled).

    >>> schema_problems({"template": {"spec": {"contianers": []}}}, "V1JobSpec", "spec")
    ['spec.template.spec.contianers: not a field of PodSpec']
    """
    from kubernetes import client

    if value is None:
        return []
    if model.startswith("V") and model[1].isdigit():
        kind = getattr(client, model)
        if not isinstance(value, dict):
            return [f"{path}: a mapping ({_kind_name(model)}), not {type(value).__name__}"]
        fields = {json_name: kind.openapi_types[attribute] for attribute, json_name in kind.attribute_map.items()}
        problems = []
        for key, item in value.items():
            where = f"{path}.{key}" if path else str(key)
            if key not in fields:
                problems.append(f"{where}: not a field of {_kind_name(model)}")
            else:
                problems += schema_problems(item, fields[key], where)
        return problems
    if match := _LIST.match(model):
        if not isinstance(value, list):
            return [f"{path}: a list, not {type(value).__name__}"]
        return [problem for i, item in enumerate(value) for problem in schema_problems(item, match[1], f"{path}[{i}]")]
    if match := _DICT.match(model):
        if not isinstance(value, dict):
            return [f"{path}: a mapping, not {type(value).__name__}"]
        return [problem for key, item in value.items() for problem in schema_problems(item, match[1], f"{path}.{key}")]
    if model != "object" and isinstance(value, (dict, list)):
        return [f"{path}: a single value, not a {'mapping' if isinstance(value, dict) else 'list'}"]
    return []


def builtin_model(api_version: str, kind: str) -> str | None:
    """The client model of a built-in kind (`batch/v1`, `CronJob` -> `V1CronJob`); None for a custom resource.

    Built-in groups have no dot, or end in `.k8s.io`: a CRD's `PodGroup` is not `scheduling.k8s.io`'s.

    >>> builtin_model("batch/v1", "CronJob"), builtin_model("kubeflow.org/v1", "PyTorchJob")
    ('V1CronJob', None)
    """
    from kubernetes import client

    group, _, version = api_version.rpartition("/")
    if "." in group and not group.endswith(".k8s.io"):
        return None
    model = version[:1].upper() + version[1:] + kind
    return model if hasattr(client, model) else None


def pod_templates_at(value: Any, path: str) -> Iterator[tuple[str, dict[str, Any]]]:
    """(path, template) for every pod template inside an object: each mapping whose `spec` holds a `containers` list."""
    if isinstance(value, dict):
        if isinstance(value.get("spec"), dict) and isinstance(value["spec"].get("containers"), list):
            yield path, value
        for key, item in value.items():
            yield from pod_templates_at(item, f"{path}.{key}" if path else str(key))
    elif isinstance(value, list):
        for index, item in enumerate(value):
            yield from pod_templates_at(item, f"{path}[{index}]")


def _kind_name(model: str) -> str:
    return re.sub(r"^V\d+(alpha\d+|beta\d+)?", "", model)
