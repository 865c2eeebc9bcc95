"""A node for the Kubernetes stand-in: each Job gets a pod, and the pod's container runs as a process.

`kube_standin.KubeStandIn` serves the API and runs the control plane (Job status, TTL after
finished, garbage collection); nothing there runs a pod. A `Kubelet` does what the Job
controller's pod creation and a node's kubelet do, as a client of the stand-in, so drills and
tests can run many Jobs without playing every pod by hand:

- each new Job gets one pod, `<job>-<5 characters>`, with the Job's pod template labels, the
  `job-name` and `controller-uid` labels and an ownerReference to the Job, and a
  `SuccessfulCreate` event on the Job;
- the pod's first container runs its `command` and `args` as a process of this machine (the
  image is not pulled: this Python's folder comes first on `PATH`, so `python` is this Python),
  in a folder of its own under `folder`, with the container's `env`: plain values, and
  `secretKeyRef`s read from the stand-in's Secrets (an optional one that is missing is left
  out; a required one keeps the pod waiting in `CreateContainerConfigError`, as a kubelet does);
- the pod goes Running when the process starts, its output lines go to the pod's log, and it
  ends Succeeded (exit 0) or Failed with the exit code in its container status;
- a pod that is deleted (its Job deleted, or its TTL run out) has its process stopped: SIGTERM
  to its process group, SIGKILL after `GRACE_SECONDS`.

Usage::

    with KubeStandIn() as kube, Kubelet(kube, tmp_path / "node"):
        ...  # an agent creates Jobs; their commands run; the Jobs complete or fail
"""

from __future__ import annotations

import base64
import os
import random
import signal
import string
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from kube_standin import KubeStandIn

POLL_SECONDS = 0.1
GRACE_SECONDS = 2.0


class Kubelet:
    """Runs the stand-in's Jobs as processes; a context manager (leaving it kills what still runs)."""

    def __init__(self, kube: KubeStandIn, folder: Path) -> None:
        self.kube = kube
        self.folder = folder
        self._seen: set[str] = set()  # uids of the Jobs given a pod
        self._processes: dict[tuple[str, str], subprocess.Popen[str]] = {}  # (namespace, pod) -> its process
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def __enter__(self) -> Kubelet:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._loop = threading.Thread(target=self._serve, name="kubelet", daemon=True)
        self._loop.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stop.set()
        self._loop.join()
        with self._lock:
            for process in self._processes.values():
                _signal_group(process, signal.SIGKILL)
        for thread in self._threads:
            thread.join(timeout=10)

    def _serve(self) -> None:
        while not self._stop.is_set():
            for (namespace, name), job in self.kube.snapshot("batch/v1/jobs").items():
                uid = job["metadata"]["uid"]
                if uid not in self._seen:
                    self._seen.add(uid)
                    self._start_pod(namespace, name, uid, job)
            self._stop_deleted_pods()
            self._stop.wait(POLL_SECONDS)

    def _start_pod(self, namespace: str, job_name: str, uid: str, job: dict[str, Any]) -> None:
        template = job["spec"]["template"]
        pod = f"{job_name}-{''.join(random.choices(string.ascii_lowercase + string.digits, k=5))}"[:63]
        labels = {**(template.get("metadata") or {}).get("labels", {}), "job-name": job_name, "controller-uid": uid}
        owner = {"apiVersion": "batch/v1", "kind": "Job", "name": job_name, "uid": uid, "controller": True}
        self.kube.create_pod(namespace, pod, labels, owner=owner)
        self.kube.event(namespace, "Job", job_name, uid, "Normal", "SuccessfulCreate", f"Created pod: {pod}")
        thread = threading.Thread(target=self._run, args=(namespace, pod, template["spec"]["containers"][0]),
                                  name=f"pod-{pod}", daemon=True)
        self._threads.append(thread)
        thread.start()

    def _run(self, namespace: str, pod: str, container: dict[str, Any]) -> None:
        try:
            env = self._environment(namespace, container.get("env") or [])
        except LookupError as exc:
            self._update(namespace, pod, container_statuses=[{"state": {"waiting": {
                "reason": "CreateContainerConfigError", "message": str(exc)}}}])
            return
        workdir = self.folder / namespace / pod
        workdir.mkdir(parents=True, exist_ok=True)
        env.setdefault("HOME", str(workdir))
        argv = [*(container.get("command") or []), *(container.get("args") or [])]
        with self._lock:
            if self._stop.is_set():
                return
            process = subprocess.Popen(argv, env=env, cwd=workdir, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                       stderr=subprocess.STDOUT, text=True, errors="replace", start_new_session=True)
            self._processes[namespace, pod] = process
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        self._update(namespace, pod, phase="Running", container_statuses=[{"state": {"running": {"startedAt": started}}}])
        for line in process.stdout:
            self._log(namespace, pod, line.rstrip("\n"))
        code = process.wait()
        with self._lock:
            self._processes.pop((namespace, pod), None)
        terminated = {"exitCode": code, "reason": "Completed" if code == 0 else "Error", "startedAt": started,
                      "finishedAt": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        self._update(namespace, pod, phase="Succeeded" if code == 0 else "Failed",
                     container_statuses=[{"state": {"terminated": terminated}}])

    def _environment(self, namespace: str, entries: list[dict[str, Any]]) -> dict[str, str]:
        """The container's environment: this Python first on PATH, then its `env` entries (Secrets read)."""
        env = {"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
        secrets = None
        for entry in entries:
            if "value" in entry:
                env[entry["name"]] = str(entry["value"])
                continue
            reference = (entry.get("valueFrom") or {}).get("secretKeyRef")
            if reference is None:
                continue
            secrets = secrets if secrets is not None else self.kube.snapshot("v1/secrets")
            secret = secrets.get((namespace, reference["name"]))
            value = _secret_value(secret, reference["key"]) if secret else None
            if value is not None:
                env[entry["name"]] = value
            elif not reference.get("optional"):
                raise LookupError(f'secret "{reference["name"]}" not found')
        return env

    def _stop_deleted_pods(self) -> None:
        with self._lock:
            running = list(self._processes.items())
        if not running:
            return
        pods = self.kube.snapshot("v1/pods")
        for key, process in running:
            if key not in pods and process.poll() is None:
                _signal_group(process, signal.SIGTERM)
                kill = threading.Timer(GRACE_SECONDS, _signal_group, (process, signal.SIGKILL))
                kill.daemon = True
                kill.start()

    def _update(self, namespace: str, pod: str, **status: Any) -> None:
        try:
            self.kube.update_pod(namespace, pod, **status)
        except KeyError:  # deleted meanwhile: nothing to report to
            pass

    def _log(self, namespace: str, pod: str, line: str) -> None:
        try:
            self.kube.pod_log(namespace, pod, [line])
        except KeyError:
            pass


def _secret_value(secret: dict[str, Any], key: str) -> str | None:
    if key in (secret.get("stringData") or {}):
        return secret["stringData"][key]
    if key in (secret.get("data") or {}):
        return base64.b64decode(secret["data"][key]).decode()
    return None


def _signal_group(process: subprocess.Popen[str], signum: int) -> None:
    if process.poll() is None:
        try:
            os.killpg(process.pid, signum)
        except ProcessLookupError:
            pass
