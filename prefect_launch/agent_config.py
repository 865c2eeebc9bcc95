"""The agent's `launch-config.yaml`, read exactly as W&B writes it.

Keys: `queues` (or one `queue`), `max_jobs` (-1 = unlimited), `max_schedulers`,
`entity`, `builder`, `registry`, `environment`, `secure_mode`, `verbosity`,
`stopped_run_timeout`, and this package's `kubernetes.cluster`. An unknown key is an error. As W&B's agent does,
`WANDB_ENTITY` and `WANDB_LAUNCH_MAX_JOBS` in the environment win over the
file, and the agent's flags over both. The W&B docs' examples are
full of placeholders (`<queue-name>`, `<n concurrent jobs>`,
`docker | kaniko | noop`): `--check` accepts them and lists them, the agent
refuses to start until they are filled in.

Example:
    >>> cfg = load_agent_config_text("max_jobs: -1\\nqueues:\\n  - <queue-name>\\n", "x.yaml")
    >>> cfg.max_jobs, cfg.placeholders()
    (None, ['queues[0]'])
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal, Mapping

from pydantic import (
    AliasChoices,
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationError,
    field_validator,
    model_validator,
)

from prefect_launch.config_files import ConfigFileError, parse_config_text, read_config_text
from prefect_launch.errors import LaunchError
from prefect_launch.images import ImageReference

DEFAULT_AGENT_CONFIG = Path("~/.config/wandb/launch-config.yaml")

# A value the docs leave for the reader to fill in: `<...>` anywhere, or `a | b | c` choices.
PLACEHOLDER = re.compile(r"<[^<>]+>|^\s*[\w-]+(\s*\|\s*[\w-]+)+\s*$")
Placeholder = Annotated[str, StringConstraints(pattern=PLACEHOLDER.pattern)]


class BuilderConfig(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["docker", "kaniko", "buildkit", "noop"] | Placeholder | None = None
    destination: str | None = None
    # Some W&B docs (GCP) name the destination `uri`.
    uri: str | None = None
    platform: Literal["linux/amd64", "linux/arm64"] | None = None
    build_context_store: str | None = Field(default=None, alias="build-context-store")
    build_job_name: str | None = Field(default=None, alias="build-job-name")
    secret_name: str | None = Field(default=None, alias="secret-name")
    secret_key: str | None = Field(default=None, alias="secret-key")
    kaniko_image: ImageReference | None = Field(default=None, alias="kaniko-image")
    # Beyond W&B: the image of the `buildkit` builder (rootless BuildKit in a Job).
    buildkit_image: ImageReference | None = Field(default=None, alias="buildkit-image")
    kaniko_config: dict[str, Any] | None = Field(default=None, alias="kaniko-config")
    base_image: ImageReference | None = Field(default=None, alias="base_image")


class RegistryConfig(BaseModel):
    """`registry:`, the older way to name where images go (`builder.destination` replaced it), in each form W&B's
    agent reads: `uri` (or the older `url`), ECR's `account_id`/`region`/`repo_name`, and Artifact Registry's
    `repository`/`image_name`/`project`/`region`, from which `uri` is made.

    >>> RegistryConfig(type="ecr", account_id="123456789012", region="us-east-1", repo_name="launch").uri
    '123456789012.dkr.ecr.us-east-1.amazonaws.com/launch'
    >>> RegistryConfig(type="gcr", region="us-central1", project="ml", repository="launch", image_name="train").uri
    'us-central1-docker.pkg.dev/ml/launch/train'
    """

    model_config = ConfigDict(extra="forbid", populate_by_name=True)
    type: Literal["ecr", "acr", "gcr", "local"] | Placeholder | None = None
    uri: str | None = None
    url: str | None = Field(default=None, description="`uri` as older W&B configs name it")
    account_id: str | None = None
    region: str | None = None
    repo_name: str | None = None
    repository: str | None = None
    image_name: str | None = Field(default=None, validation_alias=AliasChoices("image_name", "image-name"))
    project: str | None = None

    @model_validator(mode="after")
    def _uri_from_parts(self) -> "RegistryConfig":
        ecr = {"account_id": self.account_id, "region": self.region, "repo_name": self.repo_name or self.repository}
        gcr = {"region": self.region, "project": self.project, "repository": self.repository, "image_name": self.image_name}
        kind = self.type if self.type in ("ecr", "gcr") else "ecr" if self.account_id else "gcr" if self.image_name or self.project else None
        parts = {"ecr": ecr, "gcr": gcr}.get(kind, {})
        forms = [form for form, given in (("uri", self.uri), ("url", self.url), ("/".join(parts), any(parts.values())))
                 if given]
        if len(forms) > 1:
            raise ValueError(f"give the registry one way, not as {' and '.join(forms)}")
        if self.uri is None and self.url is not None:
            self.uri = self.url
        elif self.uri is None and any(parts.values()):
            missing = [key for key, value in parts.items() if not value]
            if missing:
                raise ValueError(f"{', '.join(missing)} missing: {kind} needs {', '.join(parts)} (or a uri)")
            self.uri = (f"{ecr['account_id']}.dkr.ecr.{ecr['region']}.amazonaws.com/{ecr['repo_name']}" if kind == "ecr"
                        else f"{gcr['region']}-docker.pkg.dev/{gcr['project']}/{gcr['repository']}/{gcr['image_name']}")
        return self


class EnvironmentConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")
    type: Literal["aws", "gcp", "azure"] | Placeholder | None = None
    region: str | None = None
    project: str | None = None
    # Beyond W&B: a Prefect credentials block (`aws-credentials/NAME`, `gcp-credentials/NAME`)
    # instead of the cloud's default credential chain.
    credentials: str | None = None


class KubernetesConfig(BaseModel):
    """Beyond W&B: `kubernetes.cluster` names the prefect-kubernetes block the agent reaches its cluster with
    (`kubernetes-cluster-config/NAME` or `kubernetes-credentials/NAME`); without it, in-cluster or KUBECONFIG."""

    model_config = ConfigDict(extra="forbid")
    cluster: str | None = Field(default=None, pattern=r"^(kubernetes-cluster-config|kubernetes-credentials)/.+$")


class AgentConfig(BaseModel):
    """A launch agent's configuration; CLI flags are applied over it with `with_flags`."""

    model_config = ConfigDict(extra="forbid")
    queues: list[str] = Field(default_factory=list)
    max_jobs: int | Placeholder | None = Field(
        default=None, description="Jobs running at once across all queues; None = unlimited"
    )
    max_schedulers: int | Placeholder | None = None
    entity: str | None = None
    builder: BuilderConfig | None = None
    registry: RegistryConfig | None = None
    environment: EnvironmentConfig | None = None
    kubernetes: KubernetesConfig | None = None
    secure_mode: bool = False
    verbosity: int = 0
    stopped_run_timeout: int = 60

    @field_validator("queues", mode="before")
    @classmethod
    def _none_is_empty(cls, value: Any) -> Any:
        return [] if value is None else value

    @model_validator(mode="before")
    @classmethod
    def _one_queue(cls, raw: Any) -> Any:
        """W&B's agent also reads a single `queue: NAME`, added to `queues`."""
        if isinstance(raw, dict) and "queue" in raw:
            raw = dict(raw)
            queue = raw.pop("queue")
            if not isinstance(queue, str):
                raise ValueError("queue: one queue name; list several under queues")
            raw["queues"] = [*(raw.get("queues") or []), queue]
        return raw

    def with_environment(self, environ: Mapping[str, str]) -> "AgentConfig":
        """`WANDB_ENTITY` and `WANDB_LAUNCH_MAX_JOBS` over the file, as W&B's agent reads them (flags win over both)."""
        updates: dict[str, Any] = {}
        if environ.get("WANDB_ENTITY"):
            updates["entity"] = environ["WANDB_ENTITY"]
        if environ.get("WANDB_LAUNCH_MAX_JOBS"):
            updates["max_jobs"] = environ["WANDB_LAUNCH_MAX_JOBS"]
        if not updates:
            return self
        try:
            return AgentConfig.model_validate({**self.model_dump(by_alias=True, exclude_unset=True), **updates})
        except ValidationError as exc:
            raise AgentConfigError(_describe(exc, "the environment (WANDB_ENTITY, WANDB_LAUNCH_MAX_JOBS)")) from None

    @field_validator("max_jobs", "max_schedulers", mode="after")
    @classmethod
    def _unlimited(cls, value: int | str | None) -> int | str | None:
        if isinstance(value, int) and value < 1:
            if value != -1:
                raise ValueError("must be a positive number, or -1 for unlimited")
            return None
        return value

    def with_flags(self, queues: list[str] | None, max_jobs: int | None, entity: str | None = None,
                   verbosity: int = 0) -> "AgentConfig":
        """CLI flags win over the file (`-v` only when given, as `wandb launch-agent` applies it)."""
        updates: dict[str, Any] = {}
        if queues:
            updates["queues"] = list(queues)
        if max_jobs is not None:
            updates["max_jobs"] = None if max_jobs == -1 else max_jobs
        if entity is not None:
            updates["entity"] = entity
        if verbosity:
            updates["verbosity"] = verbosity
        return self.model_copy(update=updates)

    def placeholders(self) -> list[str]:
        """Paths of values still holding a documentation placeholder."""
        return _placeholder_paths(self.model_dump(by_alias=True, exclude_none=True), "")


def _placeholder_paths(value: Any, where: str) -> list[str]:
    if isinstance(value, dict):
        return [p for k, v in value.items() for p in _placeholder_paths(v, f"{where}.{k}" if where else k)]
    if isinstance(value, list):
        return [p for i, v in enumerate(value) for p in _placeholder_paths(v, f"{where}[{i}]")]
    if isinstance(value, str) and PLACEHOLDER.search(value):
        return [where]
    return []


class AgentConfigError(LaunchError):
    """An agent config that cannot be used; the message names the file and the field."""


def load_agent_config_text(text: str, source: str) -> AgentConfig:
    try:
        raw = parse_config_text(text, source)
    except ConfigFileError as exc:
        raise AgentConfigError(str(exc)) from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise AgentConfigError(f"{source}: expected a mapping of keys (queues, max_jobs, ...)")
    try:
        return AgentConfig.model_validate(raw)
    except ValidationError as exc:
        raise AgentConfigError(_describe(exc, source)) from None


def load_agent_config(path: Path | None, environ: Mapping[str, str] = os.environ) -> AgentConfig:
    """Read the config at `path`, or W&B's default location if it exists, with W&B's variables of `environ` over it."""
    explicit = path is not None
    path = (path or DEFAULT_AGENT_CONFIG).expanduser()
    if not path.exists():
        if explicit:
            raise AgentConfigError(f"{path}: agent config file not found")
        return AgentConfig().with_environment(environ)
    return load_agent_config_text(read_config_text(path, "agent config"), str(path)).with_environment(environ)


def _describe(exc: ValidationError, source: str) -> str:
    lines: dict[str, str] = {}
    for error in exc.errors():
        # A union reports each branch; the placeholder branch's pattern message says nothing useful.
        loc = ".".join(str(p) for p in error["loc"] if not _is_union_branch(str(p)))
        if error["type"] == "extra_forbidden":
            lines[loc] = f"{source}: unknown key {loc!r}"
        elif error["type"] != "string_pattern_mismatch" or loc not in lines:
            lines.setdefault(loc, f"{source}: {loc}: {error['msg']} (got {error.get('input')!r})")
    return "\n".join(lines.values())


def _is_union_branch(part: str) -> bool:
    return part.startswith(("literal[", "constrained-str", "function-")) or part in {"int", "str", "bool"}
