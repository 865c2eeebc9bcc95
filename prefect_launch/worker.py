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
from typing import Any, Callable
from uuid import UUID

import anyio
import anyio.abc
from prefect.client.schemas.filters import (
    FlowRunFilter,
    FlowRunFilterId,
    FlowRunFilterState,
    FlowRunFilterStateName,
)
from prefect.client.schemas.objects import FlowRun
from prefect.flow_engine import run_flow
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY, temporary_settings
from prefect.states import Failed
from prefect.workers.base import BaseJobConfiguration, BaseVariables, BaseWorker, BaseWorkerResult
from pydantic import Field, ValidationError

from prefect_launch.flows.launch import LaunchContext, current_launch, launch
from prefect_launch.home import launch_home
from prefect_launch.spec import QueueConfig, Resource


class LaunchJobConfiguration(BaseJobConfiguration):
    """A queue config: the target resource and its arguments, templates filled in."""

    resource: str = Field(default=Resource.local_process.value, description="Target resource")
    resource_args: dict[str, Any] = Field(default_factory=dict, description="The target's own config")
    require_wandb_run: bool = Field(
        default=True, description="Fail jobs that exit 0 without having created their W&B run"
    )

    def queue_config(self) -> QueueConfig:
        return QueueConfig(
            resource=self.resource,
            resource_args=self.resource_args,
            require_wandb_run=self.require_wandb_run,
        )


class LaunchWorkerVariables(BaseVariables):
    resource: Resource = Field(default=Resource.local_process, description="Target resource")
    resource_args: dict[str, Any] = Field(default_factory=dict, description="The target's own config")
    require_wandb_run: bool = Field(default=True, description="Require every job to create its W&B run")


class LaunchWorkerResult(BaseWorkerResult):
    pass


def _run_in_thread(flow_run: FlowRun, context: LaunchContext) -> Any:
    token = current_launch.set(context)
    try:
        # The agent's worker heartbeat stands for its in-process runs; a per-run
        # heartbeat thread would hold every job's slot up to a second at exit.
        with temporary_settings(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}):
            return run_flow(launch, flow_run=flow_run, return_type="state")
    finally:
        current_launch.reset(token)


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
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        self._shared_limiter = shared_limiter
        self._on_job_done = on_job_done
        self._in_flight: dict[UUID, LaunchContext] = {}
        self._threads = anyio.CapacityLimiter(10_000)

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
    ) -> LaunchWorkerResult:
        try:
            queue = configuration.queue_config()
        except ValidationError as exc:
            error = exc.errors()[0]
            where = ".".join(str(p) for p in error["loc"])
            await self.client.set_flow_run_state(
                flow_run.id,
                Failed(message=f"queue {self._work_pool_name!r} config: {where}: {error['msg']}"),
                force=True,
            )
            if task_status:
                task_status.started(os.getpid())
            return LaunchWorkerResult(identifier=str(flow_run.id), status_code=0)

        context = LaunchContext(queue_name=self._work_pool_name, queue=queue, home=launch_home())
        self._in_flight[flow_run.id] = context
        if task_status:
            task_status.started(os.getpid())
        try:
            await anyio.to_thread.run_sync(_run_in_thread, flow_run, context, limiter=self._threads)
        finally:
            self._in_flight.pop(flow_run.id, None)
            if self._on_job_done:
                self._on_job_done()
        return LaunchWorkerResult(identifier=str(flow_run.id), status_code=0)

    def cancel_in_flight(self, flow_run_id: UUID) -> bool:
        """Stop a running job of this worker; True if it was one."""
        context = self._in_flight.get(flow_run_id)
        if context is None:
            return False
        context.cancel.set()
        return True

    async def get_and_submit_flow_runs(self) -> list[FlowRun]:
        await self.check_cancellations()
        return await super().get_and_submit_flow_runs()

    async def check_cancellations(self) -> None:
        """Stop in-flight jobs whose runs were asked to cancel (one query per poll)."""
        if not self._in_flight:
            return
        cancelling = await self.client.read_flow_runs(
            flow_run_filter=FlowRunFilter(
                id=FlowRunFilterId(any_=list(self._in_flight)),
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
            self._logger.info("Stopping %d running job(s): %s", len(self._in_flight), reason)

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)


__all__ = ["LaunchWorker", "LaunchJobConfiguration", "LaunchWorkerVariables"]
