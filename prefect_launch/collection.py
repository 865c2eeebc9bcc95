"""Loaded by Prefect through the `prefect.collections` entry point: registers the
`launch` worker type and the block types."""

from prefect_launch import blocks, worker  # noqa: F401
