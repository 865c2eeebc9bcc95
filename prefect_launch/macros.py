"""W&B Launch macros: `${project_name}`, `${entity_name}`, `${run_id}`, `${run_name}`, `${image_uri}`.

The agent resolves them in the queue config after template fields are filled
and before the target sees the submission. As W&B's agent does, a queue's own
config may also name any of the agent's environment variables (`${HF_HOME}`);
a job's own resource args may not. An unknown macro, a variable the agent does
not have, or a macro with no value for this job (`${image_uri}` on a
local-process queue), is an error that names where it stands: silently sending
`${typo}` to a cluster helps nobody.

Example:
    >>> resolve_macros({"name": "${run_id}-job"}, {"run_id": "abc123"})
    {'name': 'abc123-job'}
"""

from __future__ import annotations

import re
from typing import Any, Callable, Mapping

from prefect_launch.errors import LaunchError

# A name stops at the next `$` too: "${${${..." with no `}` is then scanned once, not once per `${`.
MACRO_PATTERN = re.compile(r"\$\{([^}$]*)\}")
KNOWN_MACROS = ("project_name", "entity_name", "run_id", "run_name", "image_uri")


class MacroError(LaunchError):
    """A macro that cannot be resolved."""


def resolve_macros(config: Any, values: dict[str, str | None], where: str = "resource_args") -> Any:
    """Return `config` with every `${macro}` replaced; raise `MacroError` naming the path."""

    def substitute(name: str, at: str) -> str:
        if name not in KNOWN_MACROS:
            raise MacroError(
                f"{at}: unknown macro ${{{name}}}; known macros: " + ", ".join(f"${{{m}}}" for m in KNOWN_MACROS)
                + " (a queue's own config may also name the agent's environment variables)"
            )
        value = values.get(name)
        if value is None:
            raise MacroError(f"{at}: macro ${{{name}}} has no value for this job")
        return value

    return _substituted(config, where, substitute)


def resolve_environment_macros(config: Any, environment: Mapping[str, str], where: str = "resource_args") -> Any:
    """`config` with each `${NAME}` that is no launch macro replaced by the agent's environment variable NAME.

    W&B's rule for queue configs (`${<ENV-VAR-NAME>}`), applied to the queue's own config only: a job's
    submitter may not read the agent's environment. The launch macros are left for `resolve_macros`.

    >>> resolve_environment_macros({"bucket": "s3://${BUCKET}/${run_id}"}, {"BUCKET": "ml"})
    {'bucket': 's3://ml/${run_id}'}
    """

    def substitute(name: str, at: str) -> str:
        if name in KNOWN_MACROS:
            return f"${{{name}}}"
        if name not in environment:
            raise MacroError(f"{at}: ${{{name}}} is not a launch macro, and the agent's environment has no variable {name}")
        return environment[name]

    return _substituted(config, where, substitute)


def _substituted(config: Any, where: str, substitute: Callable[[str, str], str]) -> Any:
    if isinstance(config, dict):
        return {k: _substituted(v, f"{where}.{k}", substitute) for k, v in config.items()}
    if isinstance(config, list):
        return [_substituted(v, f"{where}[{i}]", substitute) for i, v in enumerate(config)]
    if not isinstance(config, str):
        return config
    return MACRO_PATTERN.sub(lambda match: substitute(match.group(1), where), config)
