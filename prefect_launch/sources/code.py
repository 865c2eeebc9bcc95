"""Code artifacts: a folder packed deterministically and stored by its sha256.

The same folder always packs to the same bytes (sorted entries, zeroed times
and owners), so its digest (the sha256 of the uncompressed tar) names its
content: storing it again is harmless.

Archives are safe by construction:

- packing takes regular files and folders only: a symbolic link, a FIFO, a
  socket or a device in the folder is refused with one line naming it (the
  names in `EXCLUDED_NAMES` and `*.pyc` are skipped whatever they are);
- packing streams: the tar is hashed while it is written, gzipped into a
  temporary file, and the storage block is written from that file;
- an agent downloads a stored archive into a temporary file, checks its
  digest while decompressing it in bounded chunks, and only then renames it
  into its cache, `<home>/code/<digest>.tar.gz`, read-only;
- every run unpacks that archive (streaming, links and special members
  refused, tarfile's `data` filter on top, the digest checked again) into a
  folder of its own (`<home>/runs/<run_id>/code`): runs never share, nor
  change, each other's code, and builds take their context from a fresh unpack.

Limits (`prefect_launch.settings`): `PREFECT_LAUNCH_MAX_CODE_BYTES` (1 GiB) caps
the uncompressed archive, `PREFECT_LAUNCH_MAX_CODE_FILES` (100,000) its entries;
both hold when packing and when unpacking.

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
import stat
import tarfile
import tempfile
import zlib
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from prefect_launch.errors import LaunchError
from prefect_launch.settings import settings
from prefect_launch.spec import CodeSource

# Folders that are never part of a job's code.
EXCLUDED_NAMES = {".git", "__pycache__", ".venv", "wandb", ".prefect-launch", ".pytest_cache"}
DEFAULT_STORAGE = "local-file-system/prefect-launch-code"

_CHUNK = 1 << 20
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}  # for messages
_WHAT = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def _code_limits() -> tuple[int, int]:
    """(bytes, entries) a code archive may hold, as the settings say now."""
    current = settings()
    return current.max_code_bytes, current.max_code_files


def _human(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]} {unit}iB"
    return f"{size} bytes"


class _TooLarge(LaunchError):
    """Code over the size cap."""


def _too_large(what: str, limit: int) -> LaunchError:
    return _TooLarge(f"{what} is larger than the {_human(limit)} limit on code "
                       f"(set $PREFECT_LAUNCH_MAX_CODE_BYTES to raise it)")


def _too_many(what: str, max_files: int) -> LaunchError:
    return LaunchError(f"{what} has more than {max_files} entries (set $PREFECT_LAUNCH_MAX_CODE_FILES to raise the limit)")


# ---------------------------------------------------------------------------------------------
# Packing


class _HashingWriter(io.RawIOBase):
    """Hashes and counts what tarfile writes, refuses to go past `limit`, forwards to `out` (if any)."""

    def __init__(self, out: BinaryIO | None, limit: int, what: str) -> None:
        self.out, self.limit, self.what = out, limit, what
        self.hash = hashlib.sha256()
        self.size = 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.size += len(data)
        if self.size > self.limit:
            raise _too_large(self.what, self.limit)
        self.hash.update(data)
        if self.out is not None:
            self.out.write(data)
        return len(data)

    def tell(self) -> int:
        return self.size

    @property
    def digest(self) -> str:
        return "sha256:" + self.hash.hexdigest()


def _refuse_entry(folder: Path, path: Path, mode: int, links: bool = False) -> LaunchError:
    relative = path.relative_to(folder).as_posix()
    if links and stat.S_ISLNK(mode):
        return LaunchError(f"build context {str(folder)!r}: {relative!r} is a symbolic link to "
                           f"{os.readlink(path)!r}, outside the folder; refused")
    what = _WHAT.get(stat.S_IFMT(mode), "not a regular file or folder")
    detail = ""
    if stat.S_ISLNK(mode):
        try:
            detail = f" (to {os.readlink(path)!r})"
        except OSError:
            pass
    return LaunchError(f"code folder {str(folder)!r}: {relative!r} is {what}{detail}; code archives hold only "
                       "regular files and folders: replace it with the file it stands for, or remove it")


def _walk(folder: Path, links: bool = False) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry to pack, in the order the archive has always had (a folder, its files, then its folders).

    With `links`, a symbolic link that stays inside `folder` is an entry too (build contexts of git
    checkouts); any other is refused.
    """

    def visit(directory: Path) -> Iterator[tuple[Path, os.stat_result]]:
        try:
            names = sorted(os.listdir(directory))
        except OSError as exc:
            raise LaunchError(f"code folder {str(folder)!r}: cannot read {_relative(folder, directory)!r}: "
                              f"{exc.strerror or exc}") from None
        files, dirs = [], []
        for name in names:
            path = directory / name
            try:
                name.encode("utf-8")
            except UnicodeEncodeError:
                raise LaunchError(f"code folder {str(folder)!r}: {_relative(folder, path)!r} has a name that is "
                                  "not UTF-8; rename it") from None
            try:
                info = os.lstat(path)
            except OSError as exc:
                raise LaunchError(f"code folder {str(folder)!r}: cannot read {_relative(folder, path)!r}: "
                                  f"{exc.strerror or exc}") from None
            if stat.S_ISDIR(info.st_mode):
                if name not in EXCLUDED_NAMES:
                    dirs.append((path, info))
                continue
            # A submodule's `.git` is a file; a `.venv` may be a link to a shared one.
            if name.endswith(".pyc") or name in EXCLUDED_NAMES:
                continue
            if links and stat.S_ISLNK(info.st_mode) and _link_inside(folder, path):
                files.append((path, info))
                continue
            if not stat.S_ISREG(info.st_mode):
                raise _refuse_entry(folder, path, info.st_mode, links)
            files.append((path, info))
        yield from files
        for path, info in dirs:
            yield path, info
            yield from visit(path)

    yield from visit(folder)


def _link_inside(folder: Path, path: Path) -> bool:
    target = os.readlink(path)
    inside = os.path.normpath(os.path.join(os.path.dirname(_relative(folder, path)), target))
    return not os.path.isabs(target) and inside != ".." and not inside.startswith("../")


def _relative(folder: Path, path: Path) -> str:
    return path.relative_to(folder).as_posix() or "."


def _normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
    info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
    info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
    return info


def _check_extra_name(name: str) -> None:
    path = PurePosixPath(name)
    if not name or path.is_absolute() or ".." in path.parts or "\\" in name:
        raise LaunchError(f"build context file {name!r}: a relative path inside the context is needed")


def write_tar(folder: Path, out: BinaryIO | None, extra_files: dict[str, bytes] | None = None,
              links: bool = False) -> tuple[str, int]:
    """Write the deterministic uncompressed tar of `folder` (plus `extra_files`) to `out`; return (digest, size).

    With `out=None` the tar is only hashed. Streams: memory does not grow with the folder.
    `links` keeps symbolic links that stay inside the folder (build contexts only: code
    archives hold regular files and folders).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LaunchError(f"code folder {str(folder)!r} does not exist or is not a folder")
    limit, max_files = _code_limits()
    writer = _HashingWriter(out, limit, f"code folder {str(folder)!r}")
    count = 0
    with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, status in _walk(folder, links):
            count += 1
            if count > max_files:
                raise _too_many(f"code folder {str(folder)!r}", max_files)
            # Built by hand, not by `gettarinfo`: a file with several hard links is packed as a file.
            info = tarfile.TarInfo(path.relative_to(folder).as_posix())
            info.mode = status.st_mode & 0o7777
            if stat.S_ISDIR(status.st_mode) or stat.S_ISLNK(status.st_mode):
                if stat.S_ISLNK(status.st_mode):
                    info.type, info.linkname = tarfile.SYMTYPE, os.readlink(path)
                else:
                    info.type = tarfile.DIRTYPE
                tar.addfile(_normalize(info))
                continue
            info.type, info.size = tarfile.REGTYPE, status.st_size
            if writer.size + info.size > limit:
                raise _too_large(f"code folder {str(folder)!r} (at {info.name!r})", limit)
            try:
                with path.open("rb") as handle:
                    tar.addfile(_normalize(info), handle)
            except LaunchError:
                raise
            except OSError as exc:
                # tarfile says "unexpected end of data" for a file that shrank while it was read.
                raise LaunchError(f"code folder {str(folder)!r}: cannot pack {info.name!r}: "
                                  f"{getattr(exc, 'strerror', None) or exc} (did it change while packing?)") from None
        for name, data in sorted((extra_files or {}).items()):
            _check_extra_name(name)
            info = _normalize(tarfile.TarInfo(name))
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return writer.digest, writer.size


def pack_tar(folder: Path, extra_files: dict[str, bytes] | None = None) -> bytes:
    """An image build context: the uncompressed tar of `folder` (plus `extra_files` by path), identical
    for identical content. Symbolic links that stay inside the folder (a git checkout's) are kept."""
    raw = io.BytesIO()
    write_tar(folder, raw, extra_files, links=True)
    return raw.getvalue()


def folder_digest(folder: Path) -> str:
    """The digest `folder` packs to, computed without keeping the archive."""
    return write_tar(folder, None)[0]


def pack_to_file(folder: Path, out: BinaryIO) -> str:
    """Write the gzipped tar of `folder` to the binary file `out`, streaming; return its digest."""
    with gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0) as compressed:
        digest, _ = write_tar(folder, compressed)
    return digest


def pack(folder: Path) -> tuple[str, bytes]:
    """Return (digest, gzipped tar) for `folder`, identical for identical content (in memory: small folders)."""
    out = io.BytesIO()
    digest = pack_to_file(folder, out)
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

    if isinstance(block, LocalFileSystem):
        target = Path(block._resolve_path(key))
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
        with block.filesystem.open(block._resolve_path(key), "wb") as out, path.open("rb") as source:
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

    if isinstance(block, LocalFileSystem):
        path = Path(block._resolve_path(key))
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist")
        with path.open("rb") as source:
            shutil.copyfileobj(source, out, _CHUNK)
    elif hasattr(block, "download_object_to_file_object"):  # S3Bucket, GcsBucket, AzureBlobStorageContainer
        block.download_object_to_file_object(key, out, _sync=True)
    elif isinstance(block, RemoteFileSystem):
        with block.filesystem.open(block._resolve_path(key), "rb") as source:
            shutil.copyfileobj(source, out, _CHUNK)
    else:
        out.write(block.read_path(key, _sync=True))


def upload(folder: Path, storage: str) -> CodeSource:
    """Store the folder's packed content under its digest and return the source.

    The archive is spooled to a temporary file (hashed while it is written), then the
    storage block is written from that file.
    """
    with tempfile.TemporaryDirectory(prefix="prefect-launch-pack-") as spool:
        archive = Path(spool) / "code.tar.gz"
        with archive.open("wb") as out:
            digest = pack_to_file(folder, out)
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
                    raise _too_large(what, limit) from None
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
            raise _too_large(f"{self.what} unpacked", self.limit)
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
        limit, max_files = _code_limits()
        with gzip.open(archive, "rb") as compressed:
            reader = _HashingReader(compressed, limit, what)
            regular: set[str] = set()
            count = 0
            try:
                with tarfile.open(fileobj=reader, mode="r|") as tar:
                    for member in tar:
                        count += 1
                        if count > max_files:
                            raise _too_many(what, max_files)
                        _check_member(member, regular, what)
                        # A folder keeps the default mode: a read-only one would stop its files.
                        tar.extract(member, staging, set_attrs=not member.isdir(), filter="data")
                        tar.members.clear()  # a stream's members need not be kept
                        if member.isreg():
                            regular.add(member.name)
                reader.drain()  # the tar's end blocks count in its digest
            except _TooLarge:
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
