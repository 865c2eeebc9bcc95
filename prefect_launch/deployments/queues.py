"""Queues: a work pool of type `launch`, its priority work queues and the launch deployment.

One pool per queue. Its `base_job_template.job_configuration` is the queue
config; its `variables` schema holds the template fields, so the Prefect
server refuses a run whose values are out of range. With prioritization the
pool has work queues critical, high, medium, low (priorities 1..4, FIFO
inside each); without it, every run goes to the pool's default queue.

Example::

    async with get_client() as client:
        await create_queue(client, QueueDefinition(name="demo", resource="local-process"))
        run = await enqueue(client, "demo", LaunchSpec(...), priority=None, values={})
"""

from __future__ import annotations

from typing import Any
from uuid import UUID

from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.actions import DeploymentFlowRunCreate, DeploymentUpdate, WorkPoolCreate, WorkPoolUpdate
from prefect.client.schemas.filters import (
    FlowFilter,
    FlowFilterName,
    FlowRunFilter,
    FlowRunFilterName,
    FlowRunFilterState,
    FlowRunFilterStateType,
    WorkPoolFilter,
    WorkPoolFilterName,
    WorkPoolFilterType,
)
from prefect.client.schemas.objects import FlowRun, StateType, WorkPool
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import ObjectAlreadyExists, ObjectNotFound, PrefectHTTPStatusError
from prefect.utilities.callables import parameter_schema
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from prefect_launch.errors import LaunchError
from prefect_launch.render import check_job_args, check_queue_config
from prefect_launch.spec import LaunchSpec, QueueConfig, Resource
from prefect_launch.targets import SUPPORTED_RESOURCES, target_class
from prefect_launch.templates import (
    TemplateField,
    check_no_image,
    check_no_templates,
    check_placeholders_declared,
    templates_of,
    variables_schema,
)

PRIORITIES = {"critical": 1, "high": 2, "medium": 3, "low": 4}
DEFAULT_PRIORITY = "medium"
WORKER_TYPE = "launch"
FLOW_NAME = "launch"
LAUNCH_ENTRYPOINT = "prefect_launch.flows.launch:launch"


class QueueDefinition(BaseModel):
    """What `queue create` needs; the pool's job template is derived from it."""

    model_config = ConfigDict(extra="forbid")
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
    resource: Resource
    resource_args: dict[str, Any] = Field(default_factory=dict)
    templates: dict[str, TemplateField] = Field(default_factory=dict)
    prioritization: bool = False
    require_wandb_run: bool = True
    description: str | None = None

    def check(self, source: str = "queue config") -> "QueueDefinition":
        """Refuse a config its target could not run, or one naming an undeclared template field, naming `source`
        (the file) and the field (no I/O)."""
        check_placeholders_declared(self.resource_args, self.templates)
        check_queue_config(self.resource, self.resource_args, self.templates, source)
        return self

    def base_job_template(self) -> dict[str, Any]:
        """The pool's job template: the queue config, and its template fields as the variables schema (with `image`
        where the target runs images, so Prefect's own `flow.deploy(image=...)` sends flows to the queue)."""
        return {
            "job_configuration": {
                "resource": self.resource.value,
                "resource_args": self.resource_args,
                "require_wandb_run": self.require_wandb_run,
            },
            "variables": variables_schema(self.templates, image=target_class(self.resource).builds_image),
        }


def deployment_name(queue: str) -> str:
    return f"{FLOW_NAME}/{queue}"


async def create_queue(client: PrefectClient, queue: QueueDefinition, source: str = "queue config") -> WorkPool:
    """Create the pool, its priority work queues and the launch deployment, once `queue.check` passes."""
    _check_supported(queue)
    queue.check(source)
    try:
        pool = await client.create_work_pool(
            WorkPoolCreate(
                name=queue.name,
                type=WORKER_TYPE,
                description=queue.description or f"prefect-launch queue ({queue.resource.value})",
                base_job_template=queue.base_job_template(),
            )
        )
    except ObjectAlreadyExists:
        raise LaunchError(f"queue {queue.name!r} already exists; change it with `prefect-launch queue update "
                          f"{queue.name} ...`") from None
    if queue.prioritization:
        await _prioritize(client, queue.name)
    await ensure_launch_deployment(client, pool)
    return pool


async def update_queue(client: PrefectClient, name: str, config: dict[str, Any] | None = None,
                       templates: dict[str, TemplateField] | None = None, prioritization: bool = False,
                       require_wandb_run: bool | None = None, description: str | None = None,
                       source: str = "queue config") -> WorkPool:
    """Change a queue in place: its config, template fields (given together or alone, each replacing the
    old), its W&B-run rule and description; `prioritization` adds the priority work queues it lacks.
    Runs already on it keep their place. The result is checked as `queue create` checks a new one."""
    pool = await read_queue(client, name)
    # A pool whose template holds no queue config (made before prefect-launch wrote the default template)
    # runs as a local-process queue: it is changed from there.
    current = queue_definition_of(pool) or QueueDefinition(name=name, resource=Resource.local_process)
    updates: dict[str, Any] = {"prioritization": prioritization or bool(await queue_priorities(client, name))}
    if config is not None:
        updates["resource_args"] = config
    if templates is not None:
        updates["templates"] = templates
    if require_wandb_run is not None:
        updates["require_wandb_run"] = require_wandb_run
    if description is not None:
        updates["description"] = description
    queue = QueueDefinition.model_validate({**current.model_dump(), **updates}).check(source)
    await client.update_work_pool(name, WorkPoolUpdate(base_job_template=queue.base_job_template(),
                                                       description=queue.description or pool.description))
    if queue.prioritization and not await queue_priorities(client, name):
        await _prioritize(client, name)
    await ensure_launch_deployment(client, await read_queue(client, name))
    return await read_queue(client, name)


def _check_supported(queue: QueueDefinition) -> None:
    if queue.resource.value not in SUPPORTED_RESOURCES:
        raise LaunchError(
            f"queue {queue.name!r}: resource {queue.resource.value!r} is not supported yet; "
            f"supported: {', '.join(SUPPORTED_RESOURCES)}"
        )


async def _prioritize(client: PrefectClient, name: str) -> None:
    """Work queues critical, high, medium, low (priorities 1..4): the pool's default queue becomes `critical`."""
    default = (await client.read_work_queues(work_pool_name=name))[0]
    await client.update_work_queue(default.id, name="critical", priority=1)
    for queue_name, priority in PRIORITIES.items():
        if queue_name != "critical":
            await client.create_work_queue(name=queue_name, priority=priority, work_pool_name=name)
    deployment = await _launch_deployment(client, name)
    if deployment is not None:
        await client.update_deployment(deployment.id, DeploymentUpdate(work_queue_name=DEFAULT_PRIORITY))


async def _launch_deployment(client: PrefectClient, name: str) -> DeploymentResponse | None:
    try:
        return await client.read_deployment_by_name(deployment_name(name))
    except ObjectNotFound:
        return None


async def ensure_launch_deployment(client: PrefectClient, pool: WorkPool) -> DeploymentResponse:
    """The queue's `launch/<queue>` deployment, made if the pool lacks it (one made with `prefect work-pool
    create --type launch`, or in the Prefect UI, is a queue as soon as it has one)."""
    deployment = await _launch_deployment(client, pool.name)
    if deployment is not None:
        return deployment
    from prefect_launch.flows.launch import launch  # the flow module is heavy; only creation needs it

    priorities = await queue_priorities(client, pool.name)
    await client.create_deployment(
        flow_id=await client.create_flow_from_name(FLOW_NAME),
        name=pool.name,
        work_pool_name=pool.name,
        work_queue_name=DEFAULT_PRIORITY if DEFAULT_PRIORITY in priorities else "default",
        entrypoint=LAUNCH_ENTRYPOINT,
        parameter_openapi_schema=parameter_schema(launch).model_dump_for_openapi(),
        enforce_parameter_schema=True,
        description=f"Launch jobs on queue {pool.name}",
    )
    return await client.read_deployment_by_name(deployment_name(pool.name))


def default_base_job_template() -> dict[str, Any]:
    """What a pool made without prefect-launch (`prefect work-pool create --type launch`, the Prefect UI) gets:
    a local-process queue with no template fields, as `queue create NAME --resource local-process` makes."""
    return QueueDefinition(name="default", resource=Resource.local_process).base_job_template()


async def list_queues(client: PrefectClient) -> list[WorkPool]:
    return await client.read_work_pools(
        work_pool_filter=WorkPoolFilter(type=WorkPoolFilterType(any_=[WORKER_TYPE]))
    )


async def read_queue(client: PrefectClient, name: str) -> WorkPool:
    try:
        pool = await client.read_work_pool(name)
    except ObjectNotFound:
        raise LaunchError(
            f"queue {name!r} not found; create it first with `prefect-launch queue create {name} ...`"
        ) from None
    if pool.type != WORKER_TYPE:
        raise LaunchError(f"work pool {name!r} is of type {pool.type!r}, not a prefect-launch queue")
    return pool


def queue_definition_of(pool: WorkPool) -> QueueDefinition | None:
    """The definition `queue create` would have made this pool from (priorities aside); None if its job template
    holds no queue config."""
    config = queue_config_of(pool)
    if config is None:
        return None
    variables = (pool.base_job_template or {}).get("variables") or {}
    return QueueDefinition(name=pool.name, resource=config.resource, resource_args=config.resource_args,
                           templates=templates_of(variables), require_wandb_run=config.require_wandb_run,
                           description=pool.description)


def queue_config_of(pool: WorkPool) -> QueueConfig | None:
    """The queue config a pool's job template holds, template fields unfilled; None if it holds none."""
    job_configuration = (pool.base_job_template or {}).get("job_configuration") or {}
    try:
        return QueueConfig.model_validate({key: job_configuration[key] for key in QueueConfig.model_fields
                                           if key in job_configuration})
    except ValidationError:
        return None


async def queue_priorities(client: PrefectClient, name: str) -> list[str]:
    names = {q.name for q in await client.read_work_queues(work_pool_name=name)}
    return [p for p in PRIORITIES if p in names]


async def delete_queue(client: PrefectClient, name: str) -> None:
    await read_queue(client, name)
    try:
        deployment = await client.read_deployment_by_name(deployment_name(name))
        await client.delete_deployment(deployment.id)
    except ObjectNotFound:
        pass
    await client.delete_work_pool(name)


_FINAL_STATES = [StateType.COMPLETED, StateType.FAILED, StateType.CANCELLED, StateType.CRASHED]


def holders_of(run_id: str) -> dict[str, Any]:
    """Filters for the launch runs holding `run_id`: named after it and not ended, on any queue.

    A run id names one W&B run and one container, folder or Kubernetes object at a time, so a
    second run may take it only once the first has ended (a resumed W&B run, for example).
    """
    return {"flow_filter": FlowFilter(name=FlowFilterName(any_=[FLOW_NAME])),
            "flow_run_filter": FlowRunFilter(name=FlowRunFilterName(any_=[run_id]),
                                             state=FlowRunFilterState(type=FlowRunFilterStateType(not_any_=_FINAL_STATES)))}


def run_id_in_use(run_id: str, holder: FlowRun) -> LaunchError:
    return LaunchError(f"run id {run_id!r} is in use by flow run {holder.id}, which has not ended "
                       f"({holder.state_name}); give another --run-id, or wait for that run to end")


async def enqueue(
    client: PrefectClient,
    queue: str,
    spec: LaunchSpec,
    priority: str | None,
    values: dict[str, Any],
) -> FlowRun:
    """Put a job on a queue: one flow run of the queue's launch deployment.

    What its submitter sends is checked first, as the agent checks it again before anything is built:
    its resource args against the target's policy, its template values for `{{ ... }}` references and a
    deployed flow's `image`.
    """
    deployment = await _launch_deployment(client, queue) or await ensure_launch_deployment(client, await read_queue(client, queue))
    check_no_templates(values)
    check_no_image(values)
    if spec.resource_args:
        config = queue_config_of(await read_queue(client, queue))
        if config is not None:  # else its agent says what is wrong with the queue
            check_job_args(config, spec.resource_args)
    work_queue = None
    if priority is not None:
        if priority not in PRIORITIES:
            raise LaunchError(f"priority {priority!r}: expected one of {', '.join(PRIORITIES)}")
        if priority not in await queue_priorities(client, queue):
            raise LaunchError(f"queue {queue!r} was created without --prioritization; -P/--priority needs it")
        work_queue = priority
    if spec.run_id:
        holders = await client.read_flow_runs(**holders_of(spec.run_id), limit=1)
        if holders:
            raise run_id_in_use(spec.run_id, holders[0])
    try:
        return await create_validated_run(
            client,
            deployment.id,
            spec,
            job_variables=values,
            work_queue_name=work_queue,
            name=spec.run_id,  # the W&B run id names the flow run: unique and greppable
        )
    except PrefectHTTPStatusError as exc:
        if exc.response.status_code in (409, 422):
            detail = exc.response.json().get("detail", exc.response.text)
            raise LaunchError(f"queue {queue!r} refused the job: {detail}") from None
        raise


async def create_validated_run(
    client: PrefectClient,
    deployment_id: UUID,
    spec: LaunchSpec,
    job_variables: dict[str, Any],
    work_queue_name: str | None,
    name: str | None,
) -> FlowRun:
    """A Scheduled run of a queue's launch deployment for a spec pydantic has validated, without the server
    checking it again (the server names the run and picks the deployment's work queue when given None).

    The deployment enforces its parameter schema, so a run from the Prefect UI, `prefect deployment run` or
    the API is checked before it exists. A `LaunchSpec` fits that schema by construction, and the server's
    check costs it ~20 ms of CPU per run (the jsonschema call it makes checks the schema itself against
    the metaschema every time): on 2 cores, a tenth of the server's work for a job. The run opts out, as
    `DeploymentFlowRunCreate.enforce_parameter_schema` allows; Prefect's client method does not pass it.
    """
    create = DeploymentFlowRunCreate(
        parameters={"spec": spec.model_dump(mode="json", exclude_none=True)},
        job_variables=job_variables,
        name=name,
        enforce_parameter_schema=False,
    )
    if work_queue_name is not None:  # set only when given, as Prefect's client does (older servers lack it)
        create.work_queue_name = work_queue_name
    response = await client.request(
        "POST", "/deployments/{id}/create_flow_run", path_params={"id": deployment_id},
        json=create.model_dump(mode="json", exclude_unset=True),
    )
    return FlowRun.model_validate(response.json())


async def runs_per_state(client: PrefectClient, queue: str) -> dict[str, int]:
    """How many of the queue's runs are in each state (launch jobs and flows deployed to it alike)."""
    counts: dict[str, int] = {}
    offset = 0
    while True:
        runs = await client.read_flow_runs(
            work_pool_filter=WorkPoolFilter(name=WorkPoolFilterName(any_=[queue])),
            limit=200,
            offset=offset,
        )
        for run in runs:
            name = run.state.name if run.state else "Unknown"
            counts[name] = counts.get(name, 0) + 1
        if len(runs) < 200:
            return counts
        offset += 200

