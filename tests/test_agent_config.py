"""`prefect-launch agent --check`: W&B's launch-config.yaml, read as W&B writes it."""

import json
from pathlib import Path

import pytest

from conftest import SEEDS, cli

SEED_CONFIGS = sorted(SEEDS.glob("*_launch_config_*.yaml"))


def check(path: Path, *flags: str, ok: bool = True):
    result = cli("agent", "--config", str(path), "--check", *flags, check=ok)
    return json.loads(result.stdout) if ok else result


@pytest.mark.parametrize("path", SEED_CONFIGS, ids=lambda p: p.name)
def test_every_seed_agent_config_passes_check_unchanged(path):
    normalized = check(path)
    assert isinstance(normalized["queues"], list)


def test_all_fourteen_seed_configs_are_covered():
    assert len(SEED_CONFIGS) == 14


def test_tab_indented_config_as_the_seed_writes_it(tmp_path):
    """Seed 001 indents some agent configs with TABs, which YAML forbids; they load all the same."""
    path = tmp_path / "launch-config.yaml"
    path.write_text("max_jobs: 3\nqueues:\n\t- tabbed-queue\nbuilder:\n\ttype: docker\n")
    normalized = check(path)
    assert normalized["queues"] == ["tabbed-queue"] and normalized["builder"]["type"] == "docker"


def test_flags_win_over_the_file_and_minus_one_is_unlimited(tmp_path):
    path = tmp_path / "launch-config.yaml"
    path.write_text("max_jobs: -1\nqueues: [from-file]\nentity: team\n")
    assert "max_jobs" not in check(path)  # unlimited
    normalized = check(path, "-q", "a", "-q", "b", "--max-jobs", "5")
    assert normalized["queues"] == ["a", "b"] and normalized["max_jobs"] == 5 and normalized["entity"] == "team"


def test_placeholders_are_reported_not_hidden():
    result = cli("agent", "--config", str(SEEDS / "001_launch_config_7.yaml"), "--check")
    assert "placeholders" in result.stderr and "max_jobs" in result.stderr


@pytest.mark.parametrize(
    "text, expected",
    [
        ("queues: [a]\nmax_job: 2\n", "unknown key 'max_job'"),
        ("queues: [a]\nbuilder:\n  type: dockr\n", "builder.type"),
        ("queues: [a]\nmax_jobs: 0\n", "max_jobs"),
        ("queues: [a\n", "not valid YAML or JSON"),
    ],
)
def test_bad_agent_config_names_file_and_field(tmp_path, text, expected):
    path = tmp_path / "launch-config.yaml"
    path.write_text(text)
    result = check(path, ok=False)
    assert result.returncode == 1
    assert str(path) in result.stderr and expected in result.stderr


def test_agent_refuses_to_start_with_placeholders():
    result = cli("agent", "--config", str(SEEDS / "003_launch_config_1.yaml"), check=False, timeout=60)
    assert result.returncode == 1 and "placeholders" in result.stderr and "queues[0]" in result.stderr


@pytest.mark.parametrize("key, yaml_text, named", [
    ("builder.destination", "builder:\n  type: docker\n  destination: 127.0.0.1:5000/launch:v1\n", "a tag (:v1)"),
    ("builder.uri", "builder:\n  uri: us-docker.pkg.dev/p/r/launch:latest\n", "a tag (:latest)"),
    ("registry.uri", "registry:\n  uri: 127.0.0.1:5000/launch@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef\n", "a digest (@sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef)"),
])
def test_a_registry_destination_with_a_tag_is_refused_naming_the_key(tmp_path, key, yaml_text, named):
    """Images are tagged by content: `repo:v1` would become `repo:v1:<hash>`, no valid reference."""
    path = tmp_path / "launch-config.yaml"
    path.write_text("queues: [q]\n" + yaml_text)
    result = check(path, ok=False)
    errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert result.returncode == 1 and len(errors) == 1, result.stderr
    assert errors[0].startswith(f"error: {key} ") and named in errors[0], errors
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(("registry", "uri"), [
    ("{type: ecr, url: 123456789012.dkr.ecr.us-east-1.amazonaws.com/launch}", "123456789012.dkr.ecr.us-east-1.amazonaws.com/launch"),
    ("{type: ecr, account_id: '123456789012', region: us-east-1, repo_name: launch}",
     "123456789012.dkr.ecr.us-east-1.amazonaws.com/launch"),
    ("{type: gcr, region: us-central1, project: ml, repository: launch, image-name: train}",
     "us-central1-docker.pkg.dev/ml/launch/train"),
    ("{type: gcr, region: us-central1, project: ml, repository: launch, image_name: train}",
     "us-central1-docker.pkg.dev/ml/launch/train"),
], ids=["legacy url", "ecr parts", "gar parts (W&B's image-name)", "gar parts (image_name)"])
def test_every_registry_form_w_and_bs_agent_reads(tmp_path, registry, uri):
    environment = "{type: aws, region: us-east-1}" if "ecr" in registry else "{type: gcp, region: us-central1, project: ml}"
    path = tmp_path / "launch-config.yaml"
    path.write_text(f"queues: [q]\nregistry: {registry}\nenvironment: {environment}\n")
    assert check(path)["registry"]["uri"] == uri
    from prefect_launch.agent_config import load_agent_config
    from prefect_launch.builders import BuildSettings

    assert BuildSettings.from_agent_config(load_agent_config(path)).destination == uri


def test_a_registry_given_two_ways_or_with_parts_missing_is_refused(tmp_path):
    path = tmp_path / "launch-config.yaml"
    path.write_text("registry: {type: ecr, uri: 1.dkr.ecr.us-east-1.amazonaws.com/l, region: us-east-1}\n")
    assert "give the registry one way, not as uri and account_id/region/repo_name" in check(path, ok=False).stderr
    path.write_text("registry: {type: ecr, account_id: '123456789012', region: us-east-1}\n")
    assert "repo_name missing: ecr needs account_id, region, repo_name (or a uri)" in check(path, ok=False).stderr


def test_the_environment_wins_over_the_file_and_flags_over_both(tmp_path):
    """As W&B's agent: WANDB_ENTITY and WANDB_LAUNCH_MAX_JOBS over launch-config.yaml; `queue:` adds one queue."""
    path = tmp_path / "launch-config.yaml"
    path.write_text("entity: from-file\nmax_jobs: 2\nqueue: single\nqueues: [listed]\n")
    normalized = json.loads(cli("agent", "--config", str(path), "--check",
                                env={"WANDB_ENTITY": "from-env", "WANDB_LAUNCH_MAX_JOBS": "7"}).stdout)
    assert (normalized["entity"], normalized["max_jobs"], normalized["queues"]) == ("from-env", 7, ["listed", "single"])
    flagged = json.loads(cli("agent", "--config", str(path), "--check", "--max-jobs", "3",
                             env={"WANDB_LAUNCH_MAX_JOBS": "7"}).stdout)
    assert flagged["max_jobs"] == 3
    bad = cli("agent", "--config", str(path), "--check", env={"WANDB_LAUNCH_MAX_JOBS": "many"}, check=False)
    assert bad.returncode == 1 and "WANDB_LAUNCH_MAX_JOBS" in bad.stderr and "max_jobs" in bad.stderr
