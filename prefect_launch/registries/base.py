"""The registry interface: where built images live, and whether a tag is already there.

Example, a registry that never has anything::

    class Empty(Registry):
        def repository(self, project): return "empty/" + project
        def exists(self, image): return False
        def push(self, image, log): return None
"""

from __future__ import annotations

import abc
import logging

Log = logging.Logger | logging.LoggerAdapter


class Registry(abc.ABC):
    @abc.abstractmethod
    def repository(self, project: str) -> str:
        """The repository a project's images are tagged into (`host/path`, no tag)."""

    @abc.abstractmethod
    def exists(self, image: str) -> bool:
        """Whether `repository:tag` is already stored, so its build can be skipped."""

    @abc.abstractmethod
    def push(self, image: str, log: Log) -> str | None:
        """Push a built image; return its manifest digest (None where nothing is pushed)."""

    def pull_credentials(self, image: str) -> dict[str, str] | None:
        """The login a cluster needs to pull `image` from this registry (docker's `auth_config`), or None."""
        return None
