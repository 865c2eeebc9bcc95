"""ML engineers' own Prefect flows on launch queues, however they were deployed.

Prefect's own ways all work: `flow.deploy(name, work_pool_name="gpu", image=...)` (the image
built and pushed by Prefect's own steps, or an existing one with `build=False`),
`flow.from_source(...).deploy(...)`, and `prefect deploy` from a `prefect.yaml`. So does the
shortcut `prefect_launch.deploy(train, queue="gpu")`, which stores the flow's folder as a code
job (content-addressed, like `job create code`) and creates a deployment of the flow in the
queue's work pool, its tag `prefect-launch.job:<project>/<name>` naming that job.

When the agent claims a run of any deployment on its queue, it hands the run to the queue as a
launch job (`hand_over`): one run of the queue's `launch` flow, with the flow run's template
values, priority and the queue's guardrails, runs it on the queue's target like any launch job,
its job running the flow run itself with Prefect's engine (`python -m prefect.engine`). What the
job runs comes from the deployment (`flow_run_spec`): the stored job (`prefect_launch.deploy`),
else its `image` job variable (the image holds Prefect and the flow's code), else nothing: on a
local-process queue the engine runs the deployment's own pull steps in the run's empty code
folder; a queue whose target runs images refuses it. The engineer's flow run shows the flow's
own tasks and result; the launch run beside it shows the stages, the timeline and the target's
handle.

Example (runnable against a queue created with `prefect-launch queue create gpu ...`)::

    from prefect import flow
    import prefect_launch

    @flow
    def train(lr: float = 0.01, epochs: int = 3) -> float:
        ...

    prefect_launch.deploy(train, queue="gpu", parameters={"epochs": 5}, job_variables={"gpus": 1})
    # or, on a local-container queue: train.deploy("train", work_pool_name="gpu", image="registry/train:1", build=False)
    # then: prefect deployment run train/train -p lr=0.1
"""

from __future__ import annotations

import inspect
from pathlib import Path
from typing import Any
from uuid import UUID

from prefect import Flow, get_client
from prefect.client.orchestration import PrefectClient
from prefect.client.schemas.objects import FlowRun
from prefect.client.schemas.responses import DeploymentResponse
from prefect.exceptions import PrefectHTTPStatusError
from prefect.utilities.asyncutils import run_coro_as_sync
from prefect.utilities.callables import parameter_schema
from pydantic import ValidationError

from prefect_launch.deployments.queues import PRIORITIES, enqueue, queue_priorities, read_queue
from prefect_launch.errors import LaunchError, invalid_config
from prefect_launch.sources import deployment_needs_image
from prefect_launch.spec import ImageSource, LaunchSpec, run_id_for
from prefect_launch.templates import IMAGE_VARIABLE

JOB_TAG = "prefect-launch.job:"
# The job's working directory holds the flow's code (the agent fetched it or built it into the image).
PULL_STEPS = [{"prefect.deployments.steps.set_working_directory": {"directory": "."}}]
ENTRY_POINT = ["python", "-m", "prefect.engine"]
HANDED_OVER = "Handed to launch run"


def deploy(
    flow: Flow[..., Any],
    queue: str,
    *,
    name: str | None = None,
    project: str | None = None,
    parameters: dict[str, Any] | None = None,
    job_variables: dict[str, Any] | None = None,
    priority: str | None = None,
    folder: str | Path | None = None,
    code_storage: str | None = None,
    description: str | None = None,
) -> UUID:
    """Send `flow` to launch queue `queue`; returns the deployment id.

    `folder` (default: the folder of the flow's file) is what the job gets as
    its code; its `requirements.txt` is installed in built images. `project`
    is the W&B project (default: the flow's name). `job_variables` are the
    queue's template values for every run, checked against the queue's
    bounds now; `priority` picks a prioritized queue's work queue.
    """
    from prefect.settings import PREFECT_API_URL

    from prefect_launch.blocks.job import LaunchJob
    from prefect_launch.home import launch_home
    from prefect_launch.sources import code

    if not PREFECT_API_URL.value():
        # Prefect would deploy to a throwaway server of this process, which no agent polls.
        raise LaunchError("no Prefect API configured: export PREFECT_API_URL=$(prefect-launch server start) first")
    source_file = Path(inspect.getsourcefile(flow.fn) or "").resolve()
    root = Path(folder).resolve() if folder else source_file.parent
    if not root.is_dir():
        raise LaunchError(f"deploy {flow.name!r}: code folder {str(root)!r} does not exist")
    if not source_file.is_relative_to(root):
        raise LaunchError(f"deploy {flow.name!r}: its file {source_file} is not inside the code folder {root}")
    if priority is not None and priority not in PRIORITIES:
        raise LaunchError(f"deploy {flow.name!r}: priority {priority!r}: expected one of {', '.join(PRIORITIES)}")
    if (job_variables or {}).get(IMAGE_VARIABLE) is not None:
        raise LaunchError(f"deploy {flow.name!r}: prefect_launch.deploy builds the flow's image from its folder; to run "
                          "an image of your own, deploy with Prefect's flow.deploy(..., image=...)")
    name = name or flow.name
    job = LaunchJob.from_code_folder(
        root,
        code.upload(root, code.code_storage(code_storage, launch_home())),
        project=project or flow.name,
        name=name,
        entry_point=ENTRY_POINT,
    )
    job_reference = job.save_as_definition()

    async def create() -> UUID:
        async with get_client() as client:
            await read_queue(client, queue)
            if priority is not None and priority not in await queue_priorities(client, queue):
                raise LaunchError(f"queue {queue!r} was created without --prioritization; priority needs it")
            try:
                return await client.create_deployment(
                    flow_id=await client.create_flow(flow),
                    name=name,
                    work_pool_name=queue,
                    work_queue_name=priority,
                    entrypoint=f"{source_file.relative_to(root).as_posix()}:{flow.fn.__name__}",
                    pull_steps=PULL_STEPS,
                    parameters=parameters or {},
                    parameter_openapi_schema=parameter_schema(flow).model_dump_for_openapi(),
                    enforce_parameter_schema=True,
                    job_variables=job_variables or {},
                    tags=[JOB_TAG + job_reference],
                    description=description or flow.description,
                )
            except PrefectHTTPStatusError as exc:
                if exc.response.status_code in (409, 422):
                    detail = exc.response.json().get("detail", exc.response.text)
                    raise LaunchError(f"queue {queue!r} refused deployment {flow.name}/{name}: {detail}") from None
                raise

    return run_coro_as_sync(create())


def job_of(tags: list[str]) -> str | None:
    """The launch job a deployment's runs execute, for a flow sent with `deploy`.

    >>> job_of(["nightly", "prefect-launch.job:mnist/train"])
    'mnist/train'
    """
    return next((tag.removeprefix(JOB_TAG) for tag in tags if tag.startswith(JOB_TAG)), None)


def flow_run_spec(flow_run: FlowRun, deployment: DeploymentResponse, flow_name: str, image: str | None,
                  runs_images: bool) -> LaunchSpec:
    """The launch job that runs `flow_run` of `deployment` on a queue (whose target `runs_images` or not).

    Its W&B run id derives from the flow run, so handing the same run over twice names the same
    W&B run (and the same Kubernetes Job); its W&B project is the stored job's, else the flow's name.
    """
    common: dict[str, Any] = {"run_id": run_id_for(flow_run.id), "run_name": flow_run.name, "flow_run": flow_run.id}
    job = job_of(deployment.tags)
    if job is not None:  # prefect_launch.deploy: the stored code job, built like any launch job
        return LaunchSpec(job=job, project=job.split("/", 1)[0], **common)
    if image is None and runs_images:
        raise deployment_needs_image(deployment.work_pool_name)
    if image is None and not (deployment.pull_steps or deployment.storage_document_id or deployment.path):
        raise LaunchError(f"deployment {flow_name}/{deployment.name} names no image and no pull steps, so nothing "
                          "fetches its code: deploy it with flow.from_source(...).deploy(...), prefect deploy with pull "
                          "steps, flow.deploy(..., image=...) on a queue that runs images, or prefect_launch.deploy(flow, queue=...)")
    try:
        # An image holds the flow's code; without one its deployment's pull steps fetch it (`sources.resolve`).
        source = None if image is None else ImageSource(image=image)
        return LaunchSpec(source=source, entry_point=ENTRY_POINT, project=flow_name, **common)
    except ValidationError as exc:
        raise invalid_config(exc, f"deployment {flow_name}/{deployment.name}'s job variables") from None


async def hand_over(client: PrefectClient, queue: str, flow_run: FlowRun, spec: LaunchSpec, values: dict[str, Any]) -> FlowRun:
    """Put `spec`, the job that runs `flow_run`, on `queue` as one launch run with the flow run's template values and
    priority (the `image` variable is the spec's source by now)."""
    priority = flow_run.work_queue_name if flow_run.work_queue_name in PRIORITIES else None
    values = {name: value for name, value in values.items() if name != IMAGE_VARIABLE}
    return await enqueue(client, queue, spec, priority=priority, values=values)


def handed_over(message: str | None) -> bool:
    """Whether a Pending flow run waits for the launch run it was handed to (not for an agent)."""
    return bool(message and message.startswith(HANDED_OVER))
