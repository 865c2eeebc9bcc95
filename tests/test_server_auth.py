"""A Prefect server with basic auth (`PREFECT_SERVER_API_AUTH_STRING`): the CLI and the agent log in, nothing else gets in.

A second, real Prefect server (SQLite, its own home) is started with an auth
string. With `PREFECT_API_AUTH_STRING` the CLI creates a queue, an agent
serves it and a job completes; without it, or with a wrong one, every call is
refused and the CLI says why in one line, never echoing the string.
"""

from __future__ import annotations

import urllib.error
import urllib.request

import pytest

from conftest import cli, launch, seed_database, unique
from prefect_launch.server import start_server, stop_server

AUTH = "launch-admin:pa55-7c1d"


@pytest.fixture(scope="module")
def auth_server(tmp_path_factory):
    home = tmp_path_factory.mktemp("auth-server")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("PREFECT_SERVER_API_AUTH_STRING", AUTH)
        url = start_server(seed_database(home), port=0)
    yield url
    stop_server(home)


def test_cli_and_agent_log_in_and_everything_else_is_refused(auth_server, start_agent, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_API_URL", auth_server)
    monkeypatch.delenv("PREFECT_API_AUTH_STRING", raising=False)
    queue = unique("auth")

    # No login: refused, with the reason, and nothing created.
    refused = cli("queue", "create", queue, "--resource", "local-process", check=False)
    assert refused.returncode == 1
    assert f"the Prefect server at {auth_server} refused the request (HTTP 401)" in refused.stderr
    assert "set PREFECT_API_AUTH_STRING" in refused.stderr and "Traceback" not in refused.stderr
    wrong = cli("queue", "create", queue, "--resource", "local-process", check=False,
                env={"PREFECT_API_AUTH_STRING": "launch-admin:guess"})
    assert wrong.returncode == 1 and "does not match" in wrong.stderr and "guess" not in wrong.stderr + wrong.stdout
    request = urllib.request.Request(f"{auth_server}/work_pools/filter", data=b"{}", method="POST",
                                     headers={"Content-Type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as raw:
        urllib.request.urlopen(request, timeout=10)
    assert raw.value.code == 401

    # With the login: the queue, an agent on it, and a job that completes.
    monkeypatch.setenv("PREFECT_API_AUTH_STRING", AUTH)
    cli("queue", "create", queue, "--resource", "local-process")
    agent = start_agent("-q", queue)
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text("import wandb\nrun = wandb.init(mode='offline')\nprint('trained behind a login')\n")
    result = launch("-q", queue, "-u", str(code), "-E", "python train.py", "--wait", timeout=300)
    assert "trained behind a login" in result.stdout and "Completed" in result.stdout
    assert AUTH not in result.stdout + result.stderr + agent.output()
