"""Code archives are safe by construction, and every run works in a copy of its code of its own.

Real files and folders (links, FIFOs, sockets), real tar archives (crafted ones stored in the real
code store), a real Prefect server and real local-process agents.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import socket
import stat
import tarfile
import textwrap
import tracemalloc
import uuid
from pathlib import Path

import pytest

from conftest import cli, flow_run_of, job_report, launch, run_id_of, run_logs, unique, wait_for_final

from prefect_launch import archive
from prefect_launch.errors import LaunchError
from prefect_launch.sources import code
from prefect_launch.spec import CodeSource

NO_SERVER = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}


def _folder(path: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        (path / name).parent.mkdir(parents=True, exist_ok=True)
        (path / name).write_text(textwrap.dedent(text))
    return path


def _leftovers(*roots: Path) -> list[Path]:
    return [p for root in roots if root.exists() for p in root.rglob("*")
            if p.name.startswith((".unpack-", ".download-", ".copy-", ".upload-"))]


class _Zeros(io.RawIOBase):
    """`size` zero bytes, read in chunks: a huge member without a huge buffer."""

    def __init__(self, size: int) -> None:
        self.left = size

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.left)
        buffer[:n] = bytes(n)
        self.left -= n
        return n


class _Hashing(io.RawIOBase):
    def __init__(self, out) -> None:
        self.out, self.hash, self.size = out, hashlib.sha256(), 0

    def writable(self) -> bool:
        return True

    def write(self, data) -> int:
        self.hash.update(data)
        self.size += len(data)
        return self.out.write(data)

    def tell(self) -> int:
        return self.size


def _store_archive(members: list[tuple[tarfile.TarInfo, io.RawIOBase | None]], digest: str | None = None) -> str:
    """A crafted tar, gzipped into the real default code store; returns the digest it is stored under
    (its own, unless `digest` names another)."""
    from conftest import _session

    storage = code._load_storage(code.ensure_default_storage(_session["home"]))
    staging = Path(storage._resolve_path(f".crafted-{uuid.uuid4().hex}"))
    staging.parent.mkdir(parents=True, exist_ok=True)
    with staging.open("wb") as out, gzip.GzipFile(filename="", mode="wb", fileobj=out, mtime=0, compresslevel=1) as gz:
        hashing = _Hashing(gz)
        with tarfile.open(fileobj=hashing, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for info, data in members:
                tar.addfile(info, data)
    digest = digest or "sha256:" + hashing.hash.hexdigest()
    staging.rename(storage._resolve_path(f"{digest.removeprefix('sha256:')}.tar.gz"))
    return digest


def _file(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size, info.mode = len(data), 0o644
    return info, io.BytesIO(data)


def _code_job(digest: str, project: str) -> str:
    from prefect_launch.blocks.job import LaunchJob

    job = LaunchJob(project=project, name=unique("crafted"), entry_point=["python", "train.py"],
                    source={"type": "code", "digest": digest, "storage": code.DEFAULT_STORAGE})
    return job.save_as_definition()


# ------------------------------------------------------------------------------------------------
# Packing: only regular files and folders, one line naming the file, streaming


def _make_special(folder: Path, kind: str, outside: Path) -> str:
    if kind == "link-inside":
        (folder / "alias.py").symlink_to("train.py")
        return "alias.py"
    if kind == "link-outside":
        (folder / "data").mkdir()
        (folder / "data" / "secret").symlink_to(outside)
        return "data/secret"
    if kind == "folder-link-escaping":
        (folder / "up").symlink_to("..")
        return "up"
    if kind == "fifo":
        os.mkfifo(folder / "pipe")
        return "pipe"
    if kind == "socket":
        sock = socket.socket(socket.AF_UNIX)
        sock.bind(str(folder / "sock"))
        sock.close()
        return "sock"
    raise AssertionError(kind)


@pytest.mark.parametrize("kind", ["link-inside", "link-outside", "folder-link-escaping", "fifo", "socket"])
def test_links_and_special_files_are_refused_at_launch_in_one_line(kind, make_queue, tmp_path):
    queue = make_queue("--resource", "local-process")
    outside = tmp_path / "outside.txt"
    outside.write_text("not code")
    folder = _folder(tmp_path / "c", {"train.py": "print('hi')\n"})
    name = _make_special(folder, kind, outside)
    what = {"fifo": "a FIFO", "socket": "a socket"}.get(kind, "a symbolic link")
    for args, env in (((("-q", queue)), None), (("--dry-run", "-r", "local-process"), NO_SERVER)):
        result = cli("launch", *args, "-u", str(folder), "-E", "python train.py", check=False, env=env)
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert result.returncode == 1, result.stderr
        assert "Traceback" not in result.stderr and len(errors) == 1, result.stderr
        assert f"{name!r} is {what}" in errors[0] and str(folder) in errors[0]


def test_a_folder_over_the_size_cap_is_refused_when_packed(tmp_path, monkeypatch):
    folder = _folder(tmp_path / "c", {"train.py": "print('hi')\n"})
    with (folder / "weights.bin").open("wb") as handle:
        handle.truncate(3 << 20)
    monkeypatch.setenv("PREFECT_LAUNCH_MAX_CODE_BYTES", "2MiB")
    result = cli("launch", "--dry-run", "-r", "local-process", "-u", str(folder), "-E", "python train.py",
                 check=False, env=NO_SERVER)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "'weights.bin'" in result.stderr and "2 MiB limit" in result.stderr and "PREFECT_LAUNCH_MAX_CODE_BYTES" in result.stderr


def test_packing_streams_in_bounded_memory(tmp_path):
    folder = _folder(tmp_path / "c", {"train.py": "print('hi')\n"})
    with (folder / "weights.bin").open("wb") as handle:
        handle.truncate(96 << 20)  # sparse: 96 MiB to read, no disk
    tracemalloc.start()
    try:
        with (tmp_path / "out.tar.gz").open("wb") as out:
            digest = code.pack_to_file(folder, out).digest
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 8 << 20, f"packing 96 MiB peaked at {peak >> 20} MiB"
    assert digest == code.folder_digest(folder)
    with gzip.open(tmp_path / "out.tar.gz") as raw:
        hashed = hashlib.sha256()
        while chunk := raw.read(1 << 20):
            hashed.update(chunk)
    assert "sha256:" + hashed.hexdigest() == digest


# ------------------------------------------------------------------------------------------------
# Unpacking: size cap before memory, digest before trust, no leftovers


def test_an_archive_bomb_is_refused_without_reading_it_into_memory(home, tmp_path, monkeypatch):
    monkeypatch.setenv("PREFECT_LAUNCH_MAX_CODE_BYTES", "16MiB")
    big = tarfile.TarInfo("big.bin")
    big.size, big.mode = 512 << 20, 0o644  # 512 MiB of zeros, about 0.5 MiB stored
    digest = _store_archive([_file("train.py", b"print(1)\n"), (big, _Zeros(big.size))])
    cache, workdir = tmp_path / "cache", tmp_path / "runs" / "r1" / "code"
    tracemalloc.start()
    try:
        with pytest.raises(LaunchError) as refused:
            code.fetch(CodeSource(digest=digest, storage=code.DEFAULT_STORAGE), cache, workdir)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert "16 MiB limit" in str(refused.value) and "\n" not in str(refused.value)
    assert peak < 8 << 20, f"refusing the bomb peaked at {peak >> 20} MiB"
    assert not workdir.exists() and not _leftovers(cache, tmp_path / "runs")
    assert list(cache.iterdir()) == []


def test_a_changed_cache_entry_is_refused_and_dropped(home, tmp_path):
    folder = _folder(tmp_path / "c", {"train.py": "print('hi')\n"})
    digest, data = code.pack(folder)
    storage = code._load_storage(code.ensure_default_storage(home))
    storage.write_path(f"{digest.removeprefix('sha256:')}.tar.gz", data, _sync=True)
    source, cache = CodeSource(digest=digest, storage=code.DEFAULT_STORAGE), tmp_path / "cache"
    first = code.fetch(source, cache, tmp_path / "runs" / "a" / "code")
    assert (first / "train.py").read_text() == "print('hi')\n"
    archive = code.cache_path(source, cache)
    assert stat.S_IMODE(archive.stat().st_mode) == 0o444  # the cache is read-only
    other = _folder(tmp_path / "other", {"train.py": "print('evil')\n"})
    archive.chmod(0o644)
    archive.write_bytes(code.pack(other)[1])
    with pytest.raises(LaunchError, match="does not match its digest"):
        code.fetch(source, cache, tmp_path / "runs" / "b" / "code")
    assert not archive.exists() and not (tmp_path / "runs" / "b" / "code").exists()
    assert not _leftovers(cache, tmp_path / "runs")
    again = code.fetch(source, cache, tmp_path / "runs" / "b" / "code")  # fetched again from the store
    assert (again / "train.py").read_text() == "print('hi')\n"


def test_archives_from_older_agents_still_unpack_identically(home, tmp_path):
    """Hard links packed as links by earlier versions unpack; the copy packs to the same digest."""
    folder = _folder(tmp_path / "c", {"train.py": "print('hi')\n", "pkg/util.py": "X = 1\n", "empty/.keep": ""})
    (folder / "run.sh").write_text("#!/bin/sh\n")
    (folder / "run.sh").chmod(0o755)
    digest, data = code.pack(folder)
    storage = code._load_storage(code.ensure_default_storage(home))
    storage.write_path(f"{digest.removeprefix('sha256:')}.tar.gz", data, _sync=True)
    copy = code.fetch(CodeSource(digest=digest, storage=code.DEFAULT_STORAGE), tmp_path / "cache", tmp_path / "w")
    assert code.folder_digest(copy) == digest and os.access(copy / "run.sh", os.X_OK)
    info = tarfile.TarInfo("again.py")
    info.type, info.linkname = tarfile.LNKTYPE, "train.py"
    linked = _store_archive([_file("train.py", b"print(1)\n"), (info, None)])
    out = code.fetch(CodeSource(digest=linked, storage=code.DEFAULT_STORAGE), tmp_path / "cache", tmp_path / "w2")
    assert (out / "again.py").read_bytes() == b"print(1)\n"


# ------------------------------------------------------------------------------------------------
# Agents: crafted stored archives fail their run in one line; runs never share code


def test_crafted_stored_archives_fail_their_runs_clearly(home, make_queue, start_agent, monkeypatch, tmp_path):
    monkeypatch.setenv("PREFECT_LAUNCH_MAX_CODE_BYTES", "16MiB")  # the agent inherits it
    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    start_agent("-q", queue)
    project = unique("crafted")
    big = tarfile.TarInfo("big.bin")
    big.size, big.mode = 256 << 20, 0o644
    link = tarfile.TarInfo("train.py")
    link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
    real = code.folder_digest(_folder(tmp_path / "honest", {"train.py": f"print({unique('real')!r})\n"}))
    cases = {
        "bomb": (_store_archive([_file("train.py", b"print(1)\n"), (big, _Zeros(big.size))]), "16 MiB limit"),
        "mismatch": (_store_archive([_file("train.py", b"print('swapped')\n")], digest=real),
                     "does not match its digest"),
        "escaping": (_store_archive([_file("train.py", b"print(1)\n"), _file("../escaped.py", b"x = 1\n")]),
                     "'../escaped.py' is outside the code folder"),
        "symlink": (_store_archive([(link, None)]), "'train.py' is a symbolic link"),
    }
    runs = {}
    for case, (digest, _) in cases.items():
        result = launch("-q", queue, "-j", _code_job(digest, project))
        runs[case] = run_id_of(result)
    for case, run_id in runs.items():
        flow_run = wait_for_final(run_id)
        message = flow_run.state.message or ""
        assert flow_run.state.is_failed() and cases[case][1] in message and "\n" not in message, (case, message)
        assert message in run_logs(flow_run.id), case  # the flow's one error line
        assert not (Path(home) / "runs" / run_id / "code").exists(), case
        if case in ("bomb", "mismatch"):  # never trusted: not in the cache (the others are, verified, and refused at unpack)
            assert not code.cache_path(CodeSource(digest=cases[case][0], storage="x"), Path(home) / "code").exists()
    assert not (Path(home) / "runs" / "escaped.py").exists()
    assert not _leftovers(Path(home) / "runs", Path(home) / "code")


def test_concurrent_runs_of_one_folder_each_see_only_their_own_outputs(home, make_queue, start_agent, tmp_path):
    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    start_agent("-q", queue, "--max-jobs", "2")
    barrier = tmp_path / "barrier"
    barrier.mkdir()
    folder = _folder(tmp_path / "c", {"train.py": """
        import json, os, pathlib, sys, time
        run, barrier, out = os.environ["WANDB_RUN_ID"], pathlib.Path(sys.argv[1]), pathlib.Path("out.txt")
        before = out.exists()
        out.write_text(run)
        (barrier / run).touch()
        deadline = time.monotonic() + 90  # both runs are running at once before either reads back
        while len(list(barrier.iterdir())) < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        print("SEEN " + json.dumps({"before": before, "out": out.read_text(), "cwd": os.getcwd(),
                                    "peers": len(list(barrier.iterdir()))}), flush=True)
    """})
    run_ids = [run_id_of(launch("-q", queue, "-u", str(folder), "-E", f"python train.py {barrier}"))
               for _ in range(2)]
    for run_id in run_ids:
        flow_run = wait_for_final(run_id)
        assert flow_run.state.is_completed(), flow_run.state.message
        seen = job_report(run_logs(flow_run.id), "SEEN")
        assert seen == {"before": False, "out": run_id, "cwd": str(Path(home) / "runs" / run_id / "code"), "peers": 2}
    assert not (folder / "out.txt").exists()


def test_a_run_that_edits_its_code_does_not_change_the_next_run(home, make_queue, start_agent, tmp_path):
    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    start_agent("-q", queue)
    folder = _folder(tmp_path / "c", {"train.py": """
        import json, pathlib
        script, out, mark = pathlib.Path("train.py"), pathlib.Path("out.txt"), "# edited " + "by a run"
        text = script.read_text()
        print("SAW " + json.dumps({"edited": mark in text, "leftover": out.exists()}), flush=True)
        script.write_text(text + mark + "\\n")
        out.write_text("left behind")
    """})
    digest = code.folder_digest(folder)
    for _ in range(2):
        run_id = run_id_of(launch("-q", queue, "-u", str(folder), "-E", "python train.py", "--wait"))
        flow_run = flow_run_of(run_id)
        assert flow_run.state.is_completed()
        assert job_report(run_logs(flow_run.id), "SAW") == {"edited": False, "leftover": False}
        assert "# edited by a run" in (Path(home) / "runs" / run_id / "code" / "train.py").read_text()
    archive = code.cache_path(CodeSource(digest=digest, storage="x"), Path(home) / "code")
    assert stat.S_IMODE(archive.stat().st_mode) == 0o444
    with gzip.open(archive) as raw:
        assert "sha256:" + hashlib.sha256(raw.read()).hexdigest() == digest
    assert code.folder_digest(folder) == digest


def test_the_dry_run_names_the_agents_workdir(home, tmp_path):
    folder = _folder(tmp_path / "c", {"train.py": "print('hi')\n"})
    run_id = uuid.uuid4().hex[:12]
    result = cli("launch", "--dry-run", "-r", "local-process", "-u", str(folder), "-E", "python train.py",
                 "--run-id", run_id, env=NO_SERVER)
    assert json.loads(result.stdout)["submission"]["cwd"] == str(Path(home) / "runs" / run_id / "code")


def test_build_contexts_keep_links_inside_and_refuse_links_out(tmp_path):
    """A git checkout's build context may hold links within itself (as its repository does); none out."""
    folder = _folder(tmp_path / "c", {"train.py": "print('hi')\n", "pkg/util.py": "X = 1\n"})
    (folder / "main.py").symlink_to("train.py")
    (folder / "pkg" / "up.py").symlink_to("../train.py")
    with tarfile.open(fileobj=io.BytesIO(archive.pack_tar(folder))) as tar:
        links = {m.name: m.linkname for m in tar if m.issym()}
    assert links == {"main.py": "train.py", "pkg/up.py": "../train.py"}
    (folder / "pkg" / "out").symlink_to("../../outside")
    with pytest.raises(LaunchError, match=r"'pkg/out' is a symbolic link to '../../outside', outside the folder"):
        archive.pack_tar(folder)
