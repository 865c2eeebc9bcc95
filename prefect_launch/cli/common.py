"""What every command shares: connecting to Prefect, running async code, clear errors.

Prefect is imported lazily, after `connect()` has decided which API to use:
Prefect reads its settings when it is first imported.
"""

from __future__ import annotations

import functools
import json
import os
import sys
from typing import Any, Callable, TypeVar

import httpx
import typer

from prefect_launch.home import launch_home
from prefect_launch.server import configured_api_url, ensure_server, server_env

T = TypeVar("T")

# Prefect's background services (log and event shipping) log under their class names; at exit, while
# they drain, they warn "Still processing items: N items remaining..." on stderr. A command's
# stderr is its own messages: only their errors are let through.
PREFECT_SERVICE_LOGGERS = ("APILogWorker", "EventsWorker")


def connect() -> str:
    """Point this process at the configured Prefect API, or at the embedded server."""
    import logging

    for name in PREFECT_SERVICE_LOGGERS:
        logging.getLogger(name).setLevel(logging.ERROR)
    url = configured_api_url()
    if url:
        return url
    home = launch_home()
    os.environ.update(server_env(home))
    url = ensure_server(home)
    os.environ["PREFECT_API_URL"] = url
    if "prefect.context" in sys.modules:
        # Imported already (validating input may import it): without this, Prefect would keep the
        # settings it read then and start a throwaway server of its own for this process.
        from prefect.context import refresh_global_settings_context

        refresh_global_settings_context()
    return url


def run(coro_fn: Callable[..., Any], *args: Any) -> Any:
    import anyio

    return anyio.run(coro_fn, *args)


def echo_json(data: Any) -> None:
    typer.echo(json.dumps(data, indent=2, sort_keys=False, default=str))


def clear_errors(fn: Callable[..., T]) -> Callable[..., T]:
    """Known bad input exits 1 with one line on stderr, not a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> T:
        from pydantic import ValidationError

        from prefect_launch.errors import LaunchError, field_path, missing_extra

        try:
            return fn(*args, **kwargs)
        except LaunchError as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(1) from None
        except ModuleNotFoundError as exc:
            missing = missing_extra(exc)
            if missing is None:
                raise
            typer.echo(f"error: {missing}", err=True)
            raise typer.Exit(1) from None
        except ValidationError as exc:
            for error in exc.errors():
                message = error["msg"].removeprefix("Value error, ")
                typer.echo(f"error: {field_path(error['loc'])}: {message}", err=True)
            raise typer.Exit(1) from None
        except httpx.HTTPStatusError as exc:
            if exc.response.status_code not in (401, 403):
                raise
            typer.echo(f"error: {refused_login(exc.response.status_code)}", err=True)
            raise typer.Exit(1) from None
        except Exception as exc:
            if isinstance(exc, (typer.Exit, typer.Abort)):  # click's are RuntimeErrors
                raise
            # The server is down or the URL wrong: Prefect raises httpx's errors as they are, or wrapped.
            transport = transport_error(exc)
            if transport is not None:
                typer.echo(f"error: {unreachable(transport)}", err=True)
            elif isinstance(exc, RuntimeError) and "Prefect server" in str(exc):
                typer.echo(f"error: {exc}", err=True)
            else:
                raise
            raise typer.Exit(1) from None

    return wrapper


def transport_error(exc: BaseException) -> httpx.TransportError | None:
    """The httpx connection failure behind `exc` (itself, its cause, or inside an exception group), if any."""
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        current = todo.pop()
        if current is None or id(current) in seen:
            continue
        seen.add(id(current))
        if isinstance(current, httpx.TransportError):
            return current
        if isinstance(current, BaseExceptionGroup):
            todo.extend(current.exceptions)
        todo.append(current.__cause__)
        if not current.__suppress_context__:
            todo.append(current.__context__)
    return None


def api_url() -> str:
    """The Prefect API URL this process uses (what Prefect read from PREFECT_API_URL or its profile)."""
    if "prefect.settings" in sys.modules:
        from prefect.settings import PREFECT_API_URL

        url = PREFECT_API_URL.value()
        if url:
            return str(url)
    return configured_api_url() or "the embedded server"


def unreachable(exc: httpx.TransportError) -> str:
    """One line: which server could not be reached, where we looked, and why."""
    url = api_url()
    try:
        target = str(exc.request.url)
    except RuntimeError:  # an error raised without a request
        target = url
    reason = " ".join(str(exc).split()) or type(exc).__name__
    connecting = isinstance(exc, (httpx.ConnectError, httpx.ConnectTimeout))
    if target.startswith(url.rstrip("/")) or target == url:
        if not connecting:
            return f"the Prefect server at {url} stopped answering ({type(exc).__name__}: {reason}); try again"
        return (f"the Prefect server at {url} is unreachable ({type(exc).__name__}: {reason}); "
                "start it, or point PREFECT_API_URL at one that runs")
    return f"could not {'reach' if connecting else 'talk to'} {target} ({type(exc).__name__}: {reason})"


def refused_login(status: int) -> str:
    """Why the Prefect server refused us, without ever echoing the auth string."""
    from prefect.settings import PREFECT_API_AUTH_STRING, PREFECT_API_URL

    url = PREFECT_API_URL.value() or "the configured Prefect API"
    if PREFECT_API_AUTH_STRING.value():
        hint = "PREFECT_API_AUTH_STRING does not match the server's PREFECT_SERVER_API_AUTH_STRING"
    else:
        hint = ("the server requires a login: set PREFECT_API_AUTH_STRING to its PREFECT_SERVER_API_AUTH_STRING "
                "(user:password)")
    return f"the Prefect server at {url} refused the request (HTTP {status}): {hint}"


def parse_resource(name: str):
    from prefect_launch.errors import LaunchError
    from prefect_launch.spec import Resource

    try:
        return Resource.parse(name)
    except ValueError as exc:
        raise LaunchError(str(exc)) from None


def stderr(message: str) -> None:
    print(message, file=sys.stderr)


def store_code(folder, storage: str | None):
    """Pack and store a code folder (a spinner meanwhile), then say what was packed and what its ignore files
    left out; the stored source."""
    from prefect_launch.cli.follow import working
    from prefect_launch.sources import code

    reports: list[str] = []
    with working(f"Packing and storing code folder {folder}"):
        source = code.upload(folder, code.code_storage(storage, launch_home()), lambda packed, gzipped: reports.append(
            f"Code folder {folder}: {packed.summary(gzipped)}"))
    for report in reports:
        stderr(report)
    return source
