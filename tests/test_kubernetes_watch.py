"""The shared pod watch (`prefect_launch/targets/kubernetes_watch.py`) against the kmock API stand-in.

Many runs in one namespace share one list and one watch connection, each run
sees only its own attempt's pods, a 410 relists once for all of them, and the
watch ends when its last run has gone. The end-to-end runs through an agent are
in test_kubernetes.py.
"""

from __future__ import annotations

import time

import kmock
import kubernetes
import pytest

from kube_standin import KubeStandIn
from prefect_launch.errors import LaunchError
from prefect_launch.targets.fanout import shared_fanouts
from prefect_launch.targets.kubernetes_watch import WATCH_SECONDS, NamespacePods, watch_pods


def _api(kube: KubeStandIn) -> kubernetes.client.ApiClient:
    return kubernetes.client.ApiClient(kubernetes.client.Configuration(host=kube.host))


def _labels(run_id: str, attempt: int = 0) -> dict[str, str]:
    return {"prefect-launch/run-id": run_id, "prefect-launch/attempt": str(attempt)}


def _seen(subscription, count: int, timeout: float = 30) -> list[tuple[str, str, str]]:
    """The next `count` events of a subscription as (type, pod, phase), waiting up to `timeout` for them."""
    deadline = time.monotonic() + timeout
    seen: list[tuple[str, str, str]] = []
    while len(seen) < count:
        assert time.monotonic() < deadline, f"saw only {seen} within {timeout} s"
        seen += [(kind, pod["metadata"]["name"], pod["status"]["phase"]) for kind, pod in subscription.take(timeout=0.2)]
    return seen


def _pod_reads(kube: KubeStandIn, namespace: str, watching: bool) -> list:
    action = kmock.action.WATCH if watching else kmock.action.LIST
    return [r for r in kube.requests() if r.url.path == f"/api/v1/namespaces/{namespace}/pods" and r.action == action]


def _wait_for_watch(kube: KubeStandIn, namespace: str) -> None:
    deadline = time.monotonic() + 30
    while not _pod_reads(kube, namespace, watching=True):
        assert time.monotonic() < deadline, f"no pod watch in {namespace} within 30 s"
        time.sleep(0.05)


def test_runs_in_a_namespace_share_one_watch_and_see_only_their_own_pods(kube):
    api = _api(kube)
    began = time.monotonic()
    with watch_pods(api, "shared", "run-a", "0") as run_a, watch_pods(_api(kube), "shared", "run-b", "0") as run_b, \
            watch_pods(api, "shared", "run-a", "1") as run_a_again:
        _wait_for_watch(kube, "shared")  # so each pod's every change comes as a watch event
        kube.create_pod("shared", "a-0", _labels("run-a"))
        kube.create_pod("shared", "b-0", _labels("run-b"))
        kube.create_pod("shared", "a-1", _labels("run-a", attempt=1))
        kube.create_pod("other", "a-elsewhere", _labels("run-a"))  # another namespace's pod is another watch's
        kube.update_pod("shared", "a-0", phase="Running")
        assert _seen(run_a, 2) == [("ADDED", "a-0", "Pending"), ("MODIFIED", "a-0", "Running")]
        assert _seen(run_b, 1) == [("ADDED", "b-0", "Pending")]
        assert _seen(run_a_again, 1) == [("ADDED", "a-1", "Pending")]
        # Three runs, one list and one open watch: every watch call is the namespace's, by the run-id label alone.
        assert len(_pod_reads(kube, "shared", watching=False)) == 1
        watches = _pod_reads(kube, "shared", watching=True)
        assert watches and all(r.params["labelSelector"] == "prefect-launch/run-id" for r in watches)
        assert len(watches) <= 1 + (time.monotonic() - began) / WATCH_SECONDS

        # A run that subscribes later gets its pods the watch already knows, then their changes.
        with watch_pods(api, "shared", "run-b", "0") as run_b_late:
            assert _seen(run_b_late, 1) == [("ADDED", "b-0", "Pending")]
            kube.update_pod("shared", "b-0", phase="Succeeded")
            assert _seen(run_b_late, 1) == [("MODIFIED", "b-0", "Succeeded")]
            assert _seen(run_b, 1) == [("MODIFIED", "b-0", "Succeeded")]

        # An expired resourceVersion: one relist for all runs, each told of its pods as they are now.
        kube.expire_watches()
        kube.delete_pod("shared", "b-0")
        kube.update_pod("shared", "a-0", phase="Succeeded")
        assert ("MODIFIED", "a-0", "Succeeded") in _seen(run_a, 1, timeout=WATCH_SECONDS * 4)
        assert ("DELETED", "b-0", "Succeeded") in _seen(run_b, 1, timeout=WATCH_SECONDS * 4)
        assert len(_pod_reads(kube, "shared", watching=False)) == 2
        assert run_a_again.take(timeout=0) == []  # nothing of its pod changed: the relist says nothing

    # The last run gone, the watch ends at its next round and forgets what it saw.
    deadline = time.monotonic() + WATCH_SECONDS * 4
    while shared_fanouts(NamespacePods):
        assert time.monotonic() < deadline, "the watch outlived its last run"
        time.sleep(0.1)


def test_a_refused_watch_fails_every_run_in_its_namespace_with_one_line(kube):
    api = _api(kube)
    # Above the stand-in's own pod handlers: this namespace's pods may not be listed.
    (kube.kmock ** 10)["get /api/v1/namespaces/locked/pods"] << 403 << {
        "kind": "Status", "apiVersion": "v1", "status": "Failure", "code": 403, "reason": "Forbidden",
        "message": 'pods is forbidden: User "agent" cannot list resource "pods" in the namespace "locked"'}
    with watch_pods(api, "locked", "run-a", "0") as run_a, watch_pods(api, "locked", "run-b", "0") as run_b:
        for run in (run_a, run_b):
            with pytest.raises(LaunchError, match='Kubernetes pod watch in namespace locked failed: HTTP 403.*cannot list'):
                _seen(run, 1)
