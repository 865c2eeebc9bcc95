"""The `prefect-launch` command line.

Example::

    prefect-launch queue create demo --resource local-process
    prefect-launch agent -q demo &
    prefect-launch launch -q demo -u examples -E "python train.py" --wait
    prefect-launch status RUN_ID
"""

from __future__ import annotations

import sys

import typer

from prefect_launch.cli import job, queue, server, sweep
from prefect_launch.cli.agent import agent_command
from prefect_launch.cli.launch import default_queue_argv, launch_command
from prefect_launch.cli.status import logs_command, status_command

app = typer.Typer(
    name="prefect-launch",
    help="W&B Launch on Prefect: queues, agents and launch jobs.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
app.add_typer(queue.app, name="queue")
app.add_typer(job.app, name="job")
app.add_typer(server.app, name="server")
app.add_typer(sweep.app, name="sweep")
app.command("launch")(launch_command)
app.command("agent")(agent_command)
app.command("status")(status_command)
app.command("logs")(logs_command)



def main() -> None:
    """The `prefect-launch` command: W&B's `-q` with no queue name (queue `default`) made explicit, then the app."""
    sys.argv[1:] = default_queue_argv(sys.argv[1:])
    app()


if __name__ == "__main__":
    main()
