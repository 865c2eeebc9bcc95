"""The gcp environment: `google.auth.default()`, or a `GcpCredentials` block.

`region` and `project` are required, as W&B requires them; an Artifact
Registry repository (`<region>-docker.pkg.dev/<project>/<repo>/<image>`) must
lie in both (a multi-region such as `us` contains `us-central1`).

Example:
    >>> env = GcpEnvironment(region="us-central1", project="ml")
    >>> env.registry_problems("europe-west4-docker.pkg.dev/ml/launch/train")
    ['the Artifact Registry repository europe-west4-docker.pkg.dev/ml/launch/train is in europe-west4 but environment.region is us-central1']
"""

from __future__ import annotations

import functools
import re

from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment

SCOPES = ["https://www.googleapis.com/auth/cloud-platform"]
ARTIFACT_REGISTRY = re.compile(r"^(?P<location>[a-z0-9-]+)-docker\.pkg\.dev/(?P<project>[^/]+)/")


class GcpEnvironment(Environment):
    type = "gcp"

    def __init__(self, region: str | None = None, project: str | None = None, credentials: str | None = None):
        missing = [key for key, value in (("region", region), ("project", project)) if not value]
        if missing:
            raise LaunchError(f"environment.type gcp needs {' and '.join('environment.' + m for m in missing)}")
        super().__init__(region, project, credentials)

    @functools.cached_property
    def credentials(self):
        if self.credentials_block:
            from prefect_gcp import GcpCredentials

            block = GcpCredentials.load(self.credentials_block.split("/", 1)[-1])
            return block.get_credentials_from_service_account().with_scopes(SCOPES)
        import google.auth

        credentials, _project = google.auth.default(scopes=SCOPES)
        return credentials

    def access_token(self) -> str:
        """A fresh OAuth2 access token (refreshed when it is about to expire)."""
        import google.auth.transport.requests

        credentials = self.credentials
        if not credentials.valid:
            credentials.refresh(google.auth.transport.requests.Request())
        return credentials.token

    def verify(self) -> str:
        try:
            self.access_token()
        except Exception as exc:
            raise LaunchError(f"gcp environment: cannot get a Google access token: {exc}") from None
        who = getattr(self.credentials, "service_account_email", None) or "default credentials"
        return f"Google {who}, project {self.project}, region {self.region}"

    def registry_problems(self, repository: str) -> list[str]:
        match = ARTIFACT_REGISTRY.match(repository)
        if not match:
            return []
        problems = []
        if not self.region.startswith(match["location"]):
            problems.append(
                f"the Artifact Registry repository {repository} is in {match['location']} "
                f"but environment.region is {self.region}"
            )
        if match["project"] != self.project:
            problems.append(
                f"the Artifact Registry repository {repository} is in project {match['project']} "
                f"but environment.project is {self.project}"
            )
        return problems
