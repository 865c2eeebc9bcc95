"""Rendering: `render(job, queue, overrides) -> submission`, a pure function.

No network and no file access happen here, so `--dry-run` shows exactly what a
target will receive and tests can check every target's payload without it.
The agent's environment, which a queue config's `${NAME}` macros read, is an
argument too.

A job's resource args on a queue, in order: the queue's config (its admin's),
its `${NAME}` macros read from the agent's environment; the job's own resource
args (its submitter's), checked against the target's job policy
(`check_job_args`), merged over it; the launch
macros (`${run_id}`, ...) resolved; the launch keys (`builder`, `scheduler`)
parsed apart; the rest parsed as the target's config model and rendered.
`check_queue_config` runs the same parsing when a queue is created, with
stand-ins for its template fields and macros.

Example:
    >>> from prefect_launch.spec import QueueConfig, ResolvedJob
    >>> job = ResolvedJob(run_id="r1", run_name="r1", project="p", argv=["python", "t.py"], workdir="/code")
    >>> render(job, QueueConfig(resource="local-process"))["submission"]["argv"]
    ['python', 't.py']
    >>> check_queue_config(Resource.local_process, {"envv": {}}, {}, "queue.yaml")
    Traceback (most recent call last):
    ...
    prefect_launch.errors.LaunchError: local-process queue config (queue.yaml): envv: unknown key
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from prefect_launch.interfaces import Environment
from prefect_launch.macros import KNOWN_MACROS, resolve_environment_macros, resolve_macros
from prefect_launch.spec import LaunchKeys, QueueConfig, Resource, ResolvedJob, deep_merge, unwrap_resource_key
from prefect_launch.targets import Target, get_target
from prefect_launch.targets.policy import refuse_unpermitted
from prefect_launch.templates import TemplateField, apply_template, stand_in_values

# What `check_queue_config` puts where a job's own macro values go: any value of the right kind will do.
_STAND_IN_MACROS = {name: f"stand-in-{name.replace('_', '-')}" for name in KNOWN_MACROS}


def macro_values(job: ResolvedJob) -> dict[str, str | None]:
    return {
        "project_name": job.project,
        "entity_name": job.entity,
        "run_id": job.run_id,
        "run_name": job.run_name,
        "image_uri": job.image,
    }


def _where(resource: Resource) -> str:
    return f"{resource.value} queue config (with the job's resource args)"


def check_job_args(queue: QueueConfig, overrides: dict[str, Any] | None, target: Target | None = None) -> dict[str, Any]:
    """A job's own resource args, unwrapped, once its target's policy (with the fields the queue config opts in
    through `job_may_set`) permits every field they set; refused in one line naming each that it does not."""
    target = target or get_target(queue.resource)
    own = unwrap_resource_key(overrides or {}, queue.resource)
    if own:
        admin_keys, _ = LaunchKeys.split(unwrap_resource_key(queue.resource_args, queue.resource))
        opted_in = admin_keys.get("job_may_set") or []
        refuse_unpermitted(target.job_policy, own, opted_in if isinstance(opted_in, list) else [], queue.resource.value)
    return own


def _job_args(target: Target, queue: QueueConfig, overrides: dict[str, Any] | None,
              agent_environment: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(launch keys, target payload) of a job on a queue, the launch macros not yet resolved."""
    own = check_job_args(queue, overrides, target)
    admin = resolve_environment_macros(unwrap_resource_key(queue.resource_args, queue.resource), agent_environment)
    return LaunchKeys.split(deep_merge(admin, own))


def launch_keys(job: ResolvedJob, queue: QueueConfig, overrides: dict[str, Any] | None = None,
                agent_environment: Mapping[str, str] | None = None) -> LaunchKeys:
    """The launch keys of a job on a queue (the accelerator base image of its build, ...)."""
    target = get_target(queue.resource)
    own, _ = _job_args(target, queue, overrides, os.environ if agent_environment is None else agent_environment)
    return LaunchKeys.parse(resolve_macros(own, macro_values(job)), _where(queue.resource))


def render(
    job: ResolvedJob,
    queue: QueueConfig,
    overrides: dict[str, Any] | None = None,
    environment: Environment | None = None,
    agent_environment: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """The dry-run object: `{"resource", "image", "submission"}`.

    `queue.resource_args` must already have its template fields filled;
    `overrides` are the job's own `resource_args`. A cloud target reads only
    what `environment.verify()` has already looked up (the AWS account for a
    bare SageMaker role name). `agent_environment` is what `${NAME}` macros of
    the queue config read (the agent's own environment by default).
    """
    target = get_target(queue.resource, environment)
    own, payload = _job_args(target, queue, overrides, os.environ if agent_environment is None else agent_environment)
    values = macro_values(job)
    keys = LaunchKeys.parse(resolve_macros(own, values), _where(queue.resource))
    config = target.parse_config(resolve_macros(payload, values), _where(queue.resource))
    job = target.with_checkpoints(job, keys.checkpoints)
    return {"resource": queue.resource.value, "image": job.image, "submission": target.render(job, config)}


def check_queue_config(resource: Resource, resource_args: dict[str, Any], fields: dict[str, TemplateField],
                       source: str) -> None:
    """Refuse a queue config its target could not run, naming `source` and the field's path (no I/O).

    Each template field stands in as a value of its declared type, each macro (and each `${NAME}` of the
    agent's environment, which only the agent knows) as a string.
    """
    where = f"{resource.value} queue config ({source})"
    args = unwrap_resource_key(apply_template(resource_args, stand_in_values(fields)), resource)
    args = resolve_environment_macros(args, _AnyVariable())
    own, payload = LaunchKeys.split(resolve_macros(args, _STAND_IN_MACROS))
    LaunchKeys.parse(own, where)
    get_target(resource).parse_config(payload, where)


class _AnyVariable(dict):
    """An environment that has every variable: the agent's own is not known when a queue is created."""

    def __contains__(self, name: object) -> bool:
        return True

    def __missing__(self, name: str) -> str:
        return f"stand-in-{name}"
