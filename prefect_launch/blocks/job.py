"""Job definitions: a named source + entry point + requirements + input schema.

Stored as a Prefect block per job, so they show in the UI's Blocks page and
any agent can load them by name. `launch -j NAME` runs one.

Example::

    job = LaunchJob(project="mnist", name="train", source={"type": "image", "image": "trainer:1"},
                    entry_point=["python", "train.py"])
    job.save(LaunchJob.block_name("mnist", "train"))
    LaunchJob.find("mnist/train").entry_point   # ['python', 'train.py']
"""

from __future__ import annotations

import re
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
        """Store (or replace) the definition under its project and name; returns `project/name`."""
        self.save(self.block_name(self.project, self.name), overwrite=True)
        return f"{self.project}/{self.name}"

    @staticmethod
    def block_name(project: str, name: str) -> str:
        """Block document names allow lowercase letters, digits and dashes only."""
        slug = re.sub(r"[^a-z0-9-]+", "-", f"{project}--{name}".lower()).strip("-")
        return slug

    @staticmethod
    def split_reference(reference: str, default_project: str | None) -> tuple[str, str]:
        """`[entity/]project/name[:alias]` or `name` (with a default project)."""
        path = reference.split(":", 1)[0].split("/")
        if len(path) == 1:
            if not default_project:
                raise LaunchError(f"job {reference!r}: give it as project/name or pass -p/--project")
            return default_project, path[0]
        return path[-2], path[-1]

    @classmethod
    def find(cls, reference: str, default_project: str | None = None) -> "LaunchJob":
        project, name = cls.split_reference(reference, default_project)
        try:
            return cls.load(cls.block_name(project, name))
        except ValueError:
            raise LaunchError(f"job {project}/{name} not found; create it with `prefect-launch job create`") from None

    @classmethod
    def list_all(cls) -> list["LaunchJob"]:
        from prefect.client.orchestration import get_client

        from prefect_launch.prefect_internals import block_from_document

        with get_client(sync_client=True) as client:
            documents = client.read_block_documents_by_type(cls.get_block_type_slug(), include_secrets=False)
        return [block_from_document(cls, document) for document in documents]
