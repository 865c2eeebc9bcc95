"""Which git remotes a job may name: https://, ssh:// and `user@host:path`, never with a password.

`file://`, `ext::` and other transports run local commands or read the
agent's disk, and credentials never travel with the job. The job spec checks a
git source's URI with `check_remote` as it is read, the git source again
before it fetches; `mask_url` hides a password in any URI a message shows.

Example:
    >>> check_remote("https://github.com/org/repo.git")
    >>> check_remote("git@github.com:org/repo.git")
    >>> check_remote("file:///etc")
    Traceback (most recent call last):
    ...
    prefect_launch.errors.LaunchError: git remote 'file:///etc': only https:// and ssh remotes are allowed
"""

from __future__ import annotations

import re
from urllib.parse import urlsplit

from prefect_launch.errors import LaunchError
from prefect_launch.redact import MASK

_SCP_LIKE = re.compile(r"^[\w.-]+@[\w.-]+:(?!//)[^\s]+$")


def check_remote(uri: str) -> None:
    """Refuse anything but https://, ssh:// and `user@host:path` remotes, and URIs holding a password."""
    parts = urlsplit(uri)
    if parts.scheme in {"https", "ssh"} and parts.hostname:
        if parts.password:
            raise LaunchError(
                f"git remote {mask_url(uri)!r} holds a password: put credentials in git's credential "
                f"helper or the gitCreds file ($PREFECT_LAUNCH_GIT_CREDENTIALS), never in the URI"
            )
        return
    if not parts.scheme and _SCP_LIKE.match(uri):
        return
    raise LaunchError(f"git remote {uri!r}: only https:// and ssh remotes are allowed")


def mask_url(uri: str) -> str:
    """`uri` with the password of its `user:password@` part masked."""
    return re.sub(r"(://[^:/@]+:)[^@/]+@", rf"\1{MASK}@", uri)
