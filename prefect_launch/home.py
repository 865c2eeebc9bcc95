"""Where prefect-launch keeps its local state (embedded server, code cache, run folders).

`PREFECT_LAUNCH_HOME`, else `.prefect-launch/` in the current directory: a
project-local home, so a checkout's demo never touches `~/.prefect`.
"""

from __future__ import annotations

import os
from pathlib import Path


def launch_home() -> Path:
    home = Path(os.environ.get("PREFECT_LAUNCH_HOME") or Path.cwd() / ".prefect-launch")
    return home.resolve()
