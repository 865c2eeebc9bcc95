"""Kubernetes end to end: the real kubernetes client in the agent against the kmock API stand-in.

There is no cluster and no controller: the test plays the scheduler and the
kubelet, creating the run's pods and moving them through their phases
(`tests/kube_standin.py`). Everything the agent sends is what a real API
server would receive.
"""

from __future__ import annotations

import json
import re
import time
from pathlib import Path

import pytest
import yaml

from conftest import (DEAD_AGENT, SEEDS, cancel_run, cli, dry_run_submission, flow_run_of, flow_runs_named, held_by, launch,
                      run_id_of, run_logs, wait_for_attempts, wait_for_final, wait_for_log, write_json)
from helm_chart import render, unauthorized
from kube_kubelet import Kubelet
from kube_standin import KubeStandIn
from prefect_launch.wandb_files import records, run_files

IMAGE = "registry.local/train:1"
API_KEY = "wandb-key-5c1e7a"


@pytest.fixture
def kube_agent(kube, make_queue, start_agent, monkeypatch, tmp_path):
    def start(queue_config: dict, cluster: KubeStandIn | None = None, **env: str) -> str:
        cluster = cluster or kube
        for name, value in {"KUBECONFIG": cluster.kubeconfig(tmp_path / "kubeconfig"), "WANDB_API_KEY": API_KEY,
                            **env}.items():
            monkeypatch.setenv(name, value)
        path = tmp_path / "queue.yaml"
        path.write_text(yaml.safe_dump(queue_config))
        queue = make_queue("--resource", "kubernetes", "--config", str(path), prefix="k8s")
        start_agent("-q", queue)
        return queue

    return start


def _labels(run_id: str, attempt: int = 0) -> dict[str, str]:
    """The labels the run's pods inherit from its pod templates (the watch selects on both)."""
    return {"prefect-launch/run-id": run_id, "prefect-launch/attempt": str(attempt)}


def _wait_for(what, lookup, timeout: float = 60):
    deadline = time.monotonic() + timeout
    while (found := lookup()) is None:
        assert time.monotonic() < deadline, f"no {what} within {timeout} s"
        time.sleep(0.2)
    return found


def _sent(stored) -> dict:
    """The body the agent sent for a stored object, as plain JSON."""
    return json.loads(json.dumps(stored.history[0], default=dict))


def _job(kube: KubeStandIn, namespace: str, run_id: str):
    return _wait_for(f"Job of {run_id}", lambda: kube.objects("batch/v1/jobs").get((namespace, f"prefect-launch-{run_id}")))


def _secret(kube: KubeStandIn, namespace: str, run_id: str):
    return kube.objects("v1/secrets").get((namespace, f"prefect-launch-{run_id}"))


def test_job_runs_with_a_secret_pending_reasons_logs_and_a_resumed_watch(kube, kube_agent, tmp_path):
    queue = kube_agent(yaml.safe_load((SEEDS / "000_k8s_job_1.yaml").read_text()))
    run_id = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py"))
    job = _job(kube, "wandb", run_id)
    body = _sent(job)
    # The dry run of the same job and run id shows exactly what the agent sent the API server.
    assert dry_run_submission("-q", queue, "-d", IMAGE, "-E", "python train.py", "--run-id", run_id,
                              home_dir=tmp_path / "home") == body
    (container,) = body["spec"]["template"]["spec"]["containers"]
    assert container["image"] == IMAGE and container["securityContext"]["allowPrivilegeEscalation"] is False
    assert API_KEY not in json.dumps(body)  # the key is only in the run's Secret
    api_key = next(e for e in container["env"] if e["name"] == "WANDB_API_KEY")
    assert api_key["valueFrom"]["secretKeyRef"]["name"] == f"prefect-launch-{run_id}"
    secret = _secret(kube, "wandb", run_id)
    assert secret is not None and _sent(secret)["stringData"] == {"WANDB_API_KEY": API_KEY}

    pod = f"prefect-launch-{run_id}-x7k2p"
    kube.create_pod("wandb", pod, _labels(run_id))
    kube.update_pod("wandb", pod, conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                               "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
    wait_for_log(run_id, lambda line: "Unschedulable: 0/3 nodes are available" in line)
    kube.update_pod("wandb", pod, conditions=[{"type": "PodScheduled", "status": "True"}],
                    container_statuses=[{"name": "launch", "state": {"waiting": {
                        "reason": "ErrImagePull", "message": f"pull access denied for {IMAGE}"}}}])
    wait_for_log(run_id, lambda line: "ErrImagePull" in line)
    kube.expire_watches()  # the next watch answers 410: the monitor relists and goes on
    kube.update_pod("wandb", pod, phase="Running", container_statuses=[{"name": "launch", "state": {"running": {}}}])
    kube.pod_log("wandb", pod, ["epoch 1 loss 0.5", "epoch 2 loss 0.25"])
    wait_for_log(run_id, lambda line: line == "epoch 2 loss 0.25")
    kube.update_pod("wandb", pod, phase="Succeeded",
                    container_statuses=[{"name": "launch", "state": {"terminated": {"exitCode": 0}}}])
    flow_run = wait_for_final(run_id, timeout=60)
    assert flow_run.state.is_completed(), flow_run.state
    assert run_logs(flow_run.id).count("epoch 1 loss 0.5") == 1
    assert _secret(kube, "wandb", run_id).deleted  # per-run secrets go when the run ends


def test_failed_pod_fails_the_run_and_cancel_deletes_the_job(kube, kube_agent):
    queue = kube_agent({"namespace": "team"})
    failing = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py"))
    _job(kube, "team", failing)
    pod = f"prefect-launch-{failing}-a1"
    kube.create_pod("team", pod, _labels(failing), phase="Running")
    kube.update_pod("team", pod, phase="Failed", container_statuses=[{"name": "launch", "state": {
        "terminated": {"exitCode": 3, "reason": "Error"}}}])
    state = wait_for_final(failing, timeout=60).state
    assert state.is_failed() and "exited with code 3" in state.message

    cancelled = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py"))
    job = _job(kube, "team", cancelled)
    kube.create_pod("team", f"prefect-launch-{cancelled}-b2", _labels(cancelled), phase="Running")
    cancel_run(cancelled)
    assert wait_for_final(cancelled, timeout=60).state.is_cancelled()
    assert job.deleted
    deletes = [r for r in kube.kmock["delete"] if r.url.path.endswith(f"/jobs/prefect-launch-{cancelled}")]
    assert deletes and deletes[0].params["propagationPolicy"] == "Background"


def test_a_pod_that_never_starts_times_out(kube, kube_agent):
    queue = kube_agent({"namespace": "slow"}, PREFECT_LAUNCH_K8S_START_TIMEOUT="4")
    run_id = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py"))
    _job(kube, "slow", run_id)
    kube.create_pod("slow", f"prefect-launch-{run_id}-c3", _labels(run_id))
    kube.update_pod("slow", f"prefect-launch-{run_id}-c3", conditions=[
        {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "exceeded quota: gpu"}])
    state = wait_for_final(run_id, timeout=90).state
    assert state.is_failed()
    assert "no pod started within 4 s" in state.message and "exceeded quota: gpu" in state.message


def test_a_new_agent_adopts_the_job_of_an_agent_killed_mid_run(kube, kube_agent, start_agent):
    queue = kube_agent({"namespace": "adopt"})
    run_id = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py"))
    job = _job(kube, "adopt", run_id)
    job_name = f"prefect-launch-{run_id}"
    pod = f"{job_name}-d4"
    kube.create_pod("adopt", pod, _labels(run_id), phase="Running")
    kube.pod_log("adopt", pod, ["epoch 1 before the crash"])
    wait_for_log(run_id, lambda line: line == "epoch 1 before the crash")
    start_agent.agents[-1].kill()

    creates = lambda: [r for r in kube.requests() if r.action and r.action.name.lower() == "create"
                       and r.resource and r.resource.plural == "jobs" and r.data["metadata"]["name"] == job_name]
    assert len(creates()) == 1
    new_agent = start_agent("-q", queue)
    wait_for_log(run_id, lambda line: line.startswith("Following Job adopt/"))
    kube.pod_log("adopt", pod, ["epoch 2 after the crash"])
    kube.update_pod("adopt", pod, phase="Succeeded", container_statuses=[{"name": "launch", "state": {
        "terminated": {"exitCode": 0, "reason": "Completed"}}}])
    flow_run = wait_for_final(run_id, timeout=60)
    assert flow_run.state.is_completed(), flow_run.state
    assert len(creates()) == 1  # followed, never created again
    assert not job.deleted and _secret(kube, "adopt", run_id).deleted  # the adopter cleans up the run's Secret
    lines = run_logs(flow_run.id)
    assert "epoch 2 after the crash" in lines
    assert any("Adopted on agent" in line and "is gone; following its job" in line for line in lines)
    assert "Adopted 1 running job(s) of a dead agent" in new_agent.output()


def test_custom_resource_is_created_with_its_plural_and_every_replica_followed(kube, kube_agent):
    queue = kube_agent(yaml.safe_load((SEEDS / "000_k8s_custom_resource_1.yaml").read_text()))
    run_id = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py"))
    created = _wait_for("PyTorchJob", lambda: kube.objects("kubeflow.org/v1/pytorchjobs").get(
        ("default", f"{run_id}-pytorch-job")))
    replicas = _sent(created)["spec"]["pytorchReplicaSpecs"]
    assert replicas["Worker"]["template"]["metadata"]["labels"] == _labels(run_id)
    pods = [f"{run_id}-pytorch-job-master-0", f"{run_id}-pytorch-job-worker-0", f"{run_id}-pytorch-job-worker-1"]
    for pod in pods:
        kube.create_pod("default", pod, _labels(run_id), phase="Running")
    kube.update_pod("default", pods[0], phase="Succeeded")
    time.sleep(1)
    assert not flow_run_of(run_id).state.is_final()  # the workers still run
    for pod in pods[1:]:
        kube.update_pod("default", pod, phase="Succeeded")
    assert wait_for_final(run_id, timeout=60).state.is_completed()
    # Everything the agent asked of the API server so far (Jobs, Secrets, pod watches and logs,
    # discovery, this PyTorchJob), the Helm chart's Roles allow in the queues' namespaces.
    namespaces = ["default", "team", "slow", "spot", "adopt", "ttl"]  # the namespaces this file's queues name (wandb is the agent's)
    assert unauthorized(kube.requests(), render({"additionalTargetNamespaces": namespaces})) == []


def _job_creates(kube: KubeStandIn, run_id: str) -> list:
    return [r for r in kube.kmock["post"]
            if r.url.path.endswith("/jobs") and (r.data or {}).get("metadata", {}).get("name") == f"prefect-launch-{run_id}"]


def test_preemption_requeues_the_same_run_five_times_then_fails(kube, kube_agent):
    queue = kube_agent({"namespace": "spot"})
    run_id = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py"))
    reasons = ["PreemptionByScheduler", "EvictionByEvictionAPI", "TerminationByKubelet"]
    for attempt in range(6):
        create = _wait_for(f"Job of attempt {attempt}", lambda: (_job_creates(kube, run_id)[attempt:] or [None])[0])
        env = {e["name"]: e.get("value") for e in create.data["spec"]["template"]["spec"]["containers"][0]["env"]}
        assert env["WANDB_RUN_ID"] == run_id  # the same W&B run every time
        assert env.get("WANDB_RESUME") == ("allow" if attempt else None)
        pod = f"prefect-launch-{run_id}-p{attempt}"
        kube.create_pod("spot", pod, _labels(run_id, attempt), phase="Running")
        kube.update_pod("spot", pod, phase="Failed", conditions=[
            {"type": "DisruptionTarget", "status": "True", "reason": reasons[attempt % 3]}])
    runs = wait_for_attempts(run_id, 6, timeout=60)
    assert len(runs) == 6 and len(_job_creates(kube, run_id)) == 6  # 5 requeues, never a 7th submission
    names = sorted(run.state.name for run in runs)
    assert names == ["Failed"] + ["Preempted"] * 5, names
    final = next(run for run in runs if run.state.is_failed())
    assert "preempted 6 times" in final.state.message and "TerminationByKubelet" in final.state.message



def _status_once(run_id: str, shows, timeout: float = 60) -> str:
    """`prefect-launch status RUN` once its output satisfies `shows`."""
    deadline = time.monotonic() + timeout
    while not shows(output := cli("status", run_id).stdout):
        assert time.monotonic() < deadline, f"status never showed it within {timeout} s:\n{output}"
        time.sleep(0.5)
    return output


def test_status_shows_why_the_job_waits_then_its_start_and_run(kube, kube_agent):
    queue = kube_agent({"namespace": "waits"})
    run_id = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py"))
    job_name = f"prefect-launch-{run_id}"
    _job(kube, "waits", run_id)
    kube.warn("waits", "Job", job_name, "FailedCreate",
              f'Error creating: pods "{job_name}-q1" is forbidden: exceeded quota: gpu-quota, requested: nvidia.com/gpu=8')
    status = _status_once(run_id, lambda out: "exceeded quota: gpu-quota" in out)
    assert "waiting   FailedCreate: Error creating" in status
    assert re.search(r"^  start\s+\S+ s\s+ongoing: FailedCreate: .*exceeded quota", status, re.M), status

    pod = f"{job_name}-q1"
    kube.create_pod("waits", pod, _labels(run_id))
    kube.update_pod("waits", pod, conditions=[{"type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                                               "message": "0/3 nodes are available: 3 Insufficient nvidia.com/gpu."}])
    status = _status_once(run_id, lambda out: "Unschedulable" in out)
    assert "waiting   Unschedulable: 0/3 nodes are available: 3 Insufficient nvidia.com/gpu." in status
    assert "quota" not in status  # the pod's own reason, once a pod exists

    kube.update_pod("waits", pod, phase="Running", container_statuses=[{"name": "launch", "state": {"running": {}}}])
    status = _status_once(run_id, lambda out: re.search(r"^  run\s+\S+ s\s+ongoing", out, re.M) is not None)
    assert "waiting" not in status and re.search(r"^  start\s+\S+ s\s+Unschedulable", status, re.M), status
    kube.update_pod("waits", pod, phase="Succeeded",
                    container_statuses=[{"name": "launch", "state": {"terminated": {"exitCode": 0}}}])
    assert wait_for_final(run_id, timeout=60).state.is_completed()
    status = cli("status", run_id).stdout
    assert re.findall(r"^  (submit|start|run)\s", status, re.M) == ["submit", "start", "run"] and "ongoing" not in status


def _jobs_created(kube: KubeStandIn, run_id: str) -> int:
    return sum(1 for r in kube.requests() if r.action and r.action.name.lower() == "create" and r.resource
               and r.resource.plural == "jobs" and r.data["metadata"]["name"] == f"prefect-launch-{run_id}")


def test_jobs_removed_after_their_ttl_while_no_agent_followed_them_end_as_their_events_say(kube, kube_agent,
                                                                                          start_agent, tmp_path):
    """The agent dies; the jobs end and their TTL removes Jobs and pods; the next agent reads each end from the
    Job controller's events. A Job deleted before it ended leaves no such event: Crashed, saying so, never a guess.
    One Job outlives the restart without its pod (deleted after it ended): the new agent follows it, sees no pod,
    and settles it from its events once the Job is deleted too, not after a start timeout."""
    from kubernetes import client

    queue = kube_agent({"namespace": "ttl", "spec": {"ttlSecondsAfterFinished": 1}})
    runs = {end: run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py")) for end in ("ok", "exit 3", "deleted")}
    longer_ttl = write_json(tmp_path / "ttl.json", {"resource_args": {"spec": {"ttlSecondsAfterFinished": 3600}}})
    runs["followed"] = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py", "-c", str(longer_ttl)))
    jobs = {}
    for end, run_id in runs.items():
        jobs[end] = _job(kube, "ttl", run_id)
        kube.create_pod("ttl", f"prefect-launch-{run_id}-t1", _labels(run_id), phase="Running")
        # As the Job controller records each pod it creates: the deleted Job's event says it was created.
        kube.event("ttl", "Job", f"prefect-launch-{run_id}", None, "Normal", "SuccessfulCreate",
                   f"Created pod: prefect-launch-{run_id}-t1")
        kube.pod_log("ttl", f"prefect-launch-{run_id}-t1", [f"{end} is running"])
    for end, run_id in runs.items():
        wait_for_log(run_id, lambda line: line == f"{end} is running")
    start_agent.agents[-1].kill()

    kube.update_pod("ttl", f"prefect-launch-{runs['ok']}-t1", phase="Succeeded",
                    container_statuses=[{"name": "launch", "state": {"terminated": {"exitCode": 0}}}])
    kube.update_pod("ttl", f"prefect-launch-{runs['exit 3']}-t1", phase="Failed",
                    container_statuses=[{"name": "launch", "state": {"terminated": {"exitCode": 3, "reason": "Error"}}}])
    batch = client.BatchV1Api(client.ApiClient(client.Configuration(host=kube.host)))
    batch.delete_namespaced_job(f"prefect-launch-{runs['deleted']}", "ttl", propagation_policy="Background")
    followed_pod = f"prefect-launch-{runs['followed']}-t1"
    kube.update_pod("ttl", followed_pod, phase="Succeeded",
                    container_statuses=[{"name": "launch", "state": {"terminated": {"exitCode": 0}}}])
    kube.delete_pod("ttl", followed_pod)
    for end in ("ok", "exit 3", "deleted"):  # the TTL controller (and the garbage collector) removed Jobs and pods
        _wait_for(f"{end} Job gone", lambda: True if jobs[end].deleted else None, timeout=30)
    assert not [pod for (namespace, _), pod in kube.snapshot("v1/pods").items() if namespace == "ttl"]

    start_agent("-q", queue)
    wait_for_log(runs["followed"], lambda line: line.startswith("Following Job ttl/"))
    assert not flow_run_of(runs["followed"]).state.is_final()  # found, with no pod left: followed while it exists
    batch.delete_namespaced_job(f"prefect-launch-{runs['followed']}", "ttl", propagation_policy="Background")
    ok, failed, deleted, followed = (wait_for_final(run_id, timeout=90).state for run_id in runs.values())
    assert followed.is_completed(), followed
    assert any("its events say how it ended: Completed" in line for line in run_logs(flow_run_of(runs["followed"]).id))
    assert ok.is_completed(), ok
    assert failed.is_failed() and "BackoffLimitExceeded" in failed.message and "from its events" in failed.message, failed
    assert deleted.is_crashed() and "is no longer on kubernetes: not submitted again" in deleted.message, deleted
    assert all(_jobs_created(kube, run_id) == 1 for run_id in runs.values())  # none created again


JOB_WITH_A_WANDB_RUN = """import os, sys, time
print("up", flush=True)
while not os.path.exists(sys.argv[1]):
    time.sleep(0.1)
os.makedirs(os.environ["WANDB_DIR"], exist_ok=True)
import wandb
wandb.init(project="ttl")
sys.exit(int(sys.argv[2]))
"""


def test_a_job_gone_with_its_events_ends_as_its_wandb_run_recorded(kube_agent, start_agent, tmp_path):
    """The Job and its events are gone (its TTL, then the API server's event TTL, ran out while no agent
    followed it): the exit code its W&B run recorded, in the WANDB_DIR the queue config put on a folder the agent
    reads, settles the run. The stand-in's kubelet runs the job, wandb.init included."""
    script, release = tmp_path / "job.py", tmp_path / "release"
    script.write_text(JOB_WITH_A_WANDB_RUN)
    env = [{"name": "WANDB_DIR", "value": str(tmp_path / "wandb-runs" / "${run_id}")},
           {"name": "WANDB_MODE", "value": "offline"}, {"name": "WANDB_SILENT", "value": "true"}]
    config = {"namespace": "wb", "spec": {"ttlSecondsAfterFinished": 1, "template": {"spec": {"containers": [{"env": env}]}}}}
    with KubeStandIn() as cluster, Kubelet(cluster, tmp_path / "node"):
        queue = kube_agent(config, cluster=cluster)
        runs = {code: run_id_of(launch("-q", queue, "-d", IMAGE, "-E", f"python {script} {release} {code}"))
                for code in (0, 3)}
        for run_id in runs.values():
            wait_for_log(run_id, lambda line: line == "up")
        start_agent.agents[-1].kill()
        release.touch()
        deadline = time.monotonic() + 60
        while any(key[1] == f"prefect-launch-{run_id}" for key in cluster.snapshot("batch/v1/jobs") for run_id in runs.values()):
            assert time.monotonic() < deadline, "the TTL controller did not remove the Jobs"
            time.sleep(0.2)
        cluster.expire_events()

        start_agent("-q", queue)
        completed, failed = (wait_for_final(run_id, timeout=90) for run_id in runs.values())
        assert completed.state.is_completed(), completed.state
        assert failed.state.is_failed() and "exited with code 3 (recorded by its W&B run" in failed.state.message, failed.state
        assert any("its W&B run" in line and "recorded exit code 0" in line for line in run_logs(completed.id))
        assert all(_jobs_created(cluster, run_id) == 1 for run_id in runs.values())


def test_the_cluster_comes_from_a_prefect_kubernetes_block_named_in_the_agent_config(kube, make_queue, start_agent,
                                                                                       monkeypatch, tmp_path):
    """`kubernetes.cluster: kubernetes-cluster-config/NAME` in launch-config.yaml: the agent reaches the cluster the
    block's kubeconfig names (KUBECONFIG points nowhere), as its AWS and GCP credentials come from blocks; a
    `kubernetes-credentials/NAME` block holding that cluster config works the same."""
    from conftest import unique
    from prefect_kubernetes.credentials import KubernetesClusterConfig, KubernetesCredentials

    cluster = KubernetesClusterConfig.from_file(kube.kubeconfig(tmp_path / "block-kubeconfig"))
    config_block, credentials_block = unique("standin"), unique("standin-credentials")
    cluster.save(config_block)
    KubernetesCredentials(cluster_config=cluster).save(credentials_block)
    monkeypatch.setenv("KUBECONFIG", str(tmp_path / "no-such-kubeconfig"))
    monkeypatch.setenv("WANDB_API_KEY", API_KEY)
    queue = make_queue("--resource", "kubernetes", prefix="k8s")
    for reference in (f"kubernetes-cluster-config/{config_block}", f"kubernetes-credentials/{credentials_block}"):
        agent_config = tmp_path / f"{reference.split('/')[0]}.yaml"
        agent_config.write_text(yaml.safe_dump({"queues": [queue], "kubernetes": {"cluster": reference}}))
        assert json.loads(cli("agent", "--config", str(agent_config), "--check").stdout)["kubernetes"] == {"cluster": reference}
        agent = start_agent("--config", str(agent_config))
        run_id = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py"))
        # Created through the block's cluster, in the namespace a queue config without one gets (the context's: default) (the agent's first job also imports prefect-kubernetes: a longer deadline).
        try:
            _wait_for(f"Job of {run_id}", lambda: kube.objects("batch/v1/jobs").get(("default", f"prefect-launch-{run_id}")),
                      timeout=180)
        except AssertionError:
            raise AssertionError(f"{flow_run_of(run_id).state}\n{agent.output()[-3000:]}")
        kube.create_pod("default", f"prefect-launch-{run_id}-p1", _labels(run_id), phase="Succeeded")
        kube.set_job_status("default", f"prefect-launch-{run_id}", {"succeeded": 1})
        assert wait_for_final(run_id, timeout=90).state.is_completed()
        agent.stop()

    missing = tmp_path / "missing.yaml"
    missing.write_text(yaml.safe_dump({"queues": [queue], "kubernetes": {"cluster": "kubernetes-cluster-config/nope"}}))
    start_agent("--config", str(missing))
    run_id = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python train.py"))
    state = wait_for_final(run_id, timeout=90).state
    assert state.is_failed() and "kubernetes.cluster 'kubernetes-cluster-config/nope': block not found" in state.message


def _logged_steps(run_file) -> list[int]:
    """The step of every history row in a W&B run's `.wandb` file, in order."""
    return [record.history.step.num for record in records(run_file) if record.WhichOneof("record_type") == "history"]


def test_a_preempted_job_resumes_from_its_checkpoint_in_the_same_wandb_run(kube_agent, tmp_path):
    """examples/train/train.py on a queue with `checkpoints`, run by the stand-in's kubelet: preempted after a few
    epochs, its run goes back to the queue and the next attempt continues at the epoch after its last checkpoint,
    in the same W&B run (the offline run files: one run id, two attempts, steps 0..7 once each)."""
    trainer = Path(__file__).resolve().parents[1] / "examples" / "train" / "train.py"
    runs_dir = tmp_path / "wandb-runs"
    env = [{"name": "WANDB_DIR", "value": str(runs_dir / "${run_id}")},
           {"name": "WANDB_MODE", "value": "offline"}, {"name": "WANDB_SILENT", "value": "true"}]
    config = {"namespace": "resume", "checkpoints": str(tmp_path / "checkpoints"),
              "spec": {"template": {"spec": {"containers": [{"env": env}]}}}}
    overrides = json.dumps({"overrides": {"run_config": {"epochs": 8, "epoch_seconds": 0.5}}})
    with KubeStandIn() as cluster, Kubelet(cluster, tmp_path / "node"):
        queue = kube_agent(config, cluster=cluster)
        run_id = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", f"python {trainer}", "-c", overrides))
        wait_for_log(run_id, lambda line: line.startswith("epoch 2:"), timeout=120)
        (pod,) = [name for (namespace, name), pod in cluster.snapshot("v1/pods").items()
                  if pod["metadata"]["labels"].get("prefect-launch/run-id") == run_id]
        cluster.update_pod("resume", pod, conditions=[
            {"type": "DisruptionTarget", "status": "True", "reason": "PreemptionByScheduler"}])
        attempts = sorted(wait_for_attempts(run_id, 2, timeout=180), key=lambda run: run.created)
    assert [run.state.name for run in attempts] == ["Preempted", "Completed"], [run.state for run in attempts]

    def epochs(logs: list[str]) -> list[int]:
        return [int(line.split()[1].rstrip(":")) for line in logs if re.match(r"epoch \d+:", line)]

    preempted, resumed = (run_logs(attempt.id) for attempt in attempts)
    (resume_line,) = [line for line in resumed if line.startswith("resuming after epoch")]
    last_saved = int(resume_line.split()[3])
    # The first attempt trained up to its last checkpoint (a step it printed after saving none is done again). The
    # line of the epoch it saved last may be lost with its pod: on a loaded machine the pod went on to its last epoch
    # before the preemption reached it, saved it, and was killed before that line was read.
    printed = epochs(preempted)
    assert last_saved >= 2 and printed == list(range(len(printed))) and last_saved <= len(printed), (resume_line, preempted)
    assert epochs(resumed) == list(range(last_saved + 1, 8)), (resume_line, resumed)
    # One W&B run, a run folder per attempt; the resumed attempt's history goes on at the next step. (The preempted
    # attempt's own file holds what wandb had flushed when its process group was killed: maybe nothing.)
    files = run_files(runs_dir / run_id, run_id)
    assert len(files) == 2, files
    assert _logged_steps(files[1]) == list(range(last_saved + 1, 8))


def test_a_job_its_dead_agent_never_created_is_created_once(make_queue, start_agent, monkeypatch, tmp_path):
    """The agent died between recording the submission and creating the Job: there is no Job, and no event
    names one since the run started (a created Job's controller records its pod at once), so the adopter
    creates it, once. The stand-in's kubelet runs it."""
    with KubeStandIn() as cluster, Kubelet(cluster, tmp_path / "node"):
        monkeypatch.setenv("KUBECONFIG", cluster.kubeconfig(tmp_path / "kubeconfig"))
        config = write_json(tmp_path / "queue.json", {"namespace": "never"})
        queue = make_queue("--resource", "kubernetes", "--config", str(config), "--no-require-wandb-run", prefix="k8s")
        run_id = run_id_of(launch("-q", queue, "-d", IMAGE, "-E", "python -c 'print(\"trained once\")'"))
        held_by(run_id, DEAD_AGENT, submitted=True)  # its agent died after recording the submission
        start_agent("-q", queue)
        final = wait_for_final(run_id, timeout=90)
        assert final.state.is_completed(), final.state
        lines = run_logs(final.id)
        assert lines.count("trained once") == 1
        assert any("whose events show it was never created" in line and "died before creating it" in line for line in lines)
        assert _jobs_created(cluster, run_id) == 1
