"""No registry: images stay in the local engine's store (W&B's default for the docker builder)."""

from __future__ import annotations

import re

from prefect_launch.docker_engine import docker_client, found
from prefect_launch.interfaces import Log, Registry


class LocalImages(Registry):
    def repository(self, project: str) -> str:
        """The engine's own store, one repository per project."""
        return "prefect-launch/" + (re.sub(r"[^a-z0-9._-]+", "-", project.lower()).strip("-._") or "job")

    def exists(self, image: str) -> bool:
        return found(lambda: docker_client().images.get(image))

    def push(self, image: str, log: Log) -> str | None:
        log.info("No registry configured (builder.destination): %s stays in the local engine", image)
        return None
