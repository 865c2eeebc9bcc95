"""Azure Container Registry (`<name>.azurecr.io/<repository>`), logged in through `DefaultAzureCredential`.

W&B's docker builder leaves ACR login to `az acr login`; here the agent
exchanges its Azure AD token for an ACR refresh token (the registry's
`/oauth2/exchange` endpoint, as `az acr login` does) and docker logs in with
it under the null user ACR expects.

Example::

    registry = AcrRegistry("myreg.azurecr.io/launch", AzureEnvironment())
"""

from __future__ import annotations

import httpx

from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment
from prefect_launch.registries.docker_registry import DockerRegistry

ACR_USER = "00000000-0000-0000-0000-000000000000"


class AcrRegistry(DockerRegistry):
    login_seconds = 3600  # ACR refresh tokens last 3 hours

    def __init__(self, destination: str, environment: Environment) -> None:
        """`environment` is an azure one."""
        super().__init__(destination)
        self.environment = environment

    def login(self) -> dict[str, str]:
        response = httpx.post(
            f"https://{self.host}/oauth2/exchange",
            data={
                "grant_type": "access_token",
                "service": self.host,
                "access_token": self.environment.access_token(),
            },
            timeout=30,
        )
        if response.status_code != 200:
            raise LaunchError(
                f"ACR {self.host}: exchanging the Azure AD token for a registry token failed "
                f"(HTTP {response.status_code}): {response.text[:200]}"
            )
        return {"username": ACR_USER, "password": response.json()["refresh_token"]}
