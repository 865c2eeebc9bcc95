"""An Azure Container Registry stand-in on 127.0.0.1, with the managed identity that logs in to it.

- `identity_endpoint`: App Service's managed-identity endpoint (plain http, as on
  App Service), which `DefaultAzureCredential` uses when `IDENTITY_ENDPOINT` and
  `IDENTITY_HEADER` are set. It issues one Azure AD access token.
- `host`: https://127.0.0.1:PORT. `POST /oauth2/exchange` trades that AD token
  (and only it) for an ACR refresh token, as ACR does; everything else is
  forwarded, streaming, to Debian's docker-registry behind it, which accepts
  only the null user with that refresh token.

Example::

    with AcrStandIn(tmp_path) as acr:
        monkeypatch.setenv("IDENTITY_ENDPOINT", acr.identity_endpoint)
        monkeypatch.setenv("IDENTITY_HEADER", acr.identity_header)
        monkeypatch.setenv("SSL_CERT_FILE", str(acr.cert))   # httpx trusts the stand-in's certificate
        # builder.destination: https://<acr.host>/launch, registry.type: acr, environment.type: azure
"""

from __future__ import annotations

import http.client
import http.server
import threading
import time
from pathlib import Path
from typing import Iterator
from urllib.parse import parse_qs, urlsplit

from prefect_launch.registries.acr import ACR_USER
from services import Registry, https_server, reply_json

AD_TOKEN = "eyJ.stand-in-aad-token"
REFRESH_TOKEN = "acr-stand-in-refresh-token"
# Headers that describe one connection, not the message: never forwarded.
HOP_BY_HOP = {"connection", "keep-alive", "transfer-encoding", "te", "trailer", "upgrade", "proxy-authorization"}


class AcrStandIn:
    identity_header = "stand-in-identity-secret"

    def __init__(self, root: Path, base_in: str | None = None) -> None:
        (root / "registry").mkdir()
        self.registry = Registry(root / "registry", login=(ACR_USER, REFRESH_TOKEN), relative_urls=True,
                                 base_in=base_in)
        self.exchanges: list[dict[str, list[str]]] = []
        self.identity_requests: list[str] = []
        self._front, self.cert = https_server(_front_handler(self), root, "acr")
        self._identity = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _identity_handler(self))

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self._front.server_port}"

    @property
    def identity_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._identity.server_port}/msi/token"

    def __enter__(self) -> "AcrStandIn":
        for server in (self._front, self._identity):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for server in (self._front, self._identity):
            server.shutdown()
        self.registry.close()


def _identity_handler(acr: AcrStandIn) -> type[http.server.BaseHTTPRequestHandler]:
    class Identity(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            acr.identity_requests.append(self.path)
            if self.headers.get("X-IDENTITY-HEADER") != acr.identity_header:
                return reply_json(self, 401, {"error": "invalid identity header"})
            resource = parse_qs(urlsplit(self.path).query).get("resource", [""])[0]
            reply_json(self, 200, {"access_token": AD_TOKEN, "expires_on": str(int(time.time()) + 3600),
                               "resource": resource, "token_type": "Bearer"})

        def log_message(self, *args) -> None:
            pass

    return Identity


def _front_handler(acr: AcrStandIn) -> type[http.server.BaseHTTPRequestHandler]:
    class Front(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # docker keeps connections open and streams chunked uploads

        def _serve(self) -> None:
            if self.path == "/oauth2/exchange":
                return self._exchange()
            upstream = http.client.HTTPConnection("127.0.0.1", acr.registry.port, timeout=300)
            # Repeated headers (docker sends several Accept lines) are joined, as HTTP allows.
            headers = {k: ", ".join(self.headers.get_all(k)) for k in self.headers if k.lower() not in HOP_BY_HOP}
            chunked = self.headers.get("Transfer-Encoding", "").lower() == "chunked"
            length = int(self.headers.get("Content-Length") or 0)
            body = self._chunks() if chunked else (self._fixed(length) if length else None)
            upstream.request(self.command, self.path, body=body, headers=headers, encode_chunked=chunked)
            response = upstream.getresponse()
            payload = response.read()
            self.send_response(response.status)
            for name, value in response.getheaders():
                if name.lower() not in HOP_BY_HOP | {"content-length"}:
                    self.send_header(name, value)
            self.send_header("Content-Length", response.getheader("Content-Length") if self.command == "HEAD"
                             else str(len(payload)))
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(payload)
            upstream.close()

        def _exchange(self) -> None:
            form = parse_qs(self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode())
            acr.exchanges.append(form)
            valid = (form.get("grant_type") == ["access_token"] and form.get("service") == [acr.host]
                     and form.get("access_token") == [AD_TOKEN])
            if not valid:
                return reply_json(self, 401, {"errors": [{"code": "UNAUTHORIZED", "message": "invalid AAD token"}]})
            reply_json(self, 200, {"refresh_token": REFRESH_TOKEN})

        def _fixed(self, length: int) -> Iterator[bytes]:
            while length > 0:
                block = self.rfile.read(min(length, 1 << 20))
                if not block:
                    return
                length -= len(block)
                yield block

        def _chunks(self) -> Iterator[bytes]:
            while True:
                size = int(self.rfile.readline().split(b";")[0], 16)
                if size == 0:
                    while self.rfile.readline() not in (b"\r\n", b"\n", b""):
                        pass  # trailers
                    return
                yield from self._fixed(size)
                self.rfile.readline()  # the CRLF after each chunk

        do_GET = do_HEAD = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

        def log_message(self, *args) -> None:
            pass

    return Front

