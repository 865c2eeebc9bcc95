"""Reading the YAML and JSON files users write: queue configs, templates, agent configs.

Errors name the file, line and column, in one line. Leading TABs, which YAML
forbids but which the W&B docs use in some examples, are read as two spaces. A
config may hold at most 1 MB of text and 100,000 values once YAML's anchors and aliases are expanded: a "billion
laughs" document is refused instead of being expanded by the first JSON dump of it. Also refused: a key given twice in one
mapping (YAML would silently keep the last), an alias inside the node it names
(`env: &a [*a]`, a list that contains itself), bytes that are not UTF-8, and a
path that is not a regular file (`/dev/zero`, a FIFO, a folder): a file is
checked before it is opened, opened without blocking, and read at most
`MAX_FILE_BYTES` + 1 bytes.

Example:
    >>> parse_config_text('{"gpus": "all"}', "queue.json")
    {'gpus': 'all'}
    >>> parse_config_text("queues:\\n\\t- q1\\n", "launch-config.yaml")
    {'queues': ['q1']}
"""

from __future__ import annotations

import errno
import os
import re
import stat
from pathlib import Path
from typing import Any

import yaml
from yaml.events import AliasEvent, CollectionStartEvent
from yaml.nodes import MappingNode

from prefect_launch.errors import LaunchError


class ConfigFileError(LaunchError):
    """A config file that cannot be read; the message says which and where."""


_LEADING_TABS = re.compile(r"^\t+", re.M)
MAX_TEXT = 1_000_000
MAX_FILE_BYTES = 1_000_000
MAX_VALUES = 100_000
_MERGE_TAG = "tag:yaml.org,2002:merge"


class _Refused(yaml.MarkedYAMLError):
    """Valid YAML that a config must not hold (a duplicate key, a recursive alias): said as is."""


class _StrictLoader(yaml.SafeLoader):
    """`yaml.SafeLoader` that refuses duplicate keys and aliases inside the node they name."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._open_anchors: set[str] = set()

    def compose_node(self, parent: Any, index: Any) -> Any:
        event = self.peek_event()
        if isinstance(event, AliasEvent):
            if event.anchor in self._open_anchors:
                raise _Refused(problem=f"alias *{event.anchor} is inside the node &{event.anchor} it names "
                                       "(a recursive alias); a config cannot contain itself",
                               problem_mark=event.start_mark)
            return super().compose_node(parent, index)
        anchor = event.anchor if isinstance(event, CollectionStartEvent) else None
        if anchor is None or anchor in self._open_anchors:  # a duplicate anchor: Composer refuses it
            return super().compose_node(parent, index)
        self._open_anchors.add(anchor)
        try:
            return super().compose_node(parent, index)
        finally:
            self._open_anchors.discard(anchor)

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        if isinstance(node, MappingNode):
            first: dict[Any, Any] = {}
            for key_node, _ in node.value:
                if key_node.tag == _MERGE_TAG:  # `<<: *base` keys are meant to be overridden
                    continue
                key = self.construct_object(key_node, deep=True)
                try:
                    earlier = first.setdefault(key, key_node)
                except TypeError:  # unhashable: SafeConstructor says so
                    break
                if earlier is not key_node:
                    raise _Refused(problem=f"duplicate key {key!r} (first given at line {earlier.start_mark.line + 1}); "
                                           "give each key once",
                                   problem_mark=key_node.start_mark)
        return super().construct_mapping(node, deep=deep)


def parse_config_text(text: str, source: str) -> Any:
    """Parse YAML (a superset of JSON) text; `source` names it in errors."""
    if len(text) > MAX_TEXT:
        raise ConfigFileError(f"{source}: {len(text):,} characters; a config may hold at most {MAX_TEXT:,}")
    tabs = {n: len(m.group(0)) for n, m in enumerate(re.finditer(r"^\t*", text, re.M)) if m.group(0)}
    text = _LEADING_TABS.sub(lambda m: "  " * len(m.group(0)), text)
    try:
        data = yaml.load(text, Loader=_StrictLoader)  # noqa: S506 (a SafeLoader)
    except RecursionError:
        raise ConfigFileError(f"{source}: nested too deeply to read") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}:{_original_column(mark, tabs)}" if mark else source
        problem = str(getattr(exc, "problem", None) or exc)
        context = getattr(exc, "context", None)
        if context and getattr(exc, "context_mark", None) is not None and exc.context_mark != mark:
            problem = f"{context} at line {exc.context_mark.line + 1}: {problem}"  # e.g. "found duplicate anchor"
        problem = " ".join(problem.split())
        if isinstance(exc, _Refused):
            raise ConfigFileError(f"{where}: {problem}") from None
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


def _original_column(mark: Any, tabs: dict[int, int]) -> int:
    """The 1-based column in the file as written, before its leading TABs became two spaces each."""
    n = tabs.get(mark.line, 0)
    column = mark.column
    return (column - n if column >= 2 * n else column // 2) + 1


def read_config_text(path: Path | str, what: str, limit: int = MAX_FILE_BYTES) -> str:
    """The text of a config file: a regular file of at most `limit` bytes of UTF-8, else `ConfigFileError`.

    Never blocks and never reads more than `limit` + 1 bytes: `/dev/zero`, a FIFO or a
    folder is refused by what `stat` says before it is opened (opened with O_NONBLOCK, and
    checked again by `fstat`, should it change in between).
    """
    path = Path(path)

    def refuse(problem: str) -> ConfigFileError:
        return ConfigFileError(f"{what} {str(path)!r}: {problem}")

    try:
        _check_regular(os.stat(path), limit, refuse)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0) | getattr(os, "O_NOCTTY", 0))
    except OSError as exc:
        raise refuse(exc.strerror or str(exc)) from None
    try:
        _check_regular(os.fstat(fd), limit, refuse)
        chunks: list[bytes] = []
        size = 0
        while size <= limit:
            chunk = os.read(fd, limit + 1 - size)
            if not chunk:
                break
            chunks.append(chunk)
            size += len(chunk)
    except OSError as exc:
        if exc.errno in (errno.EAGAIN, errno.EWOULDBLOCK):
            raise refuse("not a regular file (it would block)") from None
        raise refuse(exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    data = b"".join(chunks)
    if len(data) > limit:
        raise refuse(f"larger than {limit:,} bytes; a config file may hold at most {limit:,}")
    return decode_config_bytes(data, str(path))


def _check_regular(info: os.stat_result, limit: int, refuse: Any) -> None:
    if stat.S_ISDIR(info.st_mode):
        raise refuse("is a folder, not a file")
    if not stat.S_ISREG(info.st_mode):
        kind = ("a FIFO (named pipe)" if stat.S_ISFIFO(info.st_mode)
                else "a character device" if stat.S_ISCHR(info.st_mode)
                else "a block device" if stat.S_ISBLK(info.st_mode)
                else "a socket" if stat.S_ISSOCK(info.st_mode) else "not a regular file")
        raise refuse(f"{kind}, not a regular file; a config must be a file")
    if info.st_size > limit:
        raise refuse(f"{info.st_size:,} bytes; a config file may hold at most {limit:,}")


def decode_config_bytes(data: bytes, source: str) -> str:
    """`data` as UTF-8 (a leading byte-order mark dropped); a bad byte is named by line, column and offset.

    >>> decode_config_bytes(b"a: 1\\nb: caf\\xe9\\n", "queue.yaml")
    Traceback (most recent call last):
    ...
    prefect_launch.config_files.ConfigFileError: queue.yaml:2:7: not UTF-8 text: byte 0xe9 at offset 11; save the file as UTF-8
    """
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        start = exc.start + (3 if data.startswith(b"\xef\xbb\xbf") else 0)
        line = data.count(b"\n", 0, start) + 1
        column = start - (data.rfind(b"\n", 0, start) + 1) + 1
        raise ConfigFileError(f"{source}:{line}:{column}: not UTF-8 text: byte 0x{data[start]:02x} at offset {start}; "
                              "save the file as UTF-8") from None


def load_config_file(path: Path | str, what: str) -> Any:
    """Read a YAML or JSON file that must hold a mapping (or be empty)."""
    path = Path(path)
    data = parse_config_text(read_config_text(path, what), str(path))
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{path}: {what} must be a mapping, got {type(data).__name__}")
    return data


def parse_inline(text: str, what: str) -> dict[str, Any]:
    """A mapping given on the command line as `wandb launch` takes one (`util.load_json_yaml_dict`): a file
    when the value ends in `.json`, `.yaml` or `.yml`, is `@file` or names something on disk; else the
    JSON (or YAML) text itself, as `-c '{"overrides": {...}}'`.

    >>> parse_inline('{"overrides": {"args": ["--fast"]}}', "-c/--config")
    {'overrides': {'args': ['--fast']}}
    """
    if text.startswith("@"):
        return load_config_file(text[1:], what)
    if text.lower().endswith((".json", ".yaml", ".yml")) or _is_file(text):
        if not Path(text).exists():
            raise ConfigFileError(f"{what} {text!r}: file not found")
        return load_config_file(text, what)
    data = parse_config_text(text, what)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigFileError(f"{what}: expected a file or a JSON mapping, got {text[:80]!r}")
    return data


def _is_file(text: str) -> bool:
    """Whether `text` names something on disk (read, or refused, as a file: `/dev/zero` is not JSON text)."""
    try:
        return len(text) < 4096 and Path(text).exists()
    except (OSError, ValueError):  # a name too long for the system, or holding a NUL: JSON text then
        return False
