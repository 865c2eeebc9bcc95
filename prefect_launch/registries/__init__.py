"""Registries: where built images are stored. One file per registry kind.

The kind is `registry.type` from the agent config, or else read from the
destination's host (`*.dkr.ecr.*.amazonaws.com`, `*-docker.pkg.dev`,
`*.azurecr.io`); a cloud registry needs its cloud's environment.

Example:
    >>> type(registry_for("127.0.0.1:5000/launch")).__name__
    'DockerRegistry'
    >>> type(registry_for(None)).__name__
    'LocalImages'
"""

from __future__ import annotations

import re

from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment, Registry
from prefect_launch.registries.acr import AcrRegistry
from prefect_launch.registries.artifact_registry import ArtifactRegistry
from prefect_launch.registries.docker_registry import DockerRegistry
from prefect_launch.registries.ecr import EcrRegistry
from prefect_launch.registries.local import LocalImages

# registry kind -> (class, the `type` of the environment it needs, how to recognise its host)
_CLOUD = {
    "ecr": (EcrRegistry, "aws", re.compile(r"\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")),
    "gcr": (ArtifactRegistry, "gcp", re.compile(r"(^|\.)(gcr\.io|[a-z0-9-]+-docker\.pkg\.dev)$")),
    "acr": (AcrRegistry, "azure", re.compile(r"\.azurecr\.io$")),
}


def registry_kind(destination: str | None, registry_type: str | None) -> str | None:
    """`registry.type`, else the cloud the destination's host belongs to, else None (a plain registry)."""
    if registry_type:
        return registry_type
    host = (destination or "").split("/", 1)[0]
    return next((kind for kind, (_, _, pattern) in _CLOUD.items() if pattern.search(host)), None)


def registry_for(
    destination: str | None, registry_type: str | None = None, environment: Environment | None = None
) -> Registry:
    """The registry a build's images go to: the agent's `builder.destination` and `registry.type`."""
    if not destination:
        return LocalImages()
    kind = registry_kind(destination, registry_type)
    if kind not in _CLOUD:
        return DockerRegistry(destination)
    registry_class, needs, _ = _CLOUD[kind]
    if environment is None or environment.type != needs:
        raise LaunchError(
            f"registry {destination} ({kind}) needs an `environment: type: {needs}` "
            "in the agent config for its credentials"
        )
    return registry_class(destination, environment)


__all__ = ["registry_for", "registry_kind"]
