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
    entity: Optional[str] = typer.Option(None, "--entity", "-e", help="The agent's W&B entity (its config's `entity`)"),
    log_file: Optional[str] = typer.Option(None, "--log-file", "-l", help="Also write the agent's own logs here; - for stdout"),
    max_jobs: Optional[int] = typer.Option(None, "--max-jobs", "-j", help="Jobs running at once across all queues; -1 = unlimited"),
    config: Optional[Path] = typer.Option(None, "--config", "-c", help="launch-config.yaml (default ~/.config/wandb/launch-config.yaml)"),
    url: Optional[str] = typer.Option(None, "--url", "-u", hidden=True, help="Refused, as by wandb launch-agent"),
    verbose: int = typer.Option(0, "--verbose", "-v", count=True, help="-v: a status line every 20 s; -vv: debug logs too"),
    check: bool = typer.Option(False, "--check", help="Validate the config, print it normalized as JSON, exit"),
    name: Optional[str] = typer.Option(None, "--name", help="Agent name shown in the Prefect UI"),
    poll_seconds: float = typer.Option(5.0, "--poll-seconds", help="Fallback poll interval; new runs wake the agent at once"),
) -> None:
    """Take jobs off queues and run them (`wandb launch-agent`'s flags, and more)."""
    clear_errors(_agent)(queue, entity, log_file, max_jobs, config, url, verbose, check, name, poll_seconds)


def _agent(queue, entity, log_file, max_jobs, config, url, verbose, check, name, poll_seconds) -> None:
    from prefect_launch.agent_config import load_agent_config
    from prefect_launch.agent_setup import environment_problems
    from prefect_launch.errors import LaunchError
    from prefect_launch.settings import settings

    if url is not None:  # wandb launch-agent refuses it too: a registration URL of W&B's UI
        raise LaunchError("-u/--url: an agent registration URL of the W&B App; an agent here needs only its queues "
                          "(-q) and the Prefect server")
    agent_config = load_agent_config(config).with_flags(queue, max_jobs, entity, verbose)
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

    agent_logs = logging.getLogger("prefect_launch")
    agent_logs.setLevel(logging.DEBUG if agent_config.verbosity >= 2 else logging.INFO)
    if log_file is not None:
        agent_logs.addHandler(_log_file_handler(log_file))
    agent = Agent(agent_config, name=name, poll_seconds=poll_seconds)
    run(agent.run, lambda: stderr(f"Agent {agent.name} ready on {', '.join(agent_config.queues)}"))


def _log_file_handler(log_file: str):
    """`-l FILE` (or `-` for stdout): the agent's own log lines there too, in W&B's internal-log format."""
    import logging
    import sys

    from prefect_launch.errors import LaunchError

    if log_file == "-":
        handler: logging.Handler = logging.StreamHandler(sys.stdout)
    else:
        try:
            handler = logging.FileHandler(log_file, mode="w")
        except OSError as exc:
            raise LaunchError(f"-l/--log-file {log_file}: cannot write it: {exc.strerror or exc}") from None
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)-7s %(threadName)-10s:%(process)d "
                                           "[%(filename)s:%(funcName)s():%(lineno)s] %(message)s"))
    stderr(f"Agent logs also go to {'stdout' if log_file == '-' else log_file}")
    return handler
