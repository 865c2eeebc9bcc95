"""Registries: where built images are stored. One file per registry kind.

Example:
    >>> type(registry_for("127.0.0.1:5000/launch")).__name__, type(registry_for(None)).__name__
    ('DockerRegistry', 'LocalImages')
"""

from __future__ import annotations

from prefect_launch.registries.base import Registry
from prefect_launch.registries.docker_registry import DockerRegistry
from prefect_launch.registries.local import LocalImages


def registry_for(destination: str | None) -> Registry:
    return DockerRegistry(destination) if destination else LocalImages()


__all__ = ["Registry", "registry_for"]
