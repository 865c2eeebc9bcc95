"""A local stand-in for the Vertex AI REST API, for tests that drive the real
`google.cloud.aiplatform` library (api_transport="rest") and assert the requests it sends.

It serves, on http://127.0.0.1:<free port>:
  POST /token                                          OAuth2 JWT-bearer exchange (service-account token_uri)
  POST /v1/projects/P/locations/L/customJobs           create  -> JOB_STATE_PENDING
  GET  /v1/projects/P/locations/L/customJobs           list, oldest first: `filter` with `labels.KEY="VALUE"` terms
                                                       joined by AND (any other filter is refused), pageSize, pageToken
  GET  /v1/projects/P/locations/L/customJobs/ID        get
  POST /v1/projects/P/locations/L/customJobs/ID:cancel cancel  -> JOB_STATE_CANCELLING
Every request needs a Bearer token it issued, or a JWT signed by the service-account key of
`credentials_file` (what aiplatform sends: it self-signs JWTs and never calls /token).
A cancelled job reads JOB_STATE_CANCELLING for `cancelling_polls` GETs, then JOB_STATE_CANCELLED
with error {code: 1}; all other transitions are up to the test (`set_state`).
Pass `credentials=` to aiplatform.init: it otherwise keeps the first test's (a key this stand-in rejects).

Example:
    with VertexStandIn() as vertex:
        monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", vertex.credentials_file(tmp_path))
        credentials, _ = google.auth.default(scopes=["https://www.googleapis.com/auth/cloud-platform"])
        aiplatform.init(project="p", location="us-central1", api_transport="rest",
                        api_endpoint=vertex.endpoint, credentials=credentials)
        job = aiplatform.CustomJob(display_name="d", worker_pool_specs=specs, staging_bucket="gs://b")
        job.submit(service_account="run@p.iam.gserviceaccount.com")
        assert vertex.requests[-1].body["jobSpec"]["serviceAccount"] == "run@p.iam.gserviceaccount.com"
        vertex.set_state(job.resource_name, "JOB_STATE_FAILED", error_message="exit status 1")
        assert job.state == aiplatform.gapic.JobState.JOB_STATE_FAILED
"""

from __future__ import annotations

import datetime
import itertools
import json
import re
import threading
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qs, urlsplit

import google.auth.exceptions
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth import jwt

from services import reply_json

JOB_STATES = [
    "JOB_STATE_UNSPECIFIED", "JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING",
    "JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLING", "JOB_STATE_CANCELLED",
    "JOB_STATE_PAUSED", "JOB_STATE_EXPIRED", "JOB_STATE_UPDATING", "JOB_STATE_PARTIALLY_SUCCEEDED",
]  # list index == proto enum number
TERMINAL_STATES = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
                   "JOB_STATE_EXPIRED", "JOB_STATE_PARTIALLY_SUCCEEDED"}
CREATE = re.compile(r"/v1/(projects/[^/]+/locations/[^/]+)/customJobs")
JOB = re.compile(r"/v1/(projects/[^/]+/locations/[^/]+/customJobs/[^/:]+)(:cancel)?")
LABEL_TERM = re.compile(r'labels\.(?P<key>[\w-]+)\s*=\s*"?(?P<value>[^"]*)"?')


@dataclass
class Request:
    method: str
    path: str  # without the query string
    query: dict[str, list[str]]
    headers: dict[str, str]  # keys lower-cased
    body: object  # parsed JSON, the raw text for a form (token) body, or None


def _now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="microseconds").replace("+00:00", "Z")


class VertexStandIn:
    """The server; `requests` and `jobs` are what it has seen and holds."""

    def __init__(self, cancelling_polls: int = 1, access_token: str = "ya29.stand-in"):
        self.cancelling_polls = cancelling_polls
        self.access_token = access_token  # what /token issues (Artifact Registry logins use it)
        self.requests: list[Request] = []
        self.jobs: dict[str, dict] = {}  # job resource name -> CustomJob JSON, state as its name
        self.client_email = "launcher@stand-in.iam.gserviceaccount.com"
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self._public_pem = self._key.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        self._polls_left: dict[str, int] = {}
        self._ids = itertools.count(7_000_000_000_000_000_001)
        self._lock = threading.Lock()
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), _handler_for(self))
        self._server.daemon_threads = True

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self._server.server_port}"

    def __enter__(self) -> VertexStandIn:
        threading.Thread(target=self._server.serve_forever, name="vertex-standin", daemon=True).start()
        return self

    def __exit__(self, *exc) -> None:
        self._server.shutdown()
        self._server.server_close()

    def credentials_file(self, directory) -> str:
        """Write a service-account key file whose token_uri is this stand-in; return its path."""
        private_pem = self._key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
        info = {"type": "service_account", "project_id": "stand-in", "private_key_id": "stand-in-key",
                "private_key": private_pem.decode(), "client_email": self.client_email,
                "client_id": "1", "token_uri": f"{self.endpoint}/token"}
        path = Path(directory) / "vertex-standin-service-account.json"
        path.write_text(json.dumps(info))
        return str(path)

    def set_state(self, job: str, state: str, error_message: str | None = None, error_code: int = 3) -> None:
        """Move a job (resource name or ID) to `state`; `error_message` sets its error {code, message}."""
        if state not in JOB_STATES:
            raise ValueError(f"unknown job state {state}")
        with self._lock:
            name = next((name for name in self.jobs if job in (name, name.rsplit("/", 1)[-1])), None)
            if name is None:
                raise KeyError(f"no job {job}; jobs: {list(self.jobs)}")
            error = {"code": error_code, "message": error_message} if error_message is not None else None
            self._move(name, state, error)

    def _move(self, name: str, state: str, error: dict | None) -> None:
        record, now = self.jobs[name], _now()
        record.update(state=state, updateTime=now)
        if state == "JOB_STATE_RUNNING":
            record.setdefault("startTime", now)
        if state in TERMINAL_STATES:
            record["endTime"] = now
        if error:
            record["error"] = error
        self._polls_left.pop(name, None)

    def _respond(self, request: Request) -> tuple[int, dict]:
        if request.method == "POST" and request.path == "/token":
            return self._token(parse_qs(request.body or ""))
        if not self._authorized(request.headers.get("authorization", "")):
            return _error(401, "UNAUTHENTICATED", "Request had invalid authentication credentials.")
        if request.method == "POST" and (match := CREATE.fullmatch(request.path)):
            return self._create(match[1], request.body or {})
        if request.method == "GET" and (match := CREATE.fullmatch(request.path)):
            return self._list(match[1], request.query)
        match = JOB.fullmatch(request.path)
        if not match or match[1] not in self.jobs:
            return _error(404, "NOT_FOUND", f"{request.method} {request.path}: no such CustomJob")
        name = match[1]
        if request.method == "GET" and not match[2]:
            return 200, self._get(name)
        if request.method == "POST" and match[2]:
            return self._cancel(name)
        return _error(404, "NOT_FOUND", f"{request.method} {request.path}: no such method")

    def _token(self, form: dict[str, list[str]]) -> tuple[int, dict]:
        assertion = form.get("assertion", [""])[0]
        if form.get("grant_type") != ["urn:ietf:params:oauth:grant-type:jwt-bearer"] or not self._signed_by_key(assertion):
            return 400, {"error": "invalid_grant", "error_description": "Invalid JWT Signature."}
        return 200, {"access_token": self.access_token, "expires_in": 3600, "token_type": "Bearer"}

    def _authorized(self, authorization: str) -> bool:
        token = authorization.removeprefix("Bearer ")
        return token == self.access_token or self._signed_by_key(token)

    def _signed_by_key(self, token: str) -> bool:
        try:
            claims = jwt.decode(token, certs=self._public_pem, clock_skew_in_seconds=30)
        except (ValueError, google.auth.exceptions.GoogleAuthError):
            return False
        return claims.get("iss") == self.client_email

    def _create(self, parent: str, custom_job: dict) -> tuple[int, dict]:
        if not custom_job.get("displayName") or not custom_job.get("jobSpec", {}).get("workerPoolSpecs"):
            return _error(400, "INVALID_ARGUMENT", "displayName and jobSpec.workerPoolSpecs are required.")
        name, now = f"{parent}/customJobs/{next(self._ids)}", _now()
        self.jobs[name] = {**custom_job, "name": name, "state": "JOB_STATE_PENDING", "createTime": now, "updateTime": now}
        return 200, self.jobs[name]

    def _list(self, parent: str, query: dict[str, list[str]]) -> tuple[int, dict]:
        wanted: dict[str, str] = {}
        for term in filter(None, query.get("filter", [""])[0].split(" AND ")):
            match = LABEL_TERM.fullmatch(term.strip())
            if match is None:
                return _error(400, "INVALID_ARGUMENT", f"the stand-in filters on labels.KEY=\"VALUE\" only, not {term!r}")
            wanted[match["key"]] = match["value"]
        jobs = [job for name, job in self.jobs.items() if name.startswith(f"{parent}/customJobs/")
                and all((job.get("labels") or {}).get(key) == value for key, value in wanted.items())]
        start, size = int(query.get("pageToken", ["0"])[0] or 0), int(query.get("pageSize", ["100"])[0] or 100)
        page = {"customJobs": jobs[start:start + size]}
        if start + size < len(jobs):
            page["nextPageToken"] = str(start + size)
        return 200, page

    def _get(self, name: str) -> dict:
        if name in self._polls_left:
            if self._polls_left[name] <= 0:
                self._move(name, "JOB_STATE_CANCELLED", {"code": 1, "message": "CANCELED"})
            else:
                self._polls_left[name] -= 1
        return self.jobs[name]

    def _cancel(self, name: str) -> tuple[int, dict]:
        state = self.jobs[name]["state"]
        if state in TERMINAL_STATES:
            return _error(400, "FAILED_PRECONDITION", f"Cannot cancel {name} in state {state}.")
        self._move(name, "JOB_STATE_CANCELLING", None)
        self._polls_left[name] = self.cancelling_polls
        return 200, {}


def _error(code: int, status: str, message: str) -> tuple[int, dict]:
    return code, {"error": {"code": code, "message": message, "status": status}}


def _handler_for(standin: VertexStandIn) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def _serve(self) -> None:
            url = urlsplit(self.path)
            raw = self.rfile.read(int(self.headers.get("Content-Length") or 0)).decode()
            is_json = self.headers.get("Content-Type", "").startswith("application/json")
            body = (json.loads(raw) if is_json else raw) if raw else None
            headers = {key.lower(): value for key, value in self.headers.items()}
            request = Request(self.command, url.path, parse_qs(url.query), headers, body)
            with standin._lock:
                standin.requests.append(request)
                status, body = standin._respond(request)
                if "enum-encoding=int" in request.query.get("$alt", [""])[0] and "state" in body:
                    body = {**body, "state": JOB_STATES.index(body["state"])}
            reply_json(self, status, body)

        do_GET = do_POST = _serve

        def log_message(self, *args) -> None:
            pass

    return Handler
