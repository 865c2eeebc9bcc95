"""A trial's metrics, read from its offline W&B run files (there is no W&B server here).

The agent runs a local job with `WANDB_DIR=$PREFECT_LAUNCH_HOME/runs/<run id>`, so wandb writes
`runs/<run id>/wandb/offline-run-<time>-<run id>/run-<run id>.wandb`. wandb 0.31 writes no
`files/wandb-summary.json` for an offline run (checked with a tiny offline init/log/finish): the
summary exists only as records in that `.wandb` file, and wandb ships no Python reader for it
any more. So this module reads the file itself. Its format is a LevelDB-style log: a 7-byte header
(`:W&B`, magic 0xBEE1, version 0), then 32 KiB blocks of records, each `crc32 (4) | length (2) |
type (1) | data`, a record split over blocks as FIRST/MIDDLE/LAST; the data is a protobuf
`wandb_internal_pb2.Record`. A run still writing may end in a partial record: reading stops there.

Example (a run folder with no W&B run yet has no metrics):
    >>> import tempfile
    >>> read_run_metrics(Path(tempfile.mkdtemp()), "abc123")
    RunMetrics(summary={}, history=[])
"""

from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

_HEADER = b":W&B\xe1\xbe\x00"
_BLOCK = 32768
_RECORD_HEADER = 7
_FULL, _FIRST, _MIDDLE, _LAST = 1, 2, 3, 4


@dataclass
class RunMetrics:
    """The run's summary (the last value of each key, or what it set explicitly) and its history rows."""

    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def steps_of(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every history row that logged `key`."""
        return [(int(row.get("_step", n)), row[key]) for n, row in enumerate(self.history)
                if isinstance(row.get(key), (int, float))]


def run_files(run_dir: Path, run_id: str) -> list[Path]:
    """The run's `.wandb` files (a resumed run has one per attempt), oldest first."""
    return sorted((run_dir / "wandb").glob(f"*run-*-{run_id}/run-{run_id}.wandb"))


def read_run_metrics(run_dir: Path, run_id: str) -> RunMetrics:
    metrics = RunMetrics()
    for path in run_files(run_dir, run_id):
        _fold(path, metrics)
    return metrics


def _fold(path: Path, metrics: RunMetrics) -> None:
    from wandb.proto import wandb_internal_pb2

    for data in _records(path.read_bytes()):
        record = wandb_internal_pb2.Record()
        try:
            record.ParseFromString(data)
        except Exception:  # a record cut short by a run still writing
            return
        kind = record.WhichOneof("record_type")
        if kind == "history":
            metrics.history.append({_key(item): _value(item) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                metrics.summary[_key(item)] = _value(item)
            for item in record.summary.remove:
                metrics.summary.pop(_key(item), None)


def _records(data: bytes) -> Iterator[bytes]:
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


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def _value(item: Any) -> Any:
    try:
        return json.loads(item.value_json)
    except ValueError:
        return item.value_json
