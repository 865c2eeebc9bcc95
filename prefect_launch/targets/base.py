"""The target interface: render (pure) -> submit -> wait.

Example, a target that runs nothing::

    class Null(Target):
        resource = Resource.local_process
        def render(self, job, resource_args): return {"argv": job.argv}
        def submit(self, submission, log): return Handle(id="null")
        def wait(self, handle, cancel, log): return Outcome(state="completed")
"""

from __future__ import annotations

import abc
import logging
import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from prefect_launch.environments import Environment
from prefect_launch.spec import Resource, ResolvedJob

if TYPE_CHECKING:  # registries import the builders, which import the targets
    from prefect_launch.registries.base import Registry


@dataclass
class Handle:
    """What a target returns from submit: enough to follow and stop the job."""

    id: str
    detail: Any = field(default=None, repr=False)


@dataclass
class Outcome:
    # preempted: the infrastructure took the job away; the run may go back to its queue.
    state: Literal["completed", "failed", "cancelled", "preempted"]
    message: str = ""
    exit_code: int | None = None


class Target(abc.ABC):
    resource: ClassVar[Resource]
    # Its infrastructure pulls images itself and needs the registry's login handed over (a pull secret).
    pulls_with_login: ClassVar[bool] = False

    def __init__(self, environment: Environment | None = None, registry: Registry | None = None) -> None:
        # The agent's cloud credentials and region; only the cloud targets use them.
        self.environment = environment
        # The agent's registry: a target whose cluster pulls with its own login (Kubernetes) asks it for one.
        self.registry = registry

    def check_overrides(self, overrides: dict[str, Any]) -> None:
        """Refuse what a job's own resource args may not set, though the queue's config (its admin) may."""

    @abc.abstractmethod
    def render(self, job: ResolvedJob, resource_args: dict[str, Any]) -> dict[str, Any]:
        """The exact payload the target receives. Pure: no I/O."""

    @abc.abstractmethod
    def submit(self, submission: dict[str, Any], log: logging.Logger | logging.LoggerAdapter) -> Handle:
        """Start the job; return once it is running (or raise LaunchError)."""

    @abc.abstractmethod
    def wait(
        self, handle: Handle, cancel: threading.Event, log: logging.Logger | logging.LoggerAdapter
    ) -> Outcome:
        """Follow the job to its end, streaming its output to `log`; stop it when `cancel` is set."""
