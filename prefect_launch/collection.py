"""Loaded by Prefect through the `prefect.collections` entry point: registers the
`launch` worker type and the block types."""

from prefect_launch import blocks  # noqa: F401
from prefect_launch.worker import launch_worker  # noqa: F401
