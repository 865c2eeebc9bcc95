"""local-container: `docker run` on the agent's Docker engine.

The queue config is `docker run` options, as W&B writes them: a key is a flag
(`gpus` -> `--gpus`, `v` -> `-v`), a list repeats the flag, `true` is a bare
flag, `false` or null leaves it out, anything else is the flag's value; an
`env` entry without `=` passes the agent's variable through. Keys are checked
against `docker run`'s own options (`docker_run.py`): a typo or a value of the
wrong shape is refused naming the key. `builder` and `scheduler` are not flags
(they configure the build and sweeps). The command
is: `docker run`, the launch's own options (container name from the run id,
labels, the run folder mounted as `WANDB_DIR`, the W&B variables), the queue's
options in order, the image, then the entry point and its args.

Secrets never appear in the command: every environment variable is passed by
name (`--env NAME`), its value in the environment of the `docker run` process
(the submission's `env`), where docker reads it; `WANDB_API_KEY` comes from the
agent's own environment that way. The job's entry point replaces the image's
`ENTRYPOINT` (`--entrypoint`, as W&B's runner does); a job that gives none runs
the image's own.

Example:
    >>> from prefect_launch.spec import ResolvedJob
    >>> job = ResolvedJob(run_id="r1", run_name="r1", project="p", argv=["python", "t.py"], entry_point=["python", "t.py"],
    ...                   image="img:1")
    >>> config = LocalContainerTarget.parse_config({"gpus": "all", "rm": True}, "queue config")
    >>> argv = LocalContainerTarget().render(job, config)["argv"]
    >>> argv[argv.index("--entrypoint"):argv.index("--entrypoint") + 2], argv[-5:]
    (['--entrypoint', 'python'], ['--gpus', 'all', '--rm', 'img:1', 't.py'])
"""

from __future__ import annotations

import os
import subprocess
import threading
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from pydantic import ConfigDict, model_validator

from prefect_launch.errors import LaunchError
from prefect_launch.jobenv import wandb_env
from prefect_launch.spec import Resource, ResolvedJob
from prefect_launch.targets import docker_run, process
from prefect_launch.targets.base import Handle, Outcome, Progress, Target, TargetConfig
from prefect_launch.targets.local_process import env_entries
from prefect_launch.targets.policy import AllowedFields
from prefect_launch.targets.process import Log

# Passed by name: docker copies the agent's value when it is set, and nothing shows in the command.
PASS_THROUGH = ("WANDB_API_KEY", "WANDB_BASE_URL", "WANDB_MODE")
RUN_DIR = "/launch/run"
_DOCKER_EXIT = {
    125: "docker could not run the container",
    126: "the entry point could not be invoked",
    127: "the entry point was not found in the image",
}


def container_name(run_id: str) -> str:
    return f"prefect-launch-{run_id}"


class LocalContainerConfig(TargetConfig):
    """A docker queue config: `docker run` options keyed by their names, in the config's order."""

    model_config = ConfigDict(extra="allow")

    @model_validator(mode="before")
    @classmethod
    def _docker_run_options(cls, options: dict[str, Any]) -> dict[str, Any]:
        problems = [problem for key, value in options.items() for problem in docker_run.option_problems(str(key), value)]
        if problems:
            raise ValueError("; ".join(problems))
        return options

    def flags(self) -> list[str]:
        """The options as `docker run` arguments, each `env` entry by name only (its value is in `environment`)."""
        options = dict(self.model_extra or {})
        for key in [key for key in options if docker_run.long_name(key) == "env"]:
            options[key] = list(env_entries(options[key]))
        return docker_run.flags(options)

    def environment(self) -> dict[str, str]:
        """The values of the `env` entries that give one (`NAME=value`): docker reads them from its environment."""
        values: dict[str, str] = {}
        for key, value in (self.model_extra or {}).items():
            if docker_run.long_name(key) == "env":
                values.update({name: item for name, item in env_entries(value).items() if item is not None})
        return values


class LocalContainerTarget(Target):
    resource = Resource.local_container
    config_model = LocalContainerConfig
    job_policy = AllowedFields(docker_run.JOB_MAY_SET, key=docker_run.long_name)
    adoptable = True
    # `docker container wait` on an adopted container, started by `attach`.
    _exit_waiter: subprocess.Popen[str] | None = None

    def with_checkpoints(self, job: ResolvedJob, store: str | None) -> ResolvedJob:
        """In the run's own folder, mounted into every attempt's container."""
        return job.model_copy(update={"checkpoint_dir": f"{RUN_DIR}/checkpoints"}) if job.run_dir else job

    def render(self, job: ResolvedJob, config: LocalContainerConfig) -> dict[str, Any]:
        if not job.image:
            raise LaunchError("local-container needs an image: this job has none (was its build skipped?)")
        env = wandb_env(job)
        own = ["--name", container_name(job.run_id), "--label", f"prefect-launch.run-id={job.run_id}"]
        if job.run_dir is not None:
            own += ["--volume", f"{job.run_dir}:{RUN_DIR}"]
            env["WANDB_DIR"] = RUN_DIR
        for name in [*env, *PASS_THROUGH]:
            own += ["--env", name]
        # As W&B runs a container: the entry point's first word replaces the image's ENTRYPOINT, the rest and
        # the job's arguments follow the image; a job without one runs the image's own.
        entry_point = job.entry_point
        if entry_point:
            own += ["--entrypoint", entry_point[0]]
        command = [*entry_point[1:], *job.argv[len(entry_point):]]
        return {"argv": ["docker", "run", *own, *config.flags(), job.image, *command],
                "env": {**env, **config.environment()}}

    def submit(self, submission: dict[str, Any], log: Log) -> Handle:
        argv = submission["argv"]
        volume = _run_dir_volume(argv)
        if volume:
            # Created by the agent, not by dockerd, so the folder keeps the agent's owner.
            Path(volume).mkdir(parents=True, exist_ok=True)
        name = argv[argv.index("--name") + 1]
        # Every value docker passes into the container is in its own environment, named on its command line:
        # nothing secret shows in `ps` or in the logged command.
        handle = process.start(argv, env={**os.environ, **submission.get("env", {})}, cwd=None, log=log)
        handle.id = name
        return handle

    def attach(self, submission: dict[str, Any], log: Log) -> Handle | None:
        argv = submission["argv"]
        name = argv[argv.index("--name") + 1]
        # Waiting from the moment the container is found: a `--rm` container is removed as it exits,
        # and an exit code asked for after that is gone with it.
        waiter = subprocess.Popen(["docker", "container", "wait", name], stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True)
        if subprocess.run(["docker", "container", "inspect", name], capture_output=True, timeout=60).returncode != 0:
            waiter.kill()
            waiter.wait()
            code = _exit_code_from_events(name)
            if code is None:
                return None
            # Exited (and, with --rm, removed) while no agent followed it: the engine's events kept its exit.
            log.info("Container %s exited with code %d while no agent followed it (its output went to the agent "
                     "that died)", name, code)
            return Handle(id=name, detail=_Ended(code), attached=True)
        # The dead agent's `docker run` took the output it saw; `docker logs` replays it from the start.
        log.info("Following container %s (its output from the start)", name)
        handle = process.start(["docker", "logs", "--follow", name], env=dict(os.environ), cwd=None, log=log)
        handle.id, handle.attached = name, True
        self._exit_waiter = waiter
        return handle

    def wait(self, handle: Handle, cancel: threading.Event, log: Log, progress: Progress) -> Outcome:
        name = handle.id
        progress.started()  # `docker run` starts the container (a pull, if any, shows in its output)
        if isinstance(handle.detail, _Ended):
            return process.exit_outcome(handle.detail.exit_code, _describe_exit)

        def stop(_proc: subprocess.Popen[str]) -> None:
            log.info("Stopping container %s", name)
            _docker("stop", "--time", str(int(process.STOP_GRACE_SECONDS)), name)

        outcome = process.follow(handle, cancel, log, stop=stop, describe_exit=_describe_exit)
        if handle.attached and outcome.state == "cancelled":
            self._exit_waiter.kill()
            self._exit_waiter.wait()
        elif handle.attached:
            # An attached `docker logs` exits 0 whatever the job did: the container's own exit decides.
            outcome = process.exit_outcome(self._adopted_exit_code(name), _describe_exit)
        return outcome

    def _adopted_exit_code(self, name: str) -> int:
        """An adopted container's exit code: from the wait started when it was found, else from the engine's events."""
        try:
            out, _ = self._exit_waiter.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            self._exit_waiter.kill()
            out = ""
        if self._exit_waiter.returncode == 0 and out.strip().lstrip("-").isdigit():
            return int(out.strip())
        code = _exit_code_from_events(name)
        if code is None:
            raise LaunchError(f"container {name} vanished before its exit code was read, and the engine has no record of its exit")
        return code

    def may_vanish(self, submission: dict[str, Any]) -> bool:
        # The container stays until `release`, after the run's final state, unless the queue asks `docker run --rm`.
        return "--rm" in submission["argv"]

    def never_created(self, submission: dict[str, Any], since: datetime) -> bool:
        # The engine's events reach back before `since` and none names the container.
        argv = submission["argv"]
        name = argv[argv.index("--name") + 1]
        events = _container_events()
        return bool(events) and events[0].time < since.timestamp() and all(e.container != name for e in events)

    def release(self, handle: Handle, log: Log) -> None:
        _docker("rm", "--force", handle.id)


def _describe_exit(code: int) -> str:
    return _DOCKER_EXIT.get(code, f"container exited with code {code}")


@dataclass
class _Ended:
    """An adopted container that had already exited when it was found."""

    exit_code: int


@dataclass(frozen=True)
class _Event:
    time: int  # seconds since the epoch
    container: str
    action: str
    exit_code: str = ""


def _container_events() -> list[_Event]:
    """The container events the engine still holds, oldest first (it keeps its last 256 events in memory).

    `--until` is a second ahead: a query that ends now leaves out the events of the current second.
    """
    result = subprocess.run(
        ["docker", "events", "--since", "0", "--until", f"{time.time() + 1:.3f}", "--filter", "type=container",
         "--format", '{{.Time}} {{.Actor.Attributes.name}} {{.Action}} {{index .Actor.Attributes "exitCode"}}'],
        capture_output=True, text=True, timeout=60,
    )
    if result.returncode != 0:
        return []
    return [_Event(int(fields[0]), *fields[1:4]) for line in result.stdout.splitlines() if len(fields := line.split()) >= 3]


def _exit_code_from_events(name: str) -> int | None:
    """The exit code in the engine's `die` event of container `name`, or None if none is on record."""
    codes = [e.exit_code for e in _container_events() if e.container == name and e.action == "die"]
    return int(codes[-1]) if codes and codes[-1].lstrip("-").isdigit() else None


def _run_dir_volume(argv: list[str]) -> str | None:
    for flag, value in zip(argv, argv[1:]):
        if flag == "--volume" and value.endswith(f":{RUN_DIR}"):
            return value.rsplit(":", 1)[0]
    return None


def _docker(*args: str) -> None:
    subprocess.run(["docker", *args], capture_output=True, timeout=60)
