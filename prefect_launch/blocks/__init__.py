"""Prefect block types prefect-launch registers (loaded by the `prefect.collections` entry point)."""

from prefect_launch.blocks.job import LaunchJob

__all__ = ["LaunchJob"]
