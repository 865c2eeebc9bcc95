"""The environment interface: the cloud an agent's credentials come from.

An environment is W&B's `environment:` key of `launch-config.yaml` (aws,
gcp, azure). It answers three questions for the registries and targets of
that cloud: which credentials, which region (and project), and whether a
registry URI lies in that region. Credentials come from each cloud's default
chain, or from a Prefect credentials block named in `environment.credentials`.

Example, an environment that knows its region and checks nothing::

    class Nowhere(Environment):
        type = "none"
        def verify(self): return "nowhere, no credentials"
"""

from __future__ import annotations

import abc
from typing import ClassVar


class Environment(abc.ABC):
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
