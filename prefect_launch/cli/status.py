"""`prefect-launch status [RUN]` and `prefect-launch logs RUN [-f]`.

Example::

    prefect-launch status                 # every queue: resource, agents and their heartbeat, runs per state
    prefect-launch status abc123          # a run: state, queue, agent, timeline, why it waits
    prefect-launch logs abc123 -f         # its log lines, followed until it ends

RUN is the W&B run id (the flow run's name) or the flow run id.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Optional, TypeVar

import typer

from prefect_launch.cli.common import clear_errors, connect, echo_json, run

T = TypeVar("T")
DEFAULT_TAIL = 20  # as `prefect flow-run logs --tail`


def _known_run(fn: Callable[..., T]) -> Callable[..., T]:
    """An unknown run id exits 2 with one line on stderr (other errors as `clear_errors`)."""

    def wrapper(*args, **kwargs) -> T:
        from prefect_launch.status import UnknownRun

        try:
            return fn(*args, **kwargs)
        except UnknownRun as exc:
            typer.echo(f"error: {exc}", err=True)
            raise typer.Exit(2) from None

    return clear_errors(wrapper)


def status_command(
    run_id: Optional[str] = typer.Argument(None, metavar="[RUN]", help="W&B run id or flow run id; none: every queue"),
    as_json: bool = typer.Option(False, "--json", help="The same as one JSON object (a run) or list (the queues)"),
) -> None:
    """A run's state, queue, agent, stage timeline and why it waits; without RUN, every queue with its agents and runs."""
    _known_run(_status)(run_id, as_json)


def _status(run_id: str | None, as_json: bool) -> None:
    connect()
    from prefect.client.orchestration import get_client

    from prefect_launch.status import find_run, queue_overviews, render_queues, render_run, run_status

    async def _read() -> Any:
        async with get_client() as client:
            if run_id is None:
                overviews = await queue_overviews(client)
                return [_queue_json(queue) for queue in overviews] if as_json else render_queues(overviews)
            status = await run_status(client, await find_run(client, run_id))
            return _run_json(status) if as_json else render_run(status)

    shown = run(_read)
    if as_json:
        echo_json(shown)
    else:
        typer.echo(shown)


def _run_json(status) -> dict[str, Any]:
    """`status RUN --json`: the run's fields, its stages as the timeline artifact holds them (seconds None while one goes on)."""
    return {"run_id": status.run_id, "flow_run_id": str(status.flow_run_id), "state": status.state,
            "message": status.message, "queue": status.queue, "resource": status.resource, "agent": status.agent,
            "waiting": status.waiting or None, "stages": status.timeline.rows(),
            "place": dataclasses.asdict(status.place) if status.place else None}


def _queue_json(queue) -> dict[str, Any]:
    """`status --json`: one queue with its agents (last heartbeat, alive) and runs per state."""
    from datetime import datetime, timezone

    now = datetime.now(timezone.utc)
    return {"queue": queue.name, "resource": queue.resource, "paused": queue.paused, "runs": queue.runs,
            "agents": [{"name": agent.name, "alive": agent.alive(now),
                        "last_heartbeat": agent.last_heartbeat.isoformat() if agent.last_heartbeat else None}
                       for agent in queue.agents]}


def logs_command(
    run_id: str = typer.Argument(..., metavar="RUN", help="W&B run id or flow run id"),
    follow: bool = typer.Option(False, "--follow", "-f", help="Keep printing new lines until the run ends"),
    tail: bool = typer.Option(False, "--tail", "-t", help="Only the last lines (see --num-logs), as `prefect flow-run logs --tail`"),
    num_logs: int = typer.Option(DEFAULT_TAIL, "--num-logs", "-n", min=1, help="How many lines --tail shows"),
) -> None:
    """A run's log lines, every one: the agent's stages and the job's own output."""
    _known_run(_logs)(run_id, follow, num_logs if tail else None)


def _logs(run_id: str, follow: bool, tail: int | None) -> None:
    connect()
    from prefect.client.orchestration import get_client

    from prefect_launch.cli.follow import stream_logs
    from prefect_launch.status import find_run

    async def _stream() -> None:
        async with get_client() as client:
            flow_run = await find_run(client, run_id)
            await stream_logs(client, flow_run.id, until_final=follow, tail=tail)

    run(_stream)
