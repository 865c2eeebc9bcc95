"""local-process: run the entry point as a child process of the agent.

The submission is `{"argv": [...], "env": {...}, "cwd": "..."}`: an argv list,
never a shell string; `env` is what the job gets on top of the agent's own
environment. The process gets its own process group so cancelling a run ends
everything it started.

Example:
    >>> from prefect_launch.spec import ResolvedJob
    >>> job = ResolvedJob(run_id="r1", run_name="r1", project="p", argv=["python", "t.py"],
    ...                   workdir="/code")
    >>> sub = LocalProcessTarget().render(job, {"env": ["A=1"]})
    >>> sub["argv"], sub["env"]["A"], sub["cwd"]
    (['python', 't.py'], '1', '/code')
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Any

from prefect_launch.errors import LaunchError
from prefect_launch.jobenv import wandb_env
from prefect_launch.spec import Resource, ResolvedJob
from prefect_launch.targets import process
from prefect_launch.targets.base import Handle, Outcome, Progress, Target
from prefect_launch.targets.process import Log


def _env_entries(value: Any) -> dict[str, str]:
    """`env` as a mapping or as a list of `KEY=value` (a bare `KEY` passes the agent's value)."""
    if isinstance(value, dict):
        return {str(k): str(v) for k, v in value.items()}
    if isinstance(value, list):
        env: dict[str, str] = {}
        for entry in value:
            name, sep, val = str(entry).partition("=")
            if not sep:
                if name not in os.environ:
                    continue
                val = os.environ[name]
            env[name] = val
        return env
    raise LaunchError("local-process queue config: env must be a mapping or a list of KEY=value")


class LocalProcessTarget(Target):
    resource = Resource.local_process

    def render(self, job: ResolvedJob, resource_args: dict[str, Any]) -> dict[str, Any]:
        unknown = sorted(set(resource_args) - {"env"})
        if unknown:
            raise LaunchError(
                f"local-process queue config: unknown key(s) {', '.join(unknown)}; "
                "local-process accepts only 'env'"
            )
        if job.workdir is None:
            raise LaunchError(
                "local-process runs code, not images: this job has no code source; "
                "use a local-container queue for image jobs"
            )
        if not job.argv:
            raise LaunchError("the job has no entry point: give -E/--entry-point")
        env = {**wandb_env(job), **_env_entries(resource_args.get("env", {}))}
        return {"argv": list(job.argv), "env": env, "cwd": str(job.workdir)}

    def submit(self, submission: dict[str, Any], log: Log) -> Handle:
        env = {**os.environ, **submission["env"], "PYTHONUNBUFFERED": "1"}
        # Jobs run with the agent's Python first on PATH, so `python train.py`
        # means the interpreter (and packages) the agent was installed with.
        env["PATH"] = os.pathsep.join([os.path.dirname(sys.executable), env.get("PATH", "")])
        return process.start(submission["argv"], env, submission["cwd"], log)

    def wait(self, handle: Handle, cancel: threading.Event, log: Log, progress: Progress) -> Outcome:
        progress.started()  # the process runs from its submission on
        return process.follow(handle, cancel, log, stop=process.stop_group)
