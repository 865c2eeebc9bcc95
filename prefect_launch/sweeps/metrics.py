"""A trial's metrics, read from its offline W&B run files (there is no W&B server here).

The agent runs a local job with `WANDB_DIR=$PREFECT_LAUNCH_HOME/runs/<run id>`, so wandb writes
`runs/<run id>/wandb/offline-run-<time>-<run id>/run-<run id>.wandb`. wandb 0.31 writes no
`files/wandb-summary.json` for an offline run (checked with a tiny offline init/log/finish): the
summary exists only as history and summary records in that `.wandb` file, read with
`prefect_launch.wandb_files`.

Example (a run folder with no W&B run yet has no metrics):
    >>> import tempfile
    >>> read_run_metrics(Path(tempfile.mkdtemp()), "abc123")
    RunMetrics(summary={}, history=[])
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prefect_launch.wandb_files import records, run_files


@dataclass
class RunMetrics:
    """The run's summary (the last value of each key, or what it set explicitly) and its history rows."""

    summary: dict[str, Any] = field(default_factory=dict)
    history: list[dict[str, Any]] = field(default_factory=list)

    def steps_of(self, key: str) -> list[tuple[int, float]]:
        """(step, value) of every history row that logged `key`."""
        return [(int(row.get("_step", n)), row[key]) for n, row in enumerate(self.history)
                if isinstance(row.get(key), (int, float))]


def read_run_metrics(run_dir: Path, run_id: str) -> RunMetrics:
    metrics = RunMetrics()
    for path in run_files(run_dir, run_id):
        _fold(path, metrics)
    return metrics


def _fold(path: Path, metrics: RunMetrics) -> None:
    for record in records(path):
        kind = record.WhichOneof("record_type")
        if kind == "history":
            metrics.history.append({_key(item): _value(item) for item in record.history.item})
        elif kind == "summary":
            for item in record.summary.update:
                metrics.summary[_key(item)] = _value(item)
            for item in record.summary.remove:
                metrics.summary.pop(_key(item), None)


def _key(item: Any) -> str:
    return item.key or ".".join(item.nested_key)


def _value(item: Any) -> Any:
    try:
        return json.loads(item.value_json)
    except ValueError:
        return item.value_json
