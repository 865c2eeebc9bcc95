"""The azure environment: `azure.identity.DefaultAzureCredential()` (no other keys, as in W&B).

Example:
    >>> AzureEnvironment().describe()
    'azure environment'
"""

from __future__ import annotations

import functools

from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment

MANAGEMENT_SCOPE = "https://management.azure.com/.default"


class AzureEnvironment(Environment):
    type = "azure"

    @functools.cached_property
    def credential(self):
        from azure.identity import DefaultAzureCredential

        return DefaultAzureCredential()

    def access_token(self, scope: str = MANAGEMENT_SCOPE) -> str:
        return self.credential.get_token(scope).token

    def verify(self) -> str:
        try:
            self.access_token()
        except Exception as exc:
            raise LaunchError(f"azure environment: DefaultAzureCredential found no usable credential: {exc}") from None
        return "Azure DefaultAzureCredential"
