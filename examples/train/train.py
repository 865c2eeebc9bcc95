"""A tiny training job: wandb tracks it, launch overrides its config, and a requeued run resumes.

Run it on a queue:
    prefect-launch launch -q demo -u examples/train -E "python train.py" -c examples/train/override.json --wait

Every launch run has a checkpoint folder that outlives its attempts, `LAUNCH_CHECKPOINT_DIR`: the
job saves its state there after each epoch, and a run put back on its queue after a preemption
(the same W&B run, `WANDB_RESUME=allow`) starts from the epoch after the last one saved.
"""

import json
import math
import os
import random
import time
from pathlib import Path

import wandb

run = wandb.init(config={"lr": 0.01, "epochs": 3, "seed": 0, "epoch_seconds": 0.0})
config = run.config
print(f"config: lr={config.lr} epochs={config.epochs} seed={config.seed}")
checkpoint = Path(os.environ["LAUNCH_CHECKPOINT_DIR"]) / "state.json" if os.environ.get("LAUNCH_CHECKPOINT_DIR") else None
state = {"epoch": -1, "loss": 1.0, "random": None}
if checkpoint is not None and checkpoint.exists():
    state = json.loads(checkpoint.read_text())
    print(f"resuming after epoch {state['epoch']} from {checkpoint}")
random.seed(config.seed)
if state["random"] is not None:
    random.setstate((state["random"][0], tuple(state["random"][1]), state["random"][2]))
loss = state["loss"]
for epoch in range(state["epoch"] + 1, config.epochs):
    time.sleep(config.epoch_seconds)
    loss *= math.exp(-config.lr * 10) * (0.95 + random.random() * 0.05)
    run.log({"epoch": epoch, "loss": loss}, step=epoch)
    print(f"epoch {epoch}: loss {loss:.4f}", flush=True)
    if checkpoint is not None:
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        saved = checkpoint.with_suffix(".tmp")
        saved.write_text(json.dumps({"epoch": epoch, "loss": loss, "random": random.getstate()}))
        saved.replace(checkpoint)  # whole or not at all: a preemption mid-write leaves the last one
run.summary["final_loss"] = loss
run.finish()
print(f"final loss {loss:.4f}")
