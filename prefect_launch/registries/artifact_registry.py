"""Google Artifact Registry (`<region>-docker.pkg.dev/<project>/<repo>/<image>`).

Docker logs in as `oauth2accesstoken` with an access token from the gcp
environment (`google.auth.default()` or a `GcpCredentials` block), fetched
again whenever it expires.

Example::

    registry = ArtifactRegistry("us-central1-docker.pkg.dev/ml/launch/train", GcpEnvironment(region="us-central1", project="ml"))
"""

from __future__ import annotations

from prefect_launch.interfaces import Environment
from prefect_launch.registries.docker_registry import DockerRegistry


class ArtifactRegistry(DockerRegistry):
    def __init__(self, destination: str, environment: Environment) -> None:
        """`environment` is a gcp one."""
        super().__init__(destination)
        self.environment = environment

    def login(self) -> dict[str, str]:
        # No reuse here: the credentials object refreshes its token only when it is about to expire.
        return {"username": "oauth2accesstoken", "password": self.environment.access_token()}
