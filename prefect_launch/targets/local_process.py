"""local-process: run the entry point as a child process of the agent.

The submission is `{"argv": [...], "env": {...}, "cwd": "..."}`: an argv list,
never a shell string; `env` is what the job gets on top of the agent's own
environment.

A run's processes end with it (`process_tree`): every process the job starts
carries the run's cookie (its launch flow run id), and whatever is left when
its main process exits, when it is cancelled or when its agent dies (the
agent's death watch) is stopped. An agent that adopts the run of a dead agent
stops what is left of its job on this machine before it settles the run, so a
run is never Crashed while its job still runs.

Example:
    >>> from prefect_launch.spec import ResolvedJob
    >>> job = ResolvedJob(run_id="r1", run_name="r1", project="p", argv=["python", "t.py"],
    ...                   workdir="/code")
    >>> config = LocalProcessTarget.parse_config({"env": ["A=1"]}, "queue config")
    >>> sub = LocalProcessTarget().render(job, config)
    >>> sub["argv"], sub["env"]["A"], sub["cwd"]
    (['python', 't.py'], '1', '/code')
"""

from __future__ import annotations

import os
import sys
import threading
import uuid
from typing import Annotated, Any

from pydantic import Field, StringConstraints, field_validator

from prefect_launch.errors import AdoptionFailed, LaunchError
from prefect_launch.jobenv import wandb_env
from prefect_launch.spec import Resource, ResolvedJob
from prefect_launch.targets import process, process_tree
from prefect_launch.targets.base import Handle, Outcome, Progress, Target, TargetConfig
from prefect_launch.targets.policy import AllowedFields
from prefect_launch.targets.process import Log

EnvName = Annotated[str, StringConstraints(pattern=r"^[^=\x00]+$")]


def env_entries(value: Any) -> Any:
    """`env` as W&B writes it, a mapping or a list of `KEY=value`, as one mapping; a bare `KEY` maps to None
    (the agent's own value passes through). Scalars become strings, as the process receives them.

    >>> env_entries(["A=1", "B", "C=x=y"]), env_entries({"N": 2})
    ({'A': '1', 'B': None, 'C': 'x=y'}, {'N': '2'})
    """
    if isinstance(value, list):
        entries = [str(entry).partition("=") for entry in value]
        return {name: (val if sep else None) for name, sep, val in entries}
    if isinstance(value, dict):
        return {name: item if item is None or isinstance(item, (dict, list)) else str(item) for name, item in value.items()}
    return value


class LocalProcessConfig(TargetConfig):
    """A local-process queue config: only `env`, what the job gets on top of the agent's environment."""

    env: dict[EnvName, str | None] = Field(
        default_factory=dict, description="A mapping, or a list of KEY=value; a bare KEY passes the agent's value"
    )

    @field_validator("env", mode="before")
    @classmethod
    def _entries(cls, value: Any) -> Any:
        return env_entries(value)

    def environment(self) -> dict[str, str]:
        """`env` with the agent's value for each bare KEY (left out where the agent has none)."""
        return {name: os.environ[name] if value is None else value for name, value in self.env.items()
                if value is not None or name in os.environ}


def _run_cookie() -> str | None:
    """The cookie of the launch run being followed (its flow run id); None outside a flow run."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    return str(context.flow_run.id) if context is not None and context.flow_run is not None else None


class LocalProcessTarget(Target):
    resource = Resource.local_process
    config_model = LocalProcessConfig
    # The job runs as the agent's user on its machine already: its own environment widens nothing.
    job_policy = AllowedFields({"env"})
    builds_image = False

    def with_checkpoints(self, job: ResolvedJob, store: str | None) -> ResolvedJob:
        """In the run's own folder, which every attempt of the run on this machine shares."""
        return job.model_copy(update={"checkpoint_dir": str(job.run_dir / "checkpoints")}) if job.run_dir else job

    def render(self, job: ResolvedJob, config: LocalProcessConfig) -> dict[str, Any]:
        if job.workdir is None:
            raise LaunchError(
                "local-process runs code, not images: this job has no code source; "
                "use a local-container queue for image jobs"
            )
        if not job.argv:
            raise LaunchError("the job has no entry point: give -E/--entry-point")
        env = {**wandb_env(job), **config.environment()}
        return {"argv": list(job.argv), "env": env, "cwd": str(job.workdir)}

    def submit(self, submission: dict[str, Any], log: Log) -> Handle:
        env = {**os.environ, **submission["env"], "PYTHONUNBUFFERED": "1"}
        # Jobs run with the agent's Python first on PATH, so `python train.py`
        # means the interpreter (and packages) the agent was installed with.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        return process.start(submission["argv"], env, submission["cwd"], log, cookie=_run_cookie() or str(uuid.uuid4()))

    def attach(self, submission: dict[str, Any], log: Log) -> Handle | None:
        """A dead agent's job is not followed (its output went to the dead agent): what is left of it on
        this machine is stopped first, then the run ends Crashed."""
        cookie = _run_cookie()
        stopped = process_tree.kill_tree(cookie, process_tree.STOP_GRACE_SECONDS) if cookie else []
        if stopped:
            log.warning("Stopped %d process(es) of the dead agent's job: %s", len(stopped), ", ".join(stopped))
        raise AdoptionFailed(
            "local-process jobs cannot be adopted by another agent: its job dies with its agent"
            + (f" ({len(stopped)} process(es) still running on this machine were stopped)" if stopped else "")
        )

    def wait(self, handle: Handle, cancel: threading.Event, log: Log, progress: Progress) -> Outcome:
        progress.started()  # the process runs from its submission on
        return process.follow(handle, cancel, log, stop=process.stop_group)
