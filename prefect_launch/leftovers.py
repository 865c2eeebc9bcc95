"""Removing what jobs left on their target when no agent was there to remove it.

An agent removes a job's container (`Target.release`) once the run's final state is on record.
An agent killed between the two leaves the container Exited; a `docker run` killed between
creating its container and starting it leaves it Created. Neither holds anything but the
name the run's next submission needs, and the engine's disk. At its start and in each orphan
round an agent looks at what its queues' targets list (`Target.leftovers`), finds the launch
run each belongs to by its run id on that queue, and removes it only when that run has ended
(its outcome is on record) or has not started (it waits on its queue and will submit again).
A leftover of a run that is Running is not touched: its adopter follows it (and starts one
that was never started), and one whose run is unknown on this queue is another queue's, or
another server's.

Example::

    removed = await clean_leftovers(client, "gpu", target, logger)
"""

from __future__ import annotations

import logging

import anyio
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterName, WorkPoolFilter, WorkPoolFilterName
from prefect.client.schemas.sorting import FlowRunSort

from prefect_launch.targets import Leftover, Target


async def clean_leftovers(client: PrefectClient, queue: str, target: Target,
                          log: logging.Logger | logging.LoggerAdapter) -> list[Leftover]:
    """Remove the leftovers of `queue`'s runs that have ended or not started; returns those removed."""
    removed = []
    for leftover in await anyio.to_thread.run_sync(target.leftovers):
        runs = await client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[queue])),
            flow_run_filter=FlowRunFilter(name=FlowRunFilterName(any_=[leftover.run_id])),
            sort=FlowRunSort.EXPECTED_START_TIME_DESC,
            limit=1,
        )
        state = runs[0].state if runs else None
        if state is not None and (state.is_final() or state.is_scheduled() or state.is_pending()):
            await anyio.to_thread.run_sync(target.remove_leftover, leftover, log)
            removed.append(leftover)
    return removed
