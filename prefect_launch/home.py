"""Where prefect-launch keeps its local state (embedded server, code cache, run folders).

`PREFECT_LAUNCH_HOME`, else `.prefect-launch/` in the current directory: a
project-local home, so a checkout's demo never touches `~/.prefect`.
"""

from __future__ import annotations

from pathlib import Path

from prefect_launch.settings import settings


def launch_home() -> Path:
    return settings().home.resolve()
