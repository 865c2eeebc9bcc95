"""Hostile config files and an absent server: one clear line and exit code 1, never a traceback or a hang.

Every command that reads a config file reads it through `prefect_launch.config_files`: a
recursive alias, a duplicate key, bytes that are not UTF-8, a file over 1 MB, a FIFO and
`/dev/zero` are each refused in one line naming the file (and line:column where there is one).
A command whose server is down says so in one line naming the PREFECT_API_URL it used; an
agent started before its server waits for it, logging each attempt, and then serves.
"""

from __future__ import annotations

import os
import random
import resource
import socket
import threading
import time
from contextlib import contextmanager
from pathlib import Path

import pytest

from agent_process import AgentProcess
from conftest import JOBS, cli, seed_database, unique
from prefect_launch.config_files import MAX_FILE_BYTES
from prefect_launch.server import free_port, start_server, stop_server

# What each attack writes, and what the one error line must say besides the file's name.
ATTACKS = {
    "recursive-alias": ("env: &a [*a]\n", ":1:10: alias *a is inside the node &a"),
    "duplicate-key": ("a: 1\nb:\n  c: 1\n  c: 2\n", ":4:3: duplicate key 'c' (first given at line 3)"),
    "not-utf8": (b"a: 1\nb: caf\xe9\n", ":2:7: not UTF-8 text: byte 0xe9 at offset 11"),
    "too-large": ("k: " + "v" * MAX_FILE_BYTES + "\n", f"a config file may hold at most {MAX_FILE_BYTES:,}"),
    "fifo": (None, "a FIFO (named pipe), not a regular file"),
    "dev-zero": (None, "a character device, not a regular file"),
}

# Each command that reads a user's config file, FILE where the file goes.
COMMANDS = {
    "queue-create-config": ("queue", "create", "QUEUE", "--resource", "local-process", "--config", "FILE"),
    "queue-create-templates": ("queue", "create", "QUEUE", "--resource", "local-process", "--templates", "FILE"),
    "launch-config": ("launch", "--dry-run", "-r", "local-process", "-u", str(JOBS), "-E", "python report.py",
                      "-c", "FILE"),
    "launch-resource-args-file": ("launch", "--dry-run", "-r", "local-process", "-u", str(JOBS), "-E",
                                  "python report.py", "-R", "@FILE"),
    "agent-check": ("agent", "--config", "FILE", "--check"),
    "sweep-create": ("sweep", "create", "FILE", "-q", "QUEUE"),
}


def _attack_file(attack: str, folder: Path) -> Path:
    content, _ = ATTACKS[attack]
    if attack == "dev-zero":
        return Path("/dev/zero")
    path = folder / f"{attack}.yaml"
    if attack == "fifo":
        os.mkfifo(path)
    elif isinstance(content, bytes):
        path.write_bytes(content)
    else:
        path.write_text(content)
    return path


@contextmanager
def _memory_capped(extra: int = 512 * 2**20):
    """This process may grow by `extra` bytes at most: a reader that regresses to reading /dev/zero
    to the end fails with MemoryError instead of taking the machine's memory."""
    soft, hard = resource.getrlimit(resource.RLIMIT_DATA)
    used = next(int(line.split()[1]) * 1024 for line in Path("/proc/self/status").read_text().splitlines()
                if line.startswith("VmData:"))
    resource.setrlimit(resource.RLIMIT_DATA, (used + extra, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_DATA, (soft, hard))


@contextmanager
def _unblocked_after(fifo: Path, seconds: float):
    """Should a reader block on `fifo`, open its other end after `seconds` so that it ends (and the test fails)."""
    done = threading.Event()

    def release() -> None:
        if not done.wait(seconds):
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:  # no reader: nothing blocks
                pass

    thread = threading.Thread(target=release, daemon=True)
    thread.start()
    try:
        yield
    finally:
        done.set()
        thread.join()


@pytest.mark.parametrize("command", COMMANDS)
@pytest.mark.parametrize("attack", ATTACKS)
def test_a_hostile_config_file_is_refused_in_one_line(attack, command, tmp_path):
    path = _attack_file(attack, tmp_path)
    args = [str(path) if a == "FILE" else f"@{path}" if a == "@FILE" else a for a in COMMANDS[command]]
    args = [unique("hostile") if a == "QUEUE" else a for a in args]
    start = time.monotonic()
    if attack == "dev-zero":
        with _memory_capped():
            result = cli(*args, check=False)
    elif attack == "fifo":
        with _unblocked_after(path, 20):
            result = cli(*args, check=False)
    else:
        result = cli(*args, check=False)
    assert time.monotonic() - start < 20, "the command waited on the file"
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, output
    assert str(path) in lines[0] and ATTACKS[attack][1] in lines[0], lines[0]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("args", [
    ("queue", "list"),
    ("launch", "--dry-run", "-q", "somewhere", "-u", str(JOBS), "-E", "python report.py"),
], ids=["queue-list", "launch-dry-run"])
def test_a_command_without_its_server_says_where_it_looked(args):
    url = f"http://127.0.0.1:{_free_port()}/api"
    result = cli(*args, check=False, env={"PREFECT_API_URL": url})
    output = result.stdout + result.stderr
    assert result.returncode == 1, output
    assert "Traceback" not in output, output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and f"the Prefect server at {url} is unreachable" in lines[0], output


def _port_below_the_ephemeral_range() -> int:
    """A free port that no client socket or bind(0) takes while its server is down (as tests/test_recovery.py)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    for port in random.sample(range(max(1024, low - 10_000), low), 100):
        if free_port(port) == port:
            return port
    raise AssertionError(f"no free port below the ephemeral range ({low})")


def _wait_until(condition, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.2)


def test_an_agent_started_before_its_server_waits_then_serves(tmp_path):
    server_home = tmp_path / "server"
    url = start_server(seed_database(server_home), port=_port_below_the_ephemeral_range())
    env = {"PREFECT_API_URL": url}
    queue = unique("late-server")
    code = tmp_path / "code"
    code.mkdir()
    (code / "job.py").write_text("print('served', flush=True)\n")
    agent = None
    try:
        cli("queue", "create", queue, "--resource", "local-process", "--no-require-wandb-run", env=env)
        stop_server(server_home)  # the queue is in its database; the server is down when the agent starts

        agent = AgentProcess(["-q", queue], tmp_path / "agent.log", env={**os.environ, **env})
        retrying = f"server {url} unreachable"
        _wait_until(lambda: agent.output().count(retrying) >= 2 or not agent.alive(), 90,
                    f"the agent logged no retries:\n{agent.output()}")
        assert agent.alive(), agent.output()
        lines = [line for line in agent.output().splitlines() if retrying in line]
        assert "retrying in 1 s" in lines[0] and "retrying in 2 s" in lines[1], lines
        assert "Traceback" not in agent.output()

        assert start_server(server_home, port=int(url.rsplit(":", 1)[1].split("/")[0])) == url
        agent.wait_ready(timeout=120)
        result = cli("launch", "-q", queue, "-u", str(code), "-E", "python job.py", "--wait", env=env, timeout=180)
        assert "served" in result.stdout and "Completed" in result.stdout, result.stdout
        assert f"server {url} reachable" in agent.output()
    finally:
        if agent is not None:
            agent.stop()
        stop_server(server_home)
