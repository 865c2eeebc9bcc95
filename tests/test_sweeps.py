"""Sweeps: the W&B sweep config, the search, and a sweep on a real queue with a real agent."""

from __future__ import annotations

import json
import math
import textwrap
from pathlib import Path

import pytest
import yaml
from conftest import SEEDS, cli, unique

from prefect_launch.errors import LaunchError
from prefect_launch.sweeps.config import SweepConfig, load_sweep_config
from prefect_launch.sweeps.hyperband import hyperband_bands, runs_to_stop
from prefect_launch.sweeps.search import Search

BASE = {"method": "random", "metric": {"name": "loss", "goal": "minimize"}, "run_cap": 4, "job": "trainer",
        "parameters": {"x": {"min": 0.0, "max": 6.0}}}


def write(tmp_path: Path, config: dict, name: str = "sweep.yaml") -> Path:
    path = tmp_path / name
    path.write_text(yaml.safe_dump(config))
    return path


def test_seed_scheduler_block_reads_as_written() -> None:
    seed = yaml.safe_load((SEEDS / "004_sweep_config_1.yaml").read_text())
    assert SweepConfig.model_validate(seed).scheduler.num_workers == 4
    # The same block inside a full sweep config limits that sweep.
    assert SweepConfig.model_validate({**BASE, **seed}).check_runnable().scheduler.num_workers == 4


def test_full_config_and_defaults(tmp_path: Path) -> None:
    config = load_sweep_config(str(write(tmp_path, {
        **BASE, "method": "bayes",
        "parameters": {"lr": {"distribution": "log_uniform_values", "min": 1e-4, "max": 0.1},
                       "layers": {"min": 1, "max": 4}, "dropout": {"distribution": "q_uniform", "min": 0, "max": 0.5, "q": 0.1},
                       "optimizer": {"values": ["adam", "sgd"]}, "epochs": {"value": 3}},
        "early_terminate": {"type": "hyperband", "min_iter": 2, "eta": 2},
        "launch": {"queue": "gpu", "resource_args": {"env": {"A": "1"}}, "template_variables": {"gpus": 1}},
    })))
    kinds = {name: p.kind for name, p in config.parameters.items()}
    assert kinds == {"lr": "log_uniform_values", "layers": "int_uniform", "dropout": "q_uniform",
                     "optimizer": "categorical", "epochs": "constant"}
    assert config.scheduler.num_workers == 8 and config.launch.queue == "gpu"
    assert config.early_terminate.min_iter == 2


@pytest.mark.parametrize("change, named", [
    ({"method": "annealing"}, "method"),
    ({"metrc": {"name": "loss"}}, "metrc"),
    ({"metric": {"name": "loss", "goal": "lowest"}}, "metric.goal"),
    ({"parameters": {"x": {"min": 5, "max": 1}}}, "parameters.x"),
    ({"parameters": {"x": {"distribution": "normal", "mu": 0, "sigma": 1}}}, "parameters.x"),
    ({"parameters": {"x": {"mni": 0, "max": 1}}}, "parameters.x.mni"),
    ({"parameters": {}}, "parameters"),
    ({"run_cap": None}, "run_cap"),
    ({"run_cap": 0}, "run_cap"),
    ({"job": None}, "job"),
    ({"scheduler": {"num_workers": 0}}, "scheduler.num_workers"),
    ({"early_terminate": {"type": "hyperband"}}, "early_terminate"),
    ({"method": "grid"}, "parameters.x"),
])
def test_bad_configs_name_the_key(tmp_path: Path, change: dict, named: str) -> None:
    config = {k: v for k, v in {**BASE, **change}.items() if v is not None}
    with pytest.raises(LaunchError) as error:
        load_sweep_config(str(write(tmp_path, config)))
    assert f": {named}" in str(error.value), str(error.value)


def test_grid_enumerates_every_combination_then_stops() -> None:
    search = Search(SweepConfig.model_validate({**BASE, "method": "grid", "parameters": {
        "a": {"values": [1, 2, 3]}, "b": {"values": [{"k": 1}, None]}}}).check_runnable())
    seen = [search.ask().params for _ in range(6)]
    assert search.ask() is None
    assert len({json.dumps(p, sort_keys=True) for p in seen}) == 6


@pytest.mark.parametrize("method", ["random", "bayes"])
def test_samplers_stay_within_bounds(method: str) -> None:
    config = SweepConfig.model_validate({**BASE, "method": method, "run_cap": 30, "parameters": {
        "x": {"min": -2.0, "max": 6.0}, "n": {"min": 1, "max": 5},
        "lr": {"distribution": "log_uniform_values", "min": 1e-5, "max": 1e-1},
        "e": {"distribution": "log_uniform", "min": 0, "max": 2},
        "q": {"distribution": "q_uniform", "min": 0, "max": 1, "q": 0.25},
        "c": {"values": ["a", "b"]}}}).check_runnable()
    search = Search(config, seed=1)
    for _ in range(30):
        trial = search.ask()
        p = trial.params
        assert -2 <= p["x"] <= 6 and p["n"] in range(1, 6) and 1e-5 <= p["lr"] <= 1e-1
        assert 1 <= p["e"] <= math.e ** 2 and p["q"] in (0, 0.25, 0.5, 0.75, 1.0) and p["c"] in ("a", "b")
        search.tell(trial, (p["x"] - 3) ** 2)


def test_bayes_learns_where_the_minimum_is() -> None:
    """TPE after 10 random start-up trials: later suggestions crowd around x = 3."""
    search = Search(SweepConfig.model_validate({**BASE, "method": "bayes", "run_cap": 40}).check_runnable(), seed=0)
    xs = []
    for _ in range(40):
        trial = search.ask()
        xs.append(trial.params["x"])
        search.tell(trial, (trial.params["x"] - 3) ** 2)
    late = sorted(abs(x - 3) for x in xs[-15:])
    assert late[len(late) // 2] < 1.0, xs


def test_hyperband_stops_a_bad_trial_at_its_first_band_and_a_late_one_at_the_band_it_falls_behind() -> None:
    """W&B's rule, on W&B's config keys: min_iter 1, eta 3 gives bands 1, 3, 9 (capped by max_iter)."""
    config = SweepConfig.model_validate({**BASE, "run_cap": 20, "early_terminate": {
        "type": "hyperband", "min_iter": 1, "max_iter": 9, "eta": 3}}).check_runnable()
    bands = hyperband_bands(config.early_terminate)
    assert bands == [1, 3, 9]
    good = {n: [1.0 / step for step in range(1, 10)] for n in range(8)}
    bad = {**good, "bad": [100.0, 100.0]}
    assert runs_to_stop(bad, {"bad"}, bands, 3, "minimize") == {"bad"}
    # One value logged: no band passed yet, nothing to compare.
    assert runs_to_stop({**good, "bad": [100.0]}, {"bad"}, bands, 3, "minimize") == set()
    # Good until band 3, then behind: stopped there, not before.
    late = [1.0, 0.5, 0.33, 5.0]
    assert runs_to_stop({**good, "late": late[:3]}, {"late"}, bands, 3, "minimize") == set()
    assert runs_to_stop({**good, "late": late}, {"late"}, bands, 3, "minimize") == {"late"}
    # Maximize: the same histories, negated, stop the same run.
    flipped = {key: [-v for v in history] for key, history in bad.items()}
    assert runs_to_stop(flipped, {"bad"}, bands, 3, "maximize") == {"bad"}
    # Finished runs set the thresholds but are never stopped.
    assert runs_to_stop(bad, set(good), bands, 3, "minimize") == set()


def test_hyperband_bands_from_max_iter_and_s_count_back_from_max_iter() -> None:
    from prefect_launch.sweeps.config import EarlyTerminate

    assert hyperband_bands(EarlyTerminate(type="hyperband", max_iter=27, s=2)) == [3, 9]
    assert hyperband_bands(EarlyTerminate(type="hyperband", max_iter=27, s=5)) == [1, 3, 9]
    with pytest.raises(ValueError, match="'max_iter' with 's'"):
        EarlyTerminate(type="hyperband", max_iter=27)


TRAIN = """
import time
import wandb

run = wandb.init(config={"x": 0.0})
time.sleep(1)  # long enough that trials overlap when the sweep lets them
run.log({"loss": (run.config.x - 3) ** 2})
run.finish()
"""


def _trainer_on_a_queue(tmp_path: Path, make_queue, start_agent, script: str, *agent_args: str) -> tuple[dict, str]:
    """A stored code job running `script`, a local-process queue and an agent on it.

    Returns the sweep config keys that name the job, and the queue.
    """
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(textwrap.dedent(script))
    project = unique("sweeps")
    cli("job", "create", "code", str(code), "-p", project, "-n", "trainer", "-E", "python train.py")
    queue = make_queue("--resource", "local-process", prefix="sweep")
    start_agent("-q", queue, *agent_args)
    return {"job": f"{project}/trainer", "project": project}, queue


def test_sweep_on_a_queue_end_to_end(tmp_path: Path, make_queue, start_agent) -> None:
    # The agent could run 4: the sweep's limit of 2 must hold.
    job, queue = _trainer_on_a_queue(tmp_path, make_queue, start_agent, TRAIN, "--max-jobs", "4")
    config = write(tmp_path, {
        "method": "bayes", "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"x": {"min": 0.0, "max": 6.0}}, "run_cap": 6,
        "scheduler": {"num_workers": 2}, **job,
    })

    result = cli("sweep", "create", str(config), "-q", queue, "--seed", "3", "--wait", timeout=170)
    assert "Still processing items" not in result.stderr  # Prefect's services drain quietly at exit

    lines = result.stdout.splitlines()
    sweep_id = lines[0]
    trials = [line.split(maxsplit=4) for line in lines if line.startswith("trial ")]
    assert len(trials) == 6 and all(t[3] == "Completed" for t in trials), result.stdout + result.stderr
    best_line = next(line for line in lines if line.startswith("best: "))

    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterKey, FlowRunFilter, FlowRunFilterName

    async def read():
        async with get_client() as client:
            sweep_run = (await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[sweep_id]))))[0]
            runs = [(await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[t[2]]))))[0]
                    for t in trials]
            keys = [f"sweep-{sweep_id}", f"sweep-{sweep_id}-progress"]
            return sweep_run, runs, await client.read_artifacts(
                artifact_filter=ArtifactFilter(key=ArtifactFilterKey(any_=keys)))

    sweep_run, runs, artifacts = anyio.run(read)
    assert sweep_run.state.is_completed()
    # Every trial was a launch job of the queue's launch deployment, and it completed.
    assert all(r.state.is_completed() and r.deployment_id for r in runs)
    assert len({r.deployment_id for r in runs}) == 1
    # Never more than num_workers at once: at every start, count the trials running.
    spans = [(r.start_time, r.end_time) for r in runs]
    most = max(sum(1 for s, e in spans if s <= start < e) for start, _ in spans)
    assert most <= 2, spans
    assert most == 2, "two trials never overlapped: the limit was not exercised"

    values = {t[2]: float(t[-1].rsplit(maxsplit=1)[-1]) for t in trials}
    best_value = min(values.values())
    assert f"value {best_value:.6g}" in best_line
    by_key = {a.key: a for a in artifacts if a.key}
    table = by_key[f"sweep-{sweep_id}"].data
    assert f"loss = {best_value}" in table and "**Best:**" in table
    assert by_key[f"sweep-{sweep_id}-progress"].data == 100.0


def test_seed_scheduler_block_in_a_queue_config_limits_its_sweeps(make_queue) -> None:
    """Seed 004 puts `scheduler: num_workers: 4` in the queue config: sweeps on it that set no limit get 4."""
    import anyio
    from prefect.client.orchestration import get_client

    from prefect_launch.deployments.queues import read_queue

    queue = make_queue("--resource", "local-container", "--config", str(SEEDS / "004_sweep_config_1.yaml"), prefix="sweep")

    async def read():
        async with get_client() as client:
            return (await read_queue(client, queue)).base_job_template["job_configuration"]

    queue_config = anyio.run(read)
    assert SweepConfig.model_validate(BASE).num_workers(queue_config) == 4
    assert SweepConfig.model_validate({**BASE, "scheduler": {"num_workers": 2}}).num_workers(queue_config) == 2


SLOW_TRAIN = """
import time
import wandb

run = wandb.init()
print("trial started", flush=True)
time.sleep(120)
run.finish()
"""


def test_cancelling_a_sweep_cancels_its_trials_in_flight(tmp_path: Path, make_queue, start_agent) -> None:
    import os
    import subprocess
    import sys
    import time

    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId, FlowRunFilter, FlowRunFilterName

    from prefect_launch.deployments.queues import deployment_name

    job, queue = _trainer_on_a_queue(tmp_path, make_queue, start_agent, SLOW_TRAIN, "--max-jobs", "4")
    config = write(tmp_path, {**BASE, "run_cap": 6, "scheduler": {"num_workers": 2}, **job})

    started = cli("sweep", "create", str(config), "-q", queue)  # in the background: returns at once
    sweep_id = started.stdout.splitlines()[0]

    async def read():
        async with get_client() as client:
            sweep_run = (await client.read_flow_runs(
                flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[sweep_id]))))[0]
            deployment = await client.read_deployment_by_name(deployment_name(queue))
            trials = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            return sweep_run, trials

    deadline = time.monotonic() + 90
    while True:
        sweep_run, trials = anyio.run(read)
        if sum(1 for t in trials if t.state.is_running()) == 2:
            break
        assert time.monotonic() < deadline, [(t.name, t.state.name) for t in trials]
        time.sleep(0.5)

    subprocess.run([str(Path(sys.executable).with_name("prefect")), "flow-run", "cancel", str(sweep_run.id)],
                   check=True, capture_output=True, env=os.environ.copy())

    deadline = time.monotonic() + 90
    while True:
        sweep_run, trials = anyio.run(read)
        if sweep_run.state.is_final() and all(t.state.is_final() for t in trials):
            break
        assert time.monotonic() < deadline, (sweep_run.state, [(t.name, t.state.name) for t in trials])
        time.sleep(0.5)
    assert sweep_run.state.is_cancelled(), sweep_run.state
    assert len(trials) == 2 and all(t.state.is_cancelled() for t in trials), [(t.name, t.state.name) for t in trials]


@pytest.mark.parametrize("change, message", [
    ({"parameters": {"x": {"min": 0, "max": 1, "distrib": "uniform"}}}, "parameters.x.distrib: Extra inputs are not permitted"),
    ({"method": "bayes", "metric": None}, "metric: missing; bayes search needs a metric"),
    ({"job": "nosuch-job"}, "job uncategorized/nosuch-job not found"),
])
def test_cli_refuses_bad_sweeps_in_one_line(tmp_path: Path, change: dict, message: str) -> None:
    """Refused before anything is created: the queue is not even looked up."""
    queue = unique("never-created")
    config = write(tmp_path, {k: v for k, v in {**BASE, **change}.items() if v is not None})
    result = cli("sweep", "create", str(config), "-q", queue, check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.count("\n") == 1 and message in result.stderr, result.stderr


def test_a_sweep_whose_trials_all_fail_fails(tmp_path: Path, make_queue, start_agent) -> None:
    job, queue = _trainer_on_a_queue(tmp_path, make_queue, start_agent, "raise SystemExit(3)\n")
    config = write(tmp_path, {**BASE, "run_cap": 2, "scheduler": {"num_workers": 2}, **job})
    result = cli("sweep", "create", str(config), "-q", queue, "--wait", check=False, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "all 2 trials failed" in result.stderr
    assert [line.split()[3] for line in result.stdout.splitlines() if line.startswith("trial ")] == ["Failed", "Failed"]


def test_a_sweep_stops_after_trials_fail_in_a_row(tmp_path: Path, make_queue, start_agent) -> None:
    """A broken job would fail every trial of a 10-trial sweep: it stops after 3 in a row and says why."""
    job, queue = _trainer_on_a_queue(tmp_path, make_queue, start_agent, "raise SystemExit(3)\n")
    config = write(tmp_path, {**BASE, "run_cap": 10, "scheduler": {"num_workers": 1, "max_consecutive_failures": 3},
                              **job})
    result = cli("sweep", "create", str(config), "-q", queue, "--wait", check=False, timeout=180)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "stopped after 3 trials in a row failed (scheduler.max_consecutive_failures: 3)" in result.stderr
    assert [line.split()[3] for line in result.stdout.splitlines() if line.startswith("trial ")] == ["Failed"] * 3


PAUSABLE_TRAIN = """
import time
import wandb

run = wandb.init(config={"x": 0.0})
time.sleep(3)
run.log({"loss": (run.config.x - 3) ** 2})
run.finish()
"""


def test_pause_and_resume_a_sweep(tmp_path: Path, make_queue, start_agent) -> None:
    """Paused: the trial in flight finishes, no new one is queued; resumed: the sweep runs to its cap."""
    import time

    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from prefect_launch.deployments.queues import deployment_name
    from prefect_launch.sweeps.flow import find_sweep

    job, queue = _trainer_on_a_queue(tmp_path, make_queue, start_agent, PAUSABLE_TRAIN)
    config = write(tmp_path, {**BASE, "run_cap": 2, "scheduler": {"num_workers": 1}, **job})
    sweep_id = cli("sweep", "create", str(config), "-q", queue).stdout.splitlines()[0]

    async def read():
        async with get_client() as client:
            deployment = await client.read_deployment_by_name(deployment_name(queue))
            trials = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            return await find_sweep(client, sweep_id), trials

    def wait_until(predicate, what: str, timeout: float = 60):
        deadline = time.monotonic() + timeout
        while True:
            sweep_run, trials = anyio.run(read)
            if predicate(sweep_run, trials):
                return sweep_run, trials
            assert time.monotonic() < deadline, (what, sweep_run.state, [(t.name, t.state.name) for t in trials])
            time.sleep(0.5)

    wait_until(lambda s, t: any(r.state.is_running() for r in t), "first trial running")
    cli("sweep", "pause", sweep_id)
    wait_until(lambda s, t: s.state.is_paused() and all(r.state.is_final() for r in t), "trial in flight finished")
    time.sleep(4)  # several of the sweep's polls: still paused, nothing new
    sweep_run, trials = anyio.run(read)
    assert sweep_run.state.is_paused() and len(trials) == 1, [(t.name, t.state.name) for t in trials]
    assert "cannot pause" in cli("sweep", "pause", sweep_id, check=False).stderr
    # While it runs: its trials and best so far, from the table the sweep keeps up to date.
    shown = json.loads(cli("sweep", "status", sweep_id, "--json").stdout)
    assert shown["state"] == "Paused" and [t["state"] for t in shown["trials"]] == ["Completed"]
    assert shown["best"] == shown["trials"][0] and shown["best"]["value"] is not None

    cli("sweep", "resume", sweep_id)
    sweep_run, trials = wait_until(lambda s, t: s.state.is_final(), "sweep finished", timeout=90)
    assert sweep_run.state.is_completed(), sweep_run.state
    assert len(trials) == 2 and all(t.state.is_completed() for t in trials)
    status = cli("sweep", "status", sweep_id).stdout
    assert status.startswith(f"sweep {sweep_id}: Completed") and "best so far: trial" in status
    (listed,) = [sweep for sweep in json.loads(cli("sweep", "list", "--limit", "100", "--json").stdout) if sweep["sweep_id"] == sweep_id]
    assert [t["state"] for t in listed["trials"]] == ["Completed", "Completed"] and listed["best"] is not None
    assert f"{sweep_id}  Completed  queue {queue}" in cli("sweep", "list", "--limit", "100").stdout


def test_scheduled_sweeps_run_on_their_schedule(tmp_path: Path, make_queue, start_agent) -> None:
    """`sweep schedule --interval` deploys sweep/NAME and serves it: the scheduled sweep runs its trials."""
    import os
    import signal
    import subprocess
    import time

    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import DeploymentFilter, DeploymentFilterId

    from conftest import CLI, REPO

    job, queue = _trainer_on_a_queue(tmp_path, make_queue, start_agent, TRAIN)
    config = write(tmp_path, {**BASE, "run_cap": 2, "scheduler": {"num_workers": 2}, **job})
    refused = cli("sweep", "schedule", str(config), "-q", queue, "--cron", "every day", check=False)
    assert refused.returncode == 1 and "--cron 'every day'" in refused.stderr, refused.stderr

    name = unique("nightly")
    log = tmp_path / "serve.log"
    serving = subprocess.Popen([CLI, "sweep", "schedule", str(config), "-q", queue, "--interval", "3600", "--name", name],
                               stdout=subprocess.DEVNULL, stderr=log.open("w"), cwd=REPO, start_new_session=True,
                               env={**os.environ, "PREFECT_RUNNER_POLL_FREQUENCY": "1"})

    async def read():
        async with get_client() as client:
            try:
                deployment = await client.read_deployment_by_name(f"sweep/{name}")
            except Exception:
                return None, []
            runs = await client.read_flow_runs(
                deployment_filter=DeploymentFilter(id=DeploymentFilterId(any_=[deployment.id])))
            return deployment, runs

    async def delete(deployment_id):
        async with get_client() as client:
            await client.delete_deployment(deployment_id)

    try:
        deadline = time.monotonic() + 120
        while True:
            deployment, runs = anyio.run(read)
            if any(r.state.is_final() for r in runs):
                break
            assert serving.poll() is None, log.read_text()
            assert time.monotonic() < deadline, (log.read_text(), [(r.name, r.state.name) for r in runs])
            time.sleep(1)
        assert deployment.schedules and deployment.schedules[0].schedule.interval.total_seconds() == 3600
        sweep_run = next(r for r in runs if r.state.is_final())
        assert sweep_run.state.is_completed(), (sweep_run.state, log.read_text())
        # The first sweep started at once; the schedule's next one is an interval after it, not sooner.
        upcoming = min(r.expected_start_time for r in runs if r.state.is_scheduled())
        assert 3500 < (upcoming - sweep_run.expected_start_time).total_seconds() <= 3600, (upcoming, sweep_run)
        result = cli("sweep", "pause", sweep_run.name, check=False)
        assert "already ended (Completed)" in result.stderr
    finally:
        serving.send_signal(signal.SIGINT)
        try:
            serving.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(serving.pid, signal.SIGKILL)
            serving.wait()
        deployment, _ = anyio.run(read)
        if deployment is not None:
            anyio.run(delete, deployment.id)


def test_stopping_a_trial_leaves_a_run_that_ended_meanwhile_as_it_ended() -> None:
    """The sweep reads a trial Running, hyperband says stop, the trial completes, then the sweep asks
    it to stop: it stays Completed (forced, it became Cancelling with no agent left to end it, and its
    sweep waited for ever). A waiting trial is Cancelled at once; a running one goes Cancelling."""
    import anyio
    from prefect import flow
    from prefect.client.orchestration import get_client
    from prefect.states import Completed, Running, Scheduled

    from prefect_launch.sweeps.flow import _cancel_run

    @flow(name="trial-stand-in")
    def trial() -> None: ...

    async def stop_each():
        async with get_client() as client:
            ended = await client.create_flow_run(trial, state=Running())
            seen_running = await client.read_flow_run(ended.id)
            await client.set_flow_run_state(ended.id, Completed())
            fresh_read = client.read_flow_run

            async def stale_read(flow_run_id):  # what the sweep saw before the trial completed
                return seen_running if flow_run_id == ended.id else await fresh_read(flow_run_id)

            client.read_flow_run = stale_read
            await _cancel_run(client, ended.id)
            client.read_flow_run = fresh_read
            waiting = await client.create_flow_run(trial, state=Scheduled())
            await _cancel_run(client, waiting.id)
            running = await client.create_flow_run(trial, state=Running())
            await _cancel_run(client, running.id)
            return [(await client.read_flow_run(run.id)).state.name for run in (ended, waiting, running)]

    assert anyio.run(stop_each) == ["Completed", "Cancelled", "Cancelling"]


HYPERBAND_TRAIN = """
import time
import wandb

run = wandb.init(config={"x": 0.0})
far = abs(run.config.x - 3) > 10
for step in range(1, 10):
    run.log({"loss": (run.config.x - 3) ** 2 + 1.0 / step}, step=step)
    time.sleep(3.0 if far else 0.05)  # a far trial takes 27 s unless hyperband stops it
run.finish()
"""


@pytest.mark.timeout(600)  # nine trials one at a time; slow on a loaded CI machine
def test_hyperband_stops_trials_early_on_a_queue(tmp_path: Path, make_queue, start_agent) -> None:
    """The whole path: a running trial's metric per step from its W&B run file, optuna's pruner, the
    trial's launch run cancelled long before its end; the sweep goes on to its best."""
    import anyio
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName

    job, queue = _trainer_on_a_queue(tmp_path, make_queue, start_agent, HYPERBAND_TRAIN)
    # Each near trial beats every one before it at every band, so none is behind; the far ones are.
    xs = [3.5, 3.4, 3.3, 3.2, 3.1, 3.0, 50.0, 60.0, 70.0]
    config = write(tmp_path, {
        "method": "grid", "metric": {"name": "loss", "goal": "minimize"},
        "parameters": {"x": {"values": xs}}, "scheduler": {"num_workers": 1},
        "early_terminate": {"type": "hyperband", "min_iter": 1, "max_iter": 9, "eta": 3}, **job,
    })
    result = cli("sweep", "create", str(config), "-q", queue, "--wait", timeout=540)

    trials = [line.split(maxsplit=4) for line in result.stdout.splitlines() if line.startswith("trial ")]
    assert len(trials) == len(xs), result.stdout
    stopped = [t[2] for t in trials if t[3] == "Cancelled"]
    # W&B's rule is deterministic: the three far trials fall behind at the first band, the near ones never.
    assert [t[1] for t in trials if t[3] == "Cancelled"] == ["6", "7", "8"], result.stdout + result.stderr
    assert "best: trial 5 " in result.stdout and "{'x': 3.0}" in result.stdout

    async def read():
        async with get_client() as client:
            return await client.read_flow_runs(flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=stopped)))

    for run in anyio.run(read):
        assert run.state.is_cancelled(), run.state
        assert (run.end_time - run.start_time).total_seconds() < 24, "stopped long before its 27 s"
