"""`prefect-launch sweep create CONFIG -q QUEUE`: a W&B sweep whose trials are launch jobs on a queue.

Prints the sweep id (the name of the sweep's flow run). Without `--wait` the sweep runs in a
process of its own, in the background, and this command returns at once; with `--wait` it runs
here, logging each trial, and prints the trials and the best one at the end.

Example::

    prefect-launch job create code ./train -n trainer -E "python train.py"
    prefect-launch sweep create sweep.yaml -q demo --wait
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Optional

import typer

from prefect_launch.cli.common import clear_errors, connect, echo_json, run, stderr

app = typer.Typer(help="Sweeps: hyperparameter searches whose trials are launch jobs on a queue.", no_args_is_help=True)


@app.command("create")
def create_command(
    config: Path = typer.Argument(..., help="W&B sweep config, YAML or JSON"),
    queue: Optional[str] = typer.Option(None, "--queue", "-q", help="Queue for the trials (default: launch.queue)"),
    project: Optional[str] = typer.Option(None, "--project", "-p", help="W&B project of the trials"),
    entity: Optional[str] = typer.Option(None, "--entity", "-e", help="W&B entity of the trials"),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Trials in flight at most (over scheduler.num_workers)"),
    seed: Optional[int] = typer.Option(None, "--seed", help="Seed of the random and bayes samplers"),
    wait: bool = typer.Option(False, "--wait", help="Run the sweep here: log trials, print the best, exit 1 unless it completes"),
    as_json: bool = typer.Option(False, "--json", help="Print the sweep (with --wait: its trials and best) as JSON"),
) -> None:
    """Start a sweep: its trials go on the queue as launch jobs."""
    clear_errors(_create)(config, queue, project, entity, num_workers, seed, wait, as_json)


def _prepare(config_path: Path, queue: str | None, project: str | None, entity: str | None,
             num_workers: int | None):
    """The checked sweep config with the flags over it, and its queue; connected to the server."""
    from prefect_launch.errors import LaunchError
    from prefect_launch.sweeps.config import load_sweep_config

    config = load_sweep_config(str(config_path))
    updates = {k: v for k, v in (("project", project), ("entity", entity)) if v}
    if num_workers is not None:
        if num_workers < 1:
            raise LaunchError(f"--num-workers {num_workers}: expected at least 1")
        updates["scheduler"] = config.scheduler.model_copy(update={"num_workers": num_workers})
    config = config.model_copy(update=updates)
    queue = queue or config.launch.queue
    if not queue:
        raise LaunchError("give -q/--queue, or launch.queue in the sweep config")

    connect()
    if config.job:  # a missing job would fail every trial, one after the other: say so now
        from prefect_launch.blocks.job import LaunchJob

        LaunchJob.find(config.job, config.project or "uncategorized")
    run(_check_queue, queue, config)
    return config, queue


def _create(config_path: Path, queue: str | None, project: str | None, entity: str | None,
            num_workers: int | None, seed: int | None, wait: bool, as_json: bool) -> None:
    from prefect_launch.home import launch_home

    config, queue = _prepare(config_path, queue, project, entity, num_workers)
    flow_run = run(_create_run, config, queue, seed)
    stderr(f"Sweep {flow_run.name} on queue {queue!r} (flow run {flow_run.id}), method {config.method}")
    if not as_json:
        typer.echo(flow_run.name)
    elif not wait:
        echo_json({"sweep_id": flow_run.name, "flow_run_id": str(flow_run.id), "queue": queue})
    if wait:
        from prefect_launch.sweeps.flow import execute

        final = execute(flow_run.id)
        try:  # a failed or cancelled sweep carries its trials too
            result = final.result(raise_on_failure=False)
        except Exception:
            result = None
        if isinstance(result, dict):
            if as_json:
                echo_json({**result, "state": final.name})
            else:
                _print_result(result)
        if not final.is_completed():
            stderr(f"Sweep {flow_run.name} ended {final.name}" + (f": {final.message}" if final.message else ""))
            raise typer.Exit(1)
        return
    log = launch_home() / "sweeps" / f"{flow_run.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:
        # A session of its own: the sweep outlives this command and the terminal it ran in.
        subprocess.Popen([sys.executable, "-m", "prefect_launch.sweeps.flow", str(flow_run.id)],
                         stdin=subprocess.DEVNULL, stdout=out, stderr=out, env=os.environ.copy(),
                         start_new_session=True)
    stderr(f"Running in the background (log: {log}); `prefect-launch sweep pause|resume|cancel {flow_run.name}`")


def _control(action: str):
    def command(sweep: str = typer.Argument(..., help="Sweep id (printed by `sweep create`) or its flow run id"),
                as_json: bool = typer.Option(False, "--json", help="Print the sweep and the request as JSON")) -> None:
        clear_errors(_set_state)(sweep, action, as_json)

    command.__doc__ = {
        "pause": "Pause a sweep: its trials in flight run on; no new ones until it is resumed.",
        "resume": "Resume a paused sweep.",
        "cancel": "Cancel a sweep and its trials in flight.",
    }[action]
    return command


for _action in ("pause", "resume", "cancel"):
    app.command(_action)(_control(_action))


def _set_state(sweep: str, action: str, as_json: bool) -> None:
    from prefect_launch.sweeps.flow import set_sweep_state

    connect()
    flow_run = run(set_sweep_state, sweep, action)
    stderr(f"Sweep {flow_run.name}: {action} requested")
    if as_json:
        echo_json({"sweep_id": flow_run.name, "flow_run_id": str(flow_run.id), "requested": action})


@app.command("status")
def status_command(
    sweep: str = typer.Argument(..., help="Sweep id (printed by `sweep create`) or its flow run id"),
    as_json: bool = typer.Option(False, "--json", help="The sweep, its trials and best so far as JSON"),
) -> None:
    """A sweep's state, its trials (run, state, metric, parameters) and its best so far."""
    clear_errors(_status)(sweep, as_json)


def _status(sweep: str, as_json: bool) -> None:
    from prefect.client.orchestration import get_client

    from prefect_launch.sweeps.flow import find_sweep
    from prefect_launch.sweeps.report import render_sweep, sweep_status

    connect()

    async def read():
        async with get_client() as client:
            return await sweep_status(client, await find_sweep(client, sweep))

    status = run(read)
    if as_json:
        echo_json(status.as_json())
    else:
        typer.echo(render_sweep(status))


@app.command("list")
def list_command(
    limit: int = typer.Option(20, "--limit", "-n", min=1, help="How many sweeps, newest first"),
    as_json: bool = typer.Option(False, "--json", help="The sweeps with their trials and best so far as JSON"),
) -> None:
    """The latest sweeps: state, queue, trials per state, best so far."""
    clear_errors(_list)(limit, as_json)


def _list(limit: int, as_json: bool) -> None:
    from prefect.client.orchestration import get_client

    from prefect_launch.sweeps.report import list_sweeps, render_sweeps

    connect()

    async def read():
        async with get_client() as client:
            return await list_sweeps(client, limit)

    statuses = run(read)
    if as_json:
        echo_json([status.as_json() for status in statuses])
    else:
        typer.echo(render_sweeps(statuses))


async def _check_queue(queue: str, config) -> None:
    """A missing queue, or trials its queue would refuse (their `launch.resource_args` against the target's
    policy, `launch.template_variables` holding `{{ ... }}`), is an error now, not in the background."""
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import queue_config_of, read_queue
    from prefect_launch.render import check_job_args
    from prefect_launch.templates import check_no_templates

    async with get_client() as client:
        queue_config = queue_config_of(await read_queue(client, queue))
    check_no_templates(config.launch.template_variables)
    if queue_config is not None:
        check_job_args(queue_config, config.launch.resource_args)


async def _create_run(config, queue: str, seed: int | None):
    from prefect_launch.sweeps.flow import create_sweep_run

    return await create_sweep_run(config, queue, seed)


@app.command("schedule")
def schedule_command(
    config: Path = typer.Argument(..., help="W&B sweep config, YAML or JSON"),
    queue: Optional[str] = typer.Option(None, "--queue", "-q", help="Queue for the trials (default: launch.queue)"),
    cron: Optional[str] = typer.Option(None, "--cron", help='Start a sweep on this cron schedule, e.g. "0 2 * * *"'),
    interval: Optional[int] = typer.Option(None, "--interval", help="Start a sweep every this many seconds"),
    name: Optional[str] = typer.Option(None, "--name", help="Deployment name (default: the config's name, else the queue)"),
    project: Optional[str] = typer.Option(None, "--project", "-p", help="W&B project of the trials"),
    entity: Optional[str] = typer.Option(None, "--entity", "-e", help="W&B entity of the trials"),
    num_workers: Optional[int] = typer.Option(None, "--num-workers", help="Trials in flight at most (over scheduler.num_workers)"),
) -> None:
    """Scheduled sweeps: deploy the sweep flow as `sweep/NAME` on a schedule and serve it until stopped."""
    clear_errors(_schedule)(config, queue, cron, interval, name, project, entity, num_workers)


def _schedule(config_path: Path, queue: str | None, cron: str | None, interval: int | None, name: str | None,
              project: str | None, entity: str | None, num_workers: int | None) -> None:
    from prefect_launch.errors import LaunchError

    if (cron is None) == (interval is None):
        raise LaunchError("give one of --cron or --interval")
    if interval is not None and interval < 1:
        raise LaunchError(f"--interval {interval}: expected at least 1 second")
    config, queue = _prepare(config_path, queue, project, entity, num_workers)
    import asyncio
    from datetime import datetime, timedelta, timezone

    from prefect.deployments import run_deployment
    from prefect.exceptions import TerminationSignal
    from prefect.runner import Runner
    from prefect.schedules import Cron, Interval

    from prefect_launch.sweeps.flow import sweep

    name = name or config.name or queue
    try:
        # An interval is anchored now, not at Prefect's default of 2020-01-01 (`--interval 3600` would
        # otherwise wait for the next full hour); its first sweep is started below, explicitly, as an
        # anchor a few seconds ahead is missed whenever deploying takes longer than those seconds.
        schedule = Cron(cron) if cron else Interval(timedelta(seconds=interval), anchor_date=datetime.now(timezone.utc))
        deployment = sweep.to_deployment(
            name=name, schedule=schedule, tags=["sweep", f"queue:{queue}"],
            parameters={"config": config.model_dump(mode="json", exclude_unset=True), "queue": queue},
            description=f"Scheduled sweeps on queue {queue}: {config.method}, run_cap {config.run_cap}",
        )
    except ValueError as exc:  # a cron expression croniter refuses
        raise LaunchError(f"--cron {cron!r}: {exc}") from None
    # A runner, as `prefect.serve` makes one: it starts each scheduled sweep in a process of its own, stops one
    # the UI cancels, and pauses the schedule when it is stopped.
    runner = Runner(pause_on_shutdown=True)
    deployment_id = runner.add_deployment(deployment)
    if interval is not None:
        run_deployment(deployment_id, timeout=0, as_subflow=False)
    stderr(f"Sweeps deployed as sweep/{name} ({'cron ' + cron if cron else f'every {interval} s'}); "
           "serving them here until stopped (Ctrl-C)")
    try:
        asyncio.run(runner.start())
    except (KeyboardInterrupt, TerminationSignal):
        stderr(f"Stopped serving sweep/{name}; its schedule is paused")


def _print_result(result: dict) -> None:
    for trial in result["trials"]:
        value = "" if trial["value"] is None else f"{trial['value']:.6g}"
        typer.echo(f"trial {trial['number']} {trial['run_id']} {trial['state']} {trial['params']} {value}".rstrip())
    best = result.get("best")
    if best:
        typer.echo(f"best: trial {best['number']} {best['run_id']} {best['params']} value {best['value']:.6g}")
