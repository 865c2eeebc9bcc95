"""SageMaker and ECR end to end: moto's AWS server, a real Docker engine and registry, the real Prefect server.

The agent reaches moto through boto3's default chain (`AWS_ENDPOINT_URL`).
Its ECR login comes from moto's `GetAuthorizationToken`, and the registry it
pushes to only accepts that login. The test drives each training job's
lifecycle (moto cannot) and writes its CloudWatch log lines.
"""

from __future__ import annotations

import json
import os

import pytest

from aws_standin import ACCOUNT, SageMakerStandIn
from conftest import SEEDS, cancel_run, cli, dry_run_submission, flow_runs_named, launch, on_server, run_id_of, wait_for_attempts, run_logs, unique, wait_for_final, wait_for_log, write_json
from services import BASE_IMAGE, Registry, docker_engine

REPOSITORY = "launch-sm"
TRAIN = "import wandb\nrun = wandb.init()\nprint('trained')\n"


@pytest.fixture(scope="module")
def aws():
    with SageMakerStandIn() as aws:
        aws.client("ecr").create_repository(repositoryName=REPOSITORY)
        yield aws


@pytest.fixture(scope="module")
def ecr_registry(tmp_path_factory):
    """A registry that accepts exactly the login moto's ECR hands out."""
    docker_engine()
    registry = Registry(tmp_path_factory.mktemp("ecr"), login=("AWS", f"{ACCOUNT}-auth-token"), base_in=REPOSITORY)
    yield registry
    registry.close()


@pytest.fixture
def aws_agent(aws, ecr_registry, start_agent, make_queue, monkeypatch, tmp_path):
    """A sagemaker queue built from the seed and an agent with an aws environment and an ECR registry."""
    for name, value in {**aws.env, "PREFECT_LAUNCH_CLOUD_POLL_SECONDS": "0.3"}.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "launch-config.yaml"
    config.write_text(
        "environment:\n  type: aws\n  region: us-east-1\nregistry:\n  type: ecr\n"
        f"builder:\n  type: docker\n  destination: {ecr_registry.host}/{REPOSITORY}\n  base_image: {BASE_IMAGE}\n"
    )
    queue = make_queue("--resource", "sagemaker", "--config", str(write_json(tmp_path / "queue.json", _seed_filled())),
                       prefix="sm")
    start_agent("-q", queue, "--config", str(config))
    return queue


def _seed_filled() -> dict:
    """The seed's CreateTrainingJob body with its two `<REQUIRED>` values filled in; the role by name only."""
    seed = json.loads((SEEDS / "001_sagemaker_queue_1.json").read_text())
    seed["RoleArn"] = "SageMakerExecution"
    seed["OutputDataConfig"]["S3OutputPath"] = "s3://launch-out/models"
    return seed


def test_code_job_is_built_pushed_to_ecr_and_trained_on_sagemaker(aws, ecr_registry, aws_agent, tmp_path):
    code = tmp_path / "code"
    code.mkdir()
    (code / "train.py").write_text(TRAIN)
    overrides = write_json(tmp_path / "spec.json", {"overrides": {"run_config": {"lr": 0.5}, "args": ["--fast"]}})
    created = len(aws.requests)
    run_id = run_id_of(launch("-q", aws_agent, "-u", str(code), "-E", "python train.py", "-c", str(overrides)))

    name = aws.wait_for_job(created + 1, timeout=600)
    request = aws.requests[created]
    assert name == run_id
    # The dry run of the same job and run id, with the agent's config, shows exactly what the agent sent.
    assert dry_run_submission("-q", aws_agent, "-u", str(code), "-E", "python train.py", "-c", str(overrides),
                              "--run-id", run_id, home_dir=tmp_path / "home", agent_config=tmp_path / "launch-config.yaml") == request
    assert request["RoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/SageMakerExecution"
    assert request["ResourceConfig"] == {"InstanceType": "ml.m4.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 2}
    assert request["OutputDataConfig"] == {"S3OutputPath": "s3://launch-out/models"}
    assert request["StoppingCondition"] == {"MaxRuntimeInSeconds": 3600}
    algorithm = request["AlgorithmSpecification"]
    assert algorithm["ContainerEntrypoint"] == ["python", "train.py"]
    assert algorithm["ContainerArguments"] == ["--fast"]
    repository, tag = algorithm["TrainingImage"].rsplit(":", 1)
    assert repository == f"{ecr_registry.host}/{REPOSITORY}"
    assert ecr_registry.manifest_digest(REPOSITORY, tag), "the image was not pushed with the ECR login"
    env = request["Environment"]
    assert env["WANDB_RUN_ID"] == run_id and json.loads(env["WANDB_CONFIG"]) == {"lr": 0.5}
    assert "WANDB_DIR" not in env  # the agent's folders mean nothing on a training instance
    assert {"Key": "prefect-launch.run-id", "Value": run_id} in request["Tags"]

    aws.set_status(name, "InProgress", "Downloading", "Downloading the training image")
    aws.log(name, "epoch 1 loss 0.25", "epoch 2 loss 0.125")
    aws.set_status(name, "InProgress", "Training", "Training image download completed. Training in progress.")
    wait_for_log(run_id, lambda line: "Training - Training image download completed" in line)
    aws.log(name, "model saved")  # the job's last line, written as it ends
    aws.set_status(name, "Completed", "Completed", "Training job completed")
    flow_run = wait_for_final(run_id, timeout=60)
    assert flow_run.state.is_completed(), flow_run.state
    logs = run_logs(flow_run.id)
    assert "epoch 1 loss 0.25" in logs and "epoch 2 loss 0.125" in logs  # CloudWatch lines, once each
    assert logs.count("epoch 1 loss 0.25") == 1
    assert "model saved" in logs

    # The same code again: the image is found in the registry (with the ECR login) and not rebuilt.
    again = run_id_of(launch("-q", aws_agent, "-u", str(code), "-E", "python train.py"))
    aws.set_status(aws.wait_for_job(created + 2), "Completed")
    flow_run = wait_for_final(again, timeout=120)
    assert flow_run.state.is_completed(), flow_run.state
    assert any(line.endswith("already exists: build skipped") for line in run_logs(flow_run.id))


def test_sagemaker_failed_stopped_and_cancelled(aws, aws_agent, ecr_registry):
    image = f"{ecr_registry.host}/{REPOSITORY}:prebuilt"
    created = len(aws.requests)

    failing = run_id_of(launch("-q", aws_agent, "-d", image, "-E", "python train.py"))
    aws.set_status(aws.wait_for_job(created + 1), "Failed", failure_reason="AlgorithmError: CUDA out of memory")
    state = wait_for_final(failing, timeout=60).state
    assert state.is_failed() and "AlgorithmError: CUDA out of memory" in state.message

    cancelled = run_id_of(launch("-q", aws_agent, "-d", image, "-E", "python train.py"))
    name = aws.wait_for_job(created + 2)
    cancel_run(cancelled)
    state = wait_for_final(cancelled, timeout=60).state
    assert state.is_cancelled(), state
    assert aws.job(name).training_job_status == "Stopped"  # StopTrainingJob reached SageMaker

    stopped_elsewhere = run_id_of(launch("-q", aws_agent, "-d", image, "-E", "python train.py"))
    aws.set_status(aws.wait_for_job(created + 3), "Stopped")
    state = wait_for_final(stopped_elsewhere, timeout=60).state
    assert state.is_cancelled() and "outside prefect-launch" in state.message  # Stopped is never Completed


def test_a_new_agent_adopts_a_training_job_whose_agent_was_killed(aws, aws_agent, ecr_registry, start_agent, tmp_path):
    image = f"{ecr_registry.host}/{REPOSITORY}:prebuilt"
    created = len(aws.requests)
    run_id = run_id_of(launch("-q", aws_agent, "-d", image, "-E", "python train.py"))
    name = aws.wait_for_job(created + 1)
    aws.set_status(name, "InProgress", "Training", "Training in progress.")
    aws.log(name, "epoch 1 before the crash")
    wait_for_log(run_id, lambda line: line == "epoch 1 before the crash")
    start_agent.agents[-1].kill()

    start_agent("-q", aws_agent, "--config", str(tmp_path / "launch-config.yaml"))
    wait_for_log(run_id, lambda line: line.startswith(f"Following SageMaker training job {name} (InProgress)"))
    aws.log(name, "epoch 2 after the crash")
    aws.set_status(name, "Completed")
    flow_run = wait_for_final(run_id, timeout=60)
    assert flow_run.state.is_completed(), flow_run.state
    assert len(aws.requests) == created + 1  # one CreateTrainingJob: followed, never created again
    assert "epoch 2 after the crash" in run_logs(flow_run.id)


def test_bad_sagemaker_config_fails_the_job_before_any_call(aws, aws_agent, ecr_registry, make_queue, start_agent,
                                                            tmp_path):
    """`queue create` refuses the seed's `<REQUIRED>` placeholders; an admin who puts them into the pool's job
    template in the Prefect UI (no check there) gets a failed job, not a call to SageMaker."""
    from prefect.client.schemas.actions import WorkPoolUpdate

    created = len(aws.requests)
    queue = make_queue("--resource", "sagemaker", "--config", str(write_json(tmp_path / "q.json", _seed_filled())),
                       prefix="smbad")
    template = on_server("read_work_pool", queue).base_job_template
    template["job_configuration"]["resource_args"] = json.loads((SEEDS / "001_sagemaker_queue_1.json").read_text())
    on_server("update_work_pool", queue, WorkPoolUpdate(base_job_template=template))
    start_agent.agents[0].stop()  # the fixture's agent: the run on its queue must be this test's agent's
    start_agent("-q", queue, "-q", aws_agent, "--config", str(tmp_path / "launch-config.yaml"))
    bad = run_id_of(launch("-q", queue, "-d", f"{ecr_registry.host}/{REPOSITORY}:x", "-E", "python t.py"))
    state = wait_for_final(bad, timeout=60).state
    assert state.is_failed()
    assert "RoleArn, OutputDataConfig.S3OutputPath must be set" in state.message
    assert len(aws.requests) == created  # nothing reached SageMaker
    # The same agent keeps serving its other queue.
    good = run_id_of(launch("-q", aws_agent, "-d", f"{ecr_registry.host}/{REPOSITORY}:x", "-E", "python t.py"))
    aws.set_status(aws.wait_for_job(created + 1), "Completed")
    assert wait_for_final(good, timeout=60).state.is_completed()


def test_sagemaker_seed_renders_through_dry_run(aws, monkeypatch, tmp_path):
    seed = (SEEDS / "001_sagemaker_queue_1.json").read_text()
    unfilled = cli("launch", "-r", "sagemaker", "-R", seed, "-d", "img:1", "-E", "python t.py", "--dry-run", check=False)
    assert unfilled.returncode != 0
    assert "RoleArn, OutputDataConfig.S3OutputPath must be set" in unfilled.stderr

    # A bare role name needs the account: from the aws environment of this machine's agent config.
    home = tmp_path / "home"
    (home / ".config" / "wandb").mkdir(parents=True)
    (home / ".config" / "wandb" / "launch-config.yaml").write_text("environment:\n  type: aws\n  region: us-east-1\n")
    long_config = {"notes": "x" * 1200}
    spec = write_json(tmp_path / "spec.json", {"overrides": {"run_config": long_config, "args": ["--epochs", "3"]}})
    result = cli("launch", "-r", "sagemaker", "-R", json.dumps(_seed_filled()), "-d", "1.dkr.ecr.us-east-1.amazonaws.com/l:1",
                 "-E", "python train.py", "-c", str(spec), "--run-id", "r" * 64, "--dry-run",
                 env={**aws.env, "HOME": str(home)})
    request = json.loads(result.stdout)["submission"]
    assert request["TrainingJobName"] == "r" * 63  # SageMaker's limit
    assert request["RoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/SageMakerExecution"
    assert request["AlgorithmSpecification"] == {
        "TrainingImage": "1.dkr.ecr.us-east-1.amazonaws.com/l:1", "TrainingInputMode": "File",
        "ContainerEntrypoint": ["python", "train.py"], "ContainerArguments": ["--epochs", "3"],
    }
    env = request["Environment"]
    assert all(len(value) <= 512 for value in env.values()) and "WANDB_CONFIG" not in env
    pieces = [env[f"WANDB_CONFIG_{i}"] for i in range(3)]  # split as wandb.init joins it
    assert json.loads("".join(pieces)) == long_config


def test_sagemaker_template_seeds_render_and_refuse_other_instances(tmp_path):
    """The queue-template walkthrough: before, and after `InstanceType: "{{aws_instance}}"` with allowed values."""
    base = ["launch", "-r", "sagemaker", "-d", "1.dkr.ecr.us-east-1.amazonaws.com/l:1", "-E", "python t.py",
            "--run-id", "tmpl1", "--dry-run"]
    before = json.loads(cli(*base, "-R", f"@{SEEDS / '001_queue_template_1.yaml'}").stdout)["submission"]
    assert before["ResourceConfig"]["InstanceType"] == "ml.m4.xlarge"
    assert before["RoleArn"] == "arn:aws:iam:region:account-id:resource-type/resource-id"  # an ARN: kept as written
    assert before["OutputDataConfig"] == {"S3OutputPath": "s3://bucketname"}

    templates = tmp_path / "templates.yaml"
    templates.write_text("aws_instance: {type: string, default: ml.m4.xlarge, enum: [ml.m4.xlarge, ml.p3.xlarge]}\n")
    after = base + ["-R", f"@{SEEDS / '001_queue_template_2.yaml'}", "--templates", str(templates)]
    chosen = json.loads(cli(*after, "-v", "aws_instance=ml.p3.xlarge").stdout)["submission"]
    assert chosen["ResourceConfig"] == {"InstanceType": "ml.p3.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 2}
    assert {k: v for k, v in chosen.items() if k != "ResourceConfig"} == {
        k: v for k, v in before.items() if k != "ResourceConfig"}
    refused = cli(*after, "-v", "aws_instance=ml.p4d.24xlarge", check=False)
    assert refused.returncode != 0 and "aws_instance" in refused.stderr


def test_aws_environment_and_ecr_region_checks(tmp_path):
    config = tmp_path / "launch-config.yaml"
    config.write_text("environment:\n  type: aws\n  region: us-east-1\nregistry:\n  type: ecr\n"
                      "  uri: arn:aws:ecr:eu-west-1:123456789012:repository/launch\nqueues: [q]\n")
    result = cli("agent", "--config", str(config), "--check", check=False)
    assert result.returncode == 1
    assert "is in eu-west-1 but environment.region is us-east-1" in result.stderr
    started = cli("agent", "--config", str(config), check=False, timeout=60)
    assert started.returncode != 0 and "is in eu-west-1 but environment.region is us-east-1" in started.stderr

    config.write_text("environment:\n  type: aws\nqueues: [q]\n")
    result = cli("agent", "--config", str(config), "--check", check=False)
    assert result.returncode == 1 and "environment.type aws needs environment.region" in result.stderr

    config.write_text("registry:\n  type: ecr\n  uri: 123456789012.dkr.ecr.us-east-1.amazonaws.com/launch\nqueues: [q]\n")
    result = cli("agent", "--config", str(config), "--check", check=False)
    assert result.returncode == 1 and "needs an `environment: type: aws`" in result.stderr


def test_aws_credentials_from_a_prefect_block(aws, tmp_path):
    """`environment.credentials: aws-credentials/NAME`: no AWS keys in the environment, the block's are used."""
    from prefect_aws import AwsCredentials

    assert "AWS_ACCESS_KEY_ID" not in os.environ
    block = unique("aws")
    AwsCredentials(aws_access_key_id="block-key", aws_secret_access_key="block-secret").save(block)
    home = tmp_path / "home"
    (home / ".config" / "wandb").mkdir(parents=True)
    agent_config = home / ".config" / "wandb" / "launch-config.yaml"
    args = ["launch", "-r", "sagemaker", "-R", json.dumps(_seed_filled()), "-d", "img:1", "-E", "python t.py", "--dry-run"]
    env = {"AWS_ENDPOINT_URL": aws.url, "HOME": str(home)}

    agent_config.write_text(f"environment:\n  type: aws\n  region: us-east-1\n  credentials: aws-credentials/{block}\n")
    request = json.loads(cli(*args, env=env).stdout)["submission"]
    assert request["RoleArn"] == f"arn:aws:iam::{ACCOUNT}:role/SageMakerExecution"  # STS answered with the block's keys

    agent_config.write_text("environment:\n  type: aws\n  region: us-east-1\n")
    result = cli(*args, env=env, check=False)
    assert result.returncode != 0
    assert "cannot reach AWS" in result.stderr and "is a role name" in result.stderr


def test_a_spot_job_whose_capacity_is_reclaimed_goes_back_to_its_queue_with_its_checkpoints(aws, ecr_registry,
                                                                                         start_agent, make_queue,
                                                                                         monkeypatch, tmp_path):
    """Managed spot: capacity taken back (`Interrupted`, then `MaxWaitTimeExceeded`) puts the run back on its queue
    as the same W&B run, on the same checkpoint prefix, at most `max_requeues` times; an ordinary failure never."""
    for name, value in {**aws.env, "PREFECT_LAUNCH_CLOUD_POLL_SECONDS": "0.3"}.items():
        monkeypatch.setenv(name, value)
    config = tmp_path / "launch-config.yaml"
    config.write_text("environment:\n  type: aws\n  region: us-east-1\n")
    spot = {**_seed_filled(), "EnableManagedSpotTraining": True,
            "StoppingCondition": {"MaxRuntimeInSeconds": 3600, "MaxWaitTimeInSeconds": 7200},
            "checkpoints": "s3://launch-checkpoints/runs", "max_requeues": 1}
    queue = make_queue("--resource", "sagemaker", "--config", str(write_json(tmp_path / "queue.json", spot)), prefix="spot")
    start_agent("-q", queue, "--config", str(config))
    image = f"{ecr_registry.host}/{REPOSITORY}:spot"
    created = len(aws.requests)
    run_id = run_id_of(launch("-q", queue, "-d", image, "-E", "python train.py"))

    first = aws.wait_for_job(created + 1)
    request = aws.requests[created]
    assert request["CheckpointConfig"] == {"S3Uri": f"s3://launch-checkpoints/runs/{run_id}",
                                           "LocalPath": "/opt/ml/checkpoints"}
    assert request["Environment"]["LAUNCH_CHECKPOINT_DIR"] == "/opt/ml/checkpoints"
    assert "WANDB_RESUME" not in request["Environment"]
    aws.set_status(first, "InProgress", "Training")
    aws.set_status(first, "InProgress", "Interrupted", "The spot instance was interrupted")
    aws.set_status(first, "Stopped", "MaxWaitTimeExceeded", "Spot capacity did not come back")

    second = aws.wait_for_job(created + 2)
    again = aws.requests[created + 1]
    assert second == f"{run_id}-1"  # a training job name is SageMaker's for good
    assert again["CheckpointConfig"] == request["CheckpointConfig"] and again["Environment"]["WANDB_RESUME"] == "allow"
    assert again["Environment"]["WANDB_RUN_ID"] == run_id
    aws.set_status(second, "InProgress", "Interrupted")
    aws.set_status(second, "Stopped", "MaxWaitTimeExceeded")
    runs = wait_for_attempts(run_id, 2)
    assert sorted(run.state.name for run in runs) == ["Failed", "Preempted"]
    final = next(run.state for run in runs if run.state.is_failed())
    assert "preempted 2 times, not requeued again (at most 1)" in final.message, final

    # A spot job failing of its own accord fails: no requeue.
    failing = run_id_of(launch("-q", queue, "-d", image, "-E", "python train.py"))
    name = aws.wait_for_job(created + 3)
    aws.set_status(name, "Failed", "Failed", failure_reason="AlgorithmError: exit code 1")
    state = wait_for_final(failing).state
    assert state.is_failed() and "AlgorithmError" in state.message
    assert len(flow_runs_named(failing)) == 1
