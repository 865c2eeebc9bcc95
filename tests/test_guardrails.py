"""Guardrails: a job's submitter gets no more than the queue's admin allows, on every target and every path.

Each attack of issue 17 is tried the way a submitter would, with nothing but a
launch spec (`-c spec.json`): it ends refused in one line naming the field and
saying that only the queue's config may set it, before anything is built or
started. The admin's own config may set the same fields, or opt them in for
jobs with `job_may_set`. The last tests run an agent: hostile runs created
through Prefect's API directly (as the UI and API users can) fail before
anything starts, and the agent serves the next job.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import os
import subprocess
import tarfile
import time
import uuid
from pathlib import Path

import pytest
import yaml

from conftest import JOBS, SEEDS, cli, launch, on_server, run_id_of, run_logs, wait_for_final, write_json
from prefect_launch.spec import LaunchSpec
from services import BASE_IMAGE, docker_engine

NO_SERVER = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing listens on port 9
DOCKER_QUEUE = json.loads((SEEDS / "001_docker_queue_1.json").read_text())
JOB_SEED = yaml.safe_load((SEEDS / "000_k8s_job_1.yaml").read_text())
PYTORCH_SEED = yaml.safe_load((SEEDS / "000_k8s_custom_resource_1.yaml").read_text())
SAGEMAKER = {**json.loads((SEEDS / "001_sagemaker_queue_1.json").read_text()),
             "RoleArn": "arn:aws:iam::123456789012:role/sm", "OutputDataConfig": {"S3OutputPath": "s3://b/out"}}
VERTEX = yaml.safe_load((SEEDS / "003_vertex_queue_1.yaml").read_text())
VERTEX["spec"]["staging_bucket"] = "gs://staging"
ONLY_ADMIN = "only the queue's config (its admin) may set it"


def _dry_run(resource: str, queue_config: dict, spec: dict, tmp_path: Path, *extra: str, check: bool = False):
    image = ["-d", "registry.local/train:1"] if resource != "local-process" else ["-u", str(JOBS)]
    return cli("launch", "--dry-run", "-r", resource, "-R", json.dumps(queue_config), *image, "-E", "python train.py",
               "-c", str(write_json(tmp_path / "spec.json", spec)), "--run-id", "guard1", *extra, env=NO_SERVER,
               check=check)


def _refused(result, *named: str) -> str:
    assert result.returncode == 1 and result.stdout == "", result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    for text in named:
        assert text in line, line
    return line


@pytest.mark.parametrize(("option", "value"), [
    ("privileged", True), ("volume", "/:/host"), ("v", ["/etc:/etc"]), ("pid", "host"), ("cap-add", ["SYS_ADMIN"]),
    ("device", "/dev/sda"), ("security-opt", "seccomp=unconfined"), ("network", "host"), ("ipc", "host"),
    ("userns", "host"), ("sysctl", {"kernel.shmmax": "1"}), ("add-host", "db:10.0.0.1"), ("p", "80:80"),
    ("mount", "type=bind,src=/,dst=/host"), ("env-file", "/etc/shadow"), ("user", "0"), ("runtime", "runc"),
])
def test_docker_options_that_widen_access_are_the_admins_alone(option, value, tmp_path):
    result = _dry_run("local-container", DOCKER_QUEUE, {"resource_args": {option: value}}, tmp_path)
    _refused(result, f"may not set {option}", ONLY_ADMIN)
    # Keyed by resource, as W&B's specs write it, the same.
    keyed = _dry_run("local-container", DOCKER_QUEUE, {"resource_args": {"local-container": {option: value}}}, tmp_path)
    _refused(keyed, f"may not set {option}")


def test_the_admin_may_set_them_and_opt_jobs_in(tmp_path):
    """The queue config itself may ask for a host volume; `job_may_set` lets jobs choose their own."""
    admin = _dry_run("local-container", {**DOCKER_QUEUE, "privileged": True}, {}, tmp_path, check=True)
    assert "--privileged" in json.loads(admin.stdout)["submission"]["argv"]
    opted = {**DOCKER_QUEUE, "job_may_set": ["volume"]}
    job = _dry_run("local-container", opted, {"resource_args": {"volume": "/data/mine:/data"}}, tmp_path, check=True)
    argv = json.loads(job.stdout)["submission"]["argv"]
    assert argv[argv.index("/data/mine:/data") - 1] == "--volume"
    _refused(_dry_run("local-container", opted, {"resource_args": {"privileged": True}}, tmp_path), "may not set privileged")
    # A job may not opt itself in.
    _refused(_dry_run("local-container", DOCKER_QUEUE, {"resource_args": {"job_may_set": ["privileged"]}}, tmp_path),
             "may not set job_may_set")


def test_a_job_may_shape_its_container_within_the_allowlist(tmp_path):
    spec = {"resource_args": {"gpus": "all", "memory": "8g", "shm-size": "1g", "env": ["EPOCHS=3"],
                              "label": {"team": "ml"}, "builder": {"accelerator": {"base_image": "nvidia/cuda:12-runtime"}}}}
    argv = json.loads(_dry_run("local-container", DOCKER_QUEUE, spec, tmp_path, check=True).stdout)["submission"]["argv"]
    assert {"--gpus", "--memory", "--shm-size"} <= set(argv) and "team=ml" in argv


def test_a_job_cannot_rename_its_container(tmp_path):
    """Its name is how cancel and adoption find it: `name` is prefect-launch's own, for any config."""
    _refused(_dry_run("local-container", DOCKER_QUEUE, {"resource_args": {"name": "rogue"}}, tmp_path), "name")
    _refused(_dry_run("local-container", {"name": "rogue"}, {}, tmp_path), "name: set by prefect-launch")


def test_local_container_entry_points_replace_the_images(tmp_path):
    """W&B's rule: `--entrypoint` is the entry point's first word; a job without one runs the image's own."""
    argv = json.loads(_dry_run("local-container", DOCKER_QUEUE, {"overrides": {"args": ["--lr", "0.1"]}}, tmp_path,
                               check=True).stdout)["submission"]["argv"]
    assert argv[argv.index("--entrypoint") + 1] == "python"
    assert argv[argv.index("registry.local/train:1"):] == ["registry.local/train:1", "train.py", "--lr", "0.1"]
    bare = cli("launch", "--dry-run", "-r", "local-container", "-d", "registry.local/train:1", env=NO_SERVER)
    argv = json.loads(bare.stdout)["submission"]["argv"]
    assert "--entrypoint" not in argv and argv[-1] == "registry.local/train:1"


# Kubernetes: each field that widens a pod's access, for a Job queue and a PyTorchJob queue.
POD = {
    "hostNetwork": ({"hostNetwork": True}, "hostNetwork"),
    "hostPID": ({"hostPID": True}, "hostPID"),
    "hostIPC": ({"hostIPC": True}, "hostIPC"),
    "hostUsers": ({"hostUsers": True}, "hostUsers"),
    "shareProcessNamespace": ({"shareProcessNamespace": True}, "shareProcessNamespace"),
    "serviceAccountName": ({"serviceAccountName": "cluster-admin"}, "serviceAccountName"),
    "automountServiceAccountToken": ({"automountServiceAccountToken": True}, "automountServiceAccountToken"),
    "nodeName": ({"nodeName": "control-plane-1"}, "nodeName"),
    "sysctls": ({"securityContext": {"sysctls": [{"name": "kernel.msgmax", "value": "1"}]}}, "sysctls"),
    "hostPath": ({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}, "hostPath"),
    "projected token": ({"volumes": [{"name": "t", "projected": {"sources": [{"serviceAccountToken": {"path": "t"}}]}}]},
                        "serviceAccountToken"),
    "secret volume": ({"volumes": [{"name": "s", "secret": {"secretName": "admin-creds"}}]}, "secret"),
    "imagePullSecrets": ({"imagePullSecrets": [{"name": "admin-registry"}]}, "imagePullSecrets"),
    "pod seccomp": ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, "seccompProfile"),
    "pod runAsUser 0": ({"securityContext": {"runAsUser": 0}}, "runAsUser"),
}
CONTAINER = {
    "privileged": ({"securityContext": {"privileged": True}}, "privileged"),
    "allowPrivilegeEscalation": ({"securityContext": {"allowPrivilegeEscalation": True}}, "allowPrivilegeEscalation"),
    "capabilities.add": ({"securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}, "capabilities.add"),
    "runAsUser 0": ({"securityContext": {"runAsUser": 0}}, "runAsUser"),
    "runAsNonRoot false": ({"securityContext": {"runAsNonRoot": False}}, "runAsNonRoot"),
    "seccomp Unconfined": ({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}, "seccompProfile"),
    "AppArmor Unconfined": ({"securityContext": {"appArmorProfile": {"type": "Unconfined"}}}, "appArmorProfile"),
    "procMount": ({"securityContext": {"procMount": "Unmasked"}}, "procMount"),
    "hostPort": ({"ports": [{"containerPort": 80, "hostPort": 80}]}, "hostPort"),
    "Bidirectional": ({"volumeMounts": [{"name": "d", "mountPath": "/d", "mountPropagation": "Bidirectional"}]},
                      "mountPropagation"),
    "secretKeyRef": ({"env": [{"name": "K", "valueFrom": {"secretKeyRef": {"name": "admin", "key": "k"}}}]},
                     "secretKeyRef"),
    "secretRef": ({"envFrom": [{"secretRef": {"name": "admin"}}]}, "secretRef"),
}
ANNOTATION = ({"metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/launch": "unconfined"}}},
              "annotations")


def _job_override(pod: dict | None = None, container: dict | None = None, template: dict | None = None) -> dict:
    spec = {**(pod or {}), **({"containers": [container]} if container else {})}
    return {"spec": {"template": {**(template or {}), **({"spec": spec} if spec else {})}}}


def _pytorch_override(pod: dict | None = None, container: dict | None = None, template: dict | None = None) -> dict:
    spec = {**(pod or {}), **({"containers": [container]} if container else {})}
    replica = {"template": {**(template or {}), **({"spec": spec} if spec else {})}}
    return {"kubernetes": {"spec": {"pytorchReplicaSpecs": {"Worker": replica}}}}


CASES = ([(name, {"pod": value}, field) for name, (value, field) in POD.items()]
         + [(name, {"container": value}, field) for name, (value, field) in CONTAINER.items()]
         + [("AppArmor annotation", {"template": ANNOTATION[0]}, ANNOTATION[1])])


@pytest.mark.parametrize("queue", ["Job", "PyTorchJob"])
@pytest.mark.parametrize(("case", "where", "field"), CASES, ids=[case for case, _, _ in CASES])
def test_kubernetes_fields_that_widen_a_pods_access_are_the_admins_alone(queue, case, where, field, tmp_path):
    config, override = (JOB_SEED, _job_override(**where)) if queue == "Job" else (PYTORCH_SEED, _pytorch_override(**where))
    # A PyTorchJob queue's own keys sit inside `kubernetes:`, as the job's do: keyed by resource, the spec wraps them.
    spec = {"resource_args": {"kubernetes": override}}
    _refused(_dry_run("kubernetes", config, spec, tmp_path), f"may not set {field}", ONLY_ADMIN)


def test_every_container_ends_restricted_field_by_field(tmp_path):
    """The security defaults merge per field: a job's harmless securityContext keeps them, init and ephemeral
    containers get them, and the admin's own choice stays."""
    admin = {**JOB_SEED, "spec": {"template": {"spec": {
        "initContainers": [{"name": "fetch", "image": "busybox"}],
        "containers": [{"name": "main", "securityContext": {"capabilities": {"add": ["NET_BIND_SERVICE"]}}}]}}}}
    job = {"resource_args": {"kubernetes": _job_override(container={"name": "main", "securityContext": {
        "runAsUser": 1000, "runAsNonRoot": True, "readOnlyRootFilesystem": True}})}}
    pod = json.loads(_dry_run("kubernetes", admin, job, tmp_path, check=True).stdout)["submission"]["spec"]["template"]["spec"]
    (main,) = pod["containers"]
    assert main["securityContext"] == {
        "capabilities": {"add": ["NET_BIND_SERVICE"], "drop": ["ALL"]}, "runAsUser": 1000, "runAsNonRoot": True,
        "readOnlyRootFilesystem": True, "allowPrivilegeEscalation": False, "seccompProfile": {"type": "RuntimeDefault"}}
    (init,) = pod["initContainers"]
    assert init["securityContext"] == {"capabilities": {"drop": ["ALL"]}, "allowPrivilegeEscalation": False,
                                       "seccompProfile": {"type": "RuntimeDefault"}}
    opted = {**JOB_SEED, "job_may_set": ["serviceAccountName"]}
    spec = {"resource_args": {"kubernetes": _job_override(pod={"serviceAccountName": "trainer"})}}
    pod = json.loads(_dry_run("kubernetes", opted, spec, tmp_path, check=True).stdout)["submission"]["spec"]["template"]["spec"]
    assert pod["serviceAccountName"] == "trainer"


@pytest.mark.parametrize(("resource", "queue_config", "override", "field"), [
    ("sagemaker", SAGEMAKER, {"RoleArn": "arn:aws:iam::123456789012:role/admin"}, "RoleArn"),
    ("sagemaker", SAGEMAKER, {"OutputDataConfig": {"S3OutputPath": "s3://other/out"}}, "OutputDataConfig"),
    ("sagemaker", SAGEMAKER, {"role_arn": "arn:aws:iam::123456789012:role/admin"}, "RoleArn"),  # W&B's snake_case
    ("sagemaker", SAGEMAKER, {"VpcConfig": {"SecurityGroupIds": ["sg-1"], "Subnets": ["s-1"]}}, "VpcConfig"),
    ("vertex", VERTEX, {"run": {"service_account": "admin@project.iam.gserviceaccount.com"}}, "run.service_account"),
    ("vertex", VERTEX, {"spec": {"service_account": "admin@project.iam.gserviceaccount.com"}}, "spec.service_account"),
    ("vertex", VERTEX, {"spec": {"staging_bucket": "gs://other"}}, "spec.staging_bucket"),
    ("vertex", VERTEX, {"run": {"network": "projects/1/global/networks/admin"}}, "run.network"),
])
def test_cloud_targets_keep_roles_networks_and_buckets_the_admins(resource, queue_config, override, field, tmp_path):
    _refused(_dry_run(resource, queue_config, {"resource_args": override}, tmp_path), f"may not set {field}", ONLY_ADMIN)


def test_cloud_jobs_may_size_themselves(tmp_path):
    spec = {"resource_args": {"ResourceConfig": {"InstanceType": "ml.p3.2xlarge"}, "HyperParameters": {"lr": "0.1"}}}
    request = json.loads(_dry_run("sagemaker", SAGEMAKER, spec, tmp_path, check=True).stdout)["submission"]
    assert request["ResourceConfig"]["InstanceType"] == "ml.p3.2xlarge" and request["HyperParameters"] == {"lr": "0.1"}
    pools = [{**VERTEX["spec"]["worker_pool_specs"][0], "machine_spec": {"machine_type": "a2-highgpu-1g"}}]
    spec = {"resource_args": {"spec": {"worker_pool_specs": pools}, "run": {"timeout": 3600}}}
    payload = json.loads(_dry_run("vertex", VERTEX, spec, tmp_path, check=True).stdout)["submission"]
    assert payload["spec"]["worker_pool_specs"][0]["machine_spec"] == {"machine_type": "a2-highgpu-1g"}


@pytest.mark.parametrize(("where", "value"), [
    ("-B", "ubuntu:22.04\nRUN echo PROOF > /proof.txt"), ("-B", "AS base"), ("-B", "# a comment"),
    ("base_image", "ubuntu:22.04\nRUN echo PROOF > /proof.txt"), ("base_image", 3),
    ("builder.accelerator.base_image", "tf:gpu\nRUN id"), ("builder.cuda.base_image", "cuda AS base"),
    ("-d", "img:1 --privileged"),
])
def test_image_references_are_parsed_never_pasted(where, value, tmp_path):
    """Nothing that is not an image reference reaches a Dockerfile's FROM line or a command."""
    spec: dict = {}
    if where == "base_image":
        spec = {"base_image": value}
    elif where.startswith("builder."):
        section = where.split(".")[1]
        spec = {"resource_args": {"builder": {section: {"base_image": value}}}}
    flags = ["-B", value] if where == "-B" else []
    source = ["-d", value] if where == "-d" else ["-u", str(JOBS)]
    result = cli("launch", "--dry-run", "-r", "local-container", *source, "-E", "python report.py", *flags,
                 "-c", str(write_json(tmp_path / "spec.json", spec)), env=NO_SERVER, check=False)
    assert result.returncode == 1 and result.stdout == "", result.stdout
    assert "base_image" in result.stderr or "image" in result.stderr, result.stderr
    assert "not an image reference" in result.stderr or "valid string" in result.stderr, result.stderr


def test_secure_mode_locks_what_runs(tmp_path):
    """W&B's `secure_mode: true`: a job may not override its entry point, nor set a container's command,
    init containers or host namespaces."""
    home = tmp_path / "home"
    (home / ".config" / "wandb").mkdir(parents=True)
    (home / ".config" / "wandb" / "launch-config.yaml").write_text("secure_mode: true\n")
    env = {**NO_SERVER, "HOME": str(home)}
    spec = write_json(tmp_path / "spec.json", {"overrides": {"entrypoint": ["sh", "-c", "cat /etc/shadow"]}})
    result = cli("launch", "--dry-run", "-r", "local-container", "-d", "img:1", "-c", str(spec), env=env, check=False)
    _refused(result, "secure_mode", "overrides.entrypoint")
    spec = write_json(tmp_path / "spec.json", {"resource_args": {"kubernetes": _job_override(container={"command": ["sh"]})}})
    result = cli("launch", "--dry-run", "-r", "kubernetes", "-d", "img:1", "-c", str(spec), env=env, check=False)
    _refused(result, "secure_mode", "resource_args.kubernetes.spec.template.spec.containers[0].command")
    # Without it, the same entry-point override is the job's to make.
    result = cli("launch", "--dry-run", "-r", "local-container", "-d", "img:1", "-c",
                 str(write_json(tmp_path / "ok.json", {"overrides": {"entrypoint": ["python", "x.py"]}})), env=NO_SERVER)
    assert json.loads(result.stdout)["submission"]["argv"][-2:] == ["img:1", "x.py"]


def test_git_remotes_in_the_spec_refuse_options_and_credentials():
    for source, named in (({"uri": "-uroot@host:repo.git"}, "starts with '-'"),
                          ({"uri": "git@host:repo.git", "ref": "--upload-pack=id"}, "read it as an option"),
                          ({"uri": "https://ghp_token@host/r.git"}, "holds credentials")):
        with pytest.raises(Exception, match=named):
            LaunchSpec.model_validate({"source": {"type": "git", **source}})


def test_the_dry_run_shows_no_secret_value_of_the_admins(tmp_path):
    """A dry run against a queue must not read its admin's secrets out to a submitter: secret values masked."""
    config = {**DOCKER_QUEUE, "env": ["HF_TOKEN=hf_admins_secret", "PLAIN=1"]}
    out = _dry_run("local-container", config, {"overrides": {"args": ["--api-key", "user-key-1"]}}, tmp_path, check=True)
    assert "hf_admins_secret" not in out.stdout and "user-key-1" not in out.stdout
    submission = json.loads(out.stdout)["submission"]
    assert submission["env"]["HF_TOKEN"] == "********" and submission["env"]["PLAIN"] == "1"
    assert "HF_TOKEN" in submission["argv"]  # by name: its value reaches docker through its environment


def test_a_jobs_dockerfile_cannot_reach_another_queues_pip_cache(tmp_path):
    """Build caches are one per queue: a generated Dockerfile names its queue's cache, which the agent salts
    with its own key as it builds; a job's Dockerfile naming that cache (or any) never gets the same one."""
    from prefect_launch.builders.docker import DockerBuilder
    from prefect_launch.builders.plan import BuildPlan, plan_build
    from prefect_launch.spec import ResolvedJob

    docker_engine()
    builder = DockerBuilder()
    assert builder.cache_mounts, "the tests' engine builds with BuildKit"
    # Queue B's user plants a file in the cache a generated Dockerfile of queue A names.
    (tmp_path / "evil").mkdir()
    (tmp_path / "evil" / "Dockerfile").write_text(
        f"FROM {BASE_IMAGE}\nRUN --mount=type=cache,id=prefect-launch-pip/queue-a,target=/cache "
        "sh -c 'echo planted > /cache/POISON'\n")
    builder.build(BuildPlan(context=_tar({"Dockerfile": (tmp_path / "evil" / "Dockerfile").read_bytes()}),
                            dockerfile="Dockerfile", image=f"guard-evil:{os.getpid()}", generated=False), _log()[0])
    # Queue A's generated build lists its cache: the planted file is not there.
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("print('hi')\n")
    (code / "requirements.txt").write_text("\n")
    job = ResolvedJob(run_id="cache1", run_name="c", project="p", argv=["python", "train.py"],
                      entry_point=["python", "train.py"], workdir=code)
    plan = plan_build(job, None, BASE_IMAGE, "guard-cache", "queue-a")
    files = {member.name: tar.extractfile(member).read()
             for tar in [tarfile.open(fileobj=io.BytesIO(plan.context))] for member in tar.getmembers() if member.isfile()}
    text = files[".launch/Dockerfile"].decode()
    assert "id=prefect-launch-pip/queue-a," in text
    # The same generated Dockerfile, listing the cache it gets before it installs.
    files[".launch/Dockerfile"] = text.replace("python3 -m pip install", "ls -a /root/.cache/pip; python3 -m pip install").encode()
    log, lines = _log()
    builder.build(BuildPlan(context=_tar(files), dockerfile=".launch/Dockerfile", image=plan.image, generated=True), log)
    assert any("pip install" in line or "RUN" in line for line in lines), lines  # the listing ran
    assert not any("POISON" in line for line in lines), lines


def _tar(files: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w") as tar:
        for name, data in files.items():
            member = tarfile.TarInfo(name)
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data))
    return buffer.getvalue()


def _log() -> tuple[logging.Logger, list[str]]:
    """A logger of its own that keeps every line it is given."""
    lines: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            lines.append(record.getMessage())

    logger = logging.getLogger(f"guardrails-{uuid.uuid4()}")
    logger.addHandler(Keep())
    logger.setLevel(logging.INFO)
    logger.propagate = False
    return logger, lines


def test_hostile_runs_from_the_api_fail_before_anything_starts_and_the_agent_serves_on(make_queue, start_agent,
                                                                                      tmp_path):
    """Runs created through Prefect's API (as the UI's form and API users create them) skip the CLI's checks:
    the agent refuses them itself, before a build or a container, and runs the next job."""
    from prefect.blocks.system import Secret

    from prefect_launch.deployments.queues import deployment_name

    docker_engine()
    templates = tmp_path / "templates.yaml"
    templates.write_text("tag: {type: string, default: plain}\n")
    queue = make_queue("--resource", "local-container", "--no-require-wandb-run", "--templates", str(templates), "--config",
                       str(write_json(tmp_path / "queue.json", {"network": "host", "label": ["tag={{ tag }}"],
                                                                "env": ["HF_TOKEN=hf-admin-secret-77"]})),
                       prefix="guard")
    block = f"guard-{uuid.uuid4().hex[:8]}"
    Secret(value="db-password-4242").save(block)
    start_agent("-q", queue)
    deployment = on_server("read_deployment_by_name", deployment_name(queue))
    attacks = {
        "privileged": ({"resource_args": {"privileged": True, "volume": "/:/host"}}, {}, "may not set privileged"),
        "template value": ({}, {"tag": f"{{{{ prefect.blocks.secret.{block} }}}}"}, "template value tag holds"),
        "rename": ({"resource_args": {"name": "rogue"}}, {}, "may not set name"),
        "base image": ({"base_image": "ubuntu:22.04\nRUN echo PROOF"}, {}, "base_image"),
    }
    runs = {}
    for attack, (spec, values, _) in attacks.items():
        run_id = f"guard{uuid.uuid4().hex[:8]}"
        body = {"source": {"type": "image", "image": BASE_IMAGE}, "entry_point": ["python3", "-c", "print('ran')"],
                "run_id": run_id, **spec}
        on_server("create_flow_run_from_deployment", deployment.id, parameters={"spec": body}, job_variables=values,
                  name=run_id)
        runs[attack] = run_id
    for attack, run_id in runs.items():
        state = wait_for_final(run_id, timeout=90).state
        assert state.is_failed(), (attack, state)
        assert attacks[attack][2] in state.message, (attack, state.message)
        assert "db-password-4242" not in state.message + "\n".join(run_logs(wait_for_final(run_id).id))
        assert "Traceback" not in "\n".join(run_logs(wait_for_final(run_id).id)), attack
        container = subprocess.run(["docker", "container", "inspect", f"prefect-launch-{run_id}"], capture_output=True)
        assert container.returncode != 0, f"{attack}: a container was created"
    # The next job runs; the admin's secret reaches it through docker's environment, never `ps`, and neither
    # it nor the job's own `--api-key` argument reaches a log line.
    job = ("python3 -c \"import hashlib, os, time; time.sleep(3); "
           "print('served', hashlib.sha256(os.environ['HF_TOKEN'].encode()).hexdigest())\" ")
    good = run_id_of(launch("-q", queue, "-d", BASE_IMAGE, "-E", job + "--api-key=user-secret-88"))
    command_lines = _docker_run_command_lines(f"prefect-launch-{good}")
    assert command_lines and not any("hf-admin-secret-77" in line for line in command_lines), command_lines
    served = wait_for_final(good, timeout=120)
    logs = "\n".join(run_logs(served.id))
    assert served.state.is_completed() and f"served {hashlib.sha256(b'hf-admin-secret-77').hexdigest()}" in logs, logs
    assert "hf-admin-secret-77" not in logs and "user-secret-88" not in logs, logs


def _docker_run_command_lines(container: str, timeout: float = 60) -> list[str]:
    """The command lines (`/proc/PID/cmdline`, what `ps` shows) of the `docker run` of `container`, once it runs."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = []
        for proc in Path("/proc").iterdir():
            try:
                line = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if container in line and " run " in line:
                lines.append(line)
        if lines:
            return lines
        time.sleep(0.1)
    return []
