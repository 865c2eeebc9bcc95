"""What an agent config sets up for every job it prepares, and what in it does not fit together.

The axes meet here: the config's `environment:` becomes an Environment, its
registry (`builder.destination`, `registry.type`) a Registry holding that
environment's credentials. Both the agent (`worker/`) and `launch --dry-run`
start from `agent_setup`; `agent --check` and the agent at start refuse what
`environment_problems` finds. Kept apart from `prepare.py`, which imports
Prefect's worker machinery, so that `agent --check` stays quick.
"""

from __future__ import annotations

from prefect_launch.agent_config import AgentConfig
from prefect_launch.builders import BuildSettings
from prefect_launch.environments import environment_for
from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment, Registry
from prefect_launch.registries import registry_for


def agent_setup(config: AgentConfig) -> tuple[BuildSettings, Environment | None, Registry]:
    """What an agent config gives every job it prepares: build settings, cloud environment, registry."""
    settings = BuildSettings.from_agent_config(config)
    environment = environment_for(config.environment)
    return settings, environment, registry_for(settings.destination, settings.registry_type, environment)


def environment_problems(config: AgentConfig) -> list[str]:
    """What in an agent config's environment, builder and registry keys does not fit together (no I/O).

    >>> from prefect_launch.agent_config import load_agent_config_text
    >>> environment_problems(load_agent_config_text(
    ...     "environment:\\n  type: aws\\n  region: us-east-1\\n"
    ...     "registry:\\n  type: ecr\\n  uri: arn:aws:ecr:eu-west-1:123456789012:repository/launch\\n", "a.yaml"))
    ['the ECR registry 123456789012.dkr.ecr.eu-west-1.amazonaws.com is in eu-west-1 but environment.region is us-east-1']
    """
    if config.placeholders():
        return []  # reported on their own, and nothing can be checked until they are filled in
    try:
        settings, environment, _registry = agent_setup(config)
    except LaunchError as exc:
        return [str(exc)]
    if environment is None or not settings.destination:
        return []
    return environment.registry_problems(settings.destination)
