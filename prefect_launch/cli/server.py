"""`prefect-launch server start|stop|status`: the embedded local Prefect server."""

from __future__ import annotations

import typer

from prefect_launch.home import launch_home
from prefect_launch.server import configured_api_url, ensure_server, healthy, read_state, stop_server

app = typer.Typer(help="The embedded local Prefect server (SQLite, 127.0.0.1).", no_args_is_help=True)


@app.command("start")
def start() -> None:
    """Start the embedded server (if none is configured or running) and print its API URL."""
    url = configured_api_url()
    if url:
        typer.echo(f"Using the configured Prefect API at {url}; nothing to start", err=True)
    else:
        url = ensure_server(launch_home())
    typer.echo(url)


@app.command("stop")
def stop() -> None:
    """Stop the embedded server of this home."""
    stopped = stop_server(launch_home())
    typer.echo("Stopped the embedded Prefect server" if stopped else "No embedded Prefect server was running")


@app.command("status")
def status() -> None:
    """Say which Prefect API prefect-launch uses, and whether it answers."""
    url = configured_api_url() or (read_state(launch_home()) or {}).get("url")
    if not url:
        typer.echo("No Prefect API configured and no embedded server running")
        raise typer.Exit(1)
    ok = healthy(url)
    typer.echo(f"{url} {'healthy' if ok else 'not answering'}")
    if not ok:
        raise typer.Exit(1)
