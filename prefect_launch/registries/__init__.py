"""Registries: where built images are stored. One file per registry kind.

The kind is `registry.type` from the agent config, or else read from the
destination's host (`*.dkr.ecr.*.amazonaws.com`, `*-docker.pkg.dev`,
`*.azurecr.io`); a cloud registry needs its cloud's environment.

Example:
    >>> from prefect_launch.builders.base import BuildSettings
    >>> type(registry_for(BuildSettings(destination="127.0.0.1:5000/launch"))).__name__
    'DockerRegistry'
    >>> type(registry_for(BuildSettings())).__name__
    'LocalImages'
"""

from __future__ import annotations

import re

from prefect_launch.environments import AwsEnvironment, AzureEnvironment, Environment, GcpEnvironment
from prefect_launch.errors import LaunchError
from prefect_launch.registries.acr import AcrRegistry
from prefect_launch.registries.artifact_registry import ArtifactRegistry
from prefect_launch.registries.base import Registry
from prefect_launch.registries.docker_registry import DockerRegistry
from prefect_launch.registries.ecr import EcrRegistry
from prefect_launch.registries.local import LocalImages

# registry kind -> (class, environment it needs, how to recognise its host)
_CLOUD = {
    "ecr": (EcrRegistry, AwsEnvironment, re.compile(r"\.dkr\.ecr\.[a-z0-9-]+\.amazonaws\.com(\.cn)?$")),
    "gcr": (ArtifactRegistry, GcpEnvironment, re.compile(r"(^|\.)(gcr\.io|[a-z0-9-]+-docker\.pkg\.dev)$")),
    "acr": (AcrRegistry, AzureEnvironment, re.compile(r"\.azurecr\.io$")),
}


def registry_kind(settings) -> str | None:
    """`registry.type`, else the cloud the destination's host belongs to, else None (a plain registry)."""
    if settings.registry_type:
        return settings.registry_type
    host = (settings.destination or "").split("/", 1)[0]
    return next((kind for kind, (_, _, pattern) in _CLOUD.items() if pattern.search(host)), None)


def registry_for(settings, environment: Environment | None = None) -> Registry:
    """The registry a build's images go to (`settings` is the agent's BuildSettings)."""
    if not settings.destination:
        return LocalImages()
    kind = registry_kind(settings)
    if kind not in _CLOUD:
        return DockerRegistry(settings.destination)
    registry_class, needs, _ = _CLOUD[kind]
    if not isinstance(environment, needs):
        raise LaunchError(
            f"registry {settings.destination} ({kind}) needs an `environment: type: {needs.type}` "
            "in the agent config for its credentials"
        )
    return registry_class(settings.destination, environment)


__all__ = ["Registry", "registry_for", "registry_kind"]
