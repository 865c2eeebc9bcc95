"""Code artifacts: a folder packed deterministically and stored by its sha256.

The folder is packed by `prefect_launch.archive` (the same folder, the same
bytes), so its digest (the sha256 of the uncompressed tar) names its content:
storing it again is harmless.

Archives are safe by construction:

- packing takes regular files and folders only (`archive.py`), and streams:
  the tar is hashed while it is written, gzipped into a temporary file, and
  the storage block is written from that file;
- an agent downloads a stored archive into a temporary file, checks its
  digest while decompressing it in bounded chunks, and only then renames it
  into its cache, `<home>/code/<digest>.tar.gz`, read-only;
- every run unpacks that archive (streaming, links and special members
  refused, tarfile's `data` filter on top, the digest checked again) into a
  folder of its own (`<home>/runs/<run_id>/code`): runs never share, nor
  change, each other's code, and builds take their context from a fresh unpack.

The limits on code (`archive.code_limits`: PREFECT_LAUNCH_MAX_CODE_BYTES and
PREFECT_LAUNCH_MAX_CODE_FILES) hold when packing and when unpacking.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "train.py").write_text("print(1)")
    >>> digest, data = pack(d)
    >>> digest == pack(d)[0] == folder_digest(d) and digest.startswith("sha256:")
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
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Callable

from prefect_launch.archive import Packed, TooLarge, code_limits, too_large, too_many, write_tar
from prefect_launch.errors import LaunchError
from prefect_launch.settings import settings
from prefect_launch.spec import CodeSource

DEFAULT_STORAGE = "local-file-system/prefect-launch-code"

_CHUNK = 1 << 20


# ---------------------------------------------------------------------------------------------
# Packing


def folder_digest(folder: Path) -> str:
    """The digest `folder` packs to, computed without keeping the archive."""
    return write_tar(folder, None, ignore=True).digest


def pack_to_file(folder: Path, out: BinaryIO) -> Packed:
    """Write the gzipped tar of `folder` (less what its ignore files leave out) to the binary file `out`, streaming."""
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as compressed:
        return write_tar(folder, compressed, ignore=True)


def pack(folder: Path) -> tuple[str, bytes]:
    """Return (digest, gzipped tar) for `folder`, identical for identical content (in memory: small folders)."""
    out = io.BytesIO()
    digest = pack_to_file(folder, out).digest
    return digest, out.getvalue()


# ---------------------------------------------------------------------------------------------
# Storage


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
    name = name or settings().code_storage
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


def _write_from_file(block, key: str, path: Path) -> None:
    """Write the file at `path` to `key` in a storage block without reading it into memory where the block allows."""
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    from prefect_launch.prefect_internals import storage_path

    if isinstance(block, LocalFileSystem):
        target = Path(storage_path(block, key))
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, staging = tempfile.mkstemp(dir=target.parent, prefix=".upload-")
        try:
            with os.fdopen(fd, "wb") as out, path.open("rb") as source:
                shutil.copyfileobj(source, out, _CHUNK)
            os.replace(staging, target)
        except BaseException:
            Path(staging).unlink(missing_ok=True)
            raise
    elif hasattr(block, "upload_from_path"):  # S3Bucket, GcsBucket, AzureBlobStorageContainer
        block.upload_from_path(str(path), key, _sync=True)
    elif isinstance(block, RemoteFileSystem):
        with block.filesystem.open(storage_path(block, key), "wb") as out, path.open("rb") as source:
            shutil.copyfileobj(source, out, _CHUNK)
    else:
        block.write_path(key, path.read_bytes(), _sync=True)


class _CappedFile(io.RawIOBase):
    """A file that takes sequential writes up to `limit` bytes (a download's size cap), then refuses."""

    def __init__(self, out: BinaryIO, limit: int) -> None:
        self.out, self.limit, self.size, self.over = out, limit, 0, False

    def writable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return False

    def write(self, data) -> int:
        self.size += len(data)
        if self.size > self.limit:
            self.over = True
            raise OSError("the stored archive is larger than the code size limit")
        self.out.write(data)
        return len(data)


def _read_to_file(block, key: str, out: _CappedFile) -> None:
    """Copy `key` from a storage block into `out`, streaming where the block allows."""
    from prefect.filesystems import LocalFileSystem, RemoteFileSystem

    from prefect_launch.prefect_internals import storage_path

    if isinstance(block, LocalFileSystem):
        path = Path(storage_path(block, key))
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        with path.open("rb") as source:
            shutil.copyfileobj(source, out, _CHUNK)
    elif hasattr(block, "download_object_to_file_object"):  # S3Bucket, GcsBucket, AzureBlobStorageContainer
        block.download_object_to_file_object(key, out, _sync=True)
    elif isinstance(block, RemoteFileSystem):
        with block.filesystem.open(storage_path(block, key), "rb") as source:
            shutil.copyfileobj(source, out, _CHUNK)
    else:
        out.write(block.read_path(key, _sync=True))


def upload(folder: Path, storage: str, report: Callable[[Packed, int], None] | None = None) -> CodeSource:
    """Store the folder's packed content under its digest and return the source.

    The archive is spooled to a temporary file (hashed while it is written), then the
    storage block is written from that file. `report` is told what was packed and the
    gzipped size, before it is stored.
    """
    with tempfile.TemporaryDirectory(prefix="prefect-launch-pack-") as spool:
        archive = Path(spool) / "code.tar.gz"
        with archive.open("wb") as out:
            packed = pack_to_file(folder, out)
        digest = packed.digest
        if report is not None:
            report(packed, archive.stat().st_size)
        # Content-addressed: rewriting the same name writes the same content, so no
        # existence check (which read the whole archive back) is needed.
        try:
            _write_from_file(_load_storage(storage), f"{digest.removeprefix('sha256:')}.tar.gz", archive)
        except LaunchError:
            raise
        except Exception as exc:
            raise LaunchError(f"could not store code in {storage!r}: {exc.__class__.__name__}: {exc}") from None
    return CodeSource(digest=digest, storage=storage)


# ---------------------------------------------------------------------------------------------
# Fetching and unpacking


def cache_path(source: CodeSource, cache_root: Path) -> Path:
    """The verified archive of `source` in an agent's cache (read-only; runs unpack copies of it)."""
    return cache_root / f"{source.digest.removeprefix('sha256:')}.tar.gz"


def fetch_archive(source: CodeSource, cache_root: Path) -> Path:
    """The archive of `source` in `cache_root`, downloaded once per agent (size-capped; `unpack` checks
    its digest on every use and drops it from the cache if it does not match or is too large)."""
    target = cache_path(source, cache_root)
    if target.is_file():
        return target
    hexdigest = source.digest.removeprefix("sha256:")
    what = f"code {source.digest} in storage {source.storage!r}"
    cache_root.mkdir(parents=True, exist_ok=True)
    fd, staging_name = tempfile.mkstemp(dir=cache_root, prefix=".download-")
    staging = Path(staging_name)
    try:
        limit = settings().max_code_bytes
        # gzip never makes a tar much bigger than it is: 1% and 64 KiB of headroom.
        with os.fdopen(fd, "wb") as handle:
            capped = _CappedFile(handle, limit + limit // 100 + (64 << 10))
            try:
                _read_to_file(_load_storage(source.storage), f"{hexdigest}.tar.gz", capped)
            except LaunchError:
                raise
            except Exception as exc:
                if capped.over:
                    raise too_large(what, limit) from None
                raise LaunchError(f"code {source.digest} not found in storage {source.storage!r}: "
                                  f"{exc.__class__.__name__}: {exc}") from None
        staging.chmod(0o444)
        # Another run may have stored the same digest meanwhile: theirs is identical.
        os.replace(staging, target)
    except BaseException:
        staging.unlink(missing_ok=True)
        raise
    return target


class _HashingReader(io.RawIOBase):
    """Hashes and counts what is read through it; refuses to read past `limit` bytes."""

    def __init__(self, source: BinaryIO, limit: int, what: str) -> None:
        self.source, self.limit, self.what = source, limit, what
        self.hash, self.size = hashlib.sha256(), 0

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        data = self.source.read(_CHUNK if n is None or n < 0 else n)
        self.size += len(data)
        if self.size > self.limit:
            raise too_large(f"{self.what} unpacked", self.limit)
        self.hash.update(data)
        return data

    def readinto(self, buffer) -> int:
        data = self.read(len(buffer))
        buffer[: len(data)] = data
        return len(data)

    def drain(self) -> None:
        while self.read(_CHUNK):
            pass


def _check_member(member: tarfile.TarInfo, regular: set[str], what: str) -> None:
    name = member.name
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name or "\0" in name:
        raise LaunchError(f"{what}: entry {name!r} is outside the code folder; refused")
    if member.isdir() or member.isreg():
        return
    if member.islnk() and member.linkname in regular:
        return  # a hard link to a file of the same archive (older agents packed hard links so)
    kind = "a symbolic link" if member.issym() else "a hard link" if member.islnk() else "a special file"
    raise LaunchError(f"{what}: entry {name!r} is {kind}; code archives hold only regular files and folders")


def unpack(archive: Path, hexdigest: str, target: Path, what: str) -> Path:
    """Unpack a cached archive into `target` (a new folder), streaming, checking members, size and digest.

    The archive is unpacked into a staging folder beside `target` and renamed into place only
    once its digest matched; on any failure the staging folder is removed.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=".unpack-"))
    try:
        limit, max_files = code_limits()
        with gzip.open(archive, "rb") as compressed:
            reader = _HashingReader(compressed, limit, what)
            regular: set[str] = set()
            count = 0
            try:
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    for member in tar:
                        count += 1
                        if count > max_files:
                            raise too_many(what, max_files)
                        _check_member(member, regular, what)
                        # A folder keeps the default mode: a read-only one would stop its files.
                        tar.extract(member, staging, set_attrs=not member.isdir(), filter="data")
                        tar.members.clear()  # a stream's members need not be kept
                        if member.isreg():
                            regular.add(member.name)
                reader.drain()  # the tar's end blocks count in its digest
            except TooLarge:
                archive.unlink(missing_ok=True)  # never trusted: not kept in the cache
                raise
            except LaunchError:
                raise
            except (tarfile.TarError, OSError, EOFError, zlib.error) as exc:
                archive.unlink(missing_ok=True)
                raise LaunchError(f"{what} cannot be unpacked: {exc}") from None
        if reader.hash.hexdigest() != hexdigest:
            archive.unlink(missing_ok=True)  # a changed or forged cache entry: fetched again next time
            raise LaunchError(f"{what} does not match its digest")
        if target.exists():  # a run started again (requeued, adopted) gets fresh code
            try:
                shutil.rmtree(target)
            except OSError as exc:
                raise LaunchError(f"cannot replace the run's code folder {str(target)!r}: {exc.strerror or exc}") from None
        staging.rename(target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return target


def work_path(run_dir: Path) -> Path:
    """Where a run's own copy of its code goes."""
    return run_dir / "code"


def fetch(source: CodeSource, cache_root: Path, workdir: Path) -> Path:
    """A fresh copy of the stored code in `workdir` (the run's own), from the verified cached archive."""
    archive = fetch_archive(source, cache_root)
    return unpack(archive, source.digest.removeprefix("sha256:"), workdir, f"code {source.digest}")
