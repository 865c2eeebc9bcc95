"""The --dry-run contract: one JSON object, exactly what the target receives, no server needed."""

import json
import os
import re
import subprocess
import sys

from conftest import EXAMPLES, JOBS, cli, launch

NO_SERVER = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing listens on port 9


def dry_run(*args: str, check: bool = True):
    return cli("launch", "--dry-run", *args, env=NO_SERVER, check=check)


def test_local_process_dry_run_needs_no_server(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"overrides": {"run_config": {"lr": 0.5}, "args": ["--epochs", "2"], "entrypoint": []}}))
    result = dry_run(
        "-r", "local-process", "-R", '{"env": {"JOB_TAG": "${project_name}-${run_id}"}}',
        "-u", str(EXAMPLES / "train"), "-E", "python train.py", "-c", str(spec),
        "-p", "mnist", "-e", "team", "--run-id", "abc123", "--name", "first",
    )
    out = json.loads(result.stdout)
    assert set(out) == {"resource", "image", "submission"}
    assert out["resource"] == "local-process" and out["image"] is None
    submission = out["submission"]
    assert submission["argv"] == ["python", "train.py", "--epochs", "2"]
    env = submission["env"]
    assert env["WANDB_RUN_ID"] == "abc123" and env["WANDB_NAME"] == "first"
    assert env["WANDB_PROJECT"] == "mnist" and env["WANDB_ENTITY"] == "team"
    assert json.loads(env["WANDB_CONFIG"]) == {"lr": 0.5}
    assert env["JOB_TAG"] == "mnist-abc123"


def test_dry_run_is_deterministic_with_run_id():
    args = ("-r", "local-process", "-u", str(JOBS), "-E", "python report.py", "--run-id", "fixed1")
    assert dry_run(*args).stdout == dry_run(*args).stdout


def test_templates_checked_like_the_server(tmp_path):
    templates = tmp_path / "templates.yaml"
    templates.write_text("gpus: {type: integer, default: 1, minimum: 0, maximum: 4}\n")
    base = ("-r", "local-process", "-R", '{"env": {"TEMPLATE_GPUS": "{{ gpus }}"}}', "--templates", str(templates),
            "-u", str(JOBS), "-E", "python report.py")
    ok = json.loads(dry_run(*base, "-v", "gpus=3").stdout)
    assert ok["submission"]["env"]["TEMPLATE_GPUS"] == "3"
    default = json.loads(dry_run(*base).stdout)
    assert default["submission"]["env"]["TEMPLATE_GPUS"] == "1"
    too_big = dry_run(*base, "-v", "gpus=9", check=False)
    assert too_big.returncode == 1
    assert "gpus" in too_big.stderr and "maximum of 4" in too_big.stderr
    unknown = dry_run(*base, "-v", "cpus=2", check=False)
    assert unknown.returncode == 1 and "cpus" in unknown.stderr


def test_a_server_less_dry_run_says_it_cannot_read_prefect_references(tmp_path):
    """The queue config is filled by Prefect's own machinery, as in the agent; with no server, a
    `{{ prefect.variables.* }}` in it has nowhere to be read from."""
    result = dry_run("-r", "local-process", "-R", '{"env": {"DB_PASSWORD": "{{ prefect.variables.db_password }}"}}',
                     "-u", str(JOBS), "-E", "python report.py", check=False)
    assert result.returncode == 1 and result.stdout == ""
    assert result.stderr.strip().splitlines() == [
        "error: a dry run with -r/--resource has no Prefect server to read {{ prefect.blocks.* }} or "
        "{{ prefect.variables.* }} from: dry-run against a queue (-q) instead"]


def test_undeclared_template_field_is_an_error():
    result = dry_run("-r", "local-process", "-R", '{"env": {"X": "{{ nope }}"}}', "-u", str(JOBS),
                     "-E", "python report.py", check=False)
    assert result.returncode == 1 and "nope" in result.stderr


def test_unknown_macro_is_an_error_naming_the_path():
    result = dry_run("-r", "local-process", "-R", '{"env": {"X": "${nope}"}}', "-u", str(JOBS),
                     "-E", "python report.py", check=False)
    assert result.returncode == 1
    assert "resource_args.env.X" in result.stderr and "${nope}" in result.stderr


def test_wandb_app_overrides_json_is_accepted(tmp_path):
    """The overrides JSON the W&B App shows (seed 004) works as written."""
    seed = json.loads((JOBS.parent / "seeds" / "004_launch_spec_1.json").read_text())
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"overrides": seed}))
    out = json.loads(dry_run("-r", "local-process", "-u", str(JOBS), "-E", "python report.py", "-c", str(spec)).stdout)
    assert out["submission"]["argv"][:2] == ["python", "report.py"]


def test_launch_spec_entrypoint_override_wins(tmp_path):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"overrides": {"entrypoint": ["python", "report.py", "--no-wandb"]}}))
    out = json.loads(dry_run("-r", "local-process", "-u", str(JOBS), "-E", "python other.py", "-c", str(spec)).stdout)
    assert out["submission"]["argv"] == ["python", "report.py", "--no-wandb"]


def test_missing_entrypoint_file_is_named():
    result = dry_run("-r", "local-process", "-u", str(JOBS), "-E", "python missing.py", check=False)
    assert result.returncode == 1 and "missing.py" in result.stderr


def test_unknown_resource_lists_the_known_ones():
    result = dry_run("-r", "mainframe", "-u", str(JOBS), "-E", "python report.py", check=False)
    assert result.returncode == 1 and "mainframe" in result.stderr and "local-process" in result.stderr


def test_malformed_resource_args_names_line_and_column():
    result = dry_run("-r", "local-process", "-R", "{env: [", "-u", str(JOBS), "-E", "python report.py", check=False)
    assert result.returncode == 1 and "-R/--resource-args" in result.stderr and "not valid YAML or JSON" in result.stderr


def test_local_process_refuses_unknown_resource_args():
    result = dry_run("-r", "local-process", "-R", '{"gpus": "all"}', "-u", str(JOBS), "-E", "python report.py", check=False)
    assert result.returncode == 1 and "gpus" in result.stderr


def test_launch_keys_of_any_queue_config_are_taken_on_local_process(tmp_path, make_queue):
    """W&B's docs put `scheduler` and `builder` into the queue config of any resource: they configure
    sweeps and builds, and the target renders the rest."""
    config = tmp_path / "queue.yaml"
    config.write_text("env:\n  TAG: seen\nscheduler:\n  num_workers: 4\nbuilder:\n  accelerator:\n"
                      "    base_image: nvidia/cuda:12.1.0-runtime-ubuntu22.04\n")
    queue = make_queue("--resource", "local-process", "--config", str(config))
    out = json.loads(launch("--dry-run", "-q", queue, "-u", str(JOBS), "-E", "python report.py").stdout)
    assert out["submission"]["env"]["TAG"] == "seen"
    assert not {"scheduler", "builder"} & set(out["submission"])


def test_launch_without_queue_or_dry_run_is_refused():
    result = launch("-u", str(JOBS), "-E", "python report.py", check=False)
    assert result.returncode == 1 and "-q/--queue" in result.stderr


SAGEMAKER_QUEUE = {"RoleArn": "arn:aws:iam::123456789012:role/launch", "OutputDataConfig": {"S3OutputPath": "s3://b/out"},
                   "ResourceConfig": {"InstanceType": "ml.m5.xlarge", "InstanceCount": 1, "VolumeSizeInGB": 1},
                   "StoppingCondition": {"MaxRuntimeInSeconds": 60}}
WITHOUT_THE_AWS_EXTRA = """
import sys
for name in ("boto3", "botocore", "prefect_aws"):
    sys.modules[name] = None  # importing them fails as it does where `pip install prefect-launch` left them out
from prefect_launch.cli.main import app
sys.argv = ["prefect-launch", *sys.argv[1:]]
app()
"""


def test_a_missing_extra_is_named_in_one_line():
    result = subprocess.run(
        [sys.executable, "-c", WITHOUT_THE_AWS_EXTRA, "launch", "--dry-run", "-r", "sagemaker", "-R", json.dumps(SAGEMAKER_QUEUE),
         "-d", "img:1", "-E", "python train.py"],
        capture_output=True, text=True, timeout=120, env={**os.environ, **NO_SERVER})
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert re.fullmatch(r"error: (boto3|botocore|prefect_aws) is not installed: pip install 'prefect-launch\[aws\]'", line), line
