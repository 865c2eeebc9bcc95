"""A drill's own Prefect server on its own PostgreSQL cluster, which it may stop and start again.

What the load and chaos drills share, all on 127.0.0.1 and stopped by the drill:

1. A throwaway PostgreSQL cluster from Debian's binaries (`/usr/lib/postgresql/*/bin`):
   `initdb` in a temporary folder owned by the `postgres` user (PostgreSQL refuses to run as
   root), listening on a free port of 127.0.0.1 (its unix socket in that folder), password login.
2. A real Prefect server (prefect-launch's embedded one, `server.py`) with
   `PREFECT_API_DATABASE_CONNECTION_URL=postgresql+asyncpg://...`; the schema is migrated first
   with `prefect server database upgrade`. `stable_port()` gives it a port below the kernel's
   ephemeral range, so it can come back on the same port after a restart (any client socket may
   take a port from the ephemeral range while the server is down).
3. The environment the drill's CLI and agents get: only its server, only its home.

`start_drill_server` does all three in a work folder of its own; `sqlite_server` is the smaller
setup of the restart and cross-host drills: the embedded server on SQLite in a temporary home.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import random
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator
from urllib.parse import urlsplit

from agent_process import CLI, REPO

POSTGRES_ROOT = Path("/usr/lib/postgresql")
POSTGRES_OWNER = "postgres"
DATABASE = "prefect"
MIGRATE_SECONDS = 600.0


class DrillError(RuntimeError):
    """The drill could not run (as opposed to: it ran and a check failed)."""


def progress(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


def stable_port() -> int:
    """A free port below the kernel's ephemeral range, as the embedded server's default (4200) is."""
    from prefect_launch.server import free_port

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 10_000), low), 100):
        if free_port(port) == port:
            return port
    raise DrillError(f"no free port below the ephemeral range ({low})")


def postgres_bin_dir() -> Path:
    """The newest Debian PostgreSQL server's bin folder; DrillError if none is installed."""
    found = sorted(POSTGRES_ROOT.glob("*/bin/initdb"),
                   key=lambda path: [int(part) for part in re.findall(r"\d+", path.parent.parent.name)])
    if not found:
        raise DrillError(
            f"PostgreSQL is not installed (no {POSTGRES_ROOT}/*/bin/initdb): "
            "install Debian's server with `apt-get install postgresql`"
        )
    return found[-1].parent


class PostgresCluster:
    """A throwaway PostgreSQL cluster in `root`: 127.0.0.1 only, one database, a random password.

    As root, the cluster runs as the `postgres` user (PostgreSQL refuses root)
    and `root` is handed to it; otherwise as the current user. The unix socket
    lives in `root` (mode 700) and trusts its users; TCP needs the password.

    Example::

        cluster = PostgresCluster(postgres_bin_dir(), Path(tempfile.mkdtemp()), port=free_port())
        cluster.start()
        print(cluster.url)    # postgresql+asyncpg://prefect:...@127.0.0.1:PORT/prefect
        cluster.stop()
    """

    def __init__(self, bin_dir: Path, root: Path, port: int) -> None:
        self.bin_dir = bin_dir
        self.root = root
        self.port = port
        self.data = root / "data"
        self.log = root / "postgres.log"
        self.password = secrets.token_hex(16)
        self.started = False
        if os.geteuid() == 0:
            try:
                owner = pwd.getpwnam(POSTGRES_OWNER)
            except KeyError:
                raise DrillError(
                    f"running as root needs the {POSTGRES_OWNER!r} user to run PostgreSQL as: "
                    "`apt-get install postgresql` creates it"
                ) from None
            self.uid, self.gid, self.home = owner.pw_uid, owner.pw_gid, owner.pw_dir
        else:
            self.uid, self.gid, self.home = os.getuid(), os.getgid(), str(Path.home())

    @property
    def url(self) -> str:
        return f"postgresql+asyncpg://{DATABASE}:{self.password}@127.0.0.1:{self.port}/{DATABASE}"

    def version(self) -> str:
        return self._run(["postgres", "--version"]).stdout.strip().replace("postgres (PostgreSQL)", "PostgreSQL")

    def _run(self, argv: list[str], timeout: float = 120) -> subprocess.CompletedProcess[str]:
        """Run one of the cluster's binaries as the cluster's owner."""
        as_owner: dict[str, Any] = {}
        if os.geteuid() == 0:
            as_owner = {"user": self.uid, "group": self.gid, "extra_groups": []}
        env = {"PATH": f"{self.bin_dir}:/usr/bin:/bin", "HOME": self.home, "LC_ALL": "C", "LANG": "C"}
        result = subprocess.run(
            [str(self.bin_dir / argv[0]), *argv[1:]], capture_output=True, text=True, timeout=timeout,
            env=env, cwd=self.root, stdin=subprocess.DEVNULL,
            # pg_ctl leaves the server running: in a session of its own, a Ctrl-C
            # in the terminal reaches only the drill, which then stops it in order.
            start_new_session=True, **as_owner,
        )
        if result.returncode != 0:
            raise DrillError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip() or result.stdout.strip()}")
        return result

    def start(self) -> None:
        os.chown(self.root, self.uid, self.gid)
        self.root.chmod(0o700)
        password_file = self.root / "password"
        password_file.write_text(self.password + "\n")
        os.chown(password_file, self.uid, self.gid)
        try:
            self._run(["initdb", "-D", str(self.data), "-U", DATABASE, f"--pwfile={password_file}",
                       "--auth-local=trust", "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C"])
        finally:
            password_file.unlink(missing_ok=True)
        options = f"-c listen_addresses=127.0.0.1 -p {self.port} -k {self.root}"
        self._run(["pg_ctl", "-D", str(self.data), "-l", str(self.log), "-o", options, "-w", "-t", "60", "start"])
        self.started = True
        self._run(["createdb", "-h", str(self.root), "-p", str(self.port), "-U", DATABASE, DATABASE])

    def query(self, sql: str) -> str:
        """One value from the drill's database, through psql on the unix socket."""
        return self._run(["psql", "-h", str(self.root), "-p", str(self.port), "-U", DATABASE, "-d", DATABASE,
                          "-tAc", sql]).stdout.strip()

    def stop(self) -> None:
        """Fast shutdown (open sessions are ended); SIGKILL the postmaster by its pid if that fails."""
        if not self.started:
            return
        self.started = False
        try:
            self._run(["pg_ctl", "-D", str(self.data), "-m", "fast", "-w", "-t", "30", "stop"], timeout=60)
        except (DrillError, subprocess.TimeoutExpired) as exc:
            pid_file = self.data / "postmaster.pid"
            if pid_file.exists():
                progress(f"pg_ctl stop failed ({exc}); killing the postmaster")
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text().splitlines()[0]), signal.SIGKILL)


# --- processes --------------------------------------------------------------------


@contextlib.contextmanager
def environ(**values: str) -> Iterator[None]:
    """Set environment variables for the block, then restore them."""
    saved = {name: os.environ.get(name) for name in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def child_env(home: Path, api_url: str) -> dict[str, str]:
    """The environment of the drill's CLI and agents: only its server, only its home."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PREFECT_", "WANDB_"))}
    env.update(
        PREFECT_API_URL=api_url,
        PREFECT_HOME=str(home / "prefect"),
        PREFECT_LAUNCH_HOME=str(home),
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
    )
    return env


def server_settings(home: Path, database_url: str) -> dict[str, str]:
    """What the server process gets: its home, and PostgreSQL for its database."""
    return {"PREFECT_HOME": str(home / "prefect"), "PREFECT_API_DATABASE_CONNECTION_URL": database_url}


def migrate(home: Path, database_url: str) -> None:
    """Create Prefect's schema before the server starts, so its start-up timeout covers only starting."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("PREFECT_")}
    env.update(server_settings(home, database_url))
    result = subprocess.run([str(Path(sys.executable).with_name("prefect")), "server", "database", "upgrade", "-y"],
                            capture_output=True, text=True, env=env, timeout=MIGRATE_SECONDS)
    if result.returncode != 0:
        raise DrillError(f"prefect server database upgrade failed:\n{result.stdout[-2000:]}{result.stderr[-2000:]}")


def start_server_on(home: Path, database_url: str, port: int = 0) -> str:
    """The embedded server of `home` on PostgreSQL (on `port`, 0 for any); Ctrl-C is held until it is recorded
    (and so stoppable)."""
    from prefect_launch.server import start_server

    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
    try:
        with environ(**server_settings(home, database_url)):
            return start_server(home, port=port)
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def cli(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, timeout=120, cwd=REPO)
    if result.returncode != 0:
        raise DrillError(f"prefect-launch {' '.join(args)} failed ({result.returncode}):\n{result.stderr}")
    return result.stdout


@dataclass
class DrillServer:
    """A drill's work folder, the Prefect home in it, and its server on PostgreSQL."""

    workdir: Path
    home: Path
    cluster: PostgresCluster
    api_url: str
    port: int  # the one it took: a restart brings it back there


def start_drill_server(cleanup: contextlib.ExitStack, prefix: str, keep: bool, port: int = 0) -> DrillServer:
    """A work folder, PostgreSQL and a Prefect server on it (on `port`, 0 for any), each undone by `cleanup`;
    the folders are kept with `keep`. DrillError when PostgreSQL is missing."""
    from prefect_launch.server import free_port, stop_server

    bin_dir = postgres_bin_dir()
    workdir = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    pg_root = Path(tempfile.mkdtemp(prefix=f"{prefix}-pg-"))
    if keep:
        cleanup.callback(progress, f"kept {workdir} (server, agents, jobs) and {pg_root} (PostgreSQL)")
    else:
        cleanup.callback(shutil.rmtree, pg_root, ignore_errors=True)
        cleanup.callback(shutil.rmtree, workdir, ignore_errors=True)
    home = workdir / "home"
    home.mkdir()
    cluster = PostgresCluster(bin_dir, pg_root, port=free_port())
    cleanup.callback(cluster.stop)
    progress(f"starting PostgreSQL in {pg_root} on 127.0.0.1:{cluster.port}")
    cluster.start()
    progress(f"{cluster.version()} up; migrating Prefect's schema")
    migrate(home, cluster.url)
    cleanup.callback(stop_server, home)
    api_url = start_server_on(home, cluster.url, port)
    progress(f"Prefect server at {api_url} (log {home / 'server.log'})")
    return DrillServer(workdir, home, cluster, api_url, urlsplit(api_url).port)


@contextlib.contextmanager
def sqlite_server(prefix: str, keep: bool) -> Iterator[Path]:
    """A temporary home with the embedded Prefect server on SQLite, this process's settings pointed at both;
    the server is stopped and the home removed (unless `keep`) at the end."""
    home = Path(tempfile.mkdtemp(prefix=f"{prefix}-"))
    os.environ.update(PREFECT_LAUNCH_HOME=str(home), PREFECT_SERVER_ANALYTICS_ENABLED="false", WANDB_MODE="offline")
    os.environ.pop("PREFECT_API_URL", None)
    from prefect_launch.server import server_env, start_server, stop_server

    os.environ.update(server_env(home))
    progress(f"starting a Prefect server in {home}")
    os.environ["PREFECT_API_URL"] = start_server(home, port=0)
    try:
        yield home
    finally:
        stop_server(home)
        if not keep:
            shutil.rmtree(home, ignore_errors=True)


def _interrupt(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt


def run_and_report(run: Callable[[], Any], note: str = "") -> int:
    """A drill's `main`: `run()` (a result with `table()` and `failures()`) with SIGTERM cleaning up as Ctrl-C
    does; prints the date, the machine's load and the wall time (and `note`), then the table. Exit code 0 when
    every check passed, 1 when one failed, 2 when the drill could not run, 130 when interrupted."""
    signal.signal(signal.SIGTERM, _interrupt)
    load_before = os.getloadavg()[0]
    began = time.monotonic()
    try:
        result = run()
    except DrillError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        progress("interrupted; everything the drill started is stopped")
        return 130
    print(f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores, load average {load_before:.1f} before / "
          f"{os.getloadavg()[0]:.1f} after, {time.monotonic() - began:.0f} s in all{note}")
    print(result.table())
    return 1 if result.failures() else 0


def table_row(label_width: int, value_width: int, limit_width: int) -> Callable[..., str]:
    """A drill table's row maker: label, measured value, limit, and ok/FAILED when `ok` is given.

    >>> table_row(10, 4, 3)("jobs", 5, 6, ok=True)
    '  jobs          5   6  ok'
    """
    def row(label: str, value: object, limit: object = "", ok: bool | None = None) -> str:
        verdict = "" if ok is None else ("ok" if ok else "FAILED")
        return f"  {label:{label_width}} {str(value):>{value_width}} {str(limit):>{limit_width}}  {verdict}"

    return row


def over_max_jobs(peaks: dict[Any, int], max_jobs: int) -> list[str]:
    """The failure to report when an agent ran more than `max_jobs` at once (`peaks`: agent -> most at once)."""
    over = {agent: peak for agent, peak in peaks.items() if peak > max_jobs}
    return [f"agents ran more than max_jobs {max_jobs} at once: {over}"] if over else []
