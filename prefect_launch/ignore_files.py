"""What a code folder's ignore files leave out of its archive: `.gitignore`, `.dockerignore`, `.prefectignore`.

A folder is packed as its owner expects from the tools they know: git (every `.gitignore`, each
relative to its own folder, a deeper one overriding, the last matching pattern deciding), Docker
(`.dockerignore` at the root, its patterns anchored at the root: `*.ckpt` is the root's only, as
`docker build` reads it) and Prefect (`.prefectignore` at the root, gitignore patterns, as `prefect
deploy` reads it). A path any of the three leaves out is left out. Patterns are matched by
`pathspec`, the matcher Prefect itself uses for `.prefectignore`.

Example:
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / ".gitignore").write_text("data/\\n*.ckpt\\n!best.ckpt\\n")
    >>> _ = (d / ".dockerignore").write_text("notes.md\\n")
    >>> rules = IgnoreRules(d)
    >>> [rules.left_out_by(p, is_dir) for p, is_dir in [("data", True), ("a.ckpt", False), ("best.ckpt", False),
    ...                                                  ("notes.md", False), ("sub/notes.md", False)]]
    ['.gitignore', '.gitignore', None, '.dockerignore', None]
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import pathspec

from prefect_launch.errors import LaunchError

GITIGNORE, DOCKERIGNORE, PREFECTIGNORE = ".gitignore", ".dockerignore", ".prefectignore"
MAX_IGNORE_FILE_BYTES = 1_000_000


def _read_lines(path: Path) -> list[str]:
    try:
        if path.stat().st_size > MAX_IGNORE_FILE_BYTES:
            raise LaunchError(f"{path}: an ignore file of over {MAX_IGNORE_FILE_BYTES:,} bytes; refused")
        return path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError as exc:
        raise LaunchError(f"{path}: cannot read it: {exc.strerror or exc}") from None


def _anchored(line: str) -> str:
    """A `.dockerignore` pattern as the gitignore pattern that means the same: relative to the root only."""
    stripped = line.strip()
    if not stripped or stripped.startswith("#"):
        return ""
    negate = stripped.startswith("!")
    pattern = stripped[1:].strip() if negate else stripped
    return ("!" if negate else "") + "/" + pattern.lstrip("/")


class IgnoreRules:
    """The ignore files of one folder, read once: `left_out_by` says which file leaves a path out."""

    def __init__(self, root: Path) -> None:
        self.root = root
        # Each `.gitignore` met so far, by the folder it sits in (relative to the root, "" for the root).
        self._gitignores: dict[str, pathspec.GitIgnoreSpec] = {}
        self._root_files: list[tuple[str, pathspec.GitIgnoreSpec]] = []
        self.enter("")
        for name, convert in ((PREFECTIGNORE, str), (DOCKERIGNORE, _anchored)):
            path = self.root / name
            if path.is_file():
                self._root_files.append((name, pathspec.GitIgnoreSpec.from_lines(map(convert, _read_lines(path)))))

    def enter(self, folder: str) -> None:
        """Read the `.gitignore` of `folder` (relative to the root), if it has one, before its entries are asked about."""
        path = self.root / folder / GITIGNORE
        if path.is_file():
            self._gitignores[folder] = pathspec.GitIgnoreSpec.from_lines(_read_lines(path))

    def left_out_by(self, relative: str, is_dir: bool) -> str | None:
        """The ignore file (its path in the folder) that leaves `relative` out, or None if it is packed."""
        suffix = "/" if is_dir else ""
        for name, spec in self._root_files:
            if spec.match_file(relative + suffix):
                return name
        decided: str | None = None
        parts = PurePosixPath(relative).parts
        # Root first, deeper folders after: the last matching pattern of the deepest file that has one decides.
        for depth in range(len(parts)):
            folder = "/".join(parts[:depth])
            spec = self._gitignores.get(folder)
            if spec is None:
                continue
            result = spec.check_file("/".join(parts[depth:]) + suffix)
            if result.include is not None:
                decided = f"{folder}/{GITIGNORE}".lstrip("/") if result.include else None
        return decided
