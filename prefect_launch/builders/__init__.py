"""Builders: turn a code or git job into an image. One file per builder.

`builder_for(settings, ...)` picks the agent's builder: `docker`, `kaniko` or
`buildkit` (in the cluster), `noop` (build nothing: only image jobs run) or, with none
configured, docker when an engine answers and noop otherwise, as W&B's agent
does.
"""

from __future__ import annotations


from prefect_launch.builders.base import DEFAULT_BASE_IMAGE, Builder, BuildSettings
from prefect_launch.builders.plan import BuildPlan, plan_build
from prefect_launch.docker_engine import engine_available
from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment, Registry
from prefect_launch.spec import ResolvedJob


def builder_for(
    settings: BuildSettings,
    queue_name: str,
    source_kind: str,
    registry: Registry,
    environment: Environment | None = None,
) -> Builder:
    """The builder for a job that needs an image; a clear refusal when the agent cannot build."""
    from prefect_launch.builders import buildkit, docker, kaniko

    kind = settings.builder
    if kind is None:
        kind = "docker" if engine_available() else "noop"
        why = "no builder is configured and no Docker engine answers"
    else:
        why = f"the agent's builder.type is {kind}"
    if kind == "docker":
        return docker.DockerBuilder()
    if kind == "kaniko":
        return kaniko.KanikoBuilder(settings, registry, environment)
    if kind == "buildkit":
        return buildkit.BuildKitBuilder(settings, registry, environment)
    if kind == "noop":
        raise LaunchError(
            f"queue {queue_name!r} uses the noop builder ({why}), but this job's {source_kind} source needs "
            "an image build; launch a prebuilt image with -d/--docker-image, or set builder.type: docker"
        )
    raise LaunchError(f"queue {queue_name!r}: unknown builder.type {kind!r} (docker, kaniko, buildkit or noop)")


def plan_for(
    job: ResolvedJob,
    accelerator_image: str | None,
    settings: BuildSettings,
    builder: Builder,
    registry: Registry,
    queue: str,
) -> BuildPlan:
    """The build plan of a job with the agent's settings (`accelerator_image`: the job's resource args over the queue's)."""
    return plan_build(
        job,
        accelerator_image,
        default_base_image=settings.base_image,
        repository=registry.repository(job.project),
        cache_scope=queue if builder.cache_mounts else None,
    )


__all__ = ["Builder", "BuildPlan", "BuildSettings", "DEFAULT_BASE_IMAGE", "builder_for", "plan_build", "plan_for"]
