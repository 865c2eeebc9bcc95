"""Preparing a job, one path: fill the queue config -> resolve the source -> plan the image -> render.

The launch flow's tasks (inside an agent) and `launch --dry-run` (with this
machine's agent config) call the same functions in the same order, so the dry
run shows exactly what the agent sends its target:

- `job_configuration`: the queue config of a run, filled by Prefect's own
  template machinery (`BaseJobConfiguration.from_template_and_values`, the
  worker's call), so block references and Prefect variables resolve the same way;
- `Preparation.resolve`: the job's source fetched (or, in a dry run, named);
- `Preparation.plan_image`: the image it runs, and the build that makes it;
- `Preparation.with_image`: the job with that image, and whether its target
  pulls it with the registry's login;
- `Preparation.render`: the submission (`render.render`, pure).

Example, an image job on a local-container queue::

    >>> from pathlib import Path
    >>> from prefect_launch.spec import ImageSource, LaunchSpec
    >>> preparation = Preparation("q", QueueConfig(resource="local-container"), Path("/tmp/home"))
    >>> spec = LaunchSpec(source=ImageSource(image="img:1"), entry_point=["python", "t.py"], run_id="r1")
    >>> job = preparation.resolve(spec, fetch=False)
    >>> image = preparation.plan_image(job, spec.resource_args)
    >>> image.ref, image.build is None
    ('img:1', True)
    >>> preparation.render(preparation.with_image(job, image.ref), spec.resource_args)["image"]
    'img:1'
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prefect.workers.base import BaseJobConfiguration, BaseVariables
from pydantic import Field

from prefect_launch import sources
from prefect_launch.builders import Builder, BuildPlan, BuildSettings, builder_for, plan_for
from prefect_launch.errors import LaunchError
from prefect_launch.interfaces import Environment, Registry
from prefect_launch.registries.local import LocalImages
from prefect_launch.render import check_job_args, launch_keys, render
from prefect_launch.spec import LaunchSpec, QueueConfig, Resource, ResolvedJob
from prefect_launch.targets import Target, get_target
from prefect_launch.templates import check_no_image, check_no_templates, defaulted_nulls, placeholders

if TYPE_CHECKING:
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.objects import FlowRun
    from prefect.client.schemas.responses import DeploymentResponse


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


async def job_configuration(
    base_job_template: dict[str, Any], values: dict[str, Any], client: PrefectClient
) -> LaunchJobConfiguration:
    """A run's queue config: the pool's job template filled with the run's template values.

    A null value of a field with a default takes the default, as the server
    does (a field cleared in the Prefect UI sends one). `client` resolves
    `{{ prefect.blocks.* }}` and `{{ prefect.variables.* }}` references of the
    queue config; a value a job sends is data, never a template: one holding a
    `{{ ... }}` reference is refused, or Prefect would resolve it too and hand
    the job the admin's Secret blocks; nor may it set a deployed flow's `image`.
    """
    check_no_templates(values)
    check_no_image(values)
    check_not_the_queue_config(base_job_template, values)
    values = defaulted_nulls(base_job_template.get("variables", {}), values)
    return await LaunchJobConfiguration.from_template_and_values(
        base_job_template=base_job_template, values=values, client=client
    )


def check_not_the_queue_config(base_job_template: dict[str, Any], values: dict[str, Any]) -> None:
    """Refuse a value (a job's) that would fill the queue config itself: a pool whose job template reads its
    `resource_args` (or resource) from a variable, as Prefect's default template did, would let a job choose
    its own queue config, policy and all.

    >>> check_not_the_queue_config({"job_configuration": {"resource_args": "{{ resource_args }}"}},
    ...                            {"resource_args": {"privileged": True}})
    Traceback (most recent call last):
    ...
    prefect_launch.errors.LaunchError: template value resource_args fills the queue config's resource_args: only the queue's config (its admin) may set it; a job's own resource args go in its spec
    """
    job_configuration = base_job_template.get("job_configuration") or {}
    for key in QueueConfig.model_fields:
        template = job_configuration.get(key)
        whole = placeholders(template) if isinstance(template, str) and template.strip().startswith("{{") else set()
        for name in whole & set(values):
            raise LaunchError(f"template value {name} fills the queue config's {key}: only the queue's config (its "
                              "admin) may set it; a job's own resource args go in its spec")


def job_variables(flow_run: FlowRun, deployment: DeploymentResponse | None) -> dict[str, Any]:
    """The run's template values: its deployment's, then its own."""
    return {**((deployment.job_variables or {}) if deployment is not None else {}), **(flow_run.job_variables or {})}


# What W&B's agent locks in secure mode, wherever a job's own Kubernetes resource args set it.
_SECURE_MODE_LOCKED = ("command", "args", "initContainers", "hostPID", "hostIPC", "hostNetwork")


def check_secure_mode(spec: LaunchSpec) -> None:
    """An agent in `secure_mode` (W&B's agent config key) refuses a job that overrides its entry point, or
    whose own resource args set a container's command or args, init containers or host namespaces.

    >>> check_secure_mode(LaunchSpec(overrides={"entrypoint": ["sh", "-c", "id"]}))
    Traceback (most recent call last):
    ...
    prefect_launch.errors.LaunchError: this agent runs in secure_mode: a job may not set overrides.entrypoint (only its job definition says what runs)
    """
    locked = ["overrides.entrypoint"] if spec.overrides.entry_point else []
    locked += _locked_paths(spec.resource_args, "resource_args")
    if locked:
        raise LaunchError(f"this agent runs in secure_mode: a job may not set {', '.join(locked)} "
                          "(only its job definition says what runs)")


def _locked_paths(value: Any, path: str) -> list[str]:
    if isinstance(value, list):
        return [found for index, item in enumerate(value) for found in _locked_paths(item, f"{path}[{index}]")]
    if not isinstance(value, dict):
        return []
    return [found for key, item in value.items()
            for found in ([f"{path}.{key}"] if key in _SECURE_MODE_LOCKED else _locked_paths(item, f"{path}.{key}"))]


@dataclass
class ImagePlan:
    """The image a job runs; `build` when it must be built first (`builder` makes it), else `reason` says why not."""

    ref: str | None
    reason: str = ""
    builder: Builder | None = None
    build: BuildPlan | None = None


@dataclass
class Preparation:
    """How one queue's jobs are prepared with one agent config: its builder, registry and cloud environment."""

    queue_name: str
    queue: QueueConfig
    home: Path
    build_settings: BuildSettings = field(default_factory=BuildSettings)
    environment: Environment | None = None
    # The agent's one registry object, so its login is reused across runs.
    registry: Registry = field(default_factory=LocalImages)
    # The agent config's `secure_mode`: jobs may not change what runs (`check_secure_mode`).
    secure_mode: bool = False

    @functools.cached_property
    def target(self) -> Target:
        """One target object per run: its cloud client serves both submit and monitor."""
        return get_target(self.queue.resource, self.environment, self.registry, self.build_settings.cluster)

    def resolve(self, spec: LaunchSpec, fetch: bool = True) -> ResolvedJob:
        """The job with its source fetched; with `fetch=False` (a dry run) its run's code folder is named, not made.

        First of all, before anything is fetched, built or started: the job's own resource args pass its
        target's policy (`render.check_job_args`).
        """
        check_job_args(self.queue, spec.resource_args, self.target)
        if self.secure_mode:
            check_secure_mode(spec)
        return sources.resolve(spec, self.queue_name, self.home, fetch=fetch, runs_remotely=self.target.runs_remotely,
                               builds_image=self.target.builds_image)

    def plan_image(self, job: ResolvedJob, overrides: dict[str, Any]) -> ImagePlan:
        """The image `job` runs: its own, or the content-hash tag of the image built from its code."""
        if not self.target.builds_image:
            return ImagePlan(None, f"{self.queue.resource.value} runs the code folder in the agent's environment: nothing to build")
        if job.image:
            return ImagePlan(job.image, f"The job names its image {job.image}: nothing to build")
        builder = builder_for(self.build_settings, self.queue_name, job.source_kind, self.registry, self.environment)
        accelerator = launch_keys(job, self.queue, overrides).builder.accelerator_base_image
        plan = plan_for(job, accelerator, self.build_settings, builder, self.registry, self.queue_name)
        return ImagePlan(plan.image, builder=builder, build=plan)

    def with_image(self, job: ResolvedJob, image: str | None) -> ResolvedJob:
        """The job running `image`, with a pull secret where its target pulls with the registry's login."""
        pull_secret = bool(image and self.target.pulls_with_login and self.registry.pull_credentials(image))
        return job.model_copy(update={"image": image, "pull_secret": pull_secret})

    def render(self, job: ResolvedJob, overrides: dict[str, Any]) -> dict[str, Any]:
        """`{"resource", "image", "submission"}`: exactly what the target receives (pure)."""
        return render(job, self.queue, overrides, self.environment)
