"""prefect-launch: W&B Launch rebuilt on Prefect."""

__version__ = "0.1.0"


def __getattr__(name: str):
    # `prefect_launch.deploy` without importing Prefect for every `import prefect_launch` (the CLI starts faster).
    if name == "deploy":
        from prefect_launch.deployments.flows import deploy

        return deploy
    raise AttributeError(f"module 'prefect_launch' has no attribute {name!r}")
