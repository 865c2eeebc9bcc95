"""The local Docker engine, as the docker builder and the registries reach it.

- `docker_client()`: the engine's SDK client (one per process), or a LaunchError
  saying no engine answers; `engine_available()` asks without raising;
- `found(lookup)` / `http_status(exc)`: an engine lookup's 404 as False, matched
  by status;
- `buildkit_cli()`: the first `docker` CLI on PATH that builds with BuildKit.

Example:
    >>> class Missing(Exception):
    ...     status_code = 404
    >>> def lookup():
    ...     raise Missing()
    >>> found(lookup)
    False
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from typing import Callable

from prefect_launch.errors import LaunchError
from prefect_launch.settings import settings


@functools.cache
def docker_client():
    import docker

    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except Exception as exc:
        raise LaunchError(f"no Docker engine answers ({exc.__class__.__name__}: {exc})") from None
    return client


def http_status(exc: BaseException) -> int | None:
    """The engine's HTTP status for a docker SDK error.

    Matched by status rather than by class: in a Prefect worker `docker.errors`
    can end up imported twice (Prefect lazy-imports docker), and then
    `except NotFound` misses the NotFound that is raised.
    """
    return getattr(exc, "status_code", None)


def found(lookup: Callable[[], object]) -> bool:
    """True if the engine lookup succeeds, False if it answers 404; other errors propagate."""
    try:
        lookup()
        return True
    except Exception as exc:
        if http_status(exc) == 404:
            return False
        raise


def engine_available() -> bool:
    try:
        docker_client()
        return True
    except LaunchError:
        docker_client.cache_clear()
        return False


@functools.cache
def buildkit_cli() -> tuple[str, dict[str, str]] | None:
    """(docker CLI path, extra env) of the first CLI on PATH that builds with BuildKit, or None."""
    if not settings().buildkit:
        return None
    seen: set[str] = set()
    for folder in os.environ.get("PATH", "").split(os.pathsep):
        cli = shutil.which("docker", path=folder)
        if not cli or os.path.realpath(cli) in seen:
            continue
        seen.add(os.path.realpath(cli))
        if _output([cli, "buildx", "version"]) is not None:
            return cli, {"DOCKER_BUILDKIT": "1"}
        version = _output([cli, "version", "--format", "{{.Client.Version}}"])
        if version and version.split(".")[0].isdigit() and int(version.split(".")[0]) < 23:
            return cli, {"DOCKER_BUILDKIT": "1"}
    return None


def _output(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return done.stdout.strip() if done.returncode == 0 else None
