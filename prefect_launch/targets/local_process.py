"""local-process: run the entry point as a child process of the agent.

The submission is `{"argv": [...], "env": {...}, "cwd": "..."}`: an argv list,
never a shell string; `env` is what the job gets on top of the agent's own
environment.

A run's processes end with it (`process_tree`): every process the job starts
carries the run's cookie (its launch flow run id), and whatever is left when
its main process exits, when it is cancelled or when its agent dies (the
agent's death watch) is stopped. An agent that adopts the run of a dead agent
stops what is left of its job on this machine before it settles the run, so a
run is never Crashed while its job still runs. The moment the job's main
process exits, its exit code goes into its run folder (`EXIT_RECORD`): an
agent that dies before the run's final state is on record leaves it to the
adopter on this machine, which ends the run as the job ended, not Crashed.

The agent puts its job on its death watch, then records its job's submission,
then starts the job. Dying after the record, it leaves a run that looks
submitted, and maybe a job that never ran; the adopter tells that apart from a
job stopped with its agent by two records in the run folder: the process start
(`STARTED_RECORD`, written as the process starts) and what the dead agent's
watcher found of the job (`FOUND_RECORD`, which the adopter waits for: the
watcher writes it within a second or so of the death). Neither a start nor a
process found: the job never ran, and the adopter starts it. Anything else,
and the run ends Crashed, never run twice.

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
import time
import uuid
from datetime import datetime
from pathlib import Path
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


# In the run folder (WANDB_DIR): the job's exit code, written as its main process exits.
EXIT_RECORD = ".prefect-launch-exit-code"


# In the run folder: the job's process id, written as it starts; how many of its processes the dead agent's
# watcher found to stop (`process_tree`).
STARTED_RECORD = ".prefect-launch-started"
FOUND_RECORD = ".prefect-launch-found-at-agent-death"


def _exit_record(submission: dict[str, Any]) -> Path:
    return _run_record(submission, EXIT_RECORD)


def _run_record(submission: dict[str, Any], name: str) -> Path:
    return Path(submission["env"]["WANDB_DIR"]) / name


def _since(record: Path, since: datetime | None) -> bool:
    """Whether `record` exists and was written since `since` (an earlier attempt of the run wrote the same folder)."""
    try:
        written = record.stat().st_mtime
    except OSError:
        return False
    return since is None or written >= since.timestamp()


# How long an adopter waits for the dead agent's watcher to write what it found: it stops the job's processes
# first, waiting for each up to its grace, twice (at once, and after the exec grace).
FOUND_WAIT_SECONDS = 2 * process_tree.STOP_GRACE_SECONDS + 5


def _never_started(submission: dict[str, Any], since: datetime | None, wait: float = 0.0) -> bool:
    """The dead agent never started the job: no start on record, and its watcher found none of its processes
    (its record waited for up to `wait` s)."""
    if _since(_run_record(submission, STARTED_RECORD), since):
        return False
    found = _run_record(submission, FOUND_RECORD)
    deadline = time.monotonic() + wait
    while not _since(found, since) and time.monotonic() < deadline:
        time.sleep(0.1)
    return _since(found, since) and found.read_text().strip() == "0"


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

    def before_record(self, submission: dict[str, Any]) -> None:
        """On the death watch before the submission is on record: if the agent dies from then on, its watcher
        writes what it found of the job (`FOUND_RECORD`), which tells the adopter whether the job started."""
        _exit_record(submission).parent.mkdir(parents=True, exist_ok=True)
        if (cookie := _run_cookie()) is not None:
            process_tree.DeathWatch.register(cookie, str(_run_record(submission, FOUND_RECORD)))

    def submit(self, submission: dict[str, Any], log: Log) -> Handle:
        env = {**os.environ, **submission["env"], "PYTHONUNBUFFERED": "1"}
        # Jobs run with the agent's Python first on PATH, so `python train.py`
        # means the interpreter (and packages) the agent was installed with.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        _exit_record(submission).parent.mkdir(parents=True, exist_ok=True)
        handle = process.start(submission["argv"], env, submission["cwd"], log, cookie=_run_cookie() or str(uuid.uuid4()),
                               found_record=_run_record(submission, FOUND_RECORD))
        _run_record(submission, STARTED_RECORD).write_text(f"{handle.id}\n")
        handle.detail.exit_record = _exit_record(submission)
        return handle

    def attach(self, submission: dict[str, Any], log: Log, since: datetime | None) -> Handle | None:
        """A dead agent's job is not followed (its output went to the dead agent): what is left of it on
        this machine is stopped first; a job that had exited ends as it exited (its run folder's exit
        record, written since the run started), any other ends Crashed."""
        cookie = _run_cookie()
        stopped = process_tree.kill_tree(cookie, process_tree.STOP_GRACE_SECONDS) if cookie else []
        if stopped:
            log.warning("Stopped %d process(es) of the dead agent's job: %s", len(stopped), ", ".join(stopped))
        record = _exit_record(submission)
        if _since(record, since):
            code = int(record.read_text())
            log.info("The job exited with code %d before its agent died (its run folder's exit record)", code)
            return Handle(id="exited", detail=process.exit_outcome(code), attached=True)
        if _never_started(submission, since, wait=FOUND_WAIT_SECONDS):
            log.info("No start of the job is on record and the dead agent's watcher found none of its processes: "
                     "the agent died before starting it")
            return None
        raise AdoptionFailed(
            "local-process jobs cannot be adopted by another agent: its job dies with its agent"
            + (f" ({len(stopped)} process(es) still running on this machine were stopped)" if stopped else "")
        )

    def never_created(self, submission: dict[str, Any], since: datetime) -> bool:
        return _never_started(submission, since)

    def wait(self, handle: Handle, cancel: threading.Event, log: Log, progress: Progress) -> Outcome:
        progress.started()  # the process runs from its submission on
        if isinstance(handle.detail, Outcome):  # adopted after it had exited
            return handle.detail
        record: Path = handle.detail.exit_record
        return process.follow(handle, cancel, log, stop=process.stop_group,
                              on_exit=lambda code: record.write_text(f"{code}\n"))
