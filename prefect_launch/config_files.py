"""Reading the YAML and JSON files users write: queue configs, templates, agent configs.

Errors name the file, line and column. Leading TABs, which YAML forbids but
which the W&B docs use in some examples, are read as two spaces. A config may
hold at most 1 MB of text and 100,000 values once YAML's anchors and aliases
are expanded: a "billion laughs" document is refused instead of being expanded
by the first JSON dump of it.

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
MAX_TEXT = 1_000_000
MAX_VALUES = 100_000


def parse_config_text(text: str, source: str) -> Any:
    """Parse YAML (a superset of JSON) text; `source` names it in errors."""
    if len(text) > MAX_TEXT:
        raise ConfigFileError(f"{source}: {len(text):,} characters; a config may hold at most {MAX_TEXT:,}")
    text = _LEADING_TABS.sub(lambda m: "  " * len(m.group(0)), text)
    try:
        data = yaml.safe_load(text)
    except RecursionError:
        raise ConfigFileError(f"{source}: nested too deeply to read") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{mark.column + 1}" if mark else source
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigFileError(f"{where}: not valid YAML or JSON: {problem}") from None
    try:
        too_large = expanded_size(data) > MAX_VALUES
    except RecursionError:
        raise ConfigFileError(f"{source}: nested too deeply to read") from None
    if too_large:
        raise ConfigFileError(f"{source}: expands to more than {MAX_VALUES:,} values (YAML aliases of anchors?); "
                              "a config this large is refused")
    return data


def expanded_size(data: Any) -> int:
    """How many values `data` holds once every shared (aliased) part is counted each time it is used.

    >>> shared = [1, 2, 3]
    >>> expanded_size({"a": shared, "b": shared})  # the mapping, its 2 keys, and the list of 3 twice
    11
    """
    sizes: dict[int, int] = {}

    def size(value: Any) -> int:
        if not isinstance(value, (dict, list)):
            return 1
        if id(value) not in sizes:
            sizes[id(value)] = 0  # a self-referencing alias counts once, not forever
            children = value.values() if isinstance(value, dict) else value
            sizes[id(value)] = 1 + sum(size(child) for child in children) + (len(value) if isinstance(value, dict) else 0)
        return sizes[id(value)]

    return size(data)


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
