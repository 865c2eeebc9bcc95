"""Every `PREFECT_LAUNCH_*` setting, typed, in one place (README.md, "Settings", lists them).

Each field reads the environment variable `PREFECT_LAUNCH_<FIELD>`; an unset or
empty variable keeps the default. `settings()` reads the environment afresh on
each call, because tests and agents change it at run time. A bad value is one
`LaunchError` line naming the variable, never a traceback.

Example:
    >>> import os
    >>> settings().build_timeout, settings().max_code_files
    (3600, 100000)
    >>> Settings(max_code_bytes="4GiB").max_code_bytes
    4294967296
    >>> os.environ["PREFECT_LAUNCH_BUILD_TIMEOUT"] = "abc"
    >>> settings()
    Traceback (most recent call last):
    prefect_launch.errors.LaunchError: $PREFECT_LAUNCH_BUILD_TIMEOUT='abc': Input should be a valid integer, unable to parse string as an integer
    >>> del os.environ["PREFECT_LAUNCH_BUILD_TIMEOUT"]
"""

from __future__ import annotations

from pathlib import Path

from pydantic import ByteSize, Field, PositiveFloat, PositiveInt, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from prefect_launch.errors import LaunchError

ENV_PREFIX = "PREFECT_LAUNCH_"


class Settings(BaseSettings):
    """prefect-launch's settings, as Prefect's own: one typed field per environment variable."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, env_ignore_empty=True)

    home: Path = Field(
        default=Path(".prefect-launch"),
        description="Local state (embedded server, code cache, run folders); relative to the current directory.",
    )
    buildkit: bool = Field(
        default=True,
        description="Build with the BuildKit docker CLI when one is on PATH; `0` builds through the Docker SDK.",
    )
    build_timeout: PositiveInt = Field(default=3600, description="Seconds a Kaniko build pod may run.")
    cloud_poll_seconds: PositiveFloat = Field(
        default=10.0, description="Seconds between two status calls to SageMaker or Vertex AI."
    )
    code_storage: str | None = Field(
        default=None,
        description="The storage block code goes to (`<block-type-slug>/<name>`) when `--code-storage` is not given; "
        "unset: `local-file-system/prefect-launch-code` under the home.",
    )
    max_code_bytes: ByteSize = Field(
        default=ByteSize(1 << 30),
        gt=0,
        description="Cap on a code archive's unpacked size: bytes, or a number with KiB, MiB, GiB or TiB.",
    )
    max_code_files: PositiveInt = Field(default=100_000, description="Cap on a code archive's entries.")
    git_credentials: Path | None = Field(
        default=None, description="A git credentials file (`https://user:token@host`, one per line) for git sources."
    )
    k8s_start_timeout: PositiveFloat = Field(
        default=900.0, description="Seconds a Kubernetes job's pod may take to start before the run fails."
    )
    pending_timeout: PositiveFloat = Field(
        default=300.0, description="Seconds a run may stay Pending before an agent puts it back on its queue."
    )
    server_start_timeout: PositiveFloat = Field(
        default=300.0,
        description="Seconds `server start` waits for a new Prefect server to answer; its first start migrates "
        "a fresh database (30 s to 2 min here, by Prefect release and load).",
    )
    vertex_api_endpoint: str | None = Field(
        default=None, description="The Vertex AI API endpoint (a stand-in); unset: Google's regional endpoint."
    )


def variable(field: str) -> str:
    """The environment variable that sets `field`.

    >>> variable("max_code_bytes")
    'PREFECT_LAUNCH_MAX_CODE_BYTES'
    """
    return ENV_PREFIX + field.upper()


def settings() -> Settings:
    """The settings as the environment holds them now; a bad value raises one `LaunchError` line."""
    try:
        return Settings()
    except ValidationError as exc:
        raise LaunchError("; ".join(
            f"${variable(str(error['loc'][0]))}={error['input']!r}: {error['msg']}" for error in exc.errors()
        )) from None
