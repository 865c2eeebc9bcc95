"""Amazon ECR: login from `GetAuthorizationToken`, a repository check, then the registry API.

The repository must exist in the aws environment's region (prefect-launch
does not create it: that needs `ecr:CreateRepository`, which an agent should
not hold). The image-exists check and the push go through the registry API with
the token's credentials, so any ECR-compatible endpoint works.

Example::

    registry = EcrRegistry("123456789012.dkr.ecr.us-east-1.amazonaws.com/launch", AwsEnvironment(region="us-east-1"))
    registry.exists(registry.destination + ":3f2a...")
"""

from __future__ import annotations

import base64
import functools

from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment
from prefect_launch.registries.docker_registry import DockerRegistry
from prefect_launch.registry_hosts import ECR_HOST


class EcrRegistry(DockerRegistry):
    login_seconds = 6 * 3600  # ECR tokens last 12 hours; fetch a new one well before

    def __init__(self, destination: str, environment: Environment) -> None:
        """`environment` is an aws one."""
        super().__init__(destination)
        self.environment = environment
        self.repository_name = self.destination.split("/", 1)[1] if "/" in self.destination else ""
        match = ECR_HOST.match(self.host)
        self.registry_id = match["account"] if match else None

    @functools.cached_property
    def _ecr(self):
        return self.environment.client("ecr")

    def login(self) -> dict[str, str]:
        ids = {"registryIds": [self.registry_id]} if self.registry_id else {}
        data = self._ecr.get_authorization_token(**ids)["authorizationData"][0]
        username, password = base64.b64decode(data["authorizationToken"]).decode().split(":", 1)
        return {"username": username, "password": password}

    def check_repository(self) -> None:
        ids = {"registryId": self.registry_id} if self.registry_id else {}
        try:
            self._ecr.describe_repositories(repositoryNames=[self.repository_name], **ids)
        except self._ecr.exceptions.RepositoryNotFoundException:
            raise LaunchError(
                f"ECR repository {self.repository_name!r} does not exist in {self.environment.region}: "
                f"create it (aws ecr create-repository --repository-name {self.repository_name} "
                f"--region {self.environment.region}) or fix builder.destination"
            ) from None

    def exists(self, image: str) -> bool:
        self.check_repository()
        return super().exists(image)
