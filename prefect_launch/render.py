"""Rendering: `render(job, queue, overrides) -> submission`, a pure function.

No network and no file access happen here, so `--dry-run` shows exactly what a
target will receive and tests can check every target's payload without it.

Example:
    >>> from prefect_launch.spec import QueueConfig, ResolvedJob
    >>> job = ResolvedJob(run_id="r1", run_name="r1", project="p", argv=["python", "t.py"], workdir="/code")
    >>> render(job, QueueConfig(resource="local-process"))["submission"]["argv"]
    ['python', 't.py']
"""

from __future__ import annotations

from typing import Any

from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment
from prefect_launch.macros import resolve_macros
from prefect_launch.spec import LAUNCH_KEYS, QueueConfig, ResolvedJob, merged_resource_args, unwrap_resource_key
from prefect_launch.targets import get_target


def macro_values(job: ResolvedJob) -> dict[str, str | None]:
    return {
        "project_name": job.project,
        "entity_name": job.entity,
        "run_id": job.run_id,
        "run_name": job.run_name,
        "image_uri": job.image,
    }


def render(
    job: ResolvedJob,
    queue: QueueConfig,
    overrides: dict[str, Any] | None = None,
    environment: Environment | None = None,
) -> dict[str, Any]:
    """The dry-run object: `{"resource", "image", "submission"}`.

    `queue.resource_args` must already have its template fields filled;
    `overrides` (the job's own `resource_args`) are merged over them, then
    macros are resolved, then the target renders its payload. A cloud target
    reads only what `environment.verify()` has already looked up (the AWS
    account for a bare SageMaker role name).
    """
    target = get_target(queue.resource, environment)
    target.check_overrides(unwrap_resource_key(overrides or {}, queue.resource))
    resource_args = resolve_macros(merged_resource_args(queue, overrides), macro_values(job))
    # The launch keys W&B lets any queue config carry (`builder`, `scheduler`) configure the build and
    # sweeps, not the target: every target renders the rest.
    payload = {key: value for key, value in resource_args.items() if key not in LAUNCH_KEYS}
    try:
        submission = target.render(job, payload)
    except (TypeError, AttributeError, KeyError, ValueError) as exc:
        # A value of the wrong shape the target did not check by name (a list where a mapping goes, ...).
        raise LaunchError(
            f"{queue.resource.value} queue config (with the job's resource args): a value has the wrong shape "
            f"({exc.__class__.__name__}: {exc})"
        ) from None
    return {"resource": queue.resource.value, "image": job.image, "submission": submission}
