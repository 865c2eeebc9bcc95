"""The in-thread flow engine: a claimed launch run runs on a thread of the agent's process.

A stock Prefect process worker starts a new Python interpreter for every flow
run (about 1.1 s of CPU and 93 MB each). A launch flow spends its life waiting
on a target, so the agent runs it on a thread instead, with Prefect's own sync
flow engine less what a thread in a shared process does not need: the job
starts as soon as the run is claimed, and a running job costs the agent a
thread, not an interpreter.
"""

from __future__ import annotations

from prefect.client.schemas.objects import FlowRun, State
from prefect.context import SettingsContext, get_settings_context
from prefect.settings import PREFECT_FLOWS_HEARTBEAT_FREQUENCY
from prefect.utilities.callables import get_call_parameters, parameters_to_args_kwargs

from prefect_launch.flows.launch import LaunchContext, current_launch, launch
from prefect_launch.prefect_internals import FlowRunEngineWithoutSuspensionObserver, SyncClients


class LaunchFlowEngine(FlowRunEngineWithoutSuspensionObserver):
    """Prefect's sync flow engine, minus the suspension observer (`prefect_internals`), with owner tags.

    For every deployment run the stock engine starts a thread with its own
    event loop and a websocket to the server, to notice `suspend_flow_run`;
    that costs ~0.3 s per run and one server connection per running job.
    """

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


def run_in_thread(flow_run: FlowRun, context: LaunchContext, settings: SettingsContext, clients: SyncClients) -> State:
    """What `prefect.flow_engine.run_flow_sync` does, with `LaunchFlowEngine` and a client borrowed from `clients`
    (building a client per run put ~40 ms and a CSRF token request between the claim and the job's start)."""
    token = current_launch.set(context)
    try:
        # A settings context can be entered once at a time: each run enters its own copy.
        with settings.model_copy(), clients.borrowed():
            engine = LaunchFlowEngine(flow=launch, flow_run=flow_run, parameters=_parameters(flow_run))
            with engine.start():
                while engine.is_running():
                    with engine.run_context():
                        engine.call_flow_fn()
            return engine.state
    finally:
        current_launch.reset(token)


def _parameters(flow_run: FlowRun) -> dict:
    """The launch flow's call parameters from the run's, defaults filled in, as Prefect's engine takes them."""
    args, kwargs = parameters_to_args_kwargs(launch.fn, flow_run.parameters)
    return get_call_parameters(launch.fn, args, kwargs)


def run_settings() -> SettingsContext:
    """Settings for in-process runs, built once (building them costs ~70 ms).

    The agent's worker heartbeat stands for its in-process runs; a per-run
    heartbeat thread would hold every job's slot up to a second at exit.
    """
    current = get_settings_context()
    return SettingsContext(
        profile=current.profile,
        settings=current.settings.copy_with_update(updates={PREFECT_FLOWS_HEARTBEAT_FREQUENCY: None}),
    )
