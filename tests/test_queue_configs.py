"""Typed queue configs: each target's model refuses a bad config at `queue create`, naming the file and the
field's path; every config W&B's documents write still parses; template fields stand in as their declared types.

All of it is checked before any server is reached (`queue create` checks first), so these tests need none.
"""

from __future__ import annotations

import json
import re
import subprocess

import pytest
import yaml

from conftest import SEEDS, cli
from prefect_launch.errors import LaunchError
from prefect_launch.render import check_queue_config, render
from prefect_launch.spec import QueueConfig, Resource, ResolvedJob
from prefect_launch.targets import docker_run
from prefect_launch.templates import parse_templates

NO_SERVER = {"PREFECT_API_URL": "http://127.0.0.1:9/api"}  # nothing listens on port 9
SAGEMAKER = json.loads((SEEDS / "001_sagemaker_queue_1.json").read_text())
SAGEMAKER_FILLED = {**SAGEMAKER, "RoleArn": "arn:aws:iam::123456789012:role/sm",
                    "OutputDataConfig": {"S3OutputPath": "s3://bucket/out"}}
VERTEX = yaml.safe_load((SEEDS / "003_vertex_queue_1.yaml").read_text())
VERTEX_FILLED = {**VERTEX, "spec": {**VERTEX["spec"], "staging_bucket": "gs://staging"}}


def _seed(name: str):
    text = (SEEDS / name).read_text()
    return json.loads(text) if name.endswith(".json") else yaml.safe_load(text)


@pytest.mark.parametrize(("resource", "config", "templates"), [
    ("local-container", _seed("001_docker_queue_1.json"), None),
    ("local-container", _seed("004_docker_queue_1.json"), None),
    ("local-container", _seed("001_other_3.json"), None),
    ("kubernetes", _seed("000_k8s_job_1.yaml"), None),
    ("kubernetes", _seed("000_k8s_custom_resource_1.yaml"), None),
    ("kubernetes", _seed("000_k8s_custom_resource_1.yaml")["kubernetes"], None),  # pasted whole, as W&B's App takes it
    ("kubernetes", _seed("001_k8s_job_1.yaml"), None),
    ("sagemaker", {**_seed("001_queue_template_1.yaml"), **SAGEMAKER_FILLED}, None),
    ("sagemaker", _seed("001_queue_template_2.yaml"), {"aws_instance": {"enum": ["ml.m4.xlarge", "ml.p3.xlarge"]}}),
    ("vertex", VERTEX_FILLED, None),
    ("local-process", {"env": ["A=1", "PASSED_THROUGH"], "scheduler": {"num_workers": 4},
                       "builder": {"accelerator": {"base_image": "tf:gpu"}}}, None),
], ids=lambda value: value if isinstance(value, str) else None)
def test_every_config_w_and_bs_documents_write_parses(resource, config, templates):
    check_queue_config(Resource.parse(resource), config, parse_templates(templates), "seed")


def test_the_seeds_own_placeholders_are_refused_naming_each_field():
    with pytest.raises(LaunchError) as refused:
        check_queue_config(Resource.sagemaker, SAGEMAKER, {}, "001_sagemaker_queue_1.json")
    assert str(refused.value).startswith("sagemaker queue config (001_sagemaker_queue_1.json): ")
    assert "RoleArn, OutputDataConfig.S3OutputPath must be set" in str(refused.value)
    with pytest.raises(LaunchError, match=r"spec\.staging_bucket: must be set"):
        check_queue_config(Resource.vertex, VERTEX, {}, "003_vertex_queue_1.yaml")


BAD = [
    ("local-process", {"envv": {}}, "envv: unknown key"),
    ("local-process", {"env": {"A=B": "1"}}, "env.A=B"),
    ("local-container", {"privilegd": True}, "privilegd: not a docker run option (did you mean privileged?)"),
    ("local-container", {"gpus": ["all", "1"]}, "gpus: takes one value, not a list"),
    ("local-container", {"rm": "yes"}, "rm: a switch, true or false"),
    ("local-container", {"shm-size": True}, "shm-size: takes a value, not true"),
    ("local-container", {"name": "mine"}, "name: set by prefect-launch"),
    ("local-container", {"volume": [{"src": "/a"}]}, "volume[0]: a string or number"),
    ("kubernetes", {"spec": {"template": {"spec": {"contianers": [{}]}}}},
     "spec.template.spec.contianers: not a field of PodSpec"),
    ("kubernetes", {"spec": {"template": {"spec": {"containers": {"name": "x"}}}}},
     "spec.template.spec.containers: a list"),
    ("kubernetes", {"metadta": {"labels": {}}}, "metadta: unknown key(s)"),
    ("kubernetes", {"kubernetes": {**_seed("000_k8s_custom_resource_1.yaml")["kubernetes"], "spec": {
        "pytorchReplicaSpecs": {"Master": {"template": {"spec": {"containers": [{"imagee": "x"}]}}}}}}},
     "kubernetes.spec.pytorchReplicaSpecs.Master.template.spec.containers[0].imagee: not a field of Container"),
    ("kubernetes", {"apiVersion": "batch/v1", "kind": "CronJob", "spec": {"schedul": "* * * * *"}},
     "spec.schedul: not a field of CronJobSpec"),
    ("kubernetes", {"secrets": {"HF_TOKEN": "no-key"}}, "secrets.HF_TOKEN: 'no-key'; write `secret-name/key`"),
    ("kubernetes", {"kubernetes": {"kind": "PyTorchJob"}}, "kubernetes.apiVersion, kubernetes.spec: required"),
    ("sagemaker", {**SAGEMAKER_FILLED, "ResourceConfig": {**SAGEMAKER["ResourceConfig"], "InstanceCount": "many"}},
     "Invalid type for parameter ResourceConfig.InstanceCount"),
    ("sagemaker", {**SAGEMAKER_FILLED, "Spot": True}, 'Unknown parameter in input: "Spot"'),
    ("vertex", {**VERTEX_FILLED, "spec": {**VERTEX_FILLED["spec"], "worker_pool_specs": [
        {"machine_spec": {"machine_typ": "n1-standard-4"}}]}},
     "spec.worker_pool_specs: [0]: Unknown field for MachineSpec: machine_typ"),
    ("vertex", {**VERTEX_FILLED, "run": {"sync": False}}, "run.sync: unknown key"),
    ("local-container", {"builder": {"acelerator": {"base_image": "tf:gpu"}}}, "builder.acelerator: unknown key"),
    ("local-process", {"scheduler": {"num_workers": 0}}, "scheduler.num_workers: Input should be greater than or equal to 1"),
]


@pytest.mark.parametrize(("resource", "config", "named"), BAD, ids=[named.split(":")[0] for _, _, named in BAD])
def test_a_bad_config_is_refused_naming_the_file_and_the_field(resource, config, named):
    with pytest.raises(LaunchError) as refused:
        check_queue_config(Resource.parse(resource), config, {}, "queue.yaml")
    message = str(refused.value)
    assert message.startswith(f"{Resource.parse(resource).value} queue config (queue.yaml): "), message
    assert named in message and "\n" not in message, message


def test_queue_create_refuses_before_it_reaches_a_server(tmp_path):
    config = tmp_path / "gpu.yaml"
    config.write_text(yaml.safe_dump({"spec": {"template": {"spec": {"contianers": [{}]}}}}))
    result = cli("queue", "create", "gpu", "--resource", "kubernetes", "--config", str(config), env=NO_SERVER,
                 check=False)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        f"error: kubernetes queue config ({config}): spec.template.spec.contianers: not a field of PodSpec"]


def test_template_fields_stand_in_as_their_declared_types():
    config = {**SAGEMAKER_FILLED, "ResourceConfig": {**SAGEMAKER["ResourceConfig"], "InstanceCount": "{{ count }}"}}
    check_queue_config(Resource.sagemaker, config, parse_templates({"count": {"type": "integer", "default": 1}}), "q")
    with pytest.raises(LaunchError, match="Invalid type for parameter ResourceConfig.InstanceCount"):
        check_queue_config(Resource.sagemaker, config, parse_templates({"count": {"type": "string"}}), "q")
    # A field inside a longer string stands in as a string there, whatever its type.
    check_queue_config(Resource.local_container, {"shm-size": "{{ gb }}g"},
                       parse_templates({"gb": {"type": "integer", "minimum": 1}}), "q")


def _job(**update) -> ResolvedJob:
    return ResolvedJob(run_id="r1", run_name="r1", project="p", argv=["python", "t.py"], image="img:1", **update)


def test_a_queue_config_reads_the_agents_environment_and_a_job_may_not():
    """W&B's `${<ENV-VAR-NAME>}` macro: the admin's config names an agent variable; a submitter's resource args
    reading one would read the agent's secrets."""
    queue = QueueConfig(resource="local-container", resource_args={"env": ["BUCKET=${DATA_BUCKET}/${run_id}"]})
    submission = render(_job(), queue, agent_environment={"DATA_BUCKET": "s3://ml"})["submission"]
    assert submission["env"]["BUCKET"] == "s3://ml/r1" and submission["argv"][submission["argv"].index("BUCKET") - 1] == "--env"
    with pytest.raises(LaunchError, match=r"resource_args\.env\[0\]: \$\{DATA_BUCKET\} is not a launch macro, and the "
                                          r"agent's environment has no variable DATA_BUCKET"):
        render(_job(), queue, agent_environment={})
    with pytest.raises(LaunchError, match=r"resource_args\.label\[0\]: unknown macro \$\{AWS_SECRET_ACCESS_KEY\}"):
        render(_job(), queue, {"label": ["k=${AWS_SECRET_ACCESS_KEY}"]}, agent_environment={"DATA_BUCKET": "x",
                                                                                              "AWS_SECRET_ACCESS_KEY": "s"})


def test_the_docker_option_table_is_the_installed_docker_cli():
    """`docker_run.py` is Docker 28.2's `docker run --help`: a Docker release that changes an option fails here."""
    help_text = subprocess.run(["docker", "run", "--help"], capture_output=True, text=True, check=True).stdout
    options = {}
    for match in re.finditer(r"^\s+(?:-(\w), )?--([a-z0-9-]+)(?: (\S+))?\s", help_text, re.M):
        short, name, kind = match.groups()
        options[name] = (short, "switch" if kind is None else "repeatable" if kind in ("list", "map", "ulimit", "mount")
                         else "single")
    assert {name for name, (_, kind) in options.items() if kind == "switch"} == docker_run.SWITCHES
    assert {name for name, (_, kind) in options.items() if kind == "repeatable"} == docker_run.REPEATABLE
    assert {name for name, (_, kind) in options.items() if kind == "single"} == docker_run.SINGLE
    assert {short: name for name, (short, _) in options.items() if short} == docker_run.SHORT


WITHOUT = """
import sys
for name in sys.argv.pop(1).split(","):
    sys.modules[name] = None  # importing it fails as it does where `pip install prefect-launch` left its extra out
from prefect_launch.cli.main import app
sys.argv = ["prefect-launch", *sys.argv[1:]]
app()
"""


@pytest.mark.parametrize(("resource", "config", "modules", "extra"), [
    ("kubernetes", _seed("000_k8s_job_1.yaml"), "kubernetes", "kubernetes"),
    ("sagemaker", SAGEMAKER_FILLED, "boto3,botocore,prefect_aws", "aws"),
    ("vertex", VERTEX_FILLED, "google.cloud.aiplatform,google.cloud.aiplatform_v1,vertexai,prefect_gcp", "gcp"),
])
def test_queue_create_without_the_targets_extra_names_it_in_one_line(tmp_path, resource, config, modules, extra):
    import os
    import sys

    path = tmp_path / "queue.json"
    path.write_text(json.dumps(config))
    result = subprocess.run([sys.executable, "-c", WITHOUT, modules, "queue", "create", "q", "--resource", resource,
                             "--config", str(path)], capture_output=True, text=True, timeout=120,
                            env={**os.environ, **NO_SERVER})
    assert result.returncode == 1, result.stdout + result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert re.fullmatch(rf"error: \w+ is not installed: pip install 'prefect-launch\[{extra}\]'", line), line
