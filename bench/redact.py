"""Secret-masking benchmark: the time to mask one long argument, against the pattern it replaced.

Every job's argv, environment and rendered submission pass through `redact` before they are
logged, in the agent's one process. The old pattern (kept below as the baseline, measured in the
same run) let a name start anywhere inside a word, so a word with no `=` was scanned once per
starting character: quadratic in its length. The new one starts a name only where a name starts.

Inputs are the worst case for the old pattern (one long word, no `=`) and a secret assignment
with a long value; sizes up to the longest argument a job may send (`MAX_ARGUMENT`) and a
1 MB run config's worth. On the long word the baseline runs only up to 16,000 characters:
beyond that it takes minutes. Ratio: baseline median / redact median.

    .venv/bin/python bench/redact.py              # 5 samples per cell
    .venv/bin/python bench/redact.py --samples 3

Progress goes to stderr, the table to stdout.
"""

from __future__ import annotations

import argparse
import os
import re
import statistics
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

from dispatch import p95, print_table, progress  # noqa: E402

from prefect_launch.redact import MASK, redact  # noqa: E402
from prefect_launch.spec import MAX_ARGUMENT  # noqa: E402

# The pattern redact.py used before (the baseline).
OLD_ASSIGNMENT = re.compile(
    r"((?:[\w-]*(?:api[_-]?key|token|secret|password|passwd|credential|auth)[\w-]*)=)([^\s]+)", re.I
)
SIZES = [1_000, 4_000, 16_000, MAX_ARGUMENT, 1_000_000]
# input: (text of n characters, the largest n the baseline is run at)
INPUTS = {"one word, no '='": (lambda n: "a" * n, 16_000),
          "--api-key=<long value>": (lambda n: "--api-key=" + "s" * (n - 10), max(SIZES))}


def old_redact(text: str) -> str:
    return OLD_ASSIGNMENT.sub(lambda m: m.group(1) + MASK, text)


def timed(fn, text: str, samples: int) -> list[float]:
    times = []
    for _ in range(samples):
        began = time.perf_counter()
        fn(text)
        times.append(time.perf_counter() - began)
    return times


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--samples", type=int, default=5)
    samples = parser.parse_args().samples
    load_before, began = os.getloadavg()[0], time.monotonic()
    rows = ["| input | characters | redact median | p95 | old pattern median | ratio |", "|---|---:|---:|---:|---:|---:|"]
    for name, (make, baseline_up_to) in INPUTS.items():
        for size in SIZES:
            text = make(size)
            progress(f"{name}, {size:,} characters")
            new = timed(redact, text, samples)
            old = None
            if size <= baseline_up_to:
                old = timed(old_redact, text, samples)
                assert redact([text]) == [old_redact(text)], "the two patterns mask differently"
            ratio = f"{statistics.median(old) / statistics.median(new):,.2f}x" if old else "-"
            old_cell = f"{statistics.median(old) * 1000:,.2f} ms" if old else "not run (minutes)"
            rows.append(f"| {name} | {size:,} | {statistics.median(new) * 1000:,.2f} ms | {p95(new) * 1000:,.2f} ms "
                        f"| {old_cell} | {ratio} |")
    print_table("\n".join(rows), load_before, began)
    return 0


if __name__ == "__main__":
    sys.exit(main())
