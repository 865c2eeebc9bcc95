"""Heavy and hostile input from a job's submitter: bounded, refused in one line, never another run's problem.

Real Prefect server, real agents and processes, real wandb (offline).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

from conftest import JOBS, cli, flow_run_of, launch, on_server, run_id_of, run_logs, unique, wait_for_log


def _spec(tmp_path: Path, spec: dict) -> str:
    path = tmp_path / f"{unique('spec')}.json"
    path.write_text(json.dumps(spec))
    return str(path)


def test_sizes_over_the_limits_are_refused_in_one_line_naming_the_limit(tmp_path: Path, make_queue) -> None:
    from prefect_launch.spec import MAX_ARGUMENT, MAX_RUN_CONFIG, MAX_SPEC

    queue = make_queue("--resource", "local-process")
    cases = {
        "overrides.args[1]": {"overrides": {"args": ["ok", "x" * (MAX_ARGUMENT + 1)]}},
        "overrides.run_config": {"overrides": {"run_config": {"blob": "x" * MAX_RUN_CONFIG}}},
        "the job spec": {"resource_args": {"env": {"BLOB": "x" * MAX_SPEC}}},
    }
    for named, spec in cases.items():
        result = launch("-q", queue, "-u", str(JOBS), "-E", "python report.py", "-c", _spec(tmp_path, spec),
                        "--dry-run", check=False)
        assert result.returncode == 1, result.stdout
        errors = result.stderr.strip().splitlines()
        assert len(errors) == 1 and named in errors[0] and "at most" in errors[0], result.stderr
        assert "Traceback" not in result.stderr


def test_a_long_secret_argument_and_a_200_kb_run_config_reach_the_job_masked_and_whole(
        tmp_path: Path, make_queue, start_agent) -> None:
    """A run config longer than Linux takes in one environment string goes in pieces, which wandb
    joins; a 60,000-character secret argument is masked in every log line."""
    queue = make_queue("--resource", "local-process")
    start_agent("-q", queue)
    secret = "s" * 60_000
    run_config = {f"k{n}": "v" * 1_000 for n in range(200)}
    spec = _spec(tmp_path, {"overrides": {"run_config": run_config, "args": [f"--api-key={secret}"]}})
    result = launch("-q", queue, "-u", str(JOBS), "-E", "python report.py", "-c", spec, "--wait", timeout=240)
    flow_run = flow_run_of(run_id_of(result))
    assert flow_run.state.is_completed(), flow_run.state
    logs = run_logs(flow_run.id)
    # The job printed its config on one line; the log holds it in pieces of MAX_LOG_LINE characters.
    start = next(n for n, line in enumerate(logs) if line.startswith("CONFIG "))
    end = next(n for n, line in enumerate(logs) if line.startswith("ENV "))
    assert json.loads("".join(logs[start:end]).removeprefix("CONFIG ")) == {"lr": 0.01, "epochs": 1, **run_config}
    assert not any(secret in line for line in logs if not line.startswith(("ARGS ", "PROCESS ")))  # the job's own prints are its own
    assert any("--api-key=********" in line for line in logs if line.startswith("Submitting to"))


def _final_state(flow_run_id, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (state := on_server("read_flow_run", flow_run_id).state).is_final():
        assert time.monotonic() < deadline, state
        time.sleep(0.3)
    return state


def test_a_run_id_in_use_is_refused_at_enqueue_and_by_the_agent_and_the_first_run_goes_on(
        tmp_path: Path, make_queue, start_agent) -> None:
    from prefect.states import Cancelling

    from prefect_launch.deployments.queues import deployment_name

    queue, other_queue = make_queue("--resource", "local-process"), make_queue("--resource", "local-process")
    start_agent("-q", queue, "-q", other_queue)
    run_id = unique("victim").replace("-", "")
    launch("-q", queue, "-u", str(JOBS), "-E", "python report.py --no-wandb --sleep 600", "--run-id", run_id)
    wait_for_log(run_id, lambda line: line.startswith("ARGS "))
    first = flow_run_of(run_id)

    # On any queue, the CLI refuses the taken id before anything is enqueued.
    again = launch("-q", other_queue, "-u", str(JOBS), "-E", "python report.py", "--run-id", run_id, check=False)
    assert again.returncode == 1 and f"run id {run_id!r} is in use" in again.stderr, again.stderr
    assert [line for line in again.stderr.splitlines() if line.startswith("error:")] == again.stderr.splitlines()[-1:]
    assert "Traceback" not in again.stderr

    # A run created past the CLI (the API, the UI) with that id fails on the agent before it touches anything.
    deployment = on_server("read_deployment_by_name", deployment_name(other_queue))
    spec = {"source": first.parameters["spec"]["source"], "run_id": run_id,
            "entry_point": ["python", "report.py", "--no-wandb"]}
    second = on_server("create_flow_run_from_deployment", deployment.id, parameters={"spec": spec}, name=run_id)
    state = _final_state(second.id)
    assert state.is_failed() and f"run id {run_id!r} is in use" in state.message, state
    assert on_server("read_flow_run", first.id).state.is_running()

    # Once the first has ended, the id may be taken again (a W&B run resumed, say).
    on_server("set_flow_run_state", first.id, Cancelling())
    assert _final_state(first.id).is_cancelled()
    resumed = launch("-q", other_queue, "-u", str(JOBS), "-E", "python report.py", "--run-id", run_id, "--wait")
    assert resumed.returncode == 0 and run_id_of(resumed) == run_id


def test_a_line_the_job_writes_in_pieces_is_not_cut_by_its_other_stream(tmp_path: Path, make_queue, start_agent) -> None:
    code = tmp_path / "pieces"
    code.mkdir()
    # `print` under PYTHONUNBUFFERED writes its text, then its newline: here a stderr line falls between.
    (code / "pieces.py").write_text(
        "import sys\n"
        "for n in range(20):\n"
        "    sys.stdout.write(f'out {n} '); sys.stdout.flush()\n"
        "    sys.stderr.write(f'err {n}\\n'); sys.stderr.flush()\n"
        "    sys.stdout.write('end\\n'); sys.stdout.flush()\n")
    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    start_agent("-q", queue)
    run_id = run_id_of(launch("-q", queue, "-u", str(code), "-E", "python pieces.py", "--wait", timeout=300))
    logged = cli("logs", run_id).stdout.splitlines()
    assert [line for line in logged if line.startswith("out ")] == [f"out {n} end" for n in range(20)]
    assert [line for line in logged if line.startswith("err ")] == [f"err {n}" for n in range(20)]


def test_logs_pages_through_every_line_splits_long_ones_tail_shows_the_last_and_wait_prints_the_last(
        tmp_path: Path, make_queue, start_agent) -> None:
    lines = 3_000  # 15 pages of the API's 200
    code = tmp_path / "chatty"
    code.mkdir()
    (code / "chatty.py").write_text(f"print('y' * 150_000)\nfor n in range({lines}):\n    print(f'line {{n}}')\n")
    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    start_agent("-q", queue)
    waited = launch("-q", queue, "-u", str(code), "-E", "python chatty.py", "--wait", timeout=300)
    run_id = run_id_of(waited)
    printed = [line for line in waited.stdout.splitlines() if line.startswith("line ")]
    assert printed == [f"line {n}" for n in range(lines)], (len(printed), printed[-3:])

    every = cli("logs", run_id).stdout.splitlines()
    # A 150,000-character line reaches the log in pieces of at most MAX_LOG_LINE, all of it.
    assert [len(line) for line in every if line.startswith("y")] == [65_536, 65_536, 150_000 - 2 * 65_536]
    assert [line for line in every if line.startswith("line ")] == printed
    assert every[-1].startswith("Finished in state Completed")
    assert cli("logs", run_id, "--tail", "-n", "3").stdout.splitlines() == every[-3:]
    assert len(cli("logs", run_id, "-t").stdout.splitlines()) == 20  # Prefect's default for --tail
