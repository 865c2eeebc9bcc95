"""Masking secrets before anything is logged, stored as an artifact or printed.

Example:
    >>> redact({"env": {"WANDB_API_KEY": "abc", "LR": "0.1"}, "args": ["--token=x"]})
    {'env': {'WANDB_API_KEY': '********', 'LR': '0.1'}, 'args': ['--token=********']}
"""

from __future__ import annotations

import re
from typing import Any

MASK = "********"
_SECRET_NAME = re.compile(r"(api[_-]?key|token|secret|password|passwd|credential|auth)", re.I)
# A `NAME=` only where a name starts (not after a word character), so the engine scans each name
# once: masking stays linear in the text's length, whatever one job puts in its arguments.
_ASSIGNED_NAME = re.compile(r"(?<![\w-])([\w-]+)=")
_VALUE_END = re.compile(r"\s")


def is_secret_name(name: str) -> bool:
    return bool(_SECRET_NAME.search(name))


def redact(value: Any, name: str = "") -> Any:
    """Copy of `value` with secret-looking fields and `KEY=value` pairs masked."""
    if isinstance(value, dict):
        # A Kubernetes-style env entry {"name": "API_KEY", "value": "..."} names its secret.
        entry_name = value.get("name") if isinstance(value.get("name"), str) else ""
        return {
            k: redact(v, entry_name if k == "value" and entry_name else str(k))
            for k, v in value.items()
        }
    if isinstance(value, list):
        # An argument after a secret-named option (`--api-key VALUE`) is that secret.
        return [MASK if isinstance(v, str) and i and _secret_option(value[i - 1]) else redact(v, name)
                for i, v in enumerate(value)]
    if isinstance(value, str):
        if name and is_secret_name(name):
            return MASK
        return _mask_assignments(value)
    return value


def _secret_option(argument: Any) -> bool:
    """`--api-key`, `--password`: an option without `=value` whose name looks secret.

    >>> redact(["train.py", "--api-key", "abc", "--lr", "0.1", "--token=def"])
    ['train.py', '--api-key', '********', '--lr', '0.1', '--token=********']
    """
    return isinstance(argument, str) and argument.startswith("-") and "=" not in argument and is_secret_name(argument)


def _mask_assignments(text: str) -> str:
    """`text` with the value of every `SECRET_NAME=value` masked, up to the next whitespace.

    >>> _mask_assignments("lr=0.1 --api-key=abc x=WANDB_TOKEN=def")
    'lr=0.1 --api-key=******** x=WANDB_TOKEN=********'
    """
    pieces, done, position = [], 0, 0
    while match := _ASSIGNED_NAME.search(text, position):
        position = match.end()
        if not is_secret_name(match.group(1)):
            continue
        end = _VALUE_END.search(text, position)
        end = end.start() if end else len(text)
        if end > position:
            pieces += [text[done:position], MASK]
            done = position = end  # the masked value is not searched for names
    return "".join(pieces) + text[done:] if pieces else text


SHOWN_CHARACTERS = 1_000


def for_display(value: Any) -> Any:
    """`redact(value)` with every string over SHOWN_CHARACTERS cut to its start and its length, for
    log lines and artifacts: a 400,000-character run config is no use to a reader there, and each
    copy costs the server a write (the dry run shows the submission whole).

    >>> for_display({"WANDB_CONFIG": "x" * 5000, "TOKEN": "abc"})["WANDB_CONFIG"][-30:]
    '... (5,000 characters in all)'
    """
    return _shortened(redact(value))


def _shortened(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _shortened(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_shortened(v) for v in value]
    if isinstance(value, str) and len(value) > SHOWN_CHARACTERS:
        return f"{value[:SHOWN_CHARACTERS]}... ({len(value):,} characters in all)"
    return value
