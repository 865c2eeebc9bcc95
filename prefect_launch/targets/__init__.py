"""Targets: where a rendered submission runs. One file per target.

Each target renders a payload (pure), submits it, and waits for it.
"""

from __future__ import annotations

from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment, Registry
from prefect_launch.spec import Resource
from prefect_launch.targets.base import Handle, Outcome, Progress, Target
from prefect_launch.targets.kubernetes import KubernetesTarget
from prefect_launch.targets.local_container import LocalContainerTarget
from prefect_launch.targets.local_process import LocalProcessTarget
from prefect_launch.targets.sagemaker import SageMakerTarget
from prefect_launch.targets.vertex import VertexTarget

_TARGETS: dict[Resource, type[Target]] = {
    t.resource: t for t in (LocalProcessTarget, LocalContainerTarget, KubernetesTarget, SageMakerTarget, VertexTarget)
}

SUPPORTED_RESOURCES = tuple(r.value for r in _TARGETS)


def target_class(resource: Resource) -> type[Target]:
    """The target of a resource, for its traits (`runs_remotely`, ...) before it has an environment."""
    try:
        return _TARGETS[resource]
    except KeyError:
        raise LaunchError(
            f"resource {resource.value!r} is not supported by this agent; "
            f"supported: {', '.join(SUPPORTED_RESOURCES)}"
        ) from None


def get_target(resource: Resource, environment: Environment | None = None, registry: Registry | None = None,
               cluster: str | None = None) -> Target:
    return target_class(resource)(environment, registry, cluster)


__all__ = ["Handle", "Outcome", "Progress", "Target", "get_target", "target_class", "SUPPORTED_RESOURCES"]
