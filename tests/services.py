"""Real services for container tests, all on 127.0.0.1: a git server, a package index, a registry.

- `GitServer`: git's smart HTTP protocol (`git http-backend` as CGI) over TLS
  with a self-signed certificate and basic auth, so clones need real
  credentials and `https://` (the only scheme launch accepts besides ssh).
- `PackageIndex`: a PEP 503 "simple" index serving one pure-Python wheel.
- `Registry`: Debian's `docker-registry` (the CNCF distribution registry).

The Docker engine itself is started by `./dev test` (it needs root and
outlives a test run); `docker_engine()` fails loudly when it is missing.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import http.server
import json
import os
import shutil
import socket
import ssl
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from pathlib import Path

from prefect_launch.server import free_port

BASE_IMAGE = os.environ.get("PREFECT_LAUNCH_TEST_BASE_IMAGE", "prefect-launch/python:3.11")


def _wait_port(port: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


def docker_engine():
    """The Docker engine and the tests' base image; a failure, never a skip, when either is missing."""
    import docker

    try:
        client = docker.from_env()
        client.ping()
    except Exception as exc:
        raise AssertionError(f"no Docker engine answers ({exc}); run the tests with ./dev test, which starts dockerd") from None
    try:
        client.images.get(BASE_IMAGE)
    except docker.errors.ImageNotFound:
        raise AssertionError(f"base image {BASE_IMAGE} missing; build it with infra/images/build-base.sh") from None
    return client


class _Quiet(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def reply_json(handler: http.server.BaseHTTPRequestHandler, status: int, body: object) -> None:
    """Send `body` as a JSON response, the way the cloud APIs the stand-ins play answer."""
    payload = json.dumps(body).encode()
    handler.send_response(status)
    handler.send_header("Content-Type", "application/json; charset=UTF-8")
    handler.send_header("Content-Length", str(len(payload)))
    handler.end_headers()
    handler.wfile.write(payload)


def https_server(handler: type[http.server.BaseHTTPRequestHandler], folder: Path,
                 name: str) -> tuple[http.server.ThreadingHTTPServer, Path]:
    """A server on 127.0.0.1 (a free port) speaking TLS with a new self-signed certificate for
    127.0.0.1; returns it, not yet serving, and the certificate file clients must trust."""
    cert, key = folder / f"{name}-cert.pem", folder / f"{name}-key.pem"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=127.0.0.1",
         "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True,
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server.socket = context.wrap_socket(server.socket, server_side=True)
    return server, cert


class GitServer:
    """Serves bare repositories under `root` at https://127.0.0.1:PORT/<name>.git, user `git-user`."""

    user = "git-user"

    def __init__(self, root: Path, password: str) -> None:
        self.root, self.password = root, password
        expected = "Basic " + base64.b64encode(f"{self.user}:{password}".encode()).decode()
        server_root = root
        self.requests: list[str] = []
        requests = self.requests

        class Handler(_Quiet):
            def do_GET(self) -> None:
                self._cgi()

            def do_POST(self) -> None:
                self._cgi()

            def _cgi(self) -> None:
                requests.append(self.path)
                if self.headers.get("Authorization") != expected:
                    self.send_response(401)
                    self.send_header("WWW-Authenticate", 'Basic realm="git"')
                    self.end_headers()
                    return
                path, _, query = self.path.partition("?")
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                env = {
                    **os.environ,
                    "GIT_PROJECT_ROOT": str(server_root),
                    "GIT_HTTP_EXPORT_ALL": "1",
                    "REQUEST_METHOD": self.command,
                    "PATH_INFO": path,
                    "QUERY_STRING": query,
                    "CONTENT_TYPE": self.headers.get("Content-Type", ""),
                    "CONTENT_LENGTH": str(len(body)),
                    "REMOTE_USER": "git-user",
                    "GIT_PROTOCOL": self.headers.get("Git-Protocol", ""),
                }
                if self.headers.get("Content-Encoding") == "gzip":
                    env["HTTP_CONTENT_ENCODING"] = "gzip"
                out = subprocess.run(["git", "http-backend"], input=body, env=env, capture_output=True).stdout
                head, _, payload = out.partition(b"\r\n\r\n")
                status = 200
                headers = []
                for line in head.decode().split("\r\n"):
                    name, _, value = line.partition(": ")
                    if name.lower() == "status":
                        status = int(value.split()[0])
                    elif name:
                        headers.append((name, value))
                self.send_response(status)
                for name, value in headers:
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

        self.httpd, self.cert = https_server(Handler, root, "git")
        self.port = self.httpd.server_port
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def url(self, name: str) -> str:
        return f"https://127.0.0.1:{self.port}/{name}.git"

    def credentials_line(self) -> str:
        return f"https://{self.user}:{self.password}@127.0.0.1:{self.port}\n"

    def publish(self, name: str, work: Path) -> Path:
        """Make `work` (a git work tree) available as a bare repository `name`; return the bare path."""
        bare = self.root / f"{name}.git"
        subprocess.run(["git", "clone", "--quiet", "--bare", str(work), str(bare)], check=True)
        subprocess.run(["git", "-C", str(bare), "config", "http.receivepack", "true"], check=True)
        return bare

    def close(self) -> None:
        self.httpd.shutdown()


def git(work: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}
    done = subprocess.run(["git", "-C", str(work), *args], check=True, capture_output=True, text=True, env=env)
    return done.stdout.strip()


def _wheel(directory: Path, name: str, version: str, module_source: str) -> Path:
    """A minimal valid pure-Python wheel."""
    dist = f"{name.replace('-', '_')}-{version}"
    files = {
        f"{name.replace('-', '_')}/__init__.py": module_source.encode(),
        f"{dist}.dist-info/METADATA": f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n".encode(),
        f"{dist}.dist-info/WHEEL": b"Wheel-Version: 1.0\nGenerator: tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n",
    }
    record = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(data)}")
    record.append(f"{dist}.dist-info/RECORD,,")
    files[f"{dist}.dist-info/RECORD"] = ("\n".join(record) + "\n").encode()
    wheel = directory / f"{dist}-py3-none-any.whl"
    with zipfile.ZipFile(wheel, "w") as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return wheel


class PackageIndex:
    """A PEP 503 index at http://127.0.0.1:PORT/simple with one package."""

    def __init__(self, root: Path, name: str = "launch-util", version: str = "1.0") -> None:
        self.root = root
        package_dir = root / "simple" / name
        package_dir.mkdir(parents=True)
        self._list(package_dir, _wheel(package_dir, name, version, "GREETING = 'hello from launch-util'\n"))
        self.name, self.port = name, free_port()
        directory = str(root)

        class Handler(http.server.SimpleHTTPRequestHandler):
            def __init__(self, *args, **kwargs) -> None:
                super().__init__(*args, directory=directory, **kwargs)

            def log_message(self, *args) -> None:
                pass

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    @staticmethod
    def _list(package_dir: Path, wheel: Path) -> None:
        with (package_dir / "index.html").open("a") as index:
            index.write(f'<a href="{wheel.name}">{wheel.name}</a>\n')

    def add(self, wheel: Path) -> None:
        """Serve a downloaded wheel too, under its PEP 503 normalized project name."""
        import re

        project = re.sub(r"[-_.]+", "-", wheel.name.split("-")[0]).lower()
        package_dir = self.root / "simple" / project
        package_dir.mkdir(parents=True, exist_ok=True)
        shutil.copy(wheel, package_dir / wheel.name)
        self._list(package_dir, package_dir / wheel.name)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/simple"

    def close(self) -> None:
        self.httpd.shutdown()


class Registry:
    """Debian's docker-registry on 127.0.0.1:PORT, storing under `root`.

    With `login` it asks for that user and password; `relative_urls` makes its
    upload `Location`s relative, for a proxy in front of it. With `base_in`,
    that repository starts with the base image's layers (`_link_base_layers`).
    """

    def __init__(self, root: Path, login: tuple[str, str] | None = None, relative_urls: bool = False,
                 base_in: str | None = None) -> None:
        self.port = free_port()
        self.login = login
        if base_in:
            _link_base_layers(root / "data", base_in)
        config = root / "registry.yml"
        auth = ""
        if login:
            import bcrypt

            (root / "htpasswd").write_text(f"{login[0]}:{bcrypt.hashpw(login[1].encode(), bcrypt.gensalt()).decode()}\n")
            auth = f"auth:\n  htpasswd:\n    realm: tests\n    path: {root / 'htpasswd'}\n"
        config.write_text(
            "version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n"
            f"    rootdirectory: {root / 'data'}\n  delete:\n    enabled: true\n"
            f"http:\n  addr: 127.0.0.1:{self.port}\n  relativeurls: {str(relative_urls).lower()}\n" + auth
        )
        self.proc = subprocess.Popen(["docker-registry", "serve", str(config)],
                                     stdout=subprocess.DEVNULL, stderr=(root / "registry.log").open("w"))
        _wait_port(self.port)

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.port}"

    def manifest_digest(self, repository: str, tag: str) -> str | None:
        import urllib.error
        import urllib.request

        headers = {"Accept": "application/vnd.docker.distribution.manifest.v2+json, "
                             "application/vnd.oci.image.manifest.v1+json"}
        if self.login:
            headers["Authorization"] = "Basic " + base64.b64encode(":".join(self.login).encode()).decode()
        request = urllib.request.Request(
            f"http://{self.host}/v2/{repository}/manifests/{tag}", method="HEAD", headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=10) as response:
                return response.headers.get("Docker-Content-Digest")
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return None
            raise

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _link_base_layers(storage: Path, repository: str) -> None:
    """Put the base image's layers into `repository` of a registry's storage, as if pushed there before.

    Each push of an image built on the base to a new registry made the Docker engine compress the base's
    314 MB again (~15 s of CPU) and the registry hash them, six times a run. With the layers in place the
    engine finds them there ("Layer already exists"), by the digests it recorded when it pushed them to
    `_base_layers`'s registry. Hard links: the blobs are never written to, and a registry that deletes one
    unlinks its own name only."""
    blobs, digests = _base_layers()
    v2 = storage / "docker" / "registry" / "v2"
    for digest in digests:
        blob = v2 / "blobs" / "sha256" / digest[:2] / digest / "data"
        blob.parent.mkdir(parents=True, exist_ok=True)
        os.link(blobs / digest[:2] / digest / "data", blob)
        link = v2 / "repositories" / repository / "_layers" / "sha256" / digest / "link"
        link.parent.mkdir(parents=True, exist_ok=True)
        link.write_text(f"sha256:{digest}")


def _base_layers() -> tuple[Path, list[str]]:
    """(the blobs folder, the layer and config digests) of the base image pushed to a registry of its own, once
    per machine and base image: the first test worker to ask pushes, the others wait for it."""
    image_id = docker_engine().images.get(BASE_IMAGE).id.removeprefix("sha256:")[:16]
    folder = Path(tempfile.gettempdir()) / f"prefect-launch-test-base-layers-{image_id}"
    folder.mkdir(exist_ok=True)
    digests, root = folder / "digests.json", folder / "registry"
    with (folder / "lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not digests.exists():
            shutil.rmtree(root, ignore_errors=True)
            root.mkdir()
            registry = Registry(root)
            image = f"{registry.host}/base:pushed"
            try:
                for command in (["tag", BASE_IMAGE, image], ["push", "--quiet", image], ["rmi", image]):
                    subprocess.run(["docker", *command], check=True, capture_output=True, timeout=300)
            finally:
                registry.close()
            layers = root / "data" / "docker" / "registry" / "v2" / "repositories" / "base" / "_layers" / "sha256"
            digests.write_text(json.dumps(sorted(path.name for path in layers.iterdir())))
    return root / "data" / "docker" / "registry" / "v2" / "blobs" / "sha256", json.loads(digests.read_text())


class MotoServer:
    """moto's AWS stand-in on 127.0.0.1:PORT (S3, ECR, SageMaker, ...)."""

    def __init__(self, log: Path) -> None:
        self.port = free_port()
        binary = shutil.which("moto_server", path=str(Path(sys.executable).parent)) or "moto_server"
        self.proc = subprocess.Popen([binary, "-H", "127.0.0.1", "-p", str(self.port)],
                                     stdout=subprocess.DEVNULL, stderr=log.open("w"))
        _wait_port(self.port)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def _installed_closure(*names: str) -> dict[str, "importlib.metadata.Distribution"]:
    """The distributions installed here that `names` need, with their own requirements (markers evaluated)."""
    import importlib.metadata
    import re

    from packaging.requirements import Requirement

    found: dict[str, importlib.metadata.Distribution] = {}
    todo = list(names)
    while todo:
        name = re.sub(r"[-_.]+", "-", todo.pop()).lower()
        if name in found:
            continue
        found[name] = dist = importlib.metadata.distribution(name)
        for line in dist.requires or []:
            requirement = Requirement(line)
            if requirement.marker is None or requirement.marker.evaluate({"extra": ""}):
                todo.append(requirement.name)
    return found


def prefect_image() -> str:
    """The base image with this machine's prefect and wandb, and all they need, at the versions installed here, so a
    container runs a deployed flow's run with Prefect's own engine against the tests' server.

    Copied from this environment (its Python and glibc match the image's), never downloaded: the tests need no
    network. Tagged by the base image and the versions copied, so it is built once and reused while neither changes.
    """
    client = docker_engine()
    closure = _installed_closure("prefect", "wandb")
    versions = sorted(f"{name}=={dist.version}" for name, dist in closure.items())
    key = hashlib.sha256("\n".join([client.images.get(BASE_IMAGE).id, *versions]).encode()).hexdigest()[:16]
    tag = f"prefect-launch/prefect-tests:{key}"
    with contextlib.suppress(Exception):
        client.images.get(tag)
        return tag
    import tempfile

    with tempfile.TemporaryDirectory(prefix="prefect-image-") as work:
        site = Path(work) / "site"
        for dist in closure.values():
            for file in dist.files or []:
                if file.parts[0] == ".." or "__pycache__" in file.parts:
                    continue  # scripts outside site-packages; bytecode is written again in the image
                source, target = Path(dist.locate_file(file)), site / file
                if source.is_file():
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(source, target)
        # First on the path: these versions, consistent with each other, shadow the base image's own.
        (Path(work) / "Dockerfile").write_text(
            f"FROM {BASE_IMAGE}\nCOPY site /opt/prefect-site\nENV PYTHONPATH=/opt/prefect-site\n"
            'RUN ["python", "-c", "import prefect.engine, wandb"]\n'
        )
        subprocess.run(["docker", "build", "-q", "--network", "host", "-t", tag, work], check=True, capture_output=True)
    return tag
