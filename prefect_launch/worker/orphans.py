"""The orphan round: runs on a queue whose agent is gone are put back, adopted or cancelled.

An agent's owner tag (`ownership`) on a run's Pending and Running states says
which process holds it. The agent runs this round at start and every so often
(`agent.Agent._orphans_loop`): a Pending run whose agent is gone, or that
waited too long, goes back to its queue; a Running run whose agent is gone is
adopted, its job followed from where it is, never submitted again; a run asked
to cancel (Cancelling) whose agent is gone has its job stopped and ends
Cancelled.

An orphan is adopted only into a free job slot: `max_jobs` holds for adopted
jobs too. Until one frees up the orphan waits (`orphans_waiting`), its job
running on unfollowed, and the agent claims no new run, so a backlog never
starves it; the agent runs the round again as soon as one of its jobs ends.

`OrphanRound` is mixed into `LaunchWorker`, whose client, queue name, owner,
job slots, runs in flight, runs' task group and job preparation it uses.
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
from prefect.client.schemas.actions import VariableCreate
from prefect.client.schemas.objects import FlowRun, StateDetails
from prefect.client.schemas.responses import SetStateStatus
from prefect.client.schemas.sorting import FlowRunSort
from prefect.exceptions import ObjectAlreadyExists
from prefect.states import Cancelled, Running, Scheduled

from prefect_launch.deployments.flows import handed_over
from prefect_launch.deployments.queues import LAUNCH_ENTRYPOINT
from prefect_launch.flows.launch import Adoption, stop_orphaned_job
from prefect_launch.ownership import Owner
from prefect_launch.spec import LaunchSpec, run_id_for

ADOPTION_NAMESPACE = UUID("5b0c2f0e-6f5a-4d1e-9a57-3c1f0d7e2a10")
ADOPTION_VARIABLE_PREFIX = "prefect-launch-adoption-"


def adoption_variable(transition_id: UUID) -> str:
    """The name of the Prefect variable an adopter creates for its claim: only one creation succeeds."""
    return f"{ADOPTION_VARIABLE_PREFIX}{transition_id}"


def seconds_in_state(flow_run: FlowRun) -> float:
    return (datetime.now(timezone.utc) - flow_run.state.timestamp).total_seconds()


class OrphanRound:
    async def take_over_orphans(self, pending_timeout: float, stale_after: timedelta) -> tuple[list[UUID], list[UUID]]:
        """Runs on this queue whose agent is gone: Pending ones go back to the queue, Running ones are adopted
        (into free job slots), Cancelling ones are stopped and end Cancelled.

        An agent is gone when its owner tag (`ownership`) names a dead process;
        a run Pending longer than `pending_timeout` s is orphaned whatever its
        tag (claiming takes well under a second). This agent's own Running
        runs that no thread of it follows any more (their engine lost the
        server during an outage) are adopted as well. Deployed flows' runs that
        wait on a launch run follow it (`settle_handed_over`, `cancel_handed_over`).
        Returns (requeued, adopted).
        """
        busy = set(self._claimed) | set(self._in_flight)  # before the read: a run that ends meanwhile is not an orphan
        runs = await self._active_runs()
        busy |= self._claimed | self._in_flight.keys()  # and after: nor is one claimed meanwhile
        self._heartbeats = None  # read once a round, when an owner on another host is first judged
        self.orphans_waiting = False
        self._waiting_for_slot &= {flow_run.id for flow_run in runs}
        requeued, adopted = [], []
        for flow_run in runs:
            if flow_run.id in busy:
                continue
            if flow_run.state.is_cancelling():
                deployment = await self._deployment(flow_run.deployment_id)
                if deployment is not None and deployment.entrypoint == LAUNCH_ENTRYPOINT:
                    await self._cancel_orphan(flow_run, stale_after)
                else:
                    await self.cancel_handed_over(flow_run)
                continue
            if handed_over(flow_run.state.message):
                if await self.settle_handed_over(flow_run, pending_timeout):
                    requeued.append(flow_run.id)  # the agent wakes to hand it over again
                continue
            owner = Owner.parse(flow_run.state.message)
            gone = owner is not None and await self._gone(owner, stale_after)
            if flow_run.state.is_pending():
                waited = seconds_in_state(flow_run)
                if gone or waited >= pending_timeout:
                    await self._requeue(flow_run, f"Pending for {waited:.0f} s, "
                                                  + (f"its agent {owner.label} is gone" if owner else "no agent started it"))
                    requeued.append(flow_run.id)
            elif gone and await self._adopt(flow_run, owner):
                adopted.append(flow_run.id)
        return requeued, adopted

    async def _active_runs(self, page_size: int | None = None) -> list[FlowRun]:
        """Every Pending, Running or Cancelling run of this queue, page by page: one read returns at most the
        server's default page (200 runs), and an agent may run more. Newest first; a run that changes state
        between two pages may be missed, and is found at the next round."""
        runs: list[FlowRun] = []
        while True:
            page = await self.client.read_flow_runs(
                work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self.queue_name])),
                flow_run_filter=FlowRunFilter(
                    state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Pending", "Running", "Cancelling"]))),
                sort=FlowRunSort.ID_DESC, offset=len(runs), limit=page_size,
            )
            if not page:
                return runs
            runs += page

    async def _gone(self, owner: Owner, stale_after: timedelta) -> bool:
        """Whether the agent process `owner` names is gone: this one (its run is not in flight here), or dead."""
        if owner == self._owner:
            return True
        if owner.host != self._owner.host and self._heartbeats is None:
            workers = await self.client.read_workers_for_work_pool(self.queue_name)
            self._heartbeats = {worker.name: worker.last_heartbeat_time for worker in workers if worker.last_heartbeat_time}
        return not owner.alive(self._heartbeats or {}, stale_after)

    async def _sole_adopter(self, flow_run: FlowRun, transition_id: UUID) -> bool:
        """Whether this agent's accepted claim is the one that counts.

        The server accepts one claim per transition id nearly always, but on PostgreSQL two claims made in the
        same instant were both accepted (its row lock does not cover the state it compares with), and both
        agents ran the job. A variable named after the transition id settles it, names being unique: the agent
        that creates it adopts the run. Any other leaves it, and names the adopter on the run again, as its own
        claim may be the run's last state (a run naming a live agent that does not follow it is never adopted).
        """
        name = adoption_variable(transition_id)
        try:
            await self.client.create_variable(VariableCreate(name=name, value=self._owner.tag()))
            return True
        except ObjectAlreadyExists:
            pass
        adopter = await self.client.read_variable_by_name(name)
        if adopter is not None:  # else it is gone with its run's end
            self.logger.info("Run %s was adopted %s at the same moment; leaving it to that agent",
                             flow_run.name, adopter.value)
            await self.client.set_flow_run_state(flow_run.id, Running(message=f"Running {adopter.value}, adopted"))
        return False

    async def forget_adoption(self, adoption: Adoption) -> None:
        """Delete the adoption's variable once its run has ended; a server that cannot be reached leaves it."""
        try:
            await self.client.delete_variable_by_name(adoption_variable(adoption.transition_id))
        except Exception as exc:  # a leftover variable is harmless: its transition id never recurs
            self.logger.debug("Could not delete the variable of run adoption %s: %s", adoption.transition_id, exc)

    async def _cancel_orphan(self, flow_run: FlowRun, stale_after: timedelta) -> None:
        """A run asked to cancel whose agent is gone: its job is stopped where it is found, and it ends Cancelled.

        Its holder is the owner on its last Running or Pending state (a Cancelling state carries none). Two agents
        may stop the same job (stopping twice is harmless); the Cancelled state's transition id, derived from the
        Cancelling state, lets the server record only one of them. What the job left is released after that.
        """
        states = await self.client.read_flow_run_states(flow_run.id)
        owner = next((found for state in reversed(states) if (found := Owner.parse(state.message))), None)
        if owner is not None and not await self._gone(owner, stale_after):
            return  # its agent is stopping it
        log = self.get_flow_run_logger(flow_run)
        done, handle, context = "its job had not been submitted: nothing to stop", None, None
        if flow_run.infrastructure_pid:
            configuration = await self._job_configuration(flow_run, await self._deployment(flow_run.deployment_id))
            context = self._launch_context(configuration.queue_config())
            spec = LaunchSpec.model_validate(flow_run.parameters["spec"])
            spec = spec if spec.run_id else spec.model_copy(update={"run_id": run_id_for(flow_run.id)})
            done, handle = await anyio.to_thread.run_sync(stop_orphaned_job, context, spec, flow_run.start_time, log,
                                                          limiter=self._threads)
        whose = f"its agent {owner.label} is gone" if owner else "no agent holds it"
        cancelled = Cancelled(message=f"Cancelled while {whose}; {done}",
                              state_details=StateDetails(transition_id=uuid5(ADOPTION_NAMESPACE, str(flow_run.state.id))))
        result = await self.client.set_flow_run_state(flow_run.id, cancelled)
        if result.status == SetStateStatus.ACCEPT:
            log.warning("Cancelled while %s; %s", whose, done)
            if handle is not None:
                await anyio.to_thread.run_sync(context.target.release, handle, log)

    async def _requeue(self, flow_run: FlowRun, why: str) -> None:
        message = f"Back on queue {self.queue_name}: {why}"
        await self.client.set_flow_run_state(flow_run.id, Scheduled(message=message), force=True)
        self.get_flow_run_logger(flow_run).warning(message)

    async def _adopt(self, flow_run: FlowRun, previous: Owner) -> bool:
        """Claim a Running run of a dead agent and follow its job; False if another agent won the claim, or no
        job slot is free (then the orphan waits for one: `orphans_waiting`)."""
        if not self._take_slot(flow_run.id):
            self.orphans_waiting = True
            if flow_run.id not in self._waiting_for_slot:
                self._waiting_for_slot.add(flow_run.id)
                self.logger.info("Run %s is orphaned (agent %s is gone) and waits for a free job slot; no new run "
                                 "is claimed meanwhile", flow_run.name, previous.label)
            return False
        # Every agent that sees this orphan proposes the same transition id: the server accepts the first only.
        transition_id = uuid5(ADOPTION_NAMESPACE, str(flow_run.state.id))
        claim = Running(message=f"Running {self._owner.tag()}, adopted", state_details=StateDetails(transition_id=transition_id))
        try:
            result = await self.client.set_flow_run_state(flow_run.id, claim)
        except Exception:
            self.release_slot(flow_run.id)
            raise
        if result.status != SetStateStatus.ACCEPT or not await self._sole_adopter(flow_run, transition_id):
            self.release_slot(flow_run.id)
            return False
        # The round read this run before it judged its agent gone, and the agent may have put its job's
        # submission on record in between, as it died: read now, or a job it started would start again.
        flow_run = await self.client.read_flow_run(flow_run.id)
        adoption = Adoption(
            previous_owner=previous.label,
            submitted=bool(flow_run.infrastructure_pid),
            transition_id=transition_id,
            started=flow_run.start_time,
        )
        self._claimed.add(flow_run.id)
        # Its job runs already: it takes its fair-share slot now, or once its dead agent's lease lapses.
        await self._leases.take(flow_run.id, self._caps.limits_of(flow_run.parameters), running=True)
        self._runs.start_soon(self._claim_and_run, flow_run, adoption)
        return True
