"""sagemaker: an Amazon SageMaker training job per launch run.

The queue config is the `CreateTrainingJob` request body, as W&B writes it
(`SageMakerConfig`: top-level snake_case keys such as `role_arn` are
camel-cased and W&B's own `EcrRepoName`, `region` and `profile` are dropped, as
W&B's runner does), checked against botocore's model of the request.
`RoleArn`, `OutputDataConfig.S3OutputPath`, `ResourceConfig` and
`StoppingCondition` are required (a `<REQUIRED>` placeholder counts as
missing); a bare role name becomes the execution role's ARN in the aws
environment's account. The launch fills in the rest:

- `TrainingJobName`: the run id (SageMaker's characters, at most 63; `<run id>-<N>` for
  the Nth requeue of a preempted run), unless set;
- `AlgorithmSpecification.TrainingImage`: the built or given image (ECR);
  `ContainerEntrypoint` / `ContainerArguments`: the entry point and its args;
- `Environment`: the W&B variables over the queue's, within SageMaker's limits
  (100 variables, 512 characters each: `WANDB_CONFIG` is split as W&B does);
- a `prefect-launch.run-id` tag.

The monitor follows the job's status through the agent's one poller for all
its training jobs (`sagemaker_status.py`: a `Search` per round, a
`DescribeTrainingJob` only for the jobs it does not return), logs each secondary
status and the job's CloudWatch log lines (`sagemaker_logs.py`: one `FilterLogEvents`
a round for all the agent's jobs, and their last lines once they end); a status before `Training` is why the run waits
(its progress), `Training` starts it; `Completed` completes the run, `Failed`
fails it with SageMaker's reason, `Stopped` cancels it. A managed spot job
(`EnableManagedSpotTraining`) that ends because SageMaker took its capacity
back (`Interrupted`, `MaxWaitTimeExceeded`) is preempted: the run goes back to
its queue as the same W&B run. With the queue config's `checkpoints: s3://...`,
every attempt gets `CheckpointConfig` on the run's own prefix (SageMaker syncs
it with `/opt/ml/checkpoints`, the job's `LAUNCH_CHECKPOINT_DIR`). Cancelling the run calls
`StopTrainingJob`. Clients come from the aws environment (`AWS_ENDPOINT_URL`
points them at a stand-in).

Example:
    >>> from prefect_launch.spec import ResolvedJob
    >>> job = ResolvedJob(run_id="r1", run_name="r1", project="p", argv=["python", "t.py", "--lr", "1"],
    ...                   entry_point=["python", "t.py"], image="1.dkr.ecr.us-east-1.amazonaws.com/l:1")
    >>> config = SageMakerTarget.parse_config({
    ...     "RoleArn": "arn:aws:iam::123456789012:role/sm", "ResourceConfig": {"InstanceType": "ml.m4.xlarge"},
    ...     "OutputDataConfig": {"S3OutputPath": "s3://b/out"}, "StoppingCondition": {"MaxRuntimeInSeconds": 60}},
    ...     "queue config")
    >>> request = SageMakerTarget().render(job, config)
    >>> request["TrainingJobName"], request["AlgorithmSpecification"]["ContainerArguments"]
    ('r1', ['--lr', '1'])
"""

from __future__ import annotations

import copy
import functools
import re
import threading
from datetime import datetime
from typing import Any

from pydantic import model_validator

from prefect_launch.errors import LaunchError
from prefect_launch.jobenv import split_long_config, wandb_env
from prefect_launch.settings import settings
from prefect_launch.spec import Resource, ResolvedJob
from prefect_launch.targets.base import Handle, Outcome, Progress, Target, TargetConfig
from prefect_launch.targets.policy import AllowedFields
from prefect_launch.targets.process import Log
from prefect_launch.targets.remote import follow_remote, unfilled
from prefect_launch.targets.sagemaker_logs import follow_training_job_logs
from prefect_launch.targets.sagemaker_status import follow_training_job

REQUIRED = ("RoleArn", "OutputDataConfig.S3OutputPath", "ResourceConfig", "StoppingCondition")
# Keys W&B's runner takes off the request before it sends it (older queue configs carry them).
WANDB_ONLY_KEYS = ("EcrRepoName", "region", "profile")
MAX_ENV_VARIABLES = 100
MAX_ENV_VALUE = 512
RUN_ID_TAG = "prefect-launch.run-id"
# Where a training job's checkpoints are, in its container (SageMaker's own default).
CHECKPOINT_LOCAL_PATH = "/opt/ml/checkpoints"
# How long past two rounds a run waits for its job's next description before it gives up.
STATUS_TIMEOUT_SECONDS = 120
# Secondary statuses: before the job runs (why the run waits), and once it has run.
WAITING_STATUSES = {"Pending", "Starting", "LaunchingMLInstances", "PreparingTrainingStack", "Downloading",
                    "DownloadingTrainingImage"}
RAN_STATUSES = {"Training", "Uploading", "Completed"}
_NAME_INVALID = re.compile(r"[^a-zA-Z0-9-]+")


def _lookup(request: dict[str, Any], path: str) -> Any:
    value: Any = request
    for key in path.split("."):
        value = value.get(key) if isinstance(value, dict) else None
    return value


def training_job_name(run_id: str) -> str:
    """The run id in SageMaker's name alphabet (`[a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}`)."""
    name = _NAME_INVALID.sub("-", run_id).strip("-")[:63].rstrip("-")
    if not name:
        raise LaunchError(f"run id {run_id!r} has no character SageMaker accepts in a training job name")
    return name


@functools.cache
def _create_training_job_shape():
    """CreateTrainingJob's input shape from botocore's own service model (data files, no network)."""
    import botocore.session

    return botocore.session.get_session().get_service_model("sagemaker").operation_model("CreateTrainingJob").input_shape


def request_problems(request: dict[str, Any]) -> list[str]:
    """What CreateTrainingJob would refuse in `request` (unknown keys, wrong types, missing fields), by botocore's
    own validation, before any call.

    >>> request_problems({"TrainingJobName": "x"})[0]
    'Missing required parameter in input: "RoleArn"'
    """
    from botocore.validate import ParamValidator

    report = ParamValidator().validate(request, _create_training_job_shape())
    return report.generate_report().splitlines() if report.has_errors() else []


def _camel(key: str) -> str:
    """A top-level key as W&B's runner camel-cases it (`role_arn` -> `RoleArn`; `environment` -> `Environment`)."""
    return "".join(part.title() for part in key.split("_")) if "_" in key or key == "environment" else key


class SageMakerConfig(TargetConfig):
    """A sagemaker queue config: the CreateTrainingJob request, without what the launch fills in for each run."""

    request: dict[str, Any]

    @model_validator(mode="before")
    @classmethod
    def _request(cls, args: dict[str, Any]) -> dict[str, Any]:
        request = {_camel(str(key)): value for key, value in args.items() if key not in WANDB_ONLY_KEYS}
        missing = [path for path in REQUIRED if unfilled(_lookup(request, path))]
        if missing:
            raise ValueError(", ".join(missing) + " must be set (CreateTrainingJob needs RoleArn, "
                             "OutputDataConfig.S3OutputPath, ResourceConfig and StoppingCondition)")
        # What every run fills in stands in here, so only the queue's own keys are judged.
        algorithm = request.get("AlgorithmSpecification", {})
        if isinstance(algorithm, dict):
            algorithm = {"TrainingInputMode": "File", **algorithm, "TrainingImage": "stand-in"}
        role = request["RoleArn"]  # a bare role name becomes an ARN at render
        if isinstance(role, str) and not role.startswith("arn:"):
            role = f"arn:aws:iam::000000000000:role/{role}"
        stand_in = {"TrainingJobName": "stand-in", **request, "AlgorithmSpecification": algorithm, "RoleArn": role}
        problems = request_problems(stand_in)
        if problems:
            raise ValueError("CreateTrainingJob would refuse it: " + "; ".join(problems))
        return {"request": request}


class SageMakerTarget(Target):
    resource = Resource.sagemaker
    config_model = SageMakerConfig
    # A job may size and time its training and pass it values; where it reads or writes with the queue's
    # role (RoleArn, data and output locations, VPC, checkpoints, encryption) only the queue's config says.
    job_policy = AllowedFields({
        "ResourceConfig.InstanceType", "ResourceConfig.InstanceCount", "ResourceConfig.VolumeSizeInGB",
        "StoppingCondition", "HyperParameters", "Environment", "Tags", "EnableManagedSpotTraining",
        "AlgorithmSpecification.MetricDefinitions", "RetryStrategy",
    }, key=_camel)
    adoptable = True
    runs_remotely = True

    def render(self, job: ResolvedJob, config: SageMakerConfig) -> dict[str, Any]:
        request = copy.deepcopy(config.request)
        if not job.image:
            raise LaunchError("sagemaker runs an image: this job has none (a code job needs a builder and an ECR destination)")
        request["RoleArn"] = self._role_arn(request["RoleArn"])
        # A name is SageMaker's for good: a requeued attempt of the run gets a name of its own.
        request.setdefault("TrainingJobName", training_job_name(f"{job.run_id}-{job.attempt}" if job.attempt else job.run_id))
        entry_point = job.entry_point or job.argv[:1]
        algorithm = request.setdefault("AlgorithmSpecification", {})
        algorithm["TrainingImage"] = job.image
        algorithm.setdefault("TrainingInputMode", "File")
        algorithm["ContainerEntrypoint"] = entry_point
        algorithm["ContainerArguments"] = job.argv[len(entry_point):]
        if not algorithm["ContainerArguments"]:
            del algorithm["ContainerArguments"]
        if job.checkpoint_uri and "CheckpointConfig" not in request:
            # SageMaker syncs this folder with the run's prefix, and back into the next attempt's container.
            request["CheckpointConfig"] = {"S3Uri": job.checkpoint_uri, "LocalPath": CHECKPOINT_LOCAL_PATH}
        if isinstance(request.get("CheckpointConfig"), dict):
            local = request["CheckpointConfig"].get("LocalPath") or CHECKPOINT_LOCAL_PATH
            job = job.model_copy(update={"checkpoint_dir": local})
        request["Environment"] = _environment({**request.get("Environment", {}), **wandb_env(job)})
        tags = [tag for tag in request.get("Tags", []) if tag.get("Key") != RUN_ID_TAG]
        request["Tags"] = [*tags, {"Key": RUN_ID_TAG, "Value": job.run_id}]
        problems = request_problems(request)
        if problems:
            raise LaunchError("sagemaker queue config: CreateTrainingJob would refuse this request: " + "; ".join(problems))
        return request

    def _role_arn(self, role: str) -> str:
        if role.startswith("arn:"):
            return role
        account = getattr(self.environment, "known_account_id", None)
        if not account:
            raise LaunchError(
                f"sagemaker queue config: RoleArn {role!r} is a role name, and the AWS account to make it an ARN "
                "is unknown: give the full arn:aws:iam::<account>:role/<name>, or configure `environment: type: aws`"
            )
        return f"arn:aws:iam::{account}:role/{role.removeprefix('role/')}"

    @property
    def _client(self):
        if self.environment is None or self.environment.type != "aws":
            raise LaunchError("sagemaker needs `environment: type: aws` with a region in the agent config")
        return self.environment.client("sagemaker")

    def submit(self, submission: dict[str, Any], log: Log) -> Handle:
        from botocore.exceptions import BotoCoreError, ClientError

        client = self._client
        name = submission["TrainingJobName"]
        try:
            response = client.create_training_job(**submission)
        except ClientError as exc:
            raise LaunchError(f"SageMaker refused training job {name}: {_aws_error(exc)}") from None
        except BotoCoreError as exc:  # client-side validation against the API schema, or no connection
            raise LaunchError(f"SageMaker training job {name} not created: {exc}") from None
        log.info("Created SageMaker training job %s (%s)", name, response["TrainingJobArn"])
        return Handle(id=name, detail=response["TrainingJobArn"])

    def attach(self, submission: dict[str, Any], log: Log, since: datetime | None) -> Handle | None:
        from botocore.exceptions import ClientError

        name = submission["TrainingJobName"]
        try:
            job = self._client.describe_training_job(TrainingJobName=name)
        except ClientError as exc:
            # SageMaker answers an unknown job name with a ValidationException, not a 404.
            if exc.response.get("Error", {}).get("Code") in ("ValidationException", "ResourceNotFound"):
                return None
            raise LaunchError(f"SageMaker could not describe training job {name}: {_aws_error(exc)}") from None
        log.info("Following SageMaker training job %s (%s)", name, job["TrainingJobStatus"])
        return Handle(id=name, detail=job["TrainingJobArn"], attached=True)

    def may_vanish(self, submission: dict[str, Any]) -> bool:
        return False  # training jobs are never deleted: a name is taken for good

    def wait(self, handle: Handle, cancel: threading.Event, log: Log, progress: Progress) -> Outcome:
        client = self._client
        seen_status = None
        interval = settings().cloud_poll_seconds

        def poll(stop_requested: bool) -> Outcome | None:
            nonlocal seen_status
            job = described.next(timeout=interval * 2 + STATUS_TIMEOUT_SECONDS)
            status, message = job.get("SecondaryStatus"), _last_message(job)
            if (status, message) != seen_status:
                seen_status = status, message
                text = f"{status} - {message}" if message else str(status)
                log.info("SageMaker %s: %s", handle.id, text)
                if status in WAITING_STATUSES:
                    progress.waiting(f"SageMaker {text}")
                elif status in RAN_STATUSES:
                    progress.started()
            for line in lines.new():
                log.info("%s", line)
            return _outcome(job, stop_requested)

        def stop() -> None:
            log.info("Stopping SageMaker training job %s", handle.id)
            client.stop_training_job(TrainingJobName=handle.id)

        # The shared status poller paces the polls (each waits for the job's next description); the shared
        # log reader brings the job's lines, and once it has ended, the last of them.
        with follow_training_job(client, handle.id, interval) as described, \
                follow_training_job_logs(self.environment.client("logs"), handle.id, interval) as lines:
            outcome = follow_remote(poll, stop, cancel, interval=0)
            for line in lines.rest(timeout=interval * 2 + STATUS_TIMEOUT_SECONDS):
                log.info("%s", line)
            return outcome


def _environment(env: dict[str, str]) -> dict[str, str]:
    env = split_long_config(env, MAX_ENV_VALUE)
    too_long = [name for name, value in env.items() if len(str(value)) > MAX_ENV_VALUE]
    if too_long:
        raise LaunchError(
            f"sagemaker: environment variable(s) {', '.join(too_long)} longer than SageMaker's {MAX_ENV_VALUE} characters"
        )
    if len(env) > MAX_ENV_VARIABLES:
        raise LaunchError(f"sagemaker: {len(env)} environment variables; SageMaker allows {MAX_ENV_VARIABLES}")
    return {name: str(value) for name, value in env.items()}


def spot_capacity_reclaimed(job: dict[str, Any]) -> bool:
    """Whether a managed spot training job ended because its capacity was taken back: it was `Interrupted`, or
    spot capacity did not come back within its `MaxWaitTimeInSeconds` (`MaxWaitTimeExceeded`).

    >>> spot_capacity_reclaimed({"EnableManagedSpotTraining": True, "SecondaryStatus": "Failed",
    ...                          "SecondaryStatusTransitions": [{"Status": "Training"}, {"Status": "Interrupted"}]})
    True
    >>> spot_capacity_reclaimed({"EnableManagedSpotTraining": False, "SecondaryStatus": "MaxWaitTimeExceeded"})
    False
    """
    if not job.get("EnableManagedSpotTraining"):
        return False
    seen = {t.get("Status") for t in job.get("SecondaryStatusTransitions") or []} | {job.get("SecondaryStatus")}
    return bool(seen & {"Interrupted", "MaxWaitTimeExceeded"})


def _last_message(job: dict[str, Any]) -> str:
    transitions = job.get("SecondaryStatusTransitions") or []
    return transitions[-1].get("StatusMessage", "") if transitions else ""


def _outcome(job: dict[str, Any], stop_requested: bool) -> Outcome | None:
    status = job["TrainingJobStatus"]
    if status in ("Failed", "Stopped") and not stop_requested and spot_capacity_reclaimed(job):
        return Outcome(state="preempted", message=f"SageMaker reclaimed the managed spot capacity of training job "
                                                  f"{job.get('TrainingJobName')} ({job.get('SecondaryStatus')})")
    if status == "Failed":
        return Outcome(state="failed", message=f"SageMaker training job failed: {job.get('FailureReason') or 'no reason given'}")
    if status == "Stopped":
        why = "cancelled" if stop_requested else "stopped outside prefect-launch"
        return Outcome(state="cancelled", message=f"SageMaker training job {why}")
    return Outcome(state="completed") if status == "Completed" else None


def _aws_error(exc: Exception) -> str:
    error = getattr(exc, "response", {}).get("Error", {})
    return f"{error.get('Code', type(exc).__name__)}: {error.get('Message', exc)}"
