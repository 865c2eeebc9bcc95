"""Which git remotes a job may name: https://, ssh:// and `user@host:path`, never with credentials.

`file://`, `ext::` and other transports run local commands or read the
agent's disk, and credentials never travel with the job: an https remote may
hold no user name (a token is often given as one) and no password, an ssh
remote no password; they come from the agent's own credential sources only.
Nothing git could read as an option (a remote, host, user or ref starting with
`-`) passes. The job spec checks a git source's URI and ref with `check_remote`
and `check_ref` as it is read, the git source again before it fetches;
`mask_url` hides the user part of any URI a message shows.

Example:
    >>> check_remote("https://github.com/org/repo.git")
    >>> check_remote("git@github.com:org/repo.git")
    >>> check_remote("file:///etc")
    Traceback (most recent call last):
    ...
    prefect_launch.errors.LaunchError: git remote 'file:///etc': only https:// and ssh remotes are allowed
    >>> check_remote("https://ghp_0123456789@github.com/org/repo.git")
    Traceback (most recent call last):
    ...
    prefect_launch.errors.LaunchError: git remote 'https://********@github.com/org/repo.git' holds credentials (a user name can be a token): put them in git's credential helper or the gitCreds file ($PREFECT_LAUNCH_GIT_CREDENTIALS) of the agent, never in the URI
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from prefect_launch.errors import LaunchError
from prefect_launch.redact import MASK

_SCP_LIKE = re.compile(r"^(?P<user>[\w.-]+)@(?P<host>[\w.-]+):(?!//)[^\s]+$")


def check_remote(uri: str) -> None:
    """Refuse anything but https://, ssh:// and `user@host:path` remotes, credentials in them, and options."""
    if uri.startswith("-"):
        raise LaunchError(f"git remote {mask_url(uri)!r} starts with '-': git would read it as an option")
    parts = urlsplit(uri)
    if parts.scheme in {"https", "ssh"} and parts.hostname:
        if parts.hostname.startswith("-") or (parts.username or "").startswith("-"):
            raise LaunchError(f"git remote {mask_url(uri)!r}: a host or user starting with '-' would be read as an option")
        if parts.password is not None or (parts.scheme == "https" and parts.username):
            raise LaunchError(
                f"git remote {mask_url(uri)!r} holds credentials (a user name can be a token): put them in git's "
                "credential helper or the gitCreds file ($PREFECT_LAUNCH_GIT_CREDENTIALS) of the agent, never in the URI"
            )
        return
    scp = _SCP_LIKE.match(uri)
    if not parts.scheme and scp:
        if scp["user"].startswith("-") or scp["host"].startswith("-"):
            raise LaunchError(f"git remote {uri!r}: a host or user starting with '-' would be read as an option")
        return
    raise LaunchError(f"git remote {mask_url(uri)!r}: only https:// and ssh remotes are allowed")


def check_ref(ref: str) -> None:
    """Refuse a branch, tag or commit git could read as an option, or that no ref name may be.

    >>> check_ref("--upload-pack=touch /tmp/x")
    Traceback (most recent call last):
    ...
    prefect_launch.errors.LaunchError: git ref '--upload-pack=touch /tmp/x' starts with '-': git would read it as an option
    """
    if ref.startswith("-"):
        raise LaunchError(f"git ref {ref!r} starts with '-': git would read it as an option")
    if re.search(r"[\s\x00-\x1f\x7f~^:?*\[\\]|\.\.|@\{", ref):
        raise LaunchError(f"git ref {ref!r} is not a branch, tag or commit name")


def mask_url(uri: str) -> str:
    """`uri` with its whole `user[:password]@` part masked (a password may hold `@` itself).

    >>> mask_url("https://user:p@ss@host/r.git")
    'https://********@host/r.git'
    """
    return re.sub(r"(://)[^/\s]*@", rf"\1{MASK}@", uri)
