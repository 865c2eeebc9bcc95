"""An ML engineer's own Prefect flow: tasks per epoch, W&B tracking, a result.

Sent to a launch queue by deploy.py; any queue's agent builds and runs it like a launch job.
"""

import math

import wandb
from prefect import flow, task


@task
def train_epoch(epoch: int, lr: float, loss: float) -> float:
    return loss * math.exp(-lr * 10) * (0.96 + 0.01 * (epoch % 3))


@flow(log_prints=True)
def train(lr: float = 0.01, epochs: int = 3) -> float:
    """Train a tiny model; returns the final loss."""
    run = wandb.init(config={"lr": lr, "epochs": epochs})
    loss = 1.0
    for epoch in range(epochs):
        loss = train_epoch(epoch, lr, loss)
        run.log({"epoch": epoch, "loss": loss})
        print(f"epoch {epoch}: loss {loss:.4f}")
    run.summary["final_loss"] = loss
    run.finish()
    return loss
