"""What `prefect-launch sweep status ID` and `sweep list` show: a sweep's trials and its best so far.

The sweep flow publishes its trials, as they change, in a table artifact of its run,
`sweep-<id>-trials` (created once, updated in place): each trial's run id, parameters, state and
metric. Reading it (`sweep_status`) needs only the Prefect server, wherever the sweep runs; the best
so far is picked from it by the sweep's own metric and goal (`best`, which the flow uses too).

Example::

    async with get_client() as client:
        print(render_sweep(await sweep_status(client, await find_sweep(client, "abc123"))))
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Iterable, TypeVar
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import ArtifactCreate, ArtifactUpdate
from prefect.client.schemas.filters import (
    ArtifactFilter,
    ArtifactFilterFlowRunId,
    ArtifactFilterKey,
    FlowFilter,
    FlowFilterName,
)
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.sorting import ArtifactSort, FlowRunSort

T = TypeVar("T")
Row = dict[str, Any]


def trials_key(sweep_id: str) -> str:
    """The key of a sweep's live trials table.

    >>> trials_key("ab12cd34")
    'sweep-ab12cd34-trials'
    """
    return f"sweep-{sweep_id}-trials"


def best(goal: str | None, items: Iterable[T], value: Callable[[T], float | None]) -> T | None:
    """The item with the best value for `goal` (`minimize` or `maximize`); None with no goal or no value yet.

    >>> best("maximize", [{"value": 0.2}, {"value": None}, {"value": 0.9}], lambda row: row["value"])
    {'value': 0.9}
    """
    scored = [item for item in items if value(item) is not None]
    if not scored or goal is None:
        return None
    return (min if goal == "minimize" else max)(scored, key=value)


class TrialsTable:
    """Publishes a sweep's trials: its table artifact, created at the first trial, updated in place when a trial
    changes. A failed write is skipped (the next change writes the whole table again): the table informs, the
    sweep goes on."""

    def __init__(self, client: PrefectClient, sweep_id: str, flow_run_id: UUID) -> None:
        self.client, self.key, self.flow_run_id = client, trials_key(sweep_id), flow_run_id
        self.artifact_id: UUID | None = None
        self.last: list[Row] | None = None

    async def publish(self, rows: list[Row]) -> None:
        if not rows or rows == self.last:
            return
        try:
            if self.artifact_id is None:
                self.artifact_id = (await self.client.create_artifact(ArtifactCreate(
                    key=self.key, type="table", data=rows, flow_run_id=self.flow_run_id,
                    description="Sweep trials, live: run, parameters, state, metric"))).id
            else:
                await self.client.update_artifact(self.artifact_id, ArtifactUpdate(data=rows))
            self.last = rows
        except Exception:  # the server briefly unreachable: written again at the next change
            self.last = None


@dataclass
class SweepStatus:
    sweep_id: str
    flow_run_id: UUID
    state: str
    queue: str
    method: str
    metric: str | None
    goal: str | None
    trials: list[Row] = field(default_factory=list)

    @property
    def best(self) -> Row | None:
        return best(self.goal, self.trials, lambda row: row.get("value"))

    def as_json(self) -> dict[str, Any]:
        return {"sweep_id": self.sweep_id, "flow_run_id": str(self.flow_run_id), "state": self.state,
                "queue": self.queue, "method": self.method, "metric": self.metric, "goal": self.goal,
                "trials": self.trials, "best": self.best}


async def sweep_status(client: PrefectClient, flow_run: FlowRun) -> SweepStatus:
    """A sweep's state and trials as its flow run published them (none before its first trial)."""
    config = flow_run.parameters.get("config") or {}
    metric = config.get("metric") or {}
    artifacts = await client.read_artifacts(
        artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run.id]),
                                       key=ArtifactFilterKey(any_=[trials_key(flow_run.name)])),
        sort=ArtifactSort.UPDATED_DESC, limit=1)
    trials = artifacts[0].data if artifacts and isinstance(artifacts[0].data, list) else []
    return SweepStatus(sweep_id=flow_run.name, flow_run_id=flow_run.id,
                       state=flow_run.state.name if flow_run.state else "Unknown",
                       queue=flow_run.parameters.get("queue", "?"), method=config.get("method", "?"),
                       metric=metric.get("name"), goal=metric.get("goal", "minimize") if metric else None,
                       trials=trials)


async def list_sweeps(client: PrefectClient, limit: int) -> list[SweepStatus]:
    """The latest `limit` sweeps, newest first."""
    runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["sweep"])),
                                       sort=FlowRunSort.START_TIME_DESC, limit=limit)
    return [await sweep_status(client, flow_run) for flow_run in runs]


def _value(row: Row | None) -> str:
    return "-" if row is None or row.get("value") is None else f"{row['value']:.6g}"


def render_sweep(status: SweepStatus) -> str:
    """A sweep, its trials and its best so far, as text.

    >>> print(render_sweep(SweepStatus("s1", UUID(int=1), "Running", "demo", "grid", "loss", "minimize", [
    ...     {"number": 0, "run_id": "r0", "state": "Completed", "params": {"lr": 0.1}, "value": 0.5},
    ...     {"number": 1, "run_id": "r1", "state": "Running", "params": {"lr": 0.2}, "value": None}])))
    sweep s1: Running (queue demo, grid, minimize loss)
      trial  run  state      loss  params
      0      r0   Completed  0.5   {'lr': 0.1}
      1      r1   Running    -     {'lr': 0.2}
      best so far: trial 0 r0 loss 0.5 {'lr': 0.1}
    """
    goal = f", {status.goal} {status.metric}" if status.metric else ""
    lines = [f"sweep {status.sweep_id}: {status.state} (queue {status.queue}, {status.method}{goal})"]
    if not status.trials:
        return "\n".join(lines + ["  no trials yet"])
    rows = [["trial", "run", "state", status.metric or "metric", "params"]]
    rows += [[str(t.get("number")), str(t.get("run_id")), str(t.get("state")), _value(t), str(t.get("params"))]
             for t in status.trials]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    lines += ["  " + "  ".join(cell.ljust(width) for cell, width in zip(row, widths)).rstrip() for row in rows]
    top = status.best
    lines.append(f"  best so far: trial {top['number']} {top['run_id']} {status.metric} {_value(top)} {top['params']}"
                 if top else "  best so far: none (no trial has reported the metric yet)")
    return "\n".join(lines)


def render_sweeps(statuses: list[SweepStatus]) -> str:
    """One line per sweep: id, state, queue, trials per state, best so far.

    >>> print(render_sweeps([SweepStatus("s1", UUID(int=1), "Completed", "demo", "random", "acc", "maximize",
    ...     [{"number": 0, "run_id": "r0", "state": "Completed", "params": {}, "value": 0.9}])]))
    s1  Completed  queue demo  random  trials: Completed 1  best: trial 0 r0 acc 0.9
    """
    if not statuses:
        return "no sweeps: start one with `prefect-launch sweep create SWEEP.yaml -q QUEUE`"
    lines = []
    for status in statuses:
        states: dict[str, int] = {}
        for trial in status.trials:
            states[str(trial.get("state"))] = states.get(str(trial.get("state")), 0) + 1
        counts = ", ".join(f"{state} {count}" for state, count in sorted(states.items())) or "none yet"
        top = status.best
        best_text = f"best: trial {top['number']} {top['run_id']} {status.metric} {_value(top)}" if top else "best: -"
        lines.append(f"{status.sweep_id}  {status.state}  queue {status.queue}  {status.method}  "
                     f"trials: {counts}  {best_text}")
    return "\n".join(lines)
