"""vertex: a Vertex AI CustomJob per launch run.

The queue config (`VertexConfig`) has `spec`, the keyword arguments of
`aiplatform.CustomJob`, and `run`, those of `CustomJob.run`, in snake_case as
W&B writes them (`workerPoolSpecs` is refused, naming `worker_pool_specs`).
`spec.worker_pool_specs` (non-empty) and `spec.staging_bucket` are required;
each worker pool is checked as Vertex AI's own `WorkerPoolSpec` message.
The launch fills in, for every worker pool, the image (`${image_uri}` or an
unset `container_spec.image_uri`), the command (entry point and args) and the
W&B variables; `display_name` defaults to the run name; the run id becomes a
label. `spec.service_account`, which the seeds document, moves to
`run.service_account`, where the SDK takes it.

Its progress: `JOB_STATE_QUEUED` or `PENDING` is why the run waits,
`RUNNING` (or `SUCCEEDED`, seen first) starts it. A job on Spot VMs
(`run.scheduling_strategy: SPOT`) that fails because its VMs were taken back
(a preemption or stockout error) is preempted: the run goes back to its queue
as the same W&B run.

The client is `google-cloud-aiplatform` over REST, with the gcp
environment's project, region and credentials;
`PREFECT_LAUNCH_VERTEX_API_ENDPOINT` points it elsewhere (a stand-in). The
monitor maps every `JobState`; cancelling the run cancels the CustomJob.

A CustomJob's name is a number Vertex AI gives it, so an agent adopting the run
of a dead one finds its job by its labels instead: the run id and the attempt
(a run requeued after a preemption keeps its run id; each attempt has a
CustomJob of its own), the newest listed with both and created after the run
started (less `CLOCK_SKEW_SECONDS`: Vertex AI's clock is not the Prefect
server's). CustomJobs stay listed until someone deletes them, so one not found
was never created.

Example:
    >>> from prefect_launch.spec import ResolvedJob
    >>> job = ResolvedJob(run_id="r1", run_name="r1", project="p", argv=["python", "t.py"], image="img:1")
    >>> config = VertexTarget.parse_config({"spec": {"staging_bucket": "gs://b", "service_account": "sa@p",
    ...     "worker_pool_specs": [{"machine_spec": {"machine_type": "n1-standard-4"}, "replica_count": 1,
    ...                            "container_spec": {"image_uri": "img:1"}}]}}, "queue config")
    >>> payload = VertexTarget().render(job, config)
    >>> payload["spec"]["worker_pool_specs"][0]["container_spec"]["command"], payload["run"]
    (['python', 't.py'], {'service_account': 'sa@p'})
"""

from __future__ import annotations

import copy
import functools
import re
import threading
from datetime import datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from prefect_launch.errors import LaunchError
from prefect_launch.jobenv import wandb_env
from prefect_launch.settings import settings
from prefect_launch.spec import Resource, ResolvedJob
from prefect_launch.targets.base import Handle, Outcome, Progress, Target, TargetConfig
from prefect_launch.targets.policy import AllowedFields
from prefect_launch.targets.process import Log
from prefect_launch.targets.remote import follow_remote, unfilled

RUN_ID_LABEL = "prefect-launch-run-id"
ATTEMPT_LABEL = "prefect-launch-attempt"  # 0, then N after the Nth preemption
# How far Vertex AI's clock may be behind the Prefect server's, when a job's creation is compared with its run's start.
CLOCK_SKEW_SECONDS = 60
# Keys whose own keys are the user's names, not the SDK's.
_FREE_FORM = {"labels", "env"}
_CAMEL = re.compile(r"[a-z0-9][A-Z]")
# How Vertex AI says a Spot VM was taken back (STOCKOUT, "preempted").
_RECLAIMED = re.compile(r"preempt|stockout|reclaim", re.I)
_WAITING = {"JOB_STATE_QUEUED", "JOB_STATE_PENDING"}
_RAN = {"JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"}
_OUTCOMES = {
    "JOB_STATE_SUCCEEDED": ("completed", ""),
    "JOB_STATE_FAILED": ("failed", "Vertex AI CustomJob failed"),
    "JOB_STATE_CANCELLED": ("cancelled", "Vertex AI CustomJob cancelled"),
    "JOB_STATE_EXPIRED": ("failed", "Vertex AI CustomJob expired before it could run"),
    "JOB_STATE_PARTIALLY_SUCCEEDED": ("failed", "Vertex AI CustomJob only partially succeeded"),
}


def spot_capacity_reclaimed(job: Any) -> bool:
    """Whether a CustomJob on Spot VMs (`run.scheduling_strategy: SPOT`) failed because Compute Engine took its
    VMs back: its error names a preemption or a stockout, as Vertex AI reports one. An ordinary failure never is."""
    scheduling = job.gca_resource.job_spec.scheduling
    strategy = getattr(scheduling.strategy, "name", str(scheduling.strategy))
    return strategy == "SPOT" and bool(job.error) and bool(_RECLAIMED.search(job.error.message or ""))


def _snake(name: str) -> str:
    return re.sub(r"(?<=[a-z0-9])([A-Z])", lambda m: "_" + m.group(1).lower(), name)


def _camel_keys(value: Any, where: str) -> list[str]:
    """Every camelCase key under `value`, as `path.key -> path.snake_key`."""
    if isinstance(value, list):
        return [found for i, item in enumerate(value) for found in _camel_keys(item, f"{where}[{i}]")]
    if not isinstance(value, dict):
        return []
    found = []
    for key, item in value.items():
        if _CAMEL.search(str(key)):
            found.append(f"{where}.{key} (write {_snake(key)})" if where else f"{key} (write {_snake(key)})")
        if key not in _FREE_FORM:
            found += _camel_keys(item, f"{where}.{key}" if where else str(key))
    return found


def _label(value: str) -> str:
    """A GCP label value: lowercase letters, digits, `-` and `_`, at most 63."""
    return re.sub(r"[^a-z0-9_-]", "-", value.lower())[:63]


class VertexSpec(BaseModel):
    """`spec`: the keyword arguments of `aiplatform.CustomJob` (tests compare them with the installed SDK)."""

    model_config = ConfigDict(extra="forbid")
    display_name: str | None = None
    worker_pool_specs: list[dict[str, Any]] = Field(default=None, validate_default=True)
    base_output_dir: str | None = None
    project: str | None = None
    location: str | None = None
    labels: dict[str, str] | None = None
    encryption_spec_key_name: str | None = None
    staging_bucket: str = Field(default=None, validate_default=True)
    persistent_resource_id: str | None = None

    @field_validator("worker_pool_specs", mode="before")
    @classmethod
    def _some_pools(cls, pools: Any) -> Any:
        if not isinstance(pools, list) or not pools:
            raise ValueError("must be a non-empty list of worker pool specs")
        return pools

    @field_validator("worker_pool_specs")
    @classmethod
    def _worker_pools(cls, pools: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each pool as Vertex AI's own `WorkerPoolSpec` message reads it (unknown fields, wrong types, enum names)."""
        from google.cloud.aiplatform_v1.types import custom_job

        problems = []
        for index, pool in enumerate(pools):
            try:
                custom_job.WorkerPoolSpec(pool)
            except (ValueError, TypeError, KeyError) as exc:
                problems.append(f"[{index}]: {exc}" if not isinstance(exc, KeyError) else f"[{index}]: unknown value {exc}")
        if problems:
            raise ValueError("; ".join(problems))
        return pools

    @field_validator("staging_bucket", mode="before")
    @classmethod
    def _filled(cls, bucket: Any) -> Any:
        if unfilled(bucket):
            raise ValueError("must be set (a gs:// bucket for Vertex AI's staging)")
        return bucket


class VertexRun(BaseModel):
    """`run`: the keyword arguments of `CustomJob.run` (`sync` is the agent's: it follows the job itself)."""

    model_config = ConfigDict(extra="forbid")
    service_account: str | None = None
    network: str | None = None
    timeout: int | None = None
    restart_job_on_worker_restart: bool | None = None
    enable_web_access: bool | None = None
    experiment: str | None = None
    experiment_run: str | None = None
    tensorboard: str | None = None
    create_request_timeout: float | None = None
    disable_retries: bool | None = None
    persistent_resource_id: str | None = None
    scheduling_strategy: str | None = None
    max_wait_duration: int | None = None
    psc_interface_config: dict[str, Any] | None = None


SPEC_KEYS = frozenset(VertexSpec.model_fields)
RUN_KEYS = frozenset(VertexRun.model_fields)


class VertexConfig(TargetConfig):
    """A vertex queue config: `spec` and `run`, snake_case as the SDK names them."""

    spec: VertexSpec
    run: VertexRun = Field(default_factory=VertexRun)

    @model_validator(mode="before")
    @classmethod
    def _as_the_sdk_takes_it(cls, args: dict[str, Any]) -> dict[str, Any]:
        camel = _camel_keys(args, "")
        if camel:
            raise ValueError("keys must be snake_case, as the Vertex AI SDK names them: " + "; ".join(camel))
        spec, run = dict(args.get("spec") or {}), dict(args.get("run") or {})
        # The seeds document `spec.service_account`; the SDK takes it in `run`.
        if "service_account" in spec:
            run.setdefault("service_account", spec.pop("service_account"))
        return {**args, "spec": spec, "run": run}


class VertexTarget(Target):
    resource = Resource.vertex
    config_model = VertexConfig
    runs_remotely = True
    adoptable = True
    # A job may size its worker pools, name and label itself and bound its time (and name its image, as `-d`
    # does; the launch sets every pool's command); the service account,
    # network, project, buckets and encryption, which decide what it reaches, are the queue config's.
    job_policy = AllowedFields({
        "spec.display_name", "spec.labels", "spec.worker_pool_specs[].machine_spec",
        "spec.worker_pool_specs[].replica_count", "spec.worker_pool_specs[].disk_spec",
        "spec.worker_pool_specs[].container_spec.env", "spec.worker_pool_specs[].container_spec.image_uri",
        "run.timeout", "run.restart_job_on_worker_restart",
        "run.scheduling_strategy", "run.max_wait_duration",
    })

    def render(self, job: ResolvedJob, config: VertexConfig) -> dict[str, Any]:
        spec = copy.deepcopy(config.spec.model_dump(exclude_unset=True))
        run = copy.deepcopy(config.run.model_dump(exclude_unset=True))
        pools = spec["worker_pool_specs"]
        if not job.image:
            raise LaunchError("vertex runs an image: this job has none (a code job needs a builder and a registry destination)")
        env = [{"name": name, "value": value} for name, value in wandb_env(job).items()]
        for i, pool in enumerate(pools):
            container = pool.setdefault("container_spec", {})
            if unfilled(container.get("image_uri")):
                container["image_uri"] = job.image
            container["command"] = list(job.argv)
            container.pop("args", None)
            own = {item["name"] for item in env}
            container["env"] = [item for item in container.get("env", []) if item.get("name") not in own] + env
        spec.setdefault("display_name", job.run_name)
        spec["labels"] = {**(spec.get("labels") or {}), RUN_ID_LABEL: _label(job.run_id), ATTEMPT_LABEL: str(job.attempt)}
        return {"spec": spec, "run": run}

    @property
    def _gcp(self):
        if self.environment is None or self.environment.type != "gcp":
            raise LaunchError("vertex needs `environment: type: gcp` with region and project in the agent config")
        return self.environment

    @functools.cached_property
    def _aiplatform(self):
        from google.cloud import aiplatform

        gcp = self._gcp
        aiplatform.init(
            project=gcp.project,
            location=gcp.region,
            credentials=gcp.credentials,
            api_transport="rest",
            api_endpoint=settings().vertex_api_endpoint,
        )
        return aiplatform

    def submit(self, submission: dict[str, Any], log: Log) -> Handle:
        aiplatform = self._aiplatform
        try:
            job = aiplatform.CustomJob(**submission["spec"])
            job.submit(**submission["run"])
        except Exception as exc:  # the SDK raises google.api_core errors and ValueError alike
            raise LaunchError(f"Vertex AI refused the CustomJob: {exc}") from None
        log.info("Created Vertex AI CustomJob %s", job.resource_name)
        return Handle(id=job.resource_name, detail=job)

    def attach(self, submission: dict[str, Any], log: Log, since: datetime | None) -> Handle | None:
        labels = submission["spec"]["labels"]
        wanted = " AND ".join(f'labels.{key}="{labels[key]}"' for key in (RUN_ID_LABEL, ATTEMPT_LABEL))
        try:
            listed = self._aiplatform.CustomJob.list(filter=wanted)
        except Exception as exc:  # the SDK raises google.api_core errors and ValueError alike
            raise LaunchError(f"Vertex AI could not list the CustomJobs with {wanted}: {exc}") from None
        earliest = since - timedelta(seconds=CLOCK_SKEW_SECONDS) if since else None
        jobs = [job for job in listed if earliest is None or job.create_time >= earliest]
        if not jobs:
            return None
        job = max(jobs, key=lambda found: found.create_time)
        log.info("Following Vertex AI CustomJob %s (%s)", job.resource_name, job.state.name)
        return Handle(id=job.resource_name, detail=job, attached=True)

    def may_vanish(self, submission: dict[str, Any]) -> bool:
        return False  # a CustomJob stays listed until someone deletes it

    def wait(self, handle: Handle, cancel: threading.Event, log: Log, progress: Progress) -> Outcome:
        job = handle.detail
        seen = None

        def poll(cancel_requested: bool) -> Outcome | None:
            nonlocal seen
            state = job.state.name  # one GET of the CustomJob
            if state != seen:
                seen = state
                log.info("Vertex AI %s: %s", handle.id, state)
                if state in _WAITING:
                    progress.waiting(f"Vertex AI {state}")
                elif state in _RAN:
                    progress.started()
            if state not in _OUTCOMES:
                return None
            if state == "JOB_STATE_FAILED" and spot_capacity_reclaimed(job):
                return Outcome(state="preempted", message=f"Vertex AI reclaimed the spot capacity of {handle.id}: "
                                                          f"{job.error.message}")
            kind, message = _OUTCOMES[state]
            if kind == "cancelled" and not cancel_requested:
                message += " outside prefect-launch"
            error = job.error.message if kind == "failed" and job.error else ""
            return Outcome(state=kind, message=": ".join(m for m in (message, error) if m))

        def cancel_job() -> None:
            log.info("Cancelling Vertex AI CustomJob %s", handle.id)
            job.cancel()

        return follow_remote(poll, cancel_job, cancel)
