"""The embedded server: a home trusts only its own server, even when another one holds the port."""

from __future__ import annotations

import json

import pytest

from conftest import seed_database
from prefect_launch import server
from prefect_launch.server import ensure_server, serves, start_server, stop_server


@pytest.fixture(scope="module")
def other_server(tmp_path_factory):
    """Another home's server, on a port of its own."""
    home = tmp_path_factory.mktemp("other-home")
    url = start_server(seed_database(home), port=0)
    yield home, url
    stop_server(home)


def test_a_state_file_pointing_at_another_homes_server_is_not_trusted(other_server, tmp_path):
    other_home, other_url = other_server
    home = tmp_path / "home"
    home.mkdir()
    (home / "server.json").write_text(json.dumps({"url": other_url, "pid": 1}))
    url = ensure_server(seed_database(home))
    try:
        assert url != other_url and serves(url, home) and not serves(other_url, home)
        assert serves(other_url, other_home)
    finally:
        stop_server(home)


def test_a_server_that_loses_its_port_to_another_starts_on_another(other_server, tmp_path, monkeypatch):
    """The race behind a CI run that lost its server: the port was free when checked, another
    server bound it first and answered every health check; the run then used (and lost) that one."""
    _, other_url = other_server
    taken = int(other_url.rsplit(":", 1)[1].split("/")[0])
    free_port = server.free_port
    answers = iter([taken])  # the first check "finds" the other server's port free
    monkeypatch.setattr(server, "free_port", lambda preferred=0: next(answers, None) or free_port(preferred))
    home = tmp_path / "home"
    url = start_server(seed_database(home), port=taken)
    try:
        assert url != other_url and serves(url, home)
        assert json.loads((home / "server.json").read_text())["url"] == url
    finally:
        stop_server(home)
