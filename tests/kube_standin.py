"""A Kubernetes API stand-in for tests: kmock's emulator plus pod watches and logs.

kmock's `KubernetesEmulator` serves the stored objects (create, read, patch,
delete, discovery, Kubernetes-style error bodies). This module adds what the
official `kubernetes` client and a pod monitor need on top of it:

- creates answer 201 (the client drops a custom object's body on a 200) and are
  stamped with namespace, uid, resourceVersion and creationTimestamp;
- `GET /version/` (the client's VersionApi path; kmock serves `/version` only);
- pods, driven by the test (`create_pod`, `update_pod`, `delete_pod`), listed
  and watched with a label selector (equality terms only, `a=b,c!=d,e,!f`) and
  resourceVersions: a watch from a version replays the events after it, ends
  after `timeoutSeconds`, and answers an expired version with the API server's
  own `ERROR` event (code 410, reason Expired) after `expire_watches()`;
- events on objects, listed as `v1/events`: a test's warnings (`warn`), and the controllers' own;
  `expire_events()` drops them all, as the API server does an hour after each;
- the control plane's part a cluster always runs, in a loop of its own: the Job controller's
  status (a Job whose pods all Succeeded is Complete, one with a Failed pod is Failed: the
  stand-in has `backoffLimit: 0` semantics) with its `Completed` or `BackoffLimitExceeded`
  event; the TTL-after-finished controller (a finished Job with `ttlSecondsAfterFinished` is
  deleted that many seconds after it finished); and the garbage collector (a deleted Job's pods
  are deleted with it, watches see them go). A Job's pods are those its ownerReferences name,
  or, for pods a test made without any, those carrying all its pod template's labels;
- pod logs (`pod_log`): a Pending pod answers 400 as a real kubelet does, and
  `follow=true` streams the lines as they come until the pod Succeeds, Fails
  or is deleted.

Nothing schedules or runs pods: a test plays the kubelet (`create_pod`, `update_pod`), or
starts `kube_kubelet.Kubelet`, which runs each Job's container as a process. The server runs
on 127.0.0.1 in a thread of its own, so the synchronous client can call it from the test's
thread. Usage::

    with KubeStandIn() as kube:
        config = kubernetes.client.Configuration(host=kube.host)
        core = kubernetes.client.CoreV1Api(kubernetes.client.ApiClient(config))
        # or: kubernetes.config.load_kube_config(config_file=kube.kubeconfig(tmp_path / "kubeconfig"))
        kube.create_pod("ns", "run-abc-0", {"prefect-launch/run-id": "abc"})
        kube.update_pod("ns", "run-abc-0", phase="Running")
        kube.pod_log("ns", "run-abc-0", ["step 1", "step 2"])
        kube.update_pod("ns", "run-abc-0", phase="Succeeded",
                        container_statuses=[{"name": "main", "state": {"terminated": {"exitCode": 0}}}])
        # ... the code under test has created the Job ns/run-abc ...
        kube.set_job_status("ns", "run-abc", {"succeeded": 1})
        job = kube.objects("batch/v1/jobs")["ns", "run-abc"]
        assert job.history[0]["spec"]   # the body the client sent; job.deleted after a delete

Every request stays recorded in kmock's handler, `kube.kmock` (e.g.
`kube.kmock["delete"][0].params["propagationPolicy"]`); read it after the calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import datetime
import json
import pathlib
import threading
import uuid
from typing import Any

import kmock

PODS = kmock.resource("v1/pods")
EVENTS = kmock.resource("v1/events")
JOBS = kmock.resource("batch/v1/jobs")
CONTROL_SECONDS = 0.2  # the controllers' loop looks at least this often (TTLs are timed by it)
BACKOFF_LIMIT_EXCEEDED = "Job has reached the specified backoff limit"
TERMINAL_PHASES = ("Succeeded", "Failed")
TEXT = {"Content-Type": "text/plain"}
CONTAINER = "main"
SERVER_VERSION = {
    "major": "1", "minor": "30", "gitVersion": "v1.30.0", "gitCommit": "standin", "gitTreeState": "clean",
    "buildDate": "2024-04-17T00:00:00Z", "goVersion": "go1.22.2", "compiler": "gc", "platform": "linux/amd64",
}


class KubeStandIn:
    """A Kubernetes API server on 127.0.0.1 for the official client; a context manager."""

    def __init__(self) -> None:
        self._rv = 0  # the last resourceVersion handed out (one counter, as etcd has)
        self._oldest_rv = 0  # watches from a version older than this answer 410
        self._events: list[tuple[int, str, dict[str, Any]]] = []  # pod events: (resourceVersion, type, pod)
        self._logs: dict[tuple[str, str], list[str]] = {}
        self._closing = False
        self._finished: dict[str, float] = {}  # a finished Job's uid -> when it finished (the loop's clock)
        self._collected: set[str] = set()  # deleted Jobs' uids whose pods the garbage collector deleted

    # --- lifecycle -------------------------------------------------------------------------------

    def __enter__(self) -> KubeStandIn:
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="kube-standin", daemon=True)
        self._thread.start()
        self._await(self._start())
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._await(self._stop())
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join()
        self._loop.close()

    async def _start(self) -> None:
        self._changed = asyncio.Event()  # set and replaced on every change; waiters re-check
        self.kmock = kmock.KubernetesEmulator()
        await self.kmock.__aenter__()
        self._server = kmock.Server(self.kmock)
        await self._server.__aenter__()
        self.kmock["get /version/"] << SERVER_VERSION
        # An API server lists events (empty) before any is recorded; undeclared, kmock answers 404.
        self.kmock.resources["v1/events"] = {}
        self.kmock[kmock.action.CREATE] << 201 << self._created
        self.kmock[kmock.action.LIST, PODS] << self._list_pods
        self.kmock[kmock.action.WATCH, PODS] << self._watch_pods
        self.kmock[kmock.action.FETCH, PODS, kmock.subresource("log")] << self._pod_log_response
        self._controllers = asyncio.ensure_future(self._control_loop())

    async def _stop(self) -> None:
        self._closing = True  # ends open watches and log streams, so the server stops at once
        self._notify()
        self._controllers.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._controllers
        await self._server.__aexit__(None, None, None)
        await self.kmock.__aexit__(None, None, None)

    @property
    def host(self) -> str:
        """The API server's URL, for `Configuration(host=...)`."""
        return f"http://127.0.0.1:{self._server.port}"

    def kubeconfig(self, path: str | pathlib.Path) -> str:
        """Write a kubeconfig (JSON, which is YAML) whose current context is this server; returns the path."""
        config = {
            "apiVersion": "v1", "kind": "Config", "current-context": "standin",
            "clusters": [{"name": "standin", "cluster": {"server": self.host}}],
            "users": [{"name": "standin", "user": {"token": "standin"}}],
            "contexts": [{"name": "standin", "context": {"cluster": "standin", "user": "standin"}}],
        }
        pathlib.Path(path).write_text(json.dumps(config))
        return str(path)

    # --- inspection ------------------------------------------------------------------------------

    def objects(self, resource: str) -> dict[tuple[str | None, str], kmock.Object]:
        """The objects of a resource ("batch/v1/jobs", "v1/secrets", "kubeflow.org/v1/pytorchjobs").

        Keyed by (namespace, name); each is kmock's Object: `.history[0]` is the body
        the client sent, `.deleted` tells a deleted one, `.last` its last state.
        """
        wanted = kmock.resource(resource)
        return self._call(lambda: {(ns, name): obj for (res, ns, name), obj in self.kmock.objects.items() if res == wanted})

    def snapshot(self, resource: str) -> dict[tuple[str | None, str], dict[str, Any]]:
        """A copy of the objects of a resource that exist now (not deleted), keyed by (namespace, name): safe
        to read in any thread while the server goes on."""
        wanted = kmock.resource(resource)
        return self._call(lambda: {(ns, name): copy.deepcopy(obj.raw) for (res, ns, name), obj in self.kmock.objects.items()
                                   if res == wanted and not obj.deleted})

    def requests(self) -> list[kmock.Request]:
        """Every request served so far, parsed (`.action`, `.resource`, `.subresource`, `.namespace`, `.url`)."""
        return self._call(lambda: list(self.kmock))

    # --- the test's controls ---------------------------------------------------------------------

    def create_pod(self, namespace: str, name: str, labels: dict[str, str], phase: str = "Pending",
                   conditions: list[dict[str, Any]] | None = None,
                   container_statuses: list[dict[str, Any]] | None = None,
                   owner: dict[str, Any] | None = None) -> None:
        """Add a pod (one container, "main"), owned by `owner` (an ownerReference) if given; watches see ADDED."""
        status = _status(phase=phase, conditions=conditions or [], container_statuses=container_statuses or [])
        metadata = {"name": name, "namespace": namespace, "labels": labels, "uid": str(uuid.uuid4())}
        if owner is not None:
            metadata["ownerReferences"] = [owner]
        pod = {
            "apiVersion": "v1", "kind": "Pod", "metadata": metadata,
            "spec": {"containers": [{"name": CONTAINER, "image": "standin"}]},
            "status": status,
        }

        def create() -> None:
            self.kmock.objects[PODS, namespace, name] = pod
            self._pod_event("ADDED", namespace, name, {})
        self._call(create)

    def update_pod(self, namespace: str, name: str, **status: Any) -> None:
        """Replace status fields, named in snake_case: phase="Running", conditions=[{...}],
        container_statuses=[{"name": "main", "state": {"waiting": {"reason": "ErrImagePull"}}}],
        reason=..., message=...; watches see MODIFIED."""
        self._call(lambda: self._pod_event("MODIFIED", namespace, name, {"status": _status(**status)}))

    def delete_pod(self, namespace: str, name: str) -> None:
        """Remove a pod; watches see DELETED, its log stream ends."""

        self._call(lambda: self._delete_pod(namespace, name))

    def pod_log(self, namespace: str, name: str, lines: list[str]) -> None:
        """Append lines (without newlines) to the pod's log; followers get them at once."""

        def append() -> None:
            self._logs.setdefault((namespace, name), []).extend(lines)
            self._notify()
        self._call(append)

    def set_job_status(self, namespace: str, name: str, status: dict[str, Any]) -> None:
        """Replace a Job's `.status` (read_namespaced_job[_status] return it), e.g. {"failed": 1}."""

        def set_status() -> None:
            self.kmock.objects["batch/v1/jobs", namespace, name]["status"] = status
        self._call(set_status)

    def warn(self, namespace: str, kind: str, name: str, reason: str, message: str) -> None:
        """Record a Warning event on an object, as a controller does (a Job's `FailedCreate ... exceeded quota`)."""
        self.event(namespace, kind, name, None, "Warning", reason, message)

    def event(self, namespace: str, kind: str, name: str, uid: str | None, event_type: str, reason: str,
              message: str) -> None:
        """Record an event on an object (`Normal` or `Warning`), as its controller would."""
        self._call(lambda: self._record_event(namespace, kind, name, uid, event_type, reason, message))

    def expire_events(self) -> None:
        """Drop every event, as the API server does an hour after each (its `--event-ttl`)."""

        def expire() -> None:
            for (resource, _, _), event in self.kmock.objects.items():
                if resource == EVENTS and not event.deleted:
                    event.delete()
        self._call(expire)

    def expire_watches(self) -> None:
        """Compact the history: every resourceVersion handed out so far is too old.

        Open pod watches get an ERROR event with a 410 Status and end; a watch from
        any older version answers the same. A fresh list gives a version that works.
        """

        def expire() -> None:
            self._rv += 1
            self._oldest_rv = self._rv
            self._notify()
        self._call(expire)

    # --- plumbing --------------------------------------------------------------------------------

    def _await(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=30)

    def _call(self, function: Any) -> Any:
        """Run a function in the server's loop, which owns all state."""

        async def call() -> Any:
            return function()
        return self._await(call())

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _next_rv(self) -> str:
        self._rv += 1
        return str(self._rv)

    def _pod_event(self, event_type: str, namespace: str, name: str, changes: dict[str, Any]) -> None:
        pod = self.kmock.objects[PODS, namespace, name]
        if pod.deleted:
            raise KeyError(f"pod {namespace}/{name} is deleted")
        pod.patch({**changes, "metadata": {"resourceVersion": self._next_rv()}})
        self._events.append((self._rv, event_type, pod.raw))
        self._notify()

    def _pods(self, namespace: str | None, selector: str) -> list[dict[str, Any]]:
        return [obj.raw for (res, ns, _), obj in self.kmock.objects.items()
                if res == PODS and not obj.deleted and _in_scope(obj.raw, namespace, selector)]

    def _delete_pod(self, namespace: str, name: str) -> None:
        self._pod_event("DELETED", namespace, name, {})
        self.kmock.objects[PODS, namespace, name].delete()

    def _record_event(self, namespace: str, kind: str, name: str, uid: str | None, event_type: str, reason: str,
                      message: str) -> None:
        now = datetime.datetime.now(datetime.timezone.utc)
        event = {
            "apiVersion": "v1", "kind": "Event", "type": event_type, "reason": reason, "message": message,
            "metadata": {"name": f"{name}.{uuid.uuid4().hex[:12]}", "namespace": namespace},
            "involvedObject": {"kind": kind, "name": name, "namespace": namespace, **({"uid": uid} if uid else {})},
            "firstTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"), "lastTimestamp": now.strftime("%Y-%m-%dT%H:%M:%SZ"),
            "eventTime": now.strftime("%Y-%m-%dT%H:%M:%S.%fZ"), "count": 1,
        }
        self.kmock.objects[EVENTS, namespace, event["metadata"]["name"]] = event

    # --- the controllers (in the server's loop) --------------------------------------------------

    async def _control_loop(self) -> None:
        """The Job controller, the TTL-after-finished controller and the garbage collector: at every change, and
        every CONTROL_SECONDS (a TTL runs out with no change, and kmock deletes objects without telling)."""
        while not self._closing:
            changed = self._changed
            self._control()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), CONTROL_SECONDS)

    def _control(self) -> None:
        for (resource, namespace, name), job in list(self.kmock.objects.items()):
            if resource != JOBS:
                continue
            uid = job.last.get("metadata", {}).get("uid")
            if job.deleted:
                if uid not in self._collected:  # garbage collection: the Job's pods go with it
                    self._collected.add(uid)
                    for pod in self._pods_of(job.last.raw):
                        self._delete_pod(namespace, pod)
                continue
            if uid not in self._finished:
                self._sync_status(namespace, name, uid, job)
            ttl = (job.get("spec") or {}).get("ttlSecondsAfterFinished")
            if uid in self._finished and ttl is not None and self._loop.time() - self._finished[uid] >= ttl:
                job.delete()  # the garbage collector takes its pods at the next pass
                self._notify()

    def _pods_of(self, job: dict[str, Any]) -> list[str]:
        """The names of a Job's pods: those its ownerReferences name, else those with all its template's labels."""
        namespace, uid = job["metadata"].get("namespace"), job["metadata"].get("uid")
        labels = (((job.get("spec") or {}).get("template") or {}).get("metadata") or {}).get("labels") or {}
        names = []
        for (resource, pod_namespace, name), pod in self.kmock.objects.items():
            if resource != PODS or pod_namespace != namespace or pod.deleted:
                continue
            metadata = pod.raw["metadata"]
            owners = metadata.get("ownerReferences") or []
            pod_labels = metadata.get("labels") or {}
            if (any(owner.get("uid") == uid for owner in owners) if owners
                    else labels and all(pod_labels.get(key) == value for key, value in labels.items())):
                names.append(name)
        return names

    def _sync_status(self, namespace: str, name: str, uid: str, job: kmock.Object) -> None:
        """The Job controller's verdict from the Job's pods (or from a status a test set), once."""
        status = job.get("status") or {}
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if not (status.get("succeeded") or status.get("failed")):
            phases = [self.kmock.objects[PODS, namespace, pod]["status"].get("phase") for pod in self._pods_of(job.raw)]
            if "Failed" in phases:
                job["status"] = {**status, "failed": phases.count("Failed"), "conditions": [
                    {"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                     "message": BACKOFF_LIMIT_EXCEEDED, "lastTransitionTime": now}]}
                self._record_event(namespace, "Job", name, uid, "Warning", "BackoffLimitExceeded", BACKOFF_LIMIT_EXCEEDED)
            elif phases and all(phase == "Succeeded" for phase in phases):
                job["status"] = {**status, "succeeded": len(phases), "completionTime": now, "conditions": [
                    {"type": "Complete", "status": "True", "lastTransitionTime": now}]}
                self._record_event(namespace, "Job", name, uid, "Normal", "Completed", "Job completed")
            else:
                return
        self._finished[uid] = self._loop.time()

    # --- request handlers (in the server's loop) -------------------------------------------------

    def _created(self, request: kmock.Request) -> dict[str, Any]:
        """Stamp the object kmock has just stored, as the API server would, and return it."""
        metadata = request.data["metadata"]
        namespace = request.namespace or metadata.get("namespace")
        stored = self.kmock.objects[request.resource, namespace, metadata["name"]]
        now = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        stored.patch({"metadata": {"namespace": namespace, "uid": str(uuid.uuid4()),
                                   "resourceVersion": self._next_rv(), "creationTimestamp": now}})
        self._notify()  # the controllers look at what was created
        return stored.raw

    def _list_pods(self, request: kmock.Request) -> dict[str, Any]:
        items = self._pods(request.namespace, request.params.get("labelSelector", ""))
        return {"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": str(self._rv)}, "items": items}

    async def _watch_pods(self, request: kmock.Request) -> Any:
        namespace, selector = request.namespace, request.params.get("labelSelector", "")
        timeout = float(request.params.get("timeoutSeconds", 0)) or None
        deadline = None if timeout is None else self._loop.time() + timeout
        since = int(request.params.get("resourceVersion") or 0)
        yield b""  # the headers go out at once, as the API server sends them
        if not since:  # no version: the current pods as ADDED, then what changes
            for pod in self._pods(namespace, selector):
                yield {"type": "ADDED", "object": pod}
            since = self._rv
        while not self._closing:
            changed = self._changed
            if since < self._oldest_rv:
                yield {"type": "ERROR", "object": {
                    "apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "code": 410,
                    "reason": "Expired", "message": f"too old resource version: {since} ({self._oldest_rv})"}}
                return
            news = [event for event in self._events if event[0] > since]
            for rv, event_type, pod in news:
                since = rv
                if _in_scope(pod, namespace, selector):
                    yield {"type": event_type, "object": pod}
            if not news:
                try:
                    await asyncio.wait_for(changed.wait(), None if deadline is None else deadline - self._loop.time())
                except TimeoutError:
                    return

    def _pod_log_response(self, request: kmock.Request) -> kmock.Response:
        key = (request.namespace, request.name)
        if (PODS, *key) not in self.kmock.objects or self.kmock.objects[PODS, *key].deleted:
            raise kmock.KubernetesObjectNotFoundError()
        if self.kmock.objects[PODS, *key]["status"]["phase"] == "Pending":
            raise kmock.KubernetesError(400, "BadRequest",
                                        f'container "{CONTAINER}" in pod "{request.name}" is waiting to start: ContainerCreating')
        if request.params.get("follow") != "true":
            return kmock.Response(headers=TEXT, payload="".join(f"{line}\n" for line in self._logs.get(key, [])).encode())
        return kmock.Response(headers=TEXT, payload=self._follow_log(key))

    async def _follow_log(self, key: tuple[str, str]) -> Any:
        yield b""
        sent = 0
        while True:
            changed = self._changed
            lines = self._logs.get(key, [])
            for line in lines[sent:]:
                yield f"{line}\n".encode()
            sent = len(lines)
            pod = self.kmock.objects[PODS, *key]
            if self._closing or pod.deleted or pod["status"]["phase"] in TERMINAL_PHASES:
                return
            await changed.wait()


def _status(**fields: Any) -> dict[str, Any]:
    """Pod status fields from snake_case keywords; container statuses get the fields the client requires."""
    status = {_camel(key): value for key, value in fields.items()}
    if "containerStatuses" in status:
        status["containerStatuses"] = [
            {"name": CONTAINER, "image": "standin", "imageID": "", "ready": False, "restartCount": 0, **container}
            for container in status["containerStatuses"]]
    return status


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.capitalize() for word in rest)


def _in_scope(pod: dict[str, Any], namespace: str | None, selector: str) -> bool:
    """Whether a pod is in the namespace (None: any) and matches an equality-based label selector."""
    if namespace is not None and pod["metadata"]["namespace"] != namespace:
        return False
    labels = pod["metadata"].get("labels") or {}
    for term in filter(None, (term.strip() for term in selector.split(","))):
        if "!=" in term:
            key, value = term.split("!=", 1)
            matched = labels.get(key.strip()) != value.strip()
        elif "=" in term:
            key, value = term.replace("==", "=").split("=", 1)
            matched = labels.get(key.strip()) == value.strip()
        elif term.startswith("!"):
            matched = term[1:].strip() not in labels
        else:
            matched = term in labels
        if not matched:
            return False
    return True
