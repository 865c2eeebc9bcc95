"""Containers end to end: real Docker engine, real registry, real git server, real Prefect server.

Jobs are built from a code folder or a git commit on the tests' own Debian
base image (no Docker Hub), pushed to a `docker-registry` on 127.0.0.1, and run
by a local-container queue with `--network host`.
"""

from __future__ import annotations

import json
import os
import subprocess
import time
from pathlib import Path

import anyio
import pytest
from prefect.client.orchestration import get_client

from conftest import JOBS, cancel_run, cli, dry_run_submission, flow_run_of, job_report, launch, run_id_of, run_logs, wait_for_final
from services import BASE_IMAGE, GitServer, PackageIndex, Registry, docker_engine, git

GIT_PASSWORD = "gitpass-7d1f0c"
QUEUE_CONFIG = {"network": "host", "env": ["JOB_FLAG=on"]}

TRAIN = """\
import json, sys
import launch_util
import wandb

def report(line):  # one write per line: wandb's own output cannot land between a line and its newline
    sys.stdout.write(line + "\\n")
    sys.stdout.flush()

run = wandb.init(config={"lr": 0.01, "epochs": 1})
report("CONFIG " + json.dumps(dict(run.config), sort_keys=True))
report("GREETING " + json.dumps(launch_util.GREETING))
report("ARGS " + json.dumps(sys.argv[1:]))
run.finish()
"""


@pytest.fixture(scope="module")
def engine():
    return docker_engine()


@pytest.fixture(scope="module")
def registry(engine, tmp_path_factory):
    registry = Registry(tmp_path_factory.mktemp("registry"), base_in="launch-tests")
    yield registry
    registry.close()


@pytest.fixture(scope="module")
def index(tmp_path_factory):
    index = PackageIndex(tmp_path_factory.mktemp("index"))
    yield index
    index.close()


@pytest.fixture(scope="module")
def agent_config(registry, tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("agent") / "launch-config.yaml"
    path.write_text(
        f"builder:\n  type: docker\n  destination: {registry.host}/launch-tests\n  base_image: {BASE_IMAGE}\n"
    )
    return path


def _code_folder(root: Path, index: PackageIndex, marker: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "train.py").write_text(TRAIN + (f"print({marker!r})\n" if marker else ""))
    # The seed's requirements line, four dashes and all (004_other_2.txt).
    (root / "requirements.txt").write_text(f"----index-url={index.url}\n{index.name}==1.0\n")
    return root


def _container_queue(make_queue, tmp_path: Path, config: dict | None = None) -> str:
    path = tmp_path / "queue.json"
    path.write_text(json.dumps(config or QUEUE_CONFIG))
    return make_queue("--resource", "local-container", "--config", str(path), prefix="docker")


def _containers_of(run_id: str) -> list[str]:
    out = subprocess.run(["docker", "ps", "-a", "-q", "--filter", f"label=prefect-launch.run-id={run_id}"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()


def _assert_removed(run_id: str, timeout: float = 30) -> None:
    """The agent removes a run's container just after recording its final state, so a reader may see it briefly."""
    deadline = time.monotonic() + timeout
    while left := _containers_of(run_id):
        assert time.monotonic() < deadline, f"container {left} of run {run_id} still there {timeout} s after its end"
        time.sleep(0.3)


def _image_in_logs(logs: list[str]) -> str:
    for line in logs:
        if line.startswith("Built ") or line.endswith(": build skipped"):
            return line.split()[1]
    raise AssertionError("no image named in the run's logs:\n" + "\n".join(logs[-30:]))


def test_code_job_is_built_pushed_and_run_then_reused(engine, registry, index, agent_config, make_queue,
                                                       start_agent, tmp_path):
    queue = _container_queue(make_queue, tmp_path)
    start_agent("-q", queue, "--config", str(agent_config))
    code = _code_folder(tmp_path / "code", index)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"overrides": {"run_config": {"lr": 0.5}, "args": ["--fast"]}}))

    first = launch("-q", queue, "-u", str(code), "-E", "python train.py", "-c", str(spec), "--wait", timeout=600)
    run_id = run_id_of(first)
    flow_run = flow_run_of(run_id)
    assert flow_run.state.is_completed(), flow_run.state
    logs = run_logs(flow_run.id)
    assert job_report(logs, "CONFIG") == {"lr": 0.5, "epochs": 1}  # the offline W&B run holds the override
    assert job_report(logs, "GREETING") == "hello from launch-util"  # requirements.txt installed from the index
    assert job_report(logs, "ARGS") == ["--fast"]
    image = _image_in_logs(logs)
    repository, tag = image.rsplit(":", 1)
    assert repository == f"{registry.host}/launch-tests"
    digest = registry.manifest_digest("launch-tests", tag)
    assert digest and digest.startswith("sha256:")
    assert any(f"manifest digest {digest}" in line for line in logs)
    assert any("RUN" in line and "pip install" in line for line in logs)  # build output streamed into the log
    _assert_removed(run_id)
    assert list((Path(os.environ["PREFECT_LAUNCH_HOME"]) / "runs" / run_id / "wandb").glob(f"offline-run-*-{run_id}"))

    second = launch("-q", queue, "-u", str(code), "-E", "python train.py", "--wait", timeout=300)
    logs = run_logs(flow_run_of(run_id_of(second)).id)
    assert any(line == f"Image {image} already exists: build skipped" for line in logs)
    assert job_report(logs, "CONFIG") == {"lr": 0.01, "epochs": 1}


def test_code_only_change_gets_a_new_tag(engine, registry, index, agent_config, make_queue, start_agent, tmp_path):
    queue = _container_queue(make_queue, tmp_path)
    start_agent("-q", queue, "--config", str(agent_config))
    images = []
    for marker in ("version one", "version two"):
        code = _code_folder(tmp_path / marker.replace(" ", "-"), index, marker)
        result = launch("-q", queue, "-u", str(code), "-E", "python train.py", "--wait", timeout=600)
        logs = run_logs(flow_run_of(run_id_of(result)).id)
        assert marker in logs
        images.append(_image_in_logs(logs))
    assert images[0] != images[1]


@pytest.fixture(scope="module")
def git_server(tmp_path_factory):
    server = GitServer(tmp_path_factory.mktemp("git"), GIT_PASSWORD)
    yield server
    server.close()


@pytest.fixture
def git_agent_env(git_server, tmp_path, monkeypatch):
    """The agent finds git credentials in a gitCreds file and trusts the server's certificate."""
    creds = tmp_path / "gitCreds"
    creds.write_text(git_server.credentials_line())
    monkeypatch.setenv("PREFECT_LAUNCH_GIT_CREDENTIALS", str(creds))
    monkeypatch.setenv("GIT_SSL_CAINFO", str(git_server.cert))


def _git_repositories(git_server: GitServer, root: Path, index: PackageIndex) -> tuple[str, str]:
    """A repo `helpers` and a repo `trainer` using it as a submodule; returns (trainer url, first commit)."""
    name = f"trainer-{root.name[-6:]}"
    helpers = root / "helpers"
    helpers.mkdir(parents=True)
    (helpers / "message.py").write_text("TEXT = 'from the submodule'\n")
    git(helpers, "init", "-q", "-b", "main")
    git(helpers, "add", ".")
    git(helpers, "commit", "-q", "-m", "helpers")
    git_server.publish(f"helpers-{root.name[-6:]}", helpers)

    trainer = _code_folder(root / "trainer", index)
    (trainer / "train.py").write_text(
        TRAIN + "sys.path.insert(0, 'helpers')\nimport message\nprint('SUBMODULE ' + json.dumps(message.TEXT))\n"
    )
    git(trainer, "init", "-q", "-b", "main")
    creds = root / "test-creds"
    creds.write_text(git_server.credentials_line())
    git(trainer, "-c", f"credential.helper=store --file={creds}", "submodule", "add", "-q",
        git_server.url(f"helpers-{root.name[-6:]}"), "helpers")
    git(trainer, "add", ".")
    git(trainer, "commit", "-q", "-m", "v1")
    git(trainer, "tag", "v1")
    first = git(trainer, "rev-parse", "HEAD")
    git(trainer, "checkout", "-q", "-b", "feature")
    (trainer / "train.py").write_text((trainer / "train.py").read_text() + "print('FEATURE BRANCH')\n")
    git(trainer, "commit", "-q", "-am", "feature")
    git(trainer, "checkout", "-q", "main")
    git_server.publish(name, trainer)
    return git_server.url(name), first


def test_git_job_with_submodule_tag_branch_and_stored_job(engine, registry, index, agent_config, make_queue,
                                                           start_agent, git_server, git_agent_env, tmp_path):
    queue = _container_queue(make_queue, tmp_path)
    start_agent("-q", queue, "--config", str(agent_config))
    url, first_commit = _git_repositories(git_server, tmp_path / "repos", index)

    tagged = launch("-q", queue, "-u", url, "--git-ref", "v1", "-E", "python train.py", "--wait", timeout=600)
    flow_run = flow_run_of(run_id_of(tagged))
    assert flow_run.state.is_completed(), flow_run.state
    logs = run_logs(flow_run.id)
    assert job_report(logs, "SUBMODULE") == "from the submodule"
    assert "FEATURE BRANCH" not in logs
    image = _image_in_logs(logs)

    branch = launch("-q", queue, "-u", url, "--git-ref", "feature", "-E", "python train.py", "--wait", timeout=600)
    assert "FEATURE BRANCH" in run_logs(flow_run_of(run_id_of(branch)).id)

    cli("job", "create", "git", url, "-p", "gitproj", "-n", "trainer", "--git-ref", first_commit, "-E", "python train.py")
    described = json.loads(cli("job", "describe", "gitproj/trainer").stdout)
    assert described["source"] == {"type": "git", "uri": url, "ref": first_commit}
    stored = launch("-q", queue, "-j", "gitproj/trainer", "--wait", timeout=300)
    stored_logs = run_logs(flow_run_of(run_id_of(stored)).id)
    assert f"Image {image} already exists: build skipped" in stored_logs  # same commit, same tag

    # The git password is nowhere: logs, parameters, artifacts, the image's layers and config.
    for result in (tagged, branch, stored):
        run = flow_run_of(run_id_of(result))
        assert GIT_PASSWORD not in "\n".join(run_logs(run.id)) + json.dumps(run.parameters)
        assert GIT_PASSWORD not in _artifacts_text(run.id)
    saved = subprocess.run(["docker", "save", image], capture_output=True, check=True).stdout
    assert GIT_PASSWORD.encode() not in saved
    assert any(request.startswith("/trainer") for request in git_server.requests)


def _artifacts_text(flow_run_id) -> str:
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId

    async def read():
        async with get_client() as client:
            return await client.read_artifacts(
                artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
            )

    return "\n".join(str(artifact.data) for artifact in anyio.run(read))


def test_git_refuses_other_transports_credentials_in_uris_and_options(tmp_path):
    for uri, named in (("file:///etc", "only https:// and ssh"), ("ext::sh -c touch% /tmp/pwned", "only https:// and ssh"),
                       ("git://127.0.0.1/x.git", "only https:// and ssh"),
                       ("https://user:hunter2@127.0.0.1/x.git", "holds credentials"),
                       ("https://user:hunter2@x@127.0.0.1/x.git", "holds credentials"),
                       ("https://hunter2@127.0.0.1/x.git", "holds credentials (a user name can be a token)"),
                       ("git@-oProxyCommand:x", "starting with '-'")):
        result = cli("launch", "-r", "local-container", "-u", uri, "-E", "python x.py", "--dry-run", check=False)
        assert result.returncode != 0, uri
        assert "hunter2" not in result.stdout + result.stderr
        assert named in result.stderr, result.stderr
    result = cli("launch", "-r", "local-container", "-u", "https://127.0.0.1/x.git", "--git-ref", "--upload-pack=id",
                 "-E", "python x.py", "--dry-run", check=False)
    assert result.returncode != 0 and "git would read it as an option" in result.stderr, result.stderr


def test_failing_build_fails_the_job_and_the_agent_keeps_serving(engine, registry, agent_config, make_queue,
                                                                  start_agent, tmp_path):
    queue = _container_queue(make_queue, tmp_path)
    agent = start_agent("-q", queue, "--config", str(agent_config))
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "train.py").write_text("print('never runs')\n")
    (broken / "Dockerfile.wandb").write_text(f"FROM {BASE_IMAGE}\nRUN echo compiling-the-thing && exit 3\n")
    failed = launch("-q", queue, "-u", str(broken), "-E", "python train.py", "--wait", check=False, timeout=300)
    state = flow_run_of(run_id_of(failed)).state
    assert failed.returncode == 1 and state.is_failed()
    assert "image build failed" in state.message and "compiling-the-thing" in state.message

    good = launch("-q", queue, "-d", BASE_IMAGE, "-E", "python -c 'import wandb; wandb.init().finish()'",
                  "--wait", timeout=300)
    assert flow_run_of(run_id_of(good)).state.is_completed()
    assert agent.alive()


def test_noop_builder_refuses_code_jobs_at_once_and_runs_images(engine, make_queue, start_agent, tmp_path):
    config = tmp_path / "noop.yaml"
    config.write_text("builder:\n  type: noop\n")
    queue = _container_queue(make_queue, tmp_path)
    start_agent("-q", queue, "--config", str(config))
    started = time.monotonic()
    failed = launch("-q", queue, "-u", str(JOBS), "-E", "python report.py", "--wait", check=False, timeout=120)
    message = flow_run_of(run_id_of(failed)).state.message
    assert f"queue {queue!r} uses the noop builder" in message and "code source" in message
    assert time.monotonic() - started < 60
    image = launch("-q", queue, "-d", BASE_IMAGE, "-E", "python -c 'import wandb; wandb.init().finish()'", "--wait")
    assert flow_run_of(run_id_of(image)).state.is_completed()


def _docker_run_of(run_id: str) -> list[str] | None:
    """The command line of the agent's `docker run` for a run, as the kernel holds it."""
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            argv = cmdline.read_bytes().decode().split("\0")[:-1]
        except OSError:  # the process has ended
            continue
        if argv[:2] == ["docker", "run"] and f"prefect-launch-{run_id}" in argv:
            return argv
    return None


def test_cancelling_stops_and_removes_the_container(engine, make_queue, start_agent, tmp_path):
    queue = _container_queue(make_queue, tmp_path)
    start_agent("-q", queue)
    job = ("-d", BASE_IMAGE, "-E", "python -c 'import time; print(\"up\", flush=True); time.sleep(300)'")
    run_id = run_id_of(launch("-q", queue, *job))
    deadline = time.monotonic() + 120
    while not _containers_of(run_id):
        assert time.monotonic() < deadline, "container never started"
        time.sleep(0.3)
    # The dry run of the same job and run id shows exactly the `docker run` the agent started.
    assert _docker_run_of(run_id) == dry_run_submission("-q", queue, *job, "--run-id", run_id,
                                                        home_dir=tmp_path / "home")["argv"]
    cancel_run(run_id)
    assert wait_for_final(run_id, timeout=90).state.is_cancelled()
    _assert_removed(run_id)


def test_docker_queue_seeds_render_as_written():
    seed = (Path(__file__).parent / "seeds" / "001_docker_queue_1.json").read_text()
    result = cli("launch", "-r", "local-container", "-R", seed, "-d", "trainer:1", "-E", "python train.py",
                 "--run-id", "seedrun", "--dry-run")
    submission = json.loads(result.stdout)["submission"]
    argv = submission["argv"]
    image_at = argv.index("trainer:1")
    # Each variable by name, its value in docker's own environment (nothing in `ps`); W&B's entry point rule.
    expected = ["--env", "MY_ENV_VAR", "--env", "MY_EXISTING_ENV_VAR", "--volume",
                "/mnt/datasets:/mnt/datasets", "--rm", "--gpus", "all"]
    assert argv[image_at - len(expected):image_at] == expected
    assert submission["env"]["MY_ENV_VAR"] == "value" and "MY_EXISTING_ENV_VAR" not in submission["env"]
    assert argv[argv.index("--entrypoint") + 1] == "python" and argv[image_at + 1:] == ["train.py"]

    tensorflow = (Path(__file__).parent / "seeds" / "004_docker_queue_1.json").read_text()
    argv = json.loads(cli("launch", "-r", "local-container", "-R", tensorflow, "-d", "trainer:1",
                          "--dry-run").stdout)["submission"]["argv"]
    assert argv[argv.index("trainer:1") - 2:argv.index("trainer:1")] == ["--gpus", "all"]
    assert not any("builder" in arg or "accelerator" in arg for arg in argv)


def test_no_builder_configured_uses_the_engine_and_keeps_images_local(engine, index, make_queue, start_agent,
                                                                      tmp_path):
    """No agent config: docker is used because an engine answers; no destination keeps images local; -B sets the base."""
    queue = _container_queue(make_queue, tmp_path)
    start_agent("-q", queue, "--config", str(_write_empty_config(tmp_path)))
    code = _code_folder(tmp_path / "code", index, "local image")
    result = launch("-q", queue, "-u", str(code), "-E", "python train.py", "-B", BASE_IMAGE, "-p", "Local Proj",
                    "--wait", timeout=600)
    logs = run_logs(flow_run_of(run_id_of(result)).id)
    assert "local image" in logs
    image = _image_in_logs(logs)
    assert image.startswith("prefect-launch/local-proj:")
    assert any("stays in the local engine" in line for line in logs)
    assert engine.images.get(image).attrs["Config"]["Cmd"] == ["python", "train.py"]


def _write_empty_config(tmp_path: Path) -> Path:
    path = tmp_path / "empty-launch-config.yaml"
    path.write_text("{}\n")
    return path
