"""The orphan round: runs on a queue whose agent is gone are put back or adopted.

An agent's owner tag (`ownership`) on a run's Pending and Running states says
which process holds it. The agent runs this round at start and every so often
(`agent.Agent._orphans_loop`): a Pending run whose agent is gone, or that
waited too long, goes back to its queue; a Running run whose agent is gone is
adopted, its job followed from where it is, never submitted again.

`OrphanRound` is mixed into `LaunchWorker`, whose client, queue name, owner,
job slots, runs in flight and runs' task group it uses.
"""

from __future__ import annotations

from datetime import datetime, timedelta, timezone
from uuid import UUID, uuid5

import anyio
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterState,
    FlowRunFilterStateName,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, StateDetails
from prefect.client.schemas.responses import SetStateStatus
from prefect.states import Running, Scheduled

from prefect_launch.deployments.flows import handed_over
from prefect_launch.fair_share import caps_of
from prefect_launch.flows.launch import Adoption
from prefect_launch.ownership import Owner

ADOPTION_NAMESPACE = UUID("5b0c2f0e-6f5a-4d1e-9a57-3c1f0d7e2a10")


def seconds_in_state(flow_run: FlowRun) -> float:
    return (datetime.now(timezone.utc) - flow_run.state.timestamp).total_seconds()


class OrphanRound:
    async def take_over_orphans(self, pending_timeout: float, stale_after: timedelta) -> tuple[list[UUID], list[UUID]]:
        """Runs on this queue whose agent is gone: Pending ones go back to the queue, Running ones are adopted.

        An agent is gone when its owner tag (`ownership`) names a dead process;
        a run Pending longer than `pending_timeout` s is orphaned whatever its
        tag (claiming takes well under a second). This agent's own Running
        runs that no thread of it follows any more (their engine lost the
        server during an outage) are adopted as well. Deployed flows' runs that
        wait on a launch run follow it (`settle_handed_over`, `cancel_handed_over`).
        Returns (requeued, adopted).
        """
        busy = set(self._claimed) | set(self._in_flight)  # before the read: a run that ends meanwhile is not an orphan
        runs = await self.client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self.queue_name])),
            flow_run_filter=FlowRunFilter(
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Pending", "Running", "Cancelling"]))),
        )
        busy |= self._claimed | self._in_flight.keys()  # and after: nor is one claimed meanwhile
        heartbeats: dict[str, datetime] | None = None
        requeued, adopted = [], []
        for flow_run in runs:
            if flow_run.id in busy:
                continue
            if flow_run.state.is_cancelling():
                await self.cancel_handed_over(flow_run)
                continue
            if handed_over(flow_run.state.message):
                if await self.settle_handed_over(flow_run, pending_timeout):
                    requeued.append(flow_run.id)  # the agent wakes to hand it over again
                continue
            owner = Owner.parse(flow_run.state.message)
            if owner is not None and owner.host != self._owner.host and heartbeats is None:
                heartbeats = await self._agent_heartbeats()
            gone = owner == self._owner or (owner is not None and not owner.alive(heartbeats or {}, stale_after))
            if flow_run.state.is_pending():
                waited = seconds_in_state(flow_run)
                if gone or waited >= pending_timeout:
                    await self._requeue(flow_run, f"Pending for {waited:.0f} s, "
                                                  + (f"its agent {owner.label} is gone" if owner else "no agent started it"))
                    requeued.append(flow_run.id)
            elif gone and await self._adopt(flow_run, owner):
                adopted.append(flow_run.id)
        return requeued, adopted

    async def _agent_heartbeats(self) -> dict[str, datetime]:
        workers = await self.client.read_workers_for_work_pool(self.queue_name)
        return {worker.name: worker.last_heartbeat_time for worker in workers if worker.last_heartbeat_time}

    async def _requeue(self, flow_run: FlowRun, why: str) -> None:
        message = f"Back on queue {self.queue_name}: {why}"
        await self.client.set_flow_run_state(flow_run.id, Scheduled(message=message), force=True)
        self.get_flow_run_logger(flow_run).warning(message)

    async def _adopt(self, flow_run: FlowRun, previous: Owner) -> bool:
        """Claim a Running run of a dead agent and follow its job; False if another agent won the claim.

        The job runs whether or not it is followed, so it is adopted even
        with no job slot free: it then runs over `max_jobs` until it ends
        (a restarted agent adopts before claiming new work, so with the
        same `max_jobs` it has the slots).
        """
        if self._slots is not None:
            try:
                self._slots.acquire_on_behalf_of_nowait(flow_run.id)
            except anyio.WouldBlock:
                self.logger.warning("Adopting run %s over max_jobs: no slot is free, and its job runs anyway", flow_run.name)
        # Every agent that sees this orphan proposes the same transition id: the server accepts the first only.
        transition_id = uuid5(ADOPTION_NAMESPACE, str(flow_run.state.id))
        claim = Running(message=f"Running {self._owner.tag()}, adopted", state_details=StateDetails(transition_id=transition_id))
        try:
            result = await self.client.set_flow_run_state(flow_run.id, claim)
        except Exception:
            self.release_slot(flow_run.id)
            raise
        if result.status != SetStateStatus.ACCEPT:
            self.release_slot(flow_run.id)
            return False
        adoption = Adoption(
            previous_owner=previous.label,
            submitted=bool(flow_run.infrastructure_pid),
            transition_id=transition_id,
            started=flow_run.start_time,
        )
        self._claimed.add(flow_run.id)
        # Its job runs already: it takes its fair-share slot now, or once its dead agent's lease lapses.
        await self._leases.take(flow_run.id, caps_of(self.work_pool).limits_of(flow_run.parameters), running=True)
        self._runs.start_soon(self._claim_and_run, flow_run, adoption)
        return True
