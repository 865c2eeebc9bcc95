"""A tiny training job: wandb tracks it, launch overrides its config.

Run it on a queue:
    prefect-launch launch -q demo -u examples/train -E "python train.py" -c examples/train/override.json --wait
"""

import math
import random

import wandb

run = wandb.init(config={"lr": 0.01, "epochs": 3, "seed": 0})
config = run.config
print(f"config: lr={config.lr} epochs={config.epochs} seed={config.seed}")
random.seed(config.seed)
loss = 1.0
for epoch in range(config.epochs):
    loss *= math.exp(-config.lr * 10) * (0.95 + random.random() * 0.05)
    run.log({"epoch": epoch, "loss": loss})
    print(f"epoch {epoch}: loss {loss:.4f}")
run.summary["final_loss"] = loss
run.finish()
print(f"final loss {loss:.4f}")
