"""The in-cluster builders (kaniko, BuildKit) end to end: S3 on moto, the Kubernetes API stand-in, a real
registry that wants a login.

There is no cluster, so the test plays the build pod: when the agent's build
Job appears it reads the Job's own arguments, fetches the context (Kaniko's
`--context` S3 URL; BuildKit's presigned URL, over HTTP as its init container's
`wget` would), builds it with the Docker engine, and pushes to the destination
with the login from the Secret the Job mounts. The registry
accepts only that login, so the run's pods must pull with it too: the run's
Job names a registry-login Secret that the agent made and deletes at the end.
The agent has no Docker engine (as in a cluster), so whether a tag is already
built is asked of the registry over HTTP.
"""

from __future__ import annotations

import base64
import gzip
import io
import json
import threading
import time
import urllib.request
from urllib.parse import urlsplit

import docker
import pytest
import yaml

from aws_standin import SageMakerStandIn
from conftest import SEEDS, flow_run_of, launch, run_id_of, run_logs, validate_strict, wait_for_final, write_json
from helm_chart import render, unauthorized
from kube_standin import KubeStandIn
from services import BASE_IMAGE, Registry, docker_engine

LOGIN = ("kaniko", "pw-3c9e1f")
BUCKET = "launch-builds"
REPOSITORY = "launch-k"


@pytest.fixture(scope="module")
def aws():
    with SageMakerStandIn() as aws:
        aws.client("s3").create_bucket(Bucket=BUCKET)
        yield aws


@pytest.fixture(scope="module")
def registry(tmp_path_factory):
    docker_engine()
    registry = Registry(tmp_path_factory.mktemp("kaniko-registry"), login=LOGIN, base_in=REPOSITORY)
    yield registry
    registry.close()


class FakeClusterBuild:
    """Does what a build pod would do with the build Jobs the agent creates, on a thread of its own:
    fetch the context, build it with the Docker engine, push with the login the Job mounts."""

    def __init__(self, kube: KubeStandIn, aws: SageMakerStandIn, engine: docker.DockerClient) -> None:
        self.kube, self.aws, self.engine = kube, aws, engine
        self.builds: list[dict] = []  # the Job bodies it ran
        self.logins: list[dict] = []  # the docker config each Job mounted
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._stop.set()
        self._thread.join()

    def _serve(self) -> None:
        seen: set = set()
        while not self._stop.is_set():
            for key, job in self.kube.objects("batch/v1/jobs").items():
                if key not in seen and key[1].startswith("wandb-image-build-") and not job.deleted:
                    seen.add(key)
                    self._build(key[0], key[1], json.loads(json.dumps(job.history[0], default=dict)))
            time.sleep(0.2)

    def read_job(self, pod_spec: dict) -> tuple[bytes, str, str]:
        """(the gzipped context, the Dockerfile's path in it, the image to push) the Job asks for."""
        (container,) = pod_spec["containers"]
        args = dict(arg.split("=", 1) for arg in container["args"])
        context = urlsplit(args["--context"])
        data = self.aws.client("s3").get_object(Bucket=context.netloc, Key=context.path.lstrip("/"))["Body"].read()
        return data, args["--dockerfile"], args["--destination"]

    def _build(self, namespace: str, name: str, body: dict) -> None:
        self.builds.append(body)
        pod_spec = body["spec"]["template"]["spec"]
        data, dockerfile, destination = self.read_job(pod_spec)
        secret_name = next(v["secret"]["secretName"] for v in pod_spec["volumes"] if v["name"] == "registry-login")
        secret = self.kube.objects("v1/secrets")[namespace, secret_name].history[0]
        config = json.loads(secret["stringData"][".dockerconfigjson"])
        self.logins.append(config)
        pod = f"{name}-b1ld"
        self.kube.create_pod(namespace, pod, body["spec"]["template"]["metadata"]["labels"])
        self.kube.update_pod(namespace, pod, phase="Running", container_statuses=[{"name": "main", "state": {"running": {}}}])
        client = self.engine
        records = list(client.api.build(
            fileobj=io.BytesIO(gzip.decompress(data)), custom_context=True, dockerfile=dockerfile,
            tag=destination, network_mode="host", rm=True, decode=True))
        lines = [line for record in records for line in (record.get("stream") or record.get("error") or "").splitlines()]
        self.kube.pod_log(namespace, pod, ["INFO[0001] " + line for line in lines if line.strip()])
        if any("error" in record for record in records):
            self.kube.update_pod(namespace, pod, phase="Failed",
                                 container_statuses=[{"name": "main", "state": {"terminated": {"exitCode": 1}}}])
            self.kube.set_job_status(namespace, name, {"failed": 1, "conditions": [{
                "type": "Failed", "status": "True", "reason": "BackoffLimitExceeded",
                "message": "Job has reached the specified backoff limit"}]})
            return
        (host, auth), = config["auths"].items()
        repository, tag = destination.rsplit(":", 1)
        for record in client.api.push(repository, tag=tag, stream=True, decode=True,
                                      auth_config={"username": auth["username"], "password": auth["password"]}):
            assert "error" not in record, record
        self.kube.pod_log(namespace, pod, [f"INFO[0009] Pushed {destination}"])
        self.kube.update_pod(namespace, pod, phase="Succeeded",
                             container_statuses=[{"name": "main", "state": {"terminated": {"exitCode": 0}}}])
        self.kube.set_job_status(namespace, name, {"succeeded": 1})


class FakeBuildKit(FakeClusterBuild):
    """Plays the BuildKit Job: its init container's presigned context URL, fetched over plain HTTP as `wget`
    would, and its `buildctl` arguments."""

    def read_job(self, pod_spec: dict) -> tuple[bytes, str, str]:
        (fetch,) = pod_spec["initContainers"]
        url = next(e["value"] for e in fetch["env"] if e["name"] == "CONTEXT_URL")
        with urllib.request.urlopen(url, timeout=30) as response:
            data = response.read()
        args = pod_spec["containers"][0]["args"]
        options = dict(args[i + 1].split("=", 1) for i, arg in enumerate(args) if arg == "--opt")
        output = dict(part.split("=", 1) for part in args[args.index("--output") + 1].split(","))
        return data, options["filename"], output["name"]


def _cluster_builder_agent(kube, aws, registry, make_queue, start_agent, monkeypatch, tmp_path, builder: dict,
                           fake: type[FakeClusterBuild]):
    """A kubernetes queue and an agent building with `builder` (launch-config.yaml's keys), the fake build pod
    playing its Jobs; yields the queue."""
    docker_config = tmp_path / "docker"
    docker_config.mkdir()
    (docker_config / "config.json").write_text(json.dumps(
        {"auths": {registry.host: {"auth": base64.b64encode(":".join(LOGIN).encode()).decode()}}}))
    engine = docker.from_env()  # the stand-in build pod's engine, before the agent's environment hides it
    # The agent has no Docker engine, as in a cluster: its tag checks go to the registry's HTTP API.
    for name, value in {**aws.env, "KUBECONFIG": kube.kubeconfig(tmp_path / "kubeconfig"),
                        "DOCKER_CONFIG": str(docker_config), "DOCKER_HOST": "unix:///run/no-engine-here.sock"}.items():
        monkeypatch.setenv(name, value)
    builder = {**builder, "build-context-store": f"s3://{BUCKET}/contexts", "destination": f"{registry.host}/{REPOSITORY}",
               "base_image": BASE_IMAGE}
    config = tmp_path / "launch-config.yaml"
    config.write_text(yaml.safe_dump({"environment": {"type": "aws", "region": "us-east-1"}, "builder": builder}))
    queue_config = write_json(tmp_path / "queue.json", yaml.safe_load((SEEDS / "000_k8s_job_1.yaml").read_text()))
    queue = make_queue("--resource", "kubernetes", "--config", str(queue_config), prefix=builder["type"])
    start_agent("-q", queue, "--config", str(config))
    player = fake(kube, aws, engine)
    yield queue
    player.close()


@pytest.fixture
def kaniko_agent(kube, aws, registry, make_queue, start_agent, monkeypatch, tmp_path):
    builder = yaml.safe_load((SEEDS / "001_launch_config_6.yaml").read_text())["builder"]
    yield from _cluster_builder_agent(kube, aws, registry, make_queue, start_agent, monkeypatch, tmp_path, builder,
                                      FakeClusterBuild)


@pytest.fixture
def buildkit_agent(kube, aws, registry, make_queue, start_agent, monkeypatch, tmp_path):
    builder = {"type": "buildkit", "build-job-name": "wandb-image-build"}
    yield from _cluster_builder_agent(kube, aws, registry, make_queue, start_agent, monkeypatch, tmp_path, builder,
                                      FakeBuildKit)


def _run_pod_succeeds(kube: KubeStandIn, run_id: str) -> dict:
    """Wait for the run's Job, then play its pod to success; returns the Job body the agent sent."""
    deadline = time.monotonic() + 600
    while (job := kube.objects("batch/v1/jobs").get(("wandb", f"prefect-launch-{run_id}"))) is None:
        assert time.monotonic() < deadline, "the run's Job was never created"
        time.sleep(0.3)
    body = json.loads(json.dumps(job.history[0], default=dict))
    pod = f"prefect-launch-{run_id}-p0d"
    kube.create_pod("wandb", pod, {"prefect-launch/run-id": run_id, "prefect-launch/attempt": "0"})
    kube.update_pod("wandb", pod, phase="Succeeded",
                    container_statuses=[{"name": "launch", "state": {"terminated": {"exitCode": 0}}}])
    return body


def _build_and_run(kube: KubeStandIn, queue: str, tmp_path, says: str):
    """A code job on `queue`, built in the cluster and run: (its folder, run id, run Job body, logs, build Job)."""
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(f"print({says!r})\n")
    before = set(kube.objects("batch/v1/jobs"))
    run_id = run_id_of(launch("-q", queue, "-u", str(code), "-E", "python train.py"))
    body = _run_pod_succeeds(kube, run_id)
    flow_run = wait_for_final(run_id, timeout=120)
    assert flow_run.state.is_completed(), flow_run.state
    (build,) = _new_build_jobs(kube, before)
    return code, run_id, body, run_logs(flow_run.id), build


def _new_build_jobs(kube: KubeStandIn, before: set) -> list:
    return [job for key, job in kube.objects("batch/v1/jobs").items()
            if key not in before and key[1].startswith("wandb-image-build-")]


def test_kaniko_builds_from_s3_pushes_with_a_secret_and_the_run_pulls_with_one(kube, aws, registry, kaniko_agent, tmp_path):
    code, run_id, body, logs, build = _build_and_run(kube, kaniko_agent, tmp_path, "trained")
    # The build Job: named from build-job-name, the seed's kaniko-config merged, the login mounted.
    sent = json.loads(json.dumps(build.history[0], default=dict))
    (container,) = sent["spec"]["template"]["spec"]["containers"]
    args = dict(arg.split("=", 1) for arg in container["args"])
    image = args["--destination"]
    tag = image.rsplit(":", 1)[1]
    assert sent["metadata"]["name"] == f"wandb-image-build-{tag[:12]}"
    assert args["--cache"] == "false"  # the seed's `--cache=false` replaced the default
    assert args["--context"] == f"s3://{BUCKET}/contexts/{tag}.tar.gz"
    assert {"name": "MY_ENV_VAR", "value": "my-env-var-value"} in container["env"]
    assert sent["spec"]["activeDeadlineSeconds"] == 3600 and sent["spec"]["backoffLimit"] == 0
    assert build.deleted, "the build Job stays after the build"
    assert LOGIN[1] not in json.dumps(sent)  # the login is only in its Secret
    build_secrets = [s for (ns, name), s in kube.objects("v1/secrets").items() if name.startswith("wandb-image-build-")]
    assert build_secrets and all(s.deleted for s in build_secrets)
    assert any("INFO[0009] Pushed" in line for line in logs)  # the build pod's log reached the run

    # The image is in the registry under the shared source tag, and the run pulls it with the login.
    assert image.startswith(f"{registry.host}/{REPOSITORY}:") and registry.manifest_digest(REPOSITORY, tag)
    pod = body["spec"]["template"]["spec"]
    assert pod["containers"][0]["image"] == image
    assert pod["imagePullSecrets"] == [{"name": f"prefect-launch-{run_id}-registry"}]
    pull = kube.objects("v1/secrets")["wandb", f"prefect-launch-{run_id}-registry"]
    sent_pull = pull.history[0]
    assert sent_pull["type"] == "kubernetes.io/dockerconfigjson"
    auths = json.loads(sent_pull["stringData"][".dockerconfigjson"])["auths"]
    assert base64.b64decode(auths[registry.host]["auth"]).decode() == ":".join(LOGIN)
    assert pull.deleted, "the run's registry login stays after the run"
    assert LOGIN[1] not in json.dumps(body) and not any(LOGIN[1] in line for line in logs)

    # The same source again: the tag is in the registry, so no Kaniko Job is made.
    builds_before = len(kube.objects("batch/v1/jobs"))
    again = run_id_of(launch("-q", kaniko_agent, "-u", str(code), "-E", "python train.py"))
    _run_pod_succeeds(kube, again)
    assert wait_for_final(again, timeout=120).state.is_completed()
    assert any(f"Image {image} already exists: build skipped" in line for line in run_logs(flow_run_of(again).id))
    assert len(kube.objects("batch/v1/jobs")) == builds_before + 1  # only the run's Job
    # Every request of the build and the runs (Secrets, Jobs and their status, pods, logs) the Helm chart's Role allows.
    assert unauthorized(kube.requests(), render()) == []


def test_a_failing_kaniko_build_fails_the_job_with_its_log_and_removes_the_build_job(kube, kaniko_agent, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('never built')\n")
    (code / "Dockerfile.wandb").write_text(f"FROM {BASE_IMAGE}\nRUN echo step-that-breaks && exit 3\n")
    before = set(kube.objects("batch/v1/jobs"))
    run_id = run_id_of(launch("-q", kaniko_agent, "-u", str(code), "-E", "python train.py"))
    flow_run = wait_for_final(run_id, timeout=300)
    assert flow_run.state.is_failed(), flow_run.state
    message = flow_run.state.message
    assert "image build failed" in message and "BackoffLimitExceeded" in message, message
    assert "step-that-breaks" in message  # the build log's last lines say why
    (build,) = _new_build_jobs(kube, before)
    assert build.deleted
    assert kube.objects("batch/v1/jobs").get(("wandb", f"prefect-launch-{run_id}")) is None  # nothing was submitted


def test_buildkit_builds_rootless_with_a_registry_cache_and_the_run_pulls_with_the_login(kube, registry, buildkit_agent,
                                                                                       tmp_path):
    """BuildKit, run rootless and daemonless in a Job: the same stores, logins, tags, skip and log streaming
    as kaniko, no privilege, and a build cache in the registry beside the image."""
    code, run_id, body, logs, build = _build_and_run(kube, buildkit_agent, tmp_path, "trained with buildkit")
    sent = json.loads(json.dumps(build.history[0], default=dict))
    validate_strict(sent, tmp_path)
    pod = sent["spec"]["template"]["spec"]
    (fetch,), (builder,) = pod["initContainers"], pod["containers"]
    for container in (fetch, builder):
        security = container["securityContext"]
        assert security["runAsNonRoot"] is True and security["runAsUser"] == 1000 and security["privileged"] is False
    assert not any("hostPath" in volume for volume in pod["volumes"])
    assert builder["command"] == ["buildctl-daemonless.sh"]
    args = builder["args"]
    image = dict(p.split("=", 1) for p in args[args.index("--output") + 1].split(","))["name"]
    repository, tag = image.rsplit(":", 1)
    assert args[args.index("--import-cache") + 1] == f"type=registry,ref={repository}:buildcache"
    assert args[args.index("--export-cache") + 1] == f"type=registry,ref={repository}:buildcache,mode=max"
    assert {"name": "BUILDKITD_FLAGS", "value": "--oci-worker-no-process-sandbox"} in builder["env"]
    assert sent["metadata"]["name"] == f"wandb-image-build-{tag[:12]}" and build.deleted
    assert LOGIN[1] not in json.dumps(sent)
    assert any("INFO[0009] Pushed" in line for line in logs)
    assert registry.manifest_digest(REPOSITORY, tag)
    run_pod = body["spec"]["template"]["spec"]
    assert run_pod["containers"][0]["image"] == image
    assert run_pod["imagePullSecrets"] == [{"name": f"prefect-launch-{run_id}-registry"}]

    builds_before = len(kube.objects("batch/v1/jobs"))
    again = run_id_of(launch("-q", buildkit_agent, "-u", str(code), "-E", "python train.py"))
    _run_pod_succeeds(kube, again)
    assert wait_for_final(again, timeout=120).state.is_completed()
    assert any(f"Image {image} already exists: build skipped" in line for line in run_logs(flow_run_of(again).id))
    assert len(kube.objects("batch/v1/jobs")) == builds_before + 1
