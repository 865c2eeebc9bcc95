"""A W&B run's own files: where wandb writes them in a run folder, and the records in them.

wandb writes every run it creates under `<WANDB_DIR>/wandb/[offline-]run-<time>-<run id>/` as a
`run-<run id>.wandb` file (a resumed run has one per attempt). The agent reads them where no W&B
server is asked: whether a job created its run (`run_created`), a sweep trial's metrics
(`sweeps/metrics.py`), and how a run ended when its job is gone from its target and nothing else
says (`run_exit_code`: wandb records the exit code of the process that called `wandb.init`).

The file is a LevelDB-style log, and wandb ships no Python reader for it any more: a 7-byte
header (`:W&B`, magic 0xBEE1, version 0), then 32 KiB blocks of records, each
`crc32 (4) | length (2) | type (1) | data`, a record split over blocks as FIRST/MIDDLE/LAST; the
data is a protobuf `wandb_internal_pb2.Record`. A run still writing may end in a partial record:
reading stops there.

Example (a run folder with no W&B run yet):
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> run_created(folder, "abc123"), run_exit_code(folder, "abc123")
    (False, None)
"""

from __future__ import annotations

import struct
from datetime import datetime
from pathlib import Path
from typing import Any, Iterator

_HEADER = b":W&B\xe1\xbe\x00"
_BLOCK = 32768
_RECORD_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


def run_files(run_dir: Path, run_id: str) -> list[Path]:
    """The run's `.wandb` files (a resumed run has one per attempt), oldest first."""
    return sorted((run_dir / "wandb").glob(f"*run-*-{run_id}/run-{run_id}.wandb"))


def run_created(run_dir: Path, run_id: str) -> bool:
    """Whether a job running with this WANDB_DIR created its W&B run (`wandb.init`)."""
    return any((run_dir / "wandb").glob(f"*run-*-{run_id}"))


def records(path: Path) -> Iterator[Any]:
    """The file's records (`wandb_internal_pb2.Record`), in order, up to the first one cut short."""
    from wandb.proto import wandb_internal_pb2

    for data in _record_data(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(data)
        except Exception:  # a record cut short by a run still writing
            return
        yield record


def run_exit_code(run_dir: Path, run_id: str, since: datetime | None = None) -> int | None:
    """The exit code wandb recorded for the run's last attempt written after `since`; None if it has none.

    wandb writes it when the process that called `wandb.init` ends (`sys.exit(3)` records 3); a process
    killed outright records nothing.
    """
    files = [path for path in run_files(run_dir, run_id) if since is None or path.stat().st_mtime >= since.timestamp()]
    if not files:
        return None
    exits = [record.exit.exit_code for record in records(files[-1]) if record.WhichOneof("record_type") == "exit"]
    return exits[-1] if exits else None


def _record_data(data: bytes) -> Iterator[bytes]:
    if not data.startswith(_HEADER):
        return
    position, pending = len(_HEADER), b""
    while position + _RECORD_HEADER <= len(data):
        left_in_block = _BLOCK - position % _BLOCK
        if left_in_block < _RECORD_HEADER:  # the writer pads a block's tail too short for a header
            position += left_in_block
            continue
        _crc, length, kind = struct.unpack("<IHB", data[position:position + _RECORD_HEADER])
        position += _RECORD_HEADER
        chunk = data[position:position + length]
        if len(chunk) < length:
            return
        position += length
        if kind == _FULL:
            yield chunk
        elif kind == _FIRST:
            pending = chunk
        elif kind == _MIDDLE:
            pending += chunk
        elif kind == _LAST:
            yield pending + chunk
            pending = b""
