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


def environment_problems(config) -> list[str]:
    """What in an agent config's environment, builder and registry keys does not fit together (no I/O).

    >>> from prefect_launch.agent_config import load_agent_config_text
    >>> environment_problems(load_agent_config_text(
    ...     "environment:\\n  type: aws\\n  region: us-east-1\\n"
    ...     "registry:\\n  type: ecr\\n  uri: arn:aws:ecr:eu-west-1:123456789012:repository/launch\\n", "a.yaml"))
    ['the ECR registry 123456789012.dkr.ecr.eu-west-1.amazonaws.com is in eu-west-1 but environment.region is us-east-1']
    """
    from prefect_launch.builders.base import BuildSettings
    from prefect_launch.registries import registry_for

    if config.placeholders():
        return []  # reported on their own, and nothing can be checked until they are filled in
    try:
        environment = environment_for(config.environment)
        settings = BuildSettings.from_agent_config(config)
        registry_for(settings.destination, settings.registry_type, environment)
    except LaunchError as exc:
        return [str(exc)]
    if environment is None or not settings.destination:
        return []
    return environment.registry_problems(settings.destination)


__all__ = ["AwsEnvironment", "AzureEnvironment", "GcpEnvironment", "environment_for", "environment_problems"]
