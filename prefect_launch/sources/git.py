"""Git sources: clone a repository at a branch, tag or commit, with its submodules.

Only https and ssh remotes are accepted (`prefect_launch.git_remotes`): `file://`,
`ext::` and other transports run local commands or read the agent's disk.
Credentials never travel with the job: git finds them the way it does for the
agent's user (its credential helper, `SSH_AUTH_SOCK`), or in a `gitCreds` file
(git's credential-store format, one `https://user:token@host` per line) named
by `PREFECT_LAUNCH_GIT_CREDENTIALS`. A URI with a password in it is refused.

Checkouts are cached per commit under `<home>/git/<commit>`; a ref that is a
full commit hash is served from that cache without touching the remote. No run
works in the cache: each gets a copy of the checkout (`working_copy`) of its own.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

from prefect_launch.errors import LaunchError
from prefect_launch.git_remotes import check_ref, check_remote, mask_url
from prefect_launch.settings import settings

_COMMIT = re.compile(r"^[0-9a-f]{40}$")
_GIT_TIMEOUT = 600


def _git_command(*args: str) -> list[str]:
    """`git` with the transport locked down and the agent's credential sources only."""
    options = ["-c", "protocol.allow=never", "-c", "protocol.https.allow=always", "-c", "protocol.ssh.allow=always"]
    credentials = settings().git_credentials
    if credentials:
        # An empty helper first resets helpers from the agent's git config.
        options += ["-c", "credential.helper=", "-c", f"credential.helper=store --file={credentials}"]
    return ["git", *options, *args]


def _git(args: list[str], cwd: Path | None = None) -> str:
    env = {**os.environ, "GIT_TERMINAL_PROMPT": "0", "GIT_ALLOW_PROTOCOL": "https:ssh", "GIT_ASKPASS": "true"}
    try:
        done = subprocess.run(
            _git_command(*args), cwd=cwd, env=env, capture_output=True, text=True, timeout=_GIT_TIMEOUT
        )
    except FileNotFoundError:
        raise LaunchError("git jobs need the git command on the agent's PATH") from None
    except subprocess.TimeoutExpired:
        raise LaunchError(f"git {args[0]} took longer than {_GIT_TIMEOUT} s") from None
    if done.returncode != 0:
        output = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise LaunchError(f"git {args[0]} failed: {mask_url(output[-1])}")
    return done.stdout.strip()


def remote_commit(uri: str, ref: str | None) -> str | None:
    """The commit a branch or tag points at, without cloning; None if `ls-remote` does not list it."""
    if ref and _COMMIT.match(ref):
        return ref
    wanted = ref or "HEAD"
    listing = _git(["ls-remote", "--", uri, wanted, f"refs/tags/{wanted}^{{}}"])
    commits: dict[str, str] = {}
    for line in listing.splitlines():
        commit, _, name = line.partition("\t")
        commits[name] = commit
    # A peeled annotated tag (`^{}`) names the commit; the plain tag names the tag object.
    for name in (f"refs/tags/{wanted}^{{}}", f"refs/heads/{wanted}", f"refs/tags/{wanted}", wanted):
        if name in commits:
            return commits[name]
    return None


def fetch(uri: str, ref: str | None, cache_root: Path) -> tuple[Path, str]:
    """Check out `uri` at `ref` with its submodules into `cache_root/<commit>`; return (folder, commit)."""
    check_remote(uri)
    if ref:
        check_ref(ref)
    commit = remote_commit(uri, ref)
    if commit and (cache_root / commit).is_dir():
        return cache_root / commit, commit
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=".clone-"))
    try:
        _git(["clone", "--quiet", "--no-checkout", "--", uri, str(staging)])
        target = commit or ref or "HEAD"
        if not _resolves(staging, target):
            raise LaunchError(f"git ref {ref!r} not found in {mask_url(uri)}")
        _git(["checkout", "--quiet", "--detach", target], cwd=staging)
        _git(["submodule", "update", "--quiet", "--init", "--recursive"], cwd=staging)
        commit = _git(["rev-parse", "HEAD"], cwd=staging)
        folder = cache_root / commit
        try:
            staging.rename(folder)
        except OSError:
            # Another run checked out the same commit first; theirs is identical.
            shutil.rmtree(staging, ignore_errors=True)
        return folder, commit
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def _resolves(repo: Path, ref: str) -> bool:
    try:
        _git(["rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"], cwd=repo)
        return True
    except LaunchError:
        return False


def working_copy(checkout: Path, workdir: Path) -> Path:
    """A fresh copy of a cached checkout (its `.git` and submodules included) in `workdir`, the run's own.

    Copied into a staging folder beside `workdir`, renamed into place, removed on failure.
    """
    workdir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=workdir.parent, prefix=".copy-"))
    try:
        try:
            shutil.copytree(checkout, staging / "tree", symlinks=True)
            if workdir.exists():  # a run started again (requeued, adopted) gets a fresh copy
                shutil.rmtree(workdir)
        except OSError as exc:
            raise LaunchError(f"cannot copy the checkout {str(checkout)!r} for the run: {exc}") from None
        (staging / "tree").rename(workdir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return workdir
