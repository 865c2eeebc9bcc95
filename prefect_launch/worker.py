"""The `launch` worker type: Prefect's worker protocol, running launch flows in-process.

A stock Prefect process worker starts a new Python interpreter for every flow
run (about 1.1 s of CPU and 93 MB each). A launch flow spends its life waiting
on a target, so this worker runs it on a thread of its own process instead:
the job starts as soon as the run is claimed, and a running job costs the
agent a thread, not an interpreter.

Registered through the `prefect.collections` entry point, so both
`prefect worker start --pool gpu --type launch` and the Prefect UI know it.
`prefect-launch agent` drives several of these (one per queue) with a shared
`max_jobs` limit and event-driven wake-ups.

Example::

    async with LaunchWorker(work_pool_name="demo", limit=4) as worker:
        await worker.get_and_submit_flow_runs()
"""

from __future__ import annotations

import os
import time
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from importlib.metadata import distributions, entry_points
from typing import Any, Callable, Iterator
from uuid import UUID, uuid5

import anyio
import anyio.abc
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateName,
    WorkPoolFilter,
    WorkPoolFilterName,
)
from prefect.client.schemas.objects import FlowRun, Integration, WorkerMetadata
from prefect.client.schemas.responses import DeploymentResponse, WorkerFlowRunResponse
from prefect.exceptions import ObjectNotFound
from prefect._flow_run_suspension import FlowRunSuspensionRequest, register_flow_run_suspension_request
from prefect.client.schemas.objects import State
from prefect.flow_engine import FlowRunEngine, _flow_parameters
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY
from prefect.client.schemas.objects import StateDetails
from prefect.client.schemas.responses import SetStateStatus
from prefect.exceptions import Abort
from prefect.states import Cancelled, Cancelling, Crashed, Failed, Pending, Running, Scheduled
from prefect.utilities.engine import propose_state
from prefect.workers.base import BaseWorker, BaseWorkerResult
from pydantic import TypeAdapter, ValidationError

from prefect_launch.agent_config import AgentConfig, load_agent_config
from prefect_launch.agent_setup import agent_setup
from prefect_launch.deployments.flows import HANDED_OVER, hand_over, handed_over, job_of
from prefect_launch.deployments.queues import LAUNCH_ENTRYPOINT
from prefect_launch.deployments.queues import default_base_job_template
from prefect_launch.errors import LaunchError
from prefect_launch.flows.launch import Adoption, LaunchContext, current_launch, launch
from prefect_launch.ownership import Owner
from prefect_launch.prepare import LaunchJobConfiguration, LaunchWorkerVariables, job_configuration
from prefect_launch.home import launch_home
from prefect_launch.spec import run_id_for
from prefect_launch.status import UnknownRun, find_run


DEPLOYMENT_CACHE_SECONDS = 30.0
POLL_LIMIT = 100
ADOPTION_NAMESPACE = UUID("5b0c2f0e-6f5a-4d1e-9a57-3c1f0d7e2a10")


class LaunchWorkerResult(BaseWorkerResult):
    pass


class _LaunchFlowEngine(FlowRunEngine):
    """Prefect's sync flow engine, minus the suspension observer.

    For every deployment run the stock engine starts a thread with its own
    event loop and a websocket to the server, to notice `suspend_flow_run`;
    that costs ~0.3 s per run and one server connection per running job. A
    launch flow never suspends (its job runs elsewhere), so it registers the
    request without observing it.
    """

    @contextmanager
    def setup_flow_run_suspension_request(self) -> Iterator[FlowRunSuspensionRequest]:
        request = self._get_flow_run_suspension_request()
        with register_flow_run_suspension_request(self.flow_run.id, request):
            yield request

    def set_state(self, state: State, force: bool = False) -> State:
        """Running states carry the agent's owner tag, so another agent can tell when the run is orphaned.

        An adopted run is already Running under this agent's claim: the engine's
        own Running proposal repeats the claim's transition id, so the server
        keeps the claim as the current state, and a second agent that tries the
        same claim later is still refused.
        """
        if state.is_running():
            context = current_launch.get()
            state.message = state.message or f"Running {context.owner}"
            if context.adoption is not None and not self._claim_repeated:
                state.state_details.transition_id = context.adoption.transition_id
                self._claim_repeated = True
        return super().set_state(state, force)

    _claim_repeated = False


def _run_in_thread(flow_run: FlowRun, context: LaunchContext, settings: SettingsContext) -> State:
    """What `prefect.flow_engine.run_flow_sync` does, with `_LaunchFlowEngine`."""
    token = current_launch.set(context)
    try:
        # A settings context can be entered once at a time: each run enters its own copy.
        with settings.model_copy():
            engine = _LaunchFlowEngine(flow=launch, flow_run=flow_run, parameters=_flow_parameters(launch, flow_run, None))
            with engine.start():
                while engine.is_running():
                    with engine.run_context():
                        engine.call_flow_fn()
            return engine.state
    finally:
        current_launch.reset(token)


def _job_variables(flow_run: FlowRun, deployment: DeploymentResponse | None) -> dict[str, Any]:
    """The run's template values: its deployment's, then its own."""
    return {**((deployment.job_variables or {}) if deployment is not None else {}), **(flow_run.job_variables or {})}


def _seconds_in_state(flow_run: FlowRun) -> float:
    return (datetime.now(timezone.utc) - flow_run.state.timestamp).total_seconds()


def _executed_flow_run(launch_run: FlowRun) -> UUID | None:
    """The deployed flow's run a launch run executes (its spec's `flow_run`), if any."""
    executed = (launch_run.parameters.get("spec") or {}).get("flow_run")
    return UUID(str(executed)) if executed else None


def _run_settings() -> SettingsContext:
    """Settings for in-process runs, built once (building them costs ~70 ms).

    The agent's worker heartbeat stands for its in-process runs; a per-run
    heartbeat thread would hold every job's slot up to a second at exit.
    """
    current = get_settings_context()
    return SettingsContext(
        profile=current.profile,
        settings=current.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    )


class LaunchWorker(BaseWorker[LaunchJobConfiguration, LaunchWorkerVariables, LaunchWorkerResult]):
    type = "launch"
    job_configuration = LaunchJobConfiguration
    job_configuration_variables = LaunchWorkerVariables
    _description = "Runs prefect-launch jobs (W&B Launch on Prefect) on local processes, Docker, Kubernetes, SageMaker and Vertex AI."
    _documentation_url = "https://github.com/prefect-launch/prefect-launch"

    def __init__(
        self,
        *args: Any,
        shared_limiter: anyio.CapacityLimiter | None = None,
        on_job_done: Callable[[], None] | None = None,
        agent_config: AgentConfig | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
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
        self._run_settings = _run_settings()
        self._owner = Owner.this_process(self.name)

    @classmethod
    def get_default_base_job_template(cls) -> dict[str, Any]:
        """A pool made with `prefect work-pool create --type launch` (or in the Prefect UI) is a local-process
        queue, as `queue create NAME --resource local-process` makes one."""
        return default_base_job_template()

    async def _worker_metadata(self) -> WorkerMetadata | None:
        """The integrations Prefect reports for a worker (each `prefect.collections` entry point
        with its package's version), read from package metadata. Prefect's own version imports
        every integration to list them, prefect_gcp pulling in google-cloud-aiplatform: that was
        half of an agent's start-up CPU. An integration a job needs is still imported when used."""
        names = {entry.name or entry.value for entry in entry_points(group="prefect.collections")}
        integrations = [Integration(name=dist.metadata["Name"], version=dist.version) for dist in distributions()
                        if dist.metadata and dist.metadata.get("Name", "").replace("-", "_") in names]
        return WorkerMetadata(integrations=integrations) if integrations else None

    async def setup(self) -> None:
        await super().setup()
        if self._shared_limiter is not None:
            # One agent serving several queues: max_jobs counts jobs across all of them.
            self._limiter = self._shared_limiter

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
            await self._fail(flow_run, f"queue {self._work_pool_name!r} config: {where}: {error['msg']}")
            if task_status:
                task_status.started(os.getpid())
            return LaunchWorkerResult(identifier=str(flow_run.id), status_code=0)

        context = LaunchContext(
            queue_name=self._work_pool_name,
            queue=queue,
            home=launch_home(),
            build_settings=self._build_settings,
            environment=self._environment,
            registry=self._registry,
            secure_mode=self._secure_mode,
            owner=self._owner.tag(),
            adoption=adoption,
        )
        self._in_flight[flow_run.id] = context
        executed = _executed_flow_run(flow_run)
        if executed is not None:
            self._launch_run_of[executed] = flow_run.id
        if task_status:
            task_status.started(os.getpid())
        try:
            state = await anyio.to_thread.run_sync(_run_in_thread, flow_run, context, self._run_settings, limiter=self._threads)
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

    async def _settle_executed_run(self, executed: UUID, launch_run: FlowRun, state: State) -> None:
        """A deployed flow's run whose launch run ended before the flow did (a failed build, a
        crashed job) ends too, saying why; one whose launch run was cancelled is Cancelled (its
        engine, stopped by a signal, calls itself Crashed). Otherwise its own engine has ended it."""
        flow_run = await self.client.read_flow_run(executed)
        if flow_run.state is None or flow_run.state.is_completed():
            return
        if state.is_cancelled():
            final = Cancelled(message=f"Its launch run {launch_run.name} was cancelled")
        elif flow_run.state.is_final():
            return
        else:
            final = Crashed(message=f"Its launch run {launch_run.name} ended {state.name} before the flow did: {state.message}")
        await self.client.set_flow_run_state(executed, final, force=True)

    async def settle_handed_over(self, flow_run: FlowRun, pending_timeout: float) -> bool:
        """A deployed flow's run Pending on its launch run, when that launch run will not run it.

        A launch run that ended without running the flow (cancelled or failed
        while it waited) ends the flow run too. A launch run that does not
        exist (its agent died before creating it, or it was deleted) puts the
        flow run back on the queue after `pending_timeout` s, to be handed over
        again; sooner, its agent may be creating it (the mark comes first).
        True if it was put back.
        """
        launch_run = await self._launch_run_of_flow_run(flow_run)
        if launch_run is None:
            waited = _seconds_in_state(flow_run)
            if waited >= pending_timeout:
                await self._requeue(flow_run, f"Pending for {waited:.0f} s, and its launch run {run_id_for(flow_run.id)} "
                                              "does not exist")
                return True
        elif launch_run.state.is_final():
            await self._settle_executed_run(flow_run.id, launch_run, launch_run.state)
        return False

    async def cancel_handed_over(self, flow_run: FlowRun) -> None:
        """A deployed flow's run asked to cancel: its launch run is cancelled as well.

        One no agent has claimed is Cancelled at once (the server's rule for a
        run with no job), and the flow run with it; a claimed one goes
        Cancelling, and its agent stops the job and ends both. Runs of other
        deployments (launch runs) are left to their agents.
        """
        deployment = await self._deployment(flow_run.deployment_id)
        if deployment is None or job_of(deployment.tags) is None:
            return
        launch_run = await self._launch_run_of_flow_run(flow_run)
        if launch_run is None:
            await self.client.set_flow_run_state(flow_run.id, Cancelled(message="Cancelled before it was handed over"), force=True)
            return
        state = launch_run.state
        if not state.is_final() and not state.is_cancelling():  # an orphan round may see it again while its job stops
            state = (await self.client.set_flow_run_state(
                launch_run.id, Cancelling(message=f"Its flow run {flow_run.name} was cancelled"))).state
        if state is not None and state.is_final():
            await self._settle_executed_run(flow_run.id, launch_run, state)

    async def _launch_run_of_flow_run(self, flow_run: FlowRun) -> FlowRun | None:
        try:
            return await find_run(self.client, run_id_for(flow_run.id))
        except UnknownRun:
            return None

    async def cancel(self, flow_run_id: UUID) -> None:
        """A run was asked to cancel: stop its job if this agent runs it, else, for a deployed flow's
        run of this queue, cancel its launch run (`cancel_handed_over`)."""
        if self.cancel_in_flight(flow_run_id):
            return
        flow_run = await self.client.read_flow_run(flow_run_id)
        if flow_run.work_pool_name == self._work_pool_name and flow_run.state and flow_run.state.is_cancelling():
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
        flow engine takes it to Running at once. `prefect==3.9.1` is pinned
        for the base-class attributes used here.
        """
        await self.check_cancellations()
        if self._runs_task_group is None or self._work_pool is None:
            return []
        free = self._limiter.available_tokens if self._limiter is not None else POLL_LIMIT
        asked = int(max(1, min(free, POLL_LIMIT)))  # free is math.inf without max_jobs
        responses = await self._scheduled_runs(asked)
        self._last_polled_time = datetime.now(timezone.utc)
        started: list[FlowRun] = []
        # As many runs as asked for: more may be waiting, so a job that ends should wake the next poll.
        self.saturated = len(responses) >= asked
        for response in responses:
            flow_run = response.flow_run
            if flow_run.id in self._claimed:
                continue
            if self._limiter is not None:
                try:
                    self._limiter.acquire_on_behalf_of_nowait(flow_run.id)
                except anyio.WouldBlock:
                    self.saturated = True  # runs are waiting for a free slot
                    break
            self._claimed.add(flow_run.id)
            self._runs_task_group.start_soon(self._claim_and_run, flow_run)
            started.append(flow_run)
        return started

    async def _scheduled_runs(self, limit: int) -> list[WorkerFlowRunResponse]:
        """At most `limit` scheduled runs (as many as there are free slots).

        The client method has no `limit`; without one, every poll of a long
        backlog makes the server load and send the whole backlog.
        """
        body: dict[str, Any] = {"scheduled_before": datetime.now(timezone.utc).isoformat(), "limit": limit}
        if self._work_queues:
            body["work_queue_names"] = list(self._work_queues)
        response = await self.client.request(
            "POST", "/work_pools/{name}/get_scheduled_flow_runs", path_params={"name": self._work_pool_name}, json=body
        )
        return TypeAdapter(list[WorkerFlowRunResponse]).validate_python(response.json())

    async def _propose_pending_state(self, flow_run: FlowRun) -> bool:
        """Claim a run: Pending, tagged with this agent process (see `ownership`); False if someone else has it."""
        try:
            state = await propose_state(self.client, Pending(message=f"Claimed {self._owner.tag()}"), flow_run_id=flow_run.id)
        except Abort:
            return False
        return state.is_pending()

    async def _claim_and_run(self, flow_run: FlowRun, adoption: Adoption | None = None) -> None:
        try:
            if adoption is None and not await self._propose_pending_state(flow_run):
                return  # another agent took it, or it was cancelled meanwhile
            try:
                deployment = await self._deployment(flow_run.deployment_id)
            except ObjectNotFound:
                await self._fail(flow_run, f"queue {self._work_pool_name!r}: the run's deployment no longer exists")
                return
            if deployment is not None and deployment.entrypoint != LAUNCH_ENTRYPOINT:
                await self._hand_over(flow_run, deployment)
                return
            try:
                configuration = await self._job_configuration(flow_run, deployment)
            except LaunchError as exc:  # the run's own template values: its job fails, the agent goes on
                self.get_flow_run_logger(flow_run).error("%s", exc)
                await self._fail(flow_run, str(exc))
                return
            await self.run(flow_run, configuration, adoption=adoption)
        except Exception as exc:
            self.get_flow_run_logger(flow_run).exception("The agent could not run this job")
            await self._propose_crashed_state(flow_run, f"The agent could not run this job: {type(exc).__name__}: {exc}")
        finally:
            self._claimed.discard(flow_run.id)
            self._release_limit_slot(flow_run.id)

    async def _job_configuration(self, flow_run: FlowRun, deployment: DeploymentResponse | None) -> LaunchJobConfiguration:
        """The queue config for this run: pool template <- deployment <- run job variables."""
        return await job_configuration(self.work_pool.base_job_template, _job_variables(flow_run, deployment), self.client)

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

    async def _hand_over(self, flow_run: FlowRun, deployment: DeploymentResponse) -> None:
        """A run of an engineer's own flow (`prefect_launch.deploy`): put the launch job that runs it on this queue.

        The run stays Pending, marked as handed over (so no agent takes it for
        orphaned), until that job's Prefect engine starts it; the mark comes
        first, as the job may start it at once.
        """
        job = job_of(deployment.tags)
        if job is None:
            await self._fail(
                flow_run,
                f"deployment {deployment.name!r} on queue {self._work_pool_name!r} was not created by "
                "prefect_launch.deploy: launch queues run the launch flow and flows sent with prefect_launch.deploy(flow, queue=...)",
            )
            return
        message = f"{HANDED_OVER} {run_id_for(flow_run.id)} on queue {self._work_pool_name}, which builds and runs it"
        await self.client.set_flow_run_state(flow_run.id, Pending(message=message), force=True)
        try:
            launch_run = await hand_over(self.client, self._work_pool_name, flow_run, job, _job_variables(flow_run, deployment))
        except LaunchError as exc:
            await self._fail(flow_run, str(exc))
            return
        self.get_flow_run_logger(flow_run).info("%s (launch flow run %s)", message, launch_run.id)

    async def _fail(self, flow_run: FlowRun, message: str) -> None:
        await self.client.set_flow_run_state(flow_run.id, Failed(message=message), force=True)

    async def check_cancellations(self) -> None:
        """Stop in-flight jobs whose runs were asked to cancel (one query per poll)."""
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
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[self._work_pool_name])),
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
                waited = _seconds_in_state(flow_run)
                if gone or waited >= pending_timeout:
                    await self._requeue(flow_run, f"Pending for {waited:.0f} s, "
                                                  + (f"its agent {owner.label} is gone" if owner else "no agent started it"))
                    requeued.append(flow_run.id)
            elif gone and await self._adopt(flow_run, owner):
                adopted.append(flow_run.id)
        return requeued, adopted

    async def _agent_heartbeats(self) -> dict[str, datetime]:
        workers = await self.client.read_workers_for_work_pool(self._work_pool_name)
        return {worker.name: worker.last_heartbeat_time for worker in workers if worker.last_heartbeat_time}

    async def _requeue(self, flow_run: FlowRun, why: str) -> None:
        message = f"Back on queue {self._work_pool_name}: {why}"
        await self.client.set_flow_run_state(flow_run.id, Scheduled(message=message), force=True)
        self.get_flow_run_logger(flow_run).warning(message)

    async def _adopt(self, flow_run: FlowRun, previous: Owner) -> bool:
        """Claim a Running run of a dead agent and follow its job; False if another agent won the claim.

        The job runs whether or not it is followed, so it is adopted even
        with no job slot free: it then runs over `max_jobs` until it ends
        (a restarted agent adopts before claiming new work, so with the
        same `max_jobs` it has the slots).
        """
        if self._limiter is not None:
            try:
                self._limiter.acquire_on_behalf_of_nowait(flow_run.id)
            except anyio.WouldBlock:
                self._logger.warning("Adopting run %s over max_jobs: no slot is free, and its job runs anyway", flow_run.name)
        # Every agent that sees this orphan proposes the same transition id: the server accepts the first only.
        transition_id = uuid5(ADOPTION_NAMESPACE, str(flow_run.state.id))
        claim = Running(message=f"Running {self._owner.tag()}, adopted", state_details=StateDetails(transition_id=transition_id))
        try:
            result = await self.client.set_flow_run_state(flow_run.id, claim)
        except Exception:
            self._release_limit_slot(flow_run.id)
            raise
        if result.status != SetStateStatus.ACCEPT:
            self._release_limit_slot(flow_run.id)
            return False
        adoption = Adoption(
            previous_owner=previous.label,
            submitted=bool(flow_run.infrastructure_pid),
            transition_id=transition_id,
            started=flow_run.start_time,
        )
        self._claimed.add(flow_run.id)
        self._runs_task_group.start_soon(self._claim_and_run, flow_run, adoption)
        return True

    def stop_all(self, reason: str) -> None:
        """Agent shutdown: stop every running job so none is left orphaned."""
        for context in self._in_flight.values():
            context.cancel.set()
        if self._in_flight:
            self._logger.info("Stopping %d running job(s): %s", len(self._in_flight), reason)

    @property
    def queue_name(self) -> str:
        return self._work_pool_name


__all__ = ["LaunchWorker", "LaunchJobConfiguration", "LaunchWorkerVariables"]
