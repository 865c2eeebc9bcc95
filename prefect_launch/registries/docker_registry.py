"""A Docker/OCI registry reached through the engine (`builder.destination: host[:port]/repo`).

Existence is checked with the registry's manifest API (`docker manifest
inspect` through the engine, or, for an agent with no engine, over HTTP:
`manifests.py`), so an image pushed by any agent skips every later build of
the same tag. Pushes stream their progress into the task log.

Cloud registries (ECR, Artifact Registry, ACR) are this registry with
`credentials()` from their cloud: every manifest check and push carries them.

Example::

    registry = DockerRegistry("127.0.0.1:5000/launch")
    registry.exists("127.0.0.1:5000/launch:3f2a...")   # False before the first push
"""

from __future__ import annotations

import time
from typing import ClassVar

from prefect_launch.docker_engine import docker_client, engine_available, found
from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Log, Registry
from prefect_launch.registries.manifests import manifest_exists


_LAYER_DONE = {"Pushed", "Layer already exists", "Mounted from"}


class DockerRegistry(Registry):
    # How long a login from `login()` is reused; 0 asks for one every time.
    login_seconds: ClassVar[float] = 0

    def __init__(self, destination: str) -> None:
        self.destination = destination.rstrip("/")
        self._login: tuple[float, dict[str, str] | None] | None = None

    @property
    def host(self) -> str:
        return self.destination.split("/", 1)[0]

    def repository(self, project: str) -> str:
        return self.destination

    def login(self) -> dict[str, str] | None:
        """A fresh Docker `auth_config` from the registry's cloud; None = the engine's own login (`docker login`)."""
        return None

    def credentials(self) -> dict[str, str] | None:
        """The login for a manifest check or a push, reused for `login_seconds`."""
        if self._login is None or time.monotonic() - self._login[0] >= self.login_seconds:
            self._login = (time.monotonic(), self.login())
        return self._login[1]

    def pull_credentials(self, image: str) -> dict[str, str] | None:
        """The cloud login, else the agent's own `docker login` for this host (DOCKER_CONFIG), for images stored here."""
        if not image.startswith(self.host + "/"):
            return None
        login = self.credentials()
        if login is None:
            import docker.auth

            login = docker.auth.load_config().resolve_authconfig(self.host)
        return login if login and login.get("username") and login.get("password") else None

    def exists(self, image: str) -> bool:
        if not engine_available():  # an agent in a cluster (Kaniko builds): ask the registry itself
            return manifest_exists(image, self.pull_credentials(image))
        auth = self.credentials()
        try:
            return found(lambda: docker_client().images.get_registry_data(image, auth_config=auth))
        except Exception as exc:
            raise LaunchError(f"registry {self.destination}: {getattr(exc, 'explanation', None) or exc}") from None

    def push(self, image: str, log: Log) -> str | None:
        repository, tag = image.rsplit(":", 1)
        log.info("Pushing %s", image)
        digest = None
        pushing = docker_client().api.push(repository, tag=tag, stream=True, decode=True, auth_config=self.credentials())
        for record in pushing:
            if "error" in record:
                raise LaunchError(f"push of {image} failed: {record['error']}")
            # One line per layer when it is done; the byte-level progress records are skipped.
            if record.get("id") and record.get("status") in _LAYER_DONE:
                log.info("%s: %s", record["id"], record["status"])
            digest = (record.get("aux") or {}).get("Digest", digest)
        log.info("Pushed %s (manifest digest %s)", image, digest)
        return digest
