"""`prefect-launch status` and `logs`, end to end: real server, real agent, real job processes.

The Kubernetes case (a pod Pending, Unschedulable, then Running) is in test_kubernetes.py, next to
the API stand-in's fixtures.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

from conftest import CLI, JOBS, REPO, cli, flow_run_of, launch, run_id_of, run_logs, wait_for_final

STAGES = ("queue wait", "resolve", "build", "push", "submit", "start", "run")


def stage_rows(status: str) -> dict[str, str]:
    """`status RUN`'s timeline as stage -> the rest of its row (duration, note)."""
    rows = {}
    for line in status.splitlines():
        found = re.match(rf"^  ({'|'.join(STAGES)})\s{{2,}}(.*)$", line)
        if found:
            rows[found[1]] = found[2]
    return rows


def test_status_logs_and_progress_of_a_local_process_run(make_queue, start_agent):
    queue = make_queue("--resource", "local-process")
    start_agent("-q", queue, "--name", f"agent-{queue}")
    waited = launch("-q", queue, "-u", str(JOBS), "-E", "python report.py --sleep 3", "--wait")
    run_id = run_id_of(waited)
    assert "[Running] run" in waited.stderr  # --wait showed the stage as it went (plain lines: not a terminal)
    assert "Run finished: Completed" in waited.stderr and "  start " in waited.stderr  # and the timeline at the end

    status = cli("status", run_id).stdout
    assert status.startswith(f"run {run_id}: Completed") and f"queue     {queue} (local-process)" in status
    assert f"agent     agent-{queue}" in status
    rows = stage_rows(status)
    assert list(rows) == list(STAGES), status
    assert all(re.match(r"\d+\.\d\d s", row) for row in rows.values()) and "ongoing" not in status
    assert float(rows["run"].split()[0]) >= 3  # the job slept 3 s once running
    assert cli("status", str(flow_run_of(run_id).id)).stdout == status  # the flow run id works as well

    logs = cli("logs", run_id).stdout.splitlines()
    assert any(line.startswith("CONFIG {") for line in logs)  # the job's own output
    assert any(line.startswith("Submitting to local-process") for line in logs)  # the agent's stages

    follower = launch("-q", queue, "-u", str(JOBS), "-E", "python report.py --sleep 4")
    followed = cli("logs", run_id_of(follower), "-f", timeout=120)
    assert flow_run_of(run_id_of(follower)).state.is_completed()  # -f returned once the run ended
    assert any(line.startswith("CONFIG {") for line in followed.stdout.splitlines())

    overview = cli("status").stdout
    block = overview[overview.index(f"queue {queue} (local-process)"):].split("\nqueue ")[0]
    assert re.search(rf"agent agent-{queue}: last heartbeat \S+ s ago \(alive\)", block), block
    assert "runs: Completed 2" in block


def test_a_run_on_a_queue_without_agent_says_so_and_unknown_runs_exit_2(make_queue):
    queue = make_queue("--resource", "local-process")
    run_id = run_id_of(launch("-q", queue, "-u", str(JOBS), "-E", "python report.py"))
    status = cli("status", run_id).stdout
    assert f"run {run_id}: Scheduled" in status
    assert f"waiting   no agent on queue {queue}" in status
    assert re.match(r"\d+\.\d\d s\s+ongoing", stage_rows(status)["queue wait"])
    block = cli("status").stdout.split(f"queue {queue} (local-process)\n")[1].split("\nqueue ")[0]
    assert block.splitlines()[:2] == ["  no agent", "  runs: Scheduled 1"]

    # --json: the same, for scripts; stdout holds the JSON alone.
    shown = json.loads(cli("status", run_id, "--json").stdout)
    assert shown["run_id"] == run_id and shown["state"] == "Scheduled" and shown["queue"] == queue
    assert shown["waiting"].startswith(f"no agent on queue {queue}") and shown["stages"][0]["stage"] == "queue wait"
    (overview,) = [q for q in json.loads(cli("status", "--json").stdout) if q["queue"] == queue]
    assert overview == {"queue": queue, "resource": "local-process", "paused": False, "runs": {"Scheduled": 1},
                        "agents": []}
    (listed,) = [q for q in json.loads(cli("queue", "list", "--json").stdout) if q["name"] == queue]
    assert listed == {"name": queue, "resource": "local-process", "templates": [], "paused": False}

    unknown = subprocess.run([CLI, "status", "no-such-run"], capture_output=True, text=True, cwd=REPO)
    assert unknown.returncode == 2 and unknown.stderr.strip().count("\n") == 0 and "no launch run 'no-such-run'" in unknown.stderr
    assert subprocess.run([CLI, "logs", "no-such-run"], capture_output=True, text=True, cwd=REPO).returncode == 2


def test_a_waiting_run_shows_its_place_and_when_it_should_start(make_queue, start_agent):
    """Priority order, then FIFO; the start estimated from the queue's recent rate, once it has one."""
    queue = make_queue("--resource", "local-process", "--prioritization", "--no-require-wandb-run")
    job = ("-q", queue, "-u", str(JOBS), "-E", "python report.py --no-wandb")
    low, high, medium = (run_id_of(launch(*job, "-P", priority)) for priority in ("low", "high", "medium"))
    places = {run_id: re.search(r"position (\d+) of (\d+)", cli("status", run_id).stdout).groups()
              for run_id in (low, high, medium)}
    assert places == {high: ("1", "3"), medium: ("2", "3"), low: ("3", "3")}
    status = cli("status", low).stdout
    assert "no job ended on this queue in the last 15 minutes to estimate a start" in status
    assert "position 3 of 3" in stage_rows(status)["queue wait"]  # its timeline shows it too

    agent = start_agent("-q", queue, "--max-jobs", "1")
    for run_id in (high, medium, low):
        assert flow_run_of(run_id) and wait_for_final(run_id).state.is_completed()
    agent.stop()
    first, second = (run_id_of(launch(*job)) for _ in range(2))
    status = cli("status", second).stdout
    estimate = re.search(r"position 2 of 2, starts in about (\S+ ?s|\d+m\d+s)", status)
    assert estimate, status


def test_a_run_past_its_time_to_live_is_never_started(make_queue, start_agent, tmp_path):
    """`launch --ttl`, or the queue config's `ttl` for jobs that give none: still waiting past it, the run ends
    Cancelled, its job never started."""
    config = tmp_path / "queue.yaml"
    config.write_text("ttl: 1\n")
    queue = make_queue("--resource", "local-process", "--config", str(config))
    job = ("-q", queue, "-u", str(JOBS), "-E", "python report.py")
    own, default = run_id_of(launch(*job, "--ttl", "1")), run_id_of(launch(*job))
    kept = run_id_of(launch(*job, "--ttl", "3600"))
    launched = time.monotonic()
    while time.monotonic() - launched < 2:  # past both time-to-lives, before any agent serves the queue
        time.sleep(0.1)
    start_agent("-q", queue)
    for run_id in (own, default):
        state = wait_for_final(run_id).state
        assert state.is_cancelled() and "longer than its time-to-live of 1 s" in state.message, state
        assert not any(line.startswith("Started process") for line in run_logs(flow_run_of(run_id).id))
    assert wait_for_final(kept).state.is_completed()
