"""Bad input, fuzzed: every config, template value, launch spec and macro either works or is refused with a LaunchError.

Property-based (hypothesis) over the pure parts the agent runs for every job:
config text, agent configs, macros, template values and rendering for every
target. "Refused" means a `LaunchError` (its message is what the job fails
with); any other exception would crash a job's flow with a traceback instead.
Injection attempts are generated on purpose: macros inside names and values,
shell metacharacters in args, YAML aliases that explode, deep nesting.
`FUZZ_EXAMPLES=2000` searches harder than CI's default of 150 per property.
"""

from __future__ import annotations

import json
import os
import time

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import SEEDS
from prefect_launch.agent_config import load_agent_config_text
from prefect_launch.config_files import ConfigFileError, parse_config_text
from prefect_launch.errors import LaunchError
from prefect_launch.macros import KNOWN_MACROS, resolve_macros
from prefect_launch.render import render
from prefect_launch.spec import QueueConfig, ResolvedJob, Resource
from prefect_launch.templates import check_values, parse_templates, variables_schema

FUZZ = settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None, suppress_health_check=[HealthCheck.too_slow])
NASTY = ["${run_id}", "${image_uri}", "${nope}", "${", "}", "$(rm -rf /)", "`id`", "; echo pwned", "a b", "'", '"',
         "\\", "\n", "&&", "|", "*", "~", "--privileged", "-v /:/host", "..", "../../etc/passwd", "\x00", "é", "🚀"]
text = st.one_of(st.sampled_from(NASTY), st.text(max_size=30), st.builds("".join, st.lists(st.sampled_from(NASTY), max_size=4)))
scalars = st.one_of(st.none(), st.booleans(), st.integers(-2**40, 2**40), st.floats(allow_nan=False), text)
json_like = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                          st.dictionaries(text, inner, max_size=4)), max_leaves=25)
KEYS = ["spec", "metadata", "namespace", "kubernetes", "kind", "apiVersion", "template", "containers", "env", "image",
        "secrets", "builder", "gpus", "volume", "network", "RoleArn", "ResourceConfig", "worker_pool_specs", "run",
        "staging_bucket", "args", "hostPath", "privileged", "serviceAccountName", "securityContext", "name", "value"]
shaped = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                       st.dictionaries(st.sampled_from(KEYS), inner, max_size=4)),
                      max_leaves=30)


def _filled_seed(resource: Resource) -> dict:
    """A working queue config to fuzz on top of, for targets whose bare config is refused (required fields)."""
    if resource is Resource.sagemaker:
        seed = json.loads((SEEDS / "001_sagemaker_queue_1.json").read_text())
        seed["RoleArn"] = "arn:aws:iam::123456789012:role/SageMakerExecution"
        seed["OutputDataConfig"]["S3OutputPath"] = "s3://bucket/out"
        return seed
    if resource is Resource.vertex:
        seed = yaml.safe_load((SEEDS / "003_vertex_queue_1.yaml").read_text())
        seed["spec"]["staging_bucket"] = "gs://bucket/staging"
        return seed
    return {}


def _job(argv: list[str], run_name: str) -> ResolvedJob:
    return ResolvedJob(run_id="fuzz1234", run_name=run_name, project="p", argv=argv, image="registry.local/t:1",
                       workdir="/code", entry_point=argv[:2])


@FUZZ
@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_as_a_config_error(value):
    try:
        parse_config_text(value, "fuzz.yaml")
    except ConfigFileError:
        pass


@FUZZ
@given(json_like)
def test_any_agent_config_loads_or_is_refused(value):
    try:
        load_agent_config_text(json.dumps(value), "launch-config.yaml")
    except LaunchError:
        pass


@FUZZ
@given(json_like, st.dictionaries(st.sampled_from(KNOWN_MACROS), st.one_of(st.none(), text)))
def test_macros_resolve_once_or_are_refused(config, values):
    try:
        resolved = resolve_macros(config, values)
    except LaunchError:
        return
    # A value is put in verbatim, never expanded again: a run name of "${image_uri}" stays that.
    if isinstance(config, str) and config == "${run_id}" and values.get("run_id") is not None:
        assert resolved == values["run_id"]


@FUZZ
@given(st.sampled_from(list(Resource)), shaped, shaped, st.lists(text, min_size=1, max_size=5), text)
def test_rendering_any_queue_config_and_overrides_works_or_is_refused(resource, queue_args, overrides, argv, run_name):
    queue_args = {**_filled_seed(resource), **(queue_args if isinstance(queue_args, dict) else {})}
    overrides = overrides if isinstance(overrides, dict) else {}
    try:
        queue = QueueConfig(resource=resource, resource_args=queue_args)
        rendered = render(_job(argv, run_name), queue, overrides)
    except LaunchError:
        return
    json.dumps(rendered)  # what is logged and shown by --dry-run must serialize
    # Shell metacharacters stay single arguments: no shell ever sees them.
    argv_out = rendered["submission"].get("argv")
    if resource == Resource.local_process:
        assert argv_out[-len(argv):] == argv
    elif resource == Resource.local_container:  # the entry point's first word replaces the image's ENTRYPOINT
        assert argv_out[argv_out.index("--entrypoint") + 1] == argv[0]
        assert argv_out[len(argv_out) - len(argv) + 1:] == argv[1:]


@FUZZ
@given(st.dictionaries(st.sampled_from(["aws_instance", "gpus", "lr"]), json_like, max_size=3))
def test_template_values_are_checked_or_refused(values):
    fields = parse_templates({
        "aws_instance": {"type": "string", "enum": ["ml.m4.xlarge", "ml.p3.xlarge"], "default": "ml.m4.xlarge"},
        "gpus": {"type": "integer", "minimum": 0, "maximum": 8, "default": 1},
        "lr": {"type": "number", "minimum": 0.0, "maximum": 1.0, "default": 0.1},
    })
    try:
        checked = check_values(variables_schema(fields), values)
    except LaunchError:
        return
    assert checked["aws_instance"] in ("ml.m4.xlarge", "ml.p3.xlarge")
    assert 0 <= checked["gpus"] <= 8 and 0.0 <= checked["lr"] <= 1.0


@pytest.mark.parametrize("document", [
    # "Billion laughs": nine levels of nine aliases, 387 million values once expanded.
    "a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)),
    "[" * 3000 + "]" * 3000,
    "k: " + "v" * 1_100_000,
])
def test_exploding_deep_or_huge_configs_are_refused_at_once(document):
    start = time.monotonic()
    with pytest.raises(ConfigFileError):
        parse_config_text(document, "queue.yaml")
    assert time.monotonic() - start < 5  # refused, not expanded


def test_a_yaml_alias_bomb_queue_config_is_refused_by_the_cli(tmp_path):
    from conftest import cli

    bomb = tmp_path / "queue.yaml"
    bomb.write_text("a: &a [x,x,x,x,x,x,x,x,x]\n" + "".join(
        f"{chr(98 + i)}: &{chr(98 + i)} [{','.join(['*' + chr(97 + i)] * 9)}]\n" for i in range(8)))
    result = cli("queue", "create", "bomb-queue", "--resource", "local-container", "--config", str(bomb), check=False,
                 timeout=60)
    assert result.returncode == 1 and "expands to more than 100,000 values" in result.stderr
