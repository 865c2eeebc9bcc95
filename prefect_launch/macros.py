"""W&B Launch macros: `${project_name}`, `${entity_name}`, `${run_id}`, `${run_name}`, `${image_uri}`.

The agent resolves them in the queue config after template fields are filled
and before the target sees the submission. An unknown macro, or one with no
value for this job (`${image_uri}` on a local-process queue), is an error that
names where it stands: silently sending `${typo}` to a cluster helps nobody.

Example:
    >>> resolve_macros({"name": "${run_id}-job"}, {"run_id": "abc123"})
    {'name': 'abc123-job'}
"""

from __future__ import annotations

import re
from typing import Any

from prefect_launch.errors import LaunchError

# A name stops at the next `$` too: "${${${..." with no `}` is then scanned once, not once per `${`.
MACRO_PATTERN = re.compile(r"\$\{([^}$]*)\}")
KNOWN_MACROS = ("project_name", "entity_name", "run_id", "run_name", "image_uri")


class MacroError(LaunchError):
    """A macro that cannot be resolved."""


def resolve_macros(config: Any, values: dict[str, str | None], where: str = "resource_args") -> Any:
    """Return `config` with every `${macro}` replaced; raise `MacroError` naming the path."""
    if isinstance(config, dict):
        return {k: resolve_macros(v, values, f"{where}.{k}") for k, v in config.items()}
    if isinstance(config, list):
        return [resolve_macros(v, values, f"{where}[{i}]") for i, v in enumerate(config)]
    if not isinstance(config, str):
        return config

    def substitute(match: re.Match[str]) -> str:
        name = match.group(1)
        if name not in KNOWN_MACROS:
            raise MacroError(
                f"{where}: unknown macro ${{{name}}}; known macros: "
                + ", ".join(f"${{{m}}}" for m in KNOWN_MACROS)
            )
        value = values.get(name)
        if value is None:
            raise MacroError(f"{where}: macro ${{{name}}} has no value for this job")
        return value

    return MACRO_PATTERN.sub(substitute, config)
