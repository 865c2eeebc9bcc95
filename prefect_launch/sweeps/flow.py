"""The `sweep` flow: trials on a queue as launch jobs, at most `num_workers` in flight.

One flow run is one sweep (its name is the sweep id). It asks the search for parameters, puts
each trial on the queue as an ordinary launch job (its `overrides.run_config` holds the trial's
parameters, so the training script reads them from `wandb.config`), and waits for trials to end
before putting more on, so the queue never holds more than `scheduler.num_workers` of its trials
at once. A finished trial's metric comes from its W&B run (see metrics.py) and goes back to the
search. The sweep ends at `run_cap`, when a grid is exhausted, or when a trial reaches
`metric.target`; it stops, Failed and saying why in its artifact, after
`scheduler.max_consecutive_failures` trials in a row failed (default 5). Cancelling the sweep's
flow run, or its stopping or crashing, cancels the trials it has in flight, so none of them holds
a job slot after it.

Its progress is a Prefect progress artifact (`sweep-<id>-progress`); at the end, a markdown
artifact `sweep-<id>` lists every trial and the best one.

Example (what `prefect-launch sweep create sweep.yaml -q demo --wait` runs)::

    config = load_sweep_config("sweep.yaml")
    result = run_sweep_here(config, queue="demo")   # flow run named after the sweep id
    print(result["best"])

`python -m prefect_launch.sweeps.flow FLOW_RUN_ID` runs a sweep flow run created beforehand
(`sweep create` without `--wait` starts it so, in a process of its own).
"""

from __future__ import annotations

import sys
import time
from dataclasses import dataclass, field
from typing import Any
from uuid import UUID

from prefect import flow, get_run_logger
from prefect.client.orchestration import PrefectClient, get_client

from prefect_launch.home import launch_home
from prefect_launch.spec import ImageSource, LaunchSpec, Overrides, new_run_id
from prefect_launch.sweeps.config import SweepConfig
from prefect_launch.sweeps.hyperband import hyperband_bands, runs_to_stop
from prefect_launch.sweeps.metrics import read_run_metrics
from prefect_launch.sweeps.report import TrialsTable, best
from prefect_launch.sweeps.search import Search, Trial

POLL_SECONDS = 1.0


@dataclass
class TrialRecord:
    """A trial as the sweep saw it: its launch run, parameters, final state and metric."""

    number: int
    run_id: str
    flow_run_id: str
    params: dict[str, Any]
    state: str = "Scheduled"
    value: float | None = None
    started: str | None = None
    ended: str | None = None
    trial: Trial | None = field(default=None, repr=False)
    history: list[float] = field(default_factory=list, repr=False)  # hyperband: the metric's logged values
    running: bool = field(default=False, repr=False)

    def public(self) -> dict[str, Any]:
        return {"number": self.number, "run_id": self.run_id, "flow_run_id": self.flow_run_id, "params": self.params,
                "state": self.state, "value": self.value, "started": self.started, "ended": self.ended}


def trial_spec(config: SweepConfig, trial: Trial, run_id: str, sweep_id: str) -> LaunchSpec:
    """The launch job of one trial: the sweep's job with the trial's parameters as its W&B config."""
    return LaunchSpec(
        job=config.job,
        source=ImageSource(image=config.image_uri) if config.image_uri else None,
        project=config.project or "uncategorized",
        entity=config.entity,
        run_id=run_id,
        run_name=f"{sweep_id}-{trial.number}",
        overrides=Overrides(run_config=trial.params, entry_point=command_for(config, trial.params)),
        resource_args=config.launch.resource_args,
    )


def command_for(config: SweepConfig, params: dict[str, Any]) -> list[str] | None:
    """W&B's `command` with its macros, or `python <program>`; None keeps the job's own entry point.

    >>> config = SweepConfig(command=["${env}", "${interpreter}", "${program}", "${args}"], program="train.py")
    >>> command_for(config, {"lr": 0.1, "layers": 2})
    ['python', 'train.py', '--lr=0.1', '--layers=2']
    """
    if config.command is None:
        return ["python", config.program] if config.program else None
    macros = {
        "${env}": [],  # W&B's `/usr/bin/env`: the job already runs in its own environment
        "${interpreter}": ["python"],
        "${program}": [config.program] if config.program else [],
        "${args}": [f"--{k}={v}" for k, v in params.items()],
        "${args_no_hyphens}": [f"{k}={v}" for k, v in params.items()],
        "${args_no_boolean_flags}": [f"--{k}" if v is True else f"--{k}={v}" for k, v in params.items() if v is not False],
    }
    if "${args_json}" in config.command or "${args_json_file}" in config.command:
        import json

        macros["${args_json}"] = [json.dumps(params)]
    argv: list[str] = []
    for word in config.command:
        argv += macros.get(word, [word])
    return argv


@flow(name="sweep", description="A W&B sweep on a launch queue: trials as launch jobs, at most num_workers in flight")
async def sweep(config: SweepConfig, queue: str, seed: int | None = None) -> dict[str, Any]:
    from prefect.artifacts import create_progress_artifact, update_progress_artifact
    from prefect.runtime import flow_run as this_run

    from prefect_launch.deployments.queues import enqueue, read_queue
    from prefect_launch.templates import coerce_values

    logger = get_run_logger()
    config.check_runnable()
    sweep_id = this_run.name
    own_id = UUID(this_run.id)
    search = Search(config, seed)
    cap = config.run_cap  # None: a grid, which ends when exhausted
    runs_dir = launch_home() / "runs"
    trials: list[TrialRecord] = []
    in_flight: dict[UUID, TrialRecord] = {}
    exhausted = reached_target = False
    failed_in_a_row, stopped = 0, ""  # why the sweep stopped before its end, if it did
    progress = await create_progress_artifact(0.0, key=f"sweep-{sweep_id}-progress",
                                              description=f"Sweep {sweep_id}: trials finished")

    async with get_client() as client:
        template = (await read_queue(client, queue)).base_job_template
        values = coerce_values(template.get("variables", {}), config.launch.template_variables)
        workers = config.num_workers(template.get("job_configuration", {}))
        logger.info(f"Sweep {sweep_id} on queue {queue!r}: method {config.method}, "
                    f"{'run_cap ' + str(cap) if cap else 'grid'}, at most {workers} in flight")
        # The trials as they go, for `sweep status` and `sweep list` (sweeps/report.py).
        table = TrialsTable(client, sweep_id, own_id)
        try:
            was_paused = False
            while True:
                own_state = (await client.read_flow_run(own_id)).state
                if own_state is not None and (own_state.is_cancelling() or own_state.is_cancelled()):
                    await _cancel_trials(client, in_flight, logger)
                    break
                # Paused (`sweep pause`): trials in flight run on, no new ones until `sweep resume`.
                paused = own_state is not None and own_state.is_paused()
                if paused != was_paused:
                    logger.info("sweep paused: no new trials until it is resumed" if paused else "sweep resumed")
                    was_paused = paused
                more_to_run = not exhausted and not reached_target and not stopped and (cap is None or len(trials) < cap)
                while more_to_run and not paused and len(in_flight) < workers:
                    trial = search.ask()
                    if trial is None:
                        exhausted, more_to_run = True, False
                        break
                    run_id = new_run_id()
                    flow_run = await enqueue(client, queue, trial_spec(config, trial, run_id, sweep_id),
                                             config.launch.priority, values)
                    record = TrialRecord(trial.number, run_id, str(flow_run.id), trial.params, trial=trial)
                    trials.append(record)
                    in_flight[flow_run.id] = record
                    logger.info(f"trial {trial.number} enqueued as run {run_id}: {trial.params}")
                    more_to_run = cap is None or len(trials) < cap
                await table.publish([t.public() for t in trials])
                if not in_flight and not (paused and more_to_run):
                    break
                await _sleep(POLL_SECONDS)
                for flow_run_id, record in list(in_flight.items()):
                    flow_run = await client.read_flow_run(flow_run_id)
                    record.state = flow_run.state.name if flow_run.state else record.state
                    record.running = bool(flow_run.state and flow_run.state.is_running())
                    ended = bool(flow_run.state and flow_run.state.is_final())
                    if config.early_terminate is not None and (record.running or ended):
                        record.history = _metric_history(config, runs_dir, record)
                    if not ended:
                        continue
                    del in_flight[flow_run_id]
                    record.started = flow_run.start_time.isoformat() if flow_run.start_time else None
                    record.ended = flow_run.end_time.isoformat() if flow_run.end_time else None
                    final = _final_metric(config, runs_dir, record) if flow_run.state.is_completed() else None
                    if record.trial.stopped_early:
                        # Its last reported value stands, unless it completed before it could be stopped.
                        record.value = record.value if final is None else final
                        continue
                    record.value = final
                    search.tell(record.trial, record.value)
                    failed_in_a_row = failed_in_a_row + 1 if flow_run.state.is_failed() or flow_run.state.is_crashed() else 0
                    if failed_in_a_row >= config.scheduler.max_consecutive_failures and not stopped:
                        stopped = (f"stopped after {failed_in_a_row} trials in a row failed "
                                   f"(scheduler.max_consecutive_failures: {config.scheduler.max_consecutive_failures})")
                        logger.error(f"sweep {sweep_id} {stopped}; cancelling its {len(in_flight)} trials in flight")
                        await _cancel_trials(client, in_flight, logger)
                    logger.info(f"trial {record.number} ({record.run_id}) {record.state}: "
                                f"{config.metric.name if config.metric else 'metric'} = {record.value}")
                    if _reaches_target(config, record.value):
                        reached_target = True
                        logger.info(f"trial {record.number} reached the target {config.metric.target}")
                if config.early_terminate is not None:
                    await _stop_early(client, search, config, trials, in_flight, logger)
                done = len(trials) - len(in_flight)
                total = cap or max(len(trials), 1)
                await update_progress_artifact(progress, 100.0 * done / total,
                                               description=f"Sweep {sweep_id}: {done} of {total} trials finished")
            await table.publish([t.public() for t in trials])
        except BaseException:
            # The runner stopped this process (the sweep was cancelled in the UI) or the sweep crashed:
            # its trials in flight are part of it and go too.
            import anyio

            with anyio.CancelScope(shield=True):
                await _cancel_trials(client, in_flight, logger)
            raise

    best = best_trial(config, trials)
    await _record(sweep_id, queue, config, workers, trials, best, stopped)
    cancelled = await _cancel_requested_now(own_id)
    if best:
        logger.info(f"best: trial {best.number} ({best.run_id}) {best.params} -> {config.metric.name} = {best.value}")
    result = {"sweep_id": sweep_id, "queue": queue, "trials": [t.public() for t in trials],
              "best": best.public() if best else None}
    if cancelled:
        from prefect.states import Cancelled

        return Cancelled(message=f"sweep {sweep_id} cancelled; its trials in flight were cancelled", data=result)
    if stopped:
        from prefect.states import Failed

        return Failed(message=f"sweep {sweep_id} {stopped}; see their runs' logs", data=result)
    if trials and not any(t.state == "Completed" for t in trials):
        from prefect.states import Failed

        return Failed(message=f"sweep {sweep_id}: all {len(trials)} trials failed; see their runs' logs", data=result)
    return result


def best_trial(config: SweepConfig, trials: list[TrialRecord]) -> TrialRecord | None:
    return best(config.metric.goal if config.metric else None, trials, lambda t: t.value)


def _final_metric(config: SweepConfig, runs_dir, record: TrialRecord) -> float | None:
    if config.metric is None:
        return None
    value = read_run_metrics(runs_dir / record.run_id, record.run_id).summary.get(config.metric.name)
    return float(value) if isinstance(value, (int, float)) else None


def _reaches_target(config: SweepConfig, value: float | None) -> bool:
    if value is None or config.metric is None or config.metric.target is None:
        return False
    target = config.metric.target
    return value <= target if config.metric.goal == "minimize" else value >= target


def _metric_history(config: SweepConfig, runs_dir, record: TrialRecord) -> list[float]:
    metrics = read_run_metrics(runs_dir / record.run_id, record.run_id)
    return [float(value) for _, value in metrics.steps_of(config.metric.name)]


async def _stop_early(client: PrefectClient, search: Search, config: SweepConfig, trials: list[TrialRecord],
                      in_flight: dict[UUID, TrialRecord], logger) -> None:
    """Hyperband (W&B's rule, see hyperband.py): cancel the running trials that fall behind at a band."""
    running = {r.number: r for r in in_flight.values() if r.running and not r.trial.stopped_early}
    stop = runs_to_stop({t.number: t.history for t in trials}, running, hyperband_bands(config.early_terminate),
                        config.early_terminate.eta, config.metric.goal)
    for number in sorted(stop):
        record = running[number]
        record.value = record.history[-1]
        search.stopped_early(record.trial)
        logger.info(f"trial {record.number} ({record.run_id}) stopped early by hyperband after "
                    f"{len(record.history)} values of {config.metric.name}")
        await _cancel_run(client, UUID(record.flow_run_id))


async def _cancel_requested_now(own_id: UUID) -> bool:
    async with get_client() as client:
        state = (await client.read_flow_run(own_id)).state
    return state is not None and (state.is_cancelling() or state.is_cancelled())


async def _cancel_trials(client: PrefectClient, in_flight: dict[UUID, TrialRecord], logger) -> None:
    logger.info(f"cancelling the sweep's {len(in_flight)} trials in flight")
    for flow_run_id, record in in_flight.items():
        await _cancel_run(client, flow_run_id)
        record.state = "Cancelled"


async def _cancel_run(client: PrefectClient, flow_run_id: UUID) -> None:
    """Ask for a trial's run to stop; the server's rules decide, on the run's state at that moment.

    Not forced: a run that ended meanwhile keeps its final state (forcing once turned a run Completed
    a moment before into Cancelling, with no agent left to end it, and its sweep waited on it for
    ever); one no agent holds yet goes straight to Cancelled; a claimed one goes Cancelling, for its
    agent to stop.
    """
    from prefect.states import Cancelling

    await client.set_flow_run_state(flow_run_id, Cancelling())


async def _sleep(seconds: float) -> None:
    import anyio

    await anyio.sleep(seconds)


async def _record(sweep_id: str, queue: str, config: SweepConfig, workers: int, trials: list[TrialRecord],
                  best: TrialRecord | None, stopped: str = "") -> None:
    from prefect.artifacts import create_markdown_artifact

    metric = config.metric.name if config.metric else "metric"
    names = list(config.parameters)
    lines = [f"# Sweep {sweep_id}", "",
             f"Queue `{queue}`, method `{config.method}`, {len(trials)} trials, at most {workers} in flight.", ""]
    if stopped:
        lines += [f"**Stopped:** {stopped}.", ""]
    if best:
        lines += [f"**Best:** trial {best.number} (run `{best.run_id}`): {metric} = {best.value}, "
                  + ", ".join(f"{k} = {v}" for k, v in best.params.items()), ""]
    lines += ["| trial | run | state | " + " | ".join(names) + f" | {metric} | started | ended |",
              "|---|---|---|" + "---|" * len(names) + "---|---|---|"]
    for t in trials:
        cells = [str(t.number), f"`{t.run_id}`", t.state, *(str(t.params.get(n)) for n in names),
                 "" if t.value is None else f"{t.value:.6g}", t.started or "", t.ended or ""]
        lines.append("| " + " | ".join(cells) + " |")
    await create_markdown_artifact(markdown="\n".join(lines), key=f"sweep-{sweep_id}",
                                   description=f"Sweep {sweep_id}: trials and best result")


async def find_sweep(client: PrefectClient, sweep: str):
    """A sweep's flow run, by sweep id (its name) or flow run id."""
    from prefect.client.schemas.filters import FlowFilter, FlowFilterName, FlowRunFilter, FlowRunFilterName

    from prefect_launch.errors import LaunchError

    from prefect.exceptions import ObjectNotFound

    try:
        return await client.read_flow_run(UUID(sweep))
    except (ValueError, ObjectNotFound):  # not a flow run id: a sweep id
        pass
    runs = await client.read_flow_runs(flow_filter=FlowFilter(name=FlowFilterName(any_=["sweep"])),
                                       flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[sweep])))
    if not runs:
        raise LaunchError(f"sweep {sweep!r} not found")
    return runs[0]


async def set_sweep_state(sweep: str, action: str) -> Any:
    """`pause`, `resume` or `cancel` a running sweep; returns its flow run."""
    from prefect.states import Cancelling, Paused, Running

    from prefect_launch.errors import LaunchError

    async with get_client() as client:
        flow_run = await find_sweep(client, sweep)
        state = flow_run.state
        if state is None or state.is_final():
            raise LaunchError(f"sweep {flow_run.name} already ended ({state.name if state else 'no state'})")
        wanted = {"pause": (state.is_running(), Paused), "resume": (state.is_paused(), Running),
                  "cancel": (True, Cancelling)}
        allowed, new_state = wanted[action]
        if not allowed:
            raise LaunchError(f"sweep {flow_run.name} is {state.name}: cannot {action} it")
        # force: Prefect only pauses a run from inside it; the sweep flow watches its own state instead.
        await client.set_flow_run_state(flow_run.id, new_state(), force=True)
        return flow_run


async def create_sweep_run(config: SweepConfig, queue: str, seed: int | None = None):
    """Create the sweep's flow run (not yet started); its name is the new sweep id."""
    async with get_client() as client:
        return await client.create_flow_run(
            sweep, name=new_run_id(), tags=["sweep", f"queue:{queue}"],
            # exclude_unset: a num_workers the config left out stays unset, so the queue config's applies
            parameters={"config": config.model_dump(mode="json", exclude_unset=True), "queue": queue, "seed": seed},
        )


def execute(flow_run_id: UUID) -> Any:
    """Run a sweep flow run created by `create_sweep_run`, in this process; its result or final state."""
    import anyio
    from prefect.flow_engine import run_flow

    async def read():
        async with get_client() as client:
            return await client.read_flow_run(flow_run_id)

    flow_run = anyio.run(read)
    return anyio.run(lambda: run_flow(sweep, flow_run=flow_run, parameters=flow_run.parameters,
                                      return_type="state"))


if __name__ == "__main__":
    started = time.monotonic()
    final = execute(UUID(sys.argv[1]))
    print(f"sweep flow run {sys.argv[1]} ended {final.name} after {time.monotonic() - started:.0f} s", file=sys.stderr)
