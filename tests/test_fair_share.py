"""Fair share (issue 22): a queue's `max_running_per_entity` holds across every agent of the queue.

Three agents with two job slots each serve one local-process queue capped at two jobs per
W&B entity. Five jobs of one entity are enqueued before two of another: the first entity never
runs more than two at once although four slots stay free, the second's jobs start while the
first's backlog waits, and `status` says why a held run waits.
"""

from __future__ import annotations

import time

from conftest import JOBS, _client, cli, launch, peak_overlap, run_id_of, wait_for_final


def test_max_running_per_entity_holds_across_three_agents(make_queue, start_agent, tmp_path):
    config = tmp_path / "queue.yaml"
    config.write_text("max_running_per_entity: 2\n")
    queue = make_queue("--resource", "local-process", "--no-require-wandb-run", "--config", str(config), prefix="fair")
    stamps = {entity: tmp_path / f"{entity}.txt" for entity in ("vision", "speech")}

    def enqueue(entity: str, seconds: float) -> str:
        return run_id_of(launch("-q", queue, "-e", entity, "-u", str(JOBS), "-E",
                                f"python report.py --no-wandb --sleep {seconds} --stamp-file {stamps[entity]}"))

    vision = [enqueue("vision", 4) for _ in range(5)]
    speech = [enqueue("speech", 1) for _ in range(2)]
    for _ in range(3):
        start_agent("-q", queue, "--max-jobs", "2")

    # The last vision run waits behind the cap, and says so.
    deadline = time.monotonic() + 90
    status = ""
    while "held by fair share" not in status and time.monotonic() < deadline:
        status = cli("status", vision[-1], check=False).stdout
    assert "held by fair share: entity vision runs 2 of max_running_per_entity 2" in status, status

    for run_id in vision + speech:
        assert wait_for_final(run_id, timeout=180).state.is_completed()
    vision_peak, vision_runs = peak_overlap(stamps["vision"])
    speech_peak, speech_runs = peak_overlap(stamps["speech"])
    assert len(vision_runs) == 5 and len(speech_runs) == 2
    assert vision_peak == 2, f"vision ran {vision_peak} at once (cap 2, six slots)"
    # Enqueued last, speech did not wait for vision's backlog: both started before vision's last job did.
    last_vision_start = max(start for start, _ in vision_runs)
    assert all(start < last_vision_start for start, _ in speech_runs), (speech_runs, vision_runs)
    # The cap is Prefect's global concurrency limit, and every slot of it is free again once the runs ended.
    client = _client()
    deadline = time.monotonic() + 30
    while (limit := client.read_global_concurrency_limit_by_name(f"launch:{queue}:entity:vision")).active_slots:
        assert time.monotonic() < deadline, f"{limit.active_slots} slot(s) still held after every run ended"
        time.sleep(0.2)
    assert limit.limit == 2
