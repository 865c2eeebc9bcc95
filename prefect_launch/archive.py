"""A folder as a deterministic tar: code archives (sources) and image build contexts (builders).

The same folder always packs to the same bytes (sorted entries, zeroed times
and owners), so the sha256 of the uncompressed tar names its content, for a
stored code artifact as for an image tag. Packing takes regular files and
folders only: a symbolic link, a FIFO, a socket or a device in the folder is
refused with one line naming it (the names in `EXCLUDED_NAMES` and `*.pyc` are
skipped whatever they are; a build context keeps links that stay inside the
folder). Packing streams: the tar is hashed while it is written, and memory
does not grow with the folder. A code archive also leaves out what the
folder's `.gitignore`, `.dockerignore` and `.prefectignore` files do
(`ignore_files.py`), and says what it left out (`Packed.left_out`).

Limits (`prefect_launch.settings`): `PREFECT_LAUNCH_MAX_CODE_BYTES` (1 GiB) caps
the uncompressed archive, `PREFECT_LAUNCH_MAX_CODE_FILES` (100,000) its entries;
`code_limits()` reads them for unpacking too.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); _ = (d / "train.py").write_text("print(1)")
    >>> pack_tar(d) == pack_tar(d, {})
    True
    >>> _ = (d / ".gitignore").write_text("*.ckpt\\n"); _ = (d / "model.ckpt").write_text("weights")
    >>> packed = write_tar(d, None, ignore=True)
    >>> packed.digest.startswith("sha256:"), packed.files, packed.left_out
    (True, 2, [('model.ckpt', '.gitignore')])
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath
from typing import BinaryIO, Iterator

from prefect_launch.errors import LaunchError
from prefect_launch.ignore_files import IgnoreRules
from prefect_launch.settings import settings

# Folders that are never part of a job's code.
EXCLUDED_NAMES = {".git", "__pycache__", ".venv", "wandb", ".prefect-launch", ".pytest_cache"}
_SIZE_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}  # for messages
_WHAT = {
    stat.S_IFLNK: "a symbolic link",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def code_limits() -> tuple[int, int]:
    """(bytes, entries) a code archive may hold, as the settings say now."""
    current = settings()
    return current.max_code_bytes, current.max_code_files


@dataclass
class Packed:
    """What packing a folder made: its digest, the tar's size, how many files, and what was left out by which
    ignore file (a folder's path ends in `/`)."""

    digest: str
    size: int
    files: int
    left_out: list[tuple[str, str]] = field(default_factory=list)

    def summary(self, gzipped: int | None = None, shown: int = 8) -> str:
        """One line for the person packing: the size packed, and what the ignore files left out.

        >>> Packed("sha256:0", 3 << 20, 12, [("data/", ".gitignore"), ("notes.md", ".dockerignore")]).summary(1 << 20)
        'packed 12 files, 3.0 MiB (1.0 MiB gzipped); left out data/ (.gitignore), notes.md (.dockerignore)'
        """
        line = f"packed {self.files} files, {human_size(self.size)}"
        if gzipped is not None:
            line += f" ({human_size(gzipped)} gzipped)"
        if self.left_out:
            named = ", ".join(f"{path} ({by})" for path, by in self.left_out[:shown])
            more = f" and {len(self.left_out) - shown} more" if len(self.left_out) > shown else ""
            line += f"; left out {named}{more}"
        return line


def human_size(size: int) -> str:
    """A size in bytes for people.

    >>> human_size(512), human_size(48_200), human_size(3 << 30)
    ('512 bytes', '47.1 KiB', '3.0 GiB')
    """
    for unit in ("T", "G", "M", "K"):
        if size >= _SIZE_UNITS[unit]:
            return f"{size / _SIZE_UNITS[unit]:.1f} {unit}iB"
    return f"{size} bytes"


def _human(size: int) -> str:
    for unit in ("T", "G", "M", "K"):
        if size >= _SIZE_UNITS[unit] and size % _SIZE_UNITS[unit] == 0:
            return f"{size // _SIZE_UNITS[unit]} {unit}iB"
    return f"{size} bytes"


class TooLarge(LaunchError):
    """Code over the size cap."""


def too_large(what: str, limit: int) -> LaunchError:
    return TooLarge(f"{what} is larger than the {_human(limit)} limit on code "
                       f"(set $PREFECT_LAUNCH_MAX_CODE_BYTES to raise it)")


def too_many(what: str, max_files: int) -> LaunchError:
    return LaunchError(f"{what} has more than {max_files} entries (set $PREFECT_LAUNCH_MAX_CODE_FILES to raise the limit)")


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
            raise too_large(self.what, self.limit)
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


def _walk(folder: Path, links: bool = False, rules: IgnoreRules | None = None,
          left_out: list[tuple[str, str]] | None = None) -> Iterator[tuple[Path, os.stat_result]]:
    """Every entry to pack, in the order the archive has always had (a folder, its files, then its folders).

    With `links`, a symbolic link that stays inside `folder` is an entry too (build contexts of git
    checkouts); any other is refused. With `rules`, what the folder's ignore files leave out is
    skipped (a folder without being read) and recorded in `left_out`.
    """

    def visit(directory: Path) -> Iterator[tuple[Path, os.stat_result]]:
        if rules is not None and directory != folder:
            rules.enter(_relative(folder, directory))
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
            if name in EXCLUDED_NAMES or (name.endswith(".pyc") and not stat.S_ISDIR(info.st_mode)):
                continue  # a submodule's `.git` is a file; a `.venv` may be a link to a shared one
            if rules is not None:
                relative = _relative(folder, path)
                by = rules.left_out_by(relative, stat.S_ISDIR(info.st_mode))
                if by is not None:
                    if left_out is not None:
                        left_out.append((relative + ("/" if stat.S_ISDIR(info.st_mode) else ""), by))
                    continue
            if stat.S_ISDIR(info.st_mode):
                dirs.append((path, info))
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
              links: bool = False, ignore: bool = False) -> Packed:
    """Write the deterministic uncompressed tar of `folder` (plus `extra_files`) to `out`.

    With `out=None` the tar is only hashed. Streams: memory does not grow with the folder.
    `links` keeps symbolic links that stay inside the folder (build contexts only: code
    archives hold regular files and folders). `ignore` leaves out what the folder's ignore
    files do (code archives; a build context is packed from code already so filtered).
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise LaunchError(f"code folder {str(folder)!r} does not exist or is not a folder")
    limit, max_files = code_limits()
    writer = _HashingWriter(out, limit, f"code folder {str(folder)!r}")
    count = files = 0
    left_out: list[tuple[str, str]] = []
    rules = IgnoreRules(folder) if ignore else None
    with tarfile.open(fileobj=writer, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for path, status in _walk(folder, links, rules, left_out):
            count += 1
            if count > max_files:
                raise too_many(f"code folder {str(folder)!r}", max_files)
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
            files += 1
            if writer.size + info.size > limit:
                raise too_large(f"code folder {str(folder)!r} (at {info.name!r})", limit)
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
    return Packed(writer.digest, writer.size, files, left_out)


def pack_tar(folder: Path, extra_files: dict[str, bytes] | None = None) -> bytes:
    """An image build context: the uncompressed tar of `folder` (plus `extra_files` by path), identical
    for identical content. Symbolic links that stay inside the folder (a git checkout's) are kept."""
    raw = io.BytesIO()
    write_tar(folder, raw, extra_files, links=True)
    return raw.getvalue()
