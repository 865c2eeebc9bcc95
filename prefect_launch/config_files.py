"""Reading the YAML and JSON files users write: queue configs, templates, agent configs.

Errors name the file, line and column. Leading TABs, which YAML forbids but
which the W&B docs use in some examples, are read as two spaces.

Example:
    >>> parse_config_text('{"gpus": "all"}', "queue.json")
    {'gpus': 'all'}
    >>> parse_config_text("queues:\\n\\t- q1\\n", "launch-config.yaml")
    {'queues': ['q1']}
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml

from prefect_launch.errors import LaunchError


class ConfigFileError(LaunchError):
    """A config file that cannot be read; the message says which and where."""


_LEADING_TABS = re.compile(r"^\t+", re.M)


def parse_config_text(text: str, source: str) -> Any:
    """Parse YAML (a superset of JSON) text; `source` names it in errors."""
    text = _LEADING_TABS.sub(lambda m: "  " * len(m.group(0)), text)
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigFileError(f"{where}: not valid YAML or JSON: {problem}") from None


def load_config_file(path: Path | str, what: str) -> Any:
    """Read a YAML or JSON file that must hold a mapping (or be empty)."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigFileError(f"{what} {str(path)!r}: {exc.strerror or exc}") from None
    data = parse_config_text(text, str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: {what} must be a mapping, got {type(data).__name__}")
    return data


def parse_inline(text: str, what: str) -> dict[str, Any]:
    """A mapping given on the command line (`-R '{...}'`), or `@file`."""
    if text.startswith("@"):
        return load_config_file(text[1:], what)
    data = parse_config_text(text, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{what} must be a mapping, got {type(data).__name__}")
    return data
