"""Code artifacts: a folder packed deterministically and stored by its sha256.

The same folder always packs to the same bytes (sorted entries, zeroed times
and owners), so its digest names its content: storing it again is harmless,
and agents unpack each digest once into their cache.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "train.py").write_text("print(1)")
    >>> digest, data = pack(d)
    >>> digest == pack(d)[0] and digest.startswith("sha256:")
    True
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from prefect_launch.errors import LaunchError
from prefect_launch.spec import CodeSource

# Folders that are never part of a job's code.
EXCLUDED_NAMES = {".git", "__pycache__", ".venv", "wandb", ".prefect-launch", ".pytest_cache"}
DEFAULT_STORAGE = "local-file-system/prefect-launch-code"
STORAGE_ENV = "PREFECT_LAUNCH_CODE_STORAGE"


def pack_tar(folder: Path, extra_files: dict[str, bytes] | None = None) -> bytes:
    """An uncompressed tar of `folder` (plus `extra_files` by path), identical for identical content."""
    folder = Path(folder)
    if not folder.is_dir():
        raise LaunchError(f"code folder {str(folder)!r} does not exist or is not a folder")
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path in _walk(folder):
            info = tar.gettarinfo(str(path), arcname=path.relative_to(folder).as_posix())
            _normalize(info)
            if info.isfile():
                with path.open("rb") as handle:
                    tar.addfile(info, handle)
            else:
                tar.addfile(info)
        for name, data in sorted((extra_files or {}).items()):
            info = _normalize(tarfile.TarInfo(name))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return raw.getvalue()


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
    return info


def pack(folder: Path) -> tuple[str, bytes]:
    """Return (digest, gzipped tar) for `folder`, identical for identical content."""
    raw = pack_tar(folder)
    return "sha256:" + hashlib.sha256(raw).hexdigest(), gzip.compress(raw, mtime=0)


def _walk(folder: Path):
    for root, dirs, files in os.walk(folder):
        dirs[:] = sorted(d for d in dirs if d not in EXCLUDED_NAMES)
        root_path = Path(root)
        if root_path != folder:
            yield root_path
        for name in sorted(files):
            # A submodule's `.git` is a file.
            if name.endswith(".pyc") or name in EXCLUDED_NAMES:
                continue
            yield root_path / name


def _load_storage(name: str):
    from prefect.blocks.core import Block
    from prefect.utilities.dispatch import lookup_type

    # `Block.load` imports every installed integration to find the block's class (about 3 s of
    # CPU, once per process); a class already imported, as Prefect's local-file-system is, loads
    # as itself. Any other slug goes through Block, which finds its integration.
    slug, _, document = name.partition("/")
    try:
        block_class = lookup_type(Block, slug)
    except KeyError:
        block_class = Block
    # `_sync=True`: these helpers are sync even when called under an event loop. A block
    # class loads by document name, Block by slug/name.
    return block_class.load(name if block_class is Block else document, _sync=True)


def code_storage(name: str | None, home: Path) -> str:
    """The storage block code goes to: `name`, else $PREFECT_LAUNCH_CODE_STORAGE, else the local default.

    Any Prefect filesystem block with `read_path`/`write_path` works: `s3-bucket/NAME`
    (prefect-aws), `gcs-bucket/NAME` (prefect-gcp), `remote-file-system/NAME`.
    """
    name = name or os.environ.get(STORAGE_ENV)
    if not name:
        return ensure_default_storage(home)
    if "/" not in name:
        raise LaunchError(f"code storage {name!r}: name a block as <block-type-slug>/<name>, e.g. s3-bucket/code")
    try:
        _load_storage(name)
    except (ValueError, KeyError) as exc:
        raise LaunchError(f"code storage block {name!r} not found: {exc}") from None
    return name


def ensure_default_storage(home: Path) -> str:
    """Create the default local code store block if it is missing; return its name."""
    from prefect.filesystems import LocalFileSystem

    block_name = DEFAULT_STORAGE.split("/", 1)[1]
    try:
        LocalFileSystem.load(block_name, _sync=True)
    except ValueError:
        LocalFileSystem(basepath=str(home / "code-store")).save(block_name, overwrite=True, _sync=True)
    return DEFAULT_STORAGE


def upload(folder: Path, storage: str) -> CodeSource:
    """Store the folder's packed content under its digest and return the source."""
    digest, data = pack(folder)
    # Content-addressed: rewriting the same name writes the same bytes, so no
    # existence check (which read the whole archive back) is needed.
    _load_storage(storage).write_path(f"{digest.removeprefix('sha256:')}.tar.gz", data, _sync=True)
    return CodeSource(digest=digest, storage=storage)


def cache_path(source: CodeSource, cache_root: Path) -> Path:
    return cache_root / source.digest.removeprefix("sha256:")


def fetch(source: CodeSource, cache_root: Path) -> Path:
    """Unpack the stored code into `cache_root/<digest>` (once) and return that folder."""
    target = cache_path(source, cache_root)
    if target.is_dir():
        return target
    hexdigest = source.digest.removeprefix("sha256:")
    try:
        data = _load_storage(source.storage).read_path(f"{hexdigest}.tar.gz", _sync=True)
    except (ValueError, FileNotFoundError, OSError) as exc:
        raise LaunchError(f"code {source.digest} not found in storage {source.storage!r}: {exc}") from None
    raw = gzip.decompress(data)
    if hashlib.sha256(raw).hexdigest() != hexdigest:
        raise LaunchError(f"code {source.digest} in storage {source.storage!r} does not match its digest")
    cache_root.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=cache_root, prefix=".unpack-"))
    with tarfile.open(fileobj=io.BytesIO(raw)) as tar:
        tar.extractall(staging, filter="data")
    try:
        staging.rename(target)
    except OSError:
        # Another run unpacked the same digest first; theirs is identical.
        shutil.rmtree(staging, ignore_errors=True)
    return target
