"""No registry: images stay in the local engine's store (W&B's default for the docker builder)."""

from __future__ import annotations

from prefect_launch.builders.plan import local_repository
from prefect_launch.docker_engine import docker_client, found
from prefect_launch.registries.base import Log, Registry


class LocalImages(Registry):
    def repository(self, project: str) -> str:
        return local_repository(project)

    def exists(self, image: str) -> bool:
        return found(lambda: docker_client().images.get(image))

    def push(self, image: str, log: Log) -> str | None:
        log.info("No registry configured (builder.destination): %s stays in the local engine", image)
        return None
