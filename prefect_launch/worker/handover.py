"""Runs of engineers' own deployed flows (Prefect's `flow.deploy`, `prefect deploy`, `prefect_launch.deploy`), handed to launch runs.

A run of a deployed flow on a launch queue is not run by the worker itself:
it is handed over to a launch run on the same queue, which runs it on the
queue's target, building its image where needed (see `deployments.flows`). This module
keeps the two runs in step: the flow run ends, or goes back to the queue, when
its launch run will not run it, and cancelling either cancels both.

`HandOver` is mixed into `LaunchWorker`, whose client, work pool, queue name,
deployment cache and `_fail`, and the orphan round's `_requeue`, it uses.
"""

from __future__ import annotations

from uuid import UUID

from prefect.client.schemas.objects import FlowRun, State
from prefect.client.schemas.responses import DeploymentResponse
from prefect.states import Cancelled, Cancelling, Crashed, Pending

from prefect_launch.deployments.flows import HANDED_OVER, flow_run_spec, hand_over
from prefect_launch.deployments.queues import LAUNCH_ENTRYPOINT, queue_config_of
from prefect_launch.errors import LaunchError
from prefect_launch.prepare import job_variables
from prefect_launch.spec import Resource, run_id_for
from prefect_launch.targets import target_class
from prefect_launch.templates import IMAGE_VARIABLE
from prefect_launch.status import UnknownRun, find_run
from prefect_launch.worker.orphans import seconds_in_state


def executed_flow_run(launch_run: FlowRun) -> UUID | None:
    """The deployed flow's run a launch run executes (its spec's `flow_run`), if any."""
    executed = (launch_run.parameters.get("spec") or {}).get("flow_run")
    return UUID(str(executed)) if executed else None


class HandOver:
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
            self.get_flow_run_logger(flow_run).error("%s", final.message)  # why, in the flow run's own logs too
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
            waited = seconds_in_state(flow_run)
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
        if deployment is None or deployment.entrypoint == LAUNCH_ENTRYPOINT:
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

    async def _hand_over(self, flow_run: FlowRun, deployment: DeploymentResponse) -> None:
        """A run of a deployed flow (Prefect's `flow.deploy`, `from_source`, `prefect deploy`, or `prefect_launch.deploy`):
        put the launch job that runs it on this queue (`deployments.flows.flow_run_spec`).

        The run stays Pending, marked as handed over (so no agent takes it for orphaned), until that job's Prefect
        engine starts it; the mark comes first, as the job may start it at once. A run this queue cannot run (a
        deployment without an image on a queue that runs images) fails at once, saying what to do in its logs.
        """
        values = job_variables(flow_run, deployment)
        try:
            flow = await self.client.read_flow(deployment.flow_id)
            spec = flow_run_spec(flow_run, deployment, flow.name, values.get(IMAGE_VARIABLE), self._runs_images())
        except LaunchError as exc:
            await self._fail(flow_run, str(exc))
            return
        message = f"{HANDED_OVER} {run_id_for(flow_run.id)} on queue {self.queue_name}, which builds and runs it"
        await self.client.set_flow_run_state(flow_run.id, Pending(message=message), force=True)
        try:
            launch_run = await hand_over(self.client, self.queue_name, flow_run, spec, values)
        except LaunchError as exc:
            await self._fail(flow_run, str(exc))
            return
        self.get_flow_run_logger(flow_run).info("%s (launch flow run %s)", message, launch_run.id)

    def _runs_images(self) -> bool:
        """Whether this queue's target runs images; a pool whose template holds no queue config runs on local-process."""
        config = queue_config_of(self.work_pool)
        return target_class(config.resource if config is not None else Resource.local_process).builds_image
