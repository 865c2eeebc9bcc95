"""A lean Kubernetes API stand-in for benches: thousands of Jobs and pods, watched, at a constant cost per request.

kmock (the tests' stand-in, `tests/kube_standin.py`) records every request and
scans its whole store on each one, so its cost grows with every request it has
seen. This one keeps only what a cluster keeps: Jobs and pods in dicts, and
the pod events of the last `HISTORY` resourceVersions for watches (older
versions answer 410, as an API server's compacted history does). It serves
what the kubernetes target asks of a cluster for a batch Job without Secrets:

- `POST` and `GET` of `batch/v1` Jobs (`DELETE` too, taking the Job's pods along);
- pods listed and watched by label selector (`key`, `key=value`), watches
  renewed after `timeoutSeconds`;
- pod logs, `follow=true` streaming each line as it comes until the pod ends;
- events (none: nothing here fails) and Secret deletes (404: there are none).

The bench plays the kubelet: `run_pod` gives a Job its pod in a phase,
`set_phase` moves it on. All of it runs in one asyncio loop on a thread of its
own, on 127.0.0.1.

Example::

    with LeanKube() as kube:
        kubeconfig = kube.kubeconfig(Path("/tmp/kubeconfig"))
        ...  # an agent creates Jobs
        for namespace, name in kube.jobs_without_pods():
            kube.run_pod(namespace, name, "Running", ["step 1"])
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import json
import threading
import uuid
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from aiohttp import web

HISTORY = 20_000  # pod events kept for watches; a watch from an older version answers 410


def _matches(labels: dict[str, str], selector: str) -> bool:
    for term in filter(None, selector.split(",")):
        key, _, value = term.partition("=")
        if (key not in labels) if not value else labels.get(key) != value:
            return False
    return True


def _now() -> str:
    return datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


class LeanKube:
    def __init__(self) -> None:
        self.jobs: dict[tuple[str, str], dict[str, Any]] = {}
        self.pods: dict[tuple[str, str], dict[str, Any]] = {}
        self.logs: dict[tuple[str, str], list[str]] = {}
        self.requests = 0
        self._versions: list[int] = []  # resourceVersion of each event in `_events`, ascending
        self._events: list[tuple[str, dict[str, Any]]] = []
        self._version = 0
        self._changed: asyncio.Event | None = None  # set at every pod event: wakes the watches
        self._pod_changed: dict[tuple[str, str], asyncio.Event] = {}  # wakes the pod's log followers
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="lean-kube", daemon=True)
        self._runner: web.AppRunner | None = None
        self.port = 0

    # --- the bench's side (any thread) -----------------------------------------------------------

    def __enter__(self) -> LeanKube:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._start(), self._loop).result(timeout=30)
        return self

    def __exit__(self, *exc_info: object) -> None:
        # Open log streams and watches are cut, not waited for: the bench is over.
        with contextlib.suppress(TimeoutError):
            asyncio.run_coroutine_threadsafe(self._runner.cleanup(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    @property
    def host(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def kubeconfig(self, path: Path) -> str:
        path.write_text(json.dumps({
            "apiVersion": "v1", "kind": "Config", "current-context": "lean",
            "clusters": [{"name": "lean", "cluster": {"server": self.host}}],
            "contexts": [{"name": "lean", "context": {"cluster": "lean", "user": "lean"}}],
            "users": [{"name": "lean", "user": {"token": "lean"}}],
        }))
        return str(path)

    def _call(self, function: Any, *args: Any) -> Any:
        async def call() -> Any:
            return function(*args)
        return asyncio.run_coroutine_threadsafe(call(), self._loop).result(timeout=30)

    def jobs_without_pods(self) -> list[tuple[str, str]]:
        return self._call(lambda: [key for key in self.jobs if key not in self.pods])

    def run_pod(self, namespace: str, job: str, phase: str, lines: list[str]) -> None:
        """Give a Job its one pod (named as the Job), with the Job's pod template labels, in `phase`."""
        self._call(self._run_pod, namespace, job, phase, lines)

    def set_phase(self, namespace: str, pod: str, phase: str, exit_code: int = 0) -> None:
        self._call(self._set_phase, namespace, pod, phase, exit_code)

    # --- the server (its loop) -------------------------------------------------------------------

    async def _start(self) -> None:
        self._changed = asyncio.Event()
        app = web.Application()
        app.router.add_route("*", "/{path:.*}", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        self.port = site._server.sockets[0].getsockname()[1]

    def _notify(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    def _pod_event(self, kind: str, key: tuple[str, str], pod: dict[str, Any]) -> None:
        self._version += 1
        pod["metadata"]["resourceVersion"] = str(self._version)
        self._versions.append(self._version)
        self._events.append((kind, json.loads(json.dumps(pod))))
        if len(self._events) > HISTORY * 2:  # compact in halves, so appends stay cheap
            del self._versions[:HISTORY], self._events[:HISTORY]
        self._notify()
        self._pod_changed.pop(key, asyncio.Event()).set()

    def _run_pod(self, namespace: str, job_name: str, phase: str, lines: list[str]) -> None:
        job = self.jobs[namespace, job_name]
        labels = dict(job["spec"]["template"]["metadata"].get("labels") or {})
        pod = {"apiVersion": "v1", "kind": "Pod",
               "metadata": {"name": job_name, "namespace": namespace, "labels": labels, "uid": str(uuid.uuid4()),
                            "creationTimestamp": _now()},
               "spec": {"containers": [{"name": "launch", "image": "lean"}]},
               "status": {"phase": phase, "conditions": [], "containerStatuses": [
                   _container_status({"running": {"startedAt": _now()}} if phase == "Running" else {"waiting": {}})]}}
        self.pods[namespace, job_name] = pod
        self.logs[namespace, job_name] = list(lines)
        self._pod_event("ADDED", (namespace, job_name), pod)

    def _set_phase(self, namespace: str, name: str, phase: str, exit_code: int) -> None:
        pod = self.pods[namespace, name]
        pod["status"]["phase"] = phase
        if phase in ("Succeeded", "Failed"):
            pod["status"]["containerStatuses"] = [_container_status({"terminated": {
                "exitCode": exit_code, "reason": "Completed" if exit_code == 0 else "Error"}})]
        self._pod_event("MODIFIED", (namespace, name), pod)

    async def _serve(self, request: web.Request) -> web.StreamResponse:
        self.requests += 1
        parts = request.path.strip("/").split("/")
        query = request.query
        # /api/v1/namespaces/NS/RESOURCE[/NAME[/SUB]] or /apis/batch/v1/namespaces/NS/jobs[/NAME]
        if parts[:2] == ["apis", "batch"]:
            parts = parts[1:]
        if len(parts) < 5 or parts[2] != "namespaces":
            return web.json_response({"major": "1", "minor": "30", "gitVersion": "v1.30.0"})
        namespace, resource, rest = parts[3], parts[4], parts[5:]
        if resource == "jobs":
            return await self._jobs(request, namespace, rest)
        if resource == "pods" and not rest:
            return await self._watch(request, namespace, query) if query.get("watch") == "true" \
                else self._list(namespace, query.get("labelSelector", ""))
        if resource == "pods" and rest[1:] == ["log"]:
            return await self._log(request, namespace, rest[0], query.get("follow") == "true")
        if resource == "events":
            return web.json_response({"apiVersion": "v1", "kind": "EventList", "metadata": {}, "items": []})
        return _status(404, "NotFound", f"{resource} {'/'.join(rest)} not found")

    async def _jobs(self, request: web.Request, namespace: str, rest: list[str]) -> web.Response:
        if request.method == "POST":
            job = await request.json()
            name = job["metadata"]["name"]
            if (namespace, name) in self.jobs:
                return _status(409, "AlreadyExists", f'jobs.batch "{name}" already exists')
            job["metadata"].update(namespace=namespace, uid=str(uuid.uuid4()), creationTimestamp=_now(),
                                   resourceVersion=str(self._version))
            self.jobs[namespace, name] = job
            return web.json_response(job, status=201)
        job = self.jobs.get((namespace, rest[0])) if rest else None
        if job is None:
            return _status(404, "NotFound", f'jobs.batch "{rest[0] if rest else ""}" not found')
        if request.method == "DELETE":
            del self.jobs[namespace, rest[0]]
            pod = self.pods.pop((namespace, rest[0]), None)
            if pod is not None:
                self._pod_event("DELETED", (namespace, rest[0]), pod)
        return web.json_response(job)

    def _list(self, namespace: str, selector: str) -> web.Response:
        items = [pod for (ns, _), pod in self.pods.items() if ns == namespace and _matches(pod["metadata"]["labels"], selector)]
        return web.json_response({"apiVersion": "v1", "kind": "PodList",
                                  "metadata": {"resourceVersion": str(self._version)}, "items": items})

    async def _watch(self, request: web.Request, namespace: str, query: Any) -> web.StreamResponse:
        selector, since = query.get("labelSelector", ""), int(query.get("resourceVersion") or 0)
        deadline = self._loop.time() + float(query.get("timeoutSeconds") or 60)
        response = web.StreamResponse(headers={"Content-Type": "application/json"})
        await response.prepare(request)
        if self._versions and since < self._versions[0] - 1:
            await response.write(json.dumps({"type": "ERROR", "object": {
                "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 410, "reason": "Expired",
                "message": f"too old resource version: {since}"}}).encode() + b"\n")
            return response
        while self._loop.time() < deadline:
            changed = self._changed
            start = bisect.bisect_right(self._versions, since)
            for kind, pod in self._events[start:]:
                since = int(pod["metadata"]["resourceVersion"])
                if pod["metadata"]["namespace"] == namespace and _matches(pod["metadata"]["labels"], selector):
                    await response.write(json.dumps({"type": kind, "object": pod}).encode() + b"\n")
            try:
                await asyncio.wait_for(changed.wait(), deadline - self._loop.time())
            except TimeoutError:
                break
        return response

    async def _log(self, request: web.Request, namespace: str, name: str, follow: bool) -> web.StreamResponse:
        key = (namespace, name)
        if key not in self.pods:
            return _status(404, "NotFound", f'pods "{name}" not found')
        response = web.StreamResponse(headers={"Content-Type": "text/plain"})
        await response.prepare(request)
        sent = 0
        while True:
            changed = self._pod_changed.setdefault(key, asyncio.Event())
            lines = self.logs.get(key, [])
            for line in lines[sent:]:
                await response.write(line.encode() + b"\n")
            sent = len(lines)
            pod = self.pods.get(key)
            if not follow or pod is None or pod["status"]["phase"] in ("Succeeded", "Failed"):
                return response
            await changed.wait()


def _container_status(state: dict[str, Any]) -> dict[str, Any]:
    """A container status with every field the API's schema requires."""
    return {"name": "launch", "image": "registry.local/train:1", "imageID": "", "ready": "running" in state,
            "restartCount": 0, "state": state}


def _status(code: int, reason: str, message: str) -> web.Response:
    return web.json_response({"kind": "Status", "apiVersion": "v1", "status": "Failure", "code": code,
                              "reason": reason, "message": message}, status=code)
