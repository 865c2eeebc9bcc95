"""The `-c/--config` launch spec of `prefect-launch launch`, read as `wandb launch` reads it.

`-c` takes a file (`.json`, `.yaml`) or the JSON text itself (`util.load_json_yaml_dict`); its keys are
those a W&B launch spec holds (`construct_launch_spec` writes `docker`, `git`, `overrides`,
`resource_args`, ...). A key W&B knows but that cannot mean the same here is refused with the reason,
never dropped. Flags win over the file, as in `wandb launch`.

Example:
    >>> spec = LaunchConfigFile.model_validate({"docker": {"docker_image": "img:1"}, "git": {"version": "v2"},
    ...                                        "author": "ada", "overrides": {"args": ["--fast"]}})
    >>> spec.image, spec.ref, spec.author
    ('img:1', 'v2', 'ada')
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, model_validator

# Keys of a W&B launch spec that this package takes no value from, and why.
REFUSED_KEYS = {
    "sweep_id": "sweeps run with `prefect-launch sweep create`; a launch spec does not join one",
    "python_version": "an image's Python is its base image's here: give -B/--base-image",
    "registry": "an agent config key: put it in the agent's launch-config.yaml",
    "builder": "an agent config key (or a queue config's): put it in the agent's launch-config.yaml",
    "environment": "an agent config key: put it in the agent's launch-config.yaml",
    "_wandb_api_key": "a job gets the agent's W&B API key (or the queue config's env), never the submitter's",
    "_resume_count": "set by the agent when it puts a preempted run back on its queue",
}


class DockerKeys(BaseModel):
    """`docker:` of a W&B launch spec (`wandb launch -d` writes `docker.docker_image`)."""

    model_config = ConfigDict(extra="forbid")
    docker_image: str | None = None
    user_id: int | None = None

    @model_validator(mode="after")
    def _no_user_id(self) -> "DockerKeys":
        if self.user_id is not None:
            raise ValueError("docker.user_id: the user of a built image is the agent's builder's here (its "
                             "generated Dockerfile), not the spec's")
        return self


class GitKeys(BaseModel):
    """`git:` of a W&B launch spec (`wandb launch -g` writes `git.version`)."""

    model_config = ConfigDict(extra="forbid")
    version: str | None = None
    repo: str | None = None


class LaunchConfigFile(BaseModel):
    """The `-c/--config` launch spec, as W&B users write it."""

    model_config = ConfigDict(extra="forbid")
    uri: str | None = None
    job: str | None = None
    docker_image: str | None = Field(default=None, validation_alias=AliasChoices("docker_image", "image_uri"))
    docker: DockerKeys = Field(default_factory=DockerKeys)
    git: GitKeys = Field(default_factory=GitKeys)
    entry_point: list[str] | str | None = Field(default=None, validation_alias=AliasChoices("entry_point", "entrypoint"))
    project: str | None = None
    entity: str | None = None
    name: str | None = None
    run_id: str | None = None
    author: str | None = None
    queue: str | None = None
    resource: str | None = None
    git_ref: str | None = None
    base_image: str | None = None
    overrides: dict[str, Any] = Field(default_factory=dict)
    resource_args: dict[str, Any] = Field(default_factory=dict)
    template_variables: dict[str, Any] = Field(default_factory=dict)

    @model_validator(mode="before")
    @classmethod
    def _refused(cls, raw: Any) -> Any:
        if isinstance(raw, dict):
            for key in raw:
                if key in REFUSED_KEYS:
                    raise ValueError(f"{key}: {REFUSED_KEYS[key]}")
        return raw

    @model_validator(mode="after")
    def _one_of_each(self) -> "LaunchConfigFile":
        for what, values in (("image", (self.docker_image, self.docker.docker_image)),
                             ("git ref", (self.git_ref, self.git.version)), ("uri", (self.uri, self.git.repo))):
            given = {value for value in values if value}
            if len(given) > 1:
                raise ValueError(f"two values for the {what}: {' and '.join(sorted(given))}")
        return self

    @property
    def image(self) -> str | None:
        return self.docker_image or self.docker.docker_image

    @property
    def ref(self) -> str | None:
        return self.git_ref or self.git.version

    @property
    def source_uri(self) -> str | None:
        return self.uri or self.git.repo


def default_project(git_uri: str | None, job: str | None, folder: bool) -> str:
    """The project of a run launched without `-p` nor a spec `project`, as `wandb launch` picks it
    (`launch.utils.set_project_entity_defaults`, and `-p`'s help: "for github runs, the git repo name"):
    a git remote's repository name, a job's own project;
    for a code folder, the project `wandb.init` gives the job W&B makes of it (`WANDB_PROJECT`, the
    wandb settings file, else the git repository of the current folder, else `uncategorized`). For an
    image, `wandb launch --queue` refuses to go on without a project; here its run goes where the image's
    own `wandb.init` would put it with no project named, `uncategorized` (README: the W&B flag table).

    >>> default_project("git@github.com:org/trainer.git", None, False), default_project(None, "team/mnist/x", False)
    ('trainer', 'mnist')
    """
    if git_uri:
        return os.path.splitext(os.path.basename(git_uri.rstrip("/").replace(":", "/")))[0]
    if job:
        parts = job.split(":", 1)[0].split("/")
        if len(parts) > 1:
            return parts[-2]
    if folder:
        from wandb.sdk import wandb_setup
        from wandb.util import auto_project_name

        return wandb_setup.singleton().settings.project or auto_project_name(None)
    return "uncategorized"
