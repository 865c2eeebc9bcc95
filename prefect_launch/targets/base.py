"""The target interface: render (pure) -> submit -> wait, and attach for runs adopted from a dead agent.

While it waits, a target tells the run's `Progress` why the job is not running
yet and when it starts (the run's timeline, `prefect_launch.timeline`).

Each target declares its queue config as a pydantic model (`config_model`, a
`TargetConfig`): `parse_config` checks a queue config against it (at
`queue create`, with stand-ins for template fields, and for every job, with the
job's resource args merged in) and `render` receives the parsed model.

Example, a target that runs nothing::

    class Null(Target):
        resource = Resource.local_process
        config_model = TargetConfig
        job_policy = AllowedFields(set())
        def render(self, job, config): return {"argv": job.argv}
        def submit(self, submission, log): return Handle(id="null")
        def wait(self, handle, cancel, log, progress):
            progress.started()
            return Outcome(state="completed")
"""

from __future__ import annotations

import abc
import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict, ValidationError

from prefect_launch.errors import AdoptionFailed, LaunchError, invalid_config
from prefect_launch.interfaces import Environment, Registry
from prefect_launch.targets.policy import JobPolicy
from prefect_launch.spec import Resource, ResolvedJob


@dataclass
class Handle:
    """What a target returns from submit: enough to follow and stop the job."""

    id: str
    detail: Any = field(default=None, repr=False)
    # Found by `attach` (the job was submitted by an agent that died), not created by `submit`.
    attached: bool = False


class Progress(Protocol):
    """What a target reports while it follows a job; `timeline.Timeline` records it."""

    def waiting(self, reason: str) -> None:
        """Why the job is not running yet (`Unschedulable: ...`, `ImagePullBackOff: ...`); "" once nothing holds it."""

    def started(self) -> None:
        """The job runs now (a pod Running, a SageMaker job Training); reporting it again changes nothing."""


@dataclass(frozen=True)
class Leftover:
    """Something a run's job left on its target that only that run's end makes removable (a stopped container)."""

    name: str
    run_id: str
    state: str  # the target's word for it: `exited`, `created`


@dataclass
class Outcome:
    # preempted: the infrastructure took the job away; the run may go back to its queue.
    state: Literal["completed", "failed", "cancelled", "preempted"]
    message: str = ""
    exit_code: int | None = None


class TargetConfig(BaseModel):
    """A target's queue config, parsed: the launch keys (`builder`, `scheduler`) already taken off."""

    model_config = ConfigDict(extra="forbid")


class Target(abc.ABC):
    resource: ClassVar[Resource]
    config_model: ClassVar[type[TargetConfig]]
    # What a job's own resource args may set; the queue's config (its admin) may set anything (`policy.py`).
    job_policy: ClassVar[JobPolicy]
    # Its infrastructure pulls images itself and needs the registry's login handed over (a pull secret).
    pulls_with_login: ClassVar[bool] = False
    # Its jobs outlive the agent and `attach` finds them by name: another agent can adopt them.
    adoptable: ClassVar[bool] = False
    # It runs an image, which the agent builds from a code job's folder (local-process runs the folder itself).
    builds_image: ClassVar[bool] = True
    # It runs off the agent's machine: no agent folder is the job's WANDB_DIR, and the agent's cloud
    # environment is verified before a job is submitted.
    runs_remotely: ClassVar[bool] = False

    def __init__(self, environment: Environment | None = None, registry: Registry | None = None,
                 cluster: str | None = None) -> None:
        # The agent's cloud credentials and region; only the cloud targets use them.
        self.environment = environment
        # The agent's registry: a target whose cluster pulls with its own login (Kubernetes) asks it for one.
        self.registry = registry
        # The agent config's `kubernetes.cluster` (a prefect-kubernetes block); only the kubernetes target uses it.
        self.cluster = cluster

    @classmethod
    def parse_config(cls, payload: dict[str, Any], where: str) -> TargetConfig:
        """`payload` (a queue config without its launch keys) as this target's config model; a bad one is one
        LaunchError naming `where` and every bad field's path. The models' validators may take a mapping for granted."""
        if not isinstance(payload, dict):
            raise LaunchError(f"{where}: expected a mapping of keys, not {type(payload).__name__}")
        try:
            return cls.config_model.model_validate(payload)
        except ValidationError as exc:
            raise invalid_config(exc, where) from None

    def with_checkpoints(self, job: ResolvedJob, store: str | None) -> ResolvedJob:
        """The job with the place it keeps checkpoints across requeues, from the queue config's `checkpoints`
        (`store`): under it, one prefix per run id, an object-store URI (`checkpoint_uri`, the job syncs it) or a
        folder the cluster's pods share (`checkpoint_dir`). Local targets keep them in the run's folder."""
        if not store:
            return job
        location = f"{store.rstrip('/')}/{job.run_id}"
        field = "checkpoint_uri" if "://" in store else "checkpoint_dir"
        return job.model_copy(update={field: location})

    @abc.abstractmethod
    def render(self, job: ResolvedJob, config: Any) -> dict[str, Any]:
        """The exact payload the target receives, from its parsed config (`config_model`). Pure: no I/O."""

    def before_record(self, submission: dict[str, Any]) -> None:
        """Called just before the run's submission goes on record (its `infrastructure_pid`), then `submit`.

        Nothing by default. A target whose jobs die with their agent makes sure here that an agent dying
        between the record and the job's start leaves an adopter something to go by.
        """

    @abc.abstractmethod
    def submit(self, submission: dict[str, Any], log: logging.Logger | logging.LoggerAdapter) -> Handle:
        """Start the job; return once it is running (or raise LaunchError)."""

    def attach(self, submission: dict[str, Any], log: logging.Logger | logging.LoggerAdapter,
               since: datetime | None) -> Handle | None:
        """The job this submission started, found after the agent that submitted it died; None if gone.

        `since` is when the run first went Running: its job was not created before (a job of an earlier
        run with the same run id is not this one). A job that is gone but whose end the target can still
        read (from its events, or its W&B run's own record) is a handle whose `wait` returns that end.
        Never creates anything: an adopted run is followed, not submitted again.
        """
        raise AdoptionFailed(
            f"{self.resource.value} jobs cannot be adopted by another agent: "
            "a job whose agent died is not followed again"
        )

    def may_vanish(self, submission: dict[str, Any]) -> bool:
        """Whether a finished job can disappear from the target on its own (so one not found may have run).

        Where it cannot, an adopting agent that does not find the job knows it was never created, and
        submits it; where it can, the run ends Crashed rather than risk running the job twice.
        """
        return True

    def never_created(self, submission: dict[str, Any], since: datetime) -> bool:
        """Whether the target can show that this submission's job was never created after `since` (the run's start).

        A job that may vanish and is not found is then known never to have run: an adopter
        submits it instead of ending the run Crashed.
        """
        return False

    def leftovers(self) -> list[Leftover]:
        """What jobs left on the target that `release` did not remove (their agent died first, or a `docker run`
        died between create and start); `prefect_launch.leftovers` removes those whose run is done or not started."""
        return []

    def remove_leftover(self, leftover: Leftover, log: logging.Logger | logging.LoggerAdapter) -> None:
        """Remove one of `leftovers()`."""

    def release(self, handle: Handle, log: logging.Logger | logging.LoggerAdapter) -> None:
        """Remove what the job left on its target, once its outcome is on record (the run's final state).

        Not before: an agent that dies between the job's end and the final
        state leaves the job for the next agent to find and read.
        """

    @abc.abstractmethod
    def wait(
        self, handle: Handle, cancel: threading.Event, log: logging.Logger | logging.LoggerAdapter, progress: Progress
    ) -> Outcome:
        """Follow the job to its end, streaming its output to `log`; stop it when `cancel` is set.

        Report to `progress` why the job waits and when it starts, as far as the target can tell.
        """
