"""A run the server announces (its Scheduled event names it) is claimed without a poll when the agent has
slots to spare (`LaunchWorker.take_announced`); otherwise the poll decides, and nothing is claimed."""

from __future__ import annotations

from datetime import datetime, timedelta, timezone

import anyio
from prefect.states import Scheduled

from conftest import flow_run_of, launch, on_server, run_id_of, run_logs, wait_for_final

from prefect_launch.worker.launch_worker import LaunchWorker


def _queued_job(make_queue, tmp_path) -> tuple[str, str]:
    """A local-process queue and a job waiting on it, no agent serving it yet: (queue, run id)."""
    queue = make_queue("--resource", "local-process", "--no-require-wandb-run")
    code = tmp_path / "code"
    code.mkdir(parents=True)
    (code / "job.py").write_text("print('job ran', flush=True)\n")
    return queue, run_id_of(launch("-q", queue, "-u", str(code), "-E", "python job.py"))


def test_an_announced_run_is_claimed_and_runs_once_without_a_poll(make_queue, tmp_path):
    queue, run_id = _queued_job(make_queue, tmp_path)
    flow_run_id = flow_run_of(run_id).id

    async def scenario() -> None:
        async with LaunchWorker(work_pool_name=queue, create_pool_if_not_found=False) as worker:
            await worker.sync_with_backend()
            polled = worker._last_polled_time
            assert await worker.take_announced(flow_run_id)
            assert not await worker.take_announced(flow_run_id)  # claimed already: never twice
            with anyio.fail_after(60):
                while worker._claimed:
                    await anyio.sleep(0.1)
            assert worker._last_polled_time == polled  # no poll made

    anyio.run(scenario)
    final = wait_for_final(run_id, timeout=60)
    assert final.state.is_completed(), final.state
    assert run_logs(final.id).count("job ran") == 1


def test_a_run_that_falls_due_later_or_waits_on_another_queue_is_left_to_the_poll(make_queue, tmp_path):
    queue, run_id = _queued_job(make_queue, tmp_path)
    waiting = flow_run_of(run_id)
    later = on_server("create_flow_run_from_deployment", waiting.deployment_id, parameters=waiting.parameters,
                      state=Scheduled(scheduled_time=datetime.now(timezone.utc) + timedelta(hours=1)))
    other_queue, _ = _queued_job(make_queue, tmp_path / "other")

    async def scenario() -> None:
        async with LaunchWorker(work_pool_name=other_queue, create_pool_if_not_found=False) as worker:
            await worker.sync_with_backend()
            assert not await worker.take_announced(waiting.id)  # a run of another queue
        async with LaunchWorker(work_pool_name=queue, create_pool_if_not_found=False) as worker:
            await worker.sync_with_backend()
            assert not await worker.take_announced(later.id)  # due in an hour
            assert not worker._claimed

    anyio.run(scenario)
    assert on_server("read_flow_run", waiting.id).state.is_scheduled()
    assert on_server("read_flow_run", later.id).state.is_scheduled()
