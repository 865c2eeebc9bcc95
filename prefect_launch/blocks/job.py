"""Job definitions: a named source + entry point + requirements + input schema.

Stored as a Prefect block per job, so they show in the UI's Blocks page and
any agent can load them by name. `launch -j NAME` runs one.

Example::

    job = LaunchJob(project="mnist", name="train", source={"type": "image", "image": "trainer:1"},
                    entry_point=["python", "train.py"])
    job.save_as_definition()
    LaunchJob.find("mnist/train").entry_point   # ['python', 'train.py']
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prefect.blocks.core import Block
from pydantic import Field

from prefect_launch.errors import LaunchError
from prefect_launch.spec import CodeSource


class LaunchJob(Block):
    """A launch job definition (W&B Launch's code, git or image job)."""

    _block_type_name = "Launch Job"
    _block_type_slug = "launch-job"
    _description = "A prefect-launch job: source, entry point, requirements and input schema."

    project: str = Field(description="W&B project the job belongs to")
    name: str = Field(description="Job name, unique within its project")
    entity: str | None = Field(default=None, description="W&B entity")
    source: dict[str, Any] = Field(description="Where the code comes from: code digest or image")
    entry_point: list[str] = Field(default_factory=list, description="Command to run")
    requirements: list[str] = Field(default_factory=list, description="Lines of requirements.txt")
    input_schema: dict[str, Any] | None = Field(
        default=None, description="JSON Schema the run config must satisfy"
    )

    @classmethod
    def from_code_folder(cls, folder: Path, source: CodeSource, **fields: Any) -> "LaunchJob":
        """A code job: `source` is the folder as stored (`sources.code.upload`); its requirements.txt is read."""
        requirements_file = folder / "requirements.txt"
        requirements = requirements_file.read_text().splitlines() if requirements_file.exists() else []
        return cls(
            source=source.model_dump(),
            requirements=[line for line in requirements if line.strip() and not line.startswith("#")],
            **fields,
        )

    def save_as_definition(self) -> str:
        """Store (or replace) the definition under its entity, project and name; returns `project/name`."""
        check_job_name(self.name)
        self.save(self.block_name(self.project, self.name, self.entity), overwrite=True)
        return f"{self.project}/{self.name}"

    @staticmethod
    def block_name(project: str, name: str, entity: str | None = None) -> str:
        """The block document of a job, one per job as W&B tells jobs apart.

        W&B lower-cases a project (`LaunchProject.target_project`) but keeps a job's name as written, and
        `_` apart from `-`; a block document name holds lowercase letters, digits and dashes only, so a
        readable slug is followed by a hash of the job's identity: `My_Proj/x` and `my-proj/x` are two jobs.

        >>> LaunchJob.block_name("My_Proj", "x") == LaunchJob.block_name("my_proj", "x") != LaunchJob.block_name("my-proj", "x")
        True
        """
        identity = f"{entity or ''}/{project.lower()}/{name}"
        slug = re.sub(r"[^a-z0-9-]+", "-", f"{project}--{name}".lower()).strip("-")
        return f"{slug}-{hashlib.sha256(identity.encode()).hexdigest()[:10]}"

    @classmethod
    def find(cls, reference: str, default_project: str | None = None, entity: str | None = None) -> "LaunchJob":
        """The job `[[entity/]project/]name[:alias]` names; `entity` (the run's) stands in for a missing entity part.

        A job with no entity is everyone's: it is found whatever the run's entity. Only a job's latest
        version is kept, so an alias other than `latest` is refused rather than ignored.
        """
        ref = JobReference.parse(reference, default_project)
        for owner in dict.fromkeys([ref.entity or entity, None if ref.entity is None else ref.entity]):
            try:
                return cls.load(cls.block_name(ref.project, ref.name, owner))
            except ValueError:
                continue
        owners = {job.entity for job in cls.list_all() if job.project.lower() == ref.project.lower() and job.name == ref.name}
        hints = [f"-j {'/'.join(filter(None, [owner, ref.project, ref.name]))}" for owner in sorted(owners, key=str)]
        hint = f"; it is stored as {' and '.join(hints)}" if hints else "; create it with `prefect-launch job create`"
        raise LaunchError(f"job {ref.display} not found" + (f" for entity {entity}" if entity and not ref.entity else "")
                          + hint)

    @classmethod
    def list_all(cls) -> list["LaunchJob"]:
        from prefect.client.orchestration import get_client

        from prefect_launch.prefect_internals import block_from_document

        with get_client(sync_client=True) as client:
            documents = client.read_block_documents_by_type(cls.get_block_type_slug(), include_secrets=False)
        return [block_from_document(cls, document) for document in documents]


# W&B's artifact names (`make_artifact_name_safe`): letters, digits, dashes, underscores and dots.
_JOB_NAME = re.compile(r"^[A-Za-z0-9_.-]+$")


def check_job_name(name: str) -> None:
    """A job name W&B would take: `wandb job create` refuses any other, and so does this.

    >>> check_job_name("my trainer")
    Traceback (most recent call last):
    ...
    prefect_launch.errors.LaunchError: job name 'my trainer': W&B job names may only contain letters, digits, dashes, underscores and dots
    """
    if not _JOB_NAME.match(name):
        raise LaunchError(f"job name {name!r}: W&B job names may only contain letters, digits, dashes, underscores "
                          "and dots")


@dataclass(frozen=True)
class JobReference:
    """`-j` as W&B reads it: `[[entity/]project/]name[:alias]`.

    >>> JobReference.parse("team/mnist/trainer:latest", None)
    JobReference(entity='team', project='mnist', name='trainer', alias='latest')
    >>> JobReference.parse("trainer:v3", "mnist")
    Traceback (most recent call last):
    ...
    prefect_launch.errors.LaunchError: job 'trainer:v3': alias 'v3' refused: only a job's latest version is kept here (`job create` replaces it); give -j trainer or trainer:latest
    """

    entity: str | None
    project: str
    name: str
    alias: str | None = None

    @classmethod
    def parse(cls, reference: str, default_project: str | None) -> "JobReference":
        path, _, alias = reference.partition(":")
        if alias and alias != "latest":
            raise LaunchError(f"job {reference!r}: alias {alias!r} refused: only a job's latest version is kept here "
                              f"(`job create` replaces it); give -j {path} or {path}:latest")
        parts = path.split("/")
        if len(parts) > 3 or not all(parts):
            raise LaunchError(f"job {reference!r}: expected [[entity/]project/]name[:alias]")
        if len(parts) == 1 and not default_project:
            raise LaunchError(f"job {reference!r}: give it as project/name or pass -p/--project")
        entity = parts[0] if len(parts) == 3 else None
        project = parts[-2] if len(parts) > 1 else default_project
        return cls(entity, project, parts[-1], alias or None)

    @property
    def display(self) -> str:
        return "/".join(filter(None, [self.entity, self.project, self.name]))
