"""Build plans: which Dockerfile, which context, which tag. Reads the code folder; no network.

The Dockerfile is, in order of precedence: `-D/--dockerfile` or
`overrides.dockerfile` (a path in the code folder), `Dockerfile.wandb` beside
the entry point, or a generated one: the base image (with Python installed by
apt on an accelerator image), `requirements.txt` installed in its own layer
before the code is copied (so a code-only change reuses it), the code, and the
entry point as the default command.

The tag is the sha256 of the build context (code, Dockerfile, requirements),
packed deterministically, and the Dockerfile's path: nothing about the agent
that builds it, so every agent computes the same tag for the same job.

Example:
    >>> print(generate_dockerfile("python:3.11-slim", ["python", "train.py"], requirements=True,
    ...                           accelerator=False, cache_scope=None))
    FROM python:3.11-slim
    WORKDIR /launch/code
    COPY .launch/requirements.txt /launch/requirements.txt
    RUN python3 -m pip install --no-cache-dir --disable-pip-version-check -r /launch/requirements.txt
    COPY . /launch/code
    CMD ["python", "train.py"]
    <BLANKLINE>
    >>> normalize_requirements("----index-url=https://pkgs.example/simple\\nnumpy\\n")
    '--index-url=https://pkgs.example/simple\\nnumpy\\n'
"""

from __future__ import annotations

import hashlib
import json
import re
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any

from prefect_launch.archive import pack_tar
from prefect_launch.errors import LaunchError
from prefect_launch.spec import ResolvedJob

GENERATED_DOCKERFILE = ".launch/Dockerfile"
GENERATED_REQUIREMENTS = ".launch/requirements.txt"
WANDB_DOCKERFILE = "Dockerfile.wandb"
CODE_DIR = "/launch/code"

# W&B's docs write `----index-url=` (sic); pip knows only the two-dash form.
_DASHED_OPTION = re.compile(r"^-{3,}((?:extra-)?index-url)\b", re.M)


@dataclass(frozen=True)
class BuildPlan:
    """Everything a builder needs: a tar context, the Dockerfile's path in it, and the image to make."""

    context: bytes
    dockerfile: str
    image: str
    generated: bool

    @property
    def tag(self) -> str:
        return self.image.rsplit(":", 1)[1]


def normalize_requirements(text: str) -> str:
    return _DASHED_OPTION.sub(r"--\1", text)


def cache_mount_id(scope: str) -> str:
    """The pip cache's id as a generated Dockerfile names it: one cache per queue (`scope`); the docker builder
    salts it with its agent's key as it builds, so no Dockerfile a job writes can name another queue's cache."""
    return CACHE_ID_PREFIX + re.sub(r"[^A-Za-z0-9_.-]", "-", scope)


CACHE_ID_PREFIX = "prefect-launch-pip/"


def generate_dockerfile(
    base_image: str, entry_point: list[str], requirements: bool, accelerator: bool, cache_scope: str | None
) -> str:
    lines = [f"FROM {base_image}"]
    if accelerator:
        # Accelerator images (CUDA, TensorFlow GPU) are Debian-based and may lack Python.
        lines += [
            "RUN apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends "
            "python3 python3-venv python3-pip && rm -rf /var/lib/apt/lists/*",
            "RUN python3 -m venv /opt/launch-venv",
            "ENV PATH=/opt/launch-venv/bin:$PATH",
        ]
    lines.append(f"WORKDIR {CODE_DIR}")
    if requirements:
        pip = "python3 -m pip install --disable-pip-version-check -r /launch/requirements.txt"
        if cache_scope:
            run = f"RUN --mount=type=cache,id={cache_mount_id(cache_scope)},target=/root/.cache/pip {pip}"
        else:
            run = "RUN " + pip.replace("install", "install --no-cache-dir", 1)
        lines += [f"COPY {GENERATED_REQUIREMENTS} /launch/requirements.txt", run]
    lines.append(f"COPY . {CODE_DIR}")
    if entry_point:
        lines.append(f"CMD {json.dumps(entry_point)}")
    return "\n".join(lines) + "\n"


def _entry_point_dir(entry_point: list[str]) -> PurePosixPath:
    script = next((arg for arg in entry_point if arg.endswith(".py")), None)
    return PurePosixPath(script).parent if script else PurePosixPath(".")


def _user_dockerfile(job: ResolvedJob, folder: Path) -> str | None:
    if job.dockerfile:
        path = PurePosixPath(job.dockerfile.removeprefix("./"))
        if path.is_absolute() or ".." in path.parts or not (folder / path).is_file():
            raise LaunchError(f"dockerfile {job.dockerfile!r} not found in the job's code folder")
        return str(path)
    beside = _entry_point_dir(job.entry_point) / WANDB_DOCKERFILE
    return str(beside) if (folder / beside).is_file() else None


def plan_build(
    job: ResolvedJob,
    accelerator_image: str | None,
    default_base_image: str,
    repository: str,
    cache_scope: str | None,
) -> BuildPlan:
    """Plan the image for a code or git job; `repository` is where its tag goes (`registry/repo`).

    `accelerator_image` is the queue's (or job's) `builder.accelerator.base_image`: it is the base, with
    Python installed by apt, unless the job names its own base image. `cache_scope` (the queue, where the
    builder has BuildKit) gives the generated Dockerfile a pip cache of that queue's own.
    """
    if job.workdir is None:
        raise LaunchError("the job has no code folder to build")
    folder = Path(job.workdir)
    dockerfile = _user_dockerfile(job, folder)
    extra: dict[str, bytes] = {}
    if dockerfile is None:
        requirements = folder / "requirements.txt"
        if requirements.is_file():
            extra[GENERATED_REQUIREMENTS] = normalize_requirements(requirements.read_text()).encode()
        text = generate_dockerfile(
            base_image=job.base_image or accelerator_image or default_base_image,
            entry_point=job.entry_point,
            requirements=requirements.is_file(),
            accelerator=bool(accelerator_image) and not job.base_image,
            cache_scope=cache_scope,
        )
        extra[GENERATED_DOCKERFILE] = text.encode()
        dockerfile = GENERATED_DOCKERFILE
    context = pack_tar(folder, extra)
    digest = hashlib.sha256(dockerfile.encode() + b"\0" + context).hexdigest()
    return BuildPlan(
        context=context,
        dockerfile=dockerfile,
        image=f"{repository}:{digest[:32]}",
        generated=dockerfile == GENERATED_DOCKERFILE,
    )
