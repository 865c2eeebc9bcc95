"""A launch job for tests: reports what it sees, then behaves as its arguments say.

    python report.py [--no-wandb] [--exit N] [--sleep S] [--pid-file F] [--stamp-file F] [--wait-for F] [ARGS...]

Prints `CONFIG {json}` (wandb.config after wandb.init), `ENV {json}` (the
launch variables), `ARGS {json}` and `PROCESS {json}` (its command line as
the kernel holds it, and its working directory).
"""

import argparse
import json
import os
import sys
import time


def report(line: str) -> None:
    """One write per line: wandb's own output cannot land between a line and its newline."""
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


parser = argparse.ArgumentParser()
parser.add_argument("--no-wandb", action="store_true")
parser.add_argument("--exit", type=int, default=0)
parser.add_argument("--sleep", type=float, default=0)
parser.add_argument("--pid-file")
parser.add_argument("--stamp-file", help="append 'start end' wall-clock times here")
parser.add_argument("--wait-for", help="before ending, wait until this file exists (a test releases the job)")
args, rest = parser.parse_known_args()
started = time.time()
if args.pid_file:
    with open(args.pid_file, "w") as handle:
        handle.write(str(os.getpid()))

if not args.no_wandb:
    import wandb

    run = wandb.init(config={"lr": 0.01, "epochs": 1})
    report("CONFIG " + json.dumps(dict(run.config), sort_keys=True))
names = [n for n in os.environ if n.startswith(("WANDB_", "JOB_", "TEMPLATE_"))]
report("ENV " + json.dumps({n: os.environ[n] for n in sorted(names)}))
report("ARGS " + json.dumps(rest))
with open("/proc/self/cmdline", "rb") as cmdline:
    report("PROCESS " + json.dumps({"argv": cmdline.read().decode().split("\0")[:-1], "cwd": os.getcwd()}))
time.sleep(args.sleep)
while args.wait_for and not os.path.exists(args.wait_for):
    time.sleep(0.05)
if not args.no_wandb:
    run.finish()
if args.stamp_file:
    with open(args.stamp_file, "a") as handle:
        handle.write(f"{started} {time.time()}\n")
raise SystemExit(args.exit)
