"""The embedded default: a local Prefect server on SQLite under the project-local home.

`PREFECT_API_DATABASE_CONNECTION_URL` (or `PREFECT_SERVER_DATABASE_CONNECTION_URL`)
in the environment puts it on PostgreSQL instead (README, "Running the server
on PostgreSQL"; `drills/load.py` does so).

With no Prefect API configured (no `PREFECT_API_URL` in the environment or in
the active Prefect profile), prefect-launch starts `prefect server start` on
127.0.0.1 with `PREFECT_HOME=<launch home>/prefect`, records it in
`<launch home>/server.json`, and points itself at it. Later commands reuse it.

This module must not import prefect: it decides the settings prefect reads.

Example::

    url = ensure_server(launch_home())   # starts one if none answers
    stop_server(launch_home())
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.request
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Iterator

from prefect_launch.settings import settings

DEFAULT_PORT = 4200


def configured_api_url() -> str | None:
    """The API URL the user configured for Prefect, if any (env, then active profile)."""
    if os.environ.get("PREFECT_API_URL"):
        return os.environ["PREFECT_API_URL"]
    prefect_home = Path(os.environ.get("PREFECT_HOME", "~/.prefect")).expanduser()
    profiles_path = Path(os.environ.get("PREFECT_PROFILES_PATH", prefect_home / "profiles.toml")).expanduser()
    try:
        profiles = tomllib.loads(profiles_path.read_text())
    except (OSError, tomllib.TOMLDecodeError):
        return None
    active = os.environ.get("PREFECT_PROFILE") or profiles.get("active", "ephemeral")
    return profiles.get("profiles", {}).get(active, {}).get("PREFECT_API_URL")


def serves(url: str, home: Path, timeout: float = 2.0) -> bool:
    """Whether the server answering at `url` is this home's (its PREFECT_HOME), not another one on that port.

    Checking that a port is free and the server binding it race: another home's server may take
    the port in between, and then answer every health check of ours.
    """
    try:
        return _home_answering(url, timeout) == server_env(home)["PREFECT_HOME"]
    except (OSError, ValueError):
        return False


def _home_answering(url: str, timeout: float) -> str | None:
    """The PREFECT_HOME of the server at `url`; raises OSError if it does not answer in time."""
    request = urllib.request.Request(f"{url}/admin/settings")
    login = os.environ.get("PREFECT_SERVER_API_AUTH_STRING")  # a server this process starts gets the same
    if login:
        request.add_header("Authorization", "Basic " + base64.b64encode(login.encode()).decode())
    with urllib.request.urlopen(request, timeout=timeout) as response:
        return json.loads(response.read()).get("home")


def healthy(url: str, timeout: float = 2.0) -> bool:
    try:
        with urllib.request.urlopen(f"{url}/health", timeout=timeout) as response:
            return response.status == 200
    except OSError:
        return False


def _state_file(home: Path) -> Path:
    return home / "server.json"


def read_state(home: Path) -> dict | None:
    try:
        return json.loads(_state_file(home).read_text())
    except (OSError, ValueError):
        return None


def free_port(preferred: int = 0) -> int:
    """`preferred` if it is free on 127.0.0.1, else any free port."""
    for port in (preferred, 0):
        with socket.socket() as sock:
            # As the server binds (uvicorn sets it): a restart on its own port must not wait out TIME_WAIT.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
            return sock.getsockname()[1]
    raise RuntimeError("no free port on 127.0.0.1")


@contextmanager
def _lock(home: Path) -> Iterator[None]:
    home.mkdir(parents=True, exist_ok=True)
    with open(home / "server.lock", "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        yield


def server_env(home: Path) -> dict[str, str]:
    """Settings every process of the embedded setup shares."""
    return {"PREFECT_HOME": str(home / "prefect")}


def start_server(home: Path, port: int = DEFAULT_PORT) -> str:
    """Start a detached Prefect server for this home and wait until it answers.

    If another server takes the port first (see `serves`), it starts again on any free port.
    """
    for attempt in range(3):
        url = _start_on(home, free_port(port if attempt == 0 else 0))
        if url:
            return url
    raise RuntimeError(f"other servers took every port this one tried; see {home / 'server.log'}")


def _answers_as(url: str, home: Path, proc: subprocess.Popen, deadline: float) -> bool:
    """Whether the server answering at `url` is the one `proc` started for `home`.

    A slow answer is not a no: on a loaded machine a server just up may take seconds to answer,
    and taking that for another server's port once killed it and moved it to a random port.
    """
    while True:
        try:
            return _home_answering(url, timeout=2.0) == server_env(home)["PREFECT_HOME"]
        except (OSError, ValueError):
            if proc.poll() is not None or time.monotonic() > deadline:
                return False
            time.sleep(0.25)


def _start_on(home: Path, port: int) -> str | None:
    """The server's URL once it answers as this home's; None if another server holds the port."""
    url = f"http://127.0.0.1:{port}/api"
    (home / "prefect").mkdir(parents=True, exist_ok=True)
    # The server must not talk to another API (PREFECT_API_URL, its login), but
    # PREFECT_API_DATABASE_* are the server's own database settings (Prefect's
    # older names for PREFECT_SERVER_DATABASE_*): dropping them would silently
    # start on SQLite when a team asked for PostgreSQL.
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith("PREFECT_API_") or k.startswith("PREFECT_API_DATABASE_")
    }
    env.update(server_env(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", PREFECT_UI_API_URL=url)
    # SQLite takes one writer at a time. Every launch job's task runs reach the
    # database through the task run recorder, one transaction per state by
    # default; batching them (and events) keeps enqueueing fast while jobs run.
    for service, batch in (("TASK_RUN_RECORDER", 100), ("EVENT_PERSISTER", 200)):
        env.setdefault(f"PREFECT_SERVER_SERVICES_{service}_BATCH_SIZE", str(batch))
        env.setdefault(f"PREFECT_SERVER_SERVICES_{service}_READ_BATCH_SIZE", str(batch))
        env.setdefault(f"PREFECT_SERVER_SERVICES_{service}_FLUSH_INTERVAL", "1")
    # A run waiting on a launch queue for a free slot is queued, not late. The
    # late-runs service would move every run of a backlog to Late after 15 s,
    # one orchestrated state change each: measured on a 200-job backlog, it
    # tripled the server's CPU per job (1.17 s -> 0.40 s without it) and
    # halved the agent's throughput (54 -> 97 jobs/min). Set it to true to get Late back.
    env.setdefault("PREFECT_SERVER_SERVICES_LATE_RUNS_ENABLED", "false")
    log = open(home / "server.log", "ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "prefect", "server", "start", "--host", "127.0.0.1", "--port", str(port)],
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    start_timeout = settings().server_start_timeout
    deadline = time.monotonic() + start_timeout
    while not healthy(url):
        if proc.poll() is not None:
            raise RuntimeError(f"Prefect server exited with code {proc.returncode}; see {home / 'server.log'}")
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"Prefect server did not answer within {start_timeout:.0f} s; see {home / 'server.log'}")
        time.sleep(0.25)
    if not _answers_as(url, home, proc, deadline):
        proc.kill()
        proc.wait()
        return None
    _state_file(home).write_text(json.dumps({"url": url, "pid": proc.pid}))
    return url


def ensure_server(home: Path) -> str:
    """The embedded server's URL, starting it if it is not running."""
    with _lock(home):
        state = read_state(home)
        if state and serves(state["url"], home):
            return state["url"]
        return start_server(home)


def stop_server(home: Path) -> bool:
    """Stop the embedded server of this home; False if none was running."""
    with _lock(home):
        state = read_state(home)
        _state_file(home).unlink(missing_ok=True)
    if not state:
        return False
    try:
        os.killpg(state["pid"], signal.SIGTERM)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        # Started by this same process (tests, drills, benches), the server is our
        # child: once it exits it stays a zombie, which still "exists" for killpg,
        # until it is reaped here. Anyone else's child is reaped by its parent.
        with suppress(ChildProcessError):
            os.waitpid(state["pid"], os.WNOHANG)
        try:
            os.killpg(state["pid"], 0)
        except ProcessLookupError:
            return True
        time.sleep(0.2)
    os.killpg(state["pid"], signal.SIGKILL)
    return True
