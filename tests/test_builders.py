"""Build plans: Dockerfile precedence, generated Dockerfiles, and tags every agent agrees on. No engine needed."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from conftest import SEEDS
from prefect_launch.builders import BuildSettings, plan_build
from prefect_launch.builders.docker import DockerBuilder
from prefect_launch.builders.plan import GENERATED_DOCKERFILE, GENERATED_REQUIREMENTS, normalize_requirements
from prefect_launch.errors import LaunchError
from prefect_launch.spec import LaunchKeys, ResolvedJob


def _job(folder: Path, **extra) -> ResolvedJob:
    return ResolvedJob(run_id="r1", run_name="r1", project="p", argv=["python", "src/train.py"],
                       entry_point=["python", "src/train.py"], workdir=folder, **extra)


def _plan(folder: Path, resource_args: dict | None = None, cache_scope: str | None = None, **extra):
    accelerator = LaunchKeys.parse(resource_args or {}, "queue config").builder.accelerator_base_image
    return plan_build(_job(folder, **extra), accelerator, "base:1", "reg.local/launch", cache_scope)


def _files(plan) -> dict[str, str]:
    import io
    import tarfile

    with tarfile.open(fileobj=io.BytesIO(plan.context)) as tar:
        return {m.name: tar.extractfile(m).read().decode() for m in tar.getmembers() if m.isfile()}


@pytest.fixture
def code(tmp_path: Path) -> Path:
    folder = tmp_path / "code"
    (folder / "src").mkdir(parents=True)
    (folder / "src" / "train.py").write_text("print('train')\n")
    (folder / "requirements.txt").write_text("numpy\n")
    return folder


def test_generated_dockerfile_installs_requirements_before_copying_code(code):
    plan = _plan(code)
    dockerfile = _files(plan)[GENERATED_DOCKERFILE]
    lines = dockerfile.splitlines()
    assert lines[0] == "FROM base:1"
    install = next(i for i, line in enumerate(lines) if "pip install" in line)
    copy_code = lines.index("COPY . /launch/code")
    assert lines.index(f"COPY {GENERATED_REQUIREMENTS} /launch/requirements.txt") < install < copy_code
    assert lines[-1] == 'CMD ["python", "src/train.py"]'
    assert "--mount=type=cache" not in dockerfile
    scoped = _files(_plan(code, cache_scope="gpu"))[GENERATED_DOCKERFILE]
    assert "--mount=type=cache,id=prefect-launch-pip/gpu,target=/root/.cache/pip" in scoped
    assert _plan(code, cache_scope="gpu").tag != _plan(code, cache_scope="cpu").tag  # one queue's image is its own
    assert plan.generated and plan.image.startswith("reg.local/launch:")


def test_dockerfile_precedence(code):
    (code / "Dockerfile").write_text("FROM root-dockerfile\n")
    assert _plan(code).dockerfile == GENERATED_DOCKERFILE  # a plain Dockerfile is just a file
    (code / "src" / "Dockerfile.wandb").write_text("FROM wandb-dockerfile\n")
    beside = _plan(code)
    assert beside.dockerfile == "src/Dockerfile.wandb" and not beside.generated
    explicit = _plan(code, dockerfile="./Dockerfile")
    assert explicit.dockerfile == "Dockerfile"
    for bad in ("missing.Dockerfile", "../Dockerfile", "/etc/passwd"):
        with pytest.raises(LaunchError, match="not found in the job's code folder"):
            _plan(code, dockerfile=bad)


def test_accelerator_base_image_and_the_older_cuda_key(code):
    for key in ("accelerator", "cuda"):
        dockerfile = _files(_plan(code, {"builder": {key: {"base_image": "nvidia/cuda:12-runtime"}}}))[GENERATED_DOCKERFILE]
        assert dockerfile.startswith("FROM nvidia/cuda:12-runtime\nRUN apt-get update")
        assert "python3-venv" in dockerfile and "ENV PATH=/opt/launch-venv/bin:$PATH" in dockerfile
    # -B/--base-image names a Python image: no apt step.
    dockerfile = _files(_plan(code, {"builder": {"accelerator": {"base_image": "cuda:1"}}}, base_image="py:3"))[GENERATED_DOCKERFILE]
    assert dockerfile.startswith("FROM py:3\nWORKDIR")


def test_job_level_accelerator_overrides_the_queue(code):
    from prefect_launch.builders import plan_for
    from prefect_launch.registries.local import LocalImages
    from prefect_launch.render import launch_keys
    from prefect_launch.spec import QueueConfig

    queue = QueueConfig(resource="local-container", resource_args={"builder": {"accelerator": {"base_image": "queue:1"}}})
    job_level = {"builder": {"accelerator": {"base_image": "job:1"}}}
    accelerator = launch_keys(_job(code), queue, job_level).builder.accelerator_base_image
    plan = plan_for(_job(code), accelerator, BuildSettings(), DockerBuilder(), LocalImages(), "gpu")
    assert _files(plan)[GENERATED_DOCKERFILE].startswith("FROM job:1\n")
    assert plan.image.startswith("prefect-launch/p:")


def test_seed_requirements_index_url_is_normalized(code):
    seed = (SEEDS / "004_other_2.txt").read_text()
    assert normalize_requirements(seed).startswith("--index-url=https://xyz@<your-repo-host> --extra-index-url=")
    (code / "requirements.txt").write_text(seed)
    assert _files(_plan(code))[GENERATED_REQUIREMENTS].startswith("--index-url=")
    assert (code / "requirements.txt").read_text() == seed  # the job's own file is untouched


def test_tag_depends_on_content_only(code, tmp_path):
    tag = _plan(code).tag
    # Another agent: another folder, other file times and owner bits, another user, host and Python.
    other = tmp_path / "elsewhere" / "checkout"
    shutil.copytree(code, other)
    os.utime(other / "src" / "train.py", (0, 0))
    script = textwrap.dedent(f"""
        from pathlib import Path
        from prefect_launch.builders import plan_build
        from prefect_launch.spec import ResolvedJob
        job = ResolvedJob(run_id="zz", run_name="other", project="p", argv=["python", "src/train.py", "--x"],
                          entry_point=["python", "src/train.py"], workdir=Path({str(other)!r}))
        print(plan_build(job, None, "base:1", "reg.local/launch", False).tag)
    """)
    env = {**os.environ, "HOME": str(tmp_path), "USER": "someone-else", "HOSTNAME": "agent-2"}
    other_tag = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True).stdout.strip()
    assert other_tag == tag

    (code / "src" / "train.py").write_text("print('changed')\n")
    changed_code = _plan(code).tag
    (code / "requirements.txt").write_text("numpy\nscipy\n")
    changed_requirements = _plan(code).tag
    other_base = plan_build(_job(code), None, "base:2", "reg.local/launch", False).tag
    assert len({tag, changed_code, changed_requirements, other_base}) == 4


def test_agent_config_builder_keys():
    from prefect_launch.agent_config import load_agent_config_text

    settings = BuildSettings.from_agent_config(load_agent_config_text(
        "builder:\n  type: docker\n  destination: reg.example/team/launch\n  base_image: py:3\n", "a.yaml"))
    assert (settings.builder, settings.destination, settings.base_image) == ("docker", "reg.example/team/launch", "py:3")
    older = BuildSettings.from_agent_config(load_agent_config_text(
        "registry:\n  type: ecr\n  uri: 1234.dkr.ecr.us-east-1.amazonaws.com/launch\n", "b.yaml"))
    assert older.destination == "1234.dkr.ecr.us-east-1.amazonaws.com/launch" and older.builder is None
    # The GCP seed names the destination `builder.uri` (its placeholders filled in, as the agent requires).
    seed = (SEEDS / "001_launch_config_4.yaml").read_text().replace("<kaniko|docker>", "docker")
    for placeholder, value in (("<region>", "us-central1"), ("<project-id>", "ml"), ("<repository-name>", "launch"),
                               ("<image-name>", "train")):
        seed = seed.replace(placeholder, value)
    gcp = BuildSettings.from_agent_config(load_agent_config_text(seed, "gcp"))
    assert gcp.destination and "docker.pkg.dev" in gcp.destination
