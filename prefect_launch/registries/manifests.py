"""Is a tag in a registry? Asked over the registry's own HTTP API, for agents without a Docker engine.

An agent in a cluster (the Helm chart's, building with Kaniko) has no engine
to run `docker manifest inspect` through, so `HEAD /v2/<name>/manifests/<tag>`
is sent as the distribution spec describes: on a 401 the registry's
`WWW-Authenticate` challenge says how to log in, Basic (the login itself) or
Bearer (a token from the challenge's realm, asked with the login). Like
Docker, registries on 127.0.0.0/8 or localhost are tried over https without
certificate checks, then over plain http.

Example:
    >>> split_image("127.0.0.1:5000/launch/trainer:3f2a")
    ('127.0.0.1:5000', 'launch/trainer', '3f2a')
"""

from __future__ import annotations

import ipaddress

import requests
from requests.utils import parse_dict_header

from prefect_launch.errors import LaunchError

MANIFEST_TYPES = ", ".join([
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.oci.image.manifest.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
    "application/vnd.docker.distribution.manifest.v2+json",
])
TIMEOUT = 30


def split_image(image: str) -> tuple[str, str, str]:
    """(registry host, repository path, tag) of `host/path:tag`."""
    host, _, rest = image.partition("/")
    name, _, tag = rest.rpartition(":")
    if not host or not name or not tag:
        raise LaunchError(f"image {image!r} is not of the form host/repository:tag")
    return host, name, tag


def _insecure(host: str) -> bool:
    """Docker's rule: registries on loopback addresses need no verified TLS."""
    name = host.rsplit(":", 1)[0] if not host.endswith("]") else host
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name.strip("[]")).is_loopback
    except ValueError:
        return False


def manifest_exists(image: str, login: dict[str, str] | None) -> bool:
    """Whether the registry holds `image`'s tag; `login` is docker's `auth_config` (username, password) or None."""
    host, name, tag = split_image(image)
    schemes = ["https", "http"] if _insecure(host) else ["https"]
    for index, scheme in enumerate(schemes):
        try:
            response = _head(f"{scheme}://{host}/v2/{name}/manifests/{tag}", login, verify=not _insecure(host))
        except requests.exceptions.ConnectionError as exc:  # an SSL error included: try plain http next
            if index + 1 < len(schemes):
                continue
            raise LaunchError(f"registry {host} does not answer: {exc}") from None
        if response.status_code == 200:
            return True
        if response.status_code == 404:
            return False
        raise LaunchError(f"registry {host} answered {response.status_code} for {name}:{tag}: {response.text[:200]}")
    return False


def _head(url: str, login: dict[str, str] | None, verify: bool) -> requests.Response:
    session = requests.Session()
    session.verify = verify
    headers = {"Accept": MANIFEST_TYPES}
    response = session.head(url, headers=headers, timeout=TIMEOUT)
    challenge = response.headers.get("WWW-Authenticate", "")
    if response.status_code != 401 or not challenge:
        return response
    kind, _, params = challenge.partition(" ")
    basic = (login["username"], login["password"]) if login else None
    if kind.lower() == "basic":
        return session.head(url, headers=headers, auth=basic, timeout=TIMEOUT)
    if kind.lower() == "bearer":
        fields = parse_dict_header(params)
        query = {key: fields[key] for key in ("service", "scope") if fields.get(key)}
        answer = session.get(fields.get("realm", ""), params=query, auth=basic, timeout=TIMEOUT)
        if answer.status_code != 200:
            raise LaunchError(f"registry token service {fields.get('realm')} refused the login ({answer.status_code})")
        token = answer.json().get("token") or answer.json().get("access_token")
        return session.head(url, headers={**headers, "Authorization": f"Bearer {token}"}, timeout=TIMEOUT)
    raise LaunchError(f"registry at {url} asks for {kind} authentication, which the agent cannot do")
