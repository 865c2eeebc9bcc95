"""The settings model and README.md's "Settings" table say the same; bad values fail in one line."""

import re
from pathlib import Path

import pytest

from conftest import SEEDS, cli
from prefect_launch.errors import LaunchError
from prefect_launch.settings import Settings, settings, variable

README = Path(__file__).resolve().parents[1] / "README.md"
_ROW = re.compile(r"^\| `(PREFECT_LAUNCH_\w+)` \| (.+?) \| (.+) \|$")


def readme_settings() -> dict[str, tuple[str, str]]:
    """{variable: (default as written, what it does)} from the table under "## Settings"."""
    section = README.read_text().split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    return {m[1]: (m[2].strip("`"), m[3]) for m in map(_ROW.match, section.splitlines()) if m}


def test_the_readme_table_lists_every_setting_with_its_default_and_description():
    table = readme_settings()
    assert sorted(table) == sorted(variable(name) for name in Settings.model_fields)
    for name, field in Settings.model_fields.items():
        written, description = table[variable(name)]
        assert description == field.description, name
        # The written default, read as the variable would be, is the model's default.
        read = None if written == "(unset)" else getattr(Settings(**{name: written}), name)
        assert read == field.default, name


def test_a_setting_is_read_from_the_environment_at_each_call(monkeypatch):
    monkeypatch.setenv("PREFECT_LAUNCH_MAX_CODE_BYTES", "2MiB")
    assert settings().max_code_bytes == 2 << 20
    monkeypatch.setenv("PREFECT_LAUNCH_MAX_CODE_BYTES", "")  # empty keeps the default
    assert settings().max_code_bytes == Settings.model_fields["max_code_bytes"].default


@pytest.mark.parametrize("name, value", [("PREFECT_LAUNCH_BUILD_TIMEOUT", "abc"),
                                         ("PREFECT_LAUNCH_MAX_CODE_BYTES", "lots"),
                                         ("PREFECT_LAUNCH_MAX_CODE_FILES", "0")])
def test_a_bad_value_is_one_line_naming_the_variable(monkeypatch, name, value):
    monkeypatch.setenv(name, value)
    with pytest.raises(LaunchError) as refused:
        settings()
    assert str(refused.value).startswith(f"${name}={value!r}: ") and "\n" not in str(refused.value)


def test_agent_check_reports_a_bad_setting_in_one_line():
    config = sorted(SEEDS.glob("*_launch_config_*.yaml"))[0]
    result = cli("agent", "--config", str(config), "--check", check=False, env={"PREFECT_LAUNCH_BUILD_TIMEOUT": "abc"})
    assert result.returncode == 1
    assert result.stderr.strip().splitlines() == [
        "error: $PREFECT_LAUNCH_BUILD_TIMEOUT='abc': Input should be a valid integer, unable to parse string as an integer"
    ]
