"""The `launch` flow: one flow run per launch job, one task per stage.

resolve source -> build -> push -> submit -> monitor, each a Prefect task with
its own logs (each stage prepares the job through `prefect_launch.prepare`, as
`launch --dry-run` does), then a markdown artifact with the resolved config (secrets
masked), the image, the target's handle and the stage timeline. The timeline
(`prefect_launch.timeline`: queue wait, resolve, build, push, submit, start,
run, and why the job waits) is also published live, within a second of each
change, in the table artifact `launch-<run id>-timeline` that `prefect-launch
status` reads (`flows.timeline_artifact`).

The flow runs inside a launch agent (or `prefect worker start --type launch`),
which sets `LaunchContext` with the queue's resolved config before running it:
the queue config never travels through flow parameters, so nothing the admin
configured (or any secret in it) shows up as a parameter.
"""

from __future__ import annotations

import json
import logging
import threading
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import flow, get_client, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.context import FlowRunContext
from prefect.settings import get_current_settings
from prefect.states import Cancelled, Crashed, Failed, State
from prefect.utilities.annotations import quote

from prefect_launch.deployments.queues import holders_of, run_id_in_use
from prefect_launch.errors import AdoptionFailed, LaunchError, missing_extra
from prefect_launch.prepare import Preparation
from prefect_launch.redact import for_display
from prefect_launch.spec import LaunchSpec, QueueConfig, ResolvedJob, run_id_for
from prefect_launch.targets import Handle, Outcome, Progress
from prefect_launch.flows.timeline_artifact import TimelineArtifact
from prefect_launch.timeline import Timeline
from prefect_launch.wandb_files import run_created


@dataclass
class Adoption:
    """A run taken over from an agent that is gone."""

    previous_owner: str
    # The dead agent had put the run's submission on record (its `infrastructure_pid`): a job not found is
    # not submitted again.
    submitted: bool
    # The adopting claim's transition id; the flow engine's own Running proposal repeats it (see worker).
    transition_id: UUID
    # When the run first went Running: its job cannot have been created before.
    started: datetime | None = None


@dataclass
class LaunchContext(Preparation):
    """What the agent hands the flow: how its queue's jobs are prepared, and a way to cancel."""

    cancel: threading.Event = field(default_factory=threading.Event)
    # Which agent process runs this flow (`ownership.Owner.tag()`), written into the run's Running state.
    owner: str = ""
    # Set when this agent took the run over from one that died (or lost it to a server outage).
    adoption: Adoption | None = None
    # The submitted job, for the agent to release once the run's final state is on record.
    handle: Handle | None = None


class _OneLineLaunchErrors(logging.Filter):
    """A stage failing with a LaunchError (bad input, said in one line naming the field) logs that line, not a
    traceback: Prefect's task engine logs every failed task with its traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        if record.exc_info and isinstance(record.exc_info[1], LaunchError):
            record.exc_info = record.exc_text = None
        return True


logging.getLogger("prefect.task_runs").addFilter(_OneLineLaunchErrors())


class CancelledBeforeStart(LaunchError):
    """The run was cancelled before its job was submitted: the job is never started."""


def _not_cancelled(context: LaunchContext, when: str) -> None:
    if context.cancel.is_set():
        raise CancelledBeforeStart(f"cancelled {when}: the job was never started")


current_launch: ContextVar[LaunchContext] = ContextVar("prefect_launch_context")


_task_options: dict[str, Any] = dict(cache_policy=NO_CACHE, persist_result=False)


@task(name="resolve-source", **_task_options)
def resolve_source(spec: LaunchSpec, context: LaunchContext) -> ResolvedJob:
    job = context.resolve(spec)
    where = job.image or f"code {job.workdir}"
    get_run_logger().info("Run %s (%s) in project %s from %s", job.run_id, job.run_name, job.project, where)
    return job


@dataclass
class Image:
    """The image a job runs, and whether the build task made it (so the push task must push it)."""

    ref: str | None
    built: bool = False


@task(name="build", **_task_options)
def build(job: ResolvedJob, context: LaunchContext, overrides: dict[str, Any]) -> Image:
    log = get_run_logger()
    planned = context.plan_image(job, overrides)
    if planned.build is None:
        log.info("%s", planned.reason)
        return Image(ref=planned.ref)
    if context.registry.exists(planned.ref):
        log.info("Image %s already exists: build skipped", planned.ref)
        return Image(ref=planned.ref)
    _not_cancelled(context, "before the build")
    planned.builder.build(planned.build, log, context.cancel)
    _not_cancelled(context, "during the build")
    log.info("Built %s", planned.ref)
    return Image(ref=planned.ref, built=not planned.builder.pushes)


@task(name="push", **_task_options)
def push(image: Image, job: ResolvedJob, context: LaunchContext) -> ResolvedJob:
    """The job with its image pushed, and whether its target must be handed the registry's login to pull it."""
    log = get_run_logger()
    if not image.built:
        log.info("Nothing to push: %s", f"{image.ref} is where it runs from" if image.ref else "nothing was built")
    else:
        context.registry.push(image.ref, log)
    job = context.with_image(job, image.ref)
    if job.pull_secret:
        log.info("The run's pods pull %s with the registry's login", image.ref)
    return job


@task(name="submit", **_task_options)
def submit(job: ResolvedJob, context: LaunchContext, overrides: dict[str, Any]) -> tuple[dict[str, Any], Handle]:
    log = get_run_logger()
    queue, environment = context.queue, context.environment
    if environment is not None and context.target.runs_remotely:
        log.info("Using %s", environment.verify())
    rendered = context.render(job, overrides)
    adoption = context.adoption
    if adoption is not None and not adoption.submitted and not context.target.adoptable:
        # Its submission is on record before a job can start: a job that dies with its agent never started.
        log.info("Agent %s died before it started the job: starting it", adoption.previous_owner)
    elif adoption is not None:
        # Attach first even when the dead agent's submit task is not on record yet (task states reach the
        # server a moment late): whatever exists under the run's name is followed, never created again.
        handle = context.target.attach(rendered["submission"], log, adoption.started)
        if handle is not None:
            return rendered, handle
        if adoption.submitted:
            vanishes = context.target.may_vanish(rendered["submission"])
            if vanishes and not (adoption.started and context.target.never_created(rendered["submission"], adoption.started)):
                raise AdoptionFailed(
                    f"the job was submitted by agent {adoption.previous_owner}, which died, and is no longer on "
                    f"{queue.resource.value}: not submitted again (it may have ended and been removed while no agent followed it)"
                )
            log.info("Not on %s, %s: agent %s died before creating it", queue.resource.value,
                     "whose events show it was never created" if vanishes else "where a job stays once created",
                     adoption.previous_owner)
    # On record before the job can exist, so an agent adopting this run after this one dies knows that a job
    # missing from the target was submitted once and must not be submitted again, and that a job which dies
    # with its agent (local-process) and is not on record never started.
    context.target.before_record(rendered["submission"])
    run_context = FlowRunContext.get()
    run_context.client.update_flow_run(run_context.flow_run.id, infrastructure_pid=f"{queue.resource.value}/{job.run_id}")
    _not_cancelled(context, "before the submit")
    log.info("Submitting to %s: %s", queue.resource.value, json.dumps(for_display(rendered["submission"])))
    handle = context.target.submit(rendered["submission"], log)
    return rendered, handle


@task(name="monitor", **_task_options)
def monitor(job: ResolvedJob, context: LaunchContext, handle: Handle, progress: Progress) -> Outcome:
    queue = context.queue
    outcome = context.target.wait(handle, context.cancel, get_run_logger(), progress)
    if outcome.state == "completed" and job.flow_run is not None:
        outcome = executed_flow_outcome(job.flow_run, outcome)
    if outcome.state == "completed" and queue.require_wandb_run and not wandb_run_created(job):
        return Outcome(
            state="failed",
            exit_code=outcome.exit_code,
            message=(
                f"the job exited 0 but never called wandb.init: no W&B run {job.run_id} was created "
                "(every launch job must create its W&B run; a queue can opt out with require_wandb_run: false)"
            ),
        )
    return outcome


def stop_orphaned_job(context: LaunchContext, spec: LaunchSpec, since: datetime | None,
                      log: logging.Logger | logging.LoggerAdapter) -> tuple[str, Handle | None]:
    """Stop the job of a run asked to cancel after its agent died: what was done, and the handle to release.

    The job is found as an adopter finds it (its submission prepared as this flow prepares it, then
    `Target.attach`) and stopped as a cancel stops it (`Target.wait` with the run cancelled). Its
    leftovers are for the caller to release once the run's Cancelled state is on record.
    """
    job = context.resolve(spec)
    image = context.plan_image(job, spec.resource_args).ref
    rendered = context.render(context.with_image(job, image), spec.resource_args)
    try:
        handle = context.target.attach(rendered["submission"], log, since)
    except AdoptionFailed as exc:  # a job that died with its agent (local-process)
        return str(exc), None
    if handle is None:
        return f"its job is no longer on {context.queue.resource.value}: nothing to stop", None
    context.cancel.set()
    outcome = context.target.wait(handle, context.cancel, log, Timeline())
    return f"its job was stopped ({outcome.message or outcome.state})", handle


def executed_flow_outcome(flow_run_id: UUID, outcome: Outcome) -> Outcome:
    """How the deployed flow's run the job executed ended: Prefect's engine exits 0 once the flow's
    final state is on record, failed or not, so the launch run takes that state's outcome."""
    with get_client(sync_client=True) as client:
        state = client.read_flow_run(flow_run_id).state
    if state is None or state.is_completed():
        return outcome
    return Outcome(
        state="cancelled" if state.is_cancelled() else "failed",
        exit_code=outcome.exit_code,
        message=f"flow run {flow_run_id} ended {state.name}: {state.message}",
    )


def wandb_run_created(job: ResolvedJob) -> bool:
    """Whether the job created its W&B run, where its run folder is the agent's to read (a remote job's is not)."""
    return job.run_dir is None or run_created(job.run_dir, job.run_id)


# The flow persists no result; naming the storage Prefect falls back to when the server sets none spares its
# engine reading the server's default result storage (`GET /admin/storage`) on the way to every job's start.
@flow(name="launch", persist_result=False, log_prints=False,
      result_storage=Path(get_current_settings().results.local_storage_path))
def launch(spec: LaunchSpec) -> State | None:
    """Run one launch job on the queue this flow run was put on."""
    context = current_launch.get(None)
    if context is None:
        raise LaunchError(
            "the launch flow runs inside a launch agent: start `prefect-launch agent -q QUEUE` "
            "or `prefect worker start --type launch --pool QUEUE`"
        )
    log = get_run_logger()
    flow_run = FlowRunContext.get().flow_run
    # An id fixed by this run's own flow run id (enqueued without one) cannot be held by an earlier run.
    run_id_given = spec.run_id is not None
    if not run_id_given:
        spec = spec.model_copy(update={"run_id": run_id_for(flow_run.id)})
    if flow_run.name != spec.run_id:
        # Started from the Prefect UI, `prefect deployment run` or a schedule, the run has a name of Prefect's
        # own; from now on it is named after its W&B run id, as every launch run is.
        FlowRunContext.get().client.update_flow_run(flow_run.id, name=spec.run_id)
        log.info("Flow run %s is W&B run %s: renamed after it", flow_run.name, spec.run_id)
    published = TimelineArtifact(spec.run_id, flow_run.id, FlowRunContext.get().client, log)
    timeline = Timeline(publish=published)
    if flow_run.expected_start_time:
        timeline.begin("queue wait", at=flow_run.expected_start_time.timestamp())
    job: ResolvedJob | None = None
    rendered: dict[str, Any] = {}
    handle: Handle | None = None
    if context.adoption is not None:
        log.warning("Adopted %s: agent %s is gone; %s", context.owner, context.adoption.previous_owner,
                    "following its job" if context.adoption.submitted
                    else "its submit is not on record: following its job if it exists, else submitting it")
    expired = _expired(spec, context, flow_run)
    if expired:
        log.warning("%s", expired)
        return Cancelled(name="Expired", message=expired)
    try:
        if run_id_given:
            _check_run_id_free(spec, flow_run)
        timeline.begin("resolve")
        # quote(): Prefect would walk every value of each task's arguments (a 400,000-character run
        # config is thousands of them, once per stage); these tasks take no futures to resolve.
        job = resolve_source(quote(spec), quote(context))
        timeline.begin("build")
        image = build(quote(job), quote(context), quote(spec.resource_args))
        timeline.begin("push")
        job = push(quote(image), quote(job), quote(context))
        timeline.begin("submit")
        rendered, handle = submit(quote(job), quote(context), quote(spec.resource_args))
        context.handle = handle
        timeline.begin("start")  # until the target reports the job running (`timeline.started`), then "run"
        outcome = monitor(quote(job), quote(context), quote(handle), quote(timeline))
    except AdoptionFailed as exc:
        log.error("%s", exc)
        return Crashed(message=str(exc))
    except ModuleNotFoundError as exc:
        if (missing := missing_extra(exc)) is None:
            raise
        log.error("%s", missing)
        outcome = Outcome(state="failed", message=str(missing))
    except LaunchError as exc:
        if handle is None and context.cancel.is_set():  # stopped before its job started (a build stopped on cancel)
            log.info("%s", exc)
            outcome = Outcome(state="cancelled", message=str(exc))
        else:
            log.error("%s", exc)
            outcome = Outcome(state="failed", message=str(exc))
    finally:
        timeline.end()
        published.flush()  # on record before the run's final state
        if job is not None:
            _record(job, context, rendered, handle, timeline)
    if outcome.state == "preempted":
        return _requeue(spec, job, outcome, context.queue.launch_keys().max_requeues)
    if outcome.state == "failed":
        return Failed(message=outcome.message)
    if outcome.state == "cancelled":
        return Cancelled(message=outcome.message)
    log.info("Run %s completed", job.run_id if job else "")
    return None


def _expired(spec: LaunchSpec, context: LaunchContext, flow_run) -> str:
    """Why the run may not start, having waited on its queue past its time-to-live (the spec's `ttl`, else the
    queue config's); "" when it may. A requeued run's wait counts from its requeue."""
    ttl = spec.ttl or context.queue.launch_keys().ttl
    waited = (datetime.now(timezone.utc) - flow_run.expected_start_time).total_seconds() if flow_run.expected_start_time else 0
    if ttl and waited > ttl:
        return (f"expired: waited {waited:.0f} s on queue {context.queue_name}, longer than its time-to-live of "
                f"{ttl} s; it was never started")
    return ""


def _check_run_id_free(spec: LaunchSpec, flow_run) -> None:
    """Refuse the run, before it touches anything, if an earlier run that has not ended holds its run id.

    `enqueue` refuses a taken id already; this covers two enqueued at once and runs created
    another way (the Prefect UI, the API). Of two such runs the later one yields; a requeued run
    does not wait for the run that requeued it (one preemption fewer), which ends as it requeues.
    """
    for holder in FlowRunContext.get().client.read_flow_runs(**holders_of(spec.run_id), limit=20):
        predecessor = (holder.parameters.get("spec") or {}).get("preemptions", 0) == spec.preemptions - 1
        if holder.id != flow_run.id and holder.created < flow_run.created and not predecessor:
            raise run_id_in_use(spec.run_id, holder)


def _requeue(spec: LaunchSpec, job: ResolvedJob, outcome: Outcome, max_requeues: int) -> State:
    """Put a preempted run back at the end of its queue as the same W&B run, at most `max_requeues` times (the queue
    config's, W&B's 5 by default; 0: never)."""
    attempts = spec.preemptions + 1
    if spec.preemptions >= max_requeues:
        why = "its queue does not requeue preempted jobs (max_requeues: 0)" if max_requeues == 0 else \
            f"preempted {attempts} times, not requeued again (at most {max_requeues})"
        return Failed(message=f"{outcome.message}; {why}")
    again = spec.model_copy(update={"run_id": job.run_id, "run_name": job.run_name, "preemptions": attempts})
    flow_run = FlowRunContext.get().flow_run
    with get_client(sync_client=True) as client:
        requeued = client.create_flow_run_from_deployment(
            flow_run.deployment_id,
            parameters={"spec": again.model_dump(mode="json", exclude_none=True)},
            job_variables=flow_run.job_variables or {},
            work_queue_name=flow_run.work_queue_name,
            name=job.run_id,
        )
    message = f"{outcome.message}; requeued as flow run {requeued.id} (requeue {attempts} of at most {max_requeues})"
    get_run_logger().warning("%s", message)
    return Cancelled(name="Preempted", message=message)


def _record(
    job: ResolvedJob,
    context: LaunchContext,
    rendered: dict[str, Any],
    handle: Handle | None,
    timeline: Timeline,
) -> None:
    config = json.dumps(for_display(rendered.get("submission", {})), indent=2, sort_keys=True)
    markdown = "\n".join(
        [
            f"# Launch run `{job.run_id}` ({job.run_name})",
            "",
            f"- queue: `{context.queue_name}` ({context.queue.resource.value})",
            f"- project: `{job.project}`" + (f", entity `{job.entity}`" if job.entity else ""),
            f"- image: `{job.image or 'none'}`",
            f"- target handle: `{handle.id if handle else 'not submitted'}`",
            "",
            "## Stages",
            "",
            timeline.markdown(),
            "",
            "## Resolved submission (secrets masked)",
            "",
            "```json",
            config,
            "```",
        ]
    )
    create_markdown_artifact(markdown=markdown, key=f"launch-{job.run_id}", description="Launch run summary")
