"""prefect-launch: W&B Launch rebuilt on Prefect."""

__version__ = "0.1.0"
