"""Environments: the cloud credentials and region an agent works in. One file per cloud.

Example:
    >>> from prefect_launch.agent_config import EnvironmentConfig
    >>> environment_for(EnvironmentConfig(type="gcp", region="us-central1", project="ml")).describe()
    'gcp environment, project ml, region us-central1'
"""

from __future__ import annotations

from prefect_launch.environments.aws import AwsEnvironment
from prefect_launch.environments.azure import AzureEnvironment
from prefect_launch.environments.gcp import GcpEnvironment
from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment

_ENVIRONMENTS: dict[str, type[Environment]] = {e.type: e for e in (AwsEnvironment, GcpEnvironment, AzureEnvironment)}


def environment_for(config) -> Environment | None:
    """The agent config's `environment:` as an Environment (None when it has none)."""
    if config is None or config.type is None:
        return None
    if config.type not in _ENVIRONMENTS:
        raise LaunchError(f"environment.type {config.type!r}: expected one of {', '.join(_ENVIRONMENTS)}")
    return _ENVIRONMENTS[config.type](region=config.region, project=config.project, credentials=config.credentials)


__all__ = ["AwsEnvironment", "AzureEnvironment", "GcpEnvironment", "environment_for"]
