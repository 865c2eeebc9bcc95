"""`prefect-launch agent`: serve queues, as `wandb launch-agent` does."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer

from prefect_launch.cli.common import clear_errors, connect, echo_json, stderr

AGENT_CLIENT_RETRIES = 7


def agent_command(
    queue: list[str] = typer.Option([], "--queue", "-q", help="Queue to serve (repeatable)"),
    max_jobs: Optional[int] = typer.Option(None, "--max-jobs", "-j", help="Jobs running at once across all queues; -1 = unlimited"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="launch-config.yaml (default ~/.config/wandb/launch-config.yaml)"),
    check: bool = typer.Option(False, "--check", help="Validate the config, print it normalized as JSON, exit"),
    name: Optional[str] = typer.Option(None, "--name", help="Agent name shown in the Prefect UI"),
    poll_seconds: float = typer.Option(5.0, "--poll-seconds", help="Fallback poll interval; new runs wake the agent at once"),
) -> None:
    """Take jobs off queues and run them."""
    clear_errors(_agent)(queue, max_jobs, config, check, name, poll_seconds)


def _agent(queue, max_jobs, config, check, name, poll_seconds) -> None:
    from prefect_launch.agent_config import load_agent_config
    from prefect_launch.agent_setup import environment_problems
    from prefect_launch.settings import settings

    agent_config = load_agent_config(config).with_flags(queue, max_jobs)
    if check:
        settings()  # a bad PREFECT_LAUNCH_* value fails the check in one line
        placeholders = agent_config.placeholders()
        if placeholders:
            stderr("note: documentation placeholders to fill in before starting: " + ", ".join(placeholders))
        echo_json(agent_config.model_dump(mode="json", by_alias=True, exclude_none=True))
        problems = environment_problems(agent_config)
        for problem in problems:
            stderr(f"error: {problem}")
        if problems:
            raise typer.Exit(1)
        return

    # Prefect's client retries a dropped connection with exponential back-off (2 s, 4 s, ...): seven tries
    # ride out a server restart of about four minutes without losing a job's state; read before prefect loads.
    os.environ.setdefault("PREFECT_CLIENT_MAX_RETRIES", str(AGENT_CLIENT_RETRIES))
    connect()
    import logging

    from prefect_launch.agent import Agent
    from prefect_launch.cli.common import run

    logging.getLogger("prefect_launch").setLevel(logging.INFO)
    agent = Agent(agent_config, name=name, poll_seconds=poll_seconds)
    run(agent.run, lambda: stderr(f"Agent {agent.name} ready on {', '.join(agent_config.queues)}"))
