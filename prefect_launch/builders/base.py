"""The builder interface and the settings every builder reads.

A builder turns a `BuildPlan` (made by `plan.plan_build`, no I/O beyond
reading the code folder) into an image in the local engine or a cluster.

Example, the agent config's builder keys as settings::

    settings = BuildSettings.from_agent_config(load_agent_config(path))
    get_builder(settings).build(plan, log)
"""

from __future__ import annotations

import abc
import logging
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from prefect_launch.builders.plan import BuildPlan

Log = logging.Logger | logging.LoggerAdapter

# W&B builds on python:<version>-slim; the same default here, overridable by
# `builder.base_image` in the agent config or `-B/--base-image` per job.
DEFAULT_BASE_IMAGE = "python:3.11-slim"


class BuildSettings(BaseModel):
    """The agent's builder and registry keys, as one object the build and push tasks read."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    builder: Literal["docker", "kaniko", "noop"] | None = Field(
        default=None, description="None: docker when an engine answers, else noop (as W&B does)"
    )
    destination: str | None = Field(default=None, description="Registry repository images are pushed to")
    base_image: str = DEFAULT_BASE_IMAGE

    @classmethod
    def from_agent_config(cls, config) -> "BuildSettings":
        """`builder.destination` (or `builder.uri`, or the older `registry.uri`) and `builder.type`."""
        builder, registry = config.builder, config.registry
        destination = (builder and (builder.destination or builder.uri)) or (registry and registry.uri) or None
        return cls(
            builder=builder.type if builder else None,
            destination=destination,
            base_image=(builder and builder.base_image) or DEFAULT_BASE_IMAGE,
        )


class Builder(abc.ABC):
    name: str

    @property
    def cache_mounts(self) -> bool:
        """Whether generated Dockerfiles may use `RUN --mount=type=cache` (BuildKit)."""
        return False

    @abc.abstractmethod
    def build(self, plan: BuildPlan, log: Log) -> None:
        """Build `plan.image`, streaming progress to `log`; raise LaunchError with the log's tail on failure."""
