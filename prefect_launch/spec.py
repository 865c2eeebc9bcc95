"""The data that flows through a launch: job spec -> resolved job -> submission.

A `LaunchSpec` is what a user puts on a queue (it is the launch flow's only
parameter, so the Prefect UI renders it as a form). A `QueueConfig` is what the
queue's admin wrote (resolved from the work pool's job template). A
`ResolvedJob` is the spec after the agent has taken it: its source fetched, its
run id fixed, its entry point known.

Example:
    >>> spec = LaunchSpec.model_validate(
    ...     {"entry_point": ["python", "train.py"],
    ...      "overrides": {"run_config": {"lr": 0.1}, "entrypoint": []}})
    >>> spec.overrides.entry_point is None, spec.overrides.run_config
    (True, {'lr': 0.1})
"""

from __future__ import annotations

import copy
import json
import secrets
import string
import uuid
from enum import Enum
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AliasChoices, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from prefect_launch.errors import invalid_config
from prefect_launch.images import ImageReference


# What one job's submitter may send, checked before anything is done with it (so masking, templating
# and logging stay cheap for every other job on the agent). An argument must also fit Linux's
# 131,072 bytes per argument or environment string; a longer run config reaches the job split
# into WANDB_CONFIG_0, _1, ... (jobenv.py). The whole spec is the launch flow's parameter, and a
# Prefect server refuses parameters over 524,288 bytes by default (PREFECT_SERVER_API_MAX_PARAMETER_SIZE).
MAX_ARGUMENT = 65_536  # characters in one entry-point word or argument
MAX_ARGUMENTS = 4_096  # entry point and arguments together
MAX_RUN_CONFIG = 400_000  # characters of the run config as JSON
MAX_SPEC = 500_000  # bytes of the whole spec as JSON

# W&B's spellings of our resources.
RESOURCE_ALIASES = {"gcp-vertex": "vertex", "local": "local-container"}


class Resource(str, Enum):
    """The targets a queue can send jobs to."""

    local_process = "local-process"
    local_container = "local-container"
    kubernetes = "kubernetes"
    sagemaker = "sagemaker"
    vertex = "vertex"

    @classmethod
    def parse(cls, name: str) -> "Resource":
        """Accept W&B's spellings (`gcp-vertex`, `local`) as well as ours."""
        try:
            return cls(RESOURCE_ALIASES.get(name, name))
        except ValueError:
            known = ", ".join(r.value for r in cls)
            raise ValueError(f"unknown resource {name!r}; expected one of: {known}") from None


class CodeSource(BaseModel):
    """A folder of code stored content-addressed in a Prefect storage block."""

    # json_schema_extra titles name the choice in the Prefect UI's form (validation errors keep the class name).
    model_config = ConfigDict(extra="forbid", json_schema_extra={"title": "Code folder"})
    type: Literal["code"] = "code"
    digest: str = Field(
        pattern=r"^sha256:[0-9a-f]{64}$",
        description="sha256:<hex> of the packed folder, as `prefect-launch job describe` shows it",
    )
    storage: str = Field(description="Name of the Prefect filesystem block holding the code")


class GitSource(BaseModel):
    """A git repository at a branch, tag or commit (https or ssh remotes only)."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"title": "Git repository"})
    type: Literal["git"] = "git"
    uri: str = Field(description="https://host/repo.git or git@host:repo.git")
    ref: str | None = Field(default=None, description="Branch, tag or commit; the remote's HEAD if unset")

    @field_validator("uri")
    @classmethod
    def _only_https_and_ssh(cls, value: str) -> str:
        from prefect_launch.git_remotes import check_remote

        check_remote(value)
        return value

    @field_validator("ref")
    @classmethod
    def _a_ref_not_an_option(cls, value: str | None) -> str | None:
        from prefect_launch.git_remotes import check_ref

        if value is not None:
            check_ref(value)
        return value


class ImageSource(BaseModel):
    """A prebuilt container image."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={"title": "Image"})
    type: Literal["image"] = "image"
    image: ImageReference = Field(description="Image reference, e.g. registry.example.com/team/trainer:v1")


Source = Annotated[CodeSource | GitSource | ImageSource, Field(discriminator="type")]


def _flat_choices(schema: dict[str, Any]) -> None:
    """Schema of an optional `Source` as one flat `anyOf` of its three models and null.

    Pydantic writes `anyOf: [{oneOf: [...], discriminator}, null]`; the Prefect UI's form has no
    `oneOf` and showed a blank choice that opened a raw JSON editor. Flat, each model is a button
    (Code folder, Git repository, Image, None) with its own fields. Validation is unchanged: the
    discriminator still picks the model.
    """
    choices: list[dict[str, Any]] = []
    for option in schema.pop("anyOf", []):
        choices += option.get("oneOf", [option])
    schema["anyOf"] = choices


class Overrides(BaseModel):
    """Per-run overrides, in the shape the W&B App shows them."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    args: list[str] = Field(default_factory=list, description="Arguments appended to the entry point")
    run_config: dict[str, Any] = Field(default_factory=dict, description="Values for wandb.config")
    entry_point: list[str] | None = Field(
        default=None,
        validation_alias=AliasChoices("entry_point", "entrypoint"),
        description="Replaces the job's entry point",
    )
    dockerfile: str | None = Field(default=None, description="Dockerfile to build with")

    @field_validator("entry_point", mode="before")
    @classmethod
    def _empty_means_unset(cls, value: Any) -> Any:
        # The W&B App writes `"entrypoint": []` for "no override".
        if isinstance(value, str):
            return value.split()
        return value or None


class LaunchSpec(BaseModel):
    """One job put on a queue: what to run, as whom, with which overrides."""

    model_config = ConfigDict(extra="forbid")
    job: str | None = Field(default=None, description="A stored job definition: [project/]name")
    source: Source | None = Field(
        default=None, description="Code or image, when no job is named", json_schema_extra=_flat_choices
    )
    entry_point: list[str] | None = Field(default=None, description="Command to run, as an argv list")
    project: str = Field(default="uncategorized", description="W&B project")
    entity: str | None = Field(default=None, description="W&B entity")
    run_name: str | None = Field(default=None, description="W&B run name")
    run_id: str | None = Field(default=None, pattern=r"^[a-z0-9]{1,64}$", description="W&B run id")
    author: str | None = Field(default=None, description="W&B user the run is made as (WANDB_USERNAME), as W&B's spec `author`")
    base_image: ImageReference | None = Field(default=None, description="Base image of the generated Dockerfile")
    overrides: Overrides = Field(default_factory=Overrides)
    resource_args: dict[str, Any] = Field(
        default_factory=dict, description="Merged over the queue's resource args"
    )
    ttl: int | None = Field(
        default=None, ge=1, description="Seconds the job may wait on its queue; past them, still waiting, it ends Cancelled"
    )
    preemptions: int = Field(
        default=0, ge=0, description="Times this run was preempted and put back on its queue (set by the agent)"
    )
    flow_run: uuid.UUID | None = Field(
        default=None,
        description="The Prefect flow run this job executes, for a deployed flow (set by the agent); with no job and "
                    "no source, its deployment's own pull steps fetch the code",
    )

    @field_validator("entry_point", mode="before")
    @classmethod
    def _split_string(cls, value: Any) -> Any:
        return value.split() if isinstance(value, str) else value

    @model_validator(mode="after")
    def _within_size_limits(self) -> "LaunchSpec":
        words = [("entry_point", self.entry_point or []), ("overrides.entry_point", self.overrides.entry_point or []),
                 ("overrides.args", self.overrides.args)]
        count = sum(len(values) for _, values in words)
        if count > MAX_ARGUMENTS:
            raise ValueError(f"{count:,} entry-point words and arguments; a job may have at most {MAX_ARGUMENTS:,}")
        for where, values in words:
            for n, value in enumerate(values):
                if len(value) > MAX_ARGUMENT:
                    raise ValueError(f"{where}[{n}] holds {len(value):,} characters; "
                                     f"an argument may hold at most {MAX_ARGUMENT:,}")
        run_config = len(json.dumps(self.overrides.run_config, default=str))
        if run_config > MAX_RUN_CONFIG:
            raise ValueError(f"overrides.run_config is {run_config:,} characters as JSON; "
                             f"at most {MAX_RUN_CONFIG:,} are accepted")
        spec = len(self.model_dump_json(exclude_none=True).encode())
        if spec > MAX_SPEC:
            raise ValueError(f"the job spec is {spec:,} bytes as JSON; at most {MAX_SPEC:,} are accepted "
                             "(it is the launch flow's parameter)")
        return self


class AcceleratorImage(BaseModel):
    model_config = ConfigDict(extra="forbid")
    base_image: ImageReference | None = Field(default=None, description="Base image of accelerator jobs (CUDA, TensorFlow GPU)")


class BuilderKeys(BaseModel):
    """`builder:` in a queue config or a job's resource args: the accelerator base image of its build."""

    model_config = ConfigDict(extra="forbid")
    accelerator: AcceleratorImage | None = None
    cuda: AcceleratorImage | None = Field(default=None, description="`accelerator` as wandb wrote it before 0.15.6")

    @property
    def accelerator_base_image(self) -> str | None:
        for section in (self.accelerator, self.cuda):
            if section is not None and section.base_image:
                return section.base_image
        return None


class SchedulerKeys(BaseModel):
    """`scheduler:` in a queue config: how many trials of a sweep on this queue run at once."""

    # W&B's sweep scheduler job keys (job, resource, resource_args, ...) are accepted and unused here.
    model_config = ConfigDict(extra="allow")
    num_workers: int | None = Field(default=None, ge=1)


class LaunchKeys(BaseModel):
    """The keys W&B lets any queue config carry beside the target's own: they configure the build and
    sweeps, never the target, and are taken off before a target parses its config. `job_may_set` is
    prefect-launch's: the fields a queue's admin lets jobs set beyond their target's policy; `ttl` is the
    queue's default time-to-live of a waiting job; `max_requeues` how often a preempted job goes back to the
    queue (W&B's fixed 5, 0 for never); `checkpoints` where runs keep checkpoints that survive requeues;
    `max_running_per_entity` / `max_running_per_project` the queue's fair share (`fair_share`).

    >>> own, rest = LaunchKeys.split({"gpus": "all", "builder": {"accelerator": {"base_image": "tf:gpu"}}})
    >>> LaunchKeys.parse(own, "queue config").builder.accelerator_base_image, rest
    ('tf:gpu', {'gpus': 'all'})
    """

    model_config = ConfigDict(extra="forbid")
    builder: BuilderKeys = Field(default_factory=BuilderKeys)
    scheduler: SchedulerKeys = Field(default_factory=SchedulerKeys)
    job_may_set: list[str] = Field(
        default_factory=list,
        description="Fields a job's own resource args may set beyond what its target permits (the admin opts them in)",
    )
    ttl: int | None = Field(default=None, ge=1, description="Seconds a job may wait on the queue, for jobs that give none")
    max_requeues: int = Field(
        default=5, ge=0,
        description="Times a preempted job goes back to the queue as the same W&B run (W&B's fixed 5); 0 turns requeue off",
    )
    checkpoints: str | None = Field(
        default=None,
        description="Where runs keep checkpoints that survive requeues: an object-store prefix (s3://, gs://) or a shared path",
    )
    max_running_per_entity: int | None = Field(
        default=None, ge=1, description="Jobs of one W&B entity this queue runs at once, across all its agents (fair share)"
    )
    max_running_per_project: int | None = Field(
        default=None, ge=1, description="Jobs of one W&B project this queue runs at once, across all its agents (fair share)"
    )

    @classmethod
    def split(cls, resource_args: dict[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
        """(the launch keys, the rest: the target's payload) of a queue config."""
        own = {key: value for key, value in resource_args.items() if key in cls.model_fields}
        return own, {key: value for key, value in resource_args.items() if key not in cls.model_fields}

    @classmethod
    def parse(cls, own: dict[str, Any], where: str) -> "LaunchKeys":
        try:
            return cls.model_validate({key: value for key, value in own.items() if value is not None})
        except ValidationError as exc:
            raise invalid_config(exc, where) from None


class QueueConfig(BaseModel):
    """A queue's configuration after template fields were filled in."""

    model_config = ConfigDict(extra="forbid")
    resource: Resource
    resource_args: dict[str, Any] = Field(default_factory=dict)
    require_wandb_run: bool = True

    @field_validator("resource", mode="before")
    @classmethod
    def _parse_resource(cls, value: Any) -> Any:
        return Resource.parse(value) if isinstance(value, str) else value

    def launch_keys(self) -> LaunchKeys:
        """The queue config's own launch keys (its time-to-live, requeue limit, fair share, ...)."""
        own, _ = LaunchKeys.split(unwrap_resource_key(self.resource_args, self.resource))
        return LaunchKeys.parse(own, f"{self.resource.value} queue config")


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    """`override` merged into a copy of `base`: dicts merge; lists of named items (Kubernetes containers, env,
    volumes) merge item by item by `name`, as `kubectl`'s strategic merge does, so a job's container keeps the
    queue's settings it does not name; everything else replaces.

    >>> deep_merge({"containers": [{"name": "main", "resources": {"limits": {"cpu": 1}}}]},
    ...            {"containers": [{"name": "main", "args": ["--x"]}, {"name": "side"}]})
    {'containers': [{'name': 'main', 'resources': {'limits': {'cpu': 1}}, 'args': ['--x']}, {'name': 'side'}]}
    """
    merged = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = deep_merge(merged[key], value)
        elif _named_items(value) and _named_items(merged.get(key)):
            by_name = {item["name"]: item for item in merged[key]}
            for item in value:
                by_name[item["name"]] = deep_merge(by_name[item["name"]], item) if item["name"] in by_name else copy.deepcopy(item)
            merged[key] = list(by_name.values())
        else:
            merged[key] = copy.deepcopy(value)
    return merged


def _named_items(value: Any) -> bool:
    return isinstance(value, list) and bool(value) and all(isinstance(item, dict) and isinstance(item.get("name"), str)
                                                          for item in value)


def unwrap_resource_key(resource_args: dict[str, Any], resource: Resource) -> dict[str, Any]:
    """W&B launch specs key resource args by resource (`{"local-container": {...}}`); accept both forms.

    A Kubernetes custom resource is itself written under `kubernetes:` with a
    `kind`, so that form is kept as is.
    """
    if len(resource_args) == 1:
        (key, inner), = resource_args.items()
        if isinstance(inner, dict) and key in _resource_names(resource) and "kind" not in inner:
            return inner
    return resource_args


def _resource_names(resource: Resource) -> set[str]:
    return {resource.value} | {alias for alias, name in RESOURCE_ALIASES.items() if name == resource.value}


class ResolvedJob(BaseModel):
    """A job the agent has taken: everything a target needs to render it."""

    model_config = ConfigDict(extra="forbid")
    run_id: str
    run_name: str
    project: str
    entity: str | None = None
    author: str | None = None
    queue: str | None = None
    # "deployment": a deployed flow's run whose deployment's own pull steps fetch its code (`sources.resolve`).
    source_kind: Literal["code", "git", "image", "deployment"] = "code"
    argv: list[str] = Field(description="Entry point followed by its args")
    run_config: dict[str, Any] = Field(default_factory=dict)
    workdir: Path | None = Field(default=None, description="Code folder: run here, or built into an image")
    entry_point: list[str] = Field(default_factory=list, description="The entry point alone, without args")
    dockerfile: str | None = Field(default=None, description="Dockerfile path inside the code folder")
    base_image: str | None = None
    image: str | None = None
    pull_secret: bool = Field(
        default=False, description="The image's registry needs a login the cluster lacks: the run's pods get one"
    )
    run_dir: Path | None = Field(default=None, description="Per-run scratch folder (WANDB_DIR)")
    checkpoint_dir: str | None = Field(
        default=None, description="The folder, as the job sees it, where it keeps checkpoints across requeues"
    )
    checkpoint_uri: str | None = Field(
        default=None, description="The object-store prefix of the run's checkpoints, the same for every attempt"
    )
    attempt: int = Field(default=0, description="0 for the first run, N after the Nth preemption (resumes the W&B run)")
    flow_run: uuid.UUID | None = Field(default=None, description="The deployed flow's run the job's Prefect engine executes")
    prefect_api_url: str | None = Field(default=None, description="Where that engine finds the Prefect server")


_RUN_ID_ALPHABET = string.ascii_lowercase + string.digits


def run_id_for(flow_run_id: uuid.UUID) -> str:
    """The W&B run id of a run enqueued without one (from the Prefect UI): fixed by its flow run, so an
    agent that adopts the run after its first agent died finds the same job.

    >>> run_id_for(uuid.UUID("00000000-0000-0000-0000-000000000001"))
    'aaaaaaab'
    """
    digits, number = [], flow_run_id.int
    for _ in range(8):
        number, digit = divmod(number, len(_RUN_ID_ALPHABET))
        digits.append(_RUN_ID_ALPHABET[digit])
    return "".join(reversed(digits))


def new_run_id() -> str:
    """A W&B-style run id: 8 random lowercase letters and digits."""
    return "".join(secrets.choice(_RUN_ID_ALPHABET) for _ in range(8))
