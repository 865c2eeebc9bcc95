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
        for event_type, pod in pods.events(timeout=5):
            print(event_type, pod["metadata"]["name"])
"""

from __future__ import annotations

import contextlib
import functools
import json
import logging
import queue
import threading
import time
from typing import Any, Iterator

from prefect_launch import kube
from prefect_launch.errors import LaunchError

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


class Subscription:
    """One run's share of a namespace's pod watch: the events of its own pods, in order."""

    def __init__(self, key: RunKey) -> None:
        self.key = key
        self._events: queue.SimpleQueue[PodEvent | LaunchError] = queue.SimpleQueue()

    def put(self, item: PodEvent | LaunchError) -> None:
        self._events.put(item)

    def events(self, timeout: float) -> list[PodEvent]:
        """The events that came since the last call, after waiting up to `timeout` for the first; raises the
        watch's failure (a LaunchError: the API server refused to list or watch pods)."""
        try:
            batch = [self._events.get(timeout=timeout)]
        except queue.Empty:
            return []
        with contextlib.suppress(queue.Empty):
            while True:
                batch.append(self._events.get_nowait())
        for item in batch:
            if isinstance(item, LaunchError):
                raise item
        return batch  # type: ignore[return-value]


class NamespacePods:
    """The watch of one namespace's launch pods: a thread while any run subscribes."""

    def __init__(self, api: Any, namespace: str, on_idle: Any) -> None:
        self.api = api
        self.namespace = namespace
        self._on_idle = on_idle  # called under the registry's lock when the last run has gone
        self._lock = threading.Lock()
        self._subscribers: dict[RunKey, list[Subscription]] = {}
        self._pods: dict[str, dict[str, Any]] = {}  # every launch pod in the namespace, as last seen
        self._thread: threading.Thread | None = None
        self._version: str | None = None  # the last resourceVersion the watch saw; None: list afresh

    def subscribe(self, key: RunKey) -> Subscription:
        subscription = Subscription(key)
        with self._lock:
            self._subscribers.setdefault(key, []).append(subscription)
            for pod in self._pods.values():
                if run_key(pod) == key:
                    subscription.put(("ADDED", pod))
            if self._thread is None:
                self._thread = threading.Thread(target=self._run, name=f"pod-watch-{self.namespace}", daemon=True)
                self._thread.start()
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        with self._lock:
            runs = self._subscribers.get(subscription.key, [])
            if subscription in runs:
                runs.remove(subscription)
            if not runs:
                self._subscribers.pop(subscription.key, None)

    def _deliver(self, event_type: str, pod: dict[str, Any]) -> None:
        name = pod["metadata"]["name"]
        with self._lock:
            if event_type == "DELETED":
                self._pods.pop(name, None)
            else:
                self._pods[name] = pod
            for subscription in self._subscribers.get(run_key(pod), []):
                subscription.put((event_type, pod))

    def _relist(self, core: Any) -> str:
        """List the namespace's launch pods afresh; tell each run what changed since the last look."""
        # Raw JSON: the client's models would check and copy every pod of the namespace, and nothing here uses them.
        response = core.list_namespaced_pod(self.namespace, label_selector=RUN_ID_LABEL, _preload_content=False)
        try:
            listing = json.loads(response.data)
        finally:
            response.release_conn()
        current = {pod["metadata"]["name"]: pod for pod in listing.get("items") or []}
        with self._lock:
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

    def _idle(self) -> bool:
        """Whether no run subscribes any more; the watch then ends, forgetting what it saw."""
        with _REGISTRY_LOCK, self._lock:
            if self._subscribers:
                return False
            self._thread = None
            self._pods.clear()
            self._on_idle(self)
            return True

    def _fail(self, error: LaunchError) -> None:
        """Every subscribed run learns the watch's failure; the next subscription starts a new watch."""
        with _REGISTRY_LOCK, self._lock:
            for runs in self._subscribers.values():
                for subscription in runs:
                    subscription.put(error)
            self._subscribers.clear()
            self._thread = None
            self._pods.clear()
            self._on_idle(self)

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

    def _run(self) -> None:
        from kubernetes import client
        from kubernetes.client.exceptions import ApiException

        core = client.CoreV1Api(self.api)
        self._version = None
        while not self._idle():
            try:
                if self._version is None:  # at the start, and after a 410 (the resourceVersion expired)
                    self._version = self._relist(core)
                self._watch(core)
            except ApiException as exc:
                if exc.status != 410:
                    self._fail(LaunchError(f"Kubernetes pod watch in namespace {self.namespace} failed: "
                                           f"{kube.api_error(exc)}"))
                    return
                self._version = None
            except Exception as exc:  # a dropped connection: resume from the last version seen
                logger.warning("Pod watch in namespace %s interrupted (%s); resuming", self.namespace, exc)
                time.sleep(1)


_REGISTRY_LOCK = threading.Lock()
_WATCHES: dict[tuple[str, str], NamespacePods] = {}


def _forget(where: tuple[str, str], idle: NamespacePods) -> None:
    if _WATCHES.get(where) is idle:
        del _WATCHES[where]


@contextlib.contextmanager
def watch_pods(api: Any, namespace: str, run_id: str, attempt: str) -> Iterator[Subscription]:
    """The events of one run attempt's pods, from the namespace's shared watch on `api`'s cluster.

    Its first events are the run's pods the watch already knows; a watch started for it lists them.
    """
    where = (api.configuration.host, namespace)
    with _REGISTRY_LOCK:
        pods = _WATCHES.get(where)
        if pods is None:
            pods = _WATCHES[where] = NamespacePods(api, namespace, on_idle=functools.partial(_forget, where))
        subscription = pods.subscribe((run_id, attempt))
    try:
        yield subscription
    finally:
        pods.unsubscribe(subscription)
