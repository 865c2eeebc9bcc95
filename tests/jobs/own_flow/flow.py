"""An engineer's own flow, sent to launch queues by tests/test_flows.py with prefect_launch.deploy."""

import json
import os
import time

import wandb
from prefect import flow, task


@task
def double(x: int) -> int:
    return 2 * x


@flow(log_prints=True)
def own(lr: float = 0.1, epochs: int = 2, sleep: float = 0.0) -> int:
    run = wandb.init(config={"lr": lr, "epochs": epochs})
    doubled = [double(i) for i in range(epochs)]
    report = {"lr": lr, "epochs": epochs, "scale": os.environ.get("JOB_SCALE"), "wandb_run": run.id, "doubled": doubled}
    print("OWN-FLOW " + json.dumps(report))
    time.sleep(sleep)
    run.finish()
    if lr < 0:
        raise ValueError("lr must be positive")
    return sum(doubled)
