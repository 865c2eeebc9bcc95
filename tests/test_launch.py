"""Launch jobs end to end: real Prefect server, real agent, real processes, real wandb (offline)."""

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import anyio
from prefect.client.orchestration import get_client

from conftest import EXAMPLES, JOBS, cancel_run, cli, dry_run_submission, flow_run_of, job_report, launch, peak_overlap, run_id_of, run_logs, unique, wait_for_final

STAGES = ["resolve-source", "build", "push", "submit", "monitor"]


async def _task_runs_and_artifacts(flow_run_id):
    from prefect.client.schemas.filters import ArtifactFilter, ArtifactFilterFlowRunId, FlowRunFilter, FlowRunFilterId

    async with get_client() as client:
        tasks = await client.read_task_runs(flow_run_filter=FlowRunFilter(id=FlowRunFilterId(any_=[flow_run_id])))
        artifacts = await client.read_artifacts(
            artifact_filter=ArtifactFilter(flow_run_id=ArtifactFilterFlowRunId(any_=[flow_run_id]))
        )
        return tasks, artifacts


def test_job_runs_with_overrides_stages_and_artifact(make_queue, start_agent, tmp_path):
    queue = make_queue("--resource", "local-process", "--config",
                       str(_write(tmp_path / "q.yaml", "env:\n  JOB_RUN: '${run_id}@${project_name}'\n  MY_TOKEN: s3cret-value\n")))
    start_agent("-q", queue)
    spec = _write(tmp_path / "spec.json", json.dumps(
        {"overrides": {"run_config": {"lr": 0.25, "epochs": 7}, "args": ["--extra", "1"]}}))
    result = launch("-q", queue, "-u", str(JOBS), "-E", "python report.py", "-c", str(spec),
                    "-p", "proj", "--name", "nice-name", "--wait")
    run_id = run_id_of(result)
    flow_run = flow_run_of(run_id)
    assert flow_run.state.is_completed()

    logs = run_logs(flow_run.id)
    assert job_report(logs, "CONFIG") == {"lr": 0.25, "epochs": 7}  # wandb.config holds the overrides
    env = job_report(logs, "ENV")
    assert env["WANDB_RUN_ID"] == run_id and env["WANDB_NAME"] == "nice-name" and env["WANDB_PROJECT"] == "proj"
    assert env["JOB_RUN"] == f"{run_id}@proj"
    assert job_report(logs, "ARGS") == ["--extra", "1"]
    assert "CONFIG {" in result.stdout  # --wait streamed the job's output
    # The dry run of the same job and run id shows exactly what the agent started.
    shown = dry_run_submission("-q", queue, "-u", str(JOBS), "-E", "python report.py", "-c", str(spec), "-p", "proj",
                               "--name", "nice-name", "--run-id", run_id, home_dir=tmp_path / "home")
    assert job_report(logs, "PROCESS") == {"argv": shown["argv"], "cwd": shown["cwd"]}
    launch_variables = {k: v for k, v in shown["env"].items() if k.startswith(("WANDB_", "JOB_"))}
    assert launch_variables and {k: env.get(k) for k in launch_variables} == launch_variables

    tasks, artifacts = anyio.run(_task_runs_and_artifacts, flow_run.id)
    assert sorted(t.name.rsplit("-", 1)[0] for t in tasks) == sorted(STAGES)
    assert all(t.state.is_completed() for t in tasks)
    (artifact,) = [a for a in artifacts if a.key == f"launch-{run_id}"]
    for stage in ("queue wait", "resolve", "build", "push", "submit", "run"):
        assert f"| {stage} |" in artifact.data
    assert "s3cret-value" not in artifact.data and "********" in artifact.data
    assert not any("s3cret-value" in line for line in logs)
    assert "s3cret-value" not in json.dumps(flow_run.parameters)


def test_exit_code_sets_failed_and_wait_exits_nonzero(make_queue, start_agent):
    queue = make_queue("--resource", "local-process")
    start_agent("-q", queue)
    result = launch("-q", queue, "-u", str(JOBS), "-E", "python report.py --exit 3", "--wait", check=False)
    assert result.returncode == 1
    flow_run = flow_run_of(run_id_of(result))
    assert flow_run.state.is_failed() and "exited with code 3" in flow_run.state.message


def test_job_must_call_wandb_init_unless_queue_opts_out(make_queue, start_agent):
    strict = make_queue("--resource", "local-process")
    lenient = make_queue("--resource", "local-process", "--no-require-wandb-run")
    start_agent("-q", strict, "-q", lenient)
    failed = launch("-q", strict, "-u", str(JOBS), "-E", "python report.py --no-wandb", "--wait", check=False)
    state = flow_run_of(run_id_of(failed)).state
    assert failed.returncode == 1 and state.is_failed() and "wandb.init" in state.message
    passed = launch("-q", lenient, "-u", str(JOBS), "-E", "python report.py --no-wandb", "--wait")
    assert flow_run_of(run_id_of(passed)).state.is_completed()


def test_cancelling_the_run_ends_the_process_group(make_queue, start_agent, tmp_path):
    queue = make_queue("--resource", "local-process")
    start_agent("-q", queue)
    pid_file = tmp_path / "job.pid"
    run_id = run_id_of(launch("-q", queue, "-u", str(JOBS), "-E", f"python report.py --sleep 300 --pid-file {pid_file}"))
    deadline = time.monotonic() + 60
    while not pid_file.exists() or not pid_file.read_text():
        assert time.monotonic() < deadline, "job never started"
        time.sleep(0.2)
    pid = int(pid_file.read_text())
    cancel_run(run_id)
    final = wait_for_final(run_id, timeout=60)
    assert final.state.is_cancelled()
    assert not _alive(pid), "the job's process outlived its cancelled run"


def test_bad_jobs_fail_clearly_and_the_agent_keeps_serving(make_queue, start_agent, tmp_path):
    queue = make_queue("--resource", "local-process")
    agent = start_agent("-q", queue, "--max-jobs", "1")
    bad_spec = _write(tmp_path / "bad.json", json.dumps({"resource_args": {"env": {"X": "${nope}"}}}))
    runs = [
        ("good", ("-E", "python report.py")),
        ("no-binary", ("-E", "definitely-not-a-program --flag")),
        ("bad-macro", ("-E", "python report.py", "-c", str(bad_spec))),
        ("good", ("-E", "python report.py")),
    ]
    ids = [(kind, run_id_of(launch("-q", queue, "-u", str(JOBS), *args))) for kind, args in runs]
    for kind, run_id in ids:
        state = wait_for_final(run_id).state
        if kind == "good":
            assert state.is_completed(), state
        else:
            assert state.is_failed(), state
    messages = {kind: flow_run_of(run_id).state.message for kind, run_id in ids}
    assert "definitely-not-a-program" in messages["no-binary"] and "could not start" in messages["no-binary"]
    assert "${nope}" in messages["bad-macro"] and "resource_args.env.X" in messages["bad-macro"]
    assert agent.alive()


def test_max_jobs_bounds_running_jobs_across_queues(make_queue, start_agent, tmp_path):
    first = make_queue("--resource", "local-process", "--no-require-wandb-run")
    second = make_queue("--resource", "local-process", "--no-require-wandb-run")
    stamps = tmp_path / "stamps.txt"
    ids = [run_id_of(launch("-q", queue, "-u", str(JOBS), "-E", f"python report.py --no-wandb --sleep 2 --stamp-file {stamps}"))
           for queue in (first, second) * 3]
    start_agent("-q", first, "-q", second, "--max-jobs", "2")
    for run_id in ids:
        assert wait_for_final(run_id).state.is_completed()
    peak, intervals = peak_overlap(stamps)
    assert len(intervals) == 6
    assert peak == 2, f"expected 2 jobs at once at most and at least once, saw {peak}"


def test_agent_on_a_missing_queue_says_so():
    result = cli("agent", "-q", unique("missing"), check=False, timeout=60)
    assert result.returncode == 1 and "not found" in result.stderr and "queue create" in result.stderr


def test_unknown_queue_on_launch_says_so():
    result = launch("-q", unique("missing"), "-u", str(JOBS), "-E", "python report.py", check=False)
    assert result.returncode == 1 and "not found" in result.stderr


def test_job_definitions_create_list_describe_launch(make_queue, start_agent, tmp_path):
    project = unique("proj")
    cli("job", "create", "code", str(JOBS), "-p", project, "-n", "reporter", "-E", "python report.py")
    cli("job", "create", "image", "registry.local/trainer:1", "-p", project, "-E", "python train.py")
    listed = cli("job", "list", "-p", project).stdout.splitlines()
    assert [line.split("\t")[:2] for line in listed] == [[f"{project}/reporter", "code"], [f"{project}/trainer", "image"]]
    described = json.loads(cli("job", "describe", "reporter", "-p", project).stdout)
    assert described["source"]["digest"].startswith("sha256:") and described["entry_point"] == ["python", "report.py"]

    queue = make_queue("--resource", "local-process")
    start_agent("-q", queue)
    spec = {"overrides": {"run_config": {"lr": 0.5}}}
    result = cli("launch", "-q", queue, "-j", f"{project}/reporter", "-p", project, "--wait",
                 "-c", str(_write(tmp_path / "spec.json", json.dumps(spec))), timeout=180)
    assert job_report(run_logs(flow_run_of(run_id_of(result)).id), "CONFIG")["lr"] == 0.5

    missing = cli("job", "describe", "nope", "-p", project, check=False)
    assert missing.returncode == 1 and "not found" in missing.stderr


def test_a_command_on_the_embedded_server_starts_no_throwaway_server():
    """With no PREFECT_API_URL, commands use the embedded server (here the session's, recorded in
    the home) even when they import Prefect before connecting; Prefect then read its settings too
    early and started a temporary server of its own, which cost `job create` 20 s."""
    project = unique("embedded")
    embedded = {"PREFECT_API_URL": ""}
    created = cli("job", "create", "code", str(EXAMPLES / "train"), "-p", project, "-n", "t", "-E", "python train.py",
                  env=embedded, process=True)
    assert "temporary server" not in created.stderr, created.stderr
    assert f"{project}/t" in cli("job", "list", "-p", project, env=embedded, process=True).stdout


def test_prefect_worker_start_type_launch_runs_jobs(make_queue):
    """The worker type is registered with Prefect: `prefect worker start --type launch` runs launch jobs."""
    queue = make_queue("--resource", "local-process")
    run_id = run_id_of(launch("-q", queue, "-u", str(JOBS), "-E", "python report.py"))
    subprocess.run(
        [str(Path(sys.executable).with_name("prefect")), "worker", "start", "--pool", queue, "--type", "launch", "--run-once"],
        check=True, capture_output=True, timeout=120, env=os.environ.copy(),
    )
    assert wait_for_final(run_id, timeout=30).state.is_completed()


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_a_run_left_pending_by_a_dead_agent_goes_back_to_its_queue(make_queue, start_agent, monkeypatch):
    from prefect.states import Pending

    queue = make_queue("--resource", "local-process")
    run_id = run_id_of(launch("-q", queue, "-u", str(JOBS), "-E", "python report.py"))
    flow_run = flow_run_of(run_id)

    async def claim_and_die() -> None:  # what an agent's claim leaves behind when it dies before the start
        async with get_client() as client:
            assert (await client.set_flow_run_state(flow_run.id, Pending())).status.value == "ACCEPT"

    anyio.run(claim_and_die)
    monkeypatch.setenv("PREFECT_LAUNCH_PENDING_TIMEOUT", "3")
    start_agent("-q", queue)  # a new agent: Pending runs are not scheduled runs, so only the timeout frees it
    final = wait_for_final(run_id, timeout=120)
    assert final.state.is_completed(), final.state

    async def messages() -> list[str]:
        async with get_client() as client:
            return [state.message or "" for state in await client.read_flow_run_states(flow_run.id)]

    requeued = [m for m in anyio.run(messages) if m.startswith(f"Back on queue {queue}: Pending for")]
    assert len(requeued) == 1, anyio.run(messages)
