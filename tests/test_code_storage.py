"""Code artifacts in S3: an S3Bucket block (prefect-aws) against moto's server, end to end."""

from __future__ import annotations

import boto3
import pytest

from conftest import JOBS, flow_run_of, job_report, launch, run_id_of, run_logs, unique
from services import MotoServer

KEY_ID, SECRET = "AKIDLAUNCHTEST", "launch-s3-secret-value"


@pytest.fixture(scope="module")
def s3_block(tmp_path_factory) -> str:
    from prefect_aws import AwsCredentials, S3Bucket
    from prefect_aws.client_parameters import AwsClientParameters

    moto = MotoServer(tmp_path_factory.mktemp("moto") / "moto.log")
    bucket = unique("code")
    boto3.client("s3", endpoint_url=moto.url, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET,
                 region_name="us-east-1").create_bucket(Bucket=bucket)
    credentials = AwsCredentials(aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, region_name="us-east-1",
                                 aws_client_parameters=AwsClientParameters(endpoint_url=moto.url))
    name = unique("launch-code")
    S3Bucket(bucket_name=bucket, credentials=credentials).save(name)
    yield f"s3-bucket/{name}", moto, bucket
    moto.close()


def test_code_job_stored_in_s3_runs(s3_block, make_queue, start_agent):
    block, moto, bucket = s3_block
    queue = make_queue("--resource", "local-process")
    start_agent("-q", queue)
    result = launch("-q", queue, "-u", str(JOBS), "-E", "python report.py", "--code-storage", block, "--wait")
    flow_run = flow_run_of(run_id_of(result))
    assert flow_run.state.is_completed()
    assert job_report(run_logs(flow_run.id), "CONFIG") == {"lr": 0.01, "epochs": 1}
    keys = [item["Key"] for item in boto3.client(
        "s3", endpoint_url=moto.url, aws_access_key_id=KEY_ID, aws_secret_access_key=SECRET, region_name="us-east-1",
    ).list_objects_v2(Bucket=bucket)["Contents"]]
    digest = flow_run.parameters["spec"]["source"]["digest"].removeprefix("sha256:")
    assert keys == [f"{digest}.tar.gz"]
    assert SECRET not in str(flow_run.parameters)


def test_unknown_storage_block_is_a_clear_error(make_queue):
    queue = make_queue("--resource", "local-process")
    result = launch("-q", queue, "-u", str(JOBS), "-E", "python report.py", "--code-storage", "s3-bucket/nope", check=False)
    assert result.returncode != 0 and "code storage block 's3-bucket/nope' not found" in result.stderr


def test_code_folders_leave_out_what_their_ignore_files_do(home, make_queue, start_agent, tmp_path):
    """`.gitignore` (each relative to its folder, a deeper one overriding), `.dockerignore` (anchored at the root, as
    `docker build` reads it) and `.prefectignore` (as `prefect deploy` reads it) keep what they name out of the
    archive; the command says what it packed and left out, and the job's code is the rest."""
    from pathlib import Path

    folder = tmp_path / "code"
    files = {"report.py": (JOBS / "report.py").read_text(), ".gitignore": "data/\n*.ckpt\n!best.ckpt\n",
             ".dockerignore": "# docs\nnotes.md\n", ".prefectignore": "scratch/\n", "notes.md": "root notes",
             "sub/notes.md": "kept: .dockerignore patterns are the root's", "sub/.gitignore": "!model.ckpt\n",
             "sub/model.ckpt": "re-included below", "a.ckpt": "left out", "best.ckpt": "re-included",
             "scratch/tmp.txt": "left out", "data/big.bin": "x" * (4 << 20)}
    for name, text in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_text(text)
    queue = make_queue("--resource", "local-process")
    start_agent("-q", queue)
    result = launch("-q", queue, "-u", str(folder), "-E", "report.py", "--wait")
    summary = next(line for line in result.stderr.splitlines() if line.startswith("Code folder"))
    assert "packed 8 files" in summary and "MiB" not in summary.split(";")[0]  # the 4 MiB data/ is not packed
    for left_out in ("data/ (.gitignore)", "a.ckpt (.gitignore)", "notes.md (.dockerignore)", "scratch/ (.prefectignore)"):
        assert left_out in summary, summary
    code = Path(home) / "runs" / run_id_of(result) / "code"
    assert sorted(p.relative_to(code).as_posix() for p in code.rglob("*") if p.is_file()) == [
        ".dockerignore", ".gitignore", ".prefectignore", "best.ckpt", "report.py", "sub/.gitignore",
        "sub/model.ckpt", "sub/notes.md"]
