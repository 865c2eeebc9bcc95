"""The interfaces one axis hands another: an `Environment` (to registries, builders and targets)
and a `Registry` (to builders and targets).

They live outside every axis so that no axis imports another: `environments/`
and `registries/` implement them, the others receive instances from the
composition (`agent_setup.py`). They are abstract base classes rather than
`typing.Protocol`s: each implementation inherits their shared behaviour (an
environment's fields and `describe`, the default answers), so every method is
declared once, here, and nowhere else.

Example, an environment that knows its region and checks nothing, and a registry
that never has anything::

    class Nowhere(Environment):
        type = "none"
        def verify(self): return "nowhere, no credentials"

    class Empty(Registry):
        def repository(self, project): return "empty/" + project
        def exists(self, image): return False
        def push(self, image, log): return None
"""

from __future__ import annotations

import abc
import logging
from typing import ClassVar

Log = logging.Logger | logging.LoggerAdapter


class Environment(abc.ABC):
    """The cloud an agent's credentials come from: W&B's `environment:` key of `launch-config.yaml`.

    It answers three questions for the registries, builders and targets of that
    cloud: which credentials, which region (and project), and whether a registry
    URI lies in that region. Credentials come from each cloud's default chain, or
    from a Prefect credentials block named in `environment.credentials`.
    """

    # aws, gcp or azure. The other axes check it (never the class) before they use a cloud's own
    # members: an aws environment's `client`, a gcp or azure one's `access_token`.
    type: ClassVar[str]

    def __init__(self, region: str | None = None, project: str | None = None, credentials: str | None = None):
        self.region = region
        self.project = project
        # `<block type slug>/<block name>`, e.g. `aws-credentials/launch`; None = the default chain.
        self.credentials_block = credentials

    def registry_problems(self, repository: str) -> list[str]:
        """Why images pushed to `repository` (`host/path`) do not fit this environment (empty if they do)."""
        return []

    @abc.abstractmethod
    def verify(self) -> str:
        """Reach the cloud with these credentials (I/O); return who they are, or raise LaunchError."""

    def describe(self) -> str:
        parts = [f"{self.type} environment"]
        if self.project:
            parts.append(f"project {self.project}")
        if self.region:
            parts.append(f"region {self.region}")
        return ", ".join(parts)


class Registry(abc.ABC):
    """Where built images live, and whether a tag is already there."""

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
