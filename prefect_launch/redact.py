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
_SECRET_ASSIGNMENT = re.compile(
    r"((?:[\w-]*(?:api[_-]?key|token|secret|password|passwd|credential|auth)[\w-]*)=)([^\s]+)", re.I
)


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
        return [redact(v, name) for v in value]
    if isinstance(value, str):
        if name and is_secret_name(name):
            return MASK
        return _SECRET_ASSIGNMENT.sub(lambda m: m.group(1) + MASK, value)
    return value
