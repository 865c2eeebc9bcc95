"""Object-store stand-ins for build contexts: Google Cloud Storage's JSON upload API and Azure Blob's Put Blob.

One https server on 127.0.0.1 (a self-signed certificate, `cert`) answers:

- `POST /upload/storage/v1/b/<bucket>/o?uploadType=multipart`, what
  google-cloud-storage sends with `STORAGE_EMULATOR_HOST` pointing here; it
  wants `Authorization: Bearer <gcs_token>`;
- `PUT /<account>/<container>/<blob>` with `x-ms-blob-type: BlockBlob`, what
  azure-storage-blob sends to a path-style account URL; it wants the Azure AD
  token its managed-identity endpoint (`identity_endpoint`) hands out.

Stored bodies land in `objects[(kind, bucket or account/container, name)]`.
"""

from __future__ import annotations

import email.parser
import email.policy
import http.server
import json
import threading
from pathlib import Path
from urllib.parse import parse_qs, unquote, urlsplit

from azure_standin import AD_TOKEN, _identity_handler
from services import https_server, reply_json


class ObjectStoreStandIn:
    identity_header = "stand-in-storage-identity"

    def __init__(self, root: Path, gcs_token: str) -> None:
        self.gcs_token = gcs_token
        self.objects: dict[tuple[str, str, str], bytes] = {}
        self.identity_requests: list[str] = []
        self._server, self.cert = https_server(_store_handler(self), root, "storage")
        self._identity = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _identity_handler(self))

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self._server.server_port}"

    @property
    def identity_endpoint(self) -> str:
        return f"http://127.0.0.1:{self._identity.server_port}/msi/token"

    def __enter__(self) -> "ObjectStoreStandIn":
        for server in (self._server, self._identity):
            threading.Thread(target=server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        for server in (self._server, self._identity):
            server.shutdown()


def _store_handler(store: ObjectStoreStandIn) -> type[http.server.BaseHTTPRequestHandler]:
    class Store(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def _body(self) -> bytes:
            return self.rfile.read(int(self.headers.get("Content-Length", 0)))

        def do_POST(self) -> None:  # GCS multipart upload: a JSON metadata part, then the media part
            parts = urlsplit(self.path)
            body = self._body()
            if self.headers.get("Authorization") != f"Bearer {store.gcs_token}":
                return reply_json(self, 401, {"error": {"code": 401, "message": "Invalid Credentials"}})
            if not parts.path.startswith("/upload/storage/v1/b/") or parse_qs(parts.query).get("uploadType") != ["multipart"]:
                return reply_json(self, 404, {"error": {"code": 404, "message": f"no such API: {self.path}"}})
            bucket = unquote(parts.path.split("/")[5])
            message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + body)
            metadata_part, media_part = list(message.iter_parts())
            name = json.loads(metadata_part.get_content())["name"]
            data = media_part.get_payload(decode=True)
            store.objects["gs", bucket, name] = data
            reply_json(self, 200, {"kind": "storage#object", "bucket": bucket, "name": name, "size": str(len(data)),
                                   "generation": "1", "md5Hash": ""})

        def do_PUT(self) -> None:  # Azure Put Blob
            body = self._body()
            if self.headers.get("Authorization") != f"Bearer {AD_TOKEN}":
                return self._azure_error(403, "AuthenticationFailed")
            if self.headers.get("x-ms-blob-type") != "BlockBlob":
                return self._azure_error(400, "MissingRequiredHeader")
            account, container, blob = unquote(urlsplit(self.path).path).lstrip("/").split("/", 2)
            store.objects["azure", f"{account}/{container}", blob] = body
            self.send_response(201)
            self.send_header("ETag", '"0x1"')
            self.send_header("Last-Modified", "Wed, 25 Nov 2026 00:00:00 GMT")
            self.send_header("Content-MD5", "")
            self.send_header("x-ms-request-server-encrypted", "true")
            self.send_header("x-ms-version", self.headers.get("x-ms-version", "2021-08-06"))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def _azure_error(self, status: int, code: str) -> None:
            payload = f"<?xml version='1.0' encoding='utf-8'?><Error><Code>{code}</Code></Error>".encode()
            self.send_response(status)
            self.send_header("x-ms-error-code", code)
            self.send_header("Content-Type", "application/xml")
            self.send_header("Content-Length", str(len(payload)))
            self.end_headers()
            self.wfile.write(payload)

        def log_message(self, *args) -> None:
            pass

    return Store


__all__ = ["ObjectStoreStandIn"]
