"""The `launch` worker type: Prefect's worker protocol and the fast claim path.

A claimed launch run runs on a thread of the worker's own process
(`worker.engine`), not in a new interpreter; runs of deployed flows are
handed to launch runs (`worker.handover`); runs whose agent is gone are put
back or adopted (`worker.orphans`).

Registered through the `prefect.collections` entry point, so both
`prefect worker start --pool gpu --type launch` and the Prefect UI know it.
`prefect-launch agent` drives several of these (one per queue) with a shared
`max_jobs` limit and event-driven wake-ups.

Example::

    async with LaunchWorker(work_pool_name="demo", limit=4) as worker:
        await worker.get_and_submit_flow_runs()
"""

from __future__ import annotations

import logging
import math
import os
import time
from contextlib import AsyncExitStack
from datetime import datetime, timezone
from typing import Any, Callable
from uuid import UUID

import anyio
import anyio.abc
import httpx
from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId, FlowRunFilterState, FlowRunFilterStateName
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse, WorkerFlowRunResponse
from prefect.exceptions import Abort, ObjectNotFound
from prefect.logging.loggers import get_worker_logger
from prefect.states import Cancelled, Crashed, Failed, Pending
from prefect.utilities.engine import propose_state
from prefect.workers.base import BaseWorker, BaseWorkerResult
from pydantic import TypeAdapter, ValidationError

from prefect_launch.agent_config import AgentConfig, load_agent_config
from prefect_launch.agent_setup import agent_setup
from prefect_launch.deployments.queues import LAUNCH_ENTRYPOINT, default_base_job_template
from prefect_launch.errors import LaunchError
from prefect_launch.fair_share import Caps, Leases, caps_of
from prefect_launch.flows.launch import Adoption, LaunchContext
from prefect_launch.home import launch_home
from prefect_launch.ownership import Owner
from prefect_launch.prefect_internals import SyncClients, WorkerInternals
from prefect_launch.prepare import LaunchJobConfiguration, LaunchWorkerVariables, job_configuration, job_variables
from prefect_launch.spec import QueueConfig
from prefect_launch.worker.engine import run_in_thread, run_settings
from prefect_launch.worker.handover import HandOver, executed_flow_run
from prefect_launch.worker.orphans import OrphanRound

DEPLOYMENT_CACHE_SECONDS = 30.0
POLL_LIMIT = 100
# A Cancelling event stops a job at once (the agent subscribes to them); the check for cancelled runs
# catches one missed while the event stream was down, so it need not go with every poll: a busy
# agent polls as each job ends, and the check was one request in ten a job made.
CANCELLATION_CHECK_SECONDS = 5.0


class LaunchWorkerResult(BaseWorkerResult):
    pass


class LaunchWorker(WorkerInternals, HandOver, OrphanRound,
                   BaseWorker[LaunchJobConfiguration, LaunchWorkerVariables, LaunchWorkerResult]):
    """Prefect's worker protocol through its public members; the private ones it needs are in
    `prefect_internals.WorkerInternals`. What it keeps of its own (the queue's name and work
    queues, its job slots, the task group its runs go in) it takes from its arguments."""

    type = "launch"
    job_configuration = LaunchJobConfiguration
    job_configuration_variables = LaunchWorkerVariables

    def __init__(
        self,
        work_pool_name: str,
        work_queues: list[str] | None = None,
        *args: Any,
        shared_limiter: anyio.CapacityLimiter | None = None,
        on_job_done: Callable[[], None] | None = None,
        agent_config: AgentConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(work_pool_name, work_queues, *args, **kwargs)
        self.queue_name = work_pool_name
        self._queue_work_queues = list(work_queues or [])
        # `prefect worker start --type launch` has no agent: read W&B's default launch-config.yaml.
        agent_config = agent_config or load_agent_config(None)
        self._build_settings, self._environment, self._registry = agent_setup(agent_config)
        self._secure_mode = agent_config.secure_mode
        self._shared_limiter = shared_limiter
        self._on_job_done = on_job_done
        self._in_flight: dict[UUID, LaunchContext] = {}
        self._claimed: set[UUID] = set()
        self._deployments: dict[UUID, tuple[float, DeploymentResponse]] = {}
        # A deployed flow's run -> the launch run in flight that executes it (see `deployments.flows`).
        self._launch_run_of: dict[UUID, UUID] = {}
        self.saturated = False
        self._threads = anyio.CapacityLimiter(10_000)
        self._run_settings = run_settings()
        self._run_clients = SyncClients()  # the in-thread runs' Prefect clients, closed in teardown
        self._owner = Owner.this_process(self.name)
        # Job slots: the agent's shared max_jobs, or `prefect worker start --limit`'s; None is no limit.
        self._slots: anyio.CapacityLimiter | None = None
        # The runs' task group, entered in setup and left (waiting for every run) in teardown.
        self._runs: anyio.abc.TaskGroup | None = None
        self._runs_stack = AsyncExitStack()
        # Fair-share slots outlive a missed heartbeat or two, never a dead agent by much (client: at setup).
        self._leases = Leases(None, lease_seconds=3 * self.heartbeat_interval_seconds)
        # The queue's fair-share caps, read from its pool when the pool is (not on every poll).
        self._caps = Caps(self.queue_name)
        # Heartbeats go out under the name and this host (`ownership`): an agent of the same name elsewhere beats apart.
        self.name = self._owner.heartbeat_name
        # An orphaned run waits for a free job slot of this agent (`OrphanRound`): no new run is claimed meanwhile.
        self.orphans_waiting = False
        self._waiting_for_slot: set[UUID] = set()  # orphans logged as waiting for a slot
        self._heartbeats: dict[str, datetime] | None = None  # the queue's agents' last heartbeats, read once a round
        self._cancellations_checked = -math.inf

    @classmethod
    def get_description(cls) -> str:
        return "Runs prefect-launch jobs (W&B Launch on Prefect) on local processes, Docker, Kubernetes, SageMaker and Vertex AI."

    @classmethod
    def get_documentation_url(cls) -> str:
        return "https://github.com/prefect-launch/prefect-launch"

    @property
    def logger(self) -> logging.LoggerAdapter:
        return get_worker_logger(self)

    @classmethod
    def get_default_base_job_template(cls) -> dict[str, Any]:
        """A pool made with `prefect work-pool create --type launch` (or in the Prefect UI) is a local-process
        queue, as `queue create NAME --resource local-process` makes one."""
        return default_base_job_template()

    async def setup(self) -> None:
        await super().setup()
        # One agent serving several queues: max_jobs counts jobs across all of them.
        self._slots = self._shared_limiter or self._own_limit()
        self._runs = await self._runs_stack.enter_async_context(anyio.create_task_group())
        self._leases.client = self.client

    async def sync_with_backend(self) -> None:
        """The worker's heartbeat, which also keeps the fair-share slots of its running jobs."""
        await super().sync_with_backend()
        if self._has_work_pool():
            self._caps = caps_of(self.work_pool)
        await self._leases.renew()

    def _own_limit(self) -> anyio.CapacityLimiter | None:
        try:
            return self.limiter
        except RuntimeError:  # Prefect's way of saying the worker has no limit
            return None

    async def teardown(self, *exc_info: Any) -> None:
        """Wait for every run to record its end, then let Prefect close the worker's client."""
        try:
            await self._runs_stack.__aexit__(*exc_info)
        finally:
            self._runs = None
            self._run_clients.close()
            await super().teardown(*exc_info)

    def _take_slot(self, flow_run_id: UUID) -> bool:
        """A job slot for this run if one is free now (always, for a worker without a limit)."""
        if self._slots is None:
            return True
        try:
            self._slots.acquire_on_behalf_of_nowait(flow_run_id)
        except anyio.WouldBlock:
            return False
        return True

    def release_slot(self, flow_run_id: UUID) -> None:
        """Free the job slot a run held; a slot already freed (or never taken) is no error."""
        if self._slots is not None:
            try:
                self._slots.release_on_behalf_of(flow_run_id)
            except RuntimeError:
                pass

    async def run(
        self,
        flow_run: FlowRun,
        configuration: LaunchJobConfiguration,
        task_status: anyio.abc.TaskStatus[int] | None = None,
        adoption: Adoption | None = None,
    ) -> LaunchWorkerResult:
        try:
            queue = configuration.queue_config()
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            await self._fail(flow_run, f"queue {self.queue_name!r} config: {where}: {error['msg']}")
            if task_status:
                task_status.started(os.getpid())
            return LaunchWorkerResult(identifier=str(flow_run.id), status_code=0)

        context = self._launch_context(queue, adoption)
        self._in_flight[flow_run.id] = context
        executed = executed_flow_run(flow_run)
        if executed is not None:
            self._launch_run_of[executed] = flow_run.id
        if task_status:
            task_status.started(os.getpid())
        try:
            state = await anyio.to_thread.run_sync(run_in_thread, flow_run, context, self._run_settings,
                                                self._run_clients, limiter=self._threads)
            if state.is_cancelling():
                # Cancelled as its job ended: the server refused the engine's final state, and no job is left to stop.
                state = Cancelled(message="Cancelled as its job ended")
                await self.client.set_flow_run_state(flow_run.id, state, force=True)
            # The final state is on record (the engine raises if it could not propose it): only now may the job go.
            if context.handle is not None:
                await anyio.to_thread.run_sync(context.target.release, context.handle, self.get_flow_run_logger(flow_run))
            if executed is not None:
                await self._settle_executed_run(executed, flow_run, state)
        finally:
            self._in_flight.pop(flow_run.id, None)
            if executed is not None:
                self._launch_run_of.pop(executed, None)
            if self._on_job_done:
                self._on_job_done()
        return LaunchWorkerResult(identifier=str(flow_run.id), status_code=0)

    def _launch_context(self, queue: QueueConfig, adoption: Adoption | None = None) -> LaunchContext:
        """How this agent prepares and runs a job of `queue` (a new one per run: its target and cancel are its own)."""
        return LaunchContext(
            queue_name=self.queue_name,
            queue=queue,
            home=launch_home(),
            build_settings=self._build_settings,
            environment=self._environment,
            registry=self._registry,
            secure_mode=self._secure_mode,
            owner=self._owner.tag(),
            adoption=adoption,
        )

    async def cancel(self, flow_run_id: UUID) -> None:
        """A run was asked to cancel: stop its job if this agent runs it, else, for a deployed flow's
        run of this queue, cancel its launch run (`cancel_handed_over`)."""
        if self.cancel_in_flight(flow_run_id):
            return
        flow_run = await self.client.read_flow_run(flow_run_id)
        if flow_run.work_pool_name == self.queue_name and flow_run.state and flow_run.state.is_cancelling():
            await self.cancel_handed_over(flow_run)

    def cancel_in_flight(self, flow_run_id: UUID) -> bool:
        """Stop a running job of this worker; True if it was one.

        Cancelling a deployed flow's run cancels the launch run that executes it.
        """
        context = self._in_flight.get(self._launch_run_of.get(flow_run_id, flow_run_id))
        if context is None:
            return False
        context.cancel.set()
        return True

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        """Claim scheduled runs and start them; the hot path from enqueue to job start.

        Prefect's generic submit path spends four more API calls per run (a
        deployment check, labels, a Submitting state, the infrastructure pid)
        before anything starts; three of them are writes that contend for the
        server's database. A launch run needs none of them: claiming it
        (Pending) is what keeps two agents from running it twice, and the
        flow engine takes it to Running at once.
        """
        if time.monotonic() - self._cancellations_checked >= CANCELLATION_CHECK_SECONDS:
            await self.check_cancellations()
        if self._runs is None or not self._has_work_pool():
            return []
        free = self._slots.available_tokens if self._slots is not None else POLL_LIMIT
        caps = self._caps
        # free is math.inf without max_jobs; with fair share, runs the cap holds may be first in line.
        asked = POLL_LIMIT if caps else int(max(1, min(free, POLL_LIMIT)))
        responses = await self._scheduled_runs(asked)
        self.record_poll()
        started: list[FlowRun] = []
        # As many runs as asked for: more may be waiting, so a job that ends should wake the next poll.
        self.saturated = len(responses) >= asked
        full: set[frozenset[str]] = set()  # the fair-share limits found full in this poll
        for response in responses:
            flow_run = response.flow_run
            if flow_run.id in self._claimed:
                continue
            if not self._take_slot(flow_run.id):
                self.saturated = True  # runs are waiting for a free slot
                break
            limits = caps.limits_of(flow_run.parameters)
            if limits and (frozenset(limits) in full or not await self._leases.take(flow_run.id, limits)):
                full.add(frozenset(limits))  # held by the cap: it stays Scheduled, the runs behind it may start
                self.release_slot(flow_run.id)
                continue
            self._claimed.add(flow_run.id)
            self._runs.start_soon(self._claim_and_run, flow_run, None, bool(limits))
            started.append(flow_run)
        return started

    async def take_announced(self, flow_run_id: UUID) -> bool:
        """Claim a run the server has just announced (its Scheduled event names it) without polling for it;
        False when the poll must decide, and nothing was claimed.

        Only an agent with slots to spare takes this path: a run that falls due later, one held by a
        fair-share cap, one on another of the pool's work queues, or the last free slot are left to the poll,
        which orders runs by priority. With thousands of runs Scheduled on a pool, the poll's query grows
        with them (Prefect's, on SQLite: 0.06 s -> 0.5-0.8 s with 10,000); reading one run does not.
        """
        if self._runs is None or self.saturated or flow_run_id in self._claimed or not self._has_work_pool():
            return False
        if self._slots is not None and self._slots.available_tokens < 2:
            return False
        flow_run = await self.client.read_flow_run(flow_run_id)
        due = flow_run.next_scheduled_start_time or flow_run.expected_start_time
        if (flow_run.state is None or not flow_run.state.is_scheduled() or flow_run.work_pool_name != self.queue_name
                or (self._queue_work_queues and flow_run.work_queue_name not in self._queue_work_queues)
                or (due is not None and due > datetime.now(timezone.utc))
                or self._caps.limits_of(flow_run.parameters) or flow_run.id in self._claimed):
            return False
        if not self._take_slot(flow_run.id):
            return False
        self._claimed.add(flow_run.id)
        self._runs.start_soon(self._claim_and_run, flow_run, None, False)
        return True

    def _has_work_pool(self) -> bool:
        """False until the worker has read its work pool (the server was unreachable when it started)."""
        try:
            return self.work_pool is not None
        except RuntimeError:
            return False

    async def _scheduled_runs(self, limit: int) -> list[WorkerFlowRunResponse]:
        """At most `limit` scheduled runs (as many as there are free slots).

        The client method has no `limit`; without one, every poll of a long
        backlog makes the server load and send the whole backlog.
        """
        body: dict[str, Any] = {"scheduled_before": datetime.now(timezone.utc).isoformat(), "limit": limit}
        if self._queue_work_queues:
            body["work_queue_names"] = self._queue_work_queues
        response = await self.client.request(
            "POST", "/work_pools/{name}/get_scheduled_flow_runs", path_params={"name": self.queue_name}, json=body
        )
        return TypeAdapter(list[WorkerFlowRunResponse]).validate_python(response.json())

    async def _claim(self, flow_run: FlowRun, recheck: bool = False) -> bool:
        """Claim a run: Pending, tagged with this agent process (see `ownership`); False if someone else has it.

        Prefect lets a finished run go back to Pending (its manual rerun), so a run another agent took and
        finished since the poll would run again: a claim that waited on the server (`recheck`, after a
        fair-share slot) first reads that the run still waits."""
        if recheck:
            current = await self.client.read_flow_run(flow_run.id)
            if current.state is None or not current.state.is_scheduled():
                return False
        try:
            state = await propose_state(self.client, Pending(message=f"Claimed {self._owner.tag()}"), flow_run_id=flow_run.id)
        except Abort:
            return False
        return state.is_pending()

    async def _claim_and_run(self, flow_run: FlowRun, adoption: Adoption | None = None, recheck: bool = False) -> None:
        try:
            if adoption is None and not await self._claim(flow_run, recheck):
                return  # another agent took it, or it was cancelled meanwhile
            try:
                deployment = await self._deployment(flow_run.deployment_id)
            except ObjectNotFound:
                await self._fail(flow_run, f"queue {self.queue_name!r}: the run's deployment no longer exists")
                return
            if deployment is not None and deployment.entrypoint != LAUNCH_ENTRYPOINT:
                await self._hand_over(flow_run, deployment)
                return
            try:
                configuration = await self._job_configuration(flow_run, deployment)
            except LaunchError as exc:  # the run's own template values: its job fails, the agent goes on
                await self._fail(flow_run, str(exc))
                return
            await self.run(flow_run, configuration, adoption=adoption)
        except Exception as exc:
            if (lost := _transport_error(exc)) is not None:
                # The server went away (a restart, a network cut): crashing the run would end a job that never
                # started, or one running fine. Left as it is, it is this agent's orphan once the server is back:
                # a Pending run goes back on its queue, a Running one is followed from where its job is.
                self.logger.warning("Run %s: the server could not be reached (%s: %s); the orphan round settles it "
                                    "once the server answers", flow_run.id, type(lost).__name__, lost)
                return
            self.get_flow_run_logger(flow_run).exception("The agent could not run this job")
            await self._crash(flow_run, f"The agent could not run this job: {type(exc).__name__}: {exc}")
        finally:
            self._claimed.discard(flow_run.id)
            self.release_slot(flow_run.id)
            await self._leases.release(flow_run.id)
            if adoption is not None:
                await self.forget_adoption(adoption)

    async def _job_configuration(self, flow_run: FlowRun, deployment: DeploymentResponse | None) -> LaunchJobConfiguration:
        """The queue config for this run: pool template <- deployment <- run job variables."""
        return await job_configuration(self.work_pool.base_job_template, job_variables(flow_run, deployment), self.client)

    async def _deployment(self, deployment_id: UUID | None) -> DeploymentResponse | None:
        """Prefect's `resolve_for_flow_run` reads the deployment and the flow for
        every run; a queue's deployment rarely changes, so it is cached for a while instead."""
        if deployment_id is None:
            return None
        cached = self._deployments.get(deployment_id)
        if cached is None or time.monotonic() - cached[0] > DEPLOYMENT_CACHE_SECONDS:
            cached = (time.monotonic(), await self.client.read_deployment(deployment_id))
            self._deployments[deployment_id] = cached
        return cached[1]

    async def _fail(self, flow_run: FlowRun, message: str) -> None:
        """End a run the agent will not run Failed, saying why in its logs as well as in its state."""
        self.get_flow_run_logger(flow_run).error("%s", message)
        await self.client.set_flow_run_state(flow_run.id, Failed(message=message), force=True)

    async def _crash(self, flow_run: FlowRun, message: str) -> None:
        """Propose Crashed, as Prefect's workers do when their own code fails a run: a run already
        final or deleted is left as it is, and a failure to say so is logged, never raised."""
        run_logger = self.get_flow_run_logger(flow_run)
        try:
            state = await propose_state(self.client, Crashed(message=message), flow_run_id=flow_run.id)
        except (Abort, ObjectNotFound):
            return
        except Exception:
            run_logger.exception("Failed to update state of flow run '%s'", flow_run.id)
            return
        if state.is_crashed():
            run_logger.info("Reported flow run '%s' as crashed: %s", flow_run.id, message)

    async def check_cancellations(self) -> None:
        """Stop in-flight jobs whose runs were asked to cancel (one query)."""
        self._cancellations_checked = time.monotonic()
        if not self._in_flight:
            return
        cancelling = await self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=[*self._in_flight, *self._launch_run_of]),
                state=FlowRunFilterState(name=FlowRunFilterStateName(any_=["Cancelling"])),
            )
        )
        for flow_run in cancelling:
            self.cancel_in_flight(flow_run.id)

    def stop_all(self, reason: str) -> None:
        """Agent shutdown: stop every running job so none is left orphaned."""
        for context in self._in_flight.values():
            context.cancel.set()
        if self._in_flight:
            self.logger.info("Stopping %d running job(s): %s", len(self._in_flight), reason)


__all__ = ["LaunchWorker", "LaunchJobConfiguration", "LaunchWorkerVariables"]


def _transport_error(exc: BaseException | None) -> httpx.TransportError | None:
    """The transport error behind `exc`, if any: Prefect wraps some (its API version check raises RuntimeError)."""
    while exc is not None and not isinstance(exc, httpx.TransportError):
        exc = exc.__cause__ or exc.__context__
    return exc
