"""The docker builder: builds in the local Docker engine, with BuildKit when a CLI can drive it.

BuildKit (for pip cache mounts, one per queue: `_salt_cache_ids`) needs a
docker CLI that speaks it: one with the buildx plugin, or a pre-23 CLI with
`DOCKER_BUILDKIT=1`. The first such `docker` on PATH is used; without one the
Docker SDK runs the classic builder. Either way the context is the plan's tar,
builds use the host network (engines here run without a bridge), and every
line of build output goes to the build task's log.

A build is stoppable: given the run's cancel event, a cancel
kills the CLI (whose BuildKit session ends with it) or cuts the SDK's
connection (the engine stops a classic build whose client is gone), and
`build` raises `BuildStopped`.

Example::

    builder = DockerBuilder()
    builder.build(plan_build(job, None, "prefect-launch/python:3.11", "127.0.0.1:5000/launch",
                             "gpu" if builder.cache_mounts else None), log)
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import io
import os
import re
import secrets
import signal
import socket
import subprocess
import tarfile
import tempfile
import threading

from prefect_launch.builders.base import Builder, BuildLog, Log
from prefect_launch.cancel import CancelWatch
from prefect_launch.builders.plan import CACHE_ID_PREFIX, BuildPlan
from prefect_launch.docker_engine import buildkit_cli, docker_client, http_status
from prefect_launch.errors import LaunchError
from prefect_launch.home import launch_home

STOP_GRACE_SECONDS = 10.0


class BuildStopped(LaunchError):
    """The build was stopped because its run was cancelled."""


# A generated Dockerfile's cache id, `prefect-launch-pip/<queue>`, before the agent's key salts it.
_CACHE_ID = re.compile(re.escape(CACHE_ID_PREFIX) + r"([A-Za-z0-9_.-]+)")


def _salt_cache_ids(dockerfile: str) -> None:
    """Give each cache mount of a generated Dockerfile the id `prefect-launch-pip-<HMAC(agent key, queue)>`.

    Every build on the engine shares its BuildKit caches by id: a job's own Dockerfile naming another queue's
    id would plant files that queue's builds then install. Salted with a key only the agent reads, an id
    cannot be named by anyone else; one queue's builds still share their cache.
    """
    with open(dockerfile, encoding="utf-8") as file:
        text = file.read()
    key = cache_key()
    salted = _CACHE_ID.sub(lambda m: "prefect-launch-pip-" + hmac.new(key, m[1].encode(), hashlib.sha256).hexdigest()[:32], text)
    with open(dockerfile, "w", encoding="utf-8") as file:
        file.write(salted)


def cache_key() -> bytes:
    """The agent's build-cache key: 32 random bytes in its home (`build-cache.key`, readable by its user only)."""
    path = launch_home() / "build-cache.key"
    try:
        return path.read_bytes()
    except FileNotFoundError:
        path.parent.mkdir(parents=True, exist_ok=True)
        try:
            with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb") as file:
                file.write(secrets.token_bytes(32))
        except FileExistsError:
            pass  # another agent of this home made it first
        return path.read_bytes()


class DockerBuilder(Builder):
    name = "docker"

    @property
    def cache_mounts(self) -> bool:
        return buildkit_cli() is not None

    def build(self, plan: BuildPlan, log: Log, cancel: threading.Event | None = None) -> None:
        build_log = BuildLog(log)

        def emit(line: str) -> None:
            line = line.rstrip()
            if line:
                build_log.info("%s", line)

        cli = buildkit_cli()
        log.info("Building %s with %s", plan.image, "BuildKit" if cli else "the classic builder")
        error = self._build_cli(plan, cli, emit, cancel) if cli else self._build_sdk(plan, emit, cancel)
        if cancel is not None and cancel.is_set():
            raise BuildStopped(f"the build of {plan.image} was stopped: the run was cancelled")
        if error is not None:
            raise build_log.failure(error)

    @staticmethod
    def _build_cli(plan: BuildPlan, cli: tuple[str, dict[str, str]], emit, cancel: threading.Event | None = None) -> str | None:
        path, extra_env = cli
        # The CLI's BuildKit path refuses a stdin context with -f, so the context goes to a folder.
        with tempfile.TemporaryDirectory(prefix="prefect-launch-build-") as context:
            with tarfile.open(fileobj=io.BytesIO(plan.context)) as tar:
                tar.extractall(context, filter="data")
            if plan.generated:
                _salt_cache_ids(os.path.join(context, plan.dockerfile))
            argv = [path, "build", "--network", "host", "--progress", "plain",
                    "-f", os.path.join(context, plan.dockerfile), "-t", plan.image, context]
            proc = subprocess.Popen(
                argv,
                env={**os.environ, **extra_env},
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                text=True,
                errors="replace",
                start_new_session=True,
            )

            def stop() -> None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGINT)  # the CLI cancels its build session on SIGINT
                try:
                    proc.wait(timeout=STOP_GRACE_SECONDS)
                except subprocess.TimeoutExpired:
                    with contextlib.suppress(ProcessLookupError):
                        os.killpg(proc.pid, signal.SIGKILL)

            watch = CancelWatch(cancel, stop, name="build-cancel")
            try:
                for line in proc.stdout:  # type: ignore[union-attr]
                    emit(line)
                code = proc.wait()
            finally:
                watch.done()
        return None if code == 0 else f"docker build exited with {code}"

    @staticmethod
    def _build_sdk(plan: BuildPlan, emit, cancel: threading.Event | None = None) -> str | None:
        api = docker_client().api
        responses: list = []
        if cancel is not None:
            # A client of its own, whose build response can be cut from the cancel thread.
            import docker

            api = docker.from_env(timeout=600).api
            helper = api._stream_helper

            def capture(response, decode=False):
                responses.append(response)
                return helper(response, decode=decode)

            api._stream_helper = capture

        def stop() -> None:
            emit("Stopping the build: the run was cancelled")
            while not responses and not watch.ended(0.1):
                pass  # the context is still uploading: the response comes once the engine starts the build
            for response in responses:
                with contextlib.suppress(Exception):
                    raw = response.raw._fp.fp.raw
                    getattr(raw, "_sock", raw).shutdown(socket.SHUT_RDWR)

        watch = CancelWatch(cancel, stop, name="build-cancel")
        try:
            stream = api.build(
                fileobj=io.BytesIO(plan.context),
                custom_context=True,
                dockerfile=plan.dockerfile,
                tag=plan.image,
                network_mode="host",
                rm=True,
                decode=True,
            )
            for record in stream:
                if "stream" in record:
                    for line in record["stream"].splitlines():
                        emit(line)
                if "error" in record:
                    emit(record["error"])
                    return record["error"].strip().splitlines()[-1] if record["error"].strip() else "build error"
        except Exception as exc:
            if cancel is not None and cancel.is_set():
                return "stopped on cancel"
            if http_status(exc) is None:
                raise
            emit(str(exc))
            return getattr(exc, "explanation", None) or str(exc)
        finally:
            watch.done()
            if cancel is not None:
                api.close()
        return None
