"""Following a launch run's pods on Kubernetes: what a run's pods say about the run.

The run's pod events come from its namespace's shared watch (`kubernetes_watch`),
which selects the pods labelled `prefect-launch/run-id` and hands each run its own.
From the pods it derives the run's progress: why a pod waits (unschedulable, image pull, quota, config) goes to
the run's log and its `Progress` each time it changes, as does the warning on
the run's object while it has no pod (a Job's `FailedCreate: ... exceeded
quota`); the first pod running starts the run; a pod deleted after it ended
counts with its last state (a Job's TTL removes its pods); a pod that never starts within
the start timeout fails the run; pod logs stream into the run once a container
runs; all pods Succeeded completes the run, a Failed pod fails it with its
reason.

Example, why a run fails when its pod did::

    >>> failure_reason({"status": {"containerStatuses": [{"name": "main", "state": {"terminated": {"exitCode": 3}}}]}})
    'container main exited with code 3 (Error)'
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Callable

from prefect_launch.kube import pending_reason
from prefect_launch.settings import settings
from prefect_launch.targets.base import Outcome, Progress
from prefect_launch.targets.process import Log

# DisruptionTarget reasons that mean the pod was taken away, not that the job failed.
PREEMPTION_REASONS = {"EvictionByEvictionAPI", "PreemptionByScheduler", "TerminationByKubelet"}


def preemption_reason(pod: dict[str, Any]) -> str | None:
    """The DisruptionTarget reason when the pod was evicted or preempted."""
    for condition in (pod.get("status") or {}).get("conditions") or []:
        if (condition.get("type") == "DisruptionTarget" and condition.get("status") == "True"
                and condition.get("reason") in PREEMPTION_REASONS):
            return condition["reason"]
    return None


def failure_reason(pod: dict[str, Any]) -> str:
    status = pod.get("status") or {}
    for container in status.get("containerStatuses") or []:
        terminated = (container.get("state") or {}).get("terminated")
        if terminated and terminated.get("exitCode"):
            detail = terminated.get("reason") or "Error"
            return f"container {container.get('name')} exited with code {terminated['exitCode']} ({detail})"
    return status.get("reason") or status.get("message") or "pod failed"


@dataclass
class RunPods:
    """What the watch has seen of a run's pods, and the decisions drawn from it."""

    progress: Progress
    started_at: float = field(default_factory=time.monotonic)
    # Read once: the run checks it at every wake (every few seconds), and reading settings parses the environment.
    start_timeout: float = field(default_factory=lambda: settings().k8s_start_timeout)
    pods: dict[str, dict[str, Any]] = field(default_factory=dict)
    reasons: dict[str, str | None] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    # The last warning event on the run's object (the Job), which says why no pod exists yet.
    object_warning: str | None = None

    def see(self, event_type: str, pod: dict[str, Any], log: Log, on_running: Callable[[str], None]) -> None:
        name = pod["metadata"]["name"]
        if event_type == "DELETED" and (pod.get("status") or {}).get("phase") not in ("Succeeded", "Failed"):
            self.pods.pop(name, None)
            return
        # A pod deleted after it ended (its Job's TTL ran out) still says how it ended.
        self.pods[name] = pod
        reason = pending_reason(pod)
        if reason != self.reasons.get(name):
            self.reasons[name] = reason
            if reason:
                log.warning("Pod %s is waiting: %s", name, reason)
            self.progress.waiting(self.waiting_for())
        phase = (pod.get("status") or {}).get("phase")
        if phase in ("Running", "Succeeded", "Failed") and name not in self.running:
            self.running.add(name)
            self.progress.started()
            on_running(name)

    def see_object_warning(self, warning: str | None, log: Log) -> None:
        """The run's object's latest warning event (`FailedCreate: ... exceeded quota`); it counts while no pod exists."""
        if warning != self.object_warning:
            self.object_warning = warning
            if warning:
                log.warning("No pod yet: %s", warning)
            self.progress.waiting(self.waiting_for())

    def waiting_for(self) -> str:
        """Why the run's pods are not running, each reason once; "" when nothing holds them."""
        reasons = [r for r in self.reasons.values() if r] or ([self.object_warning] if self.object_warning and not self.pods else [])
        return "; ".join(dict.fromkeys(reasons))

    def outcome(self) -> Outcome | None:
        for name, pod in self.pods.items():
            reason = preemption_reason(pod)
            if reason:
                return Outcome(state="preempted", message=f"pod {name} was preempted ({reason})")
        phases = {name: (pod.get("status") or {}).get("phase") for name, pod in self.pods.items()}
        failed = [name for name, phase in phases.items() if phase == "Failed"]
        if failed:
            return Outcome(state="failed", message=f"pod {failed[0]}: {failure_reason(self.pods[failed[0]])}")
        if phases and all(phase == "Succeeded" for phase in phases.values()):
            return Outcome(state="completed")
        if not self.running and time.monotonic() - self.started_at > self.start_timeout:
            waiting = self.waiting_for() or "no pod was scheduled"
            return Outcome(state="failed", message=f"no pod started within {self.start_timeout:.0f} s ({waiting})")
        return None
