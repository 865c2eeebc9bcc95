"""Agents on hosts of their own, on this machine: separate PID, UTS, mount and network namespaces.

A `Host` runs `prefect-launch agent` inside `unshare --pid --fork --kill-child --mount-proc --uts
--net` (root only), under a hostname of its own. Its processes see only their own pids (its
/proc is the namespace's) and no other host sees theirs, so an agent on another host can tell
whether it is alive only by its heartbeat, as across real machines. Its network has nothing but
its own loopback: each TCP port it needs on 127.0.0.1 (the Prefect API, the Kubernetes stand-in)
is relayed through a unix socket (a file: namespaces share the filesystem) to the same port of
this machine's 127.0.0.1, so nothing listens anywhere but 127.0.0.1. `kill()` is a lost node:
SIGKILL to its `unshare`, which kills the namespace's first process, and the kernel every other.

Example::

    host = Host("node-a", ports=[4200], folder=tmp, agent_args=["-q", "gpu"]).start().wait_ready()
    host.kill()

Run as a script (by `Host` only), it is the namespace's first process: it brings the loopback
up, takes its hostname, starts the relays and runs the agent to its end.
"""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path

from agent_process import CLI, REPO, LoggedAgent

CHUNK = 65536


def _pump(source: socket.socket, sink: socket.socket) -> None:
    """Copy bytes one way until the source ends, then end that direction of the sink."""
    try:
        while data := source.recv(CHUNK):
            sink.sendall(data)
    except OSError:
        pass
    finally:
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass


def _splice(accepted: socket.socket, connect: tuple[int, object]) -> None:
    family, address = connect
    try:
        upstream = socket.socket(family, socket.SOCK_STREAM)
        upstream.connect(address)
    except OSError:
        accepted.close()
        return
    back = threading.Thread(target=_pump, args=(upstream, accepted), daemon=True)
    back.start()
    _pump(accepted, upstream)
    back.join()
    accepted.close()
    upstream.close()


class _Relay:
    """Accepts on `listener` and splices each connection to `connect` (family, address), a thread each."""

    def __init__(self, listener: socket.socket, connect: tuple[int, object]) -> None:
        self.listener = listener
        self.connect = connect
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                accepted, _ = self.listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=_splice, args=(accepted, self.connect), daemon=True).start()

    def close(self) -> None:
        try:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the blocked accept
        except OSError:
            pass
        self.listener.close()


def unix_to_tcp(path: Path, port: int) -> _Relay:
    """Outside the namespaces: a unix socket at `path` whose connections go to 127.0.0.1:`port`."""
    path.unlink(missing_ok=True)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(64)
    return _Relay(listener, (socket.AF_INET, ("127.0.0.1", port)))


def tcp_to_unix(port: int, path: Path) -> _Relay:
    """Inside a namespace: 127.0.0.1:`port`, whose connections go to the unix socket at `path`."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", port))
    listener.listen(64)
    return _Relay(listener, (socket.AF_UNIX, str(path)))


class Host(LoggedAgent):
    """An agent on a host of its own (see the module's docstring)."""

    def __init__(self, name: str, ports: list[int], folder: Path, agent_args: list[str],
                 env: dict[str, str] | None = None) -> None:
        self.name = name
        self.ports = ports
        self.folder = folder
        self.agent_args = agent_args
        self.env = {**os.environ, **(env or {})}
        self.log = folder / f"{name}.log"
        self._relays: list[_Relay] = []
        self.proc: subprocess.Popen[bytes] | None = None

    def _socket(self, port: int) -> Path:
        return self.folder / f"{self.name}-{port}.sock"

    def start(self) -> Host:
        self.folder.mkdir(parents=True, exist_ok=True)
        self._relays = [unix_to_tcp(self._socket(port), port) for port in self.ports]
        relays = [f"{port}={self._socket(port)}" for port in self.ports]
        argv = ["unshare", "--pid", "--fork", "--kill-child", "--mount-proc", "--uts", "--net", "--",
                sys.executable, __file__, "--inside", self.name, *[f"--relay={relay}" for relay in relays],
                "--", CLI, "agent", *self.agent_args]
        with self.log.open("wb") as out:
            self.proc = subprocess.Popen(argv, env=self.env, cwd=REPO, stdin=subprocess.DEVNULL, stdout=out,
                                         stderr=subprocess.STDOUT)
        return self

    @property
    def what(self) -> str:
        return f"the agent on host {self.name}"

    def kill(self) -> None:
        """The node is lost: everything in its namespaces dies at once."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for relay in self._relays:
            relay.close()
        self._relays = []


def _inside(hostname: str, relays: list[str], argv: list[str]) -> int:
    subprocess.run(["ip", "link", "set", "lo", "up"], check=True)
    socket.sethostname(hostname)
    for relay in relays:
        port, path = relay.split("=", 1)
        tcp_to_unix(int(port), Path(path))
    return subprocess.run(argv).returncode


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="the first process of a Host's namespaces (see hosts.py)")
    parser.add_argument("--inside", required=True, help="the host's name")
    parser.add_argument("--relay", action="append", default=[], help="PORT=UNIX_SOCKET")
    parser.add_argument("argv", nargs=argparse.REMAINDER)
    arguments = parser.parse_args()
    sys.exit(_inside(arguments.inside, arguments.relay, arguments.argv[1:] if arguments.argv[:1] == ["--"] else arguments.argv))
