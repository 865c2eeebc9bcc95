"""The engine-less tag check (`registries/manifests.py`) against registries that challenge for Basic and Bearer logins.

Basic: Debian's docker-registry with an htpasswd file (also what the Kaniko
end-to-end test's agent, which has no engine, checks against). Bearer: a
registry front on 127.0.0.1 that answers as the distribution spec's token
flow does (a 401 naming a realm, a token for the login, then the manifest).
"""

from __future__ import annotations

import base64
import http.server
import io
import tarfile
import threading

import pytest
import requests

from prefect_launch.errors import LaunchError
from prefect_launch.registries.manifests import manifest_exists
from services import Registry, docker_engine

LOGIN = {"username": "ci", "password": "s3cret-9"}


def test_basic_login_registry(tmp_path):
    from prefect_launch.docker_engine import docker_client

    docker_engine()
    registry = Registry(tmp_path, login=(LOGIN["username"], LOGIN["password"]))
    try:
        image = f"{registry.host}/launch/probe:present"
        client = docker_client()
        layer = io.BytesIO()
        with tarfile.open(fileobj=layer, mode="w") as tar:  # a one-file image, so the push takes no time
            info = tarfile.TarInfo("probe.txt")
            info.size = 5
            tar.addfile(info, io.BytesIO(b"probe"))
        client.api.import_image_from_data(layer.getvalue(), repository=f"{registry.host}/launch/probe", tag="present")
        for record in client.api.push(f"{registry.host}/launch/probe", tag="present", stream=True, decode=True,
                                      auth_config=LOGIN):
            assert "error" not in record, record
        assert manifest_exists(image, LOGIN) is True  # plain http after https fails, as Docker does for 127.0.0.1
        assert manifest_exists(f"{registry.host}/launch/probe:absent", LOGIN) is False
        with pytest.raises(LaunchError, match="answered 401"):
            manifest_exists(image, {"username": "ci", "password": "wrong"})
    finally:
        registry.close()


class _TokenRegistry(http.server.BaseHTTPRequestHandler):
    token = "registry-token-41"

    def do_GET(self) -> None:  # the token service
        expected = "Basic " + base64.b64encode(f"{LOGIN['username']}:{LOGIN['password']}".encode()).decode()
        if not self.path.startswith("/token?") or "scope=repository%3Alaunch%3Apull" not in self.path:
            return self._reply(404)
        if self.headers.get("Authorization") != expected:
            return self._reply(401)
        self._reply(200, b'{"token": "%s"}' % self.token.encode())

    def do_HEAD(self) -> None:  # the registry
        if self.headers.get("Authorization") != f"Bearer {self.token}":
            realm = f"http://127.0.0.1:{self.server.server_port}/token"
            return self._reply(401, headers={"WWW-Authenticate":
                                             f'Bearer realm="{realm}",service="standin",scope="repository:launch:pull"'})
        self._reply(200 if self.path == "/v2/launch/manifests/present" else 404)

    def _reply(self, status: int, body: bytes = b"", headers: dict | None = None) -> None:
        self.send_response(status)
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


def test_bearer_token_registry():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenRegistry)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    host = f"127.0.0.1:{server.server_port}"
    try:
        assert manifest_exists(f"{host}/launch:present", LOGIN) is True
        assert manifest_exists(f"{host}/launch:absent", LOGIN) is False
        with pytest.raises(LaunchError, match="refused the login"):
            manifest_exists(f"{host}/launch:present", {"username": "ci", "password": "wrong"})
        assert requests.head(f"http://{host}/v2/launch/manifests/present").status_code == 401  # no login, no answer
    finally:
        server.shutdown()
