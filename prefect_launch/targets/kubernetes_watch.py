"""One pod watch per cluster and namespace, shared by every run an agent follows there.

An agent following 1,000 Kubernetes runs keeps one watch connection per
namespace, not one per run (W&B's and Prefect's Kubernetes agents keep one per
job). The watch lists, then watches, the pods carrying the run-id label (any
value), renews its connection every `WATCH_SECONDS`, resumes from the last
resourceVersion after a dropped connection and relists after a 410 (an expired
resourceVersion), telling each run only what changed in between. It hands
each pod event to the runs whose run id and attempt labels the pod carries, and
ends when its last run unsubscribes.

Example, a run reads its own pods' events::

    with watch_pods(api, "wandb", run_id="r1", attempt="0") as pods:
        for event_type, pod in pods.take(timeout=5):
            print(event_type, pod["metadata"]["name"])
"""

from __future__ import annotations

import functools
import json
import logging
import time
from typing import Any, ContextManager

from prefect_launch import kube
from prefect_launch.errors import LaunchError
from prefect_launch.targets.fanout import Fanout, Mailbox, subscribe_shared

RUN_ID_LABEL = "prefect-launch/run-id"
# Pods of a requeued run carry its attempt, so a new attempt never sees the old one's pods.
ATTEMPT_LABEL = "prefect-launch/attempt"
WATCH_SECONDS = 5  # a watch call ends this often; the API server's own limit is minutes
logger = logging.getLogger(__name__)

PodEvent = tuple[str, dict[str, Any]]  # ("ADDED" | "MODIFIED" | "DELETED", the pod as JSON)
RunKey = tuple[str, str]  # (run id, attempt)


def run_key(pod: dict[str, Any]) -> RunKey:
    labels = pod["metadata"].get("labels") or {}
    return labels.get(RUN_ID_LABEL, ""), labels.get(ATTEMPT_LABEL, "")


def _version(pod: dict[str, Any]) -> str | None:
    return pod["metadata"].get("resourceVersion")


class NamespacePods(Fanout):
    """The watch of one namespace's launch pods: a thread while any run subscribes."""

    def __init__(self, api: Any, namespace: str) -> None:
        super().__init__()
        self.api = api
        self.namespace = namespace
        self._pods: dict[str, dict[str, Any]] = {}  # every launch pod in the namespace, as last seen
        self._version: str | None = None  # the last resourceVersion the watch saw; None: list afresh

    @functools.cached_property
    def _core(self) -> Any:
        from kubernetes import client

        return client.CoreV1Api(self.api)

    def subscribed(self, mailbox: Mailbox) -> None:
        for pod in self._pods.values():
            if run_key(pod) == mailbox.key:
                mailbox.put(("ADDED", pod))

    def stopped(self) -> None:
        self._pods.clear()
        self._version = None

    def _deliver(self, event_type: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        with self.lock:
            if event_type == "DELETED":
                self._pods.pop(name, None)
            else:
                self._pods[name] = pod
            self.deliver_locked(run_key(pod), (event_type, pod))

    def _relist(self, core: Any) -> str:
        """List the namespace's launch pods afresh; tell each run what changed since the last look."""
        # Raw JSON: the client's models would check and copy every pod of the namespace, and nothing here uses them.
        response = core.list_namespaced_pod(self.namespace, label_selector=RUN_ID_LABEL, _preload_content=False)
        try:
            listing = json.loads(response.data)
        finally:
            response.release_conn()
        current = {pod["metadata"]["name"]: pod for pod in listing.get("items") or []}
        with self.lock:
            known = dict(self._pods)
        for name, pod in known.items():
            if name not in current:
                self._deliver("DELETED", pod)
        for name, pod in current.items():
            if name not in known:
                self._deliver("ADDED", pod)
            elif _version(known[name]) != _version(pod):
                self._deliver("MODIFIED", pod)
        return (listing.get("metadata") or {}).get("resourceVersion") or "0"

    def _watch(self, core: Any) -> None:
        """Deliver the pod events after `self._version` for one watch call; a 410 leaves no version (relist)."""
        from kubernetes.watch.watch import iter_resp_lines

        response = core.list_namespaced_pod(self.namespace, label_selector=RUN_ID_LABEL, watch=True,
                                            resource_version=self._version, timeout_seconds=WATCH_SECONDS,
                                            _preload_content=False)
        try:
            for line in iter_resp_lines(response):
                event = json.loads(line)
                if event["type"] == "ERROR":
                    if (event.get("object") or {}).get("code") == 410:
                        self._version = None
                    return
                pod = event["object"]
                self._version = pod["metadata"].get("resourceVersion", self._version)
                if event["type"] in ("ADDED", "MODIFIED", "DELETED"):  # not BOOKMARK
                    self._deliver(event["type"], pod)
        finally:
            response.release_conn()

    def serve(self) -> None:
        """One watch call (a list first, at the start and after a 410)."""
        from kubernetes.client.exceptions import ApiException

        core = self._core
        try:
            if self._version is None:
                self._version = self._relist(core)
            self._watch(core)
        except ApiException as exc:
            if exc.status != 410:
                self.fail(LaunchError(f"Kubernetes pod watch in namespace {self.namespace} failed: {kube.api_error(exc)}"))
            self._version = None  # the resourceVersion expired: relist
        except Exception as exc:  # a dropped connection: resume from the last version seen
            logger.warning("Pod watch in namespace %s interrupted (%s); resuming", self.namespace, exc)
            time.sleep(1)


def watch_pods(api: Any, namespace: str, run_id: str, attempt: str) -> ContextManager[Mailbox]:
    """The events of one run attempt's pods (`PodEvent`s, `take` them), from the namespace's shared watch on
    `api`'s cluster; taking them raises the watch's failure (a LaunchError: the API refused to list or watch pods).

    Its first events are the run's pods the watch already knows; a watch started for it lists them.
    """
    where = ("pods", api.configuration.host, namespace)
    return subscribe_shared(where, lambda: NamespacePods(api, namespace), (run_id, attempt))
