"""Fair share (issue 22): a queue's `max_running_per_entity` holds across every agent of the queue.

Three agents with two job slots each serve one local-process queue capped at two jobs per
W&B entity. Five jobs of one entity, which run until the test releases them, are enqueued
before two of another: the first entity runs two at once although four slots stay free, its
other runs wait and `status` says why, and the second entity's jobs start and end meanwhile.
Released, the first entity's backlog drains two at a time and every slot is free again.
"""

from __future__ import annotations

import time

from conftest import JOBS, _client, cli, flow_run_of, launch, peak_overlap, run_id_of, wait_for_final


def _until(what: str, condition, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while not (found := condition()):
        assert time.monotonic() < deadline, f"{what} not within {timeout} s"
        time.sleep(0.3)
    return found


def test_max_running_per_entity_holds_across_three_agents(make_queue, start_agent, tmp_path):
    config = tmp_path / "queue.yaml"
    config.write_text("max_running_per_entity: 2\n")
    queue = make_queue("--resource", "local-process", "--no-require-wandb-run", "--config", str(config), prefix="fair")
    stamps = {entity: tmp_path / f"{entity}.txt" for entity in ("vision", "speech")}
    release = tmp_path / "release"

    def enqueue(entity: str, *job_args: str) -> str:
        return run_id_of(launch("-q", queue, "-e", entity, "-u", str(JOBS), "-E",
                                " ".join(["python report.py --no-wandb --stamp-file", str(stamps[entity]), *job_args])))

    vision = [enqueue("vision", "--wait-for", str(release)) for _ in range(5)]
    speech = [enqueue("speech", "--sleep", "1") for _ in range(2)]
    for _ in range(3):
        start_agent("-q", queue, "--max-jobs", "2")

    # Vision holds two slots and waits for the release; speech, enqueued behind vision's backlog, still runs.
    for run_id in speech:
        assert wait_for_final(run_id, timeout=180).state.is_completed()
    running = _until("two vision runs Running", lambda: [r for r in vision if flow_run_of(r).state.is_running()])
    assert len(running) == 2, running
    held = next(run_id for run_id in vision if flow_run_of(run_id).state.is_scheduled())
    status = _until("status saying why", lambda: out if "held by fair share" in (out := cli("status", held).stdout) else None)
    assert "held by fair share: entity vision runs 2 of max_running_per_entity 2" in status, status
    assert sum(flow_run_of(run_id).state.is_running() for run_id in vision) == 2  # six slots, the cap is two

    release.touch()
    for run_id in vision:
        assert wait_for_final(run_id, timeout=180).state.is_completed()
    vision_peak, vision_runs = peak_overlap(stamps["vision"])
    assert len(vision_runs) == 5 and vision_peak == 2, vision_runs
    # The cap is Prefect's global concurrency limit, and every slot of it is free again once the runs ended.
    limit = _until("the vision slots freed", lambda: (found := _client().read_global_concurrency_limit_by_name(
        f"launch:{queue}:entity:vision")).active_slots == 0 and found, timeout=30)
    assert limit.limit == 2
