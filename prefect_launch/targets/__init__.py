"""Targets: where a rendered submission runs. One file per target.

Each target renders a payload (pure), submits it, and waits for it.
"""

from __future__ import annotations

from prefect_launch.errors import LaunchError
from prefect_launch.spec import Resource
from prefect_launch.targets.base import Handle, Outcome, Target
from prefect_launch.targets.local_container import LocalContainerTarget
from prefect_launch.targets.local_process import LocalProcessTarget

_TARGETS: dict[Resource, Target] = {
    Resource.local_process: LocalProcessTarget(),
    Resource.local_container: LocalContainerTarget(),
}

SUPPORTED_RESOURCES = tuple(r.value for r in _TARGETS)


def get_target(resource: Resource) -> Target:
    try:
        return _TARGETS[resource]
    except KeyError:
        raise LaunchError(
            f"resource {resource.value!r} is not supported by this agent; "
            f"supported: {', '.join(SUPPORTED_RESOURCES)}"
        ) from None


__all__ = ["Handle", "Outcome", "Target", "get_target", "SUPPORTED_RESOURCES"]
