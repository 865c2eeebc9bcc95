"""The builder interface and the settings every builder reads.

A builder turns a `BuildPlan` (made by `plan.plan_build`, no I/O beyond
reading the code folder) into an image in the local engine or a cluster.

Example, the agent config's builder keys as settings::

    settings = BuildSettings.from_agent_config(load_agent_config(path))
    get_builder(settings).build(plan, log)
"""

from __future__ import annotations

import abc
import collections
import logging
import re
import threading
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from prefect_launch.builders.plan import BuildPlan
from prefect_launch.errors import LaunchError
from prefect_launch.images import repository_reference

Log = logging.Logger | logging.LoggerAdapter

# W&B builds on python:<version>-slim; the same default here, overridable by
# `builder.base_image` in the agent config or `-B/--base-image` per job.
DEFAULT_BASE_IMAGE = "python:3.11-slim"


class BuildSettings(BaseModel):
    """The agent's builder and registry keys, as one object the build and push tasks read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    builder: Literal["docker", "kaniko", "buildkit", "noop"] | None = Field(
        default=None, description="None: docker when an engine answers, else noop (as W&B does)"
    )
    destination: str | None = Field(default=None, description="Registry repository images are pushed to")
    registry_type: Literal["ecr", "gcr", "acr", "local"] | None = Field(
        default=None, description="`registry.type`; None = read from the destination's host"
    )
    base_image: str = DEFAULT_BASE_IMAGE
    # The in-cluster builders' keys (W&B's names with dashes).
    build_context_store: str | None = None
    build_job_name: str | None = None
    kaniko_image: str | None = None
    buildkit_image: str | None = None
    kaniko_config: dict[str, Any] | None = None
    secret_name: str | None = None
    secret_key: str | None = None
    # The agent config's `kubernetes.cluster`: the prefect-kubernetes block of the cluster kaniko builds in (and
    # kubernetes jobs run on); None = in-cluster or KUBECONFIG.
    cluster: str | None = None

    @classmethod
    def from_agent_config(cls, config) -> "BuildSettings":
        """`builder.destination` (or `builder.uri`, or the older `registry.uri`), `builder.type`, `registry.type`."""
        builder, registry = config.builder, config.registry
        keys = [("builder.destination", builder and builder.destination), ("builder.uri", builder and builder.uri),
                ("registry.uri", registry and registry.uri)]
        key, destination = next(((key, value) for key, value in keys if value), (None, None))
        return cls(
            builder=builder.type if builder else None,
            destination=repository_reference(normalize_destination(destination), key) if destination else None,
            registry_type=registry.type if registry else None,
            base_image=(builder and builder.base_image) or DEFAULT_BASE_IMAGE,
            cluster=config.kubernetes.cluster if config.kubernetes else None,
            **(builder.model_dump(include=set(_KANIKO_KEYS), exclude_none=True) if builder else {}),
        )


_KANIKO_KEYS = ("build_context_store", "build_job_name", "kaniko_image", "buildkit_image", "kaniko_config", "secret_name",
                "secret_key")
_ECR_ARN = re.compile(r"^arn:aws[\w-]*:ecr:(?P<region>[a-z0-9-]+):(?P<account>\d{12}):repository/(?P<name>.+)$")


def normalize_destination(destination: str) -> str:
    """A repository as docker names it: no `https://` (the ACR seed), an ECR repository ARN (the SageMaker seed) as its host/name.

    >>> normalize_destination("arn:aws:ecr:us-east-1:123456789012:repository/launch")
    '123456789012.dkr.ecr.us-east-1.amazonaws.com/launch'
    >>> normalize_destination("https://reg.azurecr.io/launch/")
    'reg.azurecr.io/launch'
    """
    arn = _ECR_ARN.match(destination)
    if arn:
        return f"{arn['account']}.dkr.ecr.{arn['region']}.amazonaws.com/{arn['name']}"
    return re.sub(r"^https?://", "", destination).rstrip("/")


class BuildLog:
    """A build's output going to the build task's log, keeping the last lines for the error of a failed build.

    >>> import logging
    >>> build_log = BuildLog(logging.getLogger("doc"))
    >>> build_log.info("%s", "step 1/2")
    >>> str(build_log.failure("exit 3"))
    'image build failed (exit 3); last lines of the build log:\\nstep 1/2'
    """

    TAIL_LINES = 20

    def __init__(self, log: Log) -> None:
        self.log = log
        self.lines: collections.deque[str] = collections.deque(maxlen=self.TAIL_LINES)

    def info(self, message: str, *args: Any) -> None:
        self.lines.append(message % args if args else message)
        self.log.info(message, *args)

    def debug(self, message: str, *args: Any) -> None:
        self.log.debug(message, *args)

    def failure(self, reason: str) -> LaunchError:
        return LaunchError(f"image build failed ({reason}); last lines of the build log:\n" + "\n".join(self.lines))


class Builder(abc.ABC):
    name: str
    # It pushes the image itself (in the cluster), so the push task has nothing to do.
    pushes: bool = False

    @property
    def cache_mounts(self) -> bool:
        """Whether generated Dockerfiles may use `RUN --mount=type=cache` (BuildKit)."""
        return False

    @abc.abstractmethod
    def build(self, plan: BuildPlan, log: Log, cancel: threading.Event | None = None) -> None:
        """Build `plan.image`, streaming progress to `log`; raise LaunchError with the log's tail on failure.

        `cancel` is the run's cancel event: a builder that can stop its build does so once it is set.
        """
