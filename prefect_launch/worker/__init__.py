"""The `launch` worker type, one module per concern.

- `launch_worker`: `LaunchWorker`, Prefect's worker protocol and the fast claim path;
- `engine`: the in-thread flow engine each claimed launch run runs on;
- `handover`: runs of engineers' own deployed flows, handed to a launch run that executes them;
- `orphans`: the round that requeues or adopts runs whose agent is gone.
"""
